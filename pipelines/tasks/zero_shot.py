"""zero-shot-classification: pick among candidate labels the model was never trained on.

Two methods:

- ``nli``: as the Transformers pipeline does, each (text, hypothesis) pair goes
  through an NLI model and the entailment logits rank the labels;
- ``embedding``: the text and each label's description are embedded with the same
  model and ranked by cosine similarity — works with any sentence-embedding
  model, e.g. the built-in ``minilm``.

``auto`` picks ``nli`` when the model config has an entailment label.
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
            self.entailment = nli_label_id(self.config, "entail")
            self.contradiction = nli_label_id(self.config, "contra")
            if self.entailment is None:
                raise PipelineError(
                    "zero-shot-classification: method nli needs an NLI model whose config labels include "
                    "'entailment'; use an NLI model or set task.method: embedding"
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
        n, k = len(texts), len(self.labels)
        premises = [text for text in texts for _ in range(k)]
        encoding = self.tokenize(premises, self.hypotheses * n)
        features = Features.one_per_row(encoding)
        features.row = np.repeat(np.arange(n), k)
        features.truncated = encoding["truncated"].reshape(n, k).any(axis=1)
        return features

    def forward(self, model, inputs, extra):
        if self.method == "embedding":
            vectors_ = embed(model, inputs, "mean", normalize=True)
            return {"similarity": (vectors_ @ self.label_vectors.T).cpu().numpy()}
        logits = model(**inputs).logits.float()
        picked = [self.contradiction, self.entailment] if self.contradiction is not None else [self.entailment]
        return {"logits": logits[:, picked].cpu().numpy()}

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        scores = self._scores(outputs, n_rows)
        return self.label_columns(scores)

    def _scores(self, outputs: Outputs, n_rows: int) -> np.ndarray:
        if self.method == "embedding":
            similarity = outputs.stacked("similarity")
            if self.options.multi_label:
                return (similarity + 1.0) / 2.0
            return softmax(similarity / self.options.temperature)
        logits = outputs.stacked("logits").reshape(n_rows, len(self.labels), -1)
        if self.options.multi_label and logits.shape[-1] == 2:
            return softmax(logits, axis=-1)[..., 1]
        return softmax(logits[..., -1], axis=1)

