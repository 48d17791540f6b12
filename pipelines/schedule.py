"""Scheduled, incremental runs of a job: each tick scores only the input shards that are new or changed.

Layout under ``output.path``::

    run=2026-11-28T02:00:00Z/   one partition per run: a normal run_job output directory
    _runs.jsonl                 the run ledger (see pipelines/ledger.py)
    _schedule.lock              the job's lock: one run at a time (see pipelines/lock.py)
    _superseded/run=.../        outputs replaced by a rescore, or by a newer version of a changed shard

One invocation (``pipelines schedule JOB --once``, or one wake-up of the loop)
takes the lock, then:

1. decides the tick: the latest cron tick not yet handled; a tick found more than
   ``grace_seconds`` late is a missed tick, run once now or skipped (``missed_ticks``);
2. resumes unfinished runs (killed or failed) in their own partitions: run_job keeps
   their committed shards, so no row is scored twice;
3. scores the shards that are new or changed since they were last scored (by
   fingerprint: uri, size, mtime) into a new partition ``run=<tick>``;
4. moves outputs that newer ones replace into ``_superseded/``, so the partitions
   together hold every current input row exactly once.

Each step writes ledger lines; a tick with nothing to score writes only that.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pyarrow.fs as pafs

from pipelines.commit import COMMITS, JOB, OutputDir
from pipelines.errors import PipelineError
from pipelines.io.shards import GLOB_CHARS, Shard, list_shards, resolve
from pipelines.ledger import History, Ledger
from pipelines.lineage import model_lineage, same_model
from pipelines.lock import JobLock, LockHeld
from pipelines.spec import JobSpec, ScheduleSpec

log = logging.getLogger(__name__)

PARTITION = "run="
LOCK = "_schedule.lock"
SUPERSEDED = "_superseded"
MAX_COUNTED_TICKS = 100_000

Runner = Callable[..., dict]


# ticks ----------------------------------------------------------------------------------------


def run_id(moment: datetime) -> str:
    """A tick as a partition id: ``2026-11-28T02:00:00Z`` (UTC; sorts in time order as text)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_run_id(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _cron(schedule: ScheduleSpec, start: datetime):
    from croniter import croniter

    return croniter(schedule.cron, start.astimezone(ZoneInfo(schedule.timezone)))


def latest_tick(schedule: ScheduleSpec, now: datetime) -> datetime:
    """The last tick at or before ``now`` (UTC)."""
    start = now.replace(microsecond=0) + timedelta(seconds=1)  # croniter's get_prev excludes its start
    return _cron(schedule, start).get_prev(datetime).astimezone(UTC)


def next_tick(schedule: ScheduleSpec, now: datetime) -> datetime:
    """The first tick after ``now`` (UTC)."""
    return _cron(schedule, now).get_next(datetime).astimezone(UTC)


def ticks_between(schedule: ScheduleSpec, after: datetime, before: datetime) -> int:
    """How many ticks fall strictly between two moments (counted up to a cap)."""
    cron, n = _cron(schedule, after), 0
    while n < MAX_COUNTED_TICKS and cron.get_next(datetime).astimezone(UTC) < before:
        n += 1
    return n


@dataclass(frozen=True)
class Decision:
    """What an invocation does about the schedule: run a tick, see it was handled, or skip it."""

    action: Literal["run", "handled", "skip"]
    tick: datetime
    missed: int = 0
    late_s: float = 0.0

    def note(self) -> str:
        if self.action == "handled":
            return "tick already handled; new input waits for the next tick"
        if not self.missed:
            return ""
        late = _duration(self.late_s)
        if self.action == "skip":
            return f"{self.missed} missed tick(s) skipped; found {late} after the tick"
        return f"{self.missed} missed tick(s), one run for them all, {late} after the tick"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def decide(schedule: ScheduleSpec | None, last_tick: str | None, now: datetime) -> Decision:
    """The tick due at ``now`` given the last tick handled; no schedule: every call is a tick."""
    if schedule is None:
        tick = now.replace(microsecond=0).astimezone(UTC)
        handled = last_tick is not None and run_id(tick) <= last_tick
        return Decision("handled" if handled else "run", tick)
    tick = latest_tick(schedule, now)
    if last_tick is not None and run_id(tick) <= last_tick:
        return Decision("handled", tick)
    late = (now - tick).total_seconds()
    skipped_between = ticks_between(schedule, parse_run_id(last_tick), tick) if last_tick else 0
    is_late = late > schedule.grace_seconds
    missed = skipped_between + (1 if is_late else 0)
    if is_late and schedule.missed_ticks == "skip":
        return Decision("skip", tick, missed, late)
    return Decision("run", tick, missed, late)


# the job's output location --------------------------------------------------------------------


def partition_path(spec: JobSpec, run: str) -> str:
    return f"{spec.output.path.rstrip('/')}/{PARTITION}{run}"


def partition_spec(spec: JobSpec, run: str) -> JobSpec:
    """A copy of the spec whose output is the run's partition."""
    copy = spec.model_copy(deep=True)
    copy.output.path = partition_path(spec, run)
    return copy


def job_lock(spec: JobSpec) -> JobLock:
    """The lock file: in the output directory when it is local, else in a local lock folder."""
    fs, root = resolve(spec.output.path)
    what = f"job {spec.name or spec.output.path}"
    if isinstance(fs, pafs.LocalFileSystem):
        return JobLock(Path(root) / LOCK, what)
    folder = Path(os.environ.get("PIPELINES_LOCK_DIR", Path.home() / ".cache" / "pipelines" / "locks"))
    log.warning("output.path %s is not local: runs are kept apart only among schedulers on this machine "
                "(lock in %s); run one scheduler per job", spec.output.path, folder)
    return JobLock(folder / f"{hashlib.sha1(spec.output.path.encode()).hexdigest()[:16]}.lock", what)


def current_shards(spec: JobSpec) -> list[Shard]:
    """The input shards now; an existing but empty landing folder is no input yet, not an error."""
    try:
        return list_shards(spec.input.paths, spec.input.format)
    except PipelineError:
        for location in spec.input.paths:
            fs, path = resolve(location)
            if not GLOB_CHARS & set(path) and fs.get_file_info(path).type != pafs.FileType.Directory:
                raise
        return []


def describe_shard(shard: Shard) -> dict:
    return {**shard.fingerprint(), "key": shard.key}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# one invocation -------------------------------------------------------------------------------


def run_due(
    spec: JobSpec,
    *,
    now: datetime | None = None,
    address: str | None = None,
    rescore: bool = False,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Do a scheduled job's due work once, under its lock; return ``{tick, action, entries}``.

    Raises LockHeld when another run of the job is in progress, PipelineError when a run fails
    (its committed shards are kept and the next invocation resumes it).
    """
    if runner is None:
        from pipelines.runner import run_job as runner
    job = ScheduledJob(spec, address, runner)
    job.check_layout()
    with job_lock(spec):
        return job.invoke(now or datetime.now(UTC), rescore)


class ScheduledJob:
    """A job spec with a schedule, its ledger and its partitions."""

    def __init__(self, spec: JobSpec, address: str | None, runner: Runner) -> None:
        self.spec = spec
        self.address = address
        self.runner = runner
        self.fs, self.root = resolve(spec.output.path)
        self.ledger = Ledger(spec.output.path)

    def history(self) -> History:
        return History(self.ledger.read())

    def check_layout(self) -> None:
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return
        if info.type != pafs.FileType.Directory:
            raise PipelineError(f"output.path {self.spec.output.path} is a file; give a directory")
        for entry in self.fs.get_file_info(pafs.FileSelector(self.root)):
            name = entry.base_name
            if name == JOB or (name.startswith("part-") and name.endswith(".parquet")):
                raise PipelineError(
                    f"output.path {self.spec.output.path} holds the output of `pipelines run`; a scheduled job "
                    "writes one run=... partition per run: give it its own output.path"
                )
            if not name.startswith((PARTITION, "_", ".")):
                raise PipelineError(
                    f"output.path {self.spec.output.path} holds files that are not this job's (e.g. {name}); "
                    "choose an empty or new output.path"
                )

    def partitions(self) -> list[str]:
        """The run ids of the partitions at the top of the output path."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        names = [e.base_name for e in self.fs.get_file_info(selector) if e.type == pafs.FileType.Directory]
        return sorted(name[len(PARTITION):] for name in names if name.startswith(PARTITION))

    def invoke(self, now: datetime, rescore: bool) -> dict[str, Any]:
        history = self.history()
        if not history.entries and self.partitions():
            raise PipelineError(
                f"{self.spec.output.path} holds run=... partitions but no ledger (_runs.jsonl), which says what "
                "they hold; restore it, or move the partitions away to start afresh"
            )
        self.reconcile(history)
        decision = decide(self.spec.schedule, history.last_tick(), now)
        if rescore and decision.action != "run":
            decision = Decision("run", now.replace(microsecond=0).astimezone(UTC))
        report: dict[str, Any] = {"tick": run_id(decision.tick), "action": decision.action, "entries": []}
        if decision.action == "skip":
            report["entries"].append(self.record_tick(decision, "skipped"))
            return report
        lineage = model_lineage(self.spec.model)
        if not rescore:
            for unfinished in history.unfinished():
                report["entries"].append(self.resume(unfinished["run"], decision, lineage))
        if decision.action == "handled":
            report["entries"].append(self.record_tick(decision, "empty", model=lineage))
        else:
            report["entries"].append(self.score_new(decision, lineage, rescore))
        self.reconcile(self.history())
        return report

    def record_tick(self, decision: Decision, status: str, **fields: Any) -> dict:
        entry = {
            "tick": run_id(decision.tick),
            "run": None,
            "kind": "tick",
            "status": status,
            "missed": decision.missed,
            "note": decision.note(),
            "started_at": _now_iso(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **fields,
        }
        return self.ledger.append(entry)

    # scoring -------------------------------------------------------------------------------

    def score_new(self, decision: Decision, lineage: dict, rescore: bool) -> dict:
        """Score the shards that are new or changed since last scored (every shard, to rescore)."""
        history = self.history()
        shards = current_shards(self.spec)
        scored = history.scored()
        if rescore:
            todo, replaces = shards, {}
        else:
            todo = [s for s in shards if s.uri not in scored or scored[s.uri][0] != s.fingerprint()]
            replaces = {s.key: scored[s.uri][1] for s in todo if s.uri in scored}
        if not todo:
            note = decision.note() or f"no new input ({len(shards)} shard(s) scored already)"
            return self.record_tick(decision, "empty", model=lineage, spec_hash=self.spec.fingerprint(),
                                    inputs=[], note=note)
        run = run_id(decision.tick)
        if run in history.latest():
            raise PipelineError(f"run {run} exists already; try again in a second")
        entry = {
            "tick": run,
            "kind": "rescore" if rescore else "tick",
            "rescore": rescore,
            "replaces": replaces,
            "missed": decision.missed,
            "note": decision.note(),
            "attempt": 1,
            "model": lineage,
            **self.changes_since_last_run(history, lineage, rescore),
        }
        if replaces:
            log.info("%d shard(s) changed since they were scored; their earlier output moves to %s/ once "
                     "rescored", len(replaces), SUPERSEDED)
        return self.attempt(run, todo, entry, overwrite=False)

    def changes_since_last_run(self, history: History, lineage: dict, rescore: bool) -> dict:
        """``model_changed`` / ``spec_changed`` versus the newest run; a warning unless rescoring."""
        last = history.last_model()
        if last is None:
            return {}
        previous_model, previous_run = last
        previous_spec = history.latest()[previous_run].get("spec_hash")
        changes = {}
        if not same_model(previous_model, lineage):
            changes["model_changed"] = {"from": previous_model, "to": lineage, "since": previous_run}
        if previous_spec and previous_spec != self.spec.fingerprint():
            changes["spec_changed"] = {"from": previous_spec, "to": self.spec.fingerprint(), "since": previous_run}
        if changes and not rescore:
            older = [r for r, e in history.latest().items() if r >= history.base() and e["status"] == "succeeded"]
            log.warning(
                "the %s changed since run %s: new input is scored with the new one, but %d earlier partition(s) "
                "(%s ... %s) hold rows scored with the old one; to rescore every shard with the new one, run "
                "`pipelines schedule JOB --once --rescore`",
                " and ".join(k.split("_")[0] for k in changes), previous_run, len(older),
                older[0] if older else "-", older[-1] if older else "-",
            )
        return changes

    def resume(self, run: str, decision: Decision, lineage: dict) -> dict:
        """Finish an unfinished run in its own partition: committed shards are kept, the rest scored."""
        history = self.history()
        plan = history.first_attempt(run)
        partition = OutputDir(partition_path(self.spec, run))
        recorded = partition.read_json(JOB)
        overwrite = (recorded is not None and recorded.get("spec_hash") != self.spec.fingerprint()) or not (
            same_model(plan.get("model"), lineage)
        )
        if overwrite:
            log.warning("run %s was started with another model or spec: redoing it whole with the current one", run)
        current = {s.uri: s for s in current_shards(self.spec)}
        committed = partition.commits()
        shards = []
        for item in plan.get("inputs", []):
            shard = current.get(item["uri"])
            if shard is None:
                log.warning("run %s: %s is gone since the run started; left out", run, item["uri"])
                continue
            done = committed.get(shard.key)
            if done and done.get("input") != shard.fingerprint() and not overwrite:
                continue  # changed after it was committed here: scored again as a changed shard
            shards.append(shard)
        log.info("resuming run %s: %d shard(s), %d committed already", run, len(shards), len(committed))
        entry = {
            "tick": run_id(decision.tick),
            "kind": "resume",
            "rescore": plan.get("rescore", False),
            "replaces": plan.get("replaces", {}),
            "attempt": history.attempts(run) + 1,
            "model": lineage,
            "note": "redone with the current model/spec" if overwrite else "",
        }
        return self.attempt(run, shards, entry, overwrite=overwrite)

    def attempt(self, run: str, shards: list[Shard], entry: dict, overwrite: bool) -> dict:
        """Score shards into the run's partition, with a ``running`` line before and a closing line after."""
        planned = self.ledger.append({
            **entry,
            "run": run,
            "status": "running",
            "inputs": [describe_shard(s) for s in shards],
            "spec_hash": self.spec.fingerprint(),
            "started_at": _now_iso(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        })
        start = time.monotonic()
        try:
            summary = self.runner(partition_spec(self.spec, run), address=self.address, overwrite=overwrite,
                                  shards=shards)
        except Exception as exc:
            self.ledger.append({**planned, "status": "failed", "error": str(exc), "finished_at": _now_iso(),
                                "wall_s": round(time.monotonic() - start, 3)})
            if isinstance(exc, PipelineError):
                raise PipelineError(
                    f"run {run} failed: {exc}\n(committed shards are kept; the next tick, or "
                    "`pipelines schedule JOB --once`, resumes the run)"
                ) from None
            raise
        return self.ledger.append({
            **planned,
            "status": "succeeded",
            "inputs": self.committed_inputs(run),
            "shards_this_run": summary.get("shards_this_run"),
            "rows_in": summary.get("rows_in"),
            "rows_out": summary.get("rows_out"),
            "errors": summary.get("errors"),
            "rows_this_run": summary.get("rows_this_run"),
            "finished_at": _now_iso(),
            "wall_s": round(time.monotonic() - start, 3),
        })

    def committed_inputs(self, run: str) -> list[dict]:
        records = OutputDir(partition_path(self.spec, run)).commits().values()
        items = [{**r["input"], "key": r["shard"], "rows": r.get("rows_in")} for r in records]
        return sorted(items, key=lambda item: item["uri"])

    # superseded outputs --------------------------------------------------------------------

    def reconcile(self, history: History) -> None:
        """Move outputs that newer ones replace to ``_superseded/`` (idempotent; resumes a cut-off move)."""
        base = history.base()
        for run in self.partitions():
            if run < base:
                log.info("moving run=%s to %s/: superseded by rescore run %s", run, SUPERSEDED, base)
                self.retire_tree(f"{PARTITION}{run}")
        for run, entry in history.latest().items():
            if run < base:
                continue
            for key, old in (entry.get("replaces") or {}).items():
                if base <= old < run and self.exists(f"{PARTITION}{run}/{COMMITS}/{key}.json"):
                    self.retire_shard(old, key)

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{relative}").type == pafs.FileType.File

    def _move(self, relative: str) -> None:
        source, target = f"{self.root}/{relative}", f"{self.root}/{SUPERSEDED}/{relative}"
        if self.fs.get_file_info(source).type != pafs.FileType.File:
            return
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        self.fs.move(source, target)

    def retire_shard(self, run: str, key: str) -> None:
        """A shard's files in an older run, then its commit record (last, so a cut-off move is redone)."""
        folder = f"{PARTITION}{run}"
        record = OutputDir(f"{self.root}/{folder}").read_json(f"{COMMITS}/{key}.json")
        if record is None:
            return
        for relative in [*record.get("files", []), *record.get("error_files", [])]:
            self._move(f"{folder}/{relative}")
        self._move(f"{folder}/{COMMITS}/{key}.json")
        log.info("moved the earlier output of shard %s in run %s to %s/", record.get("input", {}).get("uri"), run,
                 SUPERSEDED)

    def retire_tree(self, folder: str) -> None:
        selector = pafs.FileSelector(f"{self.root}/{folder}", recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.is_file:
                self._move(info.path[len(self.root) + 1 :])
        self.fs.delete_dir(f"{self.root}/{folder}")


# the loop -------------------------------------------------------------------------------------


def serve(
    spec: JobSpec,
    *,
    address: str | None = None,
    rescore: bool = False,
    clock: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    runner: Runner | None = None,
    wakeups: int | None = None,
) -> None:
    """Run the job at every tick of its schedule until interrupted (``wakeups``: stop after that many)."""
    if spec.schedule is None:
        raise PipelineError("the job spec has no schedule section; add one (schedule: {cron: '0 2 * * *'}) "
                            "or run `pipelines schedule JOB --once` from your own scheduler")
    clock = clock or (lambda: datetime.now(UTC))
    done = 0
    while True:
        ray_was_up = _ray_is_up()
        try:
            report = run_due(spec, now=clock(), address=address, rescore=rescore, runner=runner)
            rescore = False
            for entry in report["entries"]:
                log.info("%s", describe(entry))
        except LockHeld as exc:
            log.warning("%s", exc)
        except PipelineError as exc:
            log.error("%s", exc)
        except Exception:  # noqa: BLE001 - a long-running scheduler outlives one bad run
            log.exception("the run failed; the next tick resumes it")
        finally:
            if not ray_was_up and _ray_is_up():
                sys.modules["ray"].shutdown()  # a local Ray started for this tick: free its memory till the next
        done += 1
        if wakeups is not None and done >= wakeups:
            return
        wake = next_tick(spec.schedule, clock())
        log.info("next tick at %s", run_id(wake))
        sleep_until(wake, clock, sleep)


def sleep_until(moment: datetime, clock: Callable[[], datetime], sleep: Callable[[float], None]) -> None:
    """Sleep until ``moment``, in steps of at most an hour (so a clock change or a suspend is noticed)."""
    while (left := (moment - clock()).total_seconds()) > 0:
        sleep(min(left, 3600.0))


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


# reporting ------------------------------------------------------------------------------------


def describe(entry: dict) -> str:
    """One line about a ledger entry, for the terminal and the log."""
    status, tick, run = entry["status"], entry.get("tick"), entry.get("run")
    note = f" ({entry['note']})" if entry.get("note") else ""
    if status == "skipped":
        return f"tick {tick}: skipped (schedule.missed_ticks: skip){note}"
    if status == "empty":
        return f"tick {tick}: nothing to score; nothing written{note}"
    what = {"resume": "resumed", "rescore": "rescored every shard", "tick": "scored new input"}[entry["kind"]]
    errors = entry.get("errors") or 0
    return (
        f"run={run}: {status}, {what}: {entry.get('shards_this_run') or 0} shard(s) this run, "
        f"{entry.get('rows_out') or 0:,} rows in the partition ({errors:,} quarantined), "
        f"{entry.get('wall_s') or 0:.1f} s{note}"
    )
