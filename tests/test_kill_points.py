"""A scheduled job killed at any point of its output's life keeps every input row exactly once.

Each scenario brings a job to a step (a tick, a rescore, an abandon...), then kills that step before its k-th
mutation of the output, for every k (the hook: tests/kill_points.py), and does what a user does next: the same
command again, the next tick, an abandon, then mends the failing input and runs two more ticks. After the kill and
after each of those steps no row may be in the output twice; once the user's steps are done, every row of the
current input must be in it once. The runner is test_schedule's ``Committing`` stand-in (no model, no Ray).

By default six of the scenarios run (``DEFAULT``), with a kill at each mutation of their step.
``PIPELINES_KILL_POINTS=all`` runs every scenario, a second kill at each mutation of the first recovery step, and a
stand-in that commits through ``OutputDir.start``/``commit``/``finish`` as run_job does
(``PIPELINES_KILL_POINTS_STRIDE=N``: only every N-th second kill).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kill_points import KillSwitch, install
from test_schedule import Committing, Killed, add_shard, all_ids, day, fake_model, make_job, rows

from pipelines.errors import PipelineError
from pipelines.output import report
from pipelines.output import summary as summaries
from pipelines.output.commit import OutputDir
from pipelines.output.staging import StagingReport
from pipelines.runner import job_record
from pipelines.schedule.executor import abandon, run_due
from pipelines.schedule.ticks import run_id

FULL = os.environ.get("PIPELINES_KILL_POINTS", "") == "all"
STRIDE = int(os.environ.get("PIPELINES_KILL_POINTS_STRIDE", "1"))
HOW = "not in the default set: PIPELINES_KILL_POINTS=all runs it (every scenario, second kills, RealCommit: ~8 min)"
#: A tick of new files, of a changed one, a failing run, a run redone whole (a tick's, a rescore's) and a prune: the
#: whole module in about 15 s on a 2-core machine (every scenario's first kills: 25 s more).
DEFAULT = {"first-tick", "changed-file", "change-fails", "redo-whole", "rescore-redo-whole", "prune"}


class RealCommit(Committing):
    """``Committing``'s failures (``bad*`` fail the run at its end, ``fail_first`` before any commit), but the output
    started by ``OutputDir.start`` (it writes _job.json), each shard committed by ``OutputDir.commit`` (merge, record,
    ``faults.checkpoint``, reveal) and the output finished by ``OutputDir.finish``, as run_job does."""

    def __call__(self, spec, *, address=None, overwrite=False, shards=None, before_visible=None, precision=None,
                 column_types=None):
        out, job = OutputDir(spec.output.path), job_record(spec)
        if overwrite:
            out.clear()
        out.start(job)
        out.check_unrecorded()
        if Path(spec.output.path).name.removeprefix("run=") in self.fail_first:
            raise PipelineError("failed before its first commit")
        committed = out.commits()
        for shard in [s for s in shards if s.key not in committed and not s.name.startswith("bad")]:
            ids = ids_in(Path(shard.path))
            staged = Path(spec.output.path) / "_staging" / shard.key / "block-0.parquet"
            staged.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"id": ids, "_row": list(range(len(ids)))}), staged)
            staging = StagingReport(shard=shard.key, shard_rows=len(ids), rows=len(ids), errors=0, files=[str(staged)],
                                    row_ranges=[(0, len(ids))])
            out.commit(shard, [staging], job, before_visible=before_visible)
        if any(s.name.startswith("bad") for s in shards):
            raise PipelineError("1 input file(s) could not be read: bad")
        out.finish()
        return summaries.build(job, [], [], 0.0, "succeeded").model_copy(update={"shards_this_run": len(shards)})


def ids_in(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Job:
    """A scheduled job in ``folder`` (in/, fake-model/, out/) and what the user did to its input."""

    folder: Path
    runner: Committing
    gone: set[str] = field(default_factory=set)  # rows of deleted inputs: their output stays until a prune

    def __post_init__(self) -> None:
        self.spec = make_job(self.folder, fake_model(self.folder) if not self.model.exists() else str(self.model))

    @property
    def model(self) -> Path:
        return self.folder / "fake-model"

    def write(self, name: str, n: int) -> None:
        add_shard(self.folder, f"{name}.jsonl", rows(name[0] if name != "bad" else "x", n))

    def remove(self, name: str) -> None:
        self.gone |= set(ids_in(self.folder / "in" / f"{name}.jsonl"))
        (self.folder / "in" / f"{name}.jsonl").unlink()

    def current(self) -> set[str]:
        return {i for p in (self.folder / "in").glob("*.jsonl") if not p.name.startswith("bad") for i in ids_in(p)}


# what the user does ------------------------------------------------------------------------------------------------


def tick(n: int, hours: float = 0.01, **kw: bool) -> Callable[[Job], Any]:
    return lambda job: run_due(job.spec, now=day(n, hours=hours), runner=job.runner, **kw)


def give_up(run: str) -> Callable[[Job], Any]:
    return lambda job: abandon(job.spec, run)


def remove_bad(job: Job) -> None:
    for path in (job.folder / "in").glob("bad*"):
        path.unlink()


def new_model(job: Job) -> None:
    (job.model / "config.json").write_text('{"retrained_on": "2026-11-28"}')


def old_model_back(job: Job) -> None:
    (job.model / "config.json").write_text("{}")
    remove_bad(job)
    job.runner.fail_first.clear()


def steps(*todo: Callable[[Job], Any]) -> Callable[[Job], None]:
    def run(job: Job) -> None:
        for step in todo:
            step(job)

    return run


def writes(*files: tuple[str, int]) -> Callable[[Job], None]:
    return steps(*(lambda job, f=f: job.write(*f) for f in files))


def fails(invocation: Callable[[Job], Any]) -> Callable[[Job], None]:
    def run(job: Job) -> None:
        assert invocation(job).failures

    return run


@dataclass
class Action:
    """A step of the user's recovery and what must hold after it: ``once`` (no row twice), ``all`` (also every
    current row there; a deleted file's rows may stay), ``pruned`` (and none of a deleted file's), ``none``."""

    label: str
    do: Callable[[Job], Any]
    check: str = "once"
    wants: Callable[[Job], list[set[str]]] | None = None  # the accepted sets of rows, instead of the current input


def A(label: str, do: Callable[[Job], Any], check: str = "once", wants=None) -> Action:
    return Action(label, do, check, wants)


@dataclass
class Scenario:
    name: str
    setup: Callable[[Job], None]  # up to the step under test (not killed)
    step: Callable[[Job], Any]
    what: str
    plans: dict[str, list[Action]]


R2, RESCORE = run_id(day(2)), run_id(day(1, hours=3))
FIX = A("remove bad*, the stand-in's failures cleared", lambda job: (remove_bad(job), job.runner.fail_first.clear()),
        "none")
FINALS = [FIX, A("run_due(day 5)", tick(5), "all"), A("run_due(day 6)", tick(6), "all")]
ONCE = A("", lambda job: None)  # the check after a kill


def a_or_b_old(job: Job) -> list[set[str]]:
    """After R2 is abandoned: day 1's a brought back, or a's new version where R2 still holds it (either, once)."""
    return [{"a0", "a1", "b0", "b1"}, job.current()]


AGAIN_OR_NEXT = {"same-again": [A("run_due(day 2 +0.02h) again", tick(2, 0.02), "all")],
                 "next-tick": [A("run_due(day 3)", tick(3), "all")]}
day1 = tick(1)
ab = writes(("a", 2), ("b", 2))
changed_fails = steps(ab, day1, writes(("a", 3), ("bad", 1)))
redo_whole = steps(changed_fails, fails(tick(2)), new_model, lambda job: job.runner.fail_first.add(R2))
rescore_fails = steps(writes(("a", 2), ("b", 3)), day1, writes(("bad", 1)))
rescore_redo = steps(ab, day1, writes(("bad", 1)), fails(tick(1, 3, rescore=True)), new_model,
                     lambda job: job.runner.fail_first.add(RESCORE))
prune_abc = steps(writes(("a", 2), ("b", 2), ("c", 3)), day1, lambda job: job.remove("b"))
PRUNE_PLANS = {"same-again": [A("run_due(day 2 +1h, prune) again", tick(2, 1, prune=True), "pruned")],
               "next-tick": [A("run_due(day 3)", tick(3), "all"), A("run_due(day 3 +1h, prune)", tick(3, 1, prune=True),
                                                                    "pruned")]}

SCENARIOS = [
    Scenario("first-tick", ab, day1, "run_due(day 1): a, b new, no output yet",
             {"same-again": [A("run_due(day 1 +0.02h) again", tick(1, 0.02), "all")],
              "next-tick": [A("run_due(day 2)", tick(2), "all")]}),
    Scenario("plain-tick", steps(ab, day1, writes(("c", 2), ("d", 3))), tick(2), "run_due(day 2): c, d new",
             AGAIN_OR_NEXT),
    Scenario("changed-file", steps(ab, day1, writes(("a", 4), ("c", 2))), tick(2),
             "run_due(day 2): a.jsonl rewritten with 4 rows (day 1's a retired), c new", AGAIN_OR_NEXT),
    Scenario("two-changed", steps(ab, day1, writes(("a", 4), ("b", 3))), tick(2), "run_due(day 2): a and b rewritten",
             AGAIN_OR_NEXT),
    Scenario("rescore-fails", rescore_fails, tick(1, 3, rescore=True),
             "run_due(day 1 +3h, rescore): a, b rescored, the run fails on bad.jsonl",
             {"resume-with-bad": [A("run_due(day 1 +4h): resumed, bad still there", tick(1, 4)),
                                  A("remove bad", remove_bad, "none"), A("run_due(day 1 +5h)", tick(1, 5), "all")],
              "rescore-again": [A("run_due(day 1 +4h, rescore) again", tick(1, 4, rescore=True)),
                                A("remove bad", remove_bad, "none"), A("run_due(day 1 +5h)", tick(1, 5), "all")],
              "fix-then-resume": [A("remove bad", remove_bad, "none"), A("run_due(day 1 +4h)", tick(1, 4), "all")],
              "abandon": [A(f"abandon({RESCORE})", give_up(RESCORE), "all"), A("remove bad", remove_bad, "none"),
                          A("run_due(day 2)", tick(2), "all")]}),
    Scenario("rescore-resume", steps(rescore_fails, fails(tick(1, 3, rescore=True)), remove_bad), tick(1, 4),
             "a failed rescore, bad.jsonl removed, run_due(day 1 +4h) resumes it",
             {"same-again": [A("run_due(day 1 +5h) again", tick(1, 5), "all")],
              "next-tick": [A("run_due(day 2)", tick(2), "all")]}),
    Scenario("rescore-resume-bad", steps(rescore_fails, fails(tick(1, 3, rescore=True))), tick(1, 4),
             "a failed rescore resumed by run_due(day 1 +4h), bad.jsonl still there",
             {"same-again": [A("run_due(day 1 +5h) again", tick(1, 5)), A("remove bad", remove_bad, "none"),
                             A("run_due(day 1 +6h)", tick(1, 6), "all")]}),
    Scenario("change-fails", changed_fails, tick(2),
             "run_due(day 2): a rewritten (day 1's retired as the new one commits), the run fails on bad.jsonl",
             {"same-again": [A("run_due(day 2 +1h) again", tick(2, 1)), A("remove bad", remove_bad, "none"),
                             A("run_due(day 2 +2h)", tick(2, 2), "all")],
              "abandon": [A(f"abandon({R2})", give_up(R2)), A("remove bad", remove_bad, "none"),
                          A("run_due(day 3)", tick(3), "all")]}),
    Scenario("redo-whole", redo_whole, tick(2, 1),
             f"{R2} failed after committing a's new version; the model changed, so run_due(day 2 +1h) redoes it whole "
             "(its partition cleared) and it fails again before any commit",
             {"again-then-abandon": [A("run_due(day 2 +2h) again, fails again", tick(2, 2)),
                                     A(f"abandon({R2})", give_up(R2), "all", a_or_b_old)],
              "abandon": [A(f"abandon({R2})", give_up(R2), "all", a_or_b_old)],
              "model-back-resume": [A("the model back, bad removed", old_model_back, "none"),
                                    A("run_due(day 2 +2h): resumed", tick(2, 2), "all")]}),
    Scenario("redo-abandon", steps(redo_whole, fails(tick(2, 1))), give_up(R2),
             f"after redo-whole: abandon({R2}) brings day 1's a back",
             {"abandon-again": [A(f"abandon({R2}) again", give_up(R2), "all", a_or_b_old)],
              "next-tick": [A("run_due(day 3), bad still there", tick(3))],
              "model-back-resume": [A("the model back, bad removed", old_model_back, "none"),
                                    A("run_due(day 2 +2h)", tick(2, 2), "all", a_or_b_old)]}),
    Scenario("rescore-redo-whole", rescore_redo, tick(1, 4),
             "a failed rescore (a, b committed), the model changed: run_due(day 1 +4h) redoes it whole and fails",
             {"abandon": [A(f"abandon({RESCORE})", give_up(RESCORE), "all")],
              "again-then-abandon": [A("run_due(day 1 +5h) again", tick(1, 5)),
                                     A(f"abandon({RESCORE})", give_up(RESCORE), "all")]}),
    Scenario("rescore-redo-abandon", steps(rescore_redo, fails(tick(1, 4))), give_up(RESCORE),
             f"after rescore-redo-whole: abandon({RESCORE}) brings day 1's a, b back",
             {"abandon-again": [A(f"abandon({RESCORE}) again", give_up(RESCORE), "all")],
              "next-tick": [A("run_due(day 2), bad still there", tick(2))]}),
    Scenario("prune", prune_abc, tick(2, prune=True), "b.jsonl deleted; run_due(day 2, prune)", PRUNE_PLANS),
    Scenario("prune-with-work", steps(prune_abc, writes(("a", 3), ("d", 2))), tick(2, prune=True),
             "b.jsonl deleted, a rewritten, d new; run_due(day 2, prune)", PRUNE_PLANS),
    Scenario("prune-handled-tick",
             steps(ab, day1, writes(("c", 2), ("e", 2)), tick(2), lambda job: (job.remove("b"), job.remove("c"))),
             tick(2, 1, prune=True), "b (day 1's) and c (day 2's) deleted; run_due(day 2 +1h, prune), a tick handled",
             {"same-again": [A("run_due(day 2 +2h, prune) again", tick(2, 2, prune=True), "pruned")],
              "next-tick": [A("run_due(day 3)", tick(3), "all")]}),
]


# a trial: the step killed, then the user's steps -------------------------------------------------------------------


def wrong(job: Job, action: Action) -> str | None:
    """What is wrong with the output after ``action``, or None."""
    if action.check == "none":
        return None
    try:
        ids = all_ids(job.folder)
    except Exception as exc:  # noqa: BLE001 - an output a reader can not read is a finding
        return f"the output can not be read: {type(exc).__name__}: {exc}"
    counts = collections.Counter(ids)
    problems = [f"{what} {found}" for what, found in (("doubled", sorted(i for i, n in counts.items() if n > 1)),
                                                      ("rows of bad.jsonl", sorted(i for i in counts if i[0] == "x")))
                if found]
    if action.check in ("all", "pruned"):
        accepted = action.wants(job) if action.wants else [job.current()]
        found = []
        for want in accepted:
            extra = set(counts) - want - (job.gone if action.check == "all" else set())
            found.append(([f"lost {sorted(want - set(counts))}"] if want - set(counts) else [])
                         + ([f"unexpected {sorted(extra)}"] if extra else []))
        problems += min(found, key=len)
        if problems:
            problems.append(f"(expected {' or '.join(str(sorted(w)) for w in accepted)})")
    return " ".join(problems) or None


def attempt(job: Job, do: Callable[[Job], Any]) -> str:
    """Run a user's step: 'ok', 'ok, N run(s) failed', 'refused: ...' or 'raised ...' (a finding)."""
    try:
        result = do(job)
    except PipelineError as exc:
        return f"refused: {str(exc).splitlines()[0][:200]}"
    except Exception as exc:  # noqa: BLE001
        return f"raised {type(exc).__name__}: {str(exc)[:200]}"
    failed = getattr(result, "failures", None)
    return f"ok, {len(failed)} run(s) failed" if failed else "ok"


def killed(switch: KillSwitch, job: Job, do: Callable[[Job], Any], at: int | None) -> tuple[str, list[str]]:
    """``do`` killed before its ``at``-th mutation (None: not killed): its outcome and its mutations."""
    outcome: list[str] = []
    was_killed, events = switch.run(lambda: outcome.append(attempt(job, do)), job.folder, at)
    return ("killed" if was_killed else outcome[0]), events


@dataclass
class Trial:
    scenario: Scenario
    plan: str
    kill: str = "no kill"
    second: str = ""
    transcript: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    step_events: list[str] = field(default_factory=list)
    recovery_events: tuple[int, list[str]] | None = None  # the first recovery invocation's (index, mutations)

    def found(self, where: str, problem: str) -> None:
        self.findings.append(f"{where}: {problem}")

    def summary(self) -> list[str]:
        """The trial's first finding (later ones mostly follow from it), where it was still wrong, and its steps."""
        if not self.findings:
            return []
        later = [f.split(": ", 1)[0] for f in self.findings[1:]]
        return [f"{self.scenario.name}/{self.plan}, {self.kill}{self.second}:\n    {self.findings[0]}"
                + (f"\n    wrong again {', '.join(later)}" if later else "")
                + f"\n    steps: {' | '.join(self.transcript)}"]


def trial(switch: KillSwitch, scenario: Scenario, plan: str, job: Job, at: int | None = None, of: int = 0,
          second: tuple[int, int] | None = None) -> Trial:
    """The step killed before its ``at``-th mutation (of ``of``), then the plan's steps and the final ones;
    ``second``: (i, j) kills the plan's i-th step before its j-th mutation, then runs it again."""
    done = Trial(scenario, plan)
    outcome, done.step_events = killed(switch, job, scenario.step, at)
    if at is not None:
        done.kill = f"killed before mutation {at}/{of} of the step, {done.step_events[-1]}"
    done.transcript.append(f"{scenario.what}: {outcome}")
    if outcome.startswith("raised"):
        done.found("in the step", outcome)
    if problem := wrong(job, ONCE):
        done.found("right after the kill", problem)
    actions = scenario.plans[plan] + FINALS
    for i, action in enumerate(actions):
        if second and second[0] == i:
            outcome, events = killed(switch, job, action.do, second[1])
            done.second = f"; then killed before mutation {second[1]} of '{action.label}', {events[-1] if events else '?'}"
            done.transcript.append(f"{action.label}: {outcome}")
            if problem := wrong(job, ONCE):
                done.found(f"right after the second kill, in '{action.label}'", problem)
        if action.check != "none" and done.recovery_events is None and not second:
            outcome, events = killed(switch, job, action.do, None)
            done.recovery_events = (i, events)
        else:
            outcome = attempt(job, action.do)
        done.transcript.append(f"{action.label}: {outcome}")
        check = action
        if outcome.startswith("raised"):
            done.found(f"in '{action.label}'", outcome)
        elif outcome.startswith("refused"):
            if i > len(scenario.plans[plan]):  # after the fix
                done.found(f"in '{action.label}'", "the user is stuck: the tick after the fix is refused")
            check = ONCE  # a refused step: still no row twice
        if problem := wrong(job, check):
            done.found(f"after '{action.label}'", problem)
    return done


class Snapshot:
    """The scenario's job set up once, then put back in the same folder before each trial (its output holds
    absolute paths)."""

    def __init__(self, scenario: Scenario, folder: Path, runner: type[Committing]) -> None:
        self.runner, self.folder, self.copy = runner, folder / "job", folder / "snapshot"
        self.folder.mkdir()
        job = Job(self.folder, runner())
        scenario.setup(job)
        self.fail_first, self.gone = set(job.runner.fail_first), set(job.gone)
        shutil.copytree(self.folder, self.copy)  # copy2: the inputs keep their times, so their fingerprints

    def restore(self) -> Job:
        shutil.rmtree(self.folder)
        shutil.copytree(self.copy, self.folder)
        runner = self.runner()
        runner.fail_first = set(self.fail_first)
        return Job(self.folder, runner, set(self.gone))


def kill_everywhere(switch: KillSwitch, scenario: Scenario, folder: Path, runner: type[Committing],
                    seconds: bool) -> list[str]:
    """Every plan of ``scenario`` with no kill, then a kill at each mutation of its step (and, with ``seconds``,
    a second kill at each ``STRIDE``-th mutation of the first recovery invocation): the findings."""
    snapshot = Snapshot(scenario, folder, runner)
    findings: list[str] = []
    for plan in scenario.plans:
        unkilled = trial(switch, scenario, plan, snapshot.restore())
        findings += unkilled.summary()
        total = len(unkilled.step_events)
        for at in range(1, total + 1):
            first = trial(switch, scenario, plan, snapshot.restore(), at, total)
            findings += first.summary()
            if seconds and first.recovery_events:
                i, again = first.recovery_events
                for j in range(1, len(again) + 1, STRIDE):
                    findings += trial(switch, scenario, plan, snapshot.restore(), at, total, (i, j)).summary()
    return findings


def findings_text(findings: list[str]) -> str:
    """The assertion message: the first trials that went wrong, each with its kill point(s) and steps."""
    more = f"\n... and {len(findings) - 8} more" if len(findings) > 8 else ""
    return f"{len(findings)} trial(s) went wrong:\n" + "\n".join(findings[:8]) + more


@pytest.fixture()
def switch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> KillSwitch:
    """pyarrow's LocalFileSystem replaced for this test only by one that a kill switch can kill. The job's page
    (_report.html) is still written at each invocation, so its writes are kill points too, but with a stub for its
    contents: its charts took 85% of each trial's time, and what they show is no concern here."""
    caplog.set_level(logging.ERROR, logger="pipelines")  # hundreds of invocations' warnings: not the report
    monkeypatch.setattr(report, "ledger_page", lambda location, entries, pages=None: f"{len(entries)} ledger lines")
    return install(monkeypatch, Killed)


def chosen(default: set[str]) -> list:
    return [pytest.param(s, id=s.name, marks=[] if FULL or s.name in default else pytest.mark.skip(reason=HOW))
            for s in SCENARIOS]


@pytest.mark.parametrize("scenario", chosen(DEFAULT))
def test_a_kill_at_any_mutation_of_a_step_then_the_users_next_steps_leave_each_row_once(switch, scenario, tmp_path):
    """Killed at any write, move or delete of the step, then resumed, abandoned or run again as the user would, a
    job's output never holds a row twice and ends up holding every current input row once."""
    findings = kill_everywhere(switch, scenario, tmp_path, Committing, seconds=False)
    assert not findings, findings_text(findings)


@pytest.mark.parametrize("scenario", chosen(set()))
def test_a_second_kill_during_the_recovery_from_a_kill_leaves_each_row_once(switch, scenario, tmp_path):
    """The first step of the user's recovery killed too, at any of its mutations (after a kill at any mutation of
    the step), then run again: still no row twice, and every current row once in the end."""
    findings = kill_everywhere(switch, scenario, tmp_path, Committing, seconds=True)
    assert not findings, findings_text(findings)


@pytest.mark.parametrize("scenario", chosen(set()))
def test_kill_points_with_the_output_committed_as_run_job_commits(switch, scenario, tmp_path):
    """As the first test, with each shard committed by OutputDir.commit between OutputDir.start and finish (the
    merge, the record, the faults checkpoint and the reveal of run_job's commit) instead of the stand-in's."""
    findings = kill_everywhere(switch, scenario, tmp_path, RealCommit, seconds=False)
    assert not findings, findings_text(findings)
