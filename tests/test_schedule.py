"""Scheduled incremental runs on a simulated clock: new shards only, exactly once, resumed, locked, lineage."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, SENTENCES, write_jsonl, write_parquet

from pipelines.errors import PipelineError
from pipelines.io.reader import content_digest
from pipelines.io.shards import list_shards
from pipelines.output import layout
from pipelines.output import summary as summaries
from pipelines.output.commit import DATA_STAGED, OutputDir, staged_name
from pipelines.output.lock import JobLock, LockHeld
from pipelines.output.records import HASH_VERSION, CommitRecord, RunSummary, ShardInput
from pipelines.runner import job_record
from pipelines.schedule.executor import abandon, job_lock, run_due
from pipelines.schedule.ledger import GONE_NAMED, History, Ledger, LedgerEntry, render_table
from pipelines.schedule.loop import serve
from pipelines.schedule.ticks import decide, latest_tick, next_tick, run_id
from pipelines.spec import JobSpec, spec_from_dict

DAY1 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)  # a tick of "0 2 * * *"


def day(n: int, hours: float = 0) -> datetime:
    """The n-th daily tick (1 = DAY1), plus some hours."""
    return DAY1 + timedelta(days=n - 1, hours=hours)


def rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": SENTENCES[i % len(SENTENCES)]} for i in range(n)]


def raw_job(tmp_path: Path, model: str, **schedule) -> dict:
    return {
        "name": "nightly",
        "input": {"paths": [str(tmp_path / "in")]},
        "model": {"name": model},
        "task": {"type": "text-classification"},
        "batching": {"batch_size": 8},
        "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1},
        "output": {"path": str(tmp_path / "out")},
        "schedule": {"cron": "0 2 * * *", **schedule},
    }


def make_job(tmp_path: Path, model: str, **schedule):
    (tmp_path / "in").mkdir(exist_ok=True)
    return spec_from_dict(raw_job(tmp_path, model, **schedule))


def add_shard(tmp_path: Path, name: str, batch: list[dict]) -> str:
    return str(write_jsonl(tmp_path / "in" / name, batch))


def ledger(tmp_path: Path) -> list[dict]:
    return [entry.to_json() for entry in Ledger(str(tmp_path / "out")).read()]


def closing_lines(tmp_path: Path) -> list[dict]:
    return [e for e in ledger(tmp_path) if e["status"] != "running"]


def all_ids(tmp_path: Path) -> list[str]:
    """Every partition together, read the way a user reads them: pyarrow over the output folder."""
    table = pq.read_table(tmp_path / "out")
    return table.column("id").to_pylist() if "id" in table.column_names else []  # no part file at all: no rows


def partition_ids(tmp_path: Path, run: datetime) -> list[str]:
    folder = tmp_path / "out" / f"run={run.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return sorted(pq.read_table(folder).column("id").to_pylist())


def data_files(tmp_path: Path) -> dict[str, int]:
    """Every file under the output but the ledger, its page and the lock, with its modification time."""
    out = tmp_path / "out"
    skip = ("_runs.jsonl", "_schedule.lock", "_report.html")  # at the root only
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and str(p.relative_to(out)) not in skip}


@pytest.fixture()
def classifier(tiny_models, tmp_path) -> str:
    """A private copy of the tiny classifier, so a test may change it."""
    return str(shutil.copytree(tiny_models("classifier"), tmp_path / "model"))


@pytest.fixture(scope="module")
def _scored_on_day1(ray_session, tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """The one real run several tests start from: a.jsonl (5 rows) and b.jsonl (4 rows) scored by a private copy
    of the tiny classifier at the tick of day 1; then a snapshot of the whole folder (input, model, output)."""
    folder = tmp_path_factory.mktemp("scored-on-day1")
    spec = make_job(folder, str(shutil.copytree(tiny_models("classifier"), folder / "model")))
    add_shard(folder, "a.jsonl", rows("a", 5))
    add_shard(folder, "b.jsonl", rows("b", 4))
    [first] = run_due(spec, now=day(1, hours=0.01)).entries
    assert (first.status, first.rows_out) == ("succeeded", 9)
    snapshot = tmp_path_factory.mktemp("scored-on-day1-snapshot") / "copy"
    shutil.copytree(folder, snapshot)  # copy2: the inputs keep their mtimes, so their fingerprints are unchanged
    return folder, snapshot


@pytest.fixture()
def scored_on_day1(_scored_on_day1) -> Path:
    """A folder as the real day-1 run of ``_scored_on_day1`` left it: in/ (a: 5 rows, b: 4), model/, out/.

    Shared by the tests that start from that run, so it runs once per module, not once per test. The output holds
    absolute paths (the ledger's and commit records' input URIs), so the folder cannot be copied elsewhere: each
    test gets the snapshot put back in place, whatever the test before it changed (a shard, the model, the output).
    Its job: ``make_job(folder, str(folder / "model"))``."""
    folder, snapshot = _scored_on_day1
    shutil.rmtree(folder)
    shutil.copytree(snapshot, folder)
    return folder


def fake_model(tmp_path: Path) -> str:
    """A model directory for the stand-in runner: only hashed for lineage, never loaded."""
    folder = tmp_path / "fake-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return str(folder)


class NoRay:
    """A stand-in for run_job that records its calls (for tests about the schedule, not the scoring)."""

    def __init__(self, fail_first: int = 0, fail_with: str | None = None, error: type[Exception] = PipelineError) -> None:
        self.calls: list[dict] = []
        self.fail_first = fail_first
        self.fail_with = fail_with  # a shard file name whose runs always fail
        self.error = error  # what they fail with

    def __call__(self, spec, *, address=None, overwrite=False, shards=None, before_visible=None,
                 precision=None, column_types=None) -> RunSummary:
        self.calls.append({"output": spec.output.path, "shards": [s.uri for s in shards], "overwrite": overwrite})
        if len(self.calls) <= self.fail_first:
            raise PipelineError("the cluster went away")
        if self.fail_with and any(s.uri.endswith(self.fail_with) for s in shards):
            raise self.error(f"1 input file(s) could not be read: {self.fail_with}")
        summary = summaries.build(job_record(spec), [], [], 0.0, "succeeded")
        return summary.model_copy(update={"shards_this_run": len(shards)})


class Committing:
    """A stand-in for run_job that commits as it does, without a model or Ray: each shard's ids staged, its commit
    record written, ``before_visible`` called, then the file moved into place. A shard named ``bad*`` is never
    committed and fails its run at the end (as an unreadable file does); runs in ``fail_first`` fail before
    committing anything. For tests of long sequences of failures, resumes and abandons."""

    def __init__(self, digests: bool = False) -> None:
        self.fail_first: set[str] = set()
        self.digests = digests  # record each input's digest, as run_job does (records written before it: none)

    def __call__(self, spec, *, address=None, overwrite=False, shards=None, before_visible=None,
                 precision=None, column_types=None) -> RunSummary:
        out = OutputDir(spec.output.path)
        if overwrite:
            out.clear()
        out.recover()
        out.clean()
        out.check_unrecorded()  # as run_job refuses part files no record names
        run = Path(spec.output.path).name.removeprefix("run=")
        if run in self.fail_first:
            raise PipelineError(f"run {run} failed before its first commit")
        committed = out.commits()
        for shard in [s for s in shards if s.key not in committed and not s.name.startswith("bad")]:
            ids = [json.loads(line)["id"] for line in Path(shard.path).read_text().splitlines()]
            final = layout.part_name(shard.key, 0)
            staged = Path(spec.output.path) / "_staging" / shard.key / staged_name(DATA_STAGED, final)
            staged.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"id": ids}), staged)
            bad = sum(i.startswith("x") for i in ids)  # counted as quarantined (see OverBudget)
            digest = content_digest(Path(shard.path).read_bytes()) if self.digests else None
            record = CommitRecord(shard=shard.key, input=ShardInput(**shard.fingerprint(), digest=digest), spec_hash="-",
                                  model={"name": "-"}, rows_in=len(ids), rows=len(ids) - bad, errors=bad, files=[final])
            out.write_json(layout.commit_record_path(shard.key), record.to_json())
            if before_visible is not None:
                before_visible(shard)
            out._reveal(shard.key, record)
        if any(s.name.startswith("bad") for s in shards):
            raise PipelineError("1 input file(s) could not be read: bad")
        summary = summaries.build(job_record(spec), [], [], 0.0, "succeeded")
        return summary.model_copy(update={"shards_this_run": len(shards)})


class Screening:
    """A stand-in for run_job that commits each shard with run_job's own commit and its ``errors.duplicate_ids:
    error`` screen (each row's id against the partition's committed ids), without a model or Ray: a row whose id
    was already written in the partition is quarantined as ``duplicate id`` in ``_errors/``."""

    def __call__(self, spec, *, address=None, overwrite=False, shards=None, before_visible=None,
                 precision=None, column_types=None) -> RunSummary:
        import pyarrow.fs as pafs

        from pipelines.output.duplicates import DuplicateIds
        from pipelines.output.staging import StagingReport

        out = OutputDir(spec.output.path)
        out.recover()
        out.clean()
        job = job_record(spec)
        for shard in [s for s in shards if s.key not in out.commits()]:
            ids = [json.loads(line)["id"] for line in Path(shard.path).read_text().splitlines()]
            staged = Path(spec.output.path) / "_staging" / shard.key / "data.parquet"
            staged.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"id": ids, "_row": list(range(len(ids)))}), staged)
            screen = DuplicateIds(pafs.LocalFileSystem(), spec.output.path, "id", list(out.commits().values()))
            report = StagingReport(shard=shard.key, shard_rows=len(ids), rows=len(ids), errors=0, files=[str(staged)],
                                   row_ranges=[(0, len(ids))])
            out.commit(shard, [report], job, screen=screen, before_visible=before_visible)
        summary = summaries.build(job, [], [], 0.0, "succeeded")
        return summary.model_copy(update={"shards_this_run": len(shards)})


def fetched_again(path: Path) -> None:
    """The file written anew with the same bytes (a new download, a copy without its times): a new time."""
    data, before = path.read_bytes(), path.stat().st_mtime_ns
    path.unlink()
    path.write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


class Killed(BaseException):
    """Like SIGKILL: no clean-up code runs (the ledger keeps only the 'running' line), nothing after it happens."""


def killed_after_first_commit(monkeypatch, invocation) -> None:
    """Run ``invocation`` with the driver dying right after its first shard's commit."""
    commit = OutputDir.commit

    def commit_then_die(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        raise Killed()

    monkeypatch.setattr(OutputDir, "commit", commit_then_die)
    with pytest.raises(Killed):
        invocation()
    monkeypatch.setattr(OutputDir, "commit", commit)
    gc.collect()  # the abandoned Ray Data stream stops (as a killed driver's would) and frees its actor


# cron, time zones, missed ticks ----------------------------------------------------------------


def test_cron_and_time_zone_are_read_by_croniter_and_validated():
    spec = spec_from_dict(raw_job(Path("/tmp/unused"), "m", cron="30 2 * * *", timezone="Europe/Berlin"))
    winter = datetime(2026, 1, 10, 12, tzinfo=UTC)
    assert latest_tick(spec.schedule, winter) == datetime(2026, 1, 10, 1, 30, tzinfo=UTC)  # 02:30 CET
    summer = datetime(2026, 7, 10, 12, tzinfo=UTC)
    assert latest_tick(spec.schedule, summer) == datetime(2026, 7, 10, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert next_tick(spec.schedule, summer) == datetime(2026, 7, 11, 0, 30, tzinfo=UTC)
    exactly = datetime(2026, 7, 10, 0, 30, tzinfo=UTC)
    assert latest_tick(spec.schedule, exactly) == exactly and next_tick(spec.schedule, exactly) > exactly
    bad = [("cron", "0 25 * * *"), ("timezone", "Mars/Olympus"), ("missed_ticks", "catch_up")]
    for key, value in bad:
        raw = raw_job(Path("/tmp/unused"), "m")
        raw["schedule"][key] = value
        with pytest.raises(PipelineError, match=f"schedule.{key}"):
            spec_from_dict(raw)


def test_a_cron_expression_that_matches_no_date_is_refused_by_validate_not_a_traceback_at_each_tick():
    """README (The schedule section): a bad cron expression is rejected by `pipelines validate` with the field's path.
    `0 0 30 2 *` (February 30) passed croniter's syntax check, and every invocation then ended in croniter's
    traceback (CroniterBadDateError: failed to find prev date), exit 1, night after night."""
    raw = raw_job(Path("/tmp/unused"), "m", cron="0 0 30 2 *")
    with pytest.raises(PipelineError, match="schedule.cron.*matches no date"):
        spec_from_dict(raw)
    assert spec_from_dict(raw_job(Path("/tmp/unused"), "m", cron="0 0 29 2 *")).schedule  # leap years only: fine


def test_a_cron_expression_with_a_year_field_is_refused_by_validate_not_a_traceback_once_the_year_is_past():
    """README (The schedule section): 5 cron fields, 6 with seconds last. croniter also reads a 7th, a year: `0 2 * *
    * 0 2025` passed validate, and once that year was past every invocation ended in croniter's traceback on its
    `next tick:` line (the loop too), every night; a year still to come crashed each invocation until then."""
    for cron in ("0 2 * * * 0 2025", "0 2 * * * 0 2099"):
        with pytest.raises(PipelineError, match="schedule.cron.*7 fields"):
            spec_from_dict(raw_job(Path("/tmp/unused"), "m", cron=cron))
    assert spec_from_dict(raw_job(Path("/tmp/unused"), "m", cron="0 2 * * * 30")).schedule  # seconds last: fine


def test_a_daily_tick_runs_once_on_the_night_the_clocks_go_back_as_cron_runs_it():
    """Berlin's clocks go back from 03:00 CEST to 02:00 CET on 2026-10-25, so 02:00 comes twice (00:00 and 01:00 UTC).
    croniter gives both: the scheduler ran a `0 2 * * *` job twice that night (a second partition an hour after the
    first), and the next day an invocation from cron, which runs such a job once, was told it had missed a tick. Now
    the hour repeated holds no second tick of a job at a fixed hour; a job every hour keeps both hours, as in cron."""
    daily = spec_from_dict(raw_job(Path("/tmp/unused"), "m", timezone="Europe/Berlin")).schedule
    first, next_day = datetime(2026, 10, 25, 0, tzinfo=UTC), datetime(2026, 10, 26, 1, tzinfo=UTC)  # 02:00 CEST, CET
    assert next_tick(daily, first) == next_day
    assert decide(daily, "2026-10-25T00:00:00Z", first + timedelta(hours=1, seconds=30)).action == "handled"
    assert latest_tick(daily, first + timedelta(hours=1, minutes=5)) == first
    on_time = decide(daily, "2026-10-25T00:00:00Z", next_day + timedelta(minutes=1))
    assert (on_time.action, on_time.tick, on_time.missed) == ("run", next_day, 0)
    spring = datetime(2026, 3, 29, 1, tzinfo=UTC)  # 02:00 does not exist that night: the tick is at 03:00 CEST
    assert next_tick(daily, spring - timedelta(hours=3)) == spring
    hourly = spec_from_dict(raw_job(Path("/tmp/unused"), "m", cron="0 * * * *", timezone="Europe/Berlin")).schedule
    assert next_tick(hourly, first) == first + timedelta(hours=1)


@pytest.mark.parametrize("policy", ["skip", "run_once"])
def test_missed_ticks_follow_the_policy(policy):
    schedule = spec_from_dict(raw_job(Path("/tmp/unused"), "m", missed_ticks=policy)).schedule
    last = "2026-11-28T02:00:00Z"
    on_time = decide(schedule, last, day(4, hours=0.05))  # 3 minutes after the tick of day 4
    assert (on_time.action, on_time.tick, on_time.missed) == ("run", day(4), 2)  # days 2 and 3 were missed
    late = decide(schedule, last, day(4, hours=7))
    assert late.tick == day(4) and late.missed == 3
    assert late.action == ("skip" if policy == "skip" else "run")
    assert decide(schedule, "2026-12-01T02:00:00Z", day(4, hours=7)).action == "handled"
    first_ever = decide(schedule, None, day(1, hours=7))
    assert first_ever.missed == 1 and first_ever.action == ("skip" if policy == "skip" else "run")


@pytest.mark.parametrize("policy", ["skip", "run_once"])
def test_the_loop_wakes_at_each_tick_on_a_simulated_clock(tmp_path, policy):
    spec = make_job(tmp_path, fake_model(tmp_path), missed_ticks=policy)
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    clock = {"now": day(1, hours=7)}  # started five hours after the tick of day 1
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock["now"] += timedelta(seconds=seconds)
        if clock["now"] >= day(3):
            add_shard(tmp_path, "b.jsonl", rows("b", 2))

    runner = NoRay()
    serve(spec, clock=lambda: clock["now"], sleep=sleep, runner=runner, wakeups=3)
    lines = [(e["tick"], e["status"]) for e in closing_lines(tmp_path)]
    first = ("2026-11-28T02:00:00Z", "skipped" if policy == "skip" else "succeeded")
    assert lines[0] == first
    assert lines[1:] == [("2026-11-29T02:00:00Z", "succeeded"), ("2026-11-30T02:00:00Z", "succeeded")]
    assert sum(slept) == (day(3) - day(1, hours=7)).total_seconds()  # woke exactly at each tick, no later
    assert max(slept) <= 3600  # in steps of an hour at most, so a clock change is noticed
    assert runner.calls[-1]["output"].endswith("out/run=2026-11-30T02:00:00Z")


@pytest.mark.parametrize("policy", ["skip", "run_once"])
def test_a_tick_passed_while_the_loop_ran_is_handled_when_the_run_ends(tmp_path, policy):
    """README (Ticks): a tick found late because the previous run took longer than the interval is missed: run_once
    runs it at once, skip records it as skipped. The loop slept from the end of such a run to the tick after it, so
    the tick that passed meanwhile was neither run nor recorded, and the input that came during the run waited a
    whole interval more."""
    spec = make_job(tmp_path, fake_model(tmp_path), missed_ticks=policy)
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    clock = {"now": day(1, hours=0.01)}
    slept = []

    class Overrunning(Committing):
        def __call__(self, spec, **kwargs):
            if clock["now"] < day(2):  # the first run takes 25 hours: the tick of day 2 passes while it runs
                clock["now"] = day(2, hours=1)
                add_shard(tmp_path, "b.jsonl", rows("b", 2))
            return super().__call__(spec, **kwargs)

    def sleep(seconds):
        slept.append(seconds)
        clock["now"] += timedelta(seconds=seconds)

    runner = Overrunning()
    serve(spec, clock=lambda: clock["now"], sleep=sleep, runner=runner, wakeups=2)
    lines = [(e["tick"], e["status"]) for e in closing_lines(tmp_path)]
    day2 = ("2026-11-29T02:00:00Z", "skipped" if policy == "skip" else "succeeded")
    assert lines == [("2026-11-28T02:00:00Z", "succeeded"), day2]
    assert slept == []  # handled when the run ended, not a day later
    if policy == "run_once":
        assert [i["name"] for i in closing_lines(tmp_path)[-1]["inputs"]] == ["b.jsonl"]
        assert sorted(all_ids(tmp_path)) == ["a0", "a1", "a2", "b0", "b1"]


def test_every_reader_of_the_partitions_sees_each_row_once_at_every_step_of_a_supersede(tmp_path):
    """README (What a run does, 4-5; Reading all partitions): pyarrow, pandas, Polars and DuckDB read as the README
    says, after each rename and delete while a changed shard's new version commits (its old one moved to
    _superseded/ just before it appears), while --prune moves a gone shard's output away, and while a rescore's
    older partition moves away whole: never two versions of a row, never half a shard, never _superseded/ or
    _errors/ taken as data."""
    from helpers import Watched, readers_see, staged_shard

    from pipelines.output.commit import OutputDir
    from pipelines.output.records import JobRecord, ModelRef
    from pipelines.schedule.executor import ScheduledJob
    from pipelines.schedule.planner import Retirement

    spec = make_job(tmp_path, fake_model(tmp_path))
    job_record = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    first, second = "2026-11-28T02:00:00Z", "2026-11-29T02:00:00Z"
    old = OutputDir(str(tmp_path / "out" / f"run={first}"))
    old.start(job_record)
    shards = {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0"]}
    keys = {}
    for name, ids in shards.items():
        shard, report = staged_shard(old, tmp_path / "in", name, ids, bad=f"bad-{name}")
        keys[name] = old.commit(shard, [report], job_record).shard
    old.finish()
    job = ScheduledJob(spec, None, NoRay())
    looks = []

    def look() -> None:
        seen = readers_see(tmp_path / "out", "run=*/*.parquet")
        looks.append(seen)
        assert len({tuple(ids) for ids in seen.values()}) == 1, seen  # every reader reads the same rows
        ids = next(iter(seen.values()))
        whole = sorted(i for rows in shards.values() if set(rows) & set(ids) for i in rows)
        assert ids == whole, seen  # whole shards, each once

    watched = Watched()
    watched.look = look
    job.fs = watched
    new = OutputDir(str(tmp_path / "out" / f"run={second}"))
    new.fs = watched
    new.start(job_record)
    b, report = staged_shard(new, tmp_path / "in", "b", shards["b"], version=1)
    new.commit(b, [report], job_record, before_visible=lambda shard: job.retire_shard(first, shard.key))
    versions = readers_see(tmp_path / "out", "run=*/*.parquet", column="version")
    assert all(seen == [0, 0, 0, 1, 1] for seen in versions.values()), versions  # b's new version, a's and c's old
    job.retire(Retirement(first, keys["c"]))  # --prune: c's input is gone
    del shards["c"]  # --prune moved the gone c away
    assert readers_see(tmp_path / "out", "run=*/*.parquet")["duckdb"] == ["a0", "a1", "b0", "b1"]
    a, report = staged_shard(new, tmp_path / "in", "a", shards["a"], version=1)
    new.commit(a, [report], job_record, before_visible=lambda shard: job.retire_shard(first, shard.key))
    new.finish()
    job.retire(Retirement(first))  # the rescore's end: the older partition, now without shards, moves away whole
    assert not (tmp_path / "out" / f"run={first}").exists() and len(looks) > 10
    assert readers_see(tmp_path / "out", "run=*/*.parquet", column="version")["pandas"] == [1, 1, 1, 1]


def test_a_scheduler_that_lost_its_lock_moves_no_output(tmp_path):
    """README (One run at a time per output): a scheduled job checks its lock before each move to or from
    _superseded/ and before finishing a partition's commits; one whose lease was taken over moves nothing."""
    from pipelines.schedule.executor import ScheduledJob
    from pipelines.schedule.planner import Retirement

    spec = make_job(tmp_path, fake_model(tmp_path))
    run = "2026-11-28T02:00:00Z"
    part = tmp_path / "out" / f"run={run}" / "part-a-00000.parquet"
    write_parquet(part, [{"id": "a0", "label": "x"}])
    job = ScheduledJob(spec, None, NoRay())

    def lost() -> None:
        raise PipelineError("the lock … was taken over by another run")

    job.guard(lost)
    for step in (lambda: job.retire(Retirement(run)), lambda: job.retire(Retirement(run, "a")), job.reconcile,
                 lambda: job.restore_shard(run, "a")):
        with pytest.raises(PipelineError, match="taken over"):
            step()
    assert part.is_file() and not (tmp_path / "out" / "_superseded").exists()


def test_a_terminated_loop_stops_at_once_and_leaves_the_local_ray_to_the_exit(tmp_path, monkeypatch):
    """SIGTERM in the middle of a tick (Terminated, raised by the CLI's handler) is not one more failed run to log
    and go on from: the loop stops. Nor does it shut the tick's local Ray down on the way out: where the signal went
    to the whole process group, Ray's processes are gone and ray.shutdown() aborts the process (the CLI exits at
    once instead; tests/test_signals.py)."""
    import pipelines.schedule.loop as loop
    from pipelines.errors import Terminated

    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    shut_down = []
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(shutdown=lambda: shut_down.append(True)))
    up = iter([False, True, True])  # no Ray before the tick, one after it (started by the tick's run)
    monkeypatch.setattr(loop, "_ray_is_up", lambda: next(up))

    def terminated_mid_run(spec, **kwargs):
        raise Terminated()

    with pytest.raises(Terminated):
        serve(spec, clock=lambda: day(1, hours=0.01), sleep=lambda s: None, runner=terminated_mid_run, wakeups=3)
    assert shut_down == []


# incremental, exactly once --------------------------------------------------------------------


def test_three_ticks_score_only_new_and_changed_shards_exactly_once(scored_on_day1):
    import duckdb
    import pandas as pd

    folder = scored_on_day1  # the first tick (a: 5 rows, b: 4) has run
    spec = make_job(folder, str(folder / "model"))
    a, b = str(folder / "in" / "a.jsonl"), str(folder / "in" / "b.jsonl")
    c = add_shard(folder, "c.jsonl", rows("c", 3))
    run_due(spec, now=day(2, hours=0.01))
    d = add_shard(folder, "d.jsonl", rows("d", 6))
    a = add_shard(folder, "a.jsonl", rows("a", 7))  # a changed: two more rows
    run_due(spec, now=day(3, hours=0.01))

    runs = [e for e in closing_lines(folder) if e["run"]]
    assert [sorted(i["uri"] for i in e["inputs"]) for e in runs] == [sorted([a, b]), [c], sorted([a, d])]
    assert [e["rows_out"] for e in runs] == [9, 3, 13]
    assert partition_ids(folder, day(2)) == sorted(r["id"] for r in rows("c", 3))
    assert len(runs[2]["replaces"]) == 1
    expected = sorted(r["id"] for r in rows("a", 7) + rows("b", 4) + rows("c", 3) + rows("d", 6))
    assert sorted(all_ids(folder)) == expected  # the old version of a is gone from view: each row once
    assert list((folder / "out" / "_superseded" / "run=2026-11-28T02:00:00Z").glob("part-*.parquet"))
    # README, "What readers see": the first partition was complete when its _SUCCESS was written; it keeps it,
    # and now holds only b (a moved out to _superseded/): a whole row set is what the partitions hold together
    assert (folder / "out" / "run=2026-11-28T02:00:00Z" / "_SUCCESS").is_file()
    assert partition_ids(folder, day(1)) == sorted(r["id"] for r in rows("b", 4))

    before = data_files(folder)
    same_tick = run_due(spec, now=day(3, hours=5))
    quiet_tick = run_due(spec, now=day(4, hours=0.01))
    assert [e.status for e in same_tick.entries + quiet_tick.entries] == ["empty", "empty"]
    assert "already handled" in same_tick.entries[0].note
    written = [json.loads(line) for line in (folder / "out" / "_runs.jsonl").read_text().splitlines()]
    assert {(e["status"], e["hash_version"]) for e in written if e["spec_hash"]} == {  # which kind of hash it is
        ("running", HASH_VERSION), ("succeeded", HASH_VERSION), ("empty", HASH_VERSION)}
    assert data_files(folder) == before  # nothing written but two ledger lines
    assert len(closing_lines(folder)) == 5

    # the read recipe of the README (Scheduled runs, "Reading all partitions")
    frame = pd.read_parquet(folder / "out")
    assert sorted(frame["id"]) == expected and frame.groupby("run", observed=True).size().to_dict() == {
        "2026-11-28T02:00:00Z": 4, "2026-11-29T02:00:00Z": 3, "2026-11-30T02:00:00Z": 13}
    query = (f"select count(*), count(distinct id), min(run) "
             f"from read_parquet('{folder}/out/run=*/*.parquet', hive_partitioning=true)")
    assert duckdb.sql(query).fetchall() == [(20, 20, datetime(2026, 11, 28, 2, 0))]


def test_a_file_copied_again_with_the_same_bytes_is_not_scored_again_by_the_next_tick(scored_on_day1, monkeypatch):
    """A landing folder fetched again every night (`gsutil cp`, `rsync` without -t, `cp` without -p): the same bytes
    with a new modification time. Each tick took every such file for changed input: scored again, its earlier rows
    superseded. Its bytes are compared with the digest its commit recorded, once (the next tick remembers them);
    a file whose bytes differ (same size) is still changed."""
    folder = scored_on_day1  # the first tick (a: 5 rows, b: 4) has run
    spec = make_job(folder, str(folder / "model"))
    a, b = folder / "in" / "a.jsonl", folder / "in" / "b.jsonl"
    for path in (a, b):
        fetched_again(path)
    runner = NoRay()
    quiet = run_due(spec, now=day(2, hours=0.01), runner=runner)
    assert runner.calls == [] and [e.status for e in quiet.entries] == ["empty"]
    assert sorted(all_ids(folder)) == sorted(r["id"] for r in rows("a", 5) + rows("b", 4))

    assert (folder / "out" / "_input_digests.json").exists()

    b.write_bytes(b.read_bytes().replace(b'"b1"', b'"b9"'))  # the same size, other bytes: changed
    from pipelines.schedule import executor

    read = []
    monkeypatch.setattr(executor, "read_bytes", lambda shard: read.append(shard.uri) or Path(shard.path).read_bytes())
    run_due(spec, now=day(3, hours=0.01), runner=runner)
    assert [call["shards"] for call in runner.calls] == [[str(b)]]
    assert read == [str(b)]  # a's digest was remembered from the tick before: a file fetched again is read once


def test_a_scheduled_auto_job_keeps_one_precision_over_its_runs(ray_session, classifier, tmp_path):
    """Each tick's new partition took quantization auto's kept decision anew: a decision made again since (the cache
    deleted, another node's cache) put two precisions in one job, and the ledger said only 'auto'. The job's first
    run decides; later runs with the same model keep it, and the ledger and `pipelines runs` say which."""
    raw = raw_job(tmp_path, classifier)
    raw["model"] = {"name": classifier, "quantization": "auto", "fidelity": {"rows": 12},
                    "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "in").mkdir()
    spec = spec_from_dict(raw)
    add_shard(tmp_path, "a.jsonl", rows("a", 12))
    run_due(spec, now=day(1, hours=0.01))
    first = json.loads((tmp_path / "out" / "run=2026-11-28T02:00:00Z" / "_job.json").read_text())["precision"]
    other = ({"quantization": "none", "dtype": "float32"} if first["quantization"] == "dynamic-int8"
             else {"quantization": "dynamic-int8", "dtype": "float32"})
    for kept in (tmp_path / "cache" / "precision").glob("*.json"):  # a decision made again, with another outcome
        kept.write_text(json.dumps({**json.loads(kept.read_text()), **other, "fidelity": None}))

    b = add_shard(tmp_path, "b.jsonl", rows("b", 12))
    from pipelines.fidelity import AUTO_MIN_AGREEMENT, _decision_path, _node_bf16, sample
    from pipelines.io.shards import list_shards

    shards = [s for s in list_shards([str(tmp_path / "in")]) if s.path == b]
    tick2 = _decision_path(spec, AUTO_MIN_AGREEMENT, sample(spec, shards, 12), _node_bf16(spec))  # tick 2's own sample
    tick2.write_text(json.dumps({**other, "fidelity": None, "why": "made again elsewhere"}))
    run_due(spec, now=day(2, hours=0.01))
    second = json.loads((tmp_path / "out" / "run=2026-11-29T02:00:00Z" / "_job.json").read_text())["precision"]
    assert second == first
    assert [e["precision"] for e in closing_lines(tmp_path)] == [first, first]
    label = first["quantization"] if first["quantization"] != "none" else first["dtype"]
    assert f"(auto: {label})" in render_table(Ledger(str(tmp_path / "out")).read())


def test_a_raised_bar_is_held_against_the_kept_precision_and_rescore_decides_again(ray_session, classifier, tmp_path):
    """model.fidelity is outside the spec's hash: a job whose min_agreement was raised from 0.99 to 0.999 kept its
    first run's dynamic-int8 (chosen at 0.995) on every later tick, with no check and no word. The first run keeps
    its check's figures with the precision; a tick whose bar they don't meet fails, writing nothing, and says so;
    --rescore decides again under the new bar."""
    from pipelines.fidelity import _decision_path, _node_bf16, sample
    from pipelines.io.shards import list_shards

    raw = raw_job(tmp_path, classifier)
    raw["model"] = {"name": classifier, "quantization": "auto", "fidelity": {"rows": 12, "min_agreement": 0.99},
                    "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "in").mkdir()
    spec = spec_from_dict(raw)
    add_shard(tmp_path, "a.jsonl", rows("a", 12))
    picked = sample(spec, list_shards([str(tmp_path / "in")]), 12)
    decision = _decision_path(spec, 0.99, picked, _node_bf16(spec))  # as if decided here before: int8 at 0.995
    decision.parent.mkdir(parents=True)
    check = {"task": "text-classification", "quantization": "dynamic-int8", "rows": 12, "measure": "label_agreement",
             "agreement": 0.995}
    decision.write_text(json.dumps({"quantization": "dynamic-int8", "dtype": "float32", "fidelity": check}))
    run_due(spec, now=day(1, hours=0.01))
    first = json.loads((tmp_path / "out" / "run=2026-11-28T02:00:00Z" / "_job.json").read_text())["precision"]
    assert first == {"quantization": "dynamic-int8", "dtype": "float32", "measure": "label_agreement",
                     "agreement": 0.995, "rows": 12, "bar": 0.99}

    raw["model"]["fidelity"]["min_agreement"] = 0.999
    raised = spec_from_dict(raw)
    assert raised.fingerprint() == spec.fingerprint()  # the same job: its precision is kept, or refused
    add_shard(tmp_path, "b.jsonl", rows("b", 12))
    report = run_due(raised, now=day(2, hours=0.01))
    [failure] = report.failures
    assert "label_agreement 0.9950 on 12 sampled rows" in failure and "min_agreement=0.999" in failure, failure
    assert "--rescore" in failure
    assert not list((tmp_path / "out" / "run=2026-11-29T02:00:00Z").rglob("*.parquet"))
    run_due(raised, now=day(2, hours=1), rescore=True)
    again = json.loads((tmp_path / "out" / "run=2026-11-29T03:00:00Z" / "_job.json").read_text())["precision"]
    assert again.get("agreement", 1.0) >= 0.999 and again.get("bar", 0.999) == 0.999


def test_a_kept_column_keeps_one_type_over_every_partition(ray_session, classifier, tmp_path):
    """Each run fixed its kept columns' types from its own input files: whole numbers one night and fractions or
    text the next gave partitions that pyarrow, pandas and Polars could not read as one table (`Float value 0.5
    was truncated`), and DuckDB read 0.5 as 0. A scheduled job's later runs keep the types of its earlier ones, as
    one output keeps them over its shards: a value that does not fit costs its row, with the reason."""
    import duckdb

    raw = raw_job(tmp_path, classifier)
    raw["input"]["columns_to_keep"] = ["n", "tag"]
    raw["errors"] = {"max_rate": 1.0}
    (tmp_path / "in").mkdir()
    spec = spec_from_dict(raw)
    add_shard(tmp_path, "a.jsonl", [{**r, "n": i, "tag": None} for i, r in enumerate(rows("a", 3))])
    run_due(spec, now=day(1, hours=0.01))
    add_shard(tmp_path, "b.jsonl", [{**r, "n": n, "tag": t} for r, n, t in zip(rows("b", 3), [7, None, 0.5],
                                                                                [None, "x", "y"])])
    run_due(spec, now=day(2, hours=0.01))

    table = pq.read_table(tmp_path / "out")
    got = {i: (n, t) for i, n, t in zip(*(table.column(c).to_pylist() for c in ("id", "n", "tag")))}
    assert got == {"a0": (0, None), "a1": (1, None), "a2": (2, None), "b0": (7, None), "b1": (None, "x")}
    query = f"select id, n from read_parquet('{tmp_path}/out/run=*/*.parquet', hive_partitioning=true) order by id"
    assert duckdb.sql(query).fetchall() == [("a0", 0), ("a1", 1), ("a2", 2), ("b0", 7), ("b1", None)]
    [error] = pq.read_table(next((tmp_path / "out").glob("run=2026-11-29*/_errors/*.parquet"))).to_pylist()
    assert error["id"] == "b2" and "column 'n' is double here but int64 in this job's output (value '0.5')" in (
        error["reason"])


def test_a_killed_run_is_completed_by_the_next_tick(ray_session, classifier, tmp_path, monkeypatch):
    spec = make_job(tmp_path, classifier)
    for name in "abc":
        add_shard(tmp_path, f"{name}.jsonl", rows(name, 4))

    killed_after_first_commit(monkeypatch, lambda: run_due(spec, now=day(1, hours=0.01)))
    [line] = ledger(tmp_path)
    assert line["status"] == "running" and len(line["inputs"]) == 3
    assert len(all_ids(tmp_path)) == 4  # one shard was committed before the kill

    add_shard(tmp_path, "d.jsonl", rows("d", 5))
    report = run_due(spec, now=day(2, hours=0.01))
    resumed, new = [e.to_json() for e in report.entries]
    assert (resumed["kind"], resumed["run"], resumed["attempt"]) == ("resume", "2026-11-28T02:00:00Z", 2)
    assert resumed["shards_this_run"] == 2 and resumed["rows_out"] == 12
    assert [i["uri"] for i in new["inputs"]] == [str(tmp_path / "in" / "d.jsonl")] and new["rows_out"] == 5
    ids = all_ids(tmp_path)
    assert sorted(ids) == sorted(r["id"] for n in "abcd" for r in rows(n, 5 if n == "d" else 4))
    assert len(ids) == len(set(ids)) == 17


def test_a_folder_listed_again_inside_the_input_location_renames_no_file(ray_session, classifier, tmp_path):
    """A file reached from two locations of input.paths, one inside the other (`[in, in/late]`: a folder already in the
    input named again, to make sure it is read), was named under the one listed last: `late/x.jsonl` became `x.jsonl`,
    a new name, so the tick scored its rows again into its partition while its first name's output stayed (gone):
    each of its rows twice in the output. (A file found under two spellings, `file://` and a plain path, kept its
    first name instead.) It keeps the name under the outer location, in any order, however it is spelled."""
    spec = make_job(tmp_path, classifier)
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    add_shard(tmp_path, "late/x.jsonl", rows("x", 4))
    [first] = run_due(spec, now=day(1, hours=0.01)).entries
    assert (first.status, first.rows_out) == ("succeeded", 7)

    inner = str(tmp_path / "in" / "late")
    again = spec_from_dict({**raw_job(tmp_path, classifier), "input": {"paths": [str(tmp_path / "in"), inner]}})
    [second] = run_due(again, now=day(2, hours=0.01)).entries
    ids = all_ids(tmp_path)
    assert sorted(ids) == sorted(r["id"] for n, k in (("a", 3), ("x", 4)) for r in rows(n, k)), ids
    assert second.status == "empty", second.to_json()
    for paths in ([inner, str(tmp_path / "in")], [f"file://{inner}", str(tmp_path / "in")],
                  [str(tmp_path / "in"), f"file://{inner}/x.jsonl"]):
        assert [s.name for s in list_shards(paths)] == ["a.jsonl", "late/x.jsonl"], paths


def test_a_run_and_a_scheduler_started_together_on_one_output_leave_every_row_once(
    ray_session, classifier, tmp_path, monkeypatch
):
    """`pipelines run` and `pipelines schedule --once` on one new output.path: each looked at the folder before
    taking its lock, and the two take different locks, so both went on and every row was in the output twice
    (the run's files at the top, the scheduler's partition beside them). Each now looks again once it holds its own
    lock, for the other's lock held or its files: of two started together one is refused, whichever started first,
    and the lock file the refused one leaves behind refuses nothing later."""
    import pipelines.cluster.connect as connect_module
    import pipelines.runner as runner_module
    import pipelines.schedule.executor as executor_module
    from pipelines.runner import run_job

    spec = make_job(tmp_path, classifier)
    add_shard(tmp_path, "a.jsonl", rows("a", 5))
    want = sorted(r["id"] for r in rows("a", 5))

    # 1. the scheduler runs while the run starts its Ray (before the run has its lock): the run is refused
    connect = connect_module.connect

    def a_scheduler_meanwhile(address, spec_):
        run_due(spec, now=DAY1, runner=Committing())
        return connect(address, spec_)

    monkeypatch.setattr(connect_module, "connect", a_scheduler_meanwhile)
    refusal = ""
    try:
        run_job(spec)
    except PipelineError as exc:
        refusal = str(exc)
    assert sorted(all_ids(tmp_path)) == want  # each row twice: the scheduler's partition and the run's files
    assert "is a scheduled job's output (its ledger _runs.jsonl is there)" in refusal
    assert not (tmp_path / "out" / "_job.json").exists()
    add_shard(tmp_path, "b.jsonl", rows("b", 2))  # the refused run's lock file left behind keeps no tick out
    assert run_due(spec, now=day(2), runner=Committing()).entries[-1].status == "succeeded"
    monkeypatch.setattr(connect_module, "connect", connect)
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "in" / "b.jsonl").unlink()

    # 2. the run holds its lock when the scheduler starts (before the run's first file): the scheduler is refused
    model_files = runner_module.model_files
    refused = []

    def a_scheduler_now(*args, **kwargs):
        with pytest.raises(PipelineError, match=r"is `pipelines run`'s output \(another run .* is in progress") as said:
            run_due(spec, now=DAY1, runner=Committing())
        refused.append(said.value)
        return model_files(*args, **kwargs)

    monkeypatch.setattr(runner_module, "model_files", a_scheduler_now)
    run_job(spec)
    assert refused and sorted(all_ids(tmp_path)) == want
    assert not list((tmp_path / "out").glob("run=*"))
    monkeypatch.setattr(runner_module, "model_files", model_files)
    shutil.rmtree(tmp_path / "out")

    # 3. the whole run happens between the scheduler's first look and its lock: its second look refuses it
    job_lock = executor_module.job_lock

    def a_run_meanwhile(spec_):
        run_job(spec)
        return job_lock(spec_)

    monkeypatch.setattr(executor_module, "job_lock", a_run_meanwhile)
    with pytest.raises(PipelineError, match=r"holds the output of `pipelines run` \((_job.json|part-.*)\)"):
        run_due(spec, now=DAY1, runner=Committing())
    assert sorted(all_ids(tmp_path)) == want
    add_shard(tmp_path, "b.jsonl", rows("b", 2))  # the refused scheduler's lock file keeps no run out
    assert run_job(spec).shards_this_run == 1
    assert sorted(all_ids(tmp_path)) == sorted(want + [r["id"] for r in rows("b", 2)])
    monkeypatch.setattr(executor_module, "job_lock", job_lock)
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "in" / "b.jsonl").unlink()

    # 4. a lock file already there (an earlier run's) is taken before Ray's start; the scheduler runs just before
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_run.lock").touch()
    present = JobLock.present

    def a_scheduler_before_the_lock(self):
        if self.path.name == "_run.lock" and not (tmp_path / "out" / "_runs.jsonl").exists():
            run_due(spec, now=DAY1, runner=Committing())
        return present(self)

    monkeypatch.setattr(JobLock, "present", a_scheduler_before_the_lock)
    with pytest.raises(PipelineError, match=r"is a scheduled job's output \(its ledger _runs.jsonl is there\)"):
        run_job(spec)
    assert sorted(all_ids(tmp_path)) == want


def test_a_run_meeting_a_new_scheduled_output_with_only_its_lock_held_is_refused_as_a_scheduled_jobs(
    ray_session, classifier, tmp_path
):
    """A run started a moment after `pipelines schedule` on a new output.path, while the scheduler holds its lock
    and has written nothing else yet: refused as a folder of someone else's files (`not empty and holds no results
    of this project`), where the README promises `… is a scheduled job's output …`. Now said so; and the lock file a
    scheduler leaves behind, held by nobody, refuses nothing (as a refused run's lock file refuses no tick)."""
    from pipelines.runner import run_job

    spec = make_job(tmp_path, classifier)
    add_shard(tmp_path, "a.jsonl", rows("a", 5))
    with job_lock(spec):  # the scheduler, between its lock and its ledger
        with pytest.raises(PipelineError, match=r"is a scheduled job's output \(.*_schedule.lock"):
            run_job(spec)
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["_schedule.lock"]
    assert run_job(spec).shards_this_run == 1
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for r in rows("a", 5))


def test_an_output_inside_a_scheduled_jobs_root_is_refused_but_its_partitions_are_not(tmp_path):
    """A scheduled job's root is an output too: a run whose output.path lies under it (beside its partitions) would
    be read with them; its own partitions lie there by design."""
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    run_due(spec, now=DAY1, runner=Committing())
    with pytest.raises(PipelineError, match=r"lies inside another job's output, .*out \(it holds _runs.jsonl\)"):
        OutputDir(str(tmp_path / "out" / "extra")).check_not_inside_another()
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    assert run_due(spec, now=day(2), runner=Committing()).entries[-1].status == "succeeded"


def test_pipelines_run_on_a_scheduled_jobs_output_says_whose_output_it_is(classifier, tmp_path):
    """`pipelines run JOB` (a one-off backfill, say) on the output that `pipelines schedule JOB --once` ticks: refused,
    but as `is not empty and holds no results of this project; choose an empty or new output.path`, though it holds
    nothing but this project's partitions and ledger; `pipelines plan` said the same. Both say whose it is now."""
    from pipelines.io.shards import list_shards
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan
    from pipelines.runner import run_job

    raw = raw_job(tmp_path, classifier)
    del raw["schedule"]  # each `--once` a tick
    (tmp_path / "in").mkdir()
    spec = spec_from_dict(raw)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1, hours=0.01), runner=Committing())
    scheduled = r"output.path .*out is a scheduled job's output \(its ledger _runs.jsonl is there\)"
    with pytest.raises(PipelineError, match=scheduled):
        run_job(spec)
    shards = list_shards(spec.input.paths, spec.input.format)
    plan = output_plan(spec, shards, survey(shards))
    assert plan.state == "refused" and re.search(scheduled, plan.note)


def test_a_retry_of_a_failed_tick_resumes_its_run(tmp_path):
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    runner = NoRay(fail_first=1)
    report = run_due(spec, now=day(1, hours=0.01), runner=runner)
    assert len(report.failures) == 1 and "resumes the run" in report.failures[0]
    assert [e["status"] for e in ledger(tmp_path)] == ["running", "failed"]
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    run_due(spec, now=day(1, hours=0.5), runner=runner)  # the same tick again (e.g. a retry): resume only
    assert [(c["output"][-24:], len(c["shards"])) for c in runner.calls] == [("run=2026-11-28T02:00:00Z", 1)] * 2
    assert closing_lines(tmp_path)[-2]["kind"] == "resume" and closing_lines(tmp_path)[-1]["status"] == "empty"


def test_a_full_disk_under_a_scheduled_job_is_one_line_and_its_run_is_resumed(tmp_path, monkeypatch):
    """A run failing on a full disk was recorded with a ledger line written to that same disk: that write's OSError
    replaced the run's one line (a traceback, exit 1). The failure is said; its 'running' line is resumed later."""
    from collections import Counter

    from pipelines import faults

    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    monkeypatch.setattr(faults, "_reached", Counter())
    monkeypatch.setenv("PIPELINES_WRITE_FAILS_AT", "_runs.jsonl:2")  # the run's 'failed' line: the disk is full
    report = run_due(spec, now=day(1, hours=0.01), runner=NoRay(fail_first=1))
    assert len(report.failures) == 1 and "the cluster went away" in report.failures[0]
    assert [e["status"] for e in ledger(tmp_path)] == ["running"]  # left to be resumed, as after a kill

    monkeypatch.setattr(faults, "_reached", Counter())
    monkeypatch.setenv("PIPELINES_WRITE_FAILS_AT", "_runs.jsonl:1")  # the disk still full: the first line fails
    with pytest.raises(PipelineError, match="no space left on the disk.*run the same command again"):
        run_due(spec, now=day(1, hours=0.5), runner=NoRay())
    monkeypatch.delenv("PIPELINES_WRITE_FAILS_AT")
    runner = NoRay()
    run_due(spec, now=day(1, hours=0.6), runner=runner)
    assert [(e["kind"], e["status"]) for e in closing_lines(tmp_path)] == [("resume", "succeeded"), ("tick", "empty")]
    assert len(runner.calls) == 1


def test_a_run_failing_with_any_error_does_not_hold_up_new_input(tmp_path):
    """Not only the project's own errors: a run that fails with anything else (a worker's error, a bug) is a
    failed run too: recorded, reported, resumed next time, and new input is scored all the same."""
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "bad.jsonl", rows("x", 2))
    runner = NoRay(fail_with="bad.jsonl", error=RuntimeError)
    first = run_due(spec, now=day(1, hours=0.01), runner=runner)
    assert "RuntimeError" in first.failures[0] and "resumes the run" in first.failures[0]
    add_shard(tmp_path, "new.jsonl", rows("n", 2))
    second = run_due(spec, now=day(2, hours=0.01), runner=runner)
    assert [(e.kind, e.status) for e in second.entries] == [("resume", "failed"), ("tick", "succeeded")]
    assert [Path(uri).name for uri in runner.calls[-1]["shards"]] == ["new.jsonl"]


def test_without_a_schedule_every_once_is_a_tick(tmp_path):
    raw = raw_job(tmp_path, fake_model(tmp_path))
    del raw["schedule"]
    (tmp_path / "in").mkdir()
    spec = spec_from_dict(raw)
    runner = NoRay()
    first = run_due(spec, now=day(1, hours=5.5), runner=runner).entries[0].to_json()
    assert (first["tick"], first["status"]) == ("2026-11-28T07:30:00Z", "empty")  # an empty landing folder: no error
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    assert run_due(spec, now=day(1, hours=6), runner=runner).entries[0].run == "2026-11-28T08:00:00Z"
    again = run_due(spec, now=day(1, hours=6), runner=runner).entries[0]
    assert again.status == "empty" and "already handled" in again.note
    assert len(runner.calls) == 1
    with pytest.raises(PipelineError, match="no schedule section"):
        serve(spec, runner=runner)


def test_an_output_inside_the_input_folder_is_not_taken_for_new_input(tmp_path):
    """The README: an output path inside an input folder is left out of the input, scheduled jobs too (their
    partitions' part files would otherwise be new shards at the next tick, and be scored again and again)."""
    raw = raw_job(tmp_path, fake_model(tmp_path))
    raw["output"]["path"] = str(tmp_path / "in" / "scores")
    (tmp_path / "in").mkdir()
    spec = spec_from_dict(raw)
    runner = NoRay()
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    [first] = run_due(spec, now=day(1, hours=0.01), runner=runner).entries
    write_parquet(tmp_path / "in" / "scores" / f"run={first.run}" / "part-0a1b2c3d4e5f-00000.parquet", rows("a", 2))
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    run_due(spec, now=day(2, hours=0.01), runner=runner)
    # the stand-in commits nothing, so a is still new at the second tick; the part file is no input
    assert [[Path(uri).name for uri in call["shards"]] for call in runner.calls] == [["a.jsonl"], ["a.jsonl", "b.jsonl"]]


# one run at a time -----------------------------------------------------------------------------


def test_overlapping_runs_are_refused_and_a_killed_holders_lock_is_recovered(tmp_path):
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    runner = NoRay()
    with job_lock(spec):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            run_due(spec, now=day(1), runner=runner)
    assert runner.calls == [] and ledger(tmp_path) == []

    lock_file = tmp_path / "out" / "_schedule.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pipelines.output.lock import JobLock; held = JobLock(sys.argv[1]).acquire(); "
                               "print('locked', flush=True); sys.stdin.read()", str(lock_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            run_due(spec, now=day(1), runner=runner)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert json.loads(lock_file.read_text())["pid"] == holder.pid  # the dead holder's record is still there
    run_due(spec, now=day(1), runner=runner)
    assert len(runner.calls) == 1 and lock_file.read_text() == ""
    with JobLock(lock_file):  # released: free for the next run
        pass


# model lineage and --rescore -------------------------------------------------------------------


def test_a_model_change_is_in_the_ledger_and_warned_about(tmp_path):
    import logging

    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1), runner=NoRay())
    (Path(spec.model.name) / "config.json").write_text('{"retrained": true}')
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("pipelines.schedule").addHandler(handler)
    try:
        run_due(spec, now=day(2), runner=NoRay())
    finally:
        logging.getLogger("pipelines.schedule").removeHandler(handler)
    first, second = closing_lines(tmp_path)
    assert first["model"]["content_hash"] != second["model"]["content_hash"]
    assert second["model_changed"] == {"from": first["model"], "to": second["model"], "since": first["run"]}
    assert any("model changed since run 2026-11-28T02:00:00Z" in w and "--rescore" in w for w in warnings)
    assert "model changed" in render_table(Ledger(str(tmp_path / "out")).read())


def test_a_failed_runs_ledger_line_counts_what_its_partition_holds(tmp_path):
    """A failed run's ledger line had no counts (`pipelines runs`: blank; the invocation's line: `0 rows in the
    partition (0 quarantined)`, the report's charts: 0), though its partition held the shards it committed."""
    runner = Committing()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    [failed] = run_due(spec, now=day(1, hours=0.01), runner=runner).entries
    assert failed.status == "failed"
    assert (failed.rows_in, failed.rows_out, failed.errors) == (3, 3, 0)
    assert "3" in render_table(Ledger(str(tmp_path / "out")).read()).splitlines()[-1].split()


def test_a_failed_attempt_says_what_it_committed_itself(tmp_path):
    """A run failing over one unreadable file had committed the others, but its line said `failed, scored new input:
    0 shard(s) this run, 5 rows in the partition`: a failed line had no shards_this_run, so each night's log of a run
    that keeps failing read as if its attempts did nothing. Now the attempt's own shards and rows, as a success says."""
    from pipelines.schedule.executor import describe

    runner = Committing()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    [failed] = run_due(spec, now=day(1, hours=0.01), runner=runner).entries
    assert (failed.status, failed.shards_this_run, failed.rows_this_run, failed.rows_in) == ("failed", 2, 5, 5)
    assert "failed, scored new input: 2 shard(s) this run, 5 rows in the partition" in describe(failed)
    [again] = run_due(spec, now=day(1, hours=0.5), runner=runner).entries[:1]  # the resume commits nothing more
    assert (again.kind, again.status, again.shards_this_run, again.rows_this_run, again.rows_in) == (
        "resume", "failed", 0, 0, 5)
    run_due(spec, now=day(2, hours=0.01), runner=runner)  # fails once more, after committing nothing
    Path(tmp_path / "in" / "bad.jsonl").unlink()
    given_up = abandon(spec, failed.run)  # scores nothing: no attempt's counts (the report charts rows per attempt)
    assert (given_up.status, given_up.shards_this_run, given_up.rows_this_run) == ("abandoned", None, None)


class OverBudget(Committing):
    """Commits as Committing does, then fails as a run over its error budget does while its partition holds a shard
    with quarantined rows (ids starting with `x`)."""

    def __call__(self, spec, **kwargs) -> RunSummary:
        summary = super().__call__(spec, **kwargs)
        for key, record in OutputDir(spec.output.path).commits().items():
            if record.errors:
                raise PipelineError(f"{record.errors} row(s) were quarantined, over errors.max_rate (shard {key})")
        return summary


def test_a_run_failing_over_a_shard_that_is_fixed_succeeds_in_the_invocation_that_scores_the_fix(tmp_path):
    """A run over its error budget because of one file: the file is fixed, and the next invocation scores the new
    version (its old one leaves the failing run's partition), but it had resumed the failing run first, beside the
    old version, so it failed once more, exited 2 and advised --abandon; the run was marked succeeded only by the
    invocation after. The run is now tried again once the new work has taken a shard out of its partition."""
    runner = OverBudget()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "b.jsonl", [*rows("b", 1), {"id": "x0", "text": "bad"}])
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures  # the budget: b's bad row
    add_shard(tmp_path, "b.jsonl", [*rows("b", 1), {"id": "b9", "text": "fixed"}])
    fixed = run_due(spec, now=day(2, hours=0.01), runner=runner)
    assert fixed.failures == []
    assert [e.status for e in closing_lines_of(tmp_path, "2026-11-28T02:00:00Z")] == ["failed", "failed", "succeeded"]
    assert sorted(all_ids(tmp_path)) == ["a0", "a1", "b0", "b9"]


def test_a_run_over_its_budget_because_of_a_removed_file_says_why_it_keeps_failing(tmp_path):
    """A run over its error budget because of one file's quarantined rows: the user removes the file, as the README
    says to, but its committed output (its quarantined rows) stays in the run's partition, as a gone file's does, so
    the run fails again at every try, with the same budget line and no word of why; after three tries, the generic
    --abandon advice. Said now at the first such try, with what to do."""
    runner = OverBudget()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 4))
    bad = add_shard(tmp_path, "b.jsonl", [*rows("b", 1), {"id": "x0", "text": "bad"}])  # 1 of 6 rows: over 10%
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures
    Path(bad).unlink()
    [failure] = run_due(spec, now=day(2, hours=0.01), runner=runner).failures
    assert re.search(r"The quarantined rows of b.jsonl, whose file is gone from the input, put the run over its error "
                     r"budget.*`pipelines schedule JOB --abandon 2026-11-28T02:00:00Z`", failure)
    add_shard(tmp_path, "b.jsonl", [*rows("b", 1), {"id": "b9", "text": "fixed"}])  # put back, fixed, as it says
    assert run_due(spec, now=day(3, hours=0.01), runner=runner).failures == []
    assert sorted(all_ids(tmp_path)) == ["a0", "a1", "a2", "a3", "b0", "b9"]


def closing_lines_of(tmp_path: Path, run: str) -> list:
    return [e for e in Ledger(str(tmp_path / "out")).read() if e.run == run and e.status != "running"]


def test_a_spec_change_shows_in_the_runs_table(tmp_path):
    """The ledger recorded a spec change (`spec_changed`) and the README says the mix is made visible, but
    `pipelines runs` showed only a model change."""
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1), runner=NoRay())
    changed = spec.model_copy(deep=True)
    changed.output.prediction_prefix = "p_"
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    [entry] = run_due(changed, now=day(2), runner=NoRay()).entries
    assert entry.spec_changed is not None
    assert "spec changed since run 2026-11-28T02:00:00Z" in render_table(Ledger(str(tmp_path / "out")).read())


def test_a_ledger_written_before_the_hash_covered_the_prefix_is_no_spec_change(tmp_path):
    """The spec hash covers output.prediction_prefix since the ledger's earlier lines were written: the same spec
    must not be reported as changed (with --rescore advised) at the next tick."""
    spec = make_job(tmp_path, fake_model(tmp_path))
    spec.output.prediction_prefix = "p_"
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1), runner=NoRay())
    unprefixed = spec.model_copy(deep=True)
    unprefixed.output.prediction_prefix = ""
    path = tmp_path / "out" / "_runs.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:  # as the lines were written then: the hash without the prefix, no version
        line.pop("hash_version")
        line["spec_hash"] = unprefixed.fingerprint()
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    [entry] = run_due(spec, now=day(2), runner=NoRay()).entries
    assert entry.status == "succeeded" and entry.spec_changed is None


def test_rescore_scores_every_shard_with_the_new_model_and_supersedes_older_partitions(scored_on_day1):
    folder = scored_on_day1  # a (5 rows) and b (4) scored at the tick of day 1
    spec = make_job(folder, str(folder / "model"))
    config = folder / "model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "retrained_on": "2026-11-28"}))
    add_shard(folder, "c.jsonl", rows("c", 2))
    report = run_due(spec, now=day(1, hours=3), rescore=True)  # off schedule: the tick was handled
    [rescored] = [e.to_json() for e in report.entries]
    assert rescored["kind"] == "rescore" and rescored["run"] == "2026-11-28T05:00:00Z"
    assert len(rescored["inputs"]) == 3 and rescored["rows_out"] == 11  # a and b again, and the new c
    assert rescored["model_changed"]["since"] == "2026-11-28T02:00:00Z"
    out = folder / "out"
    assert sorted(p.name for p in out.glob("run=*")) == ["run=2026-11-28T05:00:00Z"]
    assert [p.name for p in (out / "_superseded").iterdir()] == ["run=2026-11-28T02:00:00Z"]
    assert sorted(all_ids(folder)) == sorted(r["id"] for r in rows("a", 5) + rows("b", 4) + rows("c", 2))
    table = render_table(Ledger(str(folder / "out")).read())
    assert "superseded by rescore" in table and "changed shard" not in table  # a rescore replaces every shard
    assert run_due(spec, now=day(2, hours=0.01)).entries[0].status == "empty"  # then incremental again


def test_a_run_that_keeps_failing_does_not_stop_new_input_and_can_be_abandoned(tmp_path):
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))  # unreadable (to the stand-in): its run fails, every time
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures
    for n in (2, 3):
        add_shard(tmp_path, f"new{n}.jsonl", rows(f"n{n}", 2))
        report = run_due(spec, now=day(n, hours=0.01), runner=runner)
        assert [e.status for e in report.entries] == ["failed", "succeeded"]  # resumed and failed; new input scored
        assert [Path(i.uri).name for i in report.entries[1].inputs] == [f"new{n}.jsonl"]
    assert "--abandon 2026-11-28T02:00:00Z" in report.failures[0]  # failed again and again: what to do about it
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for r in rows("a", 2) + rows("n2", 2) + rows("n3", 2))

    assert abandon(spec, "2026-11-28T02:00:00Z").status == "abandoned"
    after = run_due(spec, now=day(4, hours=0.01), runner=runner)
    # no longer resumed; a was committed there and stays; bad was not, so a new run takes it (and fails on it)
    [line] = after.entries
    assert (line.kind, line.status, [Path(i.uri).name for i in line.inputs]) == ("tick", "failed", ["bad.jsonl"])
    assert len(all_ids(tmp_path)) == 6
    with pytest.raises(PipelineError, match="not unfinished"):
        abandon(spec, "2026-11-29T02:00:00Z")


def test_the_plan_of_a_scheduled_job_says_what_a_tick_would_score(tmp_path):
    """`pipelines plan` of a scheduled job: the files a tick due now scores (an unfinished run's and new ones)."""
    from pipelines.io.shards import list_shards
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    def planned():
        shards = list_shards(spec.input.paths, spec.input.format, empty_is_no_input=True)
        return output_plan(spec, shards, survey(shards))

    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "b.jsonl", rows("b", 3))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    runner.fail_first.add("2026-11-29T02:00:00Z")
    add_shard(tmp_path, "c.jsonl", rows("c", 4))
    assert run_due(spec, now=day(2, hours=0.01), runner=runner).failures  # c's run failed: a tick resumes it
    add_shard(tmp_path, "d.jsonl", rows("d", 5))
    add_shard(tmp_path, "b.jsonl", rows("b", 6))  # b changed since it was scored
    plan = planned()
    assert (plan.state, plan.shards_done, plan.rows_done, plan.shards_todo, plan.rows_todo) == ("scheduled", 1, 2, 3, 15)
    assert plan.note.endswith("a tick now scores 3 file(s), 15 rows, 1 unfinished run(s) finished first")
    before = len(all_ids(tmp_path))
    runner.fail_first.clear()
    run_due(spec, now=day(3, hours=0.01), runner=runner)
    assert len(all_ids(tmp_path)) - before == 15 - 3  # b's 3 earlier rows moved to _superseded/
    after = planned()
    assert (after.shards_done, after.shards_todo, after.rows_todo) == (4, 0, 0)


def test_a_file_an_unfinished_run_committed_fetched_again_stays_that_runs(tmp_path):
    """A failing run committed a; a is fetched again (same bytes, new time): the resume took it for changed and left
    it out, and the next new work scored it again in a partition of its own, retiring the first output."""
    from pipelines.io.shards import list_shards
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    runner, model = Committing(digests=True), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    a = Path(add_shard(tmp_path, "a.jsonl", rows("a", 2)))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures  # a committed, bad not
    fetched_again(a)
    shards = list_shards(spec.input.paths, spec.input.format, empty_is_no_input=True)
    plan = output_plan(spec, shards, survey(shards))
    assert (plan.shards_todo, plan.rows_todo) == (1, 1)  # bad only
    second = run_due(spec, now=day(2, hours=0.01), runner=runner)
    assert [(e.kind, e.status) for e in second.entries] == [("resume", "failed"), ("tick", "empty")]
    assert [p.name for p in (tmp_path / "out").glob("run=*")] == ["run=2026-11-28T02:00:00Z"]
    assert sorted(all_ids(tmp_path)) == ["a0", "a1"]


def test_a_file_fetched_again_whose_record_has_no_digest_is_scored_again(tmp_path):
    """Commits recorded before digests were (or a file unreadable when compared): compared by size and time, as
    before; the new version's output replaces the old one, each row once."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    a = Path(add_shard(tmp_path, "a.jsonl", rows("a", 2)))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    fetched_again(a)
    [entry] = run_due(spec, now=day(2, hours=0.01), runner=runner).entries
    assert (entry.status, [i.name for i in entry.inputs or []], list(entry.replaces.values())) == (
        "succeeded", ["a.jsonl"], ["2026-11-28T02:00:00Z"])
    assert sorted(all_ids(tmp_path)) == ["a0", "a1"]


def test_a_shard_that_changes_after_a_failing_run_committed_it_is_scored_again(ray_session, classifier, tmp_path):
    """A file still being written when a tick read it: its cut-off last line was quarantined, which put the run
    over ``errors.max_rate``, so the run failed and holds its shards. Once the file was finished, the resume left
    it out (changed since it was committed there) and new work left it out too (held by the failing run): the
    row stayed unscored, and the run failed on the old quarantine at every tick, until abandoned."""
    spec = make_job(tmp_path, classifier)
    add_shard(tmp_path, "a.jsonl", rows("a", 5))
    b = tmp_path / "in" / "b.jsonl"
    finished = b"".join(json.dumps(r).encode() + b"\n" for r in rows("b", 3))
    b.write_bytes(finished[:-20])  # the writer is not done: the last line is cut off
    first = run_due(spec, now=day(1, hours=0.01))
    assert first.failures and "over errors.max_rate" in first.failures[0]

    b.write_bytes(finished)
    second = run_due(spec, now=day(2, hours=0.01))  # the resume fails once more on b's old quarantine; b is scored
    ids = all_ids(tmp_path)  # again, and the run, tried once more without b's old version, succeeds
    assert sorted(ids) == sorted(r["id"] for r in rows("a", 5) + rows("b", 3)) and len(ids) == len(set(ids))
    assert not list((tmp_path / "out" / "run=2026-11-28T02:00:00Z").glob("_errors/*"))  # retired with b's old rows
    assert not second.failures and [(e.kind, e.status) for e in second.entries] == [
        ("resume", "failed"), ("tick", "succeeded"), ("resume", "succeeded")]
    third = run_due(spec, now=day(3, hours=0.01))
    assert not third.failures and [e.kind for e in third.entries] == ["tick"]
    assert sorted(all_ids(tmp_path)) == sorted(ids)


def test_a_changed_shard_taken_from_a_failing_run_stays_once_when_both_fail_and_one_is_abandoned(tmp_path):
    """A shard that grows twice: R1 scores its second version (retiring R0's) and fails on another file; R2 takes
    its third version from R1 (retiring R1's) and fails too. R1's resume then found the shard in none of its
    commits and scored it again beside R2's (rows twice), and abandoning R1 brought R0's version back from
    _superseded/ (rows twice, for good)."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)  # R0
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    assert run_due(spec, now=day(2, hours=0.01), runner=runner).failures  # R1: a committed, bad not
    add_shard(tmp_path, "a.jsonl", rows("a", 4))
    add_shard(tmp_path, "bad2.jsonl", rows("y", 1))
    second = run_due(spec, now=day(3, hours=0.01), runner=runner)  # R1 resumed, fails on bad; R2 takes a and bad2, fails on bad2
    assert [e.status for e in second.entries] == ["failed", "failed"]
    expected = sorted(r["id"] for r in rows("a", 4))
    assert sorted(all_ids(tmp_path)) == expected
    third = run_due(spec, now=day(4, hours=0.01), runner=runner)  # both resumed: R1 must leave a to R2
    assert [e.status for e in third.entries] == ["failed", "failed", "empty"]
    assert sorted(all_ids(tmp_path)) == expected
    abandon(spec, "2026-11-29T02:00:00Z")
    assert sorted(all_ids(tmp_path)) == expected
    abandon(spec, "2026-11-30T02:00:00Z")
    for name in ("bad.jsonl", "bad2.jsonl"):
        (tmp_path / "in" / name).unlink()
    run_due(spec, now=day(5, hours=0.01), runner=runner)
    assert sorted(all_ids(tmp_path)) == expected


def test_a_shard_handed_back_by_an_abandoned_run_is_scored_by_the_run_it_was_taken_from(tmp_path):
    """A later run that is abandoned before it commits a shard hands that shard back. Without that, a run redone
    whole (its model changed) dropped the shard and left it out as taken, and abandoning that run then did not
    bring the earlier version back either: the rows were in no partition, for good."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "k.jsonl", rows("k", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    (Path(model) / "config.json").write_text('{"v": 2}')
    assert run_due(spec, now=day(1, hours=3), rescore=True, runner=runner).failures  # RS1: commits k, fails on bad
    (Path(model) / "config.json").write_text('{"v": 3}')
    runner.fail_first.add("2026-11-28T06:00:00Z")
    assert run_due(spec, now=day(1, hours=4), rescore=True, runner=runner).failures  # RS2 replaces RS1's k; fails
    abandon(spec, "2026-11-28T06:00:00Z")
    run_due(spec, now=day(2, hours=0.01), runner=runner)  # RS1 redone whole (v2 -> v3): k again, bad fails
    assert sorted(all_ids(tmp_path)) == ["k0", "k1"]
    abandon(spec, "2026-11-28T05:00:00Z")
    (tmp_path / "in" / "bad.jsonl").unlink()
    run_due(spec, now=day(3, hours=0.01), runner=runner)
    assert sorted(all_ids(tmp_path)) == ["k0", "k1"]


def changed_shard_taken_by_a_failing_run(tmp_path: Path) -> tuple[Committing, str, JobSpec]:
    """R1 commits k and fails on bad; k changes and R2 takes it over from R1, failing before it commits anything."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "k.jsonl", rows("k", 2))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures  # R1: k committed, bad not
    add_shard(tmp_path, "k.jsonl", rows("k", 3))
    runner.fail_first.add("2026-11-29T02:00:00Z")
    run_due(spec, now=day(2, hours=0.01), runner=runner)  # R2 takes the changed k from R1, fails before committing
    return runner, model, spec


def test_a_changed_shard_handed_back_by_an_abandoned_run_is_scored_when_its_holder_is_redone(tmp_path):
    runner, model, spec = changed_shard_taken_by_a_failing_run(tmp_path)
    abandon(spec, "2026-11-29T02:00:00Z")
    (Path(model) / "config.json").write_text('{"v": 2}')
    run_due(spec, now=day(3, hours=0.01), runner=runner)  # R1 redone whole: k must be among its shards
    assert sorted(all_ids(tmp_path)) == ["k0", "k1", "k2"]


def test_a_shard_a_failing_later_run_took_over_keeps_an_output_while_its_holder_is_redone_whole(tmp_path):
    """R1 commits k and fails; k changes and R2 takes it over, failing before its commit of k. The model changes,
    and R1's resume is redone whole: it cleared its partition, k's old output with it, and left k to R2 (taken
    over). While R2 kept failing, k's rows were in no partition at all, tick after tick."""
    runner, model, spec = changed_shard_taken_by_a_failing_run(tmp_path)
    (Path(model) / "config.json").write_text('{"v": 2}')
    for n in (3, 4):  # R1 redone whole (fails on bad again), R2 fails again: k keeps one output all along
        assert [e.status for e in run_due(spec, now=day(n, hours=0.01), runner=runner).entries][:2] == ["failed"] * 2
        assert sorted(all_ids(tmp_path)) == ["k0", "k1", "k2"]
    runner.fail_first.clear()
    run_due(spec, now=day(5, hours=0.01), runner=runner)  # R2 commits k: the version R1 holds moves away
    assert sorted(all_ids(tmp_path)) == ["k0", "k1", "k2"]
    abandon(spec, "2026-11-28T02:00:00Z")
    (tmp_path / "in" / "bad.jsonl").unlink()
    run_due(spec, now=day(6, hours=0.01), runner=runner)
    assert sorted(all_ids(tmp_path)) == ["k0", "k1", "k2"]


def test_a_run_redone_whole_for_a_new_model_is_not_redone_again_at_its_next_resume(tmp_path, monkeypatch):
    """A resume compared the current model with the run's first attempt's: once the model changed, every later
    attempt of a run that kept failing cleared its partition and scored it whole again, shards the new model had
    scored too, and a kill in one of them left those shards' rows in no partition until an attempt succeeded."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures  # a committed, bad not
    (Path(model) / "config.json").write_text('{"v": 2}')
    assert run_due(spec, now=day(2, hours=0.01), runner=runner).failures  # redone whole with the new model
    cleared = []
    clear = OutputDir.clear
    monkeypatch.setattr(OutputDir, "clear", lambda self: cleared.append(self.root) or clear(self))
    assert run_due(spec, now=day(3, hours=0.01), runner=runner).failures  # fails on bad again: a is kept
    assert cleared == []
    resumes = [e for e in ledger(tmp_path) if e["kind"] == "resume" and e["status"] == "running"]
    assert [e["note"] for e in resumes] == ["redone with the current model/spec", ""]
    assert sorted(all_ids(tmp_path)) == ["a0", "a1", "a2"]


def test_the_plan_of_a_scheduled_job_counts_what_a_redo_with_a_new_model_has_done(tmp_path):
    """After a failing run was redone whole with a new model, `pipelines plan` took the run's first model for the
    current one, so it counted the shards the redo had committed as to do again."""
    from pipelines.io.shards import list_shards
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures
    (Path(model) / "config.json").write_text('{"v": 2}')
    assert run_due(spec, now=day(2, hours=0.01), runner=runner).failures  # redone whole: a committed again
    shards = list_shards(spec.input.paths, spec.input.format, empty_is_no_input=True)
    plan = output_plan(spec, shards, survey(shards))
    assert (plan.shards_todo, plan.rows_todo) == (1, 1)  # bad only


def test_a_model_whose_files_are_unknown_here_is_compared_by_the_ledger():
    """Where this host can't tell the model's files (a hub id not in its cache: no commit), the partition's recorded
    files were compared with nothing, and a resume kept another model's rows beside the new model's."""
    from pipelines.schedule.planner import PartitionState, Planner
    from pipelines.schedule.ticks import Decision

    run = "2026-11-28T02:00:00Z"
    old = {"name": "org/model", "revision": "main", "quantization": "none", "dtype": "auto", "commit": "a" * 40}
    new = {**old, "commit": None}  # main has moved on, and this host's cache does not have it
    history = History([LedgerEntry(tick=run, run=run, status="running", model=old)])
    partition = PartitionState("hash", {}, {"commit": "a" * 40})
    decision = Decision("run", DAY1)
    assert Planner(history, [], new, "hash").resume(run, decision, partition).overwrite
    assert not Planner(history, [], old, "hash").resume(run, decision, partition).overwrite


def test_a_partition_is_redone_whole_until_the_new_model_has_scored_it_and_no_more(
    ray_session, classifier, tmp_path, monkeypatch
):
    """With real runs: the partition's _job.json says which model files scored what it holds, so a resume cut short
    before it cleared the partition is redone whole again, and one whose new model scored it is not."""
    spec = make_job(tmp_path, classifier)
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    (tmp_path / "in" / "bad.jsonl.gz").write_bytes(b"no gzip")  # fails every attempt, after a is committed
    assert run_due(spec, now=day(1, hours=0.01)).failures
    (Path(classifier) / "notes.txt").write_text("retrained")  # the model's files changed

    def killed_before_clearing(self):
        raise Killed()

    clear = OutputDir.clear
    monkeypatch.setattr(OutputDir, "clear", killed_before_clearing)
    with pytest.raises(Killed):
        run_due(spec, now=day(2, hours=0.01))
    gc.collect()
    cleared = []
    monkeypatch.setattr(OutputDir, "clear", lambda self: cleared.append(self.root) or clear(self))
    assert run_due(spec, now=day(3, hours=0.01)).failures  # the partition still holds the old model's a: redone
    assert run_due(spec, now=day(4, hours=0.01)).failures  # the new model's a: kept
    assert len(cleared) == 1
    assert sorted(all_ids(tmp_path)) == ["a0", "a1", "a2"]


def scored_then_one_gone(tmp_path):
    """A job that scored a.jsonl and b.jsonl at day 1's tick, after which a.jsonl is gone from the input."""
    runner = Committing()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    (tmp_path / "in" / "a.jsonl").unlink()  # a retention policy on the landing folder
    return runner, spec


def test_a_rescore_keeps_no_promise_it_can_not_keep_about_gone_input(tmp_path):
    """A shard scored earlier whose file is gone keeps its output (only --prune moves it away), and the rescore's own
    ledger line said so ("their rows stay"); but a rescore supersedes every older partition, so its rows left with
    them and no line said it. A rescore with gone input is now refused unless --prune lets that output go."""
    runner, spec = scored_then_one_gone(tmp_path)
    with pytest.raises(PipelineError, match=r"1 shard\(s\) scored earlier are gone from the input \(a.jsonl\).*--prune"):
        run_due(spec, now=day(2, hours=0.01), rescore=True, runner=runner)
    assert sorted(all_ids(tmp_path)) == ["a0", "a1", "a2", "b0", "b1"]
    run_due(spec, now=day(2, hours=0.01), rescore=True, prune=True, runner=runner)
    assert sorted(all_ids(tmp_path)) == ["b0", "b1"]
    assert [e["kind"] for e in closing_lines(tmp_path)][-2:] == ["prune", "rescore"]

    add_shard(tmp_path, "c.jsonl", rows("c", 2))  # committed by a run that keeps failing, then gone
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    assert run_due(spec, now=day(3, hours=0.01), runner=runner).failures
    (tmp_path / "in" / "c.jsonl").unlink()
    (tmp_path / "in" / "bad.jsonl").unlink()
    for prune in (False, True):  # --prune moves what finished runs scored; an unfinished run's is that run's
        with pytest.raises(PipelineError, match=r"c.jsonl.*unfinished run 2026-11-30T02:00:00Z.*--abandon"):
            run_due(spec, now=day(3, hours=5), rescore=True, prune=prune, runner=runner)
    assert sorted(all_ids(tmp_path)) == ["b0", "b1", "c0", "c1"]


def test_a_scheduler_started_with_a_refused_rescore_says_so_at_once_and_takes_prune(tmp_path, monkeypatch):
    """`pipelines schedule JOB --rescore` (the loop, after a model change) with a scored file gone from the input: the
    rescore was refused at the first wake-up, logged, and asked for again at every tick, refused again before any
    work each time, so that new input was never scored while the loop ran; and the --prune its error asks for was
    ignored without --once. The refusal now ends the command at once (exit 2), and --prune goes with the first run."""
    from pipelines.cli.main import main

    runner, spec = scored_then_one_gone(tmp_path)
    clock = {"now": day(2, hours=0.01)}

    def sleep(seconds):
        clock["now"] += timedelta(seconds=seconds)
        add_shard(tmp_path, "c.jsonl", rows("c", 2))  # new input, for the next tick

    with pytest.raises(PipelineError, match=r"--rescore: 1 shard\(s\) scored earlier are gone.*--prune"):
        serve(spec, rescore=True, clock=lambda: clock["now"], sleep=sleep, runner=runner, wakeups=2)
    assert clock["now"] == day(2, hours=0.01)  # no tick waited for, behind a rescore that can only be refused

    serve(spec, rescore=True, prune=True, clock=lambda: clock["now"], sleep=sleep, runner=runner, wakeups=2)
    assert [(e["kind"], e["status"]) for e in closing_lines(tmp_path)][1:] == [
        ("prune", "pruned"), ("rescore", "succeeded"), ("tick", "succeeded")]
    assert sorted(all_ids(tmp_path)) == ["b0", "b1", "c0", "c1"]

    asked = {}
    monkeypatch.setattr("pipelines.schedule.loop.serve", lambda spec, **kwargs: asked.update(kwargs))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw_job(tmp_path, fake_model(tmp_path))))
    assert main(["schedule", str(job), "--rescore", "--prune"]) == 0
    assert (asked["rescore"], asked["prune"]) == (True, True)


def test_a_rescore_on_a_clock_behind_the_newest_run_is_refused(tmp_path):
    """A rescore off schedule is named after the clock; on a host whose clock is behind the newest run's (another
    scheduler host, a clock stepped back) it came before that run, and a later change of a shard retired only the
    newest run's version of it: its rows were then in the output twice."""
    runner = Committing()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    run_due(spec, now=day(3, hours=0.01), runner=runner)
    with pytest.raises(PipelineError, match=r"the clock here says 2026-11-30T01:59:00Z, not after this job's newest "
                                            r"run, 2026-11-30T02:00:00Z"):
        run_due(spec, now=day(3, hours=-1 / 60), rescore=True, runner=runner)
    add_shard(tmp_path, "a.jsonl", rows("a", 4))
    run_due(spec, now=day(4, hours=0.01), runner=runner)
    assert sorted(all_ids(tmp_path)) == ["a0", "a1", "a2", "a3"]


def test_abandoning_a_run_brings_back_no_version_that_a_later_run_replaced(tmp_path):
    """An abandon brings an earlier version back for a shard the run no longer holds; if a rescore has
    committed that shard since, the version brought back stood beside the rescore's until the next tick."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "k.jsonl", rows("k", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)  # R1
    add_shard(tmp_path, "k.jsonl", rows("k", 3))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    run_due(spec, now=day(2, hours=0.01), runner=runner)  # R2: k replaces R1's; fails on bad
    (Path(model) / "config.json").write_text('{"v": 2}')
    runner.fail_first.add("2026-11-29T02:00:00Z")
    run_due(spec, now=day(3, hours=0.01), runner=runner)  # R2 redone whole: cleared, fails before committing k
    runner.fail_first.clear()
    rescore = run_due(spec, now=day(3, hours=3), rescore=True, runner=runner).entries[-1]  # commits k, fails on bad
    abandon(spec, rescore.run)
    abandon(spec, "2026-11-29T02:00:00Z")  # brings R1's k back from _superseded/, beside the rescore's
    assert sorted(all_ids(tmp_path)) == ["k0", "k1", "k2"]


def test_a_rescore_that_fails_or_is_abandoned_leaves_each_row_once(tmp_path):
    """A rescore replaces each shard's earlier output as it commits the shard, so a rescore that fails part
    way, and then is abandoned (its committed shards stay and count as scored), leaves every row once."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "b.jsonl", rows("b", 3))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))  # unreadable: the rescore fails after a and b commit
    rescore = run_due(spec, now=day(1, hours=3), rescore=True, runner=runner)
    assert rescore.failures and rescore.entries[0].kind == "rescore"
    expected = sorted(r["id"] for r in rows("a", 2) + rows("b", 3))
    assert sorted(all_ids(tmp_path)) == expected  # the first run's a and b moved away as the rescore's appeared
    assert abandon(spec, rescore.entries[0].run).status == "abandoned"
    (tmp_path / "in" / "bad.jsonl").unlink()
    assert run_due(spec, now=day(2, hours=0.01), runner=runner).entries[0].status == "empty"
    assert sorted(all_ids(tmp_path)) == expected


def test_a_rescore_replaces_what_an_unfinished_run_committed_too(tmp_path):
    """A run that failed after committing a shard, then a rescore that commits it again: the shard is in the
    output once, and stays once when the rescore is abandoned and the earlier run is resumed."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "c.jsonl", rows("c", 2))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    assert run_due(spec, now=day(2, hours=0.01), runner=runner).failures  # c committed there, bad not: unfinished
    rescore = run_due(spec, now=day(2, hours=3), rescore=True, runner=runner)
    assert rescore.failures  # a and c rescored, bad not
    expected = sorted(r["id"] for r in rows("a", 2) + rows("c", 2))
    assert sorted(all_ids(tmp_path)) == expected
    abandon(spec, rescore.entries[0].run)
    (tmp_path / "in" / "bad.jsonl").unlink()
    after = run_due(spec, now=day(3, hours=0.01), runner=runner)  # the failed tick resumes: c was scored later, bad is gone
    assert after.entries[0].kind == "resume" and not after.failures
    assert sorted(all_ids(tmp_path)) == expected


def test_abandoning_a_run_that_lost_its_new_outputs_brings_the_earlier_ones_back(tmp_path):
    """A rescore retires each shard's earlier output as it commits the new one; if a resume then redoes it
    whole (the model changed) and fails before committing anything, abandoning it must not leave the shards
    without any output."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    rescore = run_due(spec, now=day(1, hours=3), rescore=True, runner=runner).entries[0]
    assert rescore.status == "failed"
    (Path(model) / "config.json").write_text('{"retrained_on": "2026-11-28"}')
    runner.fail_first.add(rescore.run)  # the resume clears the partition to redo it whole, then fails
    assert run_due(spec, now=day(1, hours=4), runner=runner).failures
    abandon(spec, rescore.run)
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for r in rows("a", 2) + rows("b", 2))


def test_a_changed_shard_retires_its_old_version_as_the_new_one_commits(scored_on_day1, monkeypatch):
    folder = scored_on_day1  # a (5 rows) and b (4) scored at the tick of day 1
    spec = make_job(folder, str(folder / "model"))
    add_shard(folder, "a.jsonl", rows("a", 7))  # a changed: two more rows

    killed_after_first_commit(monkeypatch, lambda: run_due(spec, now=day(2, hours=0.01)))
    ids = all_ids(folder)
    assert sorted(ids) == sorted(r["id"] for r in rows("a", 7) + rows("b", 4)) and len(ids) == len(set(ids))


def test_a_shard_whose_commit_was_cut_short_is_put_in_place_also_when_its_run_is_abandoned(scored_on_day1, monkeypatch):
    """Killed between a changed shard's commit record and the move of its files into place, then abandoned: the
    abandoned run counts the shard as committed, the next tick retired its old version, and nothing ever moved
    the new one out of staging (only a resume finishes a commit), so a.jsonl's rows were in no partition."""
    from pipelines import faults

    folder = scored_on_day1  # a (5 rows) and b (4) scored at the tick of day 1
    spec = make_job(folder, str(folder / "model"))
    add_shard(folder, "a.jsonl", rows("a", 7))  # a changed: two more rows
    checkpoint = faults.checkpoint

    def die_mid_commit(point: str) -> None:
        if point == "mid_commit":
            raise Killed()
        checkpoint(point)

    monkeypatch.setattr(faults, "checkpoint", die_mid_commit)
    with pytest.raises(Killed):
        run_due(spec, now=day(2, hours=0.01))
    monkeypatch.undo()
    gc.collect()
    abandon(spec, "2026-11-29T02:00:00Z")
    assert run_due(spec, now=day(3, hours=0.01)).entries[0].status == "empty"
    ids = all_ids(folder)
    assert sorted(ids) == sorted(r["id"] for r in rows("a", 7) + rows("b", 4)) and len(ids) == len(set(ids))


def test_output_of_gone_input_is_recorded_and_pruned_on_request(tmp_path):
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    gone = add_shard(tmp_path, "b.jsonl", rows("b", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    Path(gone).unlink()
    add_shard(tmp_path, "c.jsonl", rows("c", 2))
    report = run_due(spec, now=day(2, hours=0.01), runner=runner)
    assert report.entries[-1].gone == ["b.jsonl"]
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for r in rows("a", 2) + rows("b", 2) + rows("c", 2))
    pruned = run_due(spec, now=day(3, hours=0.01), prune=True, runner=runner)
    assert [e.status for e in pruned.entries] == ["pruned", "empty"]
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for r in rows("a", 2) + rows("c", 2))
    # `pipelines runs` showed the first run with all its rows and no word, so ROWS added up to rows no longer there
    first = [line for line in render_table(Ledger(str(tmp_path / "out")).read()).splitlines() if " succeeded " in line][0]
    assert "1 shard(s) (2 rows) moved to _superseded/ by prune 2026-11-30T02:00:00Z" in first
    assert run_due(spec, now=day(4, hours=0.01), runner=runner).entries[-1].gone is None


def test_pipelines_runs_says_where_a_changed_shards_earlier_version_went(tmp_path):
    """a.jsonl scored, then changed: the next run scores it again and its earlier version moves to `_superseded/`,
    but `pipelines runs` showed the first run with all its rows and no word (ROWS added up to rows no longer in the
    partitions), as it did for --prune before that said so."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "b.jsonl", rows("b", 3))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "a.jsonl", rows("a", 4))  # changed
    run_due(spec, now=day(2, hours=0.01), runner=runner)
    table = render_table(Ledger(str(tmp_path / "out")).read()).splitlines()
    first, second = [line for line in table if " succeeded " in line]
    assert f"1 shard(s) (2 rows) moved to _superseded/ by run {run_id(day(2))}" in first, first
    assert "1 changed shard(s)" in second and "moved to" not in second, second


def test_a_prune_that_moves_a_partitions_last_quarantined_rows_leaves_no_empty_errors_folder(tmp_path):
    """b.jsonl's row ``x`` was quarantined (a duplicate of a.jsonl's); then b.jsonl was deleted and ``--prune`` moved
    its output, quarantined rows included, to ``_superseded/``: the partition kept an empty ``_errors/``, which pandas
    and pyarrow read as a table of no columns (``df["reason"]`` a KeyError), though there is no ``_errors/`` where
    nothing is quarantined."""
    spec = spec_from_dict({**raw_job(tmp_path, fake_model(tmp_path)), "errors": {"duplicate_ids": "error"}})
    (tmp_path / "in").mkdir()
    add_shard(tmp_path, "a.jsonl", [{"id": "x", "text": "t"}, {"id": "a1", "text": "t"}])
    gone = add_shard(tmp_path, "b.jsonl", [{"id": "x", "text": "t"}, {"id": "b1", "text": "t"}])
    run_due(spec, now=day(1, hours=0.01), runner=Screening())
    partition = tmp_path / "out" / f"run={run_id(DAY1)}"
    assert pq.read_table(partition / "_errors").column("reason").to_pylist() == ["duplicate id"]
    Path(gone).unlink()
    assert [e.status for e in run_due(spec, now=day(2, hours=0.01), prune=True, runner=Screening()).entries] == [
        "pruned", "empty"]
    assert not (partition / "_errors").exists()
    assert sorted(all_ids(tmp_path)) == ["a1", "x"]


@pytest.mark.parametrize("how", ["prune", "prune between ticks", "changed"])
def test_a_row_quarantined_as_a_duplicate_is_scored_again_when_the_row_it_repeated_leaves_its_partition(tmp_path, how):
    """Under ``errors.duplicate_ids: error``, b.jsonl's row ``x`` was quarantined as a duplicate of a.jsonl's, in one
    partition. Then a.jsonl was deleted (``--once --prune`` moved its output to ``_superseded/``) or changed to drop
    ``x`` (scored again into the next partition, its old output moved away): b's ``x`` stayed quarantined as a
    duplicate of a row that no partition held, so the input's id ``x`` was in no part file, as `pipelines run` did
    before its ``--prune`` and ``--redo-changed`` scored such a shard again. The next run now scores b again too, and
    a ``--once --prune`` for a tick already handled (run by hand between ticks) scores it at once, not a day later."""
    spec = spec_from_dict({**raw_job(tmp_path, fake_model(tmp_path)), "errors": {"duplicate_ids": "error"}})
    (tmp_path / "in").mkdir()
    a = add_shard(tmp_path, "a.jsonl", [{"id": "x", "text": "t"}, {"id": "a1", "text": "t"}])
    add_shard(tmp_path, "b.jsonl", [{"id": "x", "text": "t"}, {"id": "b1", "text": "t"}])
    add_shard(tmp_path, "c.jsonl", [{"id": "c1", "text": "t"}])
    run_due(spec, now=day(1, hours=0.01), runner=Screening())
    assert sorted(all_ids(tmp_path)) == ["a1", "b1", "c1", "x"]
    prune = how.startswith("prune")
    if prune:
        Path(a).unlink()
    else:
        add_shard(tmp_path, "a.jsonl", [{"id": "a1", "text": "t"}, {"id": "a2", "text": "t"}, {"id": "a3", "text": "t"}])
    between = how == "prune between ticks"
    report = run_due(spec, now=day(1 if between else 2, hours=0.02), prune=prune, runner=Screening())
    assert [e.status for e in report.entries] == {"prune": ["pruned", "succeeded"], "changed": ["succeeded"],
                                                   "prune between ticks": ["pruned", "empty", "succeeded"]}[how]
    assert sorted(all_ids(tmp_path)) == (["b1", "c1", "x"] if prune else ["a1", "a2", "a3", "b1", "c1", "x"])
    table = render_table(Ledger(str(tmp_path / "out")).read())  # b.jsonl did not change, and is not said to have
    assert "1 shard(s) that quarantined duplicate ids scored again" in table
    assert re.findall(r"\d+ changed shard\(s\)", table) == ([] if prune else ["1 changed shard(s)"])
    assert partition_ids(tmp_path, DAY1) == ["c1"]  # a shard without repeats keeps its output where it is
    assert not (tmp_path / "out" / f"run={run_id(DAY1)}" / "_errors").exists()
    assert run_due(spec, now=day(3, hours=0.01), runner=Screening()).entries[-1].status == "empty"  # once


class ScreeningFailingOnBad(Screening):
    """:class:`Screening` that commits every shard but those named ``bad*``, then fails the run if there were any
    (as an unreadable file does), while ``fail`` holds."""

    fail = True

    def __call__(self, spec, *, shards=None, **kwargs) -> RunSummary:
        good = [s for s in shards if not (self.fail and s.name.startswith("bad"))]
        summary = super().__call__(spec, shards=good, **kwargs)
        if len(good) < len(shards):
            raise PipelineError("1 input file(s) could not be read: bad.jsonl")
        return summary


def test_a_duplicate_quarantined_by_a_failing_run_is_scored_again_when_the_row_it_repeated_changes(tmp_path):
    """Under ``errors.duplicate_ids: error``, a run that keeps failing (an unreadable file) committed a.jsonl and
    b.jsonl, b's row ``x`` quarantined as a duplicate of a's. Then a.jsonl changed to drop ``x``: the next tick scored
    a again and moved its old output away, but b stayed the failing run's, its ``x`` quarantined as a duplicate of a
    row no partition held: ``x`` was in no part file (and stays out when the failing run finishes). b is now taken
    over and scored again with a, as a changed shard of that run is, and the failing run's resume leaves it out."""
    spec = spec_from_dict({**raw_job(tmp_path, fake_model(tmp_path)), "errors": {"duplicate_ids": "error"}})
    (tmp_path / "in").mkdir()
    add_shard(tmp_path, "a.jsonl", [{"id": "x", "text": "t"}, {"id": "a1", "text": "t"}])
    add_shard(tmp_path, "b.jsonl", [{"id": "x", "text": "t"}, {"id": "b1", "text": "t"}])
    add_shard(tmp_path, "bad.jsonl", [{"id": "z", "text": "t"}])
    runner = ScreeningFailingOnBad()
    assert [e.status for e in run_due(spec, now=day(1, hours=0.01), runner=runner).entries] == ["failed"]
    assert sorted(all_ids(tmp_path)) == ["a1", "b1", "x"]
    add_shard(tmp_path, "a.jsonl", [{"id": "a1", "text": "t"}, {"id": "a2", "text": "t"}])
    day2 = run_due(spec, now=day(2, hours=0.01), runner=runner).entries
    assert [(e.status, [i.name for i in e.inputs or []]) for e in day2 if e.status == "succeeded"] == [
        ("succeeded", ["a.jsonl", "b.jsonl"])]
    assert sorted(all_ids(tmp_path)) == ["a1", "a2", "b1", "x"]
    runner.fail = False  # the unreadable file mended: the failing run finishes, without b
    assert [e.status for e in run_due(spec, now=day(3, hours=0.01), runner=runner).entries][0] == "succeeded"
    assert sorted(all_ids(tmp_path)) == ["a1", "a2", "b1", "x", "z"]


def test_a_partition_deleted_by_hand_has_its_input_scored_again_not_left_out_for_good(tmp_path, caplog):
    """A run=... partition deleted (or moved away) by hand, to redo a bad night or by a clean-up: its ledger lines
    still said its shards were scored, so every tick after said `no new input` and its rows were gone from the output
    for good, without a word. Its input is scored again by the next tick; the partition put back later (from a
    backup) gives no row twice."""
    runner = Committing()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "b.jsonl", rows("b", 3))
    run_due(spec, now=day(2, hours=0.01), runner=runner)
    deleted = tmp_path / "out" / "run=2026-11-29T02:00:00Z"
    shutil.move(deleted, tmp_path / "backup")
    line = run_due(spec, now=day(3, hours=0.01), runner=runner).entries[-1]
    assert (line.status, [i.name for i in line.inputs]) == ("succeeded", ["b.jsonl"])
    assert "run=2026-11-29T02:00:00Z" in line.note and "is gone from the output" in caplog.text
    assert "changed shard" not in render_table(Ledger(str(tmp_path / "out")).read())  # not a changed file
    expected = sorted(r["id"] for r in rows("a", 2) + rows("b", 3))
    assert sorted(all_ids(tmp_path)) == expected
    shutil.move(tmp_path / "backup", deleted)  # put back: its version of b.jsonl is the older one
    assert run_due(spec, now=day(4, hours=0.01), runner=runner).entries[-1].status == "empty"
    assert sorted(all_ids(tmp_path)) == expected


@pytest.mark.parametrize("edit", ["oldest lines dropped", "lines damaged", "a first line damaged"])
def test_a_ledger_cut_short_by_hand_is_refused_not_taken_for_new_input(tmp_path, edit):
    """_runs.jsonl trimmed like a log (its oldest lines dropped: `tail -n`, logrotate), or lines of it damaged in an
    editor (each then skipped with a warning): the partitions its lines no longer name were taken for never scored, and
    the next tick scored their input again into a partition of its own, each of its rows twice in the output. A run
    whose first line (its plan) alone was damaged ended in a StopIteration traceback. Refused, by the tick and by `pipelines plan`, naming the partitions and what to do."""
    from pipelines.io.shards import list_shards
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "b.jsonl", rows("b", 3))
    run_due(spec, now=day(2, hours=0.01), runner=runner)
    path = tmp_path / "out" / "_runs.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert [json.loads(line)["run"] for line in lines] == ["2026-11-28T02:00:00Z"] * 2 + ["2026-11-29T02:00:00Z"] * 2
    if edit == "oldest lines dropped":
        path.write_text("".join(lines[2:]))
    elif edit == "a first line damaged":
        path.write_text(lines[0][:40] + "\n" + "".join(lines[1:]))
    else:
        path.write_text(lines[0][:40] + "\n" + lines[1][:40] + "\n" + "".join(lines[2:]))
    add_shard(tmp_path, "c.jsonl", rows("c", 4))
    unknown = r"holds partitions whose plan \(their first line\) its ledger _runs.jsonl does not hold: run=2026-11-28T02:00:00Z"
    with pytest.raises(PipelineError, match=unknown):
        run_due(spec, now=day(3, hours=0.01), runner=runner)
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for r in rows("a", 2) + rows("b", 3))  # each row once
    shards = list_shards(spec.input.paths, spec.input.format, empty_is_no_input=True)
    plan = output_plan(spec, shards, survey(shards))
    assert plan.state == "refused" and re.search(unknown, plan.note)


def refused_until_the_earlier_file_is_gone(tmp_path, spec, runner, refused: str, gone) -> None:
    """The second night's tick of the tests below: refused (by the tick and by `pipelines plan`, naming ``refused``)
    while the file scored the night before is still where it was, the night before's rows kept and no tick recorded;
    once ``gone()`` moves or deletes that file, the night's file is its new version, the night before's rows
    superseded."""
    from pipelines.io.shards import list_shards
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    with pytest.raises(PipelineError, match=refused):
        run_due(spec, now=day(2, hours=0.01), runner=runner)
    assert sorted(all_ids(tmp_path)) == ["d1_0", "d1_1", "d1_2"]  # the night before's rows stay
    assert [e["status"] for e in ledger(tmp_path)] == ["running", "succeeded"]  # no tick recorded: tried again
    shards = list_shards(spec.input.paths, spec.input.format, empty_is_no_input=True)
    plan = output_plan(spec, shards, survey(shards))
    assert plan.state == "refused" and re.search(refused, plan.note)
    gone()
    [entry] = run_due(spec, now=day(2, hours=0.02), runner=runner).entries
    assert entry.status == "succeeded" and list(entry.replaces.values()) == ["2026-11-28T02:00:00Z"]
    assert sorted(all_ids(tmp_path)) == ["d2_0", "d2_1"]


def test_a_file_in_another_folder_under_a_scored_files_name_is_refused_not_taken_for_its_new_version(tmp_path):
    """`--set input.paths=[landing/{{ ds }}]`, one landing folder per night (Airflow's date): each night's
    part-0.jsonl has the name of the night before's, so the tick took it for a new version of that file and moved the
    night before's rows to _superseded/ with no more than a warning that a shard changed. Refused, by the tick and by
    `pipelines plan`, while the file scored under that name is still where it was scored from; a file whose earlier
    version is no longer there (a folder moved) is its new version, as before."""

    runner, model = Committing(digests=True), fake_model(tmp_path)

    def nightly(date: str) -> JobSpec:
        raw = raw_job(tmp_path, model)
        raw["input"]["paths"] = [str(tmp_path / "landing" / date)]
        return spec_from_dict(raw)

    first = write_jsonl(tmp_path / "landing" / "2026-11-28" / "part-0.jsonl", rows("d1_", 3))
    run_due(nightly("2026-11-28"), now=day(1, hours=0.01), runner=runner)
    write_jsonl(tmp_path / "landing" / "2026-11-29" / "part-0.jsonl", rows("d2_", 2))
    spec = nightly("2026-11-29")
    refused = r"part-0.jsonl has the name of .*2026-11-28/part-0.jsonl.* still there"
    # then the earlier file is gone from where it was: a new version, as before
    refused_until_the_earlier_file_is_gone(tmp_path, spec, runner, refused,
                                           lambda: first.rename(tmp_path / "elsewhere.jsonl"))


def test_a_file_under_a_latest_link_moved_to_another_folder_is_refused_as_one_in_another_folder_is(tmp_path):
    """`input.paths: [landing/latest]`, a link that the export moves to each night's folder (`ln -sfn 2026-11-29
    landing/latest`): the same string at every tick, so the night's part-0.jsonl had the scored file's name *and* its
    path, and was taken for its new version; the night before's rows moved to _superseded/ though their file is still
    there (its other files stayed, as gone input). Refused, as with `landing/{{ ds }}`, by the tick and by `pipelines
    plan`, naming the folder the link pointed to; a file whose link points to the same folder (a new version written
    in place) or that the export deleted is a new version, as before."""

    runner, model = Committing(digests=True), fake_model(tmp_path)
    raw = raw_job(tmp_path, model)
    raw["input"]["paths"] = [str(tmp_path / "landing" / "latest")]
    spec = spec_from_dict(raw)
    latest = tmp_path / "landing" / "latest"
    write_jsonl(tmp_path / "landing" / "2026-11-28" / "part-0.jsonl", rows("d1_", 3))
    latest.symlink_to("2026-11-28")
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    write_jsonl(tmp_path / "landing" / "2026-11-29" / "part-0.jsonl", rows("d2_", 2))
    latest.unlink()
    latest.symlink_to("2026-11-29")
    refused = r"latest/part-0.jsonl has the name of .*landing/2026-11-28/part-0.jsonl.* still there"
    # then the export deleted it: a new version
    earlier = tmp_path / "landing" / "2026-11-28" / "part-0.jsonl"
    refused_until_the_earlier_file_is_gone(tmp_path, spec, runner, refused, earlier.unlink)
    write_jsonl(tmp_path / "landing" / "2026-11-29" / "part-0.jsonl", rows("d3_", 4))  # rewritten in place
    [entry] = run_due(spec, now=day(3, hours=0.01), runner=runner).entries
    assert entry.status == "succeeded" and sorted(all_ids(tmp_path)) == ["d3_0", "d3_1", "d3_2", "d3_3"]


@pytest.mark.parametrize("link", ["removed", "moved"])
def test_input_paths_moved_off_a_latest_link_to_a_nights_folder_is_refused_while_the_linked_file_is_there(
        tmp_path, link):
    """`input.paths: [landing/latest]` scored through the link, then set to a night's folder (`landing/2026-11-29`)
    with the link removed, or moved to that folder first: the night's part-0.jsonl was taken for a new version of the
    file scored under `latest/part-0.jsonl` (gone, or now that same night's file) and the night before's rows moved to
    _superseded/, though the file the link led to, `landing/2026-11-28/part-0.jsonl`, is still there: only the path
    listed was looked at, not the folder the link led to, which the ledger records. Refused, by the tick and by
    `pipelines plan`, as without the link; a new version once that file is gone."""

    runner, model = Committing(digests=True), fake_model(tmp_path)
    raw = raw_job(tmp_path, model)
    latest = tmp_path / "landing" / "latest"
    raw["input"]["paths"] = [str(latest)]
    first = write_jsonl(tmp_path / "landing" / "2026-11-28" / "part-0.jsonl", rows("d1_", 3))
    latest.symlink_to("2026-11-28")
    run_due(spec_from_dict(raw), now=day(1, hours=0.01), runner=runner)
    write_jsonl(tmp_path / "landing" / "2026-11-29" / "part-0.jsonl", rows("d2_", 2))
    latest.unlink()
    if link == "moved":
        latest.symlink_to("2026-11-29")
    raw["input"]["paths"] = [str(tmp_path / "landing" / "2026-11-29")]
    refused = (r"2026-11-29/part-0.jsonl has the name of .*landing/2026-11-28/part-0.jsonl \(listed as "
               r".*landing/latest/part-0.jsonl, through a symbolic link\).* still there")
    refused_until_the_earlier_file_is_gone(tmp_path, spec_from_dict(raw), runner, refused, first.unlink)


def test_a_latest_file_link_moved_to_another_file_is_refused_as_a_moved_folder_link_is(tmp_path):
    """`input.paths: [land3/latest.jsonl]`, a link to one file that the export moves to each night's file (`ln -sfn
    2026-11-29.jsonl land3/latest.jsonl`): the same path at every tick, so the night's file was taken for a new
    version of the night before's, whose rows moved to _superseded/ though 2026-11-28.jsonl is still there. Refused,
    by the tick and by `pipelines plan`, naming the file the link led to; once that file is gone (the export deleted
    it), the file under the link is its new version, as before."""

    runner, model = Committing(digests=True), fake_model(tmp_path)
    raw = raw_job(tmp_path, model)
    latest = tmp_path / "land3" / "latest.jsonl"
    raw["input"]["paths"] = [str(latest)]
    spec = spec_from_dict(raw)
    first = write_jsonl(tmp_path / "land3" / "2026-11-28.jsonl", rows("d1_", 3))
    write_jsonl(tmp_path / "land3" / "2026-11-29.jsonl", rows("d2_", 2))
    latest.symlink_to("2026-11-28.jsonl")
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    latest.unlink()
    latest.symlink_to("2026-11-29.jsonl")
    refused = (r"latest.jsonl has the name of .*land3/2026-11-28.jsonl \(listed as .*land3/latest.jsonl, through a "
               r"symbolic link that leads elsewhere now\).* still there")
    # then the export deleted it: the file under the link is its new version
    refused_until_the_earlier_file_is_gone(tmp_path, spec, runner, refused, first.unlink)


@pytest.mark.parametrize("store", [".git/annex/objects/Xq/8M/SHA256E-s{size}--{digest}.jsonl/SHA256E-s{size}--"
                                   "{digest}.jsonl", ".dvc/cache/files/md5/{digest:.2}/{digest2}",
                                   "dvc-cache/files/md5/{digest:.2}/{digest2}"],
                         ids=["git-annex", "dvc", "dvc-shared-cache"])
def test_a_file_kept_as_a_link_into_a_content_store_is_a_new_version_when_its_link_changes(tmp_path, store):
    """A file that git-annex or DVC (cache.type symlink) keeps as a link into its store (`.git/annex/objects/…`,
    `.dvc/cache/files/md5/ab/…`, or a shared cache outside the repository, `dvc cache dir /srv/dvc-cache`): a new
    version (`git annex get`, `dvc checkout` after a commit) changes where the link leads while the store keeps the
    earlier object. That is still a new version of the file, its earlier rows superseded, not a refused one."""
    import hashlib

    runner, model = Committing(digests=True), fake_model(tmp_path)
    raw = raw_job(tmp_path, model)
    tracked = tmp_path / "repo" / "data" / "requests.jsonl"
    raw["input"]["paths"] = [str(tracked)]
    spec = spec_from_dict(raw)

    def check_in(prefix: str, n: int) -> None:  # the object in the store, and the tracked file a link to it
        staged = write_jsonl(tmp_path / "staged.jsonl", rows(prefix, n))
        digest = hashlib.sha256(staged.read_bytes()).hexdigest()
        place = tmp_path / "repo" / store.format(size=staged.stat().st_size, digest=digest, digest2=digest[2:32])
        place.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(place)
        tracked.parent.mkdir(parents=True, exist_ok=True)
        tracked.unlink(missing_ok=True)
        tracked.symlink_to(os.path.relpath(place, tracked.parent))

    check_in("v1_", 3)
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    check_in("v2_", 2)  # the earlier object stays in the store
    [entry] = run_due(spec, now=day(2, hours=0.01), runner=runner).entries
    assert entry.status == "succeeded" and list(entry.replaces.values()) == ["2026-11-28T02:00:00Z"]
    assert sorted(all_ids(tmp_path)) == ["v2_0", "v2_1"]


def test_a_failing_runs_file_is_not_taken_from_another_folder_under_its_name(tmp_path):
    """The same with a run that keeps failing: its resume took the night after's bad-0.jsonl, in another folder, for
    the file it had planned under that name, and scored it into its partition in that file's place."""
    from pipelines.io.shards import list_shards
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    runner, model = Committing(digests=True), fake_model(tmp_path)

    def nightly(date: str) -> JobSpec:
        raw = raw_job(tmp_path, model)
        raw["input"]["paths"] = [str(tmp_path / "landing" / date)]
        return spec_from_dict(raw)

    write_jsonl(tmp_path / "landing" / "2026-11-28" / "bad-0.jsonl", rows("d1_", 3))  # never committed: fails its run
    assert run_due(nightly("2026-11-28"), now=day(1, hours=0.01), runner=runner).failures
    write_jsonl(tmp_path / "landing" / "2026-11-29" / "bad-0.jsonl", rows("d2_", 2))
    refused = r"bad-0.jsonl has the name of .*2026-11-28/bad-0.jsonl, which run 2026-11-28T02:00:00Z is to score.* still"
    with pytest.raises(PipelineError, match=refused):
        run_due(nightly("2026-11-29"), now=day(2, hours=0.01), runner=runner)
    assert [e["status"] for e in ledger(tmp_path)] == ["running", "failed"]
    spec = nightly("2026-11-29")
    shards = list_shards(spec.input.paths, spec.input.format, empty_is_no_input=True)
    plan = output_plan(spec, shards, survey(shards))
    assert plan.state == "refused" and re.search(refused, plan.note)


def test_a_tick_with_nothing_new_counts_a_failing_runs_unscored_file_as_held_not_as_scored(tmp_path):
    """A run that keeps failing over bad-0.jsonl (an unreadable file) holds it; the next tick's empty line said `no
    new input (3 shard(s) scored already; 3 held by unfinished run(s))`, which `pipelines runs` and the command's
    last line show: the file that no run could read counted as scored. Those held are told apart now."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "bad-0.jsonl", rows("b", 2))
    add_shard(tmp_path, "c.jsonl", rows("c", 2))
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures
    empty = [e for e in run_due(spec, now=day(2, hours=0.01), runner=runner).entries if e.status == "empty"]
    assert [e.note for e in empty] == [
        "no new input (0 shard(s) scored already; 3 held by unfinished run 2026-11-28T02:00:00Z, "
        "which is to finish them: 1 not committed yet)"]


def test_a_tick_with_nothing_new_still_warns_of_gone_input(tmp_path, caplog):
    """The README says a gone shard is warned about at each tick; only a tick that ran something did."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    gone = add_shard(tmp_path, "b.jsonl", rows("b", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    Path(gone).unlink()
    with caplog.at_level("WARNING", logger="pipelines"):
        [line] = run_due(spec, now=day(2, hours=0.01), runner=runner).entries
    assert (line.status, line.gone) == ("empty", ["b.jsonl"])
    assert "1 shard(s) scored earlier are gone from the input (e.g. b.jsonl)" in caplog.text


def test_a_missing_model_fails_the_invocation_before_any_run_not_a_new_failing_run_each_night(tmp_path):
    """The real runner, a model folder that is gone (a deploy that removed it, a share not mounted): each invocation
    recorded a new run of the night's input that failed at once, and tried every earlier one again, so a week of it
    left seven failing runs and partitions, each retried at every tick. Nothing can run without the model: now the
    invocation fails with the model's line before any run, and records no tick, as a listing that fails does."""
    spec = make_job(tmp_path, str(tmp_path / "models" / "classifier"))
    for night in (1, 2):
        add_shard(tmp_path, f"night-{night}.jsonl", rows(f"n{night}-", 2))
        with pytest.raises(PipelineError, match=r"model .*models/classifier.*no such directory here"):
            run_due(spec, now=day(night, hours=0.01))
    assert ledger(tmp_path) == []
    assert not list((tmp_path / "out").glob("run=*"))

@pytest.mark.parametrize("cron", [True, False])
def test_a_clock_behind_the_newest_tick_fails_each_invocation_not_nothing_to_score_with_exit_0(tmp_path, cron):
    """A host whose clock ran days ahead for a tick, then set right: every later invocation said `nothing to score;
    nothing written (tick already handled …)` and exited 0, new input waiting unsaid until the clock passed the
    newest run's name (without a schedule section, where `--once` is every tick, too); `pipelines plan` said a tick
    now scores it. A run is named after its tick and must come after the newest: each invocation now fails with a
    line that says why, writing nothing, and the plan says a run now is refused."""
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    raw = raw_job(tmp_path, fake_model(tmp_path))
    if not cron:
        raw.pop("schedule")
    (tmp_path / "in").mkdir()
    spec = spec_from_dict(raw)
    now = datetime.now(UTC).replace(microsecond=0)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=now + timedelta(days=8), runner=Committing())  # the clock days ahead
    before = ledger(tmp_path)
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    for later in (now, now + timedelta(days=1)):  # set right: each night after
        with pytest.raises(PipelineError, match=r"newest tick, .* is after the clock here") as refused:
            run_due(spec, now=later, runner=Committing())
        assert "NTP" in str(refused.value) and "b.jsonl" not in str(refused.value)
    assert ledger(tmp_path) == before
    if cron:  # the plan of a job without a schedule section is a `pipelines run`'s
        shards = list_shards(spec.input.paths)
        planned = output_plan(spec, shards, survey(shards))
        assert planned.state == "refused" and "is after the clock here" in planned.note, planned
    [line] = run_due(spec, now=now + timedelta(days=9), runner=Committing()).entries  # the next tick past it
    assert line.status == "succeeded" and [i.name for i in line.inputs] == ["b.jsonl"]


def test_a_scheduled_output_whose_model_goes_missing_records_no_tick_until_it_is_back(tmp_path):
    """An output scored before (its ledger, a partition), then the model's folder gone: each invocation fails with the
    model's line before any run and adds nothing to the ledger or the output; back, the next tick scores what landed
    meanwhile, in one run."""
    spec = make_job(tmp_path, str(tmp_path / "models" / "classifier"))
    add_shard(tmp_path, "night-1.jsonl", rows("n1-", 2))
    run_due(spec, now=day(1, hours=0.01), runner=Committing())  # scored (by a stand-in: it loads no model)
    before = ledger(tmp_path)
    partitions = sorted(p.name for p in (tmp_path / "out").glob("run=*"))
    for night in (2, 3):
        add_shard(tmp_path, f"night-{night}.jsonl", rows(f"n{night}-", 2))
        with pytest.raises(PipelineError, match=r"model .*models/classifier.*no such directory here"):
            run_due(spec, now=day(night, hours=0.01))  # the real runner's checks before any work
    assert ledger(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "out").glob("run=*")) == partitions
    [line] = run_due(spec, now=day(3, hours=0.02), runner=Committing()).entries
    assert (line.status, sorted(i.name for i in line.inputs)) == ("succeeded", ["night-2.jsonl", "night-3.jsonl"])


def test_a_ray_that_cannot_be_reached_fails_the_invocation_before_any_run_not_a_new_failing_run_each_night(
        classifier, tmp_path):
    """`schedule --once --address HEAD:6379` while the cluster's head is down (or a local Ray that can't start): each
    invocation recorded a new run of the night's input that failed at once and tried every earlier one again, each
    paying Ray's start again, a failing run and partition more each night. Ray is started (or joined) before the
    invocation's first run now: the invocation fails with Ray's line (exit 2) and records no tick."""
    raw = raw_job(tmp_path, classifier)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    for night in (1, 2):
        add_shard(tmp_path, f"night-{night}.jsonl", rows(f"n{night}-", 2))
        done = subprocess.run([sys.executable, "-m", "pipelines", "schedule", str(job), "--once", "--address",
                               "127.0.0.1:1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        assert "Cannot reach the Ray cluster at 127.0.0.1:1" in done.stderr
        assert not (tmp_path / "out").exists()  # a new output: refused before its lock made the folder


def test_a_model_that_can_not_be_loaded_stops_the_invocation_not_a_new_failing_run_each_night(
        ray_session, classifier, tmp_path):
    """A model folder whose files are all there but whose weights can't be loaded (a copy cut short, a file of
    another model): the checks before the first run pass, and the pool's actor fails as it loads them. Each night
    resumed every earlier failing run, then started a new run of the night's input that failed so too: a failing run
    and partition more each night, all retried at every tick. The first such failure is recorded and ends the
    invocation's runs now; the next night resumes that run only."""
    (Path(classifier) / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    spec = make_job(tmp_path, classifier)
    for night in (1, 2):
        add_shard(tmp_path, f"night-{night}.jsonl", rows(f"n{night}-", 2))
        with pytest.raises(PipelineError, match=r"(?s)the pool's actor failed while it loaded the model.*No other run was "
                                                r"started: none can load the model") as stopped:
            run_due(spec, now=day(night, hours=0.01))
        assert f"run {run_id(day(1))} failed" in str(stopped.value)
    assert {(e["run"], e["status"]) for e in ledger(tmp_path)} == {(run_id(day(1)), "running"),
                                                                    (run_id(day(1)), "failed")}
    assert [p.name for p in (tmp_path / "out").glob("run=*")] == [f"run={run_id(day(1))}"]


def test_prune_refuses_an_input_that_lists_no_file_at_all_instead_of_moving_the_whole_output_away(tmp_path):
    """A nightly `schedule --once --prune` whose input folder is there but empty for a moment (a mount gone leaves its
    empty mount point; a sync half done): every scored shard looked gone, and the whole output moved to _superseded/,
    to be scored again from scratch when the files came back. Nothing is moved now; the line says why."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    landed = [add_shard(tmp_path, name, rows(name[0], 2)) for name in ("a.jsonl", "b.jsonl")]
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    scored = sorted(all_ids(tmp_path))
    for path in landed:
        Path(path).unlink()
    with pytest.raises(PipelineError, match=r"--prune: input.paths lists no file at all.*2 shard\(s\).*Nothing was moved"):
        run_due(spec, now=day(2, hours=0.01), prune=True, runner=runner)
    assert sorted(all_ids(tmp_path)) == scored and not (tmp_path / "out" / "_superseded").exists()
    assert [line["status"] for line in ledger(tmp_path)] == ["running", "succeeded"]
    add_shard(tmp_path, "a.jsonl", rows("a", 2))  # with a file of the input there, the other is pruned as before
    first = run_due(spec, now=day(3, hours=0.01), prune=True, runner=runner).entries[0]
    assert first.status == "pruned" and len(first.pruned or {}) == 1
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for r in rows("a", 2))

def test_a_ledger_line_names_a_few_gone_files_and_counts_them_all(tmp_path, caplog):
    """Landing files deleted after scoring (a retention policy): each tick's line listed every gone name, so the
    ledger, which every tick rewrites whole and reads several times, grew with the square of the nights (1.1 MB after
    30 nights of 50 files kept 3 days). A line now names the first few and counts them all."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    landed = [add_shard(tmp_path, f"f{k:02}.jsonl", rows(f"f{k:02}", 1)) for k in range(25)]
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    for path in landed:
        Path(path).unlink()
    add_shard(tmp_path, "new.jsonl", rows("new", 1))
    with caplog.at_level("WARNING", logger="pipelines"):
        [closed] = run_due(spec, now=day(2, hours=0.01), runner=runner).entries
    assert closed.status == "succeeded"
    lines = [json.loads(line) for line in (tmp_path / "out" / "_runs.jsonl").read_text().splitlines()]
    for line in lines[-2:]:  # the tick's running and succeeded lines
        assert line["gone"] == [f"f{k:02}.jsonl" for k in range(GONE_NAMED)] and line["gone_count"] == 25
    assert "25 shard(s) scored earlier are gone from the input (e.g. f00.jsonl)" in caplog.text
    assert "25 shard(s) gone from the input" in render_table(Ledger(str(tmp_path / "out")).read()).splitlines()[-1]


# the command line ------------------------------------------------------------------------------


def test_cli_schedule_once_then_runs_table(ray_session, classifier, tmp_path):
    raw = raw_job(tmp_path, classifier, cron="* * * * *")  # every minute: --once always finds a tick due
    job = tmp_path / "job.yaml"
    # paths relative to where the command runs, which is not where the cluster's workers run (here: the tests' root)
    relative = {**raw, "input": {"paths": ["in"]}, "model": {"name": "model"}, "output": {"path": "out"}}
    job.write_text(yaml.safe_dump(relative))
    add_shard(tmp_path, "a.jsonl", rows("a", 6))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    address = ray_session.get_runtime_context().gcs_address  # join the session's Ray: --address is passed through
    done = cli("schedule", str(job), "--once", "--address", address)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "succeeded, scored new input: 1 shard(s) this run, 6 rows" in done.stdout
    with job_lock(spec_from_dict(raw)):
        busy = cli("schedule", str(job), "--once")
    assert busy.returncode == 75 and "another run of job nightly is in progress" in busy.stderr
    table = cli("runs", str(job))
    assert table.returncode == 0
    header, first = table.stdout.splitlines()
    assert header.split()[:4] == ["TICK", "RUN", "KIND", "STATUS"]
    assert first.split()[2:6] == ["tick", "succeeded", "1", "6"]
    assert len(pq.read_table(tmp_path / "out")) == 6
    assert not (ROOT / "out").exists()  # nothing staged where the workers run


def test_runs_of_an_output_that_pipelines_run_wrote_says_so_not_that_there_are_none(tmp_path, capsys):
    """`pipelines runs` reads a scheduled job's ledger. Given the main job, which `pipelines run` had written, it said
    "no runs yet ... start with: pipelines schedule ... --once", as if nothing had run, and sent the user to start a
    schedule over an output that holds results."""
    from pipelines.cli.main import main

    raw = raw_job(tmp_path, "some-model")
    raw.pop("schedule")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    assert main(["runs", str(job)]) == 0
    assert "no runs yet" in capsys.readouterr().out  # nothing there: nothing to say but that
    spec = spec_from_dict(raw)
    summary = summaries.build(job_record(spec), [], [], 1.0, "succeeded").model_copy(update={"rows_out": 600})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_run.json").write_text(json.dumps(summary.to_json()))
    assert main(["runs", str(job)]) == 0
    said = capsys.readouterr().out
    assert "no runs yet" not in said and "start with" not in said
    assert f"{tmp_path / 'out'} holds the output of pipelines run (succeeded, 600 rows written, 0 quarantined)" in said
    assert f"pipelines report {tmp_path / 'out'}" in said


def test_runs_of_an_output_a_run_is_writing_or_left_unfinished_says_so_not_that_there_are_none(tmp_path, capsys):
    """While `pipelines run` worked on its output (it deletes `_run.json` when it starts), or after a run that failed
    or was killed before its summary, `pipelines runs` said "no runs yet ... start with: pipelines schedule ...
    --once": a scheduler that would be refused (the output is pipelines run's), over rows that are committed."""
    from pipelines.cli.main import main

    raw = raw_job(tmp_path, "some-model")
    raw.pop("schedule")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    with JobLock(out / "_run.lock", f"the output {out}"):  # a run at work: nothing committed yet
        assert main(["runs", str(job)]) == 0
    said = capsys.readouterr().out
    assert "no runs yet" not in said and "start with" not in said, said
    assert f"a `pipelines run` is at work on {out}: another run of the output {out} is in progress (pid" in said
    spec = spec_from_dict(raw)
    (out / "_job.json").write_text(json.dumps(job_record(spec).to_json()))
    assert main(["runs", str(job)]) == 0  # the run was killed before its summary: its lock file stays, not held
    said = capsys.readouterr().out
    assert "no runs yet" not in said and "start with" not in said, said
    assert f"{out} holds the output of pipelines run, unfinished (no summary: a run is at work" in said
    summary = summaries.build(job_record(spec), [], [], 1.0, "succeeded")
    (out / "_run.json").write_text(json.dumps(summary.to_json()))  # an earlier run's, until a new run starts its work
    with JobLock(out / "_run.lock", f"the output {out}"):
        assert main(["runs", str(job)]) == 0
    said = capsys.readouterr().out
    assert f"a `pipelines run` is at work on {out}" in said and "succeeded" not in said, said


def test_json_without_once_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    """`--json` prints the ledger lines one invocation wrote; the loop ran with it and printed log lines, not JSON,
    without a word, so a wrapper that parsed its output got none."""
    from pipelines.cli.main import main

    served = []
    monkeypatch.setattr("pipelines.schedule.loop.serve", lambda spec, **kwargs: served.append(kwargs))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw_job(tmp_path, fake_model(tmp_path))))
    capsys.readouterr()
    assert main(["schedule", str(job), "--json"]) == 2
    assert served == []
    err = capsys.readouterr().err
    assert "--json" in err and "--once" in err and "--abandon" in err
    line = LedgerEntry(run="2026-11-29T02:00:00Z", kind="abandon", status="abandoned")
    monkeypatch.setattr("pipelines.schedule.executor.abandon", lambda spec, run: line)
    assert main(["schedule", str(job), "--abandon", "2026-11-29T02:00:00Z", "--json"]) == 0  # --abandon's line
    assert json.loads(capsys.readouterr().out)["status"] == "abandoned"


def test_a_failed_tick_under_once_json_prints_its_ledger_line_then_fails(tmp_path):
    """The README said a command that fails prints nothing on stdout under --json: `schedule --once --json` prints
    the ledger lines it wrote, a failed run's included, then the run's `error:` line on stderr, status 2."""
    shutil.copy(ROOT / "jobs/data/news/part-0.jsonl", tmp_path / "part-0.jsonl")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PIPELINES_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "schedule", "jobs/nightly_scoring.yaml", "--once", "--json",
         "--set", f"input.paths=[{tmp_path / 'part-0.jsonl'}]", "--set", f"output.path={out}",
         "--set", "model.quantization=none", "--set", "errors.too_long=error", "--set", "batching.max_length=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["status"] == "failed" and "over errors.max_rate=0.1" in line["error"]
    assert [text for text in done.stderr.splitlines() if text.startswith("error: run ")]


def test_a_rescore_reads_each_earlier_commit_record_it_retires_once_not_the_whole_partition_per_shard(
        tmp_path, monkeypatch):
    """Each shard a rescore (or a changed file) committed retired its earlier output by reading every commit record
    of the earlier run's partition to find that one shard's: reads that grew with the partition, per shard, so a
    rescore of a partition of N shards read some N²/2 records (250 shards: 31,626 JSON reads in the rescore's tick,
    500: 125,751, 11.6 s; 5,000 hourly files would take hours). Now the one record is read: the records read from
    the earlier partition add up to a few per shard; and every row is still in the output once."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    shards = 30
    for n in range(shards):
        add_shard(tmp_path, f"h{n:03d}.jsonl", rows(f"h{n}-", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    earlier = f"run={DAY1.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    read = []
    real = layout.read_json

    def counting(fs, path):
        if f"/{earlier}/{layout.COMMITS}/" in path:  # the earlier run's records, in place or retired
            read.append(path)
        return real(fs, path)

    monkeypatch.setattr(layout, "read_json", counting)
    rescore = run_due(spec, now=day(2, hours=0.01), rescore=True, runner=runner)
    assert not rescore.failures and rescore.entries[0].kind == "rescore"
    assert sorted(all_ids(tmp_path)) == sorted(r["id"] for n in range(shards) for r in rows(f"h{n}-", 2))
    assert not list((tmp_path / "out" / earlier / layout.COMMITS).glob("*.json"))  # every one retired
    assert len(read) <= 3 * shards, f"{len(read)} reads of the earlier run's commit records for {shards} shards"


def a_changed_shards_run_to_be_redone_whole(tmp_path: Path):
    """a and b scored; a changed and bad.jsonl added: the tick commits a's new version (retiring its earlier one) and
    fails on bad; then the model changes, so that the next resume clears the partition to redo it whole, and fails
    before any commit. (runner, model, spec, the failed tick's ledger line.)"""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "b.jsonl", rows("b", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    changed = run_due(spec, now=day(2, hours=0.01), runner=runner).entries[0]
    assert changed.status == "failed" and changed.replaces
    (Path(model) / "config.json").write_text('{"retrained_on": "2026-11-28"}')
    runner.fail_first.add(changed.run)
    return runner, model, spec, changed


def abandon_killed_before_a_record(monkeypatch, spec, run: str, partition: str) -> None:
    """``pipelines abandon`` of ``run`` killed as it brings a retired shard back into ``partition`` (a prefix of its
    folder's name; "": any), between the shard's files and its commit record."""
    from pipelines.schedule.executor import ScheduledJob

    move = ScheduledJob._move

    def killed_before_a_record(self, relative: str, back: bool = False) -> None:
        folder, _, rest = relative.partition("/")
        if back and folder.startswith(partition) and rest.startswith("_commits/"):
            raise Killed()
        move(self, relative, back)

    monkeypatch.setattr(ScheduledJob, "_move", killed_before_a_record)
    with pytest.raises(Killed):
        abandon(spec, run)
    monkeypatch.undo()
    gc.collect()


def abandon_killed_mid_restore_then_the_input_mended(tmp_path, monkeypatch) -> tuple[Committing, JobSpec]:
    """A changed shard's run redone whole and failed, its abandon killed between a restored shard's files and its
    record, then the model given up on and the bad file removed: the next tick resumes the run."""
    runner, model, spec, changed = a_changed_shards_run_to_be_redone_whole(tmp_path)
    assert run_due(spec, now=day(2, hours=1), runner=runner).failures
    abandon_killed_before_a_record(monkeypatch, spec, changed.run, "")
    runner.fail_first.clear()
    (Path(model) / "config.json").write_text("{}")  # the retrained model given up on: the run resumes as it was
    (tmp_path / "in" / "bad.jsonl").unlink()
    return runner, spec


def test_an_abandon_killed_mid_restore_then_a_resume_leaves_each_row_once(tmp_path, monkeypatch):
    """``pipelines abandon`` brings a shard's earlier output back from ``_superseded/`` (its files, then its record);
    killed between the two, the run is still unfinished and the next tick resumes it. Its shard's new output then
    retired the earlier one by its record, which was not in the partition: the files brought back stayed, and the
    shard's rows were in the output twice."""
    runner, spec = abandon_killed_mid_restore_then_the_input_mended(tmp_path, monkeypatch)
    resumed = run_due(spec, now=day(2, hours=2), runner=runner).entries[0]
    assert resumed.kind == "resume" and resumed.status == "succeeded"
    ids = all_ids(tmp_path)
    assert sorted(ids) == sorted(r["id"] for r in rows("a", 3) + rows("b", 2)) and len(ids) == len(set(ids))


def test_a_resume_killed_as_it_retires_what_a_killed_abandon_brought_back_leaves_each_row_once(tmp_path, monkeypatch):
    """As above, and the resume killed in turn as its commit moved the files brought back to ``_superseded/`` (its new
    record written, its files still staged): the next tick finished that commit and retired the earlier output by
    the partition's record, which was not there, so the files brought back stayed beside the new ones: the shard's
    rows twice, for good. Found by tests/test_kill_points.py's second kills."""
    from pipelines.schedule.executor import ScheduledJob

    runner, spec = abandon_killed_mid_restore_then_the_input_mended(tmp_path, monkeypatch)

    def killed_retiring(self, relative: str, back: bool = False) -> None:
        raise Killed()

    monkeypatch.setattr(ScheduledJob, "_move", killed_retiring)
    with pytest.raises(Killed):
        run_due(spec, now=day(2, hours=2), runner=runner)
    monkeypatch.undo()
    gc.collect()
    resumed = run_due(spec, now=day(2, hours=2), runner=runner).entries[0]
    assert resumed.kind == "resume" and resumed.status == "succeeded"
    ids = all_ids(tmp_path)
    assert sorted(ids) == sorted(r["id"] for r in rows("a", 3) + rows("b", 2)) and len(ids) == len(set(ids))


def test_an_abandon_killed_mid_restore_into_an_unfinished_run_does_not_stop_its_resume(tmp_path, monkeypatch):
    """The earlier output an abandon brings back may be an unfinished run's (a rescore took its shard over): killed
    between that shard's files and its record, the unfinished run's partition holds part files no record names (which
    a run of it refuses), and the rescore, resumed by the next tick, keeps each row once (its success retires the
    runs it took over whole)."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    add_shard(tmp_path, "c.jsonl", rows("c", 2))
    add_shard(tmp_path, "bad.jsonl", rows("x", 1))
    unfinished = run_due(spec, now=day(2, hours=0.01), runner=runner).entries[0]
    assert unfinished.status == "failed"  # c committed there, bad not
    rescore = run_due(spec, now=day(2, hours=3), rescore=True, runner=runner).entries[0]
    assert rescore.status == "failed"  # a and c rescored (each earlier output retired), bad not
    (Path(model) / "config.json").write_text('{"retrained_on": "2026-11-28"}')
    runner.fail_first.add(rescore.run)  # the resume clears the partition to redo it whole, then fails
    assert run_due(spec, now=day(2, hours=4), runner=runner).failures
    abandon_killed_before_a_record(monkeypatch, spec, rescore.run, f"run={unfinished.run}")  # c's, not a's
    runner.fail_first.clear()
    (Path(model) / "config.json").write_text("{}")
    (tmp_path / "in" / "bad.jsonl").unlink()
    after = run_due(spec, now=day(2, hours=5), runner=runner)
    assert not after.failures, [e.error for e in after.entries]
    ids = all_ids(tmp_path)
    assert sorted(ids) == sorted(r["id"] for r in rows("a", 2) + rows("c", 2)) and len(ids) == len(set(ids))


def test_abandoning_a_run_killed_while_its_partition_was_cleared_brings_the_earlier_output_back(tmp_path):
    """A resume redone whole (the model changed) clears the partition, each shard's files before its record; killed
    between the two, then abandoned: the abandoned run counted the shard as committed by the record left (whose files
    were gone), so its earlier output stayed in ``_superseded/``, the record was dropped as broken afterwards, and the
    ledger said the shard was scored: its rows were in no partition, and no later tick scored them again."""
    runner, model, spec, changed = a_changed_shards_run_to_be_redone_whole(tmp_path)
    delete = layout.delete

    def killed_before_a_record(fs, info) -> None:  # the shard's part file deleted, its record not yet
        if f"run={changed.run}/_commits/" in info.path:
            raise Killed()
        delete(fs, info)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout, "delete", killed_before_a_record)
        with pytest.raises(Killed):
            run_due(spec, now=day(2, hours=1), runner=runner)
    gc.collect()
    abandon(spec, changed.run)
    (tmp_path / "in" / "bad.jsonl").unlink()
    runner.fail_first.clear()
    run_due(spec, now=day(3, hours=0.01), runner=runner)
    ids = all_ids(tmp_path)
    assert len(ids) == len(set(ids)) and sorted(ids) in (
        sorted(r["id"] for r in rows("a", 2) + rows("b", 2)),  # the earlier version brought back
        sorted(r["id"] for r in rows("a", 3) + rows("b", 2))), ids  # or the changed file scored again


def test_the_next_tick_said_after_a_run_that_outlasted_a_tick_is_that_tick_due_already():
    """`pipelines schedule --once` said `next tick: 04:08` at 04:07:11 after handling the 04:06 tick: the 04:07 tick
    had come while the run ran and was due already (the next invocation took it, its ledger line telling of a
    missed tick). It says so now; otherwise the first tick after now, as before."""
    from datetime import UTC, datetime

    from pipelines.schedule.ticks import upcoming

    schedule = spec_from_dict(raw_job(Path("/tmp/unused"), "m", cron="* * * * *")).schedule
    at = datetime(2026, 12, 6, 4, 7, 11, tzinfo=UTC)
    assert upcoming(schedule, "2026-12-06T04:06:00Z", at).startswith("2026-12-06T04:07:00Z (due already")
    assert upcoming(schedule, "2026-12-06T04:07:00Z", at) == "2026-12-06T04:08:00Z"


def test_a_late_tick_with_nothing_new_still_says_what_an_unfinished_run_holds(tmp_path):
    """README: a tick with nothing else to score says so in its `empty` line, `no new input (… held by unfinished run
    …, which is to finish them: 1 not committed yet)`. A tick found late (a crontab in the host's zone, an hour after
    the spec's tick: `1 missed tick(s), one run for them all, 60 min after the tick` every night) wrote only the
    missed-tick note: the empty line no longer said that nothing was new, nor which run holds the unscored file."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "bad-0.jsonl", rows("b", 2))
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures
    empty = [e for e in run_due(spec, now=day(2, hours=1), runner=runner).entries if e.status == "empty"]
    [note] = [e.note for e in empty]
    assert "1 missed tick(s), one run for them all, 60 min after the tick" in note
    assert ("no new input (0 shard(s) scored already; 2 held by unfinished run 2026-11-28T02:00:00Z, "
            "which is to finish them: 1 not committed yet)") in note


def test_prune_does_not_say_nothing_to_prune_while_an_unfinished_run_holds_a_gone_files_rows(tmp_path):
    """README: `--once --prune` moves the output of gone shards to _superseded/. A file that a run which keeps failing
    committed, then deleted from the input: its rows stay in the output (the run holds them; only `--abandon` lets
    them go), yet the prune's line said `nothing to prune` and exit 0, as if no gone file's rows were left."""
    runner, model = Committing(), fake_model(tmp_path)
    spec = make_job(tmp_path, model)
    gone = add_shard(tmp_path, "a.jsonl", rows("a", 2))
    add_shard(tmp_path, "bad-0.jsonl", rows("b", 2))
    assert run_due(spec, now=day(1, hours=0.01), runner=runner).failures
    Path(gone).unlink()
    run_due(spec, now=day(2, hours=0.01), runner=runner, prune=True)
    [pruned] = [e for e in closing_lines(tmp_path) if e["status"] == "pruned"]
    assert sorted(all_ids(tmp_path)) == ["a0", "a1"]  # still in the output: the unfinished run holds them
    assert pruned["note"] != "nothing to prune"
    assert "a.jsonl" in pruned["note"] and "--abandon 2026-11-28T02:00:00Z" in pruned["note"]


def test_the_loop_woken_at_its_tick_does_not_take_it_for_missed_under_grace_seconds_zero(tmp_path):
    """The loop sleeps until the next tick and runs it; a real clock wakes it a few milliseconds after the tick. Under
    `grace_seconds: 0` that tick was taken for missed, `1 missed tick(s) skipped; found 0 s after the tick`: with
    `missed_ticks: skip` the loop skipped every tick and never scored anything (seen with a real `pipelines schedule`
    loop and `* * * * *`). A tick is named to the second, so a tick found within its second is on time."""
    spec = make_job(tmp_path, fake_model(tmp_path), missed_ticks="skip", grace_seconds=0)
    add_shard(tmp_path, "a.jsonl", rows("a", 3))
    clock = {"now": day(1, hours=-1)}  # started an hour before the tick of day 1

    def sleep(seconds):
        clock["now"] += timedelta(seconds=seconds + 0.004)  # a real sleep ends a little after the moment asked for

    runner = NoRay()
    serve(spec, clock=lambda: clock["now"], sleep=sleep, runner=runner, wakeups=3)
    lines = [(e["tick"], e["status"], e["note"]) for e in closing_lines(tmp_path)]
    assert lines[0][1] == "skipped"  # the tick before the start, 23 h late
    assert all(status != "skipped" and "missed" not in (note or "") for _, status, note in lines[1:]), lines
    assert lines[1][:2] == ("2026-11-28T02:00:00Z", "succeeded") and "missed" not in (lines[1][2] or "")


def test_a_rescore_resumed_after_a_scored_file_was_deleted_does_not_drop_its_rows_unpruned(tmp_path):
    """README: a shard scored earlier whose file disappears keeps its output; a rescore can't score again what is gone,
    so while such shards exist `--rescore` is refused unless `--prune` lets their output go (a `pruned` line). A
    rescore that failed (or was killed) and whose resume found a planned file deleted meanwhile left that file out
    (`… is gone since the run started; left out`), succeeded, and moved every older partition to _superseded/: the
    deleted file's rows left the output with no --prune and no `pruned` line (seen with a real rescore killed by
    PIPELINES_CRASH_AT=after_commit:3, a file removed, then `--once`)."""
    runner = Committing()
    spec = make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    gone = add_shard(tmp_path, "b.jsonl", rows("b", 2))
    assert not run_due(spec, now=day(1, hours=0.01), runner=runner).failures
    runner.fail_first = {"2026-11-28T03:00:00Z"}
    assert run_due(spec, now=day(1, hours=1), rescore=True, runner=runner).failures
    Path(gone).unlink()
    runner.fail_first = set()
    failures = run_due(spec, now=day(1, hours=2), runner=runner).failures
    assert failures and "b.jsonl" in failures[0] and "--abandon 2026-11-28T03:00:00Z" in failures[0]
    pruned = [e for e in ledger(tmp_path) if e["status"] == "pruned"]
    assert not pruned
    assert sorted(all_ids(tmp_path)) == ["a0", "a1", "b0", "b1"]  # b's rows stay until --prune lets them go
