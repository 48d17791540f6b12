"""fill-mask: the ``top_k`` most likely tokens for each mask token in a row, with their probabilities.

A row holds one or more mask tokens (the model's own, e.g. ``[MASK]`` or
``<mask>``; or ``mask_placeholder``, replaced by it). A row without one is a row
error. Logits are computed only at mask positions, not over the whole sequence
times the vocabulary. With ``targets``, as in the pipeline, probabilities are
still over the whole vocabulary, but only the targets' tokens are ranked.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.errors import PipelineError
from pipelines.tasks.base import Features, Outputs, Task
from pipelines.tasks.options import FillMaskOptions

log = logging.getLogger(__name__)

CANDIDATE = pa.struct(
    [pa.field("token", pa.string()), pa.field("token_id", pa.int32()), pa.field("score", pa.float32())]
)


class FillMask(Task):
    name = "fill-mask"
    options_model = FillMaskOptions
    model_class = "AutoModelForMaskedLM"
    tokenizer_in_forward = False
    options: FillMaskOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tokenizer.mask_token_id is None:
            raise PipelineError("fill-mask: this model's tokenizer has no mask token; use a masked language model")
        self.mask_id = int(self.tokenizer.mask_token_id)
        self.targets = target_ids(self.tokenizer, self.options.targets) if self.options.targets else None
        choices = len(self.targets) if self.targets is not None else len(self.tokenizer)
        self.top_k = min(self.options.top_k, choices)
        if self.options.top_k > choices:  # every token there is, ranked: a list shorter than top_k is no surprise
            log.warning("fill-mask: top_k %d is more than the %d tokens %s: each mask's list holds every one, ranked",
                        self.options.top_k, choices, "of task.targets" if self.targets is not None else
                        "in the vocabulary")

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        placeholder = self.options.mask_placeholder
        if placeholder:
            texts = [text.replace(placeholder, self.tokenizer.mask_token) for text in texts]
        encoding = self.tokenize(texts)
        kept = np.array([list(ids).count(self.mask_id) for ids in encoding["input_ids"]])
        written = np.array([text.count(self.tokenizer.mask_token) for text in texts])
        shown = placeholder or self.tokenizer.mask_token
        features = Features.one_per_row(encoding, encoding["truncated"])
        errors = {}
        for i in range(len(texts)):
            if kept[i] == 0:
                cut = bool(encoding["truncated"][i]) and written[i] > 0
                errors[i] = f"no mask token ({shown}) in the text" + (" within max_length" if cut else "")
            elif kept[i] < written[i] and encoding["truncated"][i]:  # one list per mask, or none: never fewer
                errors[i] = f"{written[i] - kept[i]} of the text's {written[i]} mask tokens ({shown}) past max_length"
        rows = np.array([i for i in range(len(texts)) if i not in errors], dtype=np.int64)
        features.tokens = {name: ragged.take(rows) for name, ragged in features.tokens.items()}
        features.row = rows
        features.errors = errors
        return features

    def forward(self, model, inputs, extra):
        masked = inputs["input_ids"] == self.mask_id
        probs = mask_logits(model, inputs, masked).float().softmax(-1)
        if self.targets is not None:  # probabilities over the whole vocabulary, ranked among the targets only
            targets = torch.as_tensor(self.targets, device=probs.device)
            top = probs[:, targets].topk(self.top_k, dim=-1)
            ids, scores = targets[top.indices].cpu().numpy(), top.values.cpu().numpy()
        else:
            top = probs.topk(self.top_k, dim=-1)
            ids, scores = top.indices.cpu().numpy(), top.values.cpu().numpy()
        counts = masked.sum(dim=1).cpu().numpy()
        bounds = np.r_[0, np.cumsum(counts)]
        return {
            "ids": [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
            "scores": [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        }

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        ids, scores = outputs.listed("ids"), outputs.listed("scores")
        vocabulary = np.unique(np.concatenate([i.reshape(-1) for i in ids])) if ids else np.zeros(0, np.int64)
        words = dict(zip(vocabulary.tolist(), self.tokenizer.batch_decode([[i] for i in vocabulary.tolist()])))
        predictions: list[list | None] = [None] * n_rows
        for f, row in enumerate(features.row):
            predictions[row] = [
                [{"token": words[int(t)], "token_id": int(t), "score": float(s)} for t, s in zip(mask_ids, mask_scores)]
                for mask_ids, mask_scores in zip(ids[f], scores[f])
            ]
        return {"predictions": pa.array(predictions, pa.list_(pa.list_(CANDIDATE)))}

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("predictions", pa.list_(pa.list_(CANDIDATE)))])


def target_ids(tokenizer: Any, targets: list[str]) -> list[int]:
    """The token id of each target, as the Transformers pipeline finds it: the vocabulary entry of that
    exact string, else the first token the tokenizer makes of it (logged); without duplicates."""
    vocabulary = tokenizer.get_vocab()
    ids: list[int] = []
    for target in targets:
        found = vocabulary.get(target)
        if found is None:
            pieces = tokenizer(target, add_special_tokens=False)["input_ids"]
            if not pieces:
                raise PipelineError(
                    f"fill-mask: target {target!r} makes no token with this model's tokenizer; "
                    "remove it from task.targets"
                )
            found = pieces[0]
            log.warning("fill-mask: target %r is not in the vocabulary; scoring its first token %r instead",
                        target, tokenizer.convert_ids_to_tokens(found))
        if found not in ids:
            ids.append(int(found))
    return ids


def mask_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor], masked: torch.Tensor) -> torch.Tensor:
    """Logits ``[masks, vocab]`` at the masked positions, in row-major order.

    The vocabulary projection (the model's output embeddings) is applied to the
    masked positions only, through a pre-hook that selects them; for a model whose
    head does not go through that module, the full logits are computed and indexed.
    The hook acts only on the forward of the thread that set it: with lanes
    (``compute.cpu_lanes``) other forwards of the same model run at once, each with
    its own hook on the one output layer, and a micro-batch of the same shape must
    not have its masks picked by another's.
    """
    head = model.get_output_embeddings()
    caller = threading.get_ident()

    def select(module: torch.nn.Module, args: tuple) -> tuple | None:
        hidden = args[0]
        if threading.get_ident() == caller and hidden.dim() == 3 and hidden.shape[:2] == masked.shape:
            return (hidden[masked], *args[1:])
        return None

    handle = head.register_forward_pre_hook(select) if head is not None else None
    try:
        logits = model(**inputs).logits
    finally:
        if handle is not None:
            handle.remove()
    return logits[masked] if logits.dim() == 3 else logits
