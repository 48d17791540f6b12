"""``output.format: openai-batch``: a shard's results as the OpenAI Batch API's output and error files (JSONL).

A committed shard is ``part-<shard>-00000.jsonl`` (one line per answered request) and
``_errors/part-<shard>-00000.jsonl`` (one line per quarantined row), written by the commit
exactly as the Parquet files are (:mod:`pipelines.output.commit`): merged under
``_staging/``, recorded, then renamed into place. Each line is the Batch API's
per-request object ``{"id", "custom_id", "response", "error"}``:

* answered: ``response`` is ``{"status_code": 200, "request_id", "body"}`` with a
  ``chat.completion`` body (choices, finish reasons, token usage) or an embeddings ``list``;
* refused by this project (an option it can't honour, a malformed body, a prompt too long):
  ``response`` is ``{"status_code": 400, ..., "body": {"error": {"message": reason, "type":
  "invalid_request_error", ...}}}``; a forward that failed (or computed NaN) is a 500 with
  ``"type": "server_error"``;
* a line that is no request (not JSON, no ``custom_id``, a file that can't be read):
  ``response`` is null and ``error`` is ``{"code": "invalid_request_line", "message"}``.

Lines are in no particular order, as the API's are: match them on ``custom_id``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.fs as pafs

#: Reasons that mean the server failed, not the request (the predictor's wording): a forward that raised, ran out of
#: memory, or computed a NaN or infinite prediction (a model whose float16 activations overflow; model.dtype fixes it).
SERVER_ERRORS = ("forward failed", "out of memory", "prediction is not a number")


@dataclass(frozen=True)
class OpenAIBatchFiles:
    """Writes a shard's merged rows as Batch output lines and its quarantined rows as Batch error lines."""

    endpoint: Literal["chat", "embeddings"]
    id_column: str
    model: str
    prefix: str = ""
    suffix: ClassVar[str] = ".jsonl"

    def write_data(self, table: pa.Table, stream: Any) -> None:
        created = int(time.time())
        line = self._chat if self.endpoint == "chat" else self._embeddings
        stream.write(_jsonl(line(row, created) for row in table.to_pylist()))

    def write_errors(self, table: pa.Table, stream: Any) -> None:
        stream.write(_jsonl(error_line(row) for row in table.to_pylist()))

    def _column(self, row: dict[str, Any], name: str) -> Any:
        return row[self.prefix + name]

    def _chat(self, row: dict[str, Any], created: int) -> dict[str, Any]:
        texts, finishes = self._column(row, "generated_text"), self._column(row, "finish_reason")
        prompt, completion = self._column(row, "prompt_tokens"), sum(self._column(row, "generated_tokens"))
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text, "refusal": None}, "logprobs": None,
             "finish_reason": finish}
            for i, (text, finish) in enumerate(zip(texts, finishes))
        ]
        body = {
            "id": f"chatcmpl-{_hex()}",
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            "system_fingerprint": None,
        }
        return _answer(row[self.id_column], 200, body)

    def _embeddings(self, row: dict[str, Any], created: int) -> dict[str, Any]:
        data = [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(self._column(row, "embeddings"))
        ]
        tokens = self._column(row, "prompt_tokens")
        body = {"object": "list", "data": data, "model": self.model, "usage": {"prompt_tokens": tokens,
                                                                             "total_tokens": tokens}}
        return _answer(row[self.id_column], 200, body)


def error_line(record: dict[str, Any]) -> dict[str, Any]:
    """The Batch error-file line of one quarantine record (shard, row, id, reason, preview)."""
    reason = str(record["reason"])
    if record["id"] is None:
        where = (
            f"request {record['row'] + 1} of {record['shard']}, blank lines not counted"
            if (record["row"] or 0) >= 0 else record["shard"]
        )
        error = {"code": "invalid_request_line", "message": f"{reason} ({where})"}
        return {"id": f"batch_req_{_hex()}", "custom_id": None, "response": None, "error": error}
    server = reason.startswith(SERVER_ERRORS)
    body = {
        "error": {
            "message": reason,
            "type": "server_error" if server else "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    return _answer(record["id"], 500 if server else 400, body)


def _answer(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    response = {"status_code": status, "request_id": f"req_{_hex()}", "body": body}
    return {"id": f"batch_req_{_hex()}", "custom_id": custom_id, "response": response, "error": None}


def _hex() -> str:
    return uuid.uuid4().hex


#: Characters a common line splitter ends a line at (Python's ``str.splitlines``, JavaScript's line terminators)
#: that ``json.dumps(ensure_ascii=False)`` writes as they are; ``\n``, ``\r``, ``\x0b``, ``\x0c`` and
#: ``\x1c``-``\x1e`` it escapes itself.
LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _jsonl(lines: Any) -> bytes:
    """JSON lines, one object a line, text as it is (UTF-8) but for :data:`LINE_BREAKS`, written as JSON escapes
    (``\\u2028``): so each line is one line to any reader. They can stand only inside a JSON string, where the
    escape is the same string."""
    return "".join(_one_line(json.dumps(line, ensure_ascii=False)) + "\n" for line in lines).encode()


def _one_line(text: str) -> str:
    for char in LINE_BREAKS:
        if char in text:
            text = text.replace(char, f"\\u{ord(char):04x}")
    return text


#: The start of a line as :func:`_answer` writes it, up to its custom_id (a JSON string, escapes and all).
LINE_START = re.compile(rb'\{"id": "batch_req_[0-9a-f]{32}", "custom_id": ("(?:[^"\\]|\\.)*")')


def read_custom_ids(fs: pafs.FileSystem, path: str) -> pa.Array:
    """The custom_ids of a committed output file (for ``errors.duplicate_ids``), each read from the start of its line:
    the answer after it is not parsed (20,000 answers of 1,024-dimensional embeddings, 420 MB: 0.6-1.6 s, where parsing
    each line took 7.8-8.7 s). A line that starts otherwise is parsed whole."""
    with fs.open_input_stream(path) as stream:
        lines = stream.read().splitlines()
    ids = []
    for line in lines:
        if not line or line.isspace():
            continue
        start = LINE_START.match(line)
        ids.append(json.loads(start.group(1)) if start else json.loads(line)["custom_id"])
    return pa.array(ids, pa.string())
