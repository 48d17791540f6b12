"""text-classification: the model's best label and its score, optionally every class's score."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.errors import PipelineError
from pipelines.tasks.base import Features, LabelTask, Outputs, label_names, sequence_logits, softmax
from pipelines.tasks.options import DUCKDB_CASE, TextClassificationOptions


class TextClassification(LabelTask):
    name = "text-classification"
    options_model = TextClassificationOptions
    model_class = "AutoModelForSequenceClassification"
    tokenizer_in_forward = False
    options: TextClassificationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = label_names(self.config)
        if self.options.return_all_scores:
            self._check_labels_distinct()

    def _check_labels_distinct(self) -> None:
        """The model's class names are the fields of ``scores``: two of one name, or of one name but for ASCII case
        (a config's ``id2label`` written by hand), made a struct that pandas, pyarrow's ``to_pylist`` and DuckDB
        (which matches names in any case) can't read by name, nor tell which class is which."""
        seen: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            j = seen.setdefault(label.translate(DUCKDB_CASE), i)
            if j != i:
                first = self.labels[j]
                raise PipelineError(
                    f"{self.name}: the model's config (id2label) names classes {j} and {i} {first!r} and {label!r}, "
                    "one name also in ASCII case: they can't both name a field of the scores struct "
                    "(task.return_all_scores); give them distinct names in the model's config.json, or set "
                    "return_all_scores: false"
                )

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

