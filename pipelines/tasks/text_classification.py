"""text-classification: the model's best label and its score, optionally every class's score."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.tasks.base import Features, LabelTask, Outputs, label_names, sequence_logits, softmax
from pipelines.tasks.options import TextClassificationOptions


class TextClassification(LabelTask):
    name = "text-classification"
    options_model = TextClassificationOptions
    model_class = "AutoModelForSequenceClassification"
    tokenizer_in_forward = False
    options: TextClassificationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = label_names(self.config)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        encoding = self.tokenize(texts)
        return Features.one_per_row(encoding, encoding["truncated"])

    def forward(self, model, inputs, extra):
        return {"logits": sequence_logits(model, inputs).float().cpu().numpy()}

    def independent_scores(self) -> bool:
        return self._function() != "softmax"

    def _function(self) -> str:
        """``auto`` follows the Transformers pipeline: none for regression, sigmoid for multi-label or one output."""
        if self.options.function != "auto":
            return self.options.function
        problem = getattr(self.config, "problem_type", None)
        if problem == "regression":
            return "none"
        return "sigmoid" if problem == "multi_label_classification" or self.config.num_labels == 1 else "softmax"

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        logits = outputs.stacked("logits")
        function = self._function()
        if function == "softmax":
            scores = softmax(logits)
        elif function == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            scores = logits
        return self.label_columns(scores)

