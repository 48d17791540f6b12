"""What every task is: options, then encode → forward → postprocess, as in the Transformers pipelines.

A task turns a batch of rows into *features* (token sequences; usually one per
row, several where a row fans out: one per candidate label, one per context
window), runs the model on a padded micro-batch of features, and folds the
features' outputs back into one prediction per row as Arrow columns.

A task knows nothing about Ray, batching or devices: the predictor decides
which features go together and where tensors live.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict

from pipelines.batching import Ragged

# Key under which the predictor passes each row's id to ``Task.encode`` (in ``columns``), e.g. for per-row seeds.
ROW_ID = "_row_id"


class TaskOptions(BaseModel):
    """Base of each task's options; ``type`` names the task in the job spec."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    type: str


@dataclass
class Features:
    """Model inputs for a batch of rows: ``tokens`` are ragged, one entry per feature.

    ``row[i]`` is the row that feature ``i`` belongs to; ``extra`` holds per-feature
    arrays the task wants back in ``forward`` and ``postprocess``; ``truncated`` flags
    rows whose text was cut to ``max_length``; ``errors`` maps a row (its index among
    the rows given to ``encode``) to the reason it can't be predicted: such a row
    needs no features, its predictions are null and the reason lands in ``_error``.
    """

    tokens: dict[str, Ragged]
    row: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    truncated: np.ndarray | None = None
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.row)

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens["input_ids"].lengths

    @classmethod
    def one_per_row(cls, encoding: dict[str, list[list[int]]], truncated: np.ndarray | None = None) -> Features:
        names = [n for n in ("input_ids", "token_type_ids") if n in encoding]
        tokens = {n: Ragged.from_lists(encoding[n]) for n in names}
        return cls(tokens=tokens, row=np.arange(len(tokens["input_ids"])), truncated=truncated)


class Outputs:
    """Forward outputs gathered micro-batch by micro-batch, read back in feature order."""

    def __init__(self, n_features: int) -> None:
        self.n = n_features
        self._parts: list[tuple[np.ndarray, dict[str, Any]]] = []

    def add(self, index: np.ndarray, values: dict[str, Any]) -> None:
        self._parts.append((index, values))

    def _order(self) -> np.ndarray:
        index = np.concatenate([i for i, _ in self._parts]) if self._parts else np.zeros(0, np.int64)
        return np.argsort(index, kind="stable")

    def stacked(self, name: str) -> np.ndarray:
        """Outputs with equal trailing shape, as one array ``[n_features, ...]``."""
        values = np.concatenate([np.asarray(v[name]) for _, v in self._parts])
        return values[self._order()]

    def listed(self, name: str) -> list[Any]:
        """Outputs of varying shape (per-token scores, generated ids), one item per feature."""
        items = [item for _, v in self._parts for item in v[name]]
        return [items[i] for i in self._order()]


class Task(ABC):
    """One batch task. Subclasses set ``name``, ``options_model``, and implement the three steps."""

    name: ClassVar[str]
    options_model: ClassVar[type[TaskOptions]]
    padding_side: ClassVar[Literal["right", "left"]] = "right"

    def __init__(self, options: TaskOptions, tokenizer: Any, config: Any, max_length: int, seed: int = 0) -> None:
        self.options = options
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self.seed = seed  # the job's seed, for tasks that sample

    @classmethod
    @abstractmethod
    def model_class(cls, options: TaskOptions, config: Any) -> type:
        """The ``transformers`` Auto class that loads the model for this task and config."""

    @classmethod
    @abstractmethod
    def output_names(cls, options: TaskOptions) -> list[str]:
        """Names of the prediction columns (known before any model is loaded)."""

    @classmethod
    def input_columns(cls, options: TaskOptions) -> list[str]:
        """Row columns besides the text column that ``encode`` reads."""
        return []

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Once per actor, after the model is loaded (e.g. embed candidate labels)."""

    @abstractmethod
    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        """Tokenize a batch of valid rows into features.

        ``columns`` holds the ``input_columns`` and, under ``ROW_ID``, the rows' ids
        (where the batch has an id column).
        """

    @abstractmethod
    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
        """Run one padded micro-batch; return per-feature outputs (first dimension = features)."""

    @abstractmethod
    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        """Fold feature outputs into one value per row for each output column.

        Called only when there is at least one feature; rows in ``features.errors``
        may hold any value (the predictor nulls them).
        """

    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """The prediction columns this task adds, with their Arrow types."""

    # helpers shared by tasks -------------------------------------------------------

    def tokenize(self, texts: list[str], pairs: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Tokenize without padding, truncated to ``max_length``; flags rows that were cut."""
        encoding = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            **kwargs,
        )
        encoding["truncated"] = _truncated(encoding)
        return encoding


def _truncated(encoding: Any) -> np.ndarray | None:
    encodings = getattr(encoding, "encodings", None)
    if not encodings:
        return None
    return np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def vectors(matrix: np.ndarray) -> pa.Array:
    """A float matrix ``[n, d]`` as Arrow ``fixed_size_list<float32>[d]`` (plain Parquet, readable everywhere)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
