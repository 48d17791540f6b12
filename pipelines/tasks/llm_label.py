"""llm-label: a causal LM picks each row's label by how likely it finds each candidate as the answer.

Labels are ranked by the log-likelihood of their tokens after the row's prompt
(the sum, or the mean per token), and ``score`` is their softmax over the
candidates. No sampling: the same rows give the same labels whatever the batch.

The prompt part every row shares (few-shot examples, a system prompt, the chat
template's opening: the tokens all prompts of the template start with) is run
once per actor and its KV cache reused by every micro-batch; each row's own
prompt tokens run once, left-padded after it, and give the first token of every
label; labels of several tokens then add only their own tokens, one label at a
time, on that row's cache (see :mod:`pipelines.inference.kv_cache`). With
``reuse_prefix: false``, or a model whose cache can't hold that layout, every
(row, label) pair is one right-padded feature computed in full, as zero-shot NLI
makes one feature per hypothesis; both give the same scores up to float rounding.

Label tokens are scored as the model would write them after the prompt: the
prompt is tokenized alone and with the label appended, and the label's tokens
are what the second adds (trailing spaces of the prompt move into the label);
where a tokenizer merges across the boundary, the label is tokenized on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.errors import PipelineError
from pipelines.inference.batching import Ragged
from pipelines.inference.kv_cache import Prefix, PrefixTokens, keeps_logits, shared_prefix
from pipelines.tasks.base import Features, LabelTask, Outputs, softmax
from pipelines.tasks.options import LLMLabelOptions
from pipelines.tasks.prompts import (
    RowText,
    check_chat,
    fill,
    render,
    shared_start,
    special_prefix,
    tails,
    template_fields,
    text_input,
)


class LLMLabel(LabelTask):
    name = "llm-label"
    options_model = LLMLabelOptions
    model_class = "AutoModelForCausalLM"
    tokenizer_in_forward = False
    # Padding: right with full recomputation (each label's tokens sit right after its own prompt, padding only
    # follows); left with a shared prefix, so that every row's prompt ends in the last column (set in ``setup``).
    options: LLMLabelOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = list(self.options.candidate_labels)
        if self.options.chat:
            check_chat(self.tokenizer, self.name, self.options.system_prompt)
        self.specials = [] if self.options.chat else special_prefix(self.tokenizer)
        self.row_text = RowText(self.tokenizer)
        self.keeps_logits = False
        self.kv_prefix: Prefix | None = None  # set in setup where rows continue a shared prefix
        self.shared: PrefixTokens | None = None  # its tokens: what encode needs (setup, or plan_setup)
        self.label_width = max(len(self.tokenizer(" " + x, add_special_tokens=False)["input_ids"]) for x in self.labels)
        self._check_no_label_starts_another()

    def _check_no_label_starts_another(self) -> None:
        """A label's own tokens are scored, not an end after them: a label whose tokens begin another's can't be
        told from that one's start (under ``mean`` the longer wins wherever its rest is likely, under ``sum``
        it never wins). Checked on the tokens scored after prompts from the template (a row's value ending in a
        word, or in a space: what comes between prompt and label may differ)."""
        names = template_fields(self.options.prompt_template)
        filled = [self.options.prompt_template.format_map(dict.fromkeys(names, value)) for value in ("x", "x ")]
        rendered = render(self.tokenizer, filled, self.options.chat, self.options.system_prompt)
        for continuations in self._tokenize(rendered)[1]:
            for first, (short, a) in enumerate(zip(self.labels, continuations)):
                for long, b in zip(self.labels[first + 1:], continuations[first + 1:]):
                    if a == b:
                        raise PipelineError(
                            f"{self.name}: candidate labels {short!r} and {long!r} are the same tokens to this "
                            "model's tokenizer (it normalises text, or knows neither's characters), so their scores "
                            f"always tie and {short!r} would win every such row; rename one to words the tokenizer "
                            "tells apart"
                        )
            for short, a in zip(self.labels, continuations):
                for long, b in zip(self.labels, continuations):
                    if len(a) < len(b) and b[: len(a)] == a:
                        raise PipelineError(
                            f"{self.name}: candidate label {short!r} is how {long!r} starts, token for token; "
                            "only a label's own tokens are scored, so the model can't tell the two apart (under "
                            f"normalize: mean {long!r} wins wherever its rest is likely, under sum it never wins). "
                            f"Rename one so that neither starts the other, e.g. {long!r} → a word of its own"
                        )

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        # Most causal LMs can compute logits for the last positions only: far less memory for a big vocabulary.
        self.keeps_logits = keeps_logits(model)
        if self.options.reuse_prefix:
            start, probe = shared_start(self.options.prompt_template, self._prompt_ids)
            self.kv_prefix = shared_prefix(model, start, probe, device) if probe else None
        self.shared = self.kv_prefix
        self.padding_side = "left" if self.shared is not None else "right"

    def plan_setup(self) -> None:
        if self.options.reuse_prefix:  # assuming the model continues rows from a cache, as most causal LMs do
            start, probe = shared_start(self.options.prompt_template, self._prompt_ids)
            self.shared = PrefixTokens(start) if probe else None
        self.padding_side = "left" if self.shared is not None else "right"

    def footprint(self, width: int) -> int:
        if self.shared is None:
            return width
        return width + len(self.shared) + self.label_width  # the prefix's cache, then a label's tokens


    # encode --------------------------------------------------------------------------

    def too_long_reason(self, where: str = "text") -> str:
        """A prompt is cut where it and a label's tokens would pass max_length: a prompt under max_length too, which
        a reason naming max_length alone said was longer."""
        return (f"{where} longer than max_length (max_length is {self.max_length} tokens, the prompt and its "
                "candidate label together)" + self.cap_note())

    def token_inputs(self) -> dict[str, str | None]:
        return text_input(self.options.prompt_template)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        prompts, errors = fill(self.options.prompt_template, texts, columns, self.row_text)
        rows = [i for i, p in enumerate(prompts) if p is not None]
        filled = [prompt for prompt in prompts if prompt is not None]
        rendered = render(self.tokenizer, filled, self.options.chat, self.options.system_prompt)
        kept: list[tuple[int, list[int], list[list[int]]]] = []
        truncated = np.zeros(len(texts), dtype=bool)
        for row, prompt_ids, continuations in zip(rows, *self._tokenize(rendered)):
            budget = self.max_length - max(map(len, continuations))
            if budget <= len(self.specials):
                errors[row] = f"candidate labels leave no room for the prompt within max_length ({self.max_length})"
                continue
            if len(prompt_ids) > budget:  # keep the end of the prompt: the question and the answer slot
                prompt_ids = self.specials + prompt_ids[len(prompt_ids) - budget + len(self.specials) :]
                truncated[row] = True
            kept.append((row, prompt_ids, continuations))
        features = self._per_row(kept) if self.shared is not None else self._per_label(kept)
        features.truncated = truncated
        features.errors = errors
        return features

    def _per_label(self, kept: list[tuple[int, list[int], list[list[int]]]]) -> Features:
        """One feature per (row, label): the whole prompt followed by the label."""
        ids, label_index, starts, owners = [], [], [], []
        for row, prompt_ids, continuations in kept:
            for j, continuation in enumerate(continuations):
                ids.append(prompt_ids + continuation)
                label_index.append(j)
                starts.append(len(prompt_ids))
                owners.append(row)
        tokens = Ragged.from_lists(ids)
        features = Features(tokens={"input_ids": tokens}, row=np.asarray(owners, dtype=np.int64))
        features.extra = {
            "label_index": np.asarray(label_index, dtype=np.int64),
            "label_start": np.asarray(starts, dtype=np.int64),
            "label_len": tokens.lengths - np.asarray(starts, dtype=np.int64),
        }
        return features

    def _per_row(self, kept: list[tuple[int, list[int], list[list[int]]]]) -> Features:
        """One feature per row: its prompt after the shared prefix (all of it where it doesn't start with it)."""
        assert self.shared is not None
        prefixed = np.asarray([self.shared.starts(ids) for _, ids, _ in kept], dtype=bool)
        own = [ids[len(self.shared) :] if shared else ids for (_, ids, _), shared in zip(kept, prefixed)]
        labels = np.empty(len(kept), dtype=object)
        for i, (_, _, continuations) in enumerate(kept):
            labels[i] = continuations
        features = Features(
            tokens={"input_ids": Ragged.from_lists(own)}, row=np.asarray([row for row, _, _ in kept], dtype=np.int64)
        )
        features.extra = {"prefixed": prefixed, "labels": labels}
        return features

    def _prompt_ids(self, filled: list[str]) -> list[list[int]]:
        """The token ids of filled templates, as ``encode`` computes them (without truncation)."""
        rendered = render(self.tokenizer, filled, self.options.chat, self.options.system_prompt)
        bare = [prompt.rstrip(" ") for prompt in rendered]
        return [list(ids) for ids in self.tokenizer(bare, add_special_tokens=not self.options.chat)["input_ids"]]

    def _tokenize(self, rendered: list[str]) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Per prompt: its token ids, and each label's continuation ids."""
        if not rendered:
            return [], []
        special = not self.options.chat
        bare = [prompt.rstrip(" ") for prompt in rendered]
        # trailing spaces of the prompt belong to the label's first token (" positive", not " " + "positive")
        lead = [prompt[len(stripped) :] + self._label_prefix(prompt) for prompt, stripped in zip(rendered, bare)]
        bare = tails(self.tokenizer, bare, special, self.max_length)  # a long prompt's tail: its last tokens, as whole
        k = len(self.labels)
        prompt_ids = self.row_text.encode(bare, add_special_tokens=special)
        joined = [bare[i] + lead[i] + label for i in range(len(bare)) for label in self.labels]
        joined_ids = self.row_text.encode(joined, add_special_tokens=special)
        pairs = [(space, label) for space in dict.fromkeys(lead) for label in self.labels]
        alone = self.tokenizer([space + label for space, label in pairs], add_special_tokens=False)
        alone_of = dict(zip(pairs, alone["input_ids"]))
        continuations = []
        for i, ids in enumerate(prompt_ids):
            per_label = []
            for j, label in enumerate(self.labels):
                full = joined_ids[i * k + j]
                if full[: len(ids)] == ids and len(full) > len(ids):
                    per_label.append(list(full[len(ids) :]))
                else:  # the tokenizer merged prompt and label: score the label's own tokens
                    per_label.append(list(alone_of[(lead[i], label)]))
            continuations.append(per_label)
        return [list(ids) for ids in prompt_ids], continuations

    def _label_prefix(self, prompt: str) -> str:
        """What separates prompt and label: the option, else a space unless chat or the prompt ends in one."""
        if self.options.label_prefix is not None:
            return self.options.label_prefix
        return "" if self.options.chat or prompt[-1:].isspace() else " "

    # forward -------------------------------------------------------------------------

    def forward(self, model, inputs, extra):
        if self.kv_prefix is None:
            return self._forward_per_label(model, inputs, extra)
        return self._forward_per_row(model, self.kv_prefix, inputs, extra)

    def _forward_per_row(self, model, prefix: Prefix, inputs, extra) -> dict[str, Any]:
        """Each row's prompt after the cached prefix; its last logits score every label's first token, and labels
        of several tokens continue that row's cache with their own tokens, one label at a time."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        device = ids.device
        labels: list[list[list[int]]] = list(extra["labels"])
        rows = prefix.rows(torch.from_numpy(extra["prefixed"]).to(device))
        last = rows.extend(model, ids, mask, last_only=True).float().log_softmax(-1)
        first = torch.tensor([[c[0] for c in row] for row in labels], device=device)
        loglik = last.gather(1, first)  # [rows, labels]
        counts = np.asarray([[len(c) for c in row] for row in labels], dtype=np.int64)
        for j in np.flatnonzero((counts > 1).any(axis=0)):
            loglik[:, j] += self._rest_of_label(model, rows, [row[j] for row in labels])
        return {"loglik": loglik.cpu().numpy(), "label_tokens": counts}

    @staticmethod
    def _rest_of_label(model, rows, continuations: list[list[int]]) -> torch.Tensor:
        """Log-likelihood of each row's label tokens after the first; the rows' cache is left as it was."""
        device = rows.mask.device
        inputs = Ragged.from_lists([c[:-1] or c[:1] for c in continuations])  # a one-token label feeds a dummy
        targets = Ragged.from_lists([c[1:] or [0] for c in continuations])
        everything = np.arange(len(continuations))
        ids, mask = (torch.from_numpy(a).to(device) for a in inputs.pad(everything, 0, "right"))
        wanted, valid = (torch.from_numpy(a).to(device) for a in targets.pad(everything, 0, "right"))
        valid = valid * torch.tensor([len(c) > 1 for c in continuations], device=device)[:, None]
        saved = rows.snapshot()
        logits = rows.extend(model, ids, mask).float().log_softmax(-1)
        rows.restore(saved)
        token_logp = logits.gather(2, wanted[..., None])[..., 0]
        return (token_logp * valid).sum(dim=1)

    def _forward_per_label(self, model, inputs, extra) -> dict[str, Any]:
        """Each (row, label) feature in full; the logits at the label's positions score it."""
        ids = inputs["input_ids"]
        device = ids.device
        start = torch.from_numpy(extra["label_start"]).to(device)
        length = torch.from_numpy(extra["label_len"]).to(device)
        first = int(start.min()) - 1  # the first position whose logits predict a label token
        if self.keeps_logits:
            logits = model(**inputs, logits_to_keep=ids.shape[1] - first).logits
        else:
            logits = model(**inputs).logits[:, first:]
        steps = torch.arange(int(length.max()), device=device)
        valid = steps[None, :] < length[:, None]
        target_pos = torch.where(valid, start[:, None] + steps[None, :], start[:, None])
        targets = ids.gather(1, target_pos)
        rows = torch.arange(ids.shape[0], device=device)[:, None]
        picked = logits[rows, target_pos - 1 - first].float()  # [features, label tokens, vocab]
        token_logp = picked.log_softmax(-1).gather(2, targets[..., None])[..., 0]
        loglik = (token_logp * valid).sum(dim=1)
        return {"loglik": loglik.cpu().numpy(), "label_tokens": length.cpu().numpy()}

    # postprocess ---------------------------------------------------------------------

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        loglik = outputs.stacked("loglik").astype(np.float64)
        if self.options.normalize == "mean":
            loglik = loglik / np.maximum(outputs.stacked("label_tokens"), 1)
        matrix = np.zeros((n_rows, len(self.labels)))  # rows without features stay uniform (they are errors)
        if "label_index" in features.extra:  # one feature per (row, label)
            matrix[features.row, features.extra["label_index"]] = loglik
        else:  # one feature per row, every label
            matrix[features.row] = loglik
        scores = softmax(matrix, axis=1)
        return self.label_columns(scores)

