"""A plain ``pipelines run`` killed at any point of its output's life, then run again, keeps every row exactly once.

Each scenario brings an output to a state (none yet, a failed run's, a finished one), then runs one command
(``run_job`` with its flags) killed before its k-th mutation of the output, for every k (the hook:
tests/kill_points.py), and does what a user does next: the same command again. At the kill no id may be twice in the
top-level part files; after the second command every current input row must be there exactly once (in a part file or,
quarantined, in ``_errors/``) and ``_SUCCESS`` too.

``run_job`` is the real one (lock, resume, --overwrite, --redo-changed, --prune, start, summary, finish); only Ray's
side is stubbed: ``preflight``, ``connect`` and ``execute``, whose stand-in (:func:`execute`) stages each shard's rows
as an actor does and commits them through ``OutputDir.commit`` as the real driver does.

By default the scenarios in ``DEFAULT`` run (a first run, a resume, --overwrite, --redo-changed, --prune: the module in
about 12 s on a 2-core machine); ``PIPELINES_KILL_POINTS=all`` runs every one (about 20 s).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kill_points import KillSwitch, install
from test_schedule import Killed

import pipelines.cluster.connect
from pipelines import faults, runner
from pipelines.errors import PipelineError
from pipelines.io.block import CUT, ROW
from pipelines.io.reader import content_digest
from pipelines.output import layout, report
from pipelines.output.duplicates import DuplicateIds
from pipelines.output.records import Unreadable
from pipelines.output.staging import StagingReport
from pipelines.spec import spec_from_dict

FULL = os.environ.get("PIPELINES_KILL_POINTS", "") == "all"
HOW = "not in the default set: PIPELINES_KILL_POINTS=all runs it (every scenario)"
DEFAULT = {"first", "resume", "overwrite", "redo-changed", "prune"}


# Ray's side, stubbed -----------------------------------------------------------------------------------------------


def execute(spec, job, output, pending, before_visible=None, timeline=None, labels=None, choosing=None):
    """``runner.execute`` without Ray: per pending shard, its rows staged as an actor stages them (rows with no text
    quarantined), ``faults.checkpoint``s and ``OutputDir.commit`` as the real driver commits (the duplicate-id screen
    under ``errors.duplicate_ids: error``); a ``bad*`` file is unreadable: left uncommitted, the run fails."""
    screen = None
    if spec.errors.duplicate_ids == "error":
        screen = DuplicateIds(output.fs, output.root, spec.input.id_column or "id", list(output.commits().values()),
                              quarantine=True)
    commit = partial(output.commit, job=job, compression=spec.output.compression,
                     row_group_rows=spec.output.row_group_rows, screen=screen, before_visible=before_visible,
                     files=runner.output_files(spec), confusion_of=None)
    done, failed = {}, []
    for shard in pending:
        raw = Path(shard.path).read_bytes()
        reports = [stage(output, shard, [json.loads(line) for line in raw.decode().splitlines()], raw)]
        faults.checkpoint("before_commit")
        if shard.name.startswith("bad"):
            failed.append(runner.UnreadableShard(shard.key, Unreadable(uri=shard.uri, reason="stand-in", rows=1)))
            continue
        with layout.writing(spec.output.path):
            done[shard.key] = commit(shard, reports)
        faults.checkpoint("after_commit")
    return done, failed


def stage(output, shard, rows: list[dict], raw: bytes) -> StagingReport:
    """An actor's staging: the rows with text to a staged data file, those without to a staged error file."""
    folder, block = f"{output.root}/_staging/{shard.key}", uuid.uuid4().hex
    good = [(n, r) for n, r in enumerate(rows) if r["text"]]
    bad = [(n, r) for n, r in enumerate(rows) if not r["text"]]
    output.fs.create_dir(folder, recursive=True)
    files, error_files = [], []
    if good:
        files.append(f"{folder}/{block}-data.parquet")
        layout.write_parquet(output.fs, files[0], pa.table({
            "id": [r["id"] for _, r in good], "label": ["POS"] * len(good),
            ROW: pa.array([n for n, _ in good], pa.int64()), CUT: pa.array([cut(r["id"]) for _, r in good])}), "lz4")
    if bad:
        error_files.append(f"{folder}/{block}-errors.parquet")
        layout.write_parquet(output.fs, error_files[0], pa.table({
            "shard": [shard.uri] * len(bad), "row": pa.array([n for n, _ in bad], pa.int64()),
            "id": [r["id"] for _, r in bad], "reason": ["text is empty"] * len(bad),
            "preview": pa.nulls(len(bad), pa.string())}), "lz4")
    return StagingReport(shard=shard.key, shard_rows=len(rows), rows=len(good), errors=len(bad), files=files,
                         error_files=error_files, row_ranges=[(0, len(rows))], digest=content_digest(raw),
                         file_size=len(raw), reasons={"text is empty": len(bad)} if bad else {},
                         cut=sum(cut(r["id"]) for _, r in good))


def cut(row_id: str) -> int:
    """Whether the stand-in actor cut a row's text to fit max_length: the rows whose id ends in 1, and x (the
    duplicate id of the dup scenarios: its repeat, quarantined at the commit, must leave the count)."""
    return int(row_id.endswith("1") or row_id == "x")


# the user's job ----------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A job in ``folder``: in/*.jsonl, fake-model/, out/."""

    folder: Path
    dup: bool = False  # errors.duplicate_ids: error

    def __post_init__(self) -> None:
        (self.folder / "in").mkdir(parents=True, exist_ok=True)
        if not (self.folder / "fake-model").exists():
            (self.folder / "fake-model").mkdir()
            (self.folder / "fake-model" / "config.json").write_text("{}")
        self.spec = spec_from_dict({
            "input": {"paths": [str(self.folder / "in")]},
            "model": {"name": str(self.folder / "fake-model"), "quantization": "none"},
            "task": {"type": "text-classification"},
            "batching": {"batch_size": 8},
            "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1},
            "output": {"path": str(self.folder / "out")},
            "errors": {"max_rate": 1.0, "duplicate_ids": "error" if self.dup else "keep", "unreadable_files": "fail"},
        })

    def run(self, **flags: bool) -> Any:
        return runner.run_job(self.spec, **flags)

    def write(self, name: str, ids: list[str], no_text: tuple[str, ...] = ()) -> None:
        lines = [json.dumps({"id": i, "text": "" if i in no_text else "The team won."}) for i in ids]
        (self.folder / "in" / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))

    def remove(self, name: str) -> None:
        (self.folder / "in" / f"{name}.jsonl").unlink()

    def rows(self) -> collections.Counter[str]:
        """The current input's ids, each as often as it is there (``bad*`` left out: it can not be read)."""
        return collections.Counter(json.loads(line)["id"] for path in sorted((self.folder / "in").glob("*.jsonl"))
                                   if not path.name.startswith("bad") for line in path.read_text().splitlines())


def ids_in(folder: Path) -> list[str]:
    return [i for path in sorted(folder.glob("*.parquet"))
            for i in pq.read_table(path, columns=["id"])["id"].to_pylist()]


def twice(job: Job) -> str | None:
    """Ids twice among the top-level part files (what a reader of the output reads), if any."""
    doubled = sorted(i for i, n in collections.Counter(ids_in(job.folder / "out")).items() if n > 1)
    return f"ids twice in the part files: {doubled}" if doubled else None


def not_exact(job: Job) -> str | None:
    """What keeps the output from holding each current input row once (part files and _errors/), or its summary from
    counting the rows cut at max_length that the part files hold, or None."""
    out = job.folder / "out"
    parts = ids_in(out)
    found, want = collections.Counter(parts) + collections.Counter(ids_in(out / "_errors")), job.rows()
    problems = [twice(job)]
    if found != want:
        problems.append(f"lost {sorted((want - found).elements())}, extra {sorted((found - want).elements())}")
    if job.dup and set(parts) != set(want):
        problems.append(f"not each id once in the part files under duplicate_ids: error: {sorted(parts)}")
    if not (out / "_SUCCESS").exists():
        problems.append("no _SUCCESS")
    elif (said := json.loads((out / "_run.json").read_text())["rows_cut"]) != sum(map(cut, parts)):
        problems.append(f"rows_cut {said}, where the part files hold {sum(map(cut, parts))} rows cut")
    return "; ".join(p for p in problems if p) or None


def fails(job: Job) -> None:
    with pytest.raises(PipelineError):
        job.run()


def first(job: Job, shards: int = 3) -> None:
    job.write("a", ["a0", "a1"])
    job.write("b", ["b0", "b1", "b2"], no_text=("b1",))
    if shards == 3:
        job.write("c", ["c0", "c1"])


def failed(job: Job) -> None:
    first(job)
    job.write("bad", ["x0"])
    fails(job)
    job.remove("bad")
    job.write("d", ["d0", "d1"])


def finished(job: Job, shards: int = 3) -> None:
    first(job, shards)
    job.run()


def changed(job: Job) -> None:
    finished(job)
    job.write("b", ["b0", "b1", "b2", "b3"], no_text=("b3",))  # grown; b1 has text now


def removed(job: Job) -> None:
    finished(job)
    job.remove("b")


def dups(job: Job) -> None:
    """Under errors.duplicate_ids: error, a finished output where x is in a and b (b's x quarantined as a repeat)."""
    job.write("a", ["x", "a1"])
    job.write("b", ["x", "b1"])
    job.run()


@dataclass
class Scenario:
    name: str
    what: str
    setup: Callable[[Job], Any]  # up to the command under test (not killed)
    flags: dict[str, bool] = field(default_factory=dict)
    dup: bool = False


SCENARIOS = [
    Scenario("first", "a first run of a, b, c (one of b's rows quarantined)", first),
    Scenario("resume", "a, b, c committed by a run that failed on bad.jsonl; bad removed, d added; run again",
             failed),
    Scenario("overwrite", "a finished output of a, b; --overwrite", partial(finished, shards=2), {"overwrite": True}),
    Scenario("overwrite-failed", "the failed run of 'resume'; --overwrite", failed, {"overwrite": True}),
    Scenario("redo-changed", "a finished output of a, b, c; b grown since; --redo-changed",
             changed, {"redo_changed": True}),
    Scenario("prune", "a finished output of a, b, c; b deleted since; --prune", removed, {"prune": True}),
    Scenario("redo-changed-prune", "a finished output of a, b, c; b grown, c deleted; --redo-changed --prune",
             lambda job: (changed(job), job.remove("c")), {"redo_changed": True, "prune": True}),
    Scenario("dup-redo-changed", "x in a and b, duplicate_ids: error; a rewritten without x; --redo-changed",
             lambda job: (dups(job), job.write("a", ["a1"])), {"redo_changed": True}, dup=True),
    Scenario("dup-prune", "x in a and b, duplicate_ids: error; a deleted; --prune",
             lambda job: (dups(job), job.remove("a")), {"prune": True}, dup=True),
]


# the trials --------------------------------------------------------------------------------------------------------


def command(job: Job, flags: dict[str, bool]) -> str:
    """Run the command: 'ok', 'refused: ...' or 'raised ...' (a finding)."""
    try:
        job.run(**flags)
        return "ok"
    except PipelineError as exc:
        return f"refused: {str(exc).splitlines()[0][:200]}"
    except Exception as exc:  # noqa: BLE001 - a crash is a finding
        return f"raised {type(exc).__name__}: {str(exc)[:200]}"


def kill_everywhere(switch: KillSwitch, scenario: Scenario, tmp: Path) -> tuple[int, list[str]]:
    """The scenario's command killed before each of its mutations in turn, then run again: (mutations, findings)."""
    folder, snapshot = tmp / "job", tmp / "snapshot"
    scenario.setup(Job(folder, scenario.dup))
    if (folder / "out").exists():
        shutil.copytree(folder / "out", snapshot)

    def restore() -> Job:
        """The output put back as the setup left it, in the same place (it holds absolute paths); the command
        changes nothing else."""
        shutil.rmtree(folder / "out", ignore_errors=True)
        if snapshot.exists():
            shutil.copytree(snapshot, folder / "out")
        return Job(folder, scenario.dup)

    job = restore()
    outcome: list[str] = []
    switch.run(lambda: outcome.append(command(job, scenario.flags)), folder, None)
    total = len(switch.events)
    findings = [f"unkilled: {outcome[0]}; {not_exact(job)}"] if outcome != ["ok"] or not_exact(job) else []
    for at in range(1, total + 1):
        job = restore()
        killed, events = switch.run(lambda: command(job, scenario.flags), folder, at)
        where = f"killed before mutation {at}/{total}, {events[-1]}"
        problems = [] if killed else [f"not killed ({len(events)} mutations)"]
        if problem := twice(job):
            problems.append(f"at the kill: {problem}")
        if (again := command(job, scenario.flags)) != "ok":
            problems.append(f"the same command again: {again}")
        if problem := not_exact(job):
            problems.append(f"after the same command again: {problem}")
        findings += [f"{where}:\n    " + "\n    ".join(problems)] if problems else []
    return total, findings


@pytest.fixture()
def switch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> KillSwitch:
    """Ray's side stubbed (no model loaded, no input read ahead, no cluster) and pyarrow's LocalFileSystem replaced
    by one that a kill switch can kill, for this test only. The run's page is still written (a kill point), with stub
    contents."""
    caplog.set_level(logging.ERROR, logger="pipelines")
    monkeypatch.setattr(runner, "preflight", lambda spec: None)
    monkeypatch.setattr(runner, "check_input_columns", lambda spec, shards: None)  # read-only; 6% of the time
    monkeypatch.setattr(pipelines.cluster.connect, "connect", lambda address, spec: None)
    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(report, "read_run", lambda location: None)
    monkeypatch.setattr(report, "run_page", lambda run: "a run")
    return install(monkeypatch, Killed)


@pytest.mark.parametrize("scenario", [
    pytest.param(s, id=s.name, marks=[] if FULL or s.name in DEFAULT else pytest.mark.skip(reason=HOW))
    for s in SCENARIOS])
def test_a_run_killed_at_any_mutation_then_run_again_leaves_each_row_once(switch, scenario, tmp_path):
    """Killed at any write, move or delete of its output (a first run, a resume, --overwrite, --redo-changed,
    --prune, with or without duplicate ids), a run never shows a row twice, and the same command run again leaves
    every current input row exactly once in the output, and the output finished."""
    total, findings = kill_everywhere(switch, scenario, tmp_path)
    assert total > 0
    more = f"\n... and {len(findings) - 6} more" if len(findings) > 6 else ""
    assert not findings, (f"{scenario.what}: {len(findings)} of {total} kill points went wrong:\n"
                          + "\n".join(findings[:6]) + more)



def test_a_duplicate_quarantined_at_the_commit_leaves_the_counts_of_the_rows_written(switch, tmp_path):
    """The dup scenarios' set-up, without a kill (their kill-point trials run with PIPELINES_KILL_POINTS=all): a
    repeated id that the commit quarantines leaves the output once, and the summary's count of rows cut at max_length
    is the rows the part files hold (the commit counts again without the rows it takes out)."""
    job = Job(tmp_path / "job", dup=True)
    dups(job)
    assert not_exact(job) is None, not_exact(job)
