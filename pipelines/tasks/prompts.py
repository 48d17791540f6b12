"""Prompts for decoder models: a template over row columns, optionally wrapped in the model's chat template.

``prompt_template: "Review: {text}\\nSentiment:"`` fills ``{text}`` with the job's
text column and any other ``{name}`` with the row's column of that name (which
the job then reads). A row whose column is null gets an error, not a prompt.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from pipelines.errors import PipelineError
from pipelines.tasks.base import TaskOptions, _truncated


class PromptOptions(TaskOptions):
    prompt_template: str = Field(
        default="{text}", description="The prompt; {text} is the text column, {name} any other input column."
    )
    chat: bool = Field(default=False, description="Wrap the prompt as a user message in the model's chat template.")
    system_prompt: str | None = Field(default=None, description="With chat: a system message before the prompt.")

    @field_validator("prompt_template")
    @classmethod
    def _fields_are_names(cls, template: str) -> str:
        template_fields(template)
        return template


def template_fields(template: str) -> list[str]:
    """The column names a template uses, in order of first use; only plain ``{name}`` fields."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"prompt_template is not a valid template ({exc}); write literal braces as {{{{ and }}}}"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"prompt_template field {{{name}}}: use plain column names like {{text}} or {{title}} "
                "(no positions, attributes, formats or conversions)"
            )
        if name not in names:
            names.append(name)
    return names


def template_columns(template: str) -> list[str]:
    """Row columns besides the text column that a template reads."""
    return [name for name in template_fields(template) if name != "text"]


def fill(template: str, texts: list[str], columns: dict[str, list[Any]]) -> tuple[list[str | None], dict[int, str]]:
    """The filled template per row (None where a column is null) and those rows' errors."""
    names = template_columns(template)
    prompts: list[str | None] = []
    errors: dict[int, str] = {}
    for i, text in enumerate(texts):
        values = {"text": text, **{name: columns[name][i] for name in names}}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            errors[i] = f"prompt column {missing[0]!r} is null"
            prompts.append(None)
        else:
            prompts.append(template.format_map(values))
    return prompts, errors


def check_chat(tokenizer: Any, task: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise PipelineError(
            f"{task}: task.chat is true but this model's tokenizer has no chat template; set chat: false"
        )


def render(tokenizer: Any, prompts: list[str], chat: bool, system_prompt: str | None) -> list[str]:
    """Prompts as the model sees them: plain, or each a user turn of the chat template, ready for the answer."""
    if not chat:
        return prompts
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    conversations = [[*head, {"role": "user", "content": prompt}] for prompt in prompts]
    if not conversations:
        return []
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. Llama's ``<s>``), found by comparison."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def tokenize_prompts(tokenizer: Any, prompts: list[str], chat: bool, max_length: int) -> dict[str, Any]:
    """Token ids of rendered prompts; a prompt longer than ``max_length`` loses its beginning (flagged).

    The end of a prompt holds the instruction and the place the answer starts, so
    that is what truncation keeps. Chat prompts carry their special tokens as text.
    """
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        encoding = tokenizer(
            prompts, add_special_tokens=not chat, truncation=True, max_length=max_length, padding=False
        )
    finally:
        tokenizer.truncation_side = side
    encoding["truncated"] = _truncated(encoding)
    if encoding["truncated"] is None:
        encoding["truncated"] = np.zeros(len(prompts), dtype=bool)
    return encoding
