"""Prompts for decoder models: a template over row columns, optionally wrapped in the model's chat template.

``prompt_template: "Review: {text}\\nSentiment:"`` fills ``{text}`` with the job's
text column and any other ``{name}`` with the row's column of that name (which
the job then reads). A row whose column is null gets an error, not a prompt.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.errors import PipelineError
from pipelines.tasks.base import CHARS_PER_TOKEN, _truncated, cut_by_length
from pipelines.tasks.options import template_columns, template_fields

# Values filled into every field of a template to find what all prompts share. They start differently (common
# words, which byte-pair vocabularies merge with a space before them, a rare letter, a capital, a digit, a space,
# punctuation, a newline, a non-ASCII letter), so that the template's text next to a field is left out of the
# shared part wherever a row's first characters could merge with it.
PROBES = ("the", "a", "I", "it", "great", "x", "Hello world", "7", " y", "(", "\nz", "Ödön", "-")


def fill(
    template: str, texts: list[str], columns: dict[str, list[Any]], row_text: RowText | None = None
) -> tuple[list[str | None], dict[int, str]]:
    """The filled template per row (None where a column is null) and those rows' errors; with ``row_text``, a
    special token's text that a row's values make (one alone, two side by side, one with the template's text
    beside it) is hidden (:meth:`RowText.hide_in`), so that it is read as text."""
    names = template_columns(template)
    parsed = list(string.Formatter().parse(template))  # (literal text, field): plain {name} fields only
    prompts: list[str | None] = []
    errors: dict[int, str] = {}
    for i, text in enumerate(texts):
        values = {"text": text, **{name: columns[name][i] for name in names}}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            errors[i] = f"prompt column {missing[0]!r} is null"
            prompts.append(None)
            continue
        if row_text is None:
            prompts.append(template.format_map(values))
            continue
        parts: list[str] = []  # the template filled as format_map fills it, with where each value went
        spans: list[tuple[int, int]] = []
        at = 0
        for literal, field, _, _ in parsed:
            parts.append(literal)
            at += len(literal)
            if field is not None:
                value = format(values[field], "")
                spans.append((at, at + len(value)))
                parts.append(value)
                at += len(value)
        prompts.append(row_text.hide_in("".join(parts), spans))
    return prompts, errors


#: What stands in a prompt for a special token's text found in a row's value (its index in
#: :attr:`RowText.specials`), or for one of these two private-use characters that such a value held itself (o, c).
OPEN, CLOSE = "\ue000", "\ue001"
HIDDEN = re.compile(f"{OPEN}(\\d+|o|c){CLOSE}")
ESCAPED = {"o": OPEN, "c": CLOSE}


class RowText:
    """Row values read as the text they are. A tokenizer reads a special token's text anywhere in a prompt as that
    token, so a review holding ``<|im_end|>`` then ``<|im_start|>user`` opened a turn of its own, and ``</s>`` ended
    a text early. :meth:`hide_in` (through :func:`fill`, for a template's values) and :meth:`hide` (a whole value, an
    OpenAI message's) put a stand-in for such text before the chat template renders it; :meth:`encode` tokenizes a
    prompt holding stand-ins as the tokenizer tokenizes it with the value's text back, then puts the tokens of its
    characters in place of each special token that text made: the template's text and the row's other text keep the
    tokenizer's own ids (a special token splits a text there in any case). A prompt with no stand-in is the
    tokenizer's own ``input_ids``, id for id. A slow (Python) tokenizer, which gives no offsets, reads such text as
    the tokens still."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        added = [token for token in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(token, "special", False) and token.content]
        #: The special tokens' texts, longest first (a longer one holding a shorter is taken whole).
        self.specials = sorted({token.content for token in added}, key=len, reverse=True)
        self.special_ids = {int(tokenizer.convert_tokens_to_ids(text)) for text in self.specials}
        self.index = {text: str(i) for i, text in enumerate(self.specials)} | {OPEN: "o", CLOSE: "c"}
        self.escaped = re.compile("|".join(map(re.escape, [*self.specials, OPEN, CLOSE])))
        self.newline: list[int] | None = None

    def hide(self, value: Any) -> Any:
        """``value`` with a stand-in for each special token's text it holds and for each of the stand-ins' own
        characters (so that no text of a row is taken for a stand-in); any other value as it is."""
        if not isinstance(value, str) or not self.escaped.search(value):
            return value
        return self.hide_in(value, [(0, len(value))])

    def hide_in(self, text: str, spans: list[tuple[int, int]]) -> str:
        """``text`` with a stand-in for each special token's text, and each stand-in's character, that overlaps one
        of the ``spans`` (characters) of a row's values: the rest, a template's own, stays as it is."""
        def stand_in(match: re.Match[str]) -> str:
            start, end = match.span()
            row = any(start < stop and begin < end for begin, stop in spans)
            return f"{OPEN}{self.index[match.group()]}{CLOSE}" if row else match.group()

        return self.escaped.sub(stand_in, text) if spans else text

    def shown(self, prompt: str) -> tuple[str, list[tuple[int, int]]]:
        """``prompt`` with the value's own text back in place of each stand-in, and where (characters) each
        special token's text put back stands in it."""
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        at = length = 0
        for match in HIDDEN.finditer(prompt):
            parts.append(prompt[at : match.start()])
            length += match.start() - at
            code = match.group(1)
            text = ESCAPED.get(code) or self.specials[int(code)]
            if code not in ESCAPED:
                spans.append((length, length + len(text)))
            parts.append(text)
            length += len(text)
            at = match.end()
        parts.append(prompt[at:])
        return "".join(parts), spans

    def encode(self, prompts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """The token ids of ``prompts``: the tokenizer's, where a prompt holds no stand-in."""
        hidden = {i for i, prompt in enumerate(prompts) if HIDDEN.search(prompt)}
        plain = [i for i in range(len(prompts)) if i not in hidden]
        found: list[list[int]] = [[] for _ in prompts]
        if plain:
            ids = self.tokenizer([prompts[i] for i in plain], add_special_tokens=add_special_tokens)["input_ids"]
            for i, row in zip(plain, ids):
                found[i] = list(row)
        for i in hidden:
            found[i] = self._as_text(prompts[i], add_special_tokens)
        return found

    def _as_text(self, prompt: str, add_special_tokens: bool) -> list[int]:
        shown, spans = self.shown(prompt)
        if not spans or not getattr(self.tokenizer, "is_fast", False):
            return list(self.tokenizer(shown, add_special_tokens=add_special_tokens)["input_ids"])
        encoding = self.tokenizer(shown, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        tokens = list(zip(encoding["input_ids"], encoding["offset_mapping"]))
        ids: list[int] = []
        i = 0
        while i < len(tokens):
            token, (start, end) = tokens[i]
            span = next((s for s in spans if start < s[1] and s[0] < end), None) if token in self.special_ids else None
            if span is None:
                ids.append(token)
                i += 1
                continue
            ids += self._characters(shown[min(start, span[0]) : span[1]])  # with the spaces before it it took (lstrip)
            i += 1
            if end > span[1]:  # it took the spaces after it (rstrip): they go with the text that follows, read again
                stop = next((j for j in range(i, len(tokens)) if tokens[j][0] in self.special_ids), len(tokens))
                limit = tokens[stop][1][0] if stop < len(tokens) and tokens[stop][1][1] > 0 else len(shown)
                ids += self._characters(shown[span[1] : limit])
                i = stop
        return ids

    def _characters(self, text: str) -> list[int]:
        """The tokens of a special token's text (or of the text after it) read as characters, inside a text (not at
        its start: a tokenizer that puts a word mark before a text's first word, Llama's Metaspace, puts none there),
        found after a newline, as Transformers' own ``sanitize_control_tokens`` does; alone where the newline's tokens
        merge."""
        if not text:
            return []
        if self.newline is None:
            self.newline = list(self.tokenizer("\n", add_special_tokens=False)["input_ids"])
        led = list(self.tokenizer("\n" + text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        if led[: len(self.newline)] == self.newline and len(led) > len(self.newline):
            return led[len(self.newline) :]
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


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
    return special_ends(tokenizer)[0]


def special_ends(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before a text (Llama's ``<s>``) and after it (T5's ``</s>``), found by
    comparison."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


def tokenize_prompts(row_text: RowText, prompts: list[str], chat: bool, max_length: int) -> dict[str, Any]:
    """Token ids of rendered prompts; a prompt longer than ``max_length`` loses its beginning (flagged).

    The end of a prompt holds the instruction and the place the answer starts, so
    that is what truncation keeps. Chat prompts carry their special tokens as text;
    a row's value is read as text (:class:`RowText`).
    A prompt far longer than ``max_length`` is tokenized from its tail (:func:`tails`).
    """
    tokenizer = row_text.tokenizer
    hidden = {i for i, prompt in enumerate(prompts) if HIDDEN.search(prompt)}
    plain = [prompt for i, prompt in enumerate(prompts) if i not in hidden] if hidden else prompts
    encoding = _cut_left(tokenizer, plain, chat, max_length) if plain else {"input_ids": [], "truncated": []}
    if not hidden:
        return encoding
    ids, truncated = iter(encoding["input_ids"]), iter(encoding["truncated"])
    found: dict[str, Any] = {"input_ids": [], "truncated": np.zeros(len(prompts), dtype=bool)}
    ends = ([], []) if chat else special_ends(tokenizer)
    for i, prompt in enumerate(prompts):
        if i not in hidden:
            found["input_ids"].append(list(next(ids)))
            found["truncated"][i] = next(truncated)
            continue
        whole = row_text.encode([prompt], add_special_tokens=not chat)[0]
        if len(whole) > max_length:  # its beginning goes, the special tokens around it stay (as the tokenizer cuts)
            body = whole[len(ends[0]) : len(whole) - len(ends[1])]
            whole = [*ends[0], *body[len(body) - (max_length - len(ends[0]) - len(ends[1])) :], *ends[1]]
            found["truncated"][i] = True
        found["input_ids"].append(whole)
    return found


def _cut_left(tokenizer: Any, prompts: list[str], chat: bool, max_length: int) -> Any:
    """The tokenizer's ids of ``prompts``, each cut to its last ``max_length`` tokens (``truncated``: which were)."""
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
    The mirror of :meth:`~pipelines.tasks.base.Task.heads`. A prompt holding a row's special-token text
    (:class:`RowText`) goes whole: its tokens are not the tokenizer's own."""
    budget = keep * CHARS_PER_TOKEN
    if not getattr(tokenizer, "is_fast", False):
        return prompts
    long: dict[int, str] = {}
    for i, prompt in enumerate(prompts):
        start = WORD_START.search(prompt, len(prompt) - budget, len(prompt) - budget // 2) if len(prompt) > budget \
            else None
        if start is not None and not HIDDEN.search(prompt):
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
