"""The sample through the job's own tokenizer and task: tokens, truncation, fan-out and padding.

Each sampled batch goes through the predictor's own steps without the model:
:func:`~pipelines.inference.predictor.validate_rows`, the task's ``encode`` after its
``plan_setup`` (so a zero-shot NLI row counts one feature per label, a question one per
context window, an llm-label row one feature after the shared prompt prefix) and
:func:`~pipelines.inference.predictor.micro_batches` under the spec's batching settings,
per batch of ``batch_size`` rows as an actor gets it. Imports transformers (the
tokenizer), loads no weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.io.block import ERROR, ROW, SHARD
from pipelines.output import duplicates
from pipelines.output.staging import reason_counts
from pipelines.planning.hardware import this_machine_cpus
from pipelines.planning.records import Distribution, TokenPlan
from pipelines.spec import JobSpec


@dataclass
class TaskContext:
    """What a predictor builds before loading weights: config, tokenizer, task, the Auto class."""

    config: Any
    tokenizer: Any
    task: Any
    model_class: str
    max_length: int
    resolved: str


def check_config_as_a_run_does(spec: JobSpec) -> None:
    """A model whose config a run's preflight does not find (a directory without ``config.json``, an adapter, a
    file, a hub id not to be had) stops the plan with the run's own line, not Transformers' words."""
    import os

    from pipelines.inference.aliases import resolve_name
    from pipelines.inference.checks import CONFIG, check_hub_config, check_model_files

    resolved = resolve_name(spec.model)
    if not os.path.isdir(resolved):
        check_hub_config(spec.model, resolved)
    elif not os.path.isfile(os.path.join(resolved, CONFIG)):
        check_model_files(spec.model, resolved)  # says what the directory is; its config is checked first


def load_task(spec: JobSpec) -> TaskContext:
    """Config, tokenizer and task exactly as :class:`~pipelines.inference.predictor.Predictor` builds them."""
    from pipelines.inference.aliases import check_no_model_folder_of_the_name, resolve_name
    from pipelines.inference.checks import check_task_head
    from pipelines.inference.loading import effective_max_length, load_config, load_tokenizer
    from pipelines.tasks import task_class

    implementation = task_class(spec.task.type, spec.input.format)
    check_no_model_folder_of_the_name(spec.model)  # as a run's preflight refuses it
    check_config_as_a_run_does(spec)
    config = load_config(spec.model)
    method = getattr(spec.task, "method", None)
    check_task_head(spec.task.type, spec.model.name, config.to_dict(), method)  # as a run's preflight refuses it
    tokenizer = load_tokenizer(spec.model, implementation.padding_side)
    max_length = effective_max_length(tokenizer, config, spec.batching.max_length)
    task = implementation(spec.task, tokenizer, config, max_length, seed=spec.seed)
    task.plan_setup()  # what the actor's setup prepares for encoding (a shared prompt prefix), without weights
    model_class = implementation.model_class_for(spec.task, config)
    return TaskContext(config, tokenizer, task, model_class, max_length, resolve_name(spec.model))


@dataclass
class BatchTokens:
    """One batch through validate → encode → micro-batches."""

    rows: int
    lengths: np.ndarray  # per feature the model sees (those of the rows a run quarantines left out)
    per_row: np.ndarray  # answered features per encoded row (0: the row is quarantined)
    tokens: int  # as a run counts them: the features of the rows the output will hold
    padded: int  # the same features' tokens computed
    micro_batches: int
    truncated: int | None
    errors: list[str]  # one reason per quarantined row


def tokenize_batch(
    context: TaskContext, spec: JobSpec, batch: pa.Table, unreadable_rows: dict[str, int] | None = None,
    ids_seen: set[str] | None = None, ids_repeated: list[str] | None = None,
) -> BatchTokens:
    """``unreadable_rows``: shard key → the rows a run counts for an unreadable file's one record (as quarantined,
    under errors.unreadable_files: quarantine). ``ids_seen``: the ids of the rows written so far, where the run's
    ``errors.duplicate_ids: error`` screen applies (it sees the rows the task answered, after every other check).
    ``ids_repeated``: under ``keep`` (an OpenAI Batch input), where the ids written again go, none quarantined."""
    from pipelines.inference.predictor import encode_rows, micro_batches, validate_rows

    if spec.errors.unreadable_files == "fail" and ROW in batch.column_names:
        # a file that can't be read comes as one record (row -1); under fail a run fails on the file instead of
        # quarantining that record (the plan's problems say so), so it is no row of the run's
        batch = batch.filter(pc.not_equal(batch.column(ROW), -1))
    valid, errors = validate_rows(batch, spec.input.text_column)
    rows = np.flatnonzero(valid)
    task = context.task
    features = encode_rows(task, spec, batch, rows)
    lengths = features.lengths if len(features) else np.zeros(0, np.int64)
    device = spec.actor_device()
    lanes = spec.lanes(device, spec.compute.torch_threads(this_machine_cpus()))  # as on this machine's cores
    plan = []
    if len(lengths):  # as the predictor cuts them, each feature's own generated tokens counted where the task has them
        new = task.planned_new_tokens(features)
        plan = micro_batches(task, lengths, spec.batching, spec.batching.max_tokens, device, lanes, new)
    reasons = [r for r in errors.to_pylist() if r is not None]
    told = 0  # rows beyond their one record that a run counts for the unreadable files in this batch
    if ROW in batch.column_names:
        for index in np.flatnonzero(batch.column(ROW).to_numpy(zero_copy_only=False) == -1):
            count = (unreadable_rows or {}).get(batch.column(SHARD)[int(index)].as_py(), 1)
            reason = errors[int(index)].as_py()
            reasons.remove(reason)
            reasons += [reason] * count  # none where its rows are unknown: a run counts them as no rows
            told += count - 1
    # As the predictor flags them: rows the task refused, then (errors.too_long: error) rows cut at max_length.
    reasons += list(features.errors.values())
    truncated = None if features.truncated is None else np.asarray(features.truncated, dtype=bool)
    if not len(features):
        truncated = np.zeros(0, dtype=bool)  # nothing encoded: nothing cut
    if truncated is not None and spec.errors.too_long == "error":
        refused = set(features.errors)
        reasons += ["text longer than max_length" for i in np.flatnonzero(truncated) if int(i) not in refused]
    widths = np.zeros(len(lengths), dtype=np.int64)
    for picked in plan:
        widths[picked] = task.padded_widths(lengths[picked])
    # as a run counts them: the features of a row quarantined (refused, or cut under too_long: error) count in none
    answered = ~np.isin(features.row, list(features.errors)) if len(lengths) else np.zeros(0, dtype=bool)
    if truncated is not None and spec.errors.too_long == "error" and len(lengths):
        answered &= ~truncated[features.row]
    if ids_seen is not None and spec.input.id_column and len(lengths):
        written = _in_file_order(batch, rows, np.unique(features.row[answered]))  # encoded rows the output would hold
        ids = batch.column(spec.input.id_column).to_pylist()
        repeated = []
        for j in written:
            value = ids[int(rows[j])]
            if ids_repeated is not None:  # keep: every row written, its id noted where it repeats
                if value is not None and value in ids_seen and value not in ids_repeated:
                    ids_repeated.append(value)
                ids_seen.add(value)
            elif value is None or value in ids_seen:
                reasons.append(duplicates.NULL_REASON if value is None else duplicates.REASON)
                repeated.append(j)
            else:
                ids_seen.add(value)
        answered &= ~np.isin(features.row, repeated)
    if truncated is not None and spec.errors.too_long != "error" and len(truncated):
        written = np.zeros(len(truncated), dtype=bool)  # as the run's rows_cut: the rows the output would hold
        written[np.unique(features.row[answered])] = True
        truncated = truncated & written
    return BatchTokens(
        rows=len(batch) + told,
        lengths=lengths[answered],
        per_row=(np.bincount(features.row[answered], minlength=len(rows)) if len(features)
                 else np.zeros(len(rows), np.int64)),  # a quarantined row's features count in none
        tokens=int(lengths[answered].sum()),
        padded=int(widths[answered].sum()),
        micro_batches=len(plan),
        truncated=None if truncated is None else int(truncated.sum()),
        errors=reasons,
    )


def _in_file_order(batch: pa.Table, rows: np.ndarray, written: np.ndarray) -> np.ndarray:
    """``written`` (indexes into ``rows``, the batch's valid rows) in the order a run's duplicate screen meets them:
    each shard's rows in file order (its commit screens them so), the shards in the order the batch first holds
    them. A batch is read sorted by text length, so its own order would keep a later, shorter copy of an id."""
    if ROW not in batch.column_names or SHARD not in batch.column_names or not len(written):
        return written
    at = rows[written]
    shards = batch.column(SHARD).to_pylist()
    first = {shard: i for i, shard in reversed(list(enumerate(shards)))}
    places = batch.column(ROW).to_numpy(zero_copy_only=False)
    return written[np.lexsort((places[at], [first[shards[int(i)]] for i in at]))]


def token_plan(
    context: TaskContext, spec: JobSpec, batches: list[pa.Table], input_rows: int, covers_input: bool,
    unreadable_rows: dict[str, int] | None = None, records: pa.Table | None = None,
) -> TokenPlan:
    """Statistics over the sampled batches, and the whole input's tokens and output rows from them.

    ``records``: a sampled plan's unreadable files (each one record standing for its ``unreadable_rows``), counted
    exactly and apart: scaled with the sample, one file's rows were taken for a rate of bad rows over the input."""
    if records is not None:
        batches = [b.filter(pc.not_equal(b.column(ROW), -1)) if ROW in b.column_names else b for b in batches]
    named = spec.errors.duplicate_ids == "keep" and spec.input.format == "openai-batch"  # repeats named, as in a run
    seen: set[str] | None = set() if spec.errors.duplicate_ids == "error" or named else None  # across batches, in order
    repeated: list[str] | None = [] if named else None
    done = [tokenize_batch(context, spec, batch, unreadable_rows, seen, repeated) for batch in batches]
    apart = tokenize_batch(context, spec, records, unreadable_rows) if records is not None else None
    rows = sum(b.rows for b in done)
    lengths = np.concatenate([b.lengths for b in done]) if done else np.zeros(0, np.int64)
    per_row = np.concatenate([b.per_row for b in done]) if done else np.zeros(0, np.int64)
    scored = per_row[per_row > 0]  # rows with an answered feature: those a run writes
    tokens, padded = sum(b.tokens for b in done), sum(b.padded for b in done)
    reasons = [r for b in done for r in b.errors]
    quarantined = _counts(reasons)
    truncated = [b.truncated for b in done]
    scale = (input_rows - (apart.rows if apart else 0)) / rows if rows else 0.0
    return TokenPlan(
        sample_rows=rows,
        sample_batches=len(done),
        batch_size=spec.batching.batch_size,
        covers_input=covers_input,
        max_length=context.max_length,
        features=len(lengths),
        features_per_row=round(float(scored.mean()), 3) if len(scored) else 0.0,  # over the rows a run scores
        feature_tokens=distribution(lengths),
        tokens=tokens,
        padded=padded,
        padding_efficiency=round(tokens / padded, 4) if padded else None,
        micro_batches=sum(b.micro_batches for b in done),
        truncated_rows=None if any(t is None for t in truncated) else sum(t or 0 for t in truncated),
        quarantined=quarantined,
        repeated_ids=repeated or [],
        unreadable_quarantined=_counts(apart.errors) if apart else {},
        tokens_total=tokens if covers_input else math.floor(tokens * scale + 0.5),
        rows_out=rows - len(reasons) if covers_input else math.floor((rows - len(reasons)) * scale + 0.5),
    )


def _counts(reasons: list[str]) -> dict[str, int]:
    """Rows by reason, the most first."""
    counted = reason_counts(pa.table({ERROR: pa.array(reasons, pa.string())}))
    return dict(sorted(counted.items(), key=lambda kv: -kv[1]))


def distribution(values: np.ndarray) -> Distribution | None:
    if not len(values):
        return None
    p50, p90, p99 = (int(np.percentile(values, q, method="higher")) for q in (50, 90, 99))
    return Distribution(mean=round(float(values.mean()), 1), p50=p50, p90=p90, p99=p99, max=int(values.max()))
