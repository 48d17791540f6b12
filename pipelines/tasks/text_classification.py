"""text-classification: the model's best label and its score, optionally every class's score."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from transformers import AutoModelForSequenceClassification

from pipelines.tasks.base import Features, Outputs, Task, TaskOptions, softmax


class TextClassificationOptions(TaskOptions):
    type: Literal["text-classification"]
    return_all_scores: bool = False
    function: Literal["auto", "softmax", "sigmoid", "none"] = "auto"


def label_names(config: Any) -> list[str]:
    """Class names in id order, from the model config (``LABEL_i`` where it has none)."""
    mapping = getattr(config, "id2label", None) or {}
    return [str(mapping.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def scores_struct(labels: list[str], scores: np.ndarray) -> pa.Array:
    """A ``struct<label: float32, ...>`` column: one field per class, in the model's order."""
    arrays = [pa.array(scores[:, i].astype(np.float32)) for i in range(len(labels))]
    return pa.StructArray.from_arrays(arrays, names=labels)


class LabelTask(Task):
    """A task that picks one of ``self.labels`` per row: ``label``, ``score``, optionally every ``scores``."""

    labels: list[str]

    @classmethod
    def output_names(cls, options: TaskOptions) -> list[str]:
        return ["label", "score"] + (["scores"] if options.return_all_scores else [])

    def label_columns(self, scores: np.ndarray) -> dict[str, pa.Array]:
        """The output columns from a ``[rows, labels]`` score matrix."""
        top = scores.argmax(axis=1)
        columns = {
            "label": pa.array(np.asarray(self.labels, dtype=object)[top], pa.string()),
            "score": pa.array(scores[np.arange(len(top)), top].astype(np.float32)),
        }
        if self.options.return_all_scores:
            columns["scores"] = scores_struct(self.labels, scores)
        return columns

    def output_schema(self) -> pa.Schema:
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        if self.options.return_all_scores:
            fields.append(pa.field("scores", pa.struct([pa.field(n, pa.float32()) for n in self.labels])))
        return pa.schema(fields)


class TextClassification(LabelTask):
    name = "text-classification"
    options_model = TextClassificationOptions

    @classmethod
    def model_class(cls, options: TaskOptions, config: Any) -> type:
        return AutoModelForSequenceClassification

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = label_names(self.config)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        encoding = self.tokenize(texts)
        return Features.one_per_row(encoding, encoding["truncated"])

    def forward(self, model, inputs, extra):
        return {"logits": model(**inputs).logits.float().cpu().numpy()}

    def _function(self) -> str:
        if self.options.function != "auto":
            return self.options.function
        multi = getattr(self.config, "problem_type", None) == "multi_label_classification"
        return "sigmoid" if multi or self.config.num_labels == 1 else "softmax"

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

