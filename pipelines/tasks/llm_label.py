"""llm-label: a causal LM picks each row's label by how likely it finds each candidate as the answer.

For every row and candidate label, the prompt followed by the label is one
feature (as zero-shot NLI makes one feature per hypothesis); one forward over a
right-padded micro-batch gives the log-likelihood of the label's tokens after the
prompt. Labels are ranked by the sum (or mean per token) of those, and ``score``
is their softmax over the candidates. No sampling: the same rows give the same
labels whatever the batch.

Label tokens are scored as the model would write them after the prompt: the
prompt is tokenized alone and with the label appended, and the label's tokens
are what the second adds (trailing spaces of the prompt move into the label);
where a tokenizer merges across the boundary, the label is tokenized on its own.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.inference.batching import Ragged
from pipelines.tasks.base import Features, LabelTask, Outputs, softmax
from pipelines.tasks.options import LLMLabelOptions
from pipelines.tasks.prompts import check_chat, fill, render, special_prefix


class LLMLabel(LabelTask):
    name = "llm-label"
    options_model = LLMLabelOptions
    model_class = "AutoModelForCausalLM"
    padding_side = "right"  # each label's tokens sit right after its own prompt; padding only follows
    options: LLMLabelOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = list(self.options.candidate_labels)
        if self.options.chat:
            check_chat(self.tokenizer, self.name)
        self.specials = [] if self.options.chat else special_prefix(self.tokenizer)
        self.keeps_logits = False

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        # Most causal LMs can compute logits for the last positions only: far less memory for a big vocabulary.
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    # encode --------------------------------------------------------------------------

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        prompts, errors = fill(self.options.prompt_template, texts, columns)
        rows = [i for i, p in enumerate(prompts) if p is not None]
        filled = [prompt for prompt in prompts if prompt is not None]
        rendered = render(self.tokenizer, filled, self.options.chat, self.options.system_prompt)
        ids, label_index, starts, owners = [], [], [], []
        truncated = np.zeros(len(texts), dtype=bool)
        for row, prompt_ids, continuations in zip(rows, *self._tokenize(rendered)):
            budget = self.max_length - max(map(len, continuations))
            if budget <= len(self.specials):
                errors[row] = f"candidate labels leave no room for the prompt within max_length ({self.max_length})"
                continue
            if len(prompt_ids) > budget:  # keep the end of the prompt: the question and the answer slot
                prompt_ids = self.specials + prompt_ids[len(prompt_ids) - budget + len(self.specials) :]
                truncated[row] = True
            for j, continuation in enumerate(continuations):
                ids.append(prompt_ids + continuation)
                label_index.append(j)
                starts.append(len(prompt_ids))
                owners.append(row)
        tokens = Ragged.from_lists(ids)
        features = Features(tokens={"input_ids": tokens}, row=np.asarray(owners, dtype=np.int64), truncated=truncated)
        features.extra = {
            "label_index": np.asarray(label_index, dtype=np.int64),
            "label_start": np.asarray(starts, dtype=np.int64),
            "label_len": tokens.lengths - np.asarray(starts, dtype=np.int64),
        }
        features.errors = errors
        return features

    def _tokenize(self, rendered: list[str]) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Per prompt: its token ids, and each label's continuation ids."""
        if not rendered:
            return [], []
        special = not self.options.chat
        bare = [prompt.rstrip(" ") for prompt in rendered]
        # trailing spaces of the prompt belong to the label's first token (" positive", not " " + "positive")
        lead = [prompt[len(stripped) :] + self._label_prefix(prompt) for prompt, stripped in zip(rendered, bare)]
        k = len(self.labels)
        prompt_ids = self.tokenizer(bare, add_special_tokens=special)["input_ids"]
        joined = [bare[i] + lead[i] + label for i in range(len(bare)) for label in self.labels]
        joined_ids = self.tokenizer(joined, add_special_tokens=special)["input_ids"]
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
        matrix[features.row, features.extra["label_index"]] = loglik
        scores = softmax(matrix, axis=1)
        return self.label_columns(scores)

