"""zero-shot-classification: pick among candidate labels the model was never trained on.

Two methods:

- ``nli``: as the Transformers pipeline does, each (text, hypothesis) pair goes
  through an NLI model; with one label per row (``multi_label: false``) a
  softmax of the entailment logits across the labels ranks them; with
  ``multi_label: true``, or a single candidate label, each label is scored on
  its own: entailment against contradiction (for a two-class model, against
  the other class);
- ``embedding``: the text and each label's description are embedded with the same
  model and ranked by cosine similarity — works with any sentence-embedding
  model, e.g. the built-in ``minilm``.

``auto`` picks ``nli`` when the model config has an entailment label.

For ``nli`` the text is truncated to fit (``only_first``, as the pipeline
does), never the hypothesis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.errors import PipelineError
from pipelines.tasks.base import Features, LabelTask, Outputs, softmax
from pipelines.tasks.feature_extraction import embed
from pipelines.tasks.options import TaskOptions, ZeroShotOptions


def nli_label_id(config: Any, prefix: str) -> int | None:
    for label, index in (getattr(config, "label2id", None) or {}).items():
        if str(label).lower().startswith(prefix):
            return int(index)
    return None


def contradiction_label_id(config: Any, entailment: int) -> int:
    """The class that entailment is scored against on its own: the one named contradiction.

    Without one (e.g. a two-class entailment / not_entailment model), the
    pipeline's choice: the first class, or the last when entailment is the first.
    """
    named = nli_label_id(config, "contra")
    if named is not None:
        return named
    return config.num_labels - 1 if entailment == 0 else 0


def resolve_method(options: ZeroShotOptions, config: Any) -> str:
    if options.method != "auto":
        return options.method
    return "nli" if nli_label_id(config, "entail") is not None else "embedding"


class ZeroShotClassification(LabelTask):
    name = "zero-shot-classification"
    options_model = ZeroShotOptions
    model_class = "AutoModel"
    options: ZeroShotOptions

    @classmethod
    def model_class_for(cls, options: TaskOptions, config: Any) -> str:
        assert isinstance(options, ZeroShotOptions)
        return "AutoModelForSequenceClassification" if resolve_method(options, config) == "nli" else "AutoModel"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = list(self.options.candidate_labels)
        self.method = resolve_method(self.options, self.config)
        self.hypotheses = [
            self.options.label_descriptions.get(label) or self.options.hypothesis_template.format(label)
            for label in self.labels
        ]
        if self.method == "nli":
            self._setup_nli()

    def _setup_nli(self) -> None:
        entailment = nli_label_id(self.config, "entail")
        if entailment is None or self.config.num_labels < 2:
            raise PipelineError(
                "zero-shot-classification: method nli needs an NLI model whose config labels include "
                "'entailment' and at least one other class; use an NLI model or set task.method: embedding"
            )
        self.entailment = entailment
        self.contradiction = contradiction_label_id(self.config, entailment)
        self.hypothesis_ids = [self.tokenizer(h, add_special_tokens=False)["input_ids"] for h in self.hypotheses]
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        self.room = [self.max_length - specials - len(ids) for ids in self.hypothesis_ids]
        if min(self.room) < 1:
            longest = self.hypotheses[int(np.argmin(self.room))]
            raise PipelineError(
                f"zero-shot-classification: the hypothesis {longest!r} leaves no room for the text within "
                f"max_length {self.max_length}; shorten it or raise batching.max_length"
            )

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        if self.method != "embedding":
            return
        inputs = self.tokenizer(
            self.hypotheses, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.inference_mode():
            self.label_vectors = embed(model, inputs, "mean", normalize=True)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        if self.method == "embedding":
            encoding = self.tokenize(texts)
            return Features.one_per_row(encoding, encoding["truncated"])
        features = self._pairs(texts)
        features.row = np.repeat(np.arange(len(texts)), len(self.labels))
        return features

    def _pairs(self, texts: list[str]) -> Features:
        """Every (text, hypothesis) pair; the text truncated to fit, never the hypothesis (as the pipeline)."""
        n, k = len(texts), len(self.labels)
        premises = [text for text in texts for _ in range(k)]
        encoding = self.tokenizer(
            premises, self.hypotheses * n, truncation="only_first", max_length=self.max_length, padding=False
        )
        features = Features.one_per_row(encoding)
        truncated = np.array([bool(e.overflowing) for e in encoding.encodings], dtype=bool)
        features.truncated = np.asarray(truncated.reshape(n, k).any(axis=1))
        return features

    def forward(self, model, inputs, extra):
        if self.method == "embedding":
            vectors_ = embed(model, inputs, "mean", normalize=True)
            return {"similarity": (vectors_ @ self.label_vectors.T).cpu().numpy()}
        logits = model(**inputs).logits.float()
        return {"logits": logits[:, [self.contradiction, self.entailment]].cpu().numpy()}

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        scores = self._scores(outputs, n_rows)
        return self.label_columns(scores)

    def _scores(self, outputs: Outputs, n_rows: int) -> np.ndarray:
        if self.method == "embedding":
            similarity = outputs.stacked("similarity")
            if self.options.multi_label:
                return (similarity + 1.0) / 2.0
            return softmax(similarity / self.options.temperature)
        # logits[row, label] = (contradiction, entailment)
        logits = outputs.stacked("logits").reshape(n_rows, len(self.labels), 2)
        if self.options.multi_label or len(self.labels) == 1:
            return softmax(logits, axis=-1)[..., 1]
        return softmax(logits[..., 1], axis=1)
