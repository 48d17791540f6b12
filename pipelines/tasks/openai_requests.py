"""The bodies of OpenAI Batch requests: what this project honours, and why it refuses the rest (light: pydantic).

A request line of an OpenAI Batch file reaches a task as the text
``{"url": ..., "body": {...}}`` (see :mod:`pipelines.io.openai_batch`). :func:`parse_request`
turns it into a typed :class:`ChatRequest` or :class:`EmbeddingRequest`, or into the one-line
reason the row is refused: a body option this project cannot honour is a row error that
names it, never silently dropped. Each option of the ``openai`` package's request types is
in exactly one of the sets below (the tests check it against the installed package).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.io.openai_batch import CHAT_URL, EMBEDDINGS_URL

#: Endpoint → the task that serves it (one task per job).
TASK_OF_URL = {CHAT_URL: "text-generation", EMBEDDINGS_URL: "feature-extraction"}

#: The prediction columns of each task when the input is an OpenAI Batch file.
OUTPUT_NAMES = {
    "text-generation": ["generated_text", "prompt_tokens", "generated_tokens", "finish_reason"],
    "feature-extraction": ["embeddings", "prompt_tokens"],
}

#: Chat options that are honoured.
CHAT_HONOURED = frozenset(
    {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "stop"}
)
#: Chat options that change nothing about the answer: accepted, without effect here.
CHAT_NO_EFFECT = frozenset(
    {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
     "prompt_cache_retention", "prompt_cache_options"}
)
#: Chat options this project can't honour: a row error, unless null or given their default value.
CHAT_REFUSED: dict[str, tuple[str, Any]] = {
    "frequency_penalty": ("frequency penalties are not applied", 0),
    "presence_penalty": ("presence penalties are not applied", 0),
    "logit_bias": ("logit biases are not applied", {}),
    "logprobs": ("log probabilities are not returned", False),
    "top_logprobs": ("log probabilities are not returned", 0),
    "response_format": ("structured (JSON) output is not enforced", {"type": "text"}),
    "tools": ("tool calls are not supported", []),
    "tool_choice": ("tool calls are not supported", "none"),
    "parallel_tool_calls": ("tool calls are not supported", None),
    "functions": ("function calls are not supported", []),
    "function_call": ("function calls are not supported", "none"),
    "stream": ("a batch is not streamed", False),
    "stream_options": ("a batch is not streamed", None),
    "modalities": ("only text is generated", ["text"]),
    "audio": ("only text is generated", None),
    "prediction": ("predicted outputs are not supported", None),
    "reasoning_effort": ("reasoning models are not supported", None),
    "verbosity": ("verbosity is not supported", None),
    "web_search_options": ("web search is not supported", None),
    "moderation": ("moderation is not supported", None),
}
EMBEDDING_HONOURED = frozenset({"input", "model", "encoding_format", "dimensions"})
EMBEDDING_NO_EFFECT = frozenset({"user"})

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Message fields whose empty value is no value: every answer the API writes has ``"annotations": []`` in its message
#: (a conversation continued from an earlier answer carries it, as ``message.model_dump()`` does).
EMPTY_AS_NOT_GIVEN: dict[str, Any] = {"annotations": []}
MAX_STOPS = 4
MAX_CHOICES = 128
MAX_INPUTS = 2048


class Body(BaseModel):
    """Base of the typed bodies: JSON types as written (no "1" for 1), other keys already checked."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ChatRequest(Body):
    messages: list[dict[str, Any]] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    seed: int | None = None
    stop: str | list[str] | None = None

    def conversation(self) -> list[dict[str, str]] | str:
        """The messages as the chat template takes them (``developer`` is a system turn), or why not."""
        turns = []
        for i, message in enumerate(self.messages):
            turn = _turn(message)
            if isinstance(turn, str):
                return f"messages[{i}]: {turn}"
            turns.append(turn)
        return turns

    def new_tokens(self, default: int) -> int:
        """Most tokens to generate: max_completion_tokens, else max_tokens, else the job's max_new_tokens."""
        return self.max_completion_tokens or self.max_tokens or default

    def stops(self) -> tuple[str, ...]:
        """The request's stop strings; none for ``[]`` and for no ``stop`` alike (``stop is None`` tells them apart:
        only a request without ``stop`` takes the model's stop strings)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class EmbeddingRequest(Body):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float"] | None = None
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_request(text: str, task: str) -> ChatRequest | EmbeddingRequest | str:
    """The typed body of a request row for a job running ``task``, or the reason the row is refused."""
    request = json.loads(text)
    url, body = request["url"], request["body"]
    wanted = TASK_OF_URL[url]
    if wanted != task:
        return (
            f"url {url} is served by task {wanted}, and this job runs {task}: one endpoint per job; "
            f"run the {url} requests in a job with task.type {wanted}"
        )
    if url == CHAT_URL:
        return _parse_chat(body)
    return _parse_embedding(body)


def _parse_chat(body: dict[str, Any]) -> ChatRequest | str:
    body = {key: value for key, value in body.items() if value is not None}
    for key, value in body.items():
        if key in CHAT_HONOURED or key in CHAT_NO_EFFECT:
            continue
        if key not in CHAT_REFUSED:
            return f"unknown option {key!r} for {CHAT_URL}"
        why, default = CHAT_REFUSED[key]
        if not _is_default(value, default):
            return f"unsupported option {key!r}: {why} by this project"
    request = _validated(ChatRequest, body)
    if isinstance(request, str):
        return request
    if request.max_tokens and request.max_completion_tokens and request.max_tokens != request.max_completion_tokens:
        return "max_tokens and max_completion_tokens differ: give one of them"
    stops = request.stops()
    if len(stops) > MAX_STOPS or not all(stops):
        return f"stop: give {MUST_BE['stop']}"
    conversation = request.conversation()
    return conversation if isinstance(conversation, str) else request


def _is_default(value: Any, default: Any) -> bool:
    """Whether an option's value is its default, as JSON types it: ``0`` is no ``false`` (``0 == False`` in Python)."""
    if default is None:
        return False
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    return bool(value == default)


def _parse_embedding(body: dict[str, Any]) -> EmbeddingRequest | str:
    body = {key: value for key, value in body.items() if value is not None}
    for key in body:
        if key not in EMBEDDING_HONOURED and key not in EMBEDDING_NO_EFFECT:
            return f"unknown option {key!r} for {EMBEDDINGS_URL}"
    if body.get("encoding_format") == "base64":
        return "unsupported option 'encoding_format': base64 is not written by this project; ask for float"
    given = body.get("input")
    if isinstance(given, list) and given and not all(isinstance(item, str) for item in given):
        if all(isinstance(item, int) or (isinstance(item, list) and all(isinstance(i, int) for i in item))
               for item in given):
            return "input as token ids is not supported: give a string or a list of strings"
        index, item = next((i, item) for i, item in enumerate(given) if not isinstance(item, str))
        return f"input[{index}]: give a string or a list of strings (got {json.dumps(item)[:80]})"
    request = _validated(EmbeddingRequest, body)
    if isinstance(request, str):
        return request
    texts = request.texts()
    if not texts or len(texts) > MAX_INPUTS:
        return f"input: give 1 to {MAX_INPUTS} strings"
    if "" in texts:  # refused as the API refuses it; white space alone is embedded where the tokenizer reads it
        where = "" if isinstance(request.input, str) else f"[{texts.index('')}]"
        return f"input{where} is an empty string, which can't be embedded"
    return request


#: What each option of a typed body must be, as the refusal of a value of the wrong type or range says it (pydantic's
#: own words name its types, ``stop.str: Input should be a valid string``, not what the request may give).
MUST_BE: dict[str, str] = {
    "messages": "a non-empty list of messages, each an object with role and content",
    "model": "a string",
    "max_tokens": "an integer of at least 1",
    "max_completion_tokens": "an integer of at least 1",
    "temperature": "a number from 0 to 2",
    "top_p": "a number from 0 to 1",
    "n": f"an integer from 1 to {MAX_CHOICES}",
    "seed": "an integer",
    "stop": f"a string or a list of up to {MAX_STOPS} non-empty strings",
    "input": f"a string or a list of 1 to {MAX_INPUTS} strings",
    "encoding_format": '"float"',
    "dimensions": "an integer of at least 1",
}


def _validated(model: type[Body], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        item = exc.errors()[0]
        field = str(item["loc"][0]) if item["loc"] else "body"
        if field not in MUST_BE:  # not reached: every field of a Body is in MUST_BE (a test checks it)
            return f"{field}: {item['msg']}"
        if field not in body:
            return f"{field} is missing: give {MUST_BE[field]}"
        shown = "" if field == "messages" else f" (got {json.dumps(body[field])[:80]})"  # messages: long, private
        return f"{field}: give {MUST_BE[field]}{shown}"


def _turn(message: Any) -> dict[str, str] | str:
    """One message as ``{role, content}`` for the chat template, or why it can't be one."""
    if not isinstance(message, dict):
        return "a message is an object with role and content"
    message = {  # null: not given, as in a body; so too an earlier answer's empty annotations
        key: value for key, value in message.items()
        if value is not None and not (key in EMPTY_AS_NOT_GIVEN and value == EMPTY_AS_NOT_GIVEN[key])
    }
    extra = sorted(set(message) - {"role", "content"})
    if extra:
        return f"message field {extra[0]!r} is not supported (only role and content)"
    role = message.get("role")
    if role not in ROLES:
        return f"role {role!r} is not supported (system, developer, user, assistant)"
    content = message.get("content")
    if isinstance(content, list):
        return _text_parts(content, ROLES[role])
    if not isinstance(content, str):
        return "content must be text or a list of text parts"
    return {"role": ROLES[role], "content": content}


def _text_parts(parts: list[Any], role: str) -> dict[str, str] | str:
    """Text content parts joined by newlines; other parts (images, audio, files) are refused."""
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            return f"content part of type {kind!r} is not supported (text only)"
        texts.append(part["text"])
    return {"role": role, "content": "\n".join(texts)}
