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
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipelines import faults
from pipelines.inference.batching import FORWARD_COST_TOKENS, plan_microbatches, spread_over_lanes
from pipelines.inference.checks import check_task_head
from pipelines.inference.library_logs import hide_loading_bars, once_per_process
from pipelines.inference.loading import load_config, load_model
from pipelines.io.block import CUT, ERROR, GENERATED, PADDED, TOKENS
from pipelines.spec import BatchingSpec, JobSpec
from pipelines.tasks import task_class
from pipelines.tasks.base import ROW_ID, Features, Outputs, Task

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One call's batch between the predictor's stages: its rows to predict (indices into ``batch``), their
    errors so far and features (``prepare``), then the forwards' outputs and each feature's padded length
    (``infer``)."""

    batch: pa.Table
    rows: np.ndarray
    errors: pa.Array
    features: Features
    outputs: Outputs | None = None
    padded: np.ndarray | None = None


class Predictor:
    """Holds one task and one model; ``__call__`` maps an Arrow batch to the same rows with predictions.

    A call is three stages: ``prepare`` (validate, tokenize), ``infer`` (the forwards) and ``finish``
    (postprocess, assemble). A caller may run the host's stages of one batch on other threads while
    ``infer`` runs another's on the model's thread (the pool's actor does), so that tokenizing is off
    the model's path; the tokenizer is used by one thread at a time (``tokenizer_lock``).
    """

    def __init__(self, spec: dict[str, Any] | JobSpec) -> None:
        self.spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
        self.threads = self.spec.compute.torch_threads(usable_cpus())
        torch.set_num_threads(self.threads)
        hide_loading_bars()
        implementation = task_class(self.spec.task.type, self.spec.input.format)
        config = load_config(self.spec.model)
        check_task_head(self.spec.task.type, self.spec.model.name, config.to_dict(),  # run's preflight; fidelity's
                        getattr(self.spec.task, "method", None))
        self.loaded = load_model(
            self.spec.model,
            implementation.model_class_for(self.spec.task, config),
            config,
            self.spec.batching.max_length,
            implementation.padding_side,
            wanted=self.spec.actor_device(),
            cpu_matmul=self.spec.compute.cpu_matmul,
        )
        once_per_process()  # bitsandbytes' per-matmul warning: once, not per batch (see library_logs)
        self.task = implementation(
            self.spec.task, self.loaded.tokenizer, self.loaded.config, self.loaded.max_length, seed=self.spec.seed
        )
        with torch.inference_mode():
            self.task.setup(self.loaded.model, self.loaded.device)
        self.schema = self.task.output_schema()
        self.pad_id = int(self.loaded.tokenizer.pad_token_id)
        self.max_tokens = self.spec.batching.max_tokens
        self.lanes = self.spec.lanes(self.loaded.device.type, self.threads)
        self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="forward") if self.lanes > 1 else None
        #: A tokenizer serves one thread at a time: Transformers' fast tokenizers reconfigure their Rust tokenizer
        #: (truncation, padding) inside a call, which fails ("Already borrowed") while another thread is in one.
        self.tokenizer_lock = threading.RLock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.finish(self.infer(self.prepare(batch)))

    # the three stages of a call: the host's work before and after the model's --------------------------

    def prepare(self, batch: pa.Table) -> Pending:
        """The rows to predict, validated and tokenized. Any thread may run it while ``infer`` runs another batch."""
        faults.checkpoint("predict")
        if faults.CRASH_ON_TEXT in os.environ and self.spec.input.text_column in batch.column_names:
            faults.crash_on_text(batch.column(self.spec.input.text_column))
        valid, errors = self._validate(batch)
        rows = np.flatnonzero(valid)
        with self.tokenizer_lock:
            features = self._encode(batch, rows)
        return Pending(batch, rows, errors, features)

    def infer(self, pending: Pending) -> Pending:
        """Every forward of a prepared batch: to be run on the thread that loaded the model, one batch at a time.

        Rows whose forward failed are quarantined; the others are run again without them, so a task's
        postprocess always sees complete rows."""
        held = self.tokenizer_lock if self.task.tokenizer_in_forward else nullcontext()
        with held:
            while True:
                pending.outputs, pending.padded, failed = self._run(pending.features)
                if not failed:
                    return pending
                lost = pending.features.row[np.fromiter(failed, dtype=np.int64)]
                pending.errors = _flag_each(pending.errors, pending.rows[lost], list(failed.values()))
                pending.rows = np.setdiff1d(pending.rows, pending.rows[lost])
                with self.tokenizer_lock:
                    pending.features = self._encode(pending.batch, pending.rows)

    def finish(self, pending: Pending) -> pa.Table:
        """The batch with its predictions, from what ``infer`` returned. Any thread may run it meanwhile."""
        features, rows, errors = pending.features, pending.rows, pending.errors
        if pending.outputs is None or pending.padded is None:
            raise ValueError("Predictor.finish takes a batch that Predictor.infer has run")
        for reason, picked in _by_reason(features.errors).items():  # rows the task itself refused
            errors = _flag(errors, rows[picked], reason)
        with self.tokenizer_lock:
            predictions = self.task.postprocess(pending.outputs, features, len(rows)) if len(features) else {}
            generated = self.task.new_tokens(pending.outputs) if len(features) else None
        if predictions:
            computed = self._computed_in()
            reason = (f"prediction is not a number (NaN or infinite): the model's values overflowed or broke down in "
                      f"{computed}{'; set model.dtype: bfloat16 or float32' if computed == 'float16' else ''}")
            errors = _flag(errors, rows[_not_finite(predictions, len(rows))], reason)
        if features.truncated is not None and self.spec.errors.too_long == "error":
            cut = np.flatnonzero(features.truncated)  # the limit, not the row's length
            reasons = [self.task.too_long_reason(features.cut_where.get(row, "text")) for row in cut.tolist()]
            errors = _flag_each(errors, rows[cut], reasons)
        return self._assemble(pending.batch, rows, predictions, features, (pending.padded, generated), errors)

    # steps ---------------------------------------------------------------------

    def _computed_in(self) -> str:
        """What the model computes in, as a spec names it (``float16``, ``bfloat16``, ``float32``), with its
        quantization where it has one."""
        dtype = str(self.loaded.dtype).removeprefix("torch.")
        quantization = self.spec.model.quantization
        return dtype if quantization in ("none", "auto") else f"{dtype} ({quantization})"

    def _validate(self, batch: pa.Table) -> tuple[np.ndarray, pa.Array]:
        return validate_rows(batch, self.spec.input.text_column)

    def _encode(self, batch: pa.Table, rows: np.ndarray) -> Features:
        return encode_rows(self.task, self.spec, batch, rows)

    def _run(self, features: Features) -> tuple[Outputs, np.ndarray, dict[int, str]]:
        """Forward every micro-batch; also each feature's padded length, and the features that failed.

        With lanes (``JobSpec.lanes``), the micro-batches run that many at once, one torch thread each, when
        there are at least as many as lanes; else one at a time on all the threads. A micro-batch
        whose forward raises is run again alone and split in halves until the offending features are isolated;
        out of memory also lowers the token budget for the rest of this actor's life.
        """
        outputs = Outputs(len(features))
        padded = np.zeros(len(features), dtype=np.int64)
        failed: dict[int, str] = {}
        if not len(features):
            return outputs, padded, failed
        lengths = features.lengths
        lanes = self.lanes if self._pool is not None else 1
        new = self.task.planned_new_tokens(features)
        queue = micro_batches(
            self.task, lengths, self.spec.batching, self.max_tokens, self.loaded.device.type, lanes, new
        )
        if self._pool is not None and len(queue) >= lanes:
            queue = self._run_in_lanes(self._pool, features, queue, outputs, padded)
        queue.reverse()
        while queue:
            index = queue.pop()
            try:
                result = self._forward(features, index)
            except Exception as exc:  # noqa: BLE001 - isolate the rows, keep the job alive
                reason = self._failure(exc, index, lengths, new)
                if len(index) == 1:
                    failed[int(index[0])] = reason
                else:
                    half = len(index) // 2
                    queue += [index[half:], index[:half]]
                continue
            outputs.add(index, result)
            padded[index] = self.task.padded_widths(lengths[index])
        return outputs, padded, failed

    def _run_in_lanes(
        self,
        pool: ThreadPoolExecutor,
        features: Features,
        queue: list[np.ndarray],
        outputs: Outputs,
        padded: np.ndarray,
    ) -> list[np.ndarray]:
        """Forward the micro-batches in the lanes, in their order, one torch thread each; those whose forward raised
        are returned, to be run again one at a time on all the threads. Out of memory in a lane (the lanes hold
        that many micro-batches' activations at once) ends the lanes for the rest of this actor's life."""
        torch.set_num_threads(1)
        futures = [pool.submit(self._forward, features, index) for index in queue]
        left = []
        try:
            for index, future in zip(queue, futures):
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - run again alone, where it is isolated and explained
                    log.debug("a forward in a lane failed (%s); it runs again alone", _short(exc))
                    if is_out_of_memory(exc) and self._pool is not None:
                        log.warning("out of memory with %d forwards at once: one at a time from now on", self.lanes)
                        self._pool = None
                    left.append(index)
                    continue
                outputs.add(index, result)
                padded[index] = self.task.padded_widths(features.lengths[index])
            return left
        finally:
            wait(futures)  # none still running when the threads are set back
            torch.set_num_threads(self.threads)
            if self._pool is None:
                pool.shutdown(wait=False)

    def _failure(
        self, exc: BaseException, index: np.ndarray, lengths: np.ndarray, new: np.ndarray | None = None
    ) -> str:
        """Log a failed forward, lower the budget on out-of-memory; the reason a lone row would get (``new``: the
        tokens each feature may generate, ``Task.planned_new_tokens``)."""
        if is_out_of_memory(exc):
            held = self.task.footprint(int(lengths[index].max())) + (int(new[index].max()) if new is not None else 0)
            self.max_tokens = max(held, min(self.max_tokens, len(index) * held // 2))
            if self.loaded.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning(
                "out of memory on %d rows × %d tokens: splitting; token budget now %d",
                len(index),
                int(lengths[index].max()),
                self.max_tokens,
            )
            return f"out of memory even alone ({int(lengths[index].max())} tokens)"
        log.warning("forward failed on %d feature(s), isolating the cause: %s", len(index), _short(exc))
        return f"forward failed: {_short(exc)}"

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
        counts: tuple[np.ndarray, np.ndarray | None],
        errors: pa.Array,
    ) -> pa.Table:
        """The input batch plus prediction columns (null where a row has an error), token counts and cut flags:
        ``counts`` holds each feature's padded length and the tokens it generated (None: the task generates none).
        """
        padded, generated = counts
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
        new = np.zeros(n, dtype=np.int64)
        cut = np.zeros(n, dtype=np.int64)
        if features.truncated is not None:  # one flag per row predicted, as finish reads them
            cut[rows] = np.asarray(features.truncated, dtype=bool)
        if len(features):
            tokens[rows] = np.bincount(features.row, weights=features.lengths, minlength=len(rows))
            spent[rows] = np.bincount(features.row, weights=padded, minlength=len(rows))
            if generated is not None:
                new[rows] = np.bincount(features.row, weights=generated, minlength=len(rows))
        table = table.append_column(ERROR, errors.cast(pa.string()))
        table = table.append_column(TOKENS, pa.array(tokens))
        table = table.append_column(PADDED, pa.array(spent))
        table = table.append_column(GENERATED, pa.array(new))
        return table.append_column(CUT, pa.array(cut))


def validate_rows(batch: pa.Table, text_column: str) -> tuple[np.ndarray, pa.Array]:
    """Rows with a usable text (a boolean mask); the others get a reason in ``_error``."""
    text = batch.column(text_column)
    errors = batch.column(ERROR) if ERROR in batch.column_names else pa.nulls(len(batch), pa.string())
    errors = pc.if_else(pc.and_(errors.is_null(), text.is_null()), "text is null", errors)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(text, "x"))), 0)
    errors = pc.if_else(pc.and_(errors.is_null(), empty), "text is empty", errors)
    valid = errors.is_null().to_numpy(zero_copy_only=False)
    return valid, errors


def micro_batches(
    task: Task, lengths: np.ndarray, batching: BatchingSpec, max_tokens: int, device: str, lanes: int = 1,
    new_tokens: np.ndarray | None = None,
) -> list[np.ndarray]:
    """How a call's features are cut into forwards on ``device`` (``cpu``, ``cuda``...): length-sorted, under the
    token budget, by the task's own fill and footprint, the cuts where padding plus the device's cost per forward
    is least; for ``lanes`` > 1, in the order lanes take them (see :func:`spread_over_lanes`) where there are at
    least as many as lanes (``pipelines plan`` uses it too, so that it plans what the predictor runs).
    ``new_tokens``: the tokens each feature may generate, where the task says so per feature
    (``Task.planned_new_tokens``)."""
    fill = task.micro_batch_fill(batching.min_fill)
    forward_cost = FORWARD_COST_TOKENS.get(device.split(":")[0], FORWARD_COST_TOKENS["cpu"])
    batches = plan_microbatches(lengths, max_tokens, batching.max_rows, fill, task.footprint, forward_cost, new_tokens)
    if lanes < 2 or len(batches) < lanes:
        return batches
    return spread_over_lanes(batches, lambda index: forward_cost + int(task.padded_widths(lengths[index]).sum()), lanes)


def encode_rows(task: Task, spec: JobSpec, batch: pa.Table, rows: np.ndarray) -> Features:
    """The features of ``rows`` of the batch, as the task encodes them (ids under ``ROW_ID``); a row whose input
    holds no token (see ``Task.without_tokens``) is refused, unless the task refused it first."""
    if not len(rows):
        return Features(tokens={}, row=np.zeros(0, np.int64))
    picked = batch.take(rows)
    texts = picked.column(spec.input.text_column).to_pylist()
    columns = {name: picked.column(name).to_pylist() for name in spec.task.input_columns()}
    id_column = spec.input.id_column or "id"
    if id_column in picked.column_names:
        columns[ROW_ID] = picked.column(id_column).cast(pa.string()).to_pylist()
    features = task.encode(texts, columns)
    features.errors = {**task.without_tokens(texts, columns), **features.errors}
    return features


#: How torch's allocators word running out: CUDA's "CUDA out of memory", the CPU allocator's
#: "DefaultCPUAllocator: can't allocate memory ... (Cannot allocate memory)".
OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def usable_cpus() -> int:
    """The cores this process may run on (its affinity; the machine's where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA's, among others), Python's MemoryError, or a RuntimeError that says so
    (the CPU allocator raises a plain RuntimeError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc).lower() for words in OUT_OF_MEMORY_WORDS)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def not_finite_rows(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per value: whether it holds a NaN or infinite number, itself or anywhere inside it (a vector, a list of
    entities with scores). Nulls hold none."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    kind = array.type
    found = np.zeros(len(array), dtype=bool)
    if pa.types.is_floating(kind):
        finite = pc.is_finite(array.cast(pa.float64()) if pa.types.is_float16(kind) else array)
        return ~pc.fill_null(finite, True).to_numpy(zero_copy_only=False)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = not_finite_rows(array.flatten())
        if inner.any():
            found[pc.list_parent_indices(array).to_numpy()[inner]] = True
        return found
    if pa.types.is_struct(kind):
        for field in array.flatten():
            found |= not_finite_rows(field)
    return found


def _not_finite(predictions: dict[str, pa.Array], rows: int) -> np.ndarray:
    """Indices of the rows (of ``rows`` predicted) whose prediction holds a NaN or infinite number in any column."""
    found = np.zeros(rows, dtype=bool)
    for values in predictions.values():
        if len(values) == rows:
            found |= not_finite_rows(values)
    return np.flatnonzero(found)


def _flag_each(errors: pa.Array, rows: np.ndarray, reasons: list[str]) -> pa.Array:
    """Set each of ``rows`` its own reason (where it has none yet)."""
    if not len(rows):  # nothing to set: no copy of the batch's errors through Python
        return errors
    values = errors.to_pylist()
    for row, reason in zip(rows.tolist(), reasons):
        if values[row] is None:
            values[row] = reason
    return pa.array(values, pa.string())


def _by_reason(errors: dict[int, str]) -> dict[str, np.ndarray]:
    """Row indices grouped by their error message."""
    grouped: dict[str, list[int]] = {}
    for row, reason in errors.items():
        grouped.setdefault(reason, []).append(row)
    return {reason: np.asarray(rows, dtype=np.int64) for reason, rows in grouped.items()}


def _flag(errors: pa.Array, rows: np.ndarray, reason: str) -> pa.Array:
    """Set ``reason`` as the error of ``rows`` that have none yet."""
    mark = np.zeros(len(errors), dtype=bool)
    mark[rows] = True
    return pc.if_else(pc.and_(errors.is_null(), pa.array(mark)), reason, errors)
