"""Reading an OpenAI Batch input file: one request per line, ``custom_id`` as the row id.

Each non-blank line is ``{"custom_id", "method": "POST", "url", "body": {...}}``. A line
becomes a row whose id column holds its ``custom_id`` and whose text column holds
``{"url": ..., "body": ...}`` as JSON text, for the task to read (the body's options are
the task's business: :mod:`pipelines.tasks.openai_requests`). A line that is not such a
request keeps its row, with the reason in ``_error``: nothing is lost.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipelines.io.block import ERROR
from pipelines.io.reader import (
    broken_array,
    data_pieces,
    drop_lone_surrogates,
    json_array,
    json_stream,
    line_values,
    lone_surrogate,
    parse_line,
    several,
    without_marks,
    without_tail,
)

CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"
URLS = (CHAT_URL, EMBEDDINGS_URL)
#: Azure OpenAI's Batch files name the same endpoints without the version: read as OpenAI's.
AZURE_URLS = {"/chat/completions": CHAT_URL, "/embeddings": EMBEDDINGS_URL}
LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})
#: Why a line of the API's output or error file (often beside the requests it answers) is no request: no custom_id
#: for its row, so that the error file does not say the request it answers failed.
ANSWER_LINE = (
    "a line of a Batch output or error file (id, custom_id, response, error), not a request: keep those files out of "
    "input.paths"
)


def read_requests(data: bytes, id_column: str, text_column: str) -> pa.Table:
    """The requests of a Batch file: ``id_column`` (custom_id), ``text_column`` (url and body), ``_error``."""
    ids: list[str | None] = []
    texts: list[str | None] = []
    errors: list[str | None] = []
    if (values := json_array(data)) is not None:  # each of its lines would be a broken request, none saying why
        raise ValueError(array_reason(len(values)))
    if (broken := broken_array(data)) is not None:  # so too one that does not parse as one (cut short): its line
        raise ValueError(broken)
    if (stream := json_stream(data)) is not None:  # so too requests written over several lines each
        raise ValueError(stream_reason(len(stream[0])))
    data = without_marks(data)  # byte order marks at the start of a line, as JSON lines skip them
    pieces = list(data_pieces(data, data.split(b"\n")))
    if any(spans for _, _, spans in pieces):  # so too requests written over several lines among lines
        raise ValueError(spanning_reason())
    for number, line, _ in pieces:
        if not line.strip():
            continue
        line = without_tail(line)  # an array's lines with its brackets stripped end in a comma
        record, error = parse_line(line, undecoded=True)  # bytes that are no UTF-8 cost the values holding them
        # requests that share a line (written without a newline between them): each a row, as in JSON lines; whether
        # a line holds several is told from it parsed strictly, as the plan's count tells it (a line that is no UTF-8
        # splits only where objects meet)
        split = error is not None and several(line, parse_line(line)[1])
        for record, error in line_values(line, number, undecoded=True) if split else [(record, error)]:
            if error is None and any(lone_surrogate(key) for key in record):
                record, error = {"custom_id": record.get("custom_id")}, "a key of the request line is not valid UTF-8"
            if error is None:  # every value is read (the body is the text)
                error = drop_lone_surrogates(record, list(record), undecoded=True)
            else:  # the custom_id is kept where it is whole, for the error line to name its request
                drop_lone_surrogates(record, ["custom_id"], undecoded=True)
            custom_id, text, problem = (
                _request(record) if error is None else (_shown(record.get("custom_id")), None, error))
            ids.append(custom_id)
            texts.append(text)
            errors.append(problem)
    return pa.table(
        {
            id_column: pa.array(ids, pa.string()),
            text_column: pa.array(texts, pa.string()),
            ERROR: pa.array(errors, pa.string()),
        }
    )


def array_reason(values: int) -> str:
    """Why a Batch file that is one JSON array is not read."""
    return (
        f"the file is one JSON array of {values} values, not JSON lines (one request a line): "
        "`jq -c '.[]' FILE > FILE.jsonl` writes them one a line"
    )


def stream_reason(values: int) -> str:
    """Why a Batch file of requests written over several lines each is not read."""
    return (
        f"the file holds {values} JSON values written over several lines each (as `jq .` writes them), not JSON lines "
        "(one request a line): `jq -c . FILE > FILE.jsonl` writes them one a line"
    )


def spanning_reason() -> str:
    """Why a Batch file that holds requests written over several lines among its lines is not read."""
    return (
        "the file holds requests written over several lines each (as `jq .` writes them) among its lines, not JSON "
        "lines (one request a line): `jq -c . FILE > FILE.jsonl` writes them one a line"
    )


def _request(record: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(custom_id, request text, error) of one parsed line."""
    custom_id = record.get("custom_id")
    if "response" in record and "error" in record and "body" not in record:  # the answer to a request, not one
        return None, None, ANSWER_LINE
    problem = _envelope_problem(record)
    if problem:
        return _shown(custom_id), None, problem
    url = AZURE_URLS.get(record["url"], record["url"])
    text = json.dumps({"url": url, "body": record["body"]}, ensure_ascii=False)
    return custom_id, text, None


def _shown(custom_id: Any) -> str | None:
    """The id of a request's row: its custom_id where it is a string; else none (the line is no request's: as its
    JSON text, ``7`` was answered as request ``"7"``, which another line may be)."""
    return custom_id if isinstance(custom_id, str) else None


def _envelope_problem(record: dict[str, Any]) -> str | None:
    custom_id = record.get("custom_id")
    if custom_id is None:
        return "custom_id is missing"
    if not isinstance(custom_id, str) or not custom_id:
        return f"custom_id must be a non-empty string (got {json.dumps(custom_id)})"
    extra = sorted(set(record) - LINE_KEYS)
    if extra:
        return f"unknown key {extra[0]!r} in the request line (custom_id, method, url, body)"
    if record.get("method") != "POST":
        return f"method must be POST (got {json.dumps(record.get('method'))})"
    url = record.get("url")
    if not isinstance(url, str) or (url not in URLS and url not in AZURE_URLS):  # a list or an object: no dict key
        return (f"url {json.dumps(url)} is not supported; this project serves {' and '.join(URLS)} (Azure OpenAI's "
                f"{' and '.join(AZURE_URLS)})")
    if not isinstance(record.get("body"), dict):
        return "body must be a JSON object"
    return None
