"""What a run would do now with the job's output: start it, resume it, find it up to date, or be refused.

Reads the output's commit records (a scheduled job's ledger and partitions) as a run reads them before it
starts, and writes nothing. Light: no Ray, no torch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pipelines.errors import PipelineError
from pipelines.io.shards import Shard
from pipelines.planning.records import InputPlan, OutputPlan
from pipelines.spec import JobSpec


def output_plan(spec: JobSpec, shards: list[Shard], inputs: InputPlan) -> OutputPlan:
    """The output as a run without ``--overwrite`` finds it; ``inputs`` counts ``shards``' rows, in their order."""
    rows = {s.key: c.rows for s, c in zip(shards, inputs.shards, strict=True)}
    try:
        plan = _tick(spec, shards, rows) if spec.schedule is not None else _run(spec, shards, rows)
        busy = _busy(spec)
    except (PipelineError, OSError) as exc:
        # what was read may be another run's work in progress: its busy refusal comes first, as a run says it
        try:
            busy = _busy(spec)
        except (PipelineError, OSError):
            busy = None
        note = f"{busy}. Meanwhile, reading the output met: {exc}" if busy is not None else str(exc)
        return OutputPlan(path=spec.output.path, state="refused", shards_done=0, rows_done=0,
                          shards_todo=len(shards), rows_todo=inputs.rows, note=note)
    if busy is None:
        return plan
    return plan.model_copy(update={  # what is committed now, which that run changes meanwhile (or clears)
        "state": "refused", "note": f"{busy} (as it is now: {plan.note})",
    })


def _busy(spec: JobSpec) -> PipelineError | None:
    """The refusal a run started now would meet because another run (a scheduler) holds the output's lock."""
    from pipelines.output.layout import LOCK, RUN_LOCK
    from pipelines.output.lock import output_lock

    if spec.schedule is not None:
        return output_lock(spec.output.path, LOCK, f"job {spec.name or spec.output.path}").held_elsewhere()
    return output_lock(spec.output.path, RUN_LOCK, f"the output {spec.output.path}").held_elsewhere()


def _run(spec: JobSpec, shards: list[Shard], rows: dict[str, int]) -> OutputPlan:
    from pipelines.runner import resume_state, scored_otherwise

    pending, committed, finished = resume_state(spec, shards)
    todo = sum(rows[s.key] for s in pending)
    done = sum(r.rows_in for r in committed.values())
    state: Literal["new", "resume", "up to date"]
    if not committed:
        state, note = "new", f"nothing committed yet: a run scores all {len(pending):,} shard(s), {todo:,} rows"
    elif pending:
        state, note = "resume", (
            f"{len(committed):,} of {len(shards):,} shard(s) committed ({done:,} rows): a run resumes with the "
            f"other {len(pending):,} shard(s), {todo:,} rows"
        )
    elif finished:
        state, note = "up to date", (
            f"every shard is committed ({done:,} rows): a run writes nothing and says up to date "
            "(--overwrite scores the whole input again)"
        )
    else:
        state, note = "resume", (
            f"every shard is committed ({done:,} rows) but the job did not finish: a run scores nothing and "
            "writes its summary again"
        )
    said = scored_otherwise(committed)
    return OutputPlan(path=spec.output.path, state=state, shards_done=len(committed), rows_done=done,
                      shards_todo=len(pending), rows_todo=todo, note=f"{note}; {said}" if said else note)


def _tick(spec: JobSpec, shards: list[Shard], rows: dict[str, int]) -> OutputPlan:
    """A scheduled job: what an invocation whose tick is due now would score (its resumes and its new run).

    The model is taken to be the one the last run used (a tick hashes a model folder's files to tell; a run
    started with another model is redone whole)."""
    from pipelines.schedule.executor import ScheduledJob, _no_runner
    from pipelines.schedule.planner import RunPlan
    from pipelines.schedule.ticks import Decision

    job = ScheduledJob(spec, None, _no_runner)
    job.check_layout()
    history = job.known_history()
    decision = Decision("run", datetime.now(UTC).replace(microsecond=0))
    job.check_clock(history, decision.tick)  # a clock behind the newest tick: every tick now is refused
    todo: dict[str, Shard] = {}
    unfinished = history.unfinished()
    held = job.unfinished_commits()
    for entry in unfinished:
        assert entry.run is not None
        partition = job.partition_state(entry.run)
        planner = job.planner(history.last_attempt(entry.run).model or {})
        resume = planner.resume(entry.run, decision, partition, held)
        job.check_same_names(resume)
        for shard in resume.shards:
            kept = partition.committed.get(shard.key)
            if resume.overwrite or kept is None or not planner.unchanged(kept, shard):
                todo[shard.key] = shard
    work = job.planner({}).new_work(decision, False, held)
    if isinstance(work, RunPlan):
        job.check_same_names(work)
        todo.update({s.key: s for s in work.shards})
    scored = history.scored()
    done = [s for s in shards if s.key in scored and s.key not in todo]
    count = sum(rows[key] for key in todo)
    resumed = f", {len(unfinished):,} unfinished run(s) finished first" if unfinished else ""
    note = (
        f"scheduled: {len(done):,} of {len(shards):,} input file(s) scored by earlier runs; a tick now scores "
        f"{len(todo):,} file(s), {count:,} rows{resumed}"
    )
    return OutputPlan(path=spec.output.path, state="scheduled", shards_done=len(done),
                      rows_done=sum(rows[s.key] for s in done), shards_todo=len(todo), rows_todo=count, note=note)


def recorded_precision(spec: JobSpec) -> dict[str, str] | None:
    """The precision ``quantization: auto`` keeps for the job's next run: the one its output's first run chose (a
    scheduled job's: its newest run's with the last run's model); None where none is recorded."""
    if spec.model.quantization != "auto":
        return None
    from pipelines.output.commit import OutputDir
    from pipelines.schedule.executor import ScheduledJob, _no_runner

    try:
        if spec.schedule is not None:
            job = ScheduledJob(spec, None, _no_runner)
            last = job.history().last_model()
            return job.kept_precision(last[0]) if last else None
        recorded = OutputDir(spec.output.path).job()
    except (PipelineError, OSError):
        return None
    return recorded.precision if recorded and recorded.spec_hash == spec.fingerprint() else None


def kept_precision_refusal(spec: JobSpec, recorded: dict[str, str] | None, output: OutputPlan | None) -> str | None:
    """Why a run now would be refused the precision ``quantization: auto`` keeps (``recorded``: see
    :func:`recorded_precision`): its recorded agreement below the spec's ``model.fidelity.min_agreement``, as the
    run holds it (:func:`~pipelines.fidelity.hold_bar`) where it has shards to score; None where it would keep it."""
    if not recorded or output is None or output.state == "refused" or not output.shards_todo:
        return None
    from pipelines.fidelity import Precision, hold_bar

    try:
        hold_bar(spec, Precision(recorded["quantization"], recorded["dtype"]), recorded)
    except PipelineError as exc:
        return str(exc)
    return None
