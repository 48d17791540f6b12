"""Running a job on Ray Data: shards → actor pool of predictors → staged Parquet → committed shards.

The driver plans (which shards are still to do), builds one streaming dataset
over them, and consumes only the small per-block reports the staging writers
return; a shard is committed as soon as all of its rows are accounted for.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pipelines import faults, fidelity
from pipelines.errors import PipelineError
from pipelines.io.reader import Columns, read_shard, reference_types
from pipelines.io.shards import Shard, list_shards
from pipelines.output import report as pages
from pipelines.output import summary as summaries
from pipelines.output.commit import OutputDir
from pipelines.output.duplicates import DuplicateIds
from pipelines.output.layout import RUN
from pipelines.output.records import CommitRecord, JobRecord, ModelRef, RunSummary
from pipelines.output.staging import StagingConfig, StagingReport
from pipelines.spec import JobSpec

log = logging.getLogger(__name__)

IO_CPUS = 0.25  # read and write tasks are light; leave the cores to the actors


def job_record(spec: JobSpec) -> JobRecord:
    """What identifies these results: the spec's hash, the model, the task."""
    device = spec.model.device
    if device == "auto":
        device = "cuda" if spec.compute.gpus_per_actor > 0 else "cpu"
    return JobRecord(
        name=spec.name,
        spec_hash=spec.fingerprint(),
        model=ModelRef(name=spec.model.name, revision=spec.model.revision),
        quantization=spec.model.quantization,
        device=device,
        task=spec.task.type,
        spec=spec.model_dump(mode="json"),
    )


def columns_of(spec: JobSpec, shards: Sequence[Shard] = ()) -> Columns:
    """The columns to read; passed-through columns get the types they have in the first shard."""
    keep = [*spec.input.columns_to_keep, *([spec.input.label_column] if spec.input.label_column else [])]
    columns = Columns(
        text=spec.input.text_column,
        id=spec.input.id_column,
        inputs=tuple(spec.task.input_columns()),
        keep=tuple(dict.fromkeys(keep)),
    )
    types = reference_types(list(shards), columns) if columns.keep else {}
    return replace(columns, keep_types=tuple(types.items()))


def staging_config(spec: JobSpec, shards: list[Shard]) -> StagingConfig:
    predicted = spec.output.prediction_prefix + "label"
    return StagingConfig(
        output=spec.output.path,
        id_column=spec.input.id_column or "id",
        text_column=spec.input.text_column,
        output_columns=tuple(spec.output_columns()),
        shard_uris={s.key: s.uri for s in shards},
        compression=spec.output.compression,
        max_rows_per_file=spec.output.max_rows_per_file,
        truth_column=spec.input.label_column,
        predicted_column=predicted if predicted in spec.prediction_columns() else None,
    )


def preflight(spec: JobSpec) -> None:
    """Problems that can be seen before any work starts: the model must at least have a config."""
    from pipelines.inference.aliases import resolve_name
    from pipelines.inference.loading import load_config

    load_config(spec.model)
    log.info("model %s resolved to %s", spec.model.name, resolve_name(spec.model))


def build_dataset(spec: JobSpec, shards: list[Shard], reference: list[Shard] | None = None):
    """The lazy Ray dataset: read → predict on the actor pool → stage; yields writer reports.

    ``reference``: the job's shards in order, whose first one fixes the types of passed-through columns.
    """
    import ray

    from pipelines.inference.predictor import Predictor
    from pipelines.io.datasource import ShardDatasource
    from pipelines.output.staging import write_staged

    compute = spec.compute
    low, high = compute.pool_bounds()
    gpu_args: dict[str, Any] = {"num_gpus": compute.gpus_per_actor} if compute.gpus_per_actor > 0 else {}
    if compute.accelerator_type:
        gpu_args["accelerator_type"] = compute.accelerator_type
    if compute.resources:
        gpu_args["resources"] = dict(compute.resources)
    dataset = ray.data.read_datasource(ShardDatasource(shards, columns_of(spec, reference or shards)), num_cpus=IO_CPUS)
    dataset = dataset.map_batches(
        Predictor,
        fn_constructor_kwargs={"spec": spec.model_dump(mode="json")},
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=spec.batching.batch_size,
        batch_format="pyarrow",
        num_cpus=compute.cpus_per_actor,
        **gpu_args,
    )
    return dataset.map_batches(
        write_staged,
        fn_kwargs={"config": staging_config(spec, shards)},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=IO_CPUS,
    )


@dataclass
class Tally:
    """Rows accounted for per shard; a shard is complete when they add up to its row count.

    Each report names the row ranges it holds, so a block that comes back twice
    (a task re-executed by Ray) is recognised and left out instead of duplicated.
    """

    reports: dict[str, list[StagingReport]] = field(default_factory=lambda: defaultdict(list))
    seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    covered: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, report: StagingReport) -> bool:
        shard = report.shard
        ranges = report.row_ranges
        if any(s < e2 and s2 < e for s, e in ranges for s2, e2 in self.covered[shard]):
            log.warning("shard %s: a block came back twice; keeping the first copy", shard)
            return False
        self.covered[shard] += ranges
        self.reports[shard].append(report)
        self.seen[shard] += report.rows + report.errors
        return self.seen[shard] == report.shard_rows


def run_job(
    spec: JobSpec, *, address: str | None = None, overwrite: bool = False, shards: list[Shard] | None = None
) -> RunSummary:
    """Run (or resume) a job; return its summary. Raises PipelineError on any failure.

    ``shards`` restricts the run to those input shards (default: every shard under input.paths).
    """
    job = job_record(spec)
    if shards is None:
        shards = list_shards(spec.input.paths, spec.input.format)
    preflight(spec)
    output = OutputDir(spec.output.path)
    pending = output.prepare(job, shards, overwrite)
    if not pending and output.finished():
        log.info("nothing to do: all %d shards of %s are committed", len(shards), spec.output.path)
        previous = output.summary()
        if previous is None:
            previous = summaries.build(job, list(output.commits().values()), [], 0.0, "succeeded")
        return previous.model_copy(update={"status": "up to date", "shards_this_run": 0})
    checked = None
    if pending:
        from pipelines.cluster.connect import connect

        connect(address, spec)  # resource problems surface here, before anything is written
        checked = fidelity.gate(spec, shards)  # below model.fidelity's bar: PipelineError, nothing written
    output.start(job, overwrite)
    log.info("%d of %d shards to do", len(pending), len(shards))
    start, started_at = time.monotonic(), time.time()
    done = execute(spec, job, output, pending, shards) if pending else {}
    wall = time.monotonic() - start
    missing = [s.uri for s in pending if s.key not in done]
    if missing:
        raise PipelineError(f"{len(missing)} shard(s) did not complete, e.g. {missing[0]}; run the job again to resume")
    faults.checkpoint("before_summary")
    result = summaries.build(job, list(output.commits().values()), list(done.values()), wall, "succeeded")
    result.started_at, result.fidelity = started_at, checked
    problem = error_policy_violation(spec, result)
    if problem:
        result.status = "failed"
        output.write_json(RUN, result.to_json())
        pages.write_quietly(spec.output.path)
        raise PipelineError(problem)
    output.write_json(RUN, result.to_json())
    pages.write_quietly(spec.output.path)
    output.finish()
    return result


def execute(
    spec: JobSpec, job: JobRecord, output: OutputDir, pending: list[Shard], shards: list[Shard]
) -> dict[str, CommitRecord]:
    """Stream the dataset; commit each shard the moment its last row is staged."""
    by_key = {s.key: s for s in pending}
    tally = Tally()
    done: dict[str, CommitRecord] = {}
    dataset = build_dataset(spec, pending, reference=shards)
    duplicates = None
    if spec.errors.duplicate_ids == "error":
        duplicates = DuplicateIds(output.fs, output.root, spec.input.id_column or "id", list(output.commits().values()))
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for report in StagingReport.from_table(batch):
            if tally.add(report):
                shard = report.shard
                faults.checkpoint("before_commit")
                reports = tally.reports.pop(shard)
                if duplicates:
                    for staged in reports:
                        duplicates.screen(staged, by_key[shard].uri, spec.output.compression)
                done[shard] = output.commit(by_key[shard], reports, job)
                log.info("committed %s (%d/%d shards)", by_key[shard].uri, len(done), len(pending))
                faults.checkpoint("after_commit")
    for empty in pending:
        # A shard with no rows yields no block, so no report: commit it empty once it is known to be empty.
        if empty.key not in done and empty.key not in tally.seen and is_empty(empty, spec):
            done[empty.key] = output.commit(empty, [], job)
            log.info("committed %s (empty)", empty.uri)
    return done


def is_empty(shard: Shard, spec: JobSpec) -> bool:
    """Whether a shard holds no rows at all (read here, on the driver: only shards that reported nothing)."""
    return sum(block.num_rows for block in read_shard(shard, columns_of(spec))) == 0


def error_policy_violation(spec: JobSpec, result: RunSummary) -> str | None:
    """Why the job fails under errors.max_rate / max_count, with the reasons; None when within limits."""
    policy = spec.errors
    errors, rate = result.errors, result.error_rate
    over_count = policy.max_count is not None and errors > policy.max_count
    if rate <= policy.max_rate and not over_count:
        return None
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(result.error_reasons.items(), key=lambda kv: -kv[1]))
    return (
        f"{errors} of {result.rows_in} rows were quarantined ({rate:.1%}), over the limit of "
        f"errors.max_rate={policy.max_rate} / errors.max_count={policy.max_count} ({reasons}); "
        f"see {spec.output.path}/_errors/ and raise the limits if these rows are expected"
    )
