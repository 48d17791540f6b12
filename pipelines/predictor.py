"""The callable class that Ray Data runs in each actor: one model load, many padded batches.

``Predictor(spec)`` loads the tokenizer and model once; each call takes an Arrow
batch of rows, tokenizes the valid ones through the task, runs length-sorted
micro-batches under the token budget (each padded only to its own longest row)
and returns the batch with the task's prediction columns added, in input order.
Rows that can't be predicted keep a reason in ``_error`` and null predictions.

It knows no task in particular and no Ray: it runs the same in a plain process.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipelines.batching import plan_microbatches
from pipelines.models import load_config, load_model
from pipelines.spec import JobSpec
from pipelines.tasks import TASKS
from pipelines.tasks.base import Features, Outputs

log = logging.getLogger(__name__)

ERROR = "_error"
TOKENS = "_tokens"
PADDED = "_padded"


class Predictor:
    """Holds one task and one model; ``__call__`` maps an Arrow batch to the same rows with predictions."""

    def __init__(self, spec: dict[str, Any] | JobSpec) -> None:
        self.spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
        torch.set_num_threads(self.spec.compute.torch_threads())
        # bitsandbytes warns on every int8 matmul with float32 inputs; once per actor is plenty.
        warnings.filterwarnings("once", message=".*MatMul8bitLt.*")
        task_class = TASKS[self.spec.task.type]
        config = load_config(self.spec.model)
        self.loaded = load_model(
            self.spec.model,
            task_class.model_class(self.spec.task, config),
            config,
            self.spec.batching.max_length,
            task_class.padding_side,
        )
        self.task = task_class(self.spec.task, self.loaded.tokenizer, self.loaded.config, self.loaded.max_length)
        with torch.inference_mode():
            self.task.setup(self.loaded.model, self.loaded.device)
        self.schema = self.task.output_schema()
        self.pad_id = int(self.loaded.tokenizer.pad_token_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid, errors = self._validate(batch)
        rows = np.flatnonzero(valid)
        features = self._encode(batch, rows)
        outputs, padded = self._run(features)
        predictions = self.task.postprocess(outputs, features, len(rows)) if len(rows) else {}
        if features.truncated is not None and self.spec.errors.too_long == "error":
            errors = _flag(errors, rows[features.truncated], f"text longer than max_length ({self.loaded.max_length} tokens)")
        return self._assemble(batch, rows, predictions, features, padded, errors)

    # steps ---------------------------------------------------------------------

    def _validate(self, batch: pa.Table) -> tuple[np.ndarray, pa.Array]:
        """Rows with a usable text; the others get a reason in ``_error``."""
        text = batch.column(self.spec.input.text_column)
        errors = batch.column(ERROR) if ERROR in batch.column_names else pa.nulls(len(batch), pa.string())
        errors = pc.if_else(pc.and_(errors.is_null(), text.is_null()), "text is null", errors)
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(text, "x"))), 0)
        errors = pc.if_else(pc.and_(errors.is_null(), empty), "text is empty", errors)
        valid = errors.is_null().to_numpy(zero_copy_only=False)
        return valid, errors

    def _encode(self, batch: pa.Table, rows: np.ndarray) -> Features:
        if not len(rows):
            return Features(tokens={}, row=np.zeros(0, np.int64))
        picked = batch.take(rows)
        texts = picked.column(self.spec.input.text_column).to_pylist()
        columns = {name: picked.column(name).to_pylist() for name in self.task.input_columns(self.spec.task)}
        return self.task.encode(texts, columns)

    def _run(self, features: Features) -> tuple[Outputs, np.ndarray]:
        """Forward every micro-batch; also the padded length each feature was computed at."""
        outputs = Outputs(len(features))
        padded = np.zeros(len(features), dtype=np.int64)
        if not len(features):
            return outputs, padded
        batching = self.spec.batching
        for index in plan_microbatches(
            features.lengths, batching.max_tokens, batching.max_rows, batching.min_fill
        ):
            outputs.add(index, self._forward(features, index))
            padded[index] = features.lengths[index].max()
        return outputs, padded

    def _forward(self, features: Features, index: np.ndarray) -> dict[str, Any]:
        side = self.task.padding_side
        device = self.loaded.device
        ids, mask = features.tokens["input_ids"].pad(index, self.pad_id, side)
        inputs = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
        for name, ragged in features.tokens.items():
            if name != "input_ids":
                inputs[name] = torch.from_numpy(ragged.pad(index, 0, side)[0]).to(device)
        extra = {name: value[index] for name, value in features.extra.items()}
        with torch.inference_mode():
            return self.task.forward(self.loaded.model, inputs, extra)

    def _assemble(
        self,
        batch: pa.Table,
        rows: np.ndarray,
        predictions: dict[str, pa.Array],
        features: Features,
        padded: np.ndarray,
        errors: pa.Array,
    ) -> pa.Table:
        """The input batch plus prediction columns (null where a row has an error) and token counts."""
        n = len(batch)
        position = np.full(n, -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        ok = pc.and_(errors.is_null(), pa.array(position >= 0))
        take = pa.array(position, mask=~ok.to_numpy(zero_copy_only=False))
        table = batch.drop_columns([c for c in (ERROR,) if c in batch.column_names])
        prefix = self.spec.output.prediction_prefix
        for field in self.schema:
            values = predictions.get(field.name, pa.nulls(len(rows), field.type))
            table = table.append_column(field.with_name(prefix + field.name), pc.take(values.cast(field.type), take))
        tokens = np.zeros(n, dtype=np.int64)
        spent = np.zeros(n, dtype=np.int64)
        if len(features):
            tokens[rows] = np.bincount(features.row, weights=features.lengths, minlength=len(rows))
            spent[rows] = np.bincount(features.row, weights=padded, minlength=len(rows))
        table = table.append_column(ERROR, errors.cast(pa.string()))
        table = table.append_column(TOKENS, pa.array(tokens))
        return table.append_column(PADDED, pa.array(spent))


def _flag(errors: pa.Array, rows: np.ndarray, reason: str) -> pa.Array:
    """Set ``reason`` as the error of ``rows`` that have none yet."""
    mark = np.zeros(len(errors), dtype=bool)
    mark[rows] = True
    return pc.if_else(pc.and_(errors.is_null(), pa.array(mark)), reason, errors)
