"""Running a job on Ray Data: shards → actor pool of predictors → staged Parquet → committed shards.

The driver plans (which shards are still to do), builds one streaming dataset
over them, and consumes only the small per-block reports the staging writers
return; a shard is committed as soon as all of its rows are accounted for.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import faults, fidelity
from pipelines.cluster.connect import worker_spec
from pipelines.errors import PipelineError, died_on_a_batch, from_ray, one_line_ray_errors
from pipelines.inference.identity import changed as identity_changed
from pipelines.inference.identity import generation_settings, model_files
from pipelines.io.reader import (
    NOT_FETCHED,
    Columns,
    count_rows,
    decode_types,
    encode_types,
    read_shard,
    reference_types,
    same_content,
    sampled_columns,
)
from pipelines.io.shards import Shard, UnderFolder, is_within, list_shards, real_path, resolve
from pipelines.output import report as pages
from pipelines.output import summary as summaries
from pipelines.output.commit import OutputDir, OutputFiles, changed_inputs, scheduled_output
from pipelines.output.duplicates import DuplicateIds, quarantined_repeats, repeated_custom_ids
from pipelines.output.layout import JOB, LEDGER, RUN, RUN_LOCK, check_no_other_outputs, writing
from pipelines.output.layout import LOCK as SCHEDULE_LOCK
from pipelines.output.lock import LockHeld, output_lock
from pipelines.output.openai_batch import OpenAIBatchFiles
from pipelines.output.records import (
    SCORING,
    CommitRecord,
    Fidelity,
    JobRecord,
    ModelRef,
    RunSummary,
    Unreadable,
    precision_label,
)
from pipelines.output.staging import ActorClock, StagingConfig, StagingReport, confusion
from pipelines.spec import JobSpec, changed_settings
from pipelines.tasks.options import GENERATION_TASKS, left_out_differences

log = logging.getLogger(__name__)

IO_CPUS = 0.25  # read and write tasks are light; leave the cores to the actors
#: How many times a batch is tried again after the actor running it died (the process killed: out of memory, a
#: node lost): Ray restarts the actor each time; past this the run fails, naming the batch's shard.
BATCH_RETRIES = 3


def job_record(spec: JobSpec) -> JobRecord:
    """What identifies these results: the spec's hash, the model, the task."""
    device = spec.actor_device()
    return JobRecord(
        name=spec.name,
        spec_hash=spec.fingerprint(),
        model=ModelRef(name=spec.model.name, revision=spec.model.revision),
        quantization=spec.model.quantization,
        device=device,
        task=spec.task.type,
        spec=spec.model_dump(mode="json"),
    )


def columns_of(spec: JobSpec, shards: Sequence[Shard] = (), kept: dict[str, pa.DataType] | None = None) -> Columns:
    """The columns to read; passed-through columns get one type unified over every shard (see reference_types),
    or the type ``kept`` gives them (another output's, whose rows are read with these)."""
    keep = [*spec.input.columns_to_keep, *([spec.input.label_column] if spec.input.label_column else [])]
    columns = Columns(
        text=spec.input.text_column,
        id=spec.input.id_column,
        inputs=tuple(spec.task.input_columns()),
        keep=tuple(dict.fromkeys(keep)),
    )
    kept = {name: type_ for name, type_ in (kept or {}).items() if name in columns.keep}
    sampled = replace(columns, keep=tuple(name for name in columns.keep if name not in kept))
    types = {**(reference_types(list(shards), sampled) if sampled.keep else {}), **kept}
    return replace(columns, keep_types=tuple((name, types[name]) for name in columns.keep))


def staging_config(spec: JobSpec, shards: list[Shard]) -> StagingConfig:
    predicted = spec.output.prediction_prefix + "label"
    return StagingConfig(
        output=worker_spec(spec)["output"]["path"],  # written by the pool's actors, wherever they run from
        id_column=spec.input.id_column or "id",
        text_column=spec.input.text_column,
        output_columns=tuple(spec.output_columns()),
        shard_uris={s.key: s.uri for s in shards},
        truth_column=spec.input.label_column,
        truth_map=spec.input.label_map,
        predicted_column=predicted if predicted in spec.prediction_columns() else None,
    )


def output_files(spec: JobSpec) -> OutputFiles | None:
    """The format of the committed files: None for Parquet, the default."""
    if spec.output.format != "openai-batch":
        return None
    return OpenAIBatchFiles(
        "chat" if spec.task.type == "text-generation" else "embeddings",
        spec.input.id_column or "id",
        spec.model.name,
        spec.output.prediction_prefix,
    )


def check_input_columns(spec: JobSpec, shards: Sequence[Shard]) -> None:
    """Refuse a column the job must read (the text, the id, a task's other inputs) that none of the input files
    sampled holds: a misspelt name, not a file without it (whose rows are quarantined, `missing column`), which
    would otherwise quarantine every row in a run on Ray and leave its committed shards to the corrected spec."""
    import difflib

    if spec.input.format == "openai-batch" or not shards:  # a Batch file's columns are made from its requests
        return
    fields = {spec.input.text_column: "input.text_column"}
    options = spec.task.model_dump()
    for name in spec.task.input_columns():
        named = [f"task.{key}" for key, value in options.items() if key.endswith("_column") and value == name]
        fields.setdefault(name, named[0] if named else f"task.prompt_template's {{{name}}}")
    if spec.input.id_column:
        fields.setdefault(spec.input.id_column, "input.id_column")
    sampled, present = sampled_columns(shards, list(fields))
    for name, field_ in fields.items():
        if not sampled or name in present:
            continue
        lower = {c.lower(): c for c in reversed(present)}  # the first seen of names that differ in case only
        near = [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=1)]
        guess = f"did you mean {near[0]!r}? " if near else ""
        is_id = field_ == "input.id_column"
        fix = (f"set {field_} to the column that holds each row's id, or write id_column: null to make ids "
               "<file>:<row>" if is_id else f"set {field_} to the column that holds it")
        files = f"{sampled} input file{'s' if sampled > 1 else ''}"
        raise PipelineError(
            f"{field_} {name!r}: in none of the {files} sampled (Parquet footers, the first 256 KiB of JSON lines "
            f"files), whose columns are {', '.join(present)}; {guess}{fix} (else every row would be "
            f"quarantined as missing {'id ' if is_id else ''}column {name!r})"
        )


def preflight(spec: JobSpec) -> None:
    """Problems that can be seen before any work starts: the model must have its config, weights and tokenizer,
    and a head for the task (:func:`~pipelines.inference.checks.check_task_head`).

    The files are checked without model code: the driver imports no torch (that import took seconds, in
    series with the start-up, of every run).
    """
    from pipelines.inference.aliases import check_no_model_folder_of_the_name, resolve_name
    from pipelines.inference.checks import (
        CONFIG,
        check_hub_config,
        check_model_files,
        check_task_head,
        check_translation_languages,
    )

    check_no_model_folder_of_the_name(spec.model)
    resolved = resolve_name(spec.model)
    check_model_files(spec.model, resolved)
    if Path(resolved).is_dir():
        try:
            config = json.loads((Path(resolved) / CONFIG).read_text())
        except (OSError, ValueError):  # said in Transformers' words where the model is loaded
            config = None
    else:  # a hub id: its config says whether it exists (a local one was read above)
        config = check_hub_config(spec.model, resolved)
    if isinstance(config, dict):
        check_task_head(spec.task.type, spec.model.name, config, getattr(spec.task, "method", None))
        if spec.task.type == "translation":
            check_translation_languages(spec.task, config.get("task_specific_params"))
    log.info("model %s resolved to %s", spec.model.name, resolved)


def ready_to_run(spec: JobSpec, address: str | None) -> None:
    """What a scheduled invocation makes sure of before its first run: the model (:func:`preflight`), and Ray,
    started here or joined at ``address`` with the pool's resources checked (a run then finds it up). Each raises
    the PipelineError a run would fail with at once."""
    from pipelines.cluster.connect import connect

    preflight(spec)
    connect(address, spec)


def build_dataset(spec: JobSpec, shards: list[Shard], columns: Columns, files: dict[str, str] | None = None,
                  choosing: Choosing | None = None):
    """The lazy Ray dataset: read → predict on the actor pool → stage; yields writer reports. ``files``: the model
    files the run began with, which each actor checks it loaded (:func:`same_files_as_begun`); ``choosing``: where
    the pool's actors decide ``quantization: auto`` (its board open)."""
    import ray

    from pipelines.io.datasource import ShardDatasource

    compute = spec.compute
    low, high = compute.pool_bounds()
    gpu_args: dict[str, Any] = {"num_gpus": compute.gpus_per_actor} if compute.gpus_per_actor > 0 else {}
    if compute.accelerator_type:
        gpu_args["accelerator_type"] = compute.accelerator_type
    if compute.resources:
        gpu_args["resources"] = dict(compute.resources)
    calls = spec.calls_per_actor()
    # One read task per actor at a time feeds the pool; more would only take CPU from the actors' threads.
    dataset = ray.data.read_datasource(ShardDatasource(shards, columns), num_cpus=IO_CPUS, concurrency=high)
    with warnings.catch_warnings():  # max_task_retries has no named parameter: Ray Data warns of the old way, the
        # only one it takes it by (until Ray 2.64, which pyproject.toml keeps out)
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        return _pool(dataset, spec, shards, files, low, high, calls, gpu_args, choosing)


def _pool(dataset: Any, spec: JobSpec, shards: list[Shard], files: dict[str, str] | None, low: int, high: int,
          calls: int, gpu_args: dict[str, Any], choosing: Choosing | None = None) -> Any:
    import ray

    compute = spec.compute
    deciding = (choosing.board, choosing.choice.picked, choosing.choice.bar) if choosing is not None else None
    return dataset.map_batches(
        PredictAndStage,
        fn_constructor_kwargs={
            "spec": worker_spec(spec), "staging": staging_config(spec, shards), "model_files": files,
            "deciding": deciding,
        },
        compute=ray.data.ActorPoolStrategy(
            min_size=low,
            max_size=high,
            max_concurrent_calls_per_actor=calls,
            enable_true_multi_threading=calls > 1,  # the calls themselves overlap; the forwards are kept apart
        ),
        batch_size=spec.batching.batch_size,
        batch_format="pyarrow",
        num_cpus=compute.cpus_per_actor,
        # an actor that died (killed for memory, a node lost) is restarted, without end, but one batch is tried
        # at most 1 + BATCH_RETRIES times: one that kills whichever actor takes it fails the run (Ray Data's
        # default retried it forever)
        max_task_retries=BATCH_RETRIES,
        **gpu_args,
    )


class PredictAndStage:
    """The pool's actor: one Predictor (loaded once); each batch is predicted, then staged right there.

    Staging in the actor (a Parquet write of the batch's rows, milliseconds) saves a write stage: no
    second hop of every predicted block through the object store, and no write tasks competing with
    the actor's torch threads for the CPU.

    All of the model's work (the load and every forward) runs on one thread of the actor's own. Ray Data
    builds the actor on one thread and calls it on another, and on a CPU each thread that starts torch's
    parallel regions gets its own OpenMP team: with more team threads than cores, OpenMP (GNU's, in
    torch's wheels) stops spin-waiting between regions, and each of the thousands of regions per second
    then waits for sleeping threads to wake. That cost the forward 13-17% on 2 cores (measured).

    Ray Data may call it with several batches at once (``JobSpec.calls_per_actor``), each on a thread of its
    own: the host's work on one batch (tokenizing before, postprocessing and staging after) then runs while
    the model thread runs another's forwards, which stay one batch at a time.

    ``deciding`` (a run under ``quantization: auto`` that decides it now: the board, the fidelity sample and the
    bar): the precision is the board's, else decided here first, on the model thread
    (:func:`~pipelines.fidelity.run_precision`), so that the imports of torch, Transformers and the model's code,
    which a separate check would pay again, are the run's own.
    """

    def __init__(self, spec: dict[str, Any], staging: StagingConfig, model_files: dict[str, str] | None = None,
                 deciding: tuple[Any, pa.Table, float] | None = None) -> None:
        started = time.time()
        from pipelines.inference.heavy_imports import import_predictor

        Predictor = import_predictor()  # noqa: N806 - the class
        imported = time.time()
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor")
        if deciding is not None:
            spec = self.model_thread.submit(fidelity.run_precision, spec, *deciding).result()
        self.predictor = self.model_thread.submit(Predictor, spec).result()
        same_files_as_begun(spec, model_files)
        if deciding is None:
            self.model_thread.submit(warn_of_slow_int8, spec, self.predictor.loaded.device.type).result()
        self.staging = staging
        # the run's timeline takes the first actor's
        self.clock = ActorClock(started_at=started, imported_at=imported, ready_at=time.time())
        # the labels the model can give, where the job predicts one: the run's agreement checks its truth against them
        labels = getattr(self.predictor.task, "labels", None) if staging.predicted_column else None
        self.labels = [str(label) for label in labels] if labels is not None else []
        # what the model loaded as: each staged block says it, and its shard's commit checks and records it
        loaded = str(self.predictor.loaded.dtype).removeprefix("torch.")
        self.precision = precision_label({"quantization": spec["model"]["quantization"], "dtype": loaded})

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipelines.output.staging import write_staged

        pending = self.predictor.prepare(batch)
        pending = self.model_thread.submit(self.predictor.infer, pending).result()
        finished = self.predictor.finish(pending)
        with writing(self.staging.output):  # a full disk: the driver's one line (see errors.from_ray)
            return write_staged(finished, self.staging, actor=self.clock, labels=self.labels,
                                precision=self.precision)


def warn_of_slow_int8(spec: dict[str, Any], device: str) -> None:
    """Warn (the actor's log, which Ray shows the driver) where a job runs a CPU int8 quantization it set itself, or
    that ``auto`` chose earlier elsewhere, on a CPU whose int8 product is many times slower than float32's
    (:func:`~pipelines.inference.int8_linear.slow_int8_warning`); on the model thread, with its threads."""
    quantization = spec["model"]["quantization"]
    if device != "cpu" or quantization not in fidelity.INT8_CANDIDATES:
        return
    from pipelines.inference.int8_linear import slow_int8_ratio, slow_int8_warning

    ratio = slow_int8_ratio()
    if ratio is not None:
        log.warning(slow_int8_warning(quantization, ratio))


def same_files_as_begun(spec: dict[str, Any], began: dict[str, str] | None) -> None:
    """Refuse (PipelineError) to score with a local model folder whose files are not those the run began with
    (``began``: the driver's :func:`~pipelines.inference.identity.model_files`, recorded in ``_job.json``): an actor
    started later in the run (a pool that grows, one Ray restarts) loads what the folder holds then, and a model
    saved into it meanwhile would score the rest of the shards. Told by names, sizes and times, the content hashed
    again only where those changed; nothing is checked for a built-in alias, where the driver knew no content, or
    where this node has no such folder."""
    from pipelines.inference.aliases import ALIASES, resolve_name
    from pipelines.spec import ModelSpec

    if not began or not began.get("content") or str(spec["model"]["name"]).lower() in ALIASES:
        return  # an alias: an installed package's files, not saved again while a run runs
    model = ModelSpec(**spec["model"])
    if not Path(resolve_name(model)).is_dir():
        return
    now = model_files(model, began)
    if identity_changed(began, now):
        assert now is not None
        raise PipelineError(
            f"model.name {model.name}: its files changed since this run began (content {began['content']}, now "
            f"{now['content']}): a model saved into the folder meanwhile would score the rest of the shards beside "
            "the earlier model's, so this run stops here (the shards it committed were scored by the earlier files). "
            "Run the same command again once the folder holds the model to score with: an output with committed "
            "shards then asks for --overwrite, or for the earlier files back"
        )


@dataclass
class Tally:
    """Rows accounted for per shard; a shard is complete when they add up to its row count.

    Each report names the row ranges it holds, so a block that comes back twice
    (a task re-executed by Ray) is recognised and left out instead of duplicated.
    """

    reports: dict[str, list[StagingReport]] = field(default_factory=lambda: defaultdict(list))
    seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    covered: dict[str, np.ndarray] = field(default_factory=dict)  # a flag per row of the shard
    read_as: dict[str, tuple[int, str]] = field(default_factory=dict)  # rows and digest of the shard's first read
    uris: dict[str, str] = field(default_factory=dict)  # for messages

    def add(self, report: StagingReport) -> bool:
        shard = report.shard
        self._same_read(report)
        rows = np.concatenate([np.arange(s, e) for s, e in report.row_ranges] or [np.zeros(0, np.int64)])
        covered = self.covered.setdefault(shard, np.zeros(max(report.shard_rows, 1), dtype=bool))
        rows = rows[rows >= 0]  # an unreadable file's one record is row -1
        if covered[rows].any():
            log.warning("shard %s: a block came back twice; keeping the first copy", shard)
            return False
        covered[rows] = True
        self.reports[shard].append(report)
        self.seen[shard] += report.rows + report.errors
        if self.seen[shard] == report.shard_rows:
            del self.covered[shard]
            return True
        return False

    def _same_read(self, report: StagingReport) -> None:
        """Every report of a shard comes from one read of its file: a read task Ray ran again (its output lost
        with a node) after the file changed would give rows of two versions, or rows past the first one's end."""
        first = self.read_as.setdefault(report.shard, (report.shard_rows, report.digest))
        rows, digest = first
        if report.shard_rows != rows or (digest and report.digest and report.digest != digest):
            uri = self.uris.get(report.shard, report.shard)
            raise PipelineError(
                f"input {uri} changed while this run read it: two reads of it differ ({rows} rows, bytes "
                f"{digest or '?'}; then {report.shard_rows} rows, bytes {report.digest or '?'}); nothing of it was "
                "committed. Run the same command again to score it as it is now"
            )


def not_scheduled(output: OutputDir) -> None:
    """Refuse a scheduled job's output, once this run holds its own lock: a scheduler started at the same moment
    looked at the folder before taking its lock (another than this run's), and so did this run. Each looks again
    after taking its own (see ScheduledJob.check_layout), for the other's lock held or its files, so of two started
    together one (or both) is refused. A lock file alone, which a refused run leaves, refuses nothing."""
    ledger = output.fs.get_file_info(f"{output.root}/{LEDGER}").type != pafs.FileType.NotFound
    held = output_lock(output.location, SCHEDULE_LOCK, "a scheduled job", quiet=True).held_elsewhere()
    if ledger or held is not None:
        raise PipelineError(scheduled_output(output.location, f"its ledger {LEDGER} is there" if ledger else str(held)))


#: An up-to-date answer: the output's totals as its finishing run left them, and nothing scored by this run (its
#: rows, speeds and padding were that run's: ``pipelines run --json`` and a scheduled resume's ledger line told
#: them as this run's).
NOTHING_THIS_RUN: dict[str, Any] = {
    "status": "up to date", "shards_this_run": 0, "rows_this_run": 0, "rows_per_s": None, "tokens_per_s": None,
    "prompt_tokens_per_s": None, "generated_tokens_per_s": None, "padding_efficiency": None,
}


@one_line_ray_errors
def run_job(
    spec: JobSpec,
    *,
    address: str | None = None,
    overwrite: bool = False,
    prune: bool = False,
    redo_changed: bool = False,
    shards: list[Shard] | None = None,
    before_visible: Callable[[Shard], None] | None = None,
    precision: dict[str, Any] | None = None,
    column_types: str | None = None,
) -> RunSummary:
    """Run (or resume) a job; return its summary. Raises PipelineError on any failure.

    ``shards`` restricts the run to those input shards (default: every shard under input.paths); then
    committed shards outside them are the caller's business (the scheduler's), not stale output.
    ``prune`` deletes the output of committed shards whose input is gone, instead of refusing to run;
    ``redo_changed`` deletes that of committed shards whose input changed, and scores them again.
    ``before_visible`` is called for each shard after its commit is recorded and before its rows appear.
    ``precision``: what ``quantization: auto`` keeps where the output recorded none (a scheduled job's new
    partition keeps the precision of the job's earlier runs). ``column_types``: the kept columns' types (as
    :func:`~pipelines.io.reader.encode_types` writes them) that a fresh output takes instead of sampling its input,
    for the columns they name (a scheduled job's new partition keeps its earlier runs' types: read as one table).
    """
    timeline = {"process_start": _process_start(), "run_start": time.time()}
    check_paths(spec)
    job = job_record(spec)
    given = shards is not None
    if shards is None:
        shards = list_shards(spec.input.paths, spec.input.format, exclude=[spec.output.path])
        check_no_other_outputs(shards)
    check_input_columns(spec, shards)
    preflight(spec)
    output = OutputDir(spec.output.path)
    pending = shards
    files: dict[str, str] | None = None  # the model files, where a resume had to compare them
    lock = output_lock(spec.output.path, RUN_LOCK, f"the output {spec.output.path}")
    with writing(spec.output.path):  # a store's refusal to list or read is one line too
        try:
            output.check_owner()
            if not given:  # a scheduled job's partitions lie inside its root by design
                output.check_not_inside_another()
            if not overwrite:  # a finished job is answered without the lock, and nothing is written
                pending, committed = _pending(output, job, shards, given, prune=prune, dry=True,
                                              redo_changed=redo_changed)
                pruning = len(committed) < len(output.committed())
                if not pending and output.finished() and not pruning:
                    busy = lock.held_elsewhere()  # finished when read, but that run may be deleting it (--overwrite)
                    if busy is not None:
                        raise LockHeld(f"{busy}. The output was finished when this run read it; that run may be "
                                       "changing it (--overwrite, --prune and --redo-changed delete files first)")
                    log.info("nothing to do: all %d shards of %s are committed", len(shards), spec.output.path)
                    previous = output.summary() or summaries.build(
                        job, list(committed.values()), [], 0.0, "succeeded"
                    )
                    return previous.model_copy(update=NOTHING_THIS_RUN)
                if pending and committed:
                    files = same_model_files(output, spec)
                    same_decoding(output, spec)
        except PipelineError as refused:
            # What this run read may be another run's work in progress (an --overwrite half done holds its user's
            # files and none of this project's records yet): where another run holds the lock, its busy refusal
            # comes first, with what the read met (which may stand once that run has ended).
            busy = None if isinstance(refused, LockHeld) else lock.held_elsewhere()
            if busy is None:
                raise
            raise LockHeld(f"{busy}. Meanwhile, reading the output met: {refused}") from None
    with writing(spec.output.path):
        # Where a lock is there (held, or left by an earlier run), it is contended for before Ray starts: a busy
        # output is refused at once. Where there is none, it is taken after the fidelity gate, so that a run
        # refused there leaves a fresh output path empty.
        early = lock.present()
        if early:
            lock.acquire()
    try:
        if early:
            not_scheduled(output)
        checked, choosing = None, None
        if pending or overwrite:
            with writing(spec.output.path):  # after a busy refusal: a second run writes nothing to the output
                output.check_writable()  # an object store's missing bucket or denied write: before any work
            from pipelines.cluster.connect import connect

            timeline["connect_start"] = time.time()
            connect(address, spec)  # resource problems surface here, before anything is written
            timeline["ray_ready"] = time.time()
            if spec.model.quantization == "auto":
                recorded = output.job()
                kept = recorded.precision if recorded and recorded.spec_hash == job.spec_hash else None
                known = None if overwrite else kept
                found = fidelity.auto_precision(spec, shards, known or precision)
                if isinstance(found, fidelity.PoolChoice):  # the pool's actors decide: _job.json has it before a commit
                    choosing = Choosing(found)
                else:
                    spec, checked = found
                    job.precision = fidelity.precision_record(spec, checked, known or precision)
            else:
                checked = fidelity.gate(spec, shards)  # below model.fidelity's bar: PipelineError, nothing written
        if not early:
            with writing(spec.output.path):
                lock.acquire()
            not_scheduled(output)
        output.guard = lock.check  # a lock that can be lost (a lease; a deleted file): checked at each commit, last
        output.check_lock()  # a lock taken early was held through Ray's start and the gate: still ours before clearing
        if output.job() is None:  # a new output, first looked at before this run held its lock: what another run
            with writing(spec.output.path):  # made meanwhile (an output inside it, or its lock above) is seen now
                output.check_owner()
                if not given:
                    output.check_not_inside_another()
        job.model_files = files or model_files(spec.model, None if overwrite else _recorded_files(output))
        with writing(spec.output.path):
            if overwrite:
                output.clear()
            pending, _ = _pending(output, job, shards, given, prune=prune, dry=False, redo_changed=redo_changed)
        return _run_locked(spec, job, output, shards, pending, before_visible, checked, timeline, column_types,
                           choosing)
    finally:
        lock.release()


def _recorded_files(output: OutputDir) -> dict[str, str] | None:
    recorded = output.job()
    return recorded.model_files if recorded else None


def same_model_files(output: OutputDir, spec: JobSpec) -> dict[str, str] | None:
    """The model files as they are now; refuses (PipelineError) to resume an output whose committed shards were
    scored by other files: the same folder or name holding a model saved again (retrained, fine-tuned), or a hub
    revision that has moved to another commit. Where either is not known here, nothing is refused."""
    recorded = _recorded_files(output)
    now = model_files(spec.model, recorded)
    if identity_changed(recorded, now):
        assert recorded is not None and now is not None
        name = "content" if recorded.get("content") and now.get("content") else "commit"
        every = "; every file of the folder counts, a README.md or a trainer's state beside the weights too"
        raise PipelineError(
            f"model.name {spec.model.name}: its files changed since this output's committed shards were scored "
            f"({name} {recorded[name]}, now {now[name]}{every if name == 'content' else ''}); resuming could put two "
            "models' predictions in one output. Use --overwrite to score every shard with the model as it is now, or "
            "a new output.path (or put the earlier files back)"
        )
    return now


def same_decoding(output: OutputDir, spec: JobSpec) -> None:
    """Refuses (PipelineError) to resume a generating job's output whose committed shards were decoded with another
    temperature, top-k, top-p or repetition penalty than this spec would use, though its hash is the same: one of
    them leaves the option to the model's generation config, which sets another value than the other writes out."""
    recorded = output.job()
    if not recorded or not recorded.spec or spec.task.type not in GENERATION_TASKS:
        return
    configured = generation_settings(spec.model)
    task = spec.model_dump(mode="json")["task"]
    differ = left_out_differences(recorded.spec.get("task") or {}, task, configured) if configured else []
    if differ:
        raise PipelineError(
            f"output.path {spec.output.path}: its committed shards were decoded otherwise than this spec would decode "
            f"the rest: {'; '.join(differ)}, or use a new output.path, or --overwrite to score every shard again"
        )


def resume_state(spec: JobSpec, shards: list[Shard]) -> tuple[list[Shard], dict[str, CommitRecord], bool]:
    """What a run without ``--overwrite`` or ``--prune`` would find in the output, read and not written: the shards
    it would score, the committed ones, and whether the job is finished (``_SUCCESS``). Raises PipelineError where
    that run would be refused (another job's results or another spec, changed or gone input, an output path that
    holds the input)."""
    check_paths(spec)
    check_no_other_outputs(shards)
    output = OutputDir(spec.output.path)
    output.check_owner()
    output.check_not_inside_another()
    pending, committed = _pending(output, job_record(spec), shards, False, prune=False, dry=True)
    return pending, committed, output.finished()


def _pending(
    output: OutputDir, job: JobRecord, shards: list[Shard], given: bool, prune: bool, dry: bool,
    redo_changed: bool = False,
) -> tuple[list[Shard], dict[str, CommitRecord]]:
    """The shards still to do, and the committed ones; refuses another spec, changed input (or, ``redo_changed``,
    deletes its output, not when ``dry``, and does it again) and stale output."""
    output.check_spec(job, changed_settings)
    listed = output.part_files()  # before the records: a commit writes its record before its files appear
    recorded = output.commits()
    output.check_unrecorded(recorded, listed)
    committed = output.committed(recorded)
    keys = {s.key for s in shards}
    stale = [r for key, r in committed.items() if key not in keys] if not given else []
    if stale and not prune:
        _handle_stale(output, stale, committed, prune, dry)  # refused
    changed = changed_inputs(committed, shards, same_content)
    if changed and not redo_changed:
        raise PipelineError(
            f"input changed since it was scored: {changed[0]}"
            f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}; "
            "use --redo-changed to score the changed files again (their earlier output is deleted first, the other "
            "files' output stays), --overwrite to redo the job, or a new output.path"
        )
    redo = set(changed)  # once: made for each shard, 10,000 changed files took 1.5 s, 50,000 took 40 s
    records = [committed[s.key] for s in shards if s.uri in redo]
    if stale or records:  # first: a crash after it leaves the stale or changed shards to bring the next run here
        committed = _forget_repeats(output, committed, {r.shard for r in [*stale, *records]}, dry)
    if stale:
        committed = _handle_stale(output, stale, committed, prune, dry)
    if records:  # --redo-changed: their output deleted, so that they are scored again
        committed = _forget(output, records, committed, dry, "scoring %s again: it changed since it was scored")
    said = scored_otherwise(committed)
    if said and not dry:
        log.warning(said)
    return [s for s in shards if s.key not in committed], committed


def scored_otherwise(committed: dict[str, CommitRecord]) -> str | None:
    """In words, the committed shards another version of this code read and scored (their ``scored_by`` another
    :data:`~pipelines.output.records.SCORING`; None: none, or only shards from before it was recorded)."""
    other = [r for r in committed.values() if r.scored_by is not None and r.scored_by != SCORING]
    if not other:
        return None
    versions = sorted({r.scored_by for r in other if r.scored_by is not None})
    return (f"{len(other)} committed shard(s) (e.g. {other[0].input.name or other[0].input.uri}) were read and scored "
            f"by another version of this project (as of {', '.join(versions)}; this one: {SCORING}), which read some "
            "files' rows or scored some rows otherwise: they are kept as they are; --overwrite scores every shard as "
            "this version does (see Upgrading in the README)")


def _forget_repeats(output: OutputDir, committed: dict[str, CommitRecord], deleting: set[str], dry: bool
                    ) -> dict[str, CommitRecord]:
    """Under ``errors.duplicate_ids: error``, where --prune or --redo-changed deletes shards' output (``deleting``,
    their keys): the other committed shards that quarantined a row as a ``duplicate id`` are scored again too (their
    output deleted, not when ``dry``), since the row it repeated may leave the output with them, and that id would
    then be in no part file. Scored again, each row is screened against the output as it is then."""
    repeats = quarantined_repeats(committed, deleting)
    if not repeats:
        return committed
    return _forget(output, repeats, committed, dry,
                   "scoring %s again: it quarantined duplicate ids, and output deleted by this run may have held the "
                   "rows they repeated")


def _forget(
    output: OutputDir, records: list[CommitRecord], committed: dict[str, CommitRecord], dry: bool, why: str
) -> dict[str, CommitRecord]:
    """Committed shards' output deleted (not when ``dry``), each logged as ``why`` says (of its input); the committed
    shards left. ``--prune``'s and ``--redo-changed``'s."""
    if not dry:
        output.unfinish()  # no _SUCCESS beside an output that is being changed
        for record in records:
            log.warning(f"{why} (%d rows deleted from the output)", record.input.name or record.input.uri, record.rows)
            output.forget(record)
        if records:
            output.drop_empty_errors()
    gone = {r.shard for r in records}
    return {key: r for key, r in committed.items() if key not in gone}


def _run_locked(
    spec: JobSpec,
    job: JobRecord,
    output: OutputDir,
    shards: list[Shard],
    pending: list[Shard],
    before_visible: Callable[[Shard], None] | None,
    checked: Fidelity | None = None,
    timeline: dict[str, float] | None = None,
    column_types: str | None = None,
    choosing: Choosing | None = None,
) -> RunSummary:
    timeline = timeline if timeline is not None else {}
    recorded = output.job()
    if recorded and recorded.spec_hash == job.spec_hash and recorded.column_types and output.commits():
        job.column_types = recorded.column_types  # the types the committed files have (none: fixed afresh)
    else:
        kept = decode_types(column_types) if column_types else None
        job.column_types = encode_types(dict(columns_of(spec, shards, kept).keep_types))
    earlier = output.summary()  # before start deletes it: the labels the model gives, where no actor runs now
    told = earlier.agreement.labels if earlier is not None and earlier.agreement is not None else None
    with writing(spec.output.path):
        output.start(job)
    try:  # start deleted the page of the run before: a failure names this run's page, or the output to build one of
        log.info("%d of %d shards to do", len(pending), len(shards))
        start, started_at = time.monotonic(), time.time()
        labels: list[str] = []  # the labels the model can give, as the actors tell them
        done, failed = (execute(spec, job, output, pending, before_visible, timeline, labels, choosing) if pending
                        else ({}, []))
        wall = time.monotonic() - start
        output.check_lock()  # a run that lost its lock writes no summary: the output is the new holder's
        unread = {u.key for u in failed}
        missing = [s.uri for s in pending if s.key not in done and s.key not in unread]
        if missing:
            raise PipelineError(
                f"{len(missing)} shard(s) did not complete, e.g. {missing[0]}; run the job again to resume"
            )
        faults.checkpoint("before_summary")
        result = summaries.build(job, list(output.commits().values()), list(done.values()), wall, "succeeded")
        result.started_at, result.fidelity = started_at, choosing.checked if choosing is not None else checked
        result.check_s = choosing.check_s if choosing is not None else None
        if result.agreement is not None and (labels or told):  # no shard scored now: as the run before recorded
            result.agreement.labels = labels or told
        timeline["summary"] = time.time()
        result.timeline = {name: round(moment, 3) for name, moment in timeline.items()}
        result.unreadable_files = [*result.unreadable_files, *(u.record for u in failed)]
        result.files_with_unknown_rows = sum(1 for u in result.unreadable_files if u.rows is None)
        problem = unreadable_violation([u.record for u in failed]) or error_policy_violation(spec, result)
        if problem:
            result.status, result.failure = "failed", problem
            with writing(spec.output.path):
                output.write_json(RUN, result.to_json())
            failure = PipelineError(problem)
            failure.report = pages.report_path(spec.output.path) if pages.write_quietly(spec.output.path) else None
            raise failure
        with writing(spec.output.path):  # a full disk here: every shard is committed, the next run only writes these
            output.write_json(RUN, result.to_json())
            if pages.write_quietly(spec.output.path):
                result.report = pages.report_path(spec.output.path)
            output.finish()
        return result
    except Exception as exc:  # a failure Ray reports for an actor of this run (a full disk where it stages) too
        said = exc if isinstance(exc, PipelineError) else from_ray(exc)
        if said is None:
            raise
        if said.report is None and _any_commit(output):
            said.unreported = spec.output.path
        elif said.report is None:
            said.uncommitted = spec.output.path
        if said is exc:
            raise
        raise said from None


def _any_commit(output: OutputDir) -> bool:
    """Whether a page can be built of ``output``: a shard of it committed (True where that can't be read now)."""
    try:
        return bool(output.commits())
    except Exception:  # noqa: BLE001 - the store failing as the run fails: name the command, as before
        return True


def check_paths(spec: JobSpec) -> None:
    """An output path that is, or holds, an input location is refused: the job would score or delete its input.
    Local paths are compared as written, with their symbolic links resolved (a link to the input is the input), and
    by the folders' identity (a bind mount of the input is the input)."""
    out_fs, out_path = resolve(spec.output.path)
    out_real = real_path(out_fs, out_path)
    in_output = UnderFolder(out_fs, out_path)  # the output folder through any path to it (a bind mount)
    for location in spec.input.paths:
        fs, path = resolve(location)
        base = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0].rstrip("/") or "/"
        pairs = ((base, out_path), (path, out_path), (real_path(fs, base), out_real))
        if type(fs) is type(out_fs) and (any(is_within(inner, outer) for inner, outer in pairs) or in_output(base)):
            raise PipelineError(
                f"output.path {spec.output.path} is, or holds, the input {location}; the job would read its own "
                "output and --overwrite could delete input files: choose an output.path outside the input"
            )


def _handle_stale(
    output: OutputDir, stale: list[CommitRecord], committed: dict[str, CommitRecord], prune: bool, dry: bool
) -> dict[str, CommitRecord]:
    """Committed shards whose input is gone: refused, or (``prune``) their output deleted (not when ``dry``)."""
    rows, quarantined = sum(r.rows for r in stale), sum(r.errors for r in stale)
    if not prune:
        first = stale[0].input
        held = f"{rows:,} rows written" + (f" and {quarantined:,} quarantined" if quarantined else "")
        raise PipelineError(
            f"output.path {output.location} holds {len(stale)} committed shard(s) that are not in the input "
            f"(e.g. {first.name or first.uri}; {held}): their input was deleted or renamed, or "
            "input.paths points elsewhere; restore the input, or run again with --prune to delete their output"
        )
    return _forget(output, stale, committed, dry, "pruning %s: its input is gone")


@dataclass
class Choosing:
    """A run whose pool's actors decide ``quantization: auto`` (:class:`~pipelines.fidelity.PoolChoice`): the board
    they post to (:func:`~pipelines.fidelity.open_board`), and once settled the check's figures (None: float32, or
    no actor decided: nothing was scored)."""

    choice: fidelity.PoolChoice
    board: Any = None
    checked: Fidelity | None = None
    check_s: float | None = None
    settled: bool = False

    def settle(self, spec: JobSpec, job: JobRecord, output: OutputDir) -> None:
        """Before the run's first commit: the decision the board holds kept in the machine's decisions and in
        ``_job.json`` (one output, one precision: a resume keeps it). Every shard but an empty one is committed
        after an actor's report, and an actor reports only once it has the board's decision."""
        if self.settled:
            return
        found = fidelity.board_said(self.board, "decided")
        if found is None:  # no actor started: the shards committed are empty ones, which no precision scored
            return
        chosen, self.checked = self.choice.keep(spec, found)
        self.check_s = found.get("check_s")
        job.precision = fidelity.precision_record(chosen, self.checked, None)
        output.check_lock()
        output.write_json(JOB, job.to_json())
        self.settled = True


@dataclass
class UnreadableShard:
    """A shard that could not be read and was not committed: its bytes could not be fetched (never committed), or
    they don't parse and errors.unreadable_files is fail."""

    key: str
    record: Unreadable


def execute(
    spec: JobSpec,
    job: JobRecord,
    output: OutputDir,
    pending: list[Shard],
    before_visible: Callable[[Shard], None] | None = None,
    timeline: dict[str, float] | None = None,
    labels: list[str] | None = None,
    choosing: Choosing | None = None,
) -> tuple[dict[str, CommitRecord], list[UnreadableShard]]:
    """Stream the dataset; commit each shard the moment its last row is staged.

    Returns the commits, and the shards that could not be read and were left uncommitted. ``timeline``
    gets when execution started, when the first actor was ready, when it staged its first batch, the first
    block back here and the last commit. ``labels`` gets the labels the model can give, as the first actor's
    report that names them tells them (every actor holds the same model), where the job predicts a label.
    ``choosing``: ``quantization: auto`` decided by the pool's actors, its decision recorded before the first commit.
    """
    timeline = timeline if timeline is not None else {}
    by_key = {s.key: s for s in pending}
    tally = Tally(uris={s.key: s.uri for s in pending})
    done: dict[str, CommitRecord] = {}
    failed: list[UnreadableShard] = []
    columns = replace(columns_of(spec), keep_types=tuple(decode_types(job.column_types or "").items()))
    if choosing is not None:
        choosing.board = fidelity.open_board()
    dataset = build_dataset(spec, pending, columns, job.model_files, choosing)
    screen = None
    if spec.errors.duplicate_ids == "error" or spec.input.format == "openai-batch":  # keep: repeats named at the end
        screen = DuplicateIds(output.fs, output.root, spec.input.id_column or "id", list(output.commits().values()),
                              quarantine=spec.errors.duplicate_ids == "error")
    settings = partial(
        output.commit, job=job, compression=spec.output.compression, row_group_rows=spec.output.row_group_rows,
        screen=screen, before_visible=before_visible, files=output_files(spec),
        confusion_of=partial(confusion, config=staging_config(spec, pending)),
    )

    def commit(shard: Shard, reports: list[StagingReport], **kwargs: Any) -> CommitRecord:
        with writing(spec.output.path):
            if choosing is not None:
                choosing.settle(spec, job, output)
            return settings(shard, reports, **kwargs)

    timeline["execution_start"] = time.time()
    try:
        _stream(dataset, spec, output, by_key, tally, done, failed, commit, timeline, labels)
    except Exception as exc:
        ray_said = died_on_a_batch(exc)
        if ray_said is None:
            raise
        raise PipelineError(_died_message(ray_said, pending, done, tally)) from None
    for empty in pending:
        # A shard with no rows yields no block, so no report: commit it empty once it is known to be empty.
        if empty.key not in done and empty.key not in tally.seen and is_empty(empty, spec):
            done[empty.key] = commit(empty, [])
            log.info("committed %s (empty)", empty.uri)
    if screen is not None and screen.repeated:
        log.warning(repeated_custom_ids(screen.repeated))
    return done, failed


def _stream(
    dataset: Any,
    spec: JobSpec,
    output: OutputDir,
    by_key: dict[str, Shard],
    tally: Tally,
    done: dict[str, CommitRecord],
    failed: list[UnreadableShard],
    commit: Callable[..., CommitRecord],
    timeline: dict[str, float],
    labels: list[str] | None,
) -> None:
    """:func:`execute`'s loop: each report of the pool's actors tallied, each shard committed once complete."""
    for batch in reports_of(dataset):
        timeline.setdefault("first_block", time.time())
        for report in StagingReport.from_table(batch):
            ready = report.actor.ready_at
            if ready and ready < timeline.get("actor_ready", float("inf")):  # the first actor ready: its three moments
                timeline.update(actor_start=report.actor.started_at, actor_imported=report.actor.imported_at,
                                actor_ready=ready)
            if labels is not None and report.labels and not labels:
                labels.extend(report.labels)
            if report.staged_at:  # the first batch predicted and staged, in the actor
                timeline["first_staged"] = min(timeline.get("first_staged", report.staged_at), report.staged_at)
            if not tally.add(report):
                continue
            shard = by_key[report.shard]
            faults.checkpoint("before_commit")
            reports = tally.reports.pop(report.shard)
            if report.unreadable:
                output.check_lock()  # before its staged record is read (a new holder deletes it); commit() checks too
                found = _unreadable(output, shard, reports, spec.input.text_column)
                if spec.errors.unreadable_files == "fail" or not fetched(found):
                    failed.append(UnreadableShard(shard.key, found))
                    continue
                done[shard.key] = commit(shard, reports, unreadable=found)
            else:
                done[shard.key] = commit(shard, reports)
            log.info("committed %s (%d/%d shards)", shard.uri, len(done), len(by_key))
            timeline["last_commit"] = time.time()
            faults.checkpoint("after_commit")


def _died_message(ray_said: str, pending: list[Shard], done: dict[str, CommitRecord], tally: Tally) -> str:
    """What a run says where a batch killed each actor that took it (:data:`BATCH_RETRIES` retries): Ray's word,
    the usual causes and what to do, and the shards the batch may be of (those begun first: rows staged)."""
    left = sorted((s for s in pending if s.key not in done), key=lambda s: (-tally.seen.get(s.key, 0), s.uri))
    named = ", ".join(
        f"{s.uri} ({tally.seen[s.key]:,} row(s) staged)" if tally.seen.get(s.key) else s.uri for s in left[:3]
    )
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    return (
        f"the pool's actor died while it scored a batch, and again each of the {BATCH_RETRIES} times the batch was "
        f"tried again (Ray: {ray_said}); most often the operating system killed it for memory (a batch too big for "
        "the node: the kernel's log, `dmesg`, says so) or native code crashed on one of its rows. The "
        f"{len(done)} shard(s) committed in this run are kept; the batch is of one of the {len(left)} not committed: "
        f"{named}{more}. Lower batching.batch_size or batching.max_tokens, or give each actor more memory, or set "
        "the row that does it aside, then run the same command again to resume"
    )


def reports_of(dataset: Any) -> Iterator[pa.Table]:
    """The actors' report tables, as each comes out of the pool, fetched on this thread.

    Not ``iter_batches``: its prefetching and formatting threads (two of them waking every 10 ms while
    they wait) took about 3% of a core in the driver, on the cores the actor's threads need; the reports
    are a few rows each and need neither.
    """
    import ray

    for bundle in dataset.iter_internal_ref_bundles():
        for ref in bundle.block_refs:
            yield ray.get(ref)


def _process_start() -> float:
    """When this process started (epoch seconds): the first moment of a run's timeline.

    On Linux, the process's start in clock ticks since boot (``/proc/self/stat``) against the time since boot now:
    to a tick. psutil's ``create_time`` adds the same ticks to the boot time /proc/stat gives in whole seconds, so it
    came out up to a second early (0.91 s on one machine), and every "s after the command" with it."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            return started_at(stat.read(), time.clock_gettime(time.CLOCK_BOOTTIME), time.time(),
                              os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: psutil's own way
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - a timeline without it is still a timeline
        return time.time()


def started_at(stat: bytes, since_boot: float, now: float, ticks_per_s: int) -> float:
    """The epoch time a process started, from its ``/proc/PID/stat`` line (its field 22, starttime: clock ticks since
    boot; the name in field 2 may hold spaces and ")"), read when ``since_boot`` seconds had passed since boot
    (CLOCK_BOOTTIME, the clock starttime counts) and the epoch time was ``now``."""
    ticks = int(stat.rpartition(b")")[2].split()[19])  # what follows the name's last ")" begins at field 3
    return now - (since_boot - ticks / ticks_per_s)


def _unreadable(output: OutputDir, shard: Shard, reports: list[StagingReport], text: str) -> Unreadable:
    """What is known of a shard that could not be read: the reader's reason, and its rows where they can be told
    (``text``: the job's text column)."""
    reason = "unreadable file"
    for path in (p for r in reports for p in r.error_files):
        with output.fs.open_input_file(path) as handle:
            reasons = pq.read_table(handle, columns=["reason"]).column(0).to_pylist()
        reason = str(reasons[0]) if reasons else reason
    found = Unreadable(uri=shard.uri, reason=reason, rows=None, exact=False)
    if fetched(found):  # a file that could not be fetched is not fetched again to count its rows
        found.rows, found.exact = count_rows(shard, text)
    log.error("cannot read %s: %s (%s)", shard.uri, reason, found.rows_told())
    return found


def fetched(found: Unreadable) -> bool:
    """Whether the file's bytes were read (and don't parse), as opposed to not fetched at all (see NOT_FETCHED)."""
    return not found.reason.startswith(NOT_FETCHED)


def unreadable_violation(failed: list[Unreadable]) -> str | None:
    """Why the job fails with files it could not read and did not commit; None when there are none. Files whose
    bytes could not be fetched come first: whatever errors.unreadable_files says, the next run reads them again."""
    said = []
    not_fetched = [found for found in failed if not fetched(found)]
    if not_fetched:
        first = not_fetched[0]
        more = f" and {len(not_fetched) - 1} more" if len(not_fetched) > 1 else ""
        said.append(
            f"{len(not_fetched)} input file(s) could not be fetched: {first.uri} ({first.reason}){more}; nothing "
            "of them is committed. Check that the file(s) exist and can be read (the store reached, the access "
            "granted), then run again: the next run reads them (committed shards are kept)"
        )
    unparsed = [found for found in failed if fetched(found)]
    if unparsed:
        first = unparsed[0]
        more = f" and {len(unparsed) - 1} more" if len(unparsed) > 1 else ""
        said.append(
            f"{len(unparsed)} input file(s) could not be read: {first.uri} ({first.reason}; {first.rows_told()})"
            f"{more}; their rows are in no output. Replace or remove the file(s) and run again (committed shards are "
            "kept), or set errors.unreadable_files: quarantine to finish without them"
        )
    return ". ".join(said) or None


def is_empty(shard: Shard, spec: JobSpec) -> bool:
    """Whether a shard holds no rows at all (read here, on the driver: only shards that reported nothing)."""
    return sum(block.num_rows for block in read_shard(shard, columns_of(spec))) == 0


def error_policy_violation(spec: JobSpec, result: RunSummary) -> str | None:
    """Why the job fails under errors.max_rate / max_count, with the reasons; None when within limits."""
    policy = spec.errors
    errors, rate = result.errors, result.error_rate
    # the exact share, not _run.json's error_rate, which is rounded to 6 places (1 row in 2,000,001 is 0.0 there); a
    # quotient, not max_rate * rows_in, which can round below the count it equals (0.29 * 100 is 28.999999999999996)
    over_rate = result.rows_in > 0 and errors / result.rows_in > policy.max_rate
    over_count = policy.max_count is not None and errors > policy.max_count
    if not over_rate and not over_count:
        return None
    if result.rows_in:
        rate = errors / result.rows_in
    reasons = summaries.reasons_line(result.error_reasons)
    passed = [f"errors.max_rate={policy.max_rate}"] if over_rate else []
    passed += [f"errors.max_count={policy.max_count}"] if over_count else []  # the limits passed, not those unset
    return (
        f"{errors} of {result.rows_in} rows were quarantined ({rate:.1%}), over {' and '.join(passed)} ({reasons}); "
        f"see {spec.output.path}/_errors/ and raise the limits if these rows are expected"
    )
