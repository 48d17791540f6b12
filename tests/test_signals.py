"""What SIGTERM and SIGINT do to `pipelines run` and `pipelines schedule --once`: the signals Airflow, cron, systemd,
Kubernetes and a user at a terminal stop a process with (tests/test_faults.py covers SIGKILL).

``PIPELINES_CRASH_SIGNAL`` (pipelines/faults.py, test-only) sends the signal at a named point; from the actor's
``predict`` point, ``PIPELINES_CRASH_TARGET`` sends it to the driver's whole process group (what Airflow's killpg
and Ctrl-C at a terminal do; the local Ray's processes are in groups of their own, so it reaches the driver alone),
or to every process of the driver's session (what ``systemctl stop`` does). Each CLI runs in a session of its own,
so such a signal reaches only its own processes. Leftover processes are the ones carrying the run's ``PROBE_TAG`` in
their environment (every process a local Ray starts inherits it), looked for under a deadline after the CLI has
exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, SENTENCES, write_jsonl

from pipelines.output.lock import JobLock

SHARDS, ROWS = 6, 10
STOPPED = "committed shards are kept; run the same command again to resume"
AGENTS = ("DashboardAgent", "RuntimeEnvAgent")  # a local Ray's agents: they may outlive a terminated CLI, ~1 min


@dataclass
class Outcome:
    """One CLI run and what it left: exit status, stderr, leftover processes, the output just after."""

    returncode: int
    stderr: str
    leftover: list[str]
    commits: int
    visible: list[str]
    success: bool
    lock_free: bool

    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def tagged_processes(tag: str) -> list[str]:
    """Processes whose environment carries ``tag``: the CLI's own and every one its local Ray started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"PROBE_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:80].decode(errors="replace")
                found.append(f"{entry.name} {command}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def processes_left(tag: str, deadline_s: float = 20.0, lingering: tuple[str, ...] = ()) -> list[str]:
    """The tagged processes still there once they had ``deadline_s`` to end (polled; no longer once only those
    named in ``lingering`` are left, which end on their own later); any left are killed."""
    end = time.monotonic() + deadline_s
    while (left := tagged_processes(tag)) and time.monotonic() < end:
        if all(any(name in line for name in lingering) for line in left):
            break
        time.sleep(0.25)
    for line in left:  # our own orphans only (they carry our tag): never anyone else's Ray
        try:
            os.kill(int(line.split()[0]), 9)
        except OSError:
            pass
    return left


def lock_is_free(path: Path) -> bool:
    try:
        JobLock(path).acquire().release()
    except Exception:  # noqa: BLE001 - LockHeld: another holder
        return False
    return True


def visible_ids(out: Path) -> list[str]:
    """The ids a reader globbing the output's visible Parquet files sees (schedule partitions included)."""
    files = [p for p in out.rglob("*.parquet") if not any(part.startswith("_") for part in p.relative_to(out).parts)]
    return pq.read_table([str(p) for p in files]).column("id").to_pylist() if files else []


def ctrl_c_as_at_a_terminal() -> None:
    """In the CLI's process before it starts: Ctrl-C as a terminal's command gets it. A shell without job control
    starts a command put in the background (`cmd &`, as a CI runner or `nohup … &` may run the tests) with SIGINT
    ignored, which its children inherit, so the Ctrl-C these tests send was ignored there and the run went on to
    its end (exit 0): the tests failed where they were run so, and passed at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Job:
    def __init__(self, folder: Path, model: str, schedule: bool = False) -> None:
        self.out = folder / "out"
        self.shard_ids: list[set[str]] = []
        for k in range(SHARDS):
            rows = [{"id": f"s{k}-{i}", "text": SENTENCES[(k + i) % len(SENTENCES)]} for i in range(ROWS)]
            write_jsonl(folder / "in" / f"part-{k}.jsonl", rows)
            self.shard_ids.append({r["id"] for r in rows})
        raw = {
            "input": {"paths": [str(folder / "in")]},
            "model": {"name": model},
            "task": {"type": "text-classification"},
            "batching": {"batch_size": 8},
            "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1},
            "output": {"path": str(self.out)},
            **({"schedule": {"cron": "0 2 * * *"}} if schedule else {}),
        }
        self.path = folder / "job.yaml"
        self.path.write_text(yaml.safe_dump(raw))

    def cli(self, *args: str, env: dict[str, str] | None = None, lock: str = "_run.lock", group: bool = False,
            session: bool = False, lingering: tuple[str, ...] = ()) -> Outcome:
        """``pipelines ARGS JOB.yaml`` in a session of its own; ``group``: the signal goes to that session's process
        group (PIPELINES_CRASH_TARGET is the CLI's pid, negated, known to the shell that execs it); ``session``: to
        every process of that session, the local Ray's among them. ``lingering``: processes not waited for (see
        :func:`processes_left`)."""
        tag = uuid.uuid4().hex
        full = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PROBE_TAG": tag, **(env or {})}
        full.pop("RAY_ADDRESS", None)
        command = [sys.executable, "-m", "pipelines", args[0], str(self.path), *args[1:]]
        if group or session:
            target = "-$$" if group else "session:$$"
            command = ["bash", "-c", f'export PIPELINES_CRASH_TARGET={target}; exec "$@"', "bash", *command]
        with tempfile.TemporaryFile("w+") as errors:
            process = subprocess.run(command, cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=errors, text=True,
                                     start_new_session=True, timeout=300, preexec_fn=ctrl_c_as_at_a_terminal)
            errors.seek(0)
            stderr = errors.read()
        commits = self.out.rglob("_commits/*.json") if self.out.exists() else []
        return Outcome(
            returncode=process.returncode, stderr=stderr, leftover=processes_left(tag, lingering=lingering),
            commits=len(list(commits)),
            visible=visible_ids(self.out) if self.out.exists() else [], success=bool(list(self.out.rglob("_SUCCESS"))),
            lock_free=lock_is_free(self.out / lock),
        )

    def assert_whole_shards(self, seen: list[str]) -> None:
        for ids in self.shard_ids:
            assert ids <= set(seen) or not (ids & set(seen)), "a shard is partly visible"


@pytest.fixture(scope="module")
def terminated(tmp_path_factory, tiny_models):
    """One output: SIGTERM to every process of the run while the actor predicts (nothing committed yet), then to the
    whole process group at the same point, then to the driver alone between a commit record and its files, then the
    same command again."""
    folder = tmp_path_factory.mktemp("terminated")
    job = Job(folder, tiny_models("classifier"))
    predicting = {"PIPELINES_CRASH_AT": "predict:2", "PIPELINES_CRASH_SIGNAL": "TERM"}
    every = job.cli("run", env={**predicting, "PIPELINES_CRASH_ONCE": str(folder / "signalled-all")}, session=True,
                    lingering=AGENTS)
    group = job.cli("run", env={**predicting, "PIPELINES_CRASH_ONCE": str(folder / "signalled")}, group=True,
                    lingering=AGENTS)
    assert (folder / "signalled-all").exists() and (folder / "signalled").exists()  # the actor did signal them
    driver = job.cli("run", env={"PIPELINES_CRASH_AT": "mid_commit:2", "PIPELINES_CRASH_SIGNAL": "TERM"},
                     lingering=AGENTS)
    return job, group, driver, job.cli("run"), every


def test_sigterm_is_one_line_and_status_143_also_to_the_whole_group(terminated):
    """Ray's own SIGTERM handler exited 15 with no line of ours; to the whole group, Ray's shutdown at exit
    aborted the driver (SIGABRT: -6, a core dump where enabled), and while the group held the local Ray's processes,
    Ray's core worker once ended it first (exit 1, a CI run of 2026-12-08)."""
    _, group, driver, _, _ = terminated
    for run in (group, driver):
        assert run.returncode == 143, (run.returncode, run.stderr[-1500:])
        assert run.last_line() == f"terminated: {STOPPED}"
        assert "Traceback" not in run.stderr


def test_sigterm_to_every_process_of_the_run_is_one_line_and_143_unless_ray_ends_it_first(terminated):
    """systemd's stop: the local Ray's processes get the signal too, and Ray's core worker ends the command on its
    own (exit 1, no line of ours) where it comes before the thread the signal wakes (README: it did once, in a CI
    run); either way the run has stopped as after a crash (the next test: its lock let go, whole shards, none of
    Ray's processes left, resumed exactly once)."""
    every = terminated[-1]
    assert every.returncode in (143, 1), (every.returncode, every.stderr[-1500:])
    if every.returncode == 143:
        assert every.last_line() == f"terminated: {STOPPED}" and "Traceback" not in every.stderr


def test_a_terminated_run_lets_go_of_its_lock_leaves_no_process_and_resumes_exactly_once(terminated):
    job, group, driver, resumed, every = terminated
    # the driver's 2nd commit not yet in place
    assert every.commits == group.commits == 0 and driver.commits == 2 and len(driver.visible) == ROWS
    for run in (every, group, driver):
        job.assert_whole_shards(run.visible)
        assert not run.success and run.lock_free
    # Ray's processes end with the CLI, but for its dashboard and runtime-env agents, which may end on their own once
    # they find their raylet gone (about a minute here: README, "Stopped by a signal")
    for run in (every, group, driver):
        assert [p for p in run.leftover if not any(agent in p for agent in AGENTS)] == []
    assert resumed.returncode == 0 and resumed.success and resumed.leftover == [], resumed.stderr[-1500:]
    got = visible_ids(job.out)
    assert sorted(got) == sorted(set().union(*job.shard_ids)) and len(got) == len(set(got))
    summary = json.loads((job.out / "_run.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == SHARDS * ROWS


def test_ctrl_c_stops_schedule_once_with_status_130_and_lets_go_of_its_locks(tmp_path, tiny_models):
    """Then a second Ctrl-C, pressed while Ray shuts down at exit, as impatient users do: it raised KeyboardInterrupt
    inside Ray's shutdown, whose traceback came after the command's line."""
    job = Job(tmp_path, tiny_models("classifier"), schedule=True)
    run = job.cli("schedule", "--once", env={"PIPELINES_CRASH_AT": "mid_commit:2,exit", "PIPELINES_CRASH_SIGNAL": "INT"},
                  lock="_schedule.lock")
    assert "Traceback" not in run.stderr, run.stderr[-1500:]
    assert run.returncode == 130 and run.last_line() == f"interrupted: {STOPPED}", run.stderr[-1500:]
    assert run.commits == 2 and not run.success and run.lock_free and run.leftover == []
    job.assert_whole_shards(run.visible)


def test_sigterm_to_the_scheduler_loop_asleep_after_a_run_is_one_line_and_status_143(tmp_path, tiny_models):
    """`pipelines schedule JOB` (the loop), idle after a tick's run: `systemctl stop` exited 143 with no line of
    ours. Ray's shutdown after the tick (a local Ray is not kept between ticks) put SIGTERM back to the kernel's
    default, under Python's handler, so the signal ended the process where it slept."""
    job = Job(tmp_path, tiny_models("classifier"), schedule=True)
    raw = yaml.safe_load(job.path.read_text())
    raw["schedule"]["missed_ticks"] = "run_once"  # the first tick runs, however late it is found
    job.path.write_text(yaml.safe_dump(raw))
    run = job.cli("schedule", env={"PIPELINES_CRASH_AT": "idle", "PIPELINES_CRASH_SIGNAL": "TERM"},
                  lock="_schedule.lock", lingering=AGENTS)
    assert "succeeded" in run.stderr and "next tick at" in run.stderr, run.stderr[-1500:]  # asleep after a run
    assert run.returncode == 143, (run.returncode, run.stderr[-1500:])
    assert run.last_line() == f"terminated: {STOPPED}"
    assert run.lock_free and sorted(run.visible) == sorted(set().union(*job.shard_ids))



def test_sigterm_while_ray_starts_is_the_clis_terminated_not_exit_15():
    """``ray.init`` sets a SIGTERM handler of its own, ``sys.exit(15)``, from its start until it returns: a SIGTERM in
    the seconds a local Ray takes to start (an orchestrator's timeout, ``kill``) ended `pipelines run` and `schedule
    --once` with status 15 and no line, where the README promises 143 and `terminated: …`. Within keeping_sigterm,
    which wraps ``ray.init``, that exit is the CLI's Terminated, with its handler set again; another exit passes."""
    from pipelines.errors import Terminated, keeping_sigterm, raise_terminated

    before = signal.signal(signal.SIGTERM, raise_terminated)  # as the CLI sets it
    try:
        with pytest.raises(Terminated), keeping_sigterm():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init sets first
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        with pytest.raises(SystemExit) as other, keeping_sigterm():
            sys.exit(3)
        assert other.value.code == 3
    finally:
        signal.signal(signal.SIGTERM, before)
