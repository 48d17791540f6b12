"""Prompts for decoder models: a template over row columns, optionally wrapped in the model's chat template.

``prompt_template: "Review: {text}\\nSentiment:"`` fills ``{text}`` with the job's
text column and any other ``{name}`` with the row's column of that name (which
the job then reads). A row whose column is null gets an error, not a prompt.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from pipelines.errors import PipelineError
from pipelines.tasks.base import CHARS_PER_TOKEN, _truncated, cut_by_length
from pipelines.tasks.options import template_columns, template_fields

# Values filled into every field of a template to find what all prompts share. They start differently (common
# words, which byte-pair vocabularies merge with a space before them, a rare letter, a capital, a digit, a space,
# punctuation, a newline, a non-ASCII letter), so that the template's text next to a field is left out of the
# shared part wherever a row's first characters could merge with it.
PROBES = ("the", "a", "I", "it", "great", "x", "Hello world", "7", " y", "(", "\nz", "Ödön", "-")


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


def text_input(template: str) -> dict[str, str | None]:
    """The input of a prompt task's rows that must hold a token (``Task.token_inputs``): the text, where the
    template holds it, as any task's text; the template's own words make a prompt of a text with no token no
    less empty, and its other columns are the row's own to leave empty (only a null one is an error)."""
    return {"text": None} if "text" in template_fields(template) else {}


def check_chat(tokenizer: Any, task: str, system_prompt: str | None = None) -> None:
    """Refuse ``chat: true`` where the tokenizer has no chat template, and a system prompt its template can't hold:
    one that raises on a system turn (Gemma's, Mistral-Instruct v0.1's: a bare TemplateError from every actor) or
    leaves it out (the instruction would never reach the model)."""
    if not getattr(tokenizer, "chat_template", None):
        raise PipelineError(
            f"{task}: task.chat is true but this model's tokenizer has no chat template; set chat: false"
        )
    if not system_prompt:
        return
    fix = ("write the instruction into task.prompt_template (the user's turn) and remove task.system_prompt, or "
           "use a model whose chat template has a system role")
    conversation = [{"role": "system", "content": system_prompt}, {"role": "user", "content": "x"}]
    try:
        rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a template raises what it likes (jinja2's TemplateError mostly)
        raise PipelineError(
            f"{task}: this model's chat template refuses a system turn: {str(exc).strip()[:200]}; {fix}"
        ) from None
    if system_prompt.strip() not in rendered:
        raise PipelineError(
            f"{task}: this model's chat template leaves the system turn out (task.system_prompt is not in the "
            f"prompt it renders), so the model would never read it; {fix}"
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
    A prompt far longer than ``max_length`` is tokenized from its tail (:func:`tails`).
    """
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        encoding = tokenizer(
            tails(tokenizer, prompts, not chat, max_length), add_special_tokens=not chat, truncation=True,
            max_length=max_length, padding=False
        )
    finally:
        tokenizer.truncation_side = side
    encoding["truncated"] = _truncated(encoding)
    if encoding["truncated"] is None:  # a slow tokenizer: the prompts it cut are those longer than max_length whole
        encoding["truncated"] = cut_by_length(tokenizer, max_length, prompts, add_special_tokens=not chat)
    return encoding


#: A word's start, with the space before it: where a prompt's tail begins (:func:`tails`).
WORD_START = re.compile(r" (?=\S)")


def tails(tokenizer: Any, prompts: list[str], special: bool, keep: int) -> list[str]:
    """``prompts``, each one longer than :data:`~pipelines.tasks.base.CHARS_PER_TOKEN` characters per token of
    ``keep`` cut to its tail where that tail ends in the same ``keep`` tokens as the whole prompt (``special``: with
    the tokenizer's special tokens, as the prompt is tokenized).

    Prompts are cut from the start (their end holds the instruction and the answer's place), and a fast tokenizer
    tokenizes a prompt whole before it cuts it: a long text in a template cost its whole length. The tail starts at a
    word, with the space before it (GPT-2's byte-level BPE and SentencePiece put the space before the next word), and
    it is taken only where it holds more tokens than ``keep`` and every token of its last ``keep`` starts after the
    tail's first word (the one word whose tokens could depend on what came before it); else the prompt goes whole.
    The mirror of :meth:`~pipelines.tasks.base.Task.heads`."""
    budget = keep * CHARS_PER_TOKEN
    if not getattr(tokenizer, "is_fast", False):
        return prompts
    long: dict[int, str] = {}
    for i, prompt in enumerate(prompts):
        start = WORD_START.search(prompt, len(prompt) - budget, len(prompt) - budget // 2) if len(prompt) > budget \
            else None
        if start is not None:
            long[i] = prompt[start.start():]
    if not long:
        return prompts
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        checked = tokenizer(list(long.values()), add_special_tokens=special, truncation=True, max_length=keep,
                            padding=False, return_offsets_mapping=True)
    finally:
        tokenizer.truncation_side = side
    if not getattr(checked, "encodings", None):
        return prompts
    given = list(prompts)
    for (i, tail), encoding in zip(long.items(), checked.encodings):
        first_word_end = tail.find(" ", 1)
        kept = [begin for (begin, _), mark in zip(encoding.offsets, encoding.special_tokens_mask) if not mark]
        if encoding.overflowing and kept and first_word_end > 0 and min(kept) >= first_word_end:
            given[i] = tail
    return given


def shared_start(template: str, encode: Callable[[list[str]], list[list[int]]]) -> tuple[list[int], list[int]]:
    """The token ids every prompt from ``template`` starts with, and what follows them in one probe's prompt.

    ``encode`` turns filled templates into the token ids the task runs (chat
    rendering, special tokens). The prompts of very different probe values are
    compared: where the template's text before a field merges with a row's first
    characters (" " and "great" become " g" "reat"), some probe merges too, so
    the merged token is left out. A row whose ids still don't start with the
    result simply doesn't share it (the caller checks each row).
    """
    names = template_fields(template)
    ids = encode([template.format_map(dict.fromkeys(names, value)) for value in PROBES])
    common = list(os.path.commonprefix(ids))
    return common, list(ids[0][len(common) :])
