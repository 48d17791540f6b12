"""Scheduled, incremental runs of a job: each invocation scores only the input shards that are new or changed.

The layout under ``output.path`` is :mod:`pipelines.output.layout`'s: one
``run=<run id>/`` partition per run (a normal job output directory), the ledger
``_runs.jsonl``, the lock ``_schedule.lock`` and ``_superseded/``.

One invocation (``pipelines schedule JOB --once``, or one wake-up of the loop)
takes the job's lock, then:

1. decides the tick (:mod:`.ticks`): the latest cron tick not yet handled; a tick
   found more than ``grace_seconds`` late is a missed tick, run once now or skipped;
2. resumes unfinished runs (killed or failed) in their own partitions: run_job keeps
   their committed shards, so no row is scored twice;
3. scores the shards that are new or changed since they were last scored (by
   fingerprint: size and mtime; a file of the same size whose mtime changed is
   changed only if its bytes no longer hash to the digest its commit recorded)
   into a new partition ``run=<tick>``;
4. moves outputs that newer ones replace into ``_superseded/``, so the partitions
   together hold every current input row exactly once.

What to do is the :class:`~.planner.Planner`'s decision, from facts gathered here;
this module runs the plans: the runner, the ledger lines, the file moves.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.errors import PipelineError
from pipelines.io import stores
from pipelines.io.reader import content_digest, decode_types, encode_types, read_bytes
from pipelines.io.shards import Shard, list_shards, resolve
from pipelines.output import layout
from pipelines.output.commit import OutputDir
from pipelines.output.duplicates import quarantined_repeats
from pipelines.output.layout import (
    COMMITS,
    INPUT_DIGESTS,
    JOB,
    LEDGER,
    LOCK,
    PARTITION,
    RUN_LOCK,
    STAGING,
    SUPERSEDED,
)
from pipelines.output.lock import JobLock, output_lock
from pipelines.output.object_lock import ObjectLock
from pipelines.output.records import HASH_VERSION, RunSummary, ShardInput
from pipelines.output.summary import some_of
from pipelines.schedule.ledger import History, Ledger, LedgerEntry, LedgerInput
from pipelines.schedule.lineage import model_lineage, same_model
from pipelines.schedule.planner import HeldCommit, PartitionState, Planner, Retirement, RunPlan
from pipelines.schedule.ticks import Decision, decide, parse_run_id, run_id
from pipelines.spec import JobSpec

log = logging.getLogger(__name__)

#: Where the write probe of an object store goes (a ``_`` folder that readers and the layout check skip).
SCRATCH = STAGING

Runner = Callable[..., RunSummary]


@dataclass
class Invocation:
    """What one invocation did: the tick it handled, its decision, the ledger lines it wrote, and why runs
    failed (the CLI exits 2 when any did; new input was scored all the same)."""

    tick: str
    action: str
    entries: list[LedgerEntry] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

#: After this many failed attempts in a row, every invocation says how to give up on the run.
FAILURES_BEFORE_ADVICE = 3
#: How far the newest tick may be ahead of the clock before an invocation is refused (see ScheduledJob.check_clock):
#: a step back of the clock by NTP, seconds, is no reason to.
CLOCK_SLACK = timedelta(minutes=5)


# the job's output location --------------------------------------------------------------------


def partition_path(spec: JobSpec, run: str) -> str:
    return f"{spec.output.path.rstrip('/')}/{layout.partition_dir(run)}"


def superseded_path(spec: JobSpec, run: str) -> str:
    """Where a run's partition's retired output goes (``_superseded/run=…``), as a location ``OutputDir`` takes: the
    output path's own spelling (an ``s3://`` URI stays one; the filesystem's path of it is a local folder's)."""
    return f"{spec.output.path.rstrip('/')}/{SUPERSEDED}/{layout.partition_dir(run)}"


def partition_spec(spec: JobSpec, run: str) -> JobSpec:
    """A copy of the spec whose output is the run's partition."""
    copy = spec.model_copy(deep=True)
    copy.output.path = partition_path(spec, run)
    return copy


def job_lock(spec: JobSpec) -> JobLock | ObjectLock:
    """The scheduler's lock ``<output.path>/_schedule.lock``: a file locally, an object lease on S3
    (see :func:`pipelines.output.lock.output_lock`)."""
    return output_lock(spec.output.path, LOCK, f"job {spec.name or spec.output.path}")


def current_shards(spec: JobSpec) -> list[Shard]:
    """The input shards now. An existing but empty landing folder, or a glob that matches nothing, is no input
    yet; a location that does not exist or can't be listed (a missing bucket, refused credentials) is an error,
    not a quiet tick."""
    shards = list_shards(spec.input.paths, spec.input.format, exclude=[spec.output.path], empty_is_no_input=True)
    layout.check_no_other_outputs(shards)  # another job's output in the landing folder: its rows are no input
    return shards


def still_there(recorded: LedgerInput | ShardInput, at: str | None = None) -> bool:
    """Whether an input file is where it was scored from (``at``, else its URI), with the size (and time, where
    recorded) it had then."""
    try:
        fs, path = resolve(at or recorded.uri)
        info = fs.get_file_info(path)
    except (OSError, ValueError):  # can't be looked at (a store down, a scheme not here): not known to be there
        return False
    if info.type != pafs.FileType.File or info.size != recorded.size:
        return False
    return recorded.mtime_ns is None or info.mtime_ns == recorded.mtime_ns


def linked_elsewhere(shard: Shard, recorded: LedgerInput | ShardInput) -> str | None:
    """Where the file scored (or planned) under the path ``shard`` has now was, where a symbolic link in that path
    led elsewhere then: to another folder (``landing/latest``, moved to each night's folder), the file under the
    folder recorded when it was listed (:func:`~pipelines.io.shards.real_folder`; a record without one was listed
    where no link led elsewhere); the path a link to one plain file (``latest.jsonl``, moved to each night's file)
    led to, recorded when it was listed (:func:`~pipelines.io.shards.link_target`: none for a file that was no link,
    or a link into a content store, whose new versions are links to new objects). Else None (the same file, or not
    a local file)."""
    if "://" in shard.uri:
        return None
    path = os.path.abspath(os.path.expanduser(shard.uri))
    before = getattr(recorded, "folder", None) or os.path.dirname(path)
    if os.path.realpath(before) != os.path.realpath(os.path.dirname(path)):
        return os.path.join(before, os.path.basename(path))
    target = getattr(recorded, "target", None)
    if isinstance(target, str) and os.path.realpath(path) != os.path.realpath(target):
        return target
    return None


def linked_to(recorded: LedgerInput | ShardInput) -> str | None:
    """The file a symbolic link in a recorded input's path led to when it was listed: the file under the folder the
    link led to (``folder``), or the target of a link to the file itself (``target``); None where no link led
    elsewhere (neither recorded) or for a file on an object store."""
    if "://" in recorded.uri:
        return None
    folder = getattr(recorded, "folder", None)
    if isinstance(folder, str) and folder:
        return os.path.join(folder, os.path.basename(recorded.uri))
    target = getattr(recorded, "target", None)
    return target if isinstance(target, str) and target else None


def describe_shard(shard: Shard) -> LedgerInput:
    return LedgerInput(**shard.fingerprint(), key=shard.key)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# one invocation -------------------------------------------------------------------------------


def run_due(
    spec: JobSpec,
    *,
    now: datetime | None = None,
    address: str | None = None,
    rescore: bool = False,
    prune: bool = False,
    runner: Runner | None = None,
) -> Invocation:
    """Do a scheduled job's due work once, under its lock.

    Raises LockHeld when another run of the job is in progress. A run that fails is recorded in the
    ledger and in ``Invocation.failures`` (its committed shards are kept and the next invocation
    resumes it), and does not stop new input from being scored.
    """
    problem = spec.partition_problem()  # a spec without a schedule section was not checked for it
    if problem:
        raise PipelineError(f"{spec.output.path}: {problem}")
    checks: Callable[[JobSpec], None] | None = None  # a stand-in runner (the tests') makes its own
    if runner is None:
        from pipelines.runner import ready_to_run, run_job

        runner = run_job

        def checks(job_spec: JobSpec) -> None:
            ready_to_run(job_spec, address)
    job = ScheduledJob(spec, address, runner, checks)
    job.check_layout()
    lock = job_lock(spec)
    busy_or_left = lock.present()  # a lock object there: contended for first, so a busy job writes nothing
    if not busy_or_left:
        stores.check_writable(job.fs, job.root, spec.output.path, SCRATCH)  # an object store: before any work
        if not job.history().entries and current_shards(spec):  # a new output: what refuses before any work (a
            job.check_before_work()  # missing input, model or Ray) refuses before the lock makes its folder
    with layout.writing(spec.output.path), lock:  # a lock this process can't take on a local disk: one line
        job.check_root()  # again, now that the lock is held: a `pipelines run` started at the same moment
        if busy_or_left:
            stores.check_writable(job.fs, job.root, spec.output.path, SCRATCH)
        job.guard(lock.check)  # a scheduler whose lease was taken over writes no more ledger lines, moves no output
        try:
            with layout.writing(spec.output.path):  # a full disk under the ledger or a partition: one line
                return job.invoke(now or datetime.now(UTC), rescore, prune)
        finally:
            job.write_report()


def abandon(spec: JobSpec, run: str) -> LedgerEntry:
    """Give up on an unfinished run: it is no longer resumed; the shards it committed stay (and count as
    scored), the shards it did not commit are scored again by the next tick (a rescore's keep their earlier
    output, brought back from ``_superseded/`` where the rescore had retired it)."""
    job = ScheduledJob(spec, None, _no_runner)
    with layout.writing(spec.output.path), job_lock(spec) as lock:
        job.guard(lock.check)
        history = job.history()
        open_runs = {e.run: e for e in history.unfinished()}
        if run not in open_runs:
            known = ", ".join(sorted(r for r in open_runs if r)) or "none"
            raise PipelineError(f"run {run} is not unfinished, so there is nothing to abandon (unfinished: {known})")
        # First, as every invocation starts: the moves a kill cut short are finished, and the partitions of runs that
        # did not succeed recovered (a cut commit finished, a record whose files a clear deleted before it dropped),
        # so that what this run counts as committed is what its partition holds.
        job.reconcile()
        committed = job.committed_inputs(run)
        # An earlier output this run retired but no longer holds the new one of (a resume redone whole, then
        # given up on) comes back, so that each shard keeps one output.
        done = {item.key for item in committed} | history.taken_over(run)  # a later run's version stays
        for key, earlier in (history.first_attempt(run).replaces or {}).items():
            if key not in done:
                job.restore_shard(earlier, key)
        rescore = open_runs[run].rescore
        entry = open_runs[run].model_copy(update={
            "status": "abandoned",
            "inputs": committed,
            "note": "abandoned: the shards it did not commit keep their earlier output" if rescore
            else "abandoned: its uncommitted shards are scored again by the next tick",
            "finished_at": _now_iso(),
            "error": None,
            "shards_this_run": None,  # not an attempt: the failed line before it says what its last one committed
            "rows_this_run": None,
        })
        line = job.ledger.append(entry)
        job.reconcile()  # an earlier version brought back may be one a later run has replaced since
        return line


def _no_runner(*args, **kwargs) -> RunSummary:
    raise AssertionError("abandoning a run scores nothing")


class ScheduledJob:
    """Carries out a scheduled job's plans: its ledger, its partitions, its runs."""

    def __init__(self, spec: JobSpec, address: str | None, runner: Runner,
                 preflight: Callable[[JobSpec], None] | None = None) -> None:
        self.spec = spec
        self.address = address
        self.runner = runner
        #: The run's checks before any work (the model's files, Ray started or joined): once, before an invocation's
        #: first attempt.
        self.preflight = preflight
        self.fs, self.root = resolve(spec.output.path)
        self.ledger = Ledger(spec.output.path)
        self.check_lock: Callable[[], None] = lambda: None
        #: (uri, size, mtime_ns) → the digest of the file's bytes (None: unreadable), each read once per invocation
        self.digests: dict[tuple[str, int, int | None], str | None] = {}
        #: uri → (size, mtime_ns, digest) of the files an earlier invocation hashed (``_input_digests.json``)
        self.remembered: dict[str, tuple[int, int | None, str]] | None = None
        self.same_bytes: set[str] = set()  # the files found so: said once, at the end of an invocation

    def check_before_work(self) -> None:
        """The checks every run makes before any work (:attr:`preflight`), once per invocation."""
        if self.preflight is not None:
            self.preflight(self.spec)
            self.preflight = None

    def guard(self, check: Callable[[], None]) -> None:
        """``check`` raises when this scheduler's lock was lost (a lease taken over): called before each ledger line
        and before anything in the output is moved, finished or deleted."""
        self.ledger.guard = self.check_lock = check

    def write_report(self) -> None:
        """The page over the runs (``_report.html`` at the root); each run's own page is in its partition."""
        from pipelines.output import report

        try:
            report.write_ledger_report(self.spec.output.path, [e.to_json() for e in self.ledger.read()])
        except Exception as exc:  # noqa: BLE001 - the runs are recorded; the page is a view of them
            log.warning("report of the runs not written (%s); rebuild it with `pipelines report %s`",
                        exc, self.spec.output.path)
            report.remove_stale(self.spec.output.path)

    def history(self) -> History:
        return History(self.ledger.read())

    def check_clock(self, history: History, now: datetime) -> None:
        """Refuse where the newest tick is after ``now`` (by more than :data:`CLOCK_SLACK`): the clock was ahead when
        it ran, or is behind now. Every tick until the clock passes it is taken for handled, so each invocation said
        `nothing to score` and exited 0 while new input waited unsaid; it can't run either, as a run is named after its
        tick and must come after the newest (its place among the runs says which version of a shard is current)."""
        last = history.last_tick()
        if last is None or parse_run_id(last) - now <= CLOCK_SLACK:
            return
        raise PipelineError(
            f"{self.spec.output.path}: this job's newest tick, {last}, is after the clock here ({run_id(now)}): the "
            "clock was ahead when that tick was handled, or is behind now. A run is named after its tick and must come "
            f"after the newest, so no tick can run, and new input waits, until the clock passes {last}; set this "
            "host's clock right (NTP) if it is behind, else wait for that time (nothing was written)"
        )

    def known_history(self) -> History:
        """The ledger's history, refused where a partition on disk has no line in it: the ledger is what says which
        input a partition holds, so a run it does not name (its lines dropped from the ledger, or damaged) would be
        taken for never run, and its input scored again into a new partition, each of those rows twice."""
        history = self.history()
        planned = {entry.run for entry in history.entries if entry.status == "running"}  # a run's plan: its inputs
        unknown = [run for run in self.partitions() if run not in planned]
        if not unknown:
            return history
        path = self.spec.output.path
        if not history.entries and not self.ledger.skipped:
            raise PipelineError(
                f"{path} holds run=... partitions but no ledger (_runs.jsonl), which says what "
                "they hold; restore it, or move the partitions away to start afresh"
            )
        named = ", ".join(layout.partition_dir(run) for run in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        skipped = self.ledger.skipped
        damaged = (f"; line(s) {', '.join(map(str, skipped[:5]))}{' …' if len(skipped) > 5 else ''} of it are not "
                   "ledger entries (damaged by an edit?)" if skipped else "")
        raise PipelineError(
            f"{path} holds partitions whose plan (their first line) its ledger {LEDGER} does not hold: "
            f"{named}{more}{damaged}. The ledger says which input a partition holds: a tick now would take theirs "
            "for never scored and score it again, each of its rows twice in the output. Put their lines back in "
            f"{LEDGER} (from a backup; the ledger is not a log to trim or rotate), or move those partitions out of "
            "the output path to have their input scored again"
        )

    def planner(self, lineage: dict) -> Planner:
        """A planner over the facts as they are now (ledger and input shards are read afresh)."""
        return Planner(self.history(), current_shards(self.spec), lineage, self.spec.fingerprint(),
                       self.spec.output.prediction_prefix, self.same_content, set(self.partitions()), self.repeats_in)

    def repeats_in(self, run: str, leaving: set[str]) -> set[str]:
        """Under ``errors.duplicate_ids: error``, the keys of the shards a run's partition holds, but for those
        ``leaving`` it, that quarantined a ``duplicate id`` (see :func:`quarantined_repeats`): a partition's ids are
        screened on their own, so where a shard's output leaves it, the row such a shard repeated may leave too."""
        if self.spec.errors.duplicate_ids != "error":
            return set()
        return {r.shard for r in quarantined_repeats(OutputDir(partition_path(self.spec, run)).commits(), leaving)}

    def same_content(self, shard: Shard, digest: str | None) -> bool:
        """Whether a shard whose modification time changed (its size did not) holds the bytes a commit recorded
        the digest of: a file fetched again (``gsutil cp``, ``rsync`` without ``-t``) is not scored again. Read
        whole (an object on a store too), once for its size and time: an invocation asks again from memory, the next
        from ``_input_digests.json`` (:meth:`remember_digests`)."""
        if not digest:
            return False
        key = (shard.uri, shard.size, shard.mtime_ns)
        if key not in self.digests:
            size, mtime_ns, known = self.remembered_digests().get(shard.uri, (None, None, None))
            if (size, mtime_ns) == (shard.size, shard.mtime_ns):
                self.digests[key] = known  # hashed by an earlier invocation, and its size and time are the same
            else:
                try:
                    self.digests[key] = content_digest(read_bytes(shard))
                except OSError:
                    self.digests[key] = None
        if self.digests[key] == digest:
            self.same_bytes.add(shard.uri)
        return self.digests[key] == digest

    def check_layout(self) -> None:
        """Refuse an output path that is not this scheduled job's: a file, another's files, or `pipelines run`'s
        output (its files, or its lock held: a run holds it before it writes anything, and looks for this job's lock
        once it holds its own, so that of the two started at the same moment one refuses; see runner.not_scheduled).
        """
        OutputDir(self.spec.output.path).check_not_inside_another()
        self.check_root()

    def check_root(self) -> None:
        """The output path's own part of :meth:`check_layout` (what a run started meanwhile may have changed)."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return
        if info.type != pafs.FileType.Directory:
            raise layout.not_a_folder(self.spec.output.path, self.fs, self.root)
        running = output_lock(self.spec.output.path, RUN_LOCK, "`pipelines run`", quiet=True).held_elsewhere()
        if running is not None:
            raise PipelineError(
                f"output.path {self.spec.output.path} is `pipelines run`'s output ({running}); a scheduled job writes "
                "one run=... partition per run: give it its own output.path"
            )
        for entry in self.fs.get_file_info(pafs.FileSelector(self.root)):
            name = entry.base_name
            if name == JOB or layout.is_part_file(name):
                raise PipelineError(
                    f"output.path {self.spec.output.path} holds the output of `pipelines run` ({name}); a scheduled "
                    "job writes one run=... partition per run: give it its own output.path"
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

    def remembered_digests(self) -> dict[str, tuple[int, int | None, str]]:
        """The digests earlier invocations found (``_input_digests.json``): a file fetched again every night is
        read to hash it once, not at every tick for as long as its time differs from the one it was scored with."""
        if self.remembered is None:
            found = layout.read_json(self.fs, f"{self.root}/{INPUT_DIGESTS}")
            self.remembered = {}
            for uri, value in (found if isinstance(found, dict) else {}).items():
                if isinstance(value, list) and len(value) == 3:
                    self.remembered[uri] = (value[0], value[1], value[2])
        return self.remembered

    def remember_digests(self) -> None:
        """Keep the digests this invocation read or used for the next (under the job's lock): the files whose time
        differs from the one scored. None: the file is removed."""
        found = {uri: [size, mtime_ns, digest] for (uri, size, mtime_ns), digest in self.digests.items() if digest}
        path = f"{self.root}/{INPUT_DIGESTS}"
        if found == {uri: list(value) for uri, value in self.remembered_digests().items()}:
            return
        self.check_lock()
        if found:
            layout.write_json(self.fs, path, found)
        else:
            layout.delete(self.fs, self.fs.get_file_info(path))

    def invoke(self, now: datetime, rescore: bool, prune: bool = False) -> Invocation:
        history = self.known_history()
        self.reconcile()
        decision = decide(self.spec.schedule, history.last_tick(), now)
        if rescore and decision.action != "run":  # named after the clock: after every run, or runs lose their order
            decision = Decision("run", now.replace(microsecond=0).astimezone(UTC))
            newest = max(history.latest(), default=None)
            if newest is not None and run_id(decision.tick) <= newest:
                raise PipelineError(
                    f"--rescore: the clock here says {run_id(decision.tick)}, not after this job's newest run, "
                    f"{newest}: a run is named after its time, and its place among the runs says which version of a "
                    "shard is current; set this host's clock right (NTP), or rescore after that time"
                )
        if not rescore:  # a rescore's own refusal says so of a clock behind (above)
            self.check_clock(history, now)
        report = Invocation(run_id(decision.tick), decision.action)
        if decision.action == "skip":
            report.entries.append(self.record_tick(decision, "skipped"))
            return report
        lineage = model_lineage(self.spec.model)
        if prune:
            self.check_prune_leaves_some(lineage)
        if rescore:  # what it can't score again: one listing of the input for both checks
            planner = self.planner(lineage)
            self.check_held_gone({s.key for s in planner.shards})
        if rescore and not prune and (lost := planner.prunes()):
            names = sorted(planner.history.scored()[m.key][0].name or str(m.key) for m in lost if m.key)
            raise PipelineError(
                f"--rescore: {len(lost)} shard(s) scored earlier are gone from the input ({', '.join(names[:3])}"
                f"{', …' if len(names) > 3 else ''}): a rescore can't score them again, and their rows would leave "
                "with the partitions it supersedes. Add --prune to let their output go (the ledger records it), or "
                "restore the files first"
            )
        failed: dict[str, tuple[str, set[str]]] = {}  # a failed resume: its failure, its shards that quarantined rows
        if not rescore:
            for unfinished in history.unfinished():
                assert unfinished.run is not None
                plan = self.planner(lineage).resume(unfinished.run, decision, self.partition_state(unfinished.run),
                                                    self.unfinished_commits())
                self.check_same_names(plan)
                failure = self.attempt_reporting(plan, report)
                if failure is not None:
                    failed[unfinished.run] = (failure, self.quarantining(unfinished.run))
        pruned = self.prune(decision, lineage) if prune else None
        if pruned is not None:
            report.entries.append(pruned)
        if decision.action == "handled":
            report.entries.append(self.record_tick(decision, "empty", model=lineage))
            if pruned is not None and pruned.repeats:
                self.score_repeats_now(now, lineage, report)
        else:
            work = self.planner(lineage).new_work(decision, rescore, self.unfinished_commits())
            line = work.entry if isinstance(work, RunPlan) else work
            if line.gone:  # each tick says so, whether or not it scores anything
                log.warning(
                    "%d shard(s) scored earlier are gone from the input (e.g. %s); their rows stay in their "
                    "partitions: `pipelines schedule JOB --once --prune` moves them to _superseded/", line.gone_total(),
                    line.gone[0],
                )
            if isinstance(work, RunPlan):
                if work.run in self.history().latest():
                    raise PipelineError(f"run {work.run} exists already; try again in a second")
                self.check_same_names(work)
                self.attempt_reporting(work, report)
                self.retry_emptied(failed, decision, lineage, report)
            else:
                report.entries.append(self.stamp(work))
        if self.same_bytes:
            log.info("%d input file(s) have a new modification time but the bytes they were scored from (e.g. %s): "
                     "not scored again", len(self.same_bytes), min(self.same_bytes))
        self.remember_digests()
        self.reconcile()
        return report

    def score_repeats_now(self, now: datetime, lineage: dict, report: Invocation) -> None:
        """After a ``--prune`` for a tick already handled (run by hand between ticks) that left shards to score again
        (they quarantined duplicate ids, and the rows repeated may have left): a run of those shards alone, named
        after the current time as a rescore is, so that their ids are not missing from the output until the next
        tick; new input still waits for it."""
        decision = Decision("run", now.replace(microsecond=0).astimezone(UTC))
        newest = max(self.history().latest(), default=None)
        if newest is not None and run_id(decision.tick) <= newest:
            log.warning("the shards --prune left to score again are scored by the next tick: the clock here says %s, "
                        "not after this job's newest run, %s", run_id(decision.tick), newest)
            return
        work = self.planner(lineage).new_work(decision, False, self.unfinished_commits(), only_repeats=True)
        if isinstance(work, RunPlan):
            self.check_same_names(work)
            self.attempt_reporting(work, report)

    def retry_emptied(
        self, failed: dict[str, tuple[str, set[str]]], decision: Decision, lineage: dict, report: Invocation
    ) -> None:
        """Try a failed resume once more where the new work took out of its partition a shard that had quarantined
        rows (the shard's new version committed elsewhere): a run over its error budget because of one file, fixed
        since, passes now, not at the next invocation. Nothing else a retirement takes away can make a run fail."""
        for run, (failure, quarantining) in failed.items():
            partition = self.partition_state(run)
            if not quarantining - set(partition.committed) or run not in {e.run for e in self.history().unfinished()}:
                continue
            plan = self.planner(lineage).resume(run, decision, partition, self.unfinished_commits())
            if self.attempt_reporting(plan, report) is None:
                report.failures.remove(failure)

    def check_same_names(self, work: RunPlan) -> None:
        """Refuse a file that would stand for one scored (or planned, by a run to resume) under its name (its path under
        the input location) from another location, where that one still is as it was scored: ``input.paths`` set to a
        folder of its own each night (``landing/{{ ds }}``) gives each night's ``part-0.jsonl`` the name of the night
        before's, and taken for its new version, it would move the rows of a file that is still there out of the
        output (or be scored in its place). One look at the earlier file, for a shard whose location differs only
        (none where input.paths stays)."""
        if work.entry.kind != "resume" and not work.entry.replaces:  # new files only (most ticks): no ledger read
            return
        history = self.history()
        scored = history.scored()
        resumed = history.first_attempt(work.run).inputs or [] if work.entry.kind == "resume" else []
        planned = {item.key: item for item in resumed}
        for shard in work.shards:
            item = planned.get(shard.key)
            if item is not None and (item.size, item.mtime_ns) != (shard.size, shard.mtime_ns):  # not a copy (cp -a)
                self.refuse_same_name(shard, item, f"run {work.run} is to score")
            run = work.entry.replaces.get(shard.key)
            if run is None:
                continue
            if shard.key in scored and scored[shard.key][1] == run:
                recorded: LedgerInput | ShardInput | None = scored[shard.key][0]
            else:  # the version an unfinished run committed
                record = OutputDir(partition_path(self.spec, run)).commit_record(shard.key)
                recorded = record.input if record is not None else None
            if recorded is not None:
                self.refuse_same_name(shard, recorded, f"run {run} scored")

    @staticmethod
    def refuse_same_name(shard: Shard, recorded: LedgerInput | ShardInput, which: str) -> None:
        earlier, listed = recorded.uri, ""
        if recorded.uri == shard.uri:  # the same path: the same file, unless a link on the way leads elsewhere now
            moved = linked_elsewhere(shard, recorded)
            if moved is None:
                return
            earlier, listed = moved, f" (listed as {recorded.uri}, through a symbolic link that leads elsewhere now)"
        elif not still_there(recorded) and (behind := linked_to(recorded)) is not None:
            # listed through a link (`landing/latest`) that is gone or leads elsewhere now: the file it led to
            if os.path.realpath(behind) == os.path.realpath(os.path.abspath(os.path.expanduser(shard.uri))):
                return  # this very file, listed now without the link
            earlier, listed = behind, f" (listed as {recorded.uri}, through a symbolic link)"
        if not still_there(recorded, earlier):
            return
        raise PipelineError(
            f"input.paths: {shard.uri} has the name of {earlier}{listed}, which {which} and which is still there: a "
            f"scheduled job knows a file by its name under its input location ({shard.name or shard.uri}), so this "
            "tick would take it for a new version of that file, and score it in that file's place or move that file's "
            "rows out of the output. Keep input.paths on the same location at every tick (for a folder per day, list "
            "the folder above them, so that each file's name holds its day's folder, with a new output.path, since "
            "the names change), or give each file a name of its own; where the input moved to this location on "
            f"purpose, move or rename the earlier copy, {earlier}, and this file is its new version"
        )

    def check_held_gone(self, current: set[str]) -> None:
        """Refuse a rescore while an unfinished run holds the output of input that is gone (``current``: the keys of
        the input's shards now): the rescore supersedes that run's partition, and neither it nor ``--prune`` (which
        moves what finished runs scored) can keep or record those rows."""
        runs, names = self.held_gone(current)
        if runs:
            raise PipelineError(
                f"--rescore: {len(names)} shard(s) whose input is gone ({', '.join(names[:3])}) are held by "
                f"unfinished run {', '.join(runs)}, whose partition the rescore would supersede with their rows; "
                f"give up on it first (`pipelines schedule JOB --abandon {runs[0]}`), then rescore with --prune to "
                "let their output go, or restore the files"
            )

    def held_gone(self, current: set[str]) -> tuple[list[str], list[str]]:
        """The unfinished runs that hold the output of input that is gone (``current``: the keys of the input's shards
        now), and the names of those files, sorted; empty lists where none."""
        held = {key: commit.run for key, commit in self.unfinished_commits().items() if key not in current}
        if not held:
            return [], []
        runs = sorted(set(held.values()))
        history = self.history()
        named = {i.key: i.name or i.uri for run in runs for i in history.first_attempt(run).inputs or []}
        return runs, sorted(named.get(key, key) for key in held)

    def held_gone_note(self, current: set[str]) -> str:
        """What ``--prune`` can't move: the output of gone input that an unfinished run holds (``""`` where none)."""
        runs, names = self.held_gone(current)
        if not runs:
            return ""
        return (f"{len(names)} shard(s) whose input is gone ({some_of(names, 3)}) not moved: unfinished run "
                f"{', '.join(runs)} holds their output; give up on it first (`pipelines schedule JOB --abandon "
                f"{runs[0]}`), then prune again, or restore the files")

    def unfinished_commits(self) -> dict[str, HeldCommit]:
        """shard key → the unfinished run that has committed it (the newest run, where several have)."""
        found: dict[str, HeldCommit] = {}
        for entry in self.history().unfinished():
            assert entry.run is not None
            for key, held in self.partition_state(entry.run).committed.items():
                found[key] = HeldCommit(entry.run, held.size, held.mtime_ns, held.digest)
        return found

    def attempt_reporting(self, plan: RunPlan, report: Invocation) -> str | None:
        """Attempt a run; a failure is recorded (ledger, report) instead of stopping the invocation, and returned.

        Before the invocation's first attempt, the checks every run makes before any work (the model's files; Ray
        started here, or the cluster joined): what they refuse, no run of this job can do, so it fails the invocation
        with its line and records no tick (as an input that can't be listed does), instead of a new failing run at
        each tick, each retried at every one after. An attempt that failed as the pool's actor started (weights the
        checks don't read, that can't be loaded) is recorded, then fails the invocation so: no other run is tried.
        """
        self.check_before_work()
        try:
            report.entries.append(self.attempt(plan))
            return None
        except PipelineError as exc:
            failures = self.history().failures(plan.run)
            advice = ""
            if stuck := self.over_budget_by_gone(plan):
                advice = (f" The quarantined rows of {', '.join(stuck)}, whose file is gone from the input, put the "
                          "run over its error budget: a gone file's output stays in its run's partition, so each try "
                          "fails again. Put the file back, fixed, under its name (its new version takes the old one's "
                          f"place), or give up on the run with `pipelines schedule JOB --abandon {plan.run}` (what it "
                          "committed stays).")
            elif failures >= FAILURES_BEFORE_ADVICE:
                advice = (f" It has failed {failures} times: fix the cause, or give up on it with "
                          f"`pipelines schedule JOB --abandon {plan.run}`.")
            report.entries.append(self.history().latest()[plan.run])
            report.failures.append(f"{exc}{advice}")
            if exc.unloadable_model:  # the model can't be loaded: any other run would fail so, and a new one each tick
                raise PipelineError(
                    f"{str(exc).splitlines()[0]}\nNo other run was started: none can load the model until it (or the "
                    "spec) is fixed, or what held the device's memory lets go, and each would be a new failing run to "
                    "retry at every tick. Its committed shards are kept; the next tick, or `pipelines schedule JOB "
                    f"--once`, resumes run {plan.run} first."
                ) from None
            return report.failures[-1]

    def over_budget_by_gone(self, plan: RunPlan) -> list[str]:
        """The names of the files gone from the input whose committed output puts a resumed run's partition over its
        error budget (within it without them): removing a bad file can't make such a run pass."""
        if not plan.gone:
            return []
        try:
            held = OutputDir(partition_path(self.spec, plan.run)).commits()
        except Exception:  # noqa: BLE001 - beside a run's failure: no advice, never a second error
            return []
        policy = self.spec.errors

        def over(records: list) -> bool:
            errors, rows = sum(r.errors for r in records), sum(r.rows_in for r in records)
            return (rows > 0 and errors / rows > policy.max_rate) or (
                policy.max_count is not None and errors > policy.max_count)

        gone = [key for key in plan.gone if key in held and held[key].errors]
        rest = [record for key, record in held.items() if key not in gone]
        return [plan.gone[key] for key in gone] if gone and over(list(held.values())) and not over(rest) else []

    def check_prune_leaves_some(self, lineage: dict) -> None:
        """Refuse ``--prune`` where the input lists no file at all: an input location emptied for a moment (a mount
        gone leaves its empty mount point, a sync half done) would make every scored shard look gone, and move the
        whole output away, to be scored again when the files are back."""
        planner = self.planner(lineage)
        if planner.shards or not (moves := planner.prunes()):
            return
        raise PipelineError(
            f"--prune: input.paths lists no file at all, so each of the {len(moves)} shard(s) scored looks gone and "
            f"--prune would move the job's whole output to {SUPERSEDED}/ (an input emptied for a moment, a mount gone "
            "or a sync half done, looks so). Nothing was moved: run without --prune (the output stays as it is), or "
            "with it once the input is back; to start the job over, give it a new output.path"
        )

    def prune(self, decision: Decision, lineage: dict) -> LedgerEntry:
        """Move the scored outputs of input files that are gone to ``_superseded/``, and say so in the ledger."""
        planner = self.planner(lineage)
        moves = planner.prunes()
        leaving: dict[str, set[str]] = {}
        for move in moves:
            leaving.setdefault(move.run, set()).add(str(move.key))
        repeats = {key: run for run, keys in leaving.items() for key in self.repeats_in(run, keys)}
        for move in moves:
            self.retire(move)
        note = f"{len(moves)} shard(s) whose input is gone moved to {SUPERSEDED}/" if moves else "nothing to prune"
        if held := self.held_gone_note({shard.key for shard in planner.shards}):
            note = f"{note}; {held}" if moves else held
            log.warning("--prune: %s", held)
        if repeats:
            note += (f"; {len(repeats)} shard(s) that quarantined duplicate ids in their partitions are to be scored "
                     "again, as the rows they repeated may have left with them")
        entry = LedgerEntry(
            tick=run_id(decision.tick), kind="prune", status="pruned", note=note,
            pruned={m.key: m.run for m in moves if m.key} or None, repeats=repeats or None,
        )
        return self.stamp(entry)

    def partition_state(self, run: str) -> PartitionState:
        partition = OutputDir(partition_path(self.spec, run))
        recorded = partition.job()
        committed = {key: r.input for key, r in partition.commits().items()}
        if recorded is None:
            return PartitionState(None, committed)
        return PartitionState(recorded.spec_hash, committed, recorded.model_files)

    def stamp(self, entry: LedgerEntry) -> LedgerEntry:
        """A line that records no run: when and where it was written."""
        stamped = entry.model_copy(update={"started_at": _now_iso(), "host": socket.gethostname(), "pid": os.getpid()})
        return self.ledger.append(stamped)

    def record_tick(self, decision: Decision, status: str, **fields) -> LedgerEntry:
        entry = LedgerEntry(
            tick=run_id(decision.tick), run=None, kind="tick", status=status, missed=decision.missed,
            note=decision.note(), **fields,
        )
        return self.stamp(entry)

    # scoring -------------------------------------------------------------------------------

    def attempt(self, plan: RunPlan) -> LedgerEntry:
        """Score a plan's shards into its partition, with a ``running`` line before and a closing line after."""
        for warning in plan.warnings:
            log.warning("%s", warning)
        run = plan.run
        if plan.entry.kind == "resume":
            log.info("resuming run %s: %d shard(s)", run, len(plan.shards))
        planned = self.ledger.append(plan.entry.model_copy(update={
            "run": run,
            "status": "running",
            "inputs": [describe_shard(s) for s in plan.shards],
            "spec_hash": self.spec.fingerprint(),
            "hash_version": HASH_VERSION,
            "started_at": _now_iso(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }))
        start = time.monotonic()
        replaces = plan.entry.replaces or {}

        def retire_older(shard: Shard) -> None:  # the older version leaves just before the new one appears
            if shard.key in replaces:
                self.retire_shard(replaces[shard.key], shard.key, restore_cut=True)

        precision = None if plan.entry.rescore else self.kept_precision(plan.entry.model)
        types = None if plan.entry.rescore else self.kept_column_types()
        before = set() if plan.overwrite else self.committed_keys(run)  # what a failed attempt did is the rest
        try:
            summary = self.runner(partition_spec(self.spec, run), address=self.address, overwrite=plan.overwrite,
                                  shards=plan.shards, before_visible=retire_older, precision=precision,
                                  column_types=types)
            if plan.entry.rescore and (lost := sorted(name for key, name in plan.gone.items()
                                                      if key in (plan.entry.replaces or {})
                                                      and key not in self.committed_keys(run))):
                # Its success would move every older partition to _superseded/, the rows of these files with them,
                # which no rescore can score again: as --rescore is refused while scored input is gone, unless --prune
                raise PipelineError(
                    f"rescore {run}: {len(lost)} shard(s) it planned are gone from the input since it started "
                    f"({some_of(lost, 3)}): it can't score them again, and their "
                    "rows would leave with the partitions it supersedes. Restore the files, or give up on it "
                    f"(`pipelines schedule JOB --abandon {run}`: what it rescored stays, the rest keeps its earlier "
                    "output), then --prune to let their output go"
                )
        except Exception as exc:
            try:
                self.ledger.append(planned.model_copy(update={
                    "status": "failed", "error": str(exc), "finished_at": _now_iso(),
                    "wall_s": round(time.monotonic() - start, 3), **self.partition_counts(run, before),
                }))
            except OSError as cause:  # the disk that failed the run (full): its 'running' line stays, and is resumed
                log.warning("run %s: its failure could not be written to the ledger (%s)", run, cause)
            self.failed_page(run)
            if not isinstance(exc, PipelineError):  # a worker's error, a bug: a failed run all the same
                log.error("run %s failed with an unexpected error", run, exc_info=True)
                exc = PipelineError(f"{type(exc).__name__}: {exc}")
            failed = PipelineError(
                f"run {run} failed: {exc}\n(committed shards are kept; the next tick, or "
                "`pipelines schedule JOB --once`, resumes the run)"
            )
            failed.unloadable_model = exc.unloadable_model
            raise failed from None
        return self.ledger.append(planned.model_copy(update={
            "status": "succeeded",
            "inputs": self.committed_inputs(run),
            "shards_this_run": summary.shards_this_run,
            "rows_in": summary.rows_in,
            "rows_out": summary.rows_out,
            "errors": summary.errors,
            "rows_this_run": summary.rows_this_run,
            "precision": summary.precision,
            "finished_at": _now_iso(),
            "wall_s": round(time.monotonic() - start, 3),
        }))

    def kept_precision(self, model: dict | None) -> dict[str, Any] | None:
        """What ``quantization: auto`` chose for this job's newest run with this model and spec on this kind of
        device (from its partition's ``_job.json``): a scheduled job keeps one precision over its runs, as one
        output does, so that its partitions are comparable. None where no such run chose one (a rescore, or a
        job moved to another kind of device, decides again)."""
        if self.spec.model.quantization != "auto":
            return None
        device = self.spec.actor_device()
        for run, entry in reversed(self.history().latest().items()):
            recorded = OutputDir(partition_path(self.spec, run)).job() if same_model(entry.model, model) else None
            if (recorded and recorded.precision and recorded.spec_hash == self.spec.fingerprint()
                    and recorded.device == device):
                return recorded.precision
        return None

    def kept_column_types(self) -> str | None:
        """The kept columns' types of this job's earlier runs (from their partitions' ``_job.json``, the newest run's
        first): a new partition writes them too, so that every partition reads as one table (ints one night and
        fractions the next would not). A column no earlier run kept is typed from the new run's input."""
        label = self.spec.input.label_column
        names = {*self.spec.input.columns_to_keep, *([label] if label else [])}
        types: dict[str, pa.DataType] = {}
        for run in reversed(self.history().latest()):
            if names <= types.keys():  # nothing kept (most jobs), or every kept column typed: no more reads
                break
            recorded = OutputDir(partition_path(self.spec, run)).job()
            if recorded and recorded.column_types:
                found = decode_types(recorded.column_types)
                types = {**{name: found[name] for name in names & found.keys()}, **types}
        return encode_types(types) if types else None

    def quarantining(self, run: str) -> set[str]:
        """The shards of a run's partition whose commits quarantined rows (what counts against its error budget)."""
        return {key for key, record in OutputDir(partition_path(self.spec, run)).commits().items() if record.errors}

    def failed_page(self, run: str) -> None:
        """A page of what a run that failed before its summary committed (its start deleted the page before), where
        its partition is there; the root page links each run to its page."""
        from pipelines.output import report

        try:
            if self.fs.get_file_info(f"{self.root}/{layout.partition_dir(run)}/{JOB}").type == pafs.FileType.File:
                report.write_quietly(partition_path(self.spec, run))
        except Exception as exc:  # noqa: BLE001 - beside a run's failure: a page not written, never a second error
            log.warning("run %s: its page not written (%s)", run, exc)

    def partition_counts(self, run: str, before: set[str]) -> dict[str, int]:
        """Rows read, written and quarantined in what a run's partition holds (its commit records), and the shards
        and rows the attempt committed itself (those not in ``before``): a failed run's ledger line counts them as a
        succeeded one's does."""
        try:
            held = OutputDir(partition_path(self.spec, run)).commits()
        except Exception:  # noqa: BLE001 - beside a run's failure (a store down): no counts, never a second error
            return {}
        records, now = list(held.values()), [record for key, record in held.items() if key not in before]
        return {"rows_in": sum(r.rows_in for r in records), "rows_out": sum(r.rows for r in records),
                "errors": sum(r.errors for r in records), "shards_this_run": len(now),
                "rows_this_run": sum(r.rows_in for r in now)}

    def committed_keys(self, run: str) -> set[str]:
        """The keys of the shards a run's partition holds commit records of: one listing, no record read."""
        selector = pafs.FileSelector(f"{self.root}/{layout.partition_dir(run)}/{COMMITS}", allow_not_found=True)
        try:
            found = self.fs.get_file_info(selector)
        except OSError:  # a store down: the run meets it and fails as it did; its line then counts every commit
            return set()
        return {info.base_name.removesuffix(".json") for info in found
                if info.is_file and info.base_name.endswith(".json")}

    def committed_inputs(self, run: str) -> list[LedgerInput]:
        records = OutputDir(partition_path(self.spec, run)).commits().values()
        items = [LedgerInput(**r.input.model_dump(), key=r.shard, rows=r.rows_in) for r in records]
        return sorted(items, key=lambda item: item.uri)

    # superseded outputs --------------------------------------------------------------------

    def reconcile(self) -> None:
        """Move outputs that newer ones replace to ``_superseded/`` (idempotent; resumes a cut-off move).

        Then the commits that a killed run cut short (a commit record written, its files still staged) are
        finished in every partition of a run that did not succeed: an abandoned run is never resumed, and a
        skipped tick resumes nothing, so an old version would otherwise be retired for one that never appears.
        (After the moves: a move cut short leaves a record whose files are neither in place nor staged, which
        ``recover`` would take for a broken commit and delete.)
        """
        self.check_lock()
        planner = Planner(self.history(), [], {}, self.spec.fingerprint())
        latest = planner.history.latest()
        committed = {
            (run, key)
            for run, entry in latest.items()
            for key in entry.replaces or {}
            if self.exists(f"{layout.partition_dir(run)}/{layout.commit_record_path(key)}")
        }
        # what an unfinished run replaces may have been brought back by an abandon cut off between its files and its
        # record, and then the run resumed and killed as it retired them: only these (the unfinished runs') look in
        # _superseded/ for the record (a read each, and a look for its files), not every replacement ever made
        cut = {(old, key) for entry in latest.values() if entry.status in ("running", "failed")
               for key, old in (entry.replaces or {}).items()}
        for move in planner.retirements(self.partitions(), committed):
            self.retire(move, restore_cut=(move.run, move.key) in cut)
        partitions = set(self.partitions())
        for run, entry in planner.history.latest().items():
            if run in partitions and entry.status in ("running", "failed", "abandoned"):
                partition = OutputDir(partition_path(self.spec, run))
                partition.guard = self.check_lock
                partition.recover()

    def retire(self, move: Retirement, restore_cut: bool = False) -> None:
        self.check_lock()
        if move.key is None:
            log.info("moving run=%s to %s/: superseded by a rescore", move.run, SUPERSEDED)
            self.retire_tree(layout.partition_dir(move.run))
        else:
            self.retire_shard(move.run, move.key, restore_cut)

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{relative}").type == pafs.FileType.File

    def _move(self, relative: str, back: bool = False) -> None:
        """A file to ``_superseded/`` (``back``: from there to its place again); nothing if it is not there."""
        source, target = f"{self.root}/{relative}", f"{self.root}/{SUPERSEDED}/{relative}"
        if back:
            source, target = target, source
        if self.fs.get_file_info(source).type != pafs.FileType.File:
            return
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        self.fs.move(source, target)

    def retire_shard(self, run: str, key: str, restore_cut: bool = False) -> None:
        """A shard's files in an older run, then its commit record (last, so a cut-off move is redone).
        ``restore_cut`` (as a new version commits, or its cut commit is finished): where the record is already in
        ``_superseded/``, the files it names that are in the run move there too (a :meth:`restore_shard` cut off
        between its files and its record left them there, named by no record)."""
        folder = layout.partition_dir(run)
        partition = OutputDir(partition_path(self.spec, run))
        record = partition.commit_record(key)
        if record is None and restore_cut:
            record = OutputDir(superseded_path(self.spec, run)).commit_record(key)
            if record is not None and not any(self.exists(f"{folder}/{f}") for f in record.files + record.error_files):
                return
        if record is None:
            return
        for relative in [*record.files, *record.error_files]:
            self._move(f"{folder}/{relative}")
        self._move(f"{folder}/{COMMITS}/{key}.json")
        if record.error_files:  # its quarantined rows were the partition's last: no _errors/ left empty
            partition.guard = self.check_lock
            partition.drop_empty_errors()
        log.info("moved the earlier output of shard %s in run %s to %s/", record.input.uri, run, SUPERSEDED)

    def restore_shard(self, run: str, key: str) -> None:
        """Bring a retired shard's output back from ``_superseded/`` into its run (its files, then its record)."""
        self.check_lock()
        folder = layout.partition_dir(run)
        record = OutputDir(superseded_path(self.spec, run)).commit_record(key)
        if record is None:
            return
        for relative in [*record.files, *record.error_files, f"{COMMITS}/{key}.json"]:
            self._move(f"{folder}/{relative}", back=True)
        log.info("brought the earlier output of shard %s in run %s back from %s/", record.input.uri, run, SUPERSEDED)

    def retire_tree(self, folder: str) -> None:
        selector = pafs.FileSelector(f"{self.root}/{folder}", recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.is_file:
                self._move(info.path[len(self.root) + 1 :])
        self.fs.delete_dir(f"{self.root}/{folder}")


def describe(entry: LedgerEntry) -> str:
    """One line about a ledger entry, for the terminal and the log."""
    status, tick, run = entry.status, entry.tick, entry.run
    note = f" ({entry.note})" if entry.note else ""
    if status == "skipped":
        return f"tick {tick}: skipped (schedule.missed_ticks: skip){note}"
    if status == "empty":
        return f"tick {tick}: nothing to score; nothing written{note}"
    if status == "pruned":
        return f"tick {tick}: {entry.note}"
    if status == "abandoned":
        return f"run={run}: abandoned ({entry.note})"
    what = {"resume": "resumed", "rescore": "rescored every shard", "tick": "scored new input"}[entry.kind]
    errors = entry.errors or 0
    return (
        f"run={run}: {status}, {what}: {entry.shards_this_run or 0} shard(s) this run, "
        f"{entry.rows_out or 0:,} rows in the partition ({errors:,} quarantined), "
        f"{entry.wall_s or 0:.1f} s{note}"
    )
