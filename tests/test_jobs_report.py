"""What `pipelines status` and `pipelines submit --wait` say about a job that ended, and how `submit --wait` exits.

A failed job's own one-line `error: …` / `busy: …` (what `pipelines run` ends a foreseen failure with) is
shown next to Ray's status, read from the logs Ray holds; an entrypoint that exited 75 (another run of the
output in progress: try later) makes `submit --wait` exit 75, not 1. No Ray and no network here: the job
server's answers are stand-ins shaped like Ray 2.60's (tests/test_jobs_client.py checks them on a real head).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import ROOT

from pipelines.cli import cluster as cli_cluster
from pipelines.cli.main import main
from pipelines.cluster import jobs
from pipelines.errors import PipelineError

ADDRESS = "http://127.0.0.1:8265"
ERROR = "error: input.paths: /data/nope does not exist; check the path (relative paths start at the current directory)"
BUSY = ("busy: another run of the output s3://b/out is in progress (pid 3223 on head since 2026-12-01 10:06:28); "
        "not starting a second one. It ends by itself; the lock is s3://b/out/_run.lock")


def ray_message(code: int, tail: str) -> str:
    """Ray 2.60's message for an entrypoint that exited non-zero (job_supervisor.py), its log excerpt included."""
    return f"Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 chars):\n{tail}"


class FakeJobs:
    """The JobSubmissionClient calls the report uses, answering like Ray's for one job."""

    def __init__(self, status: str, message: str, exit_code: int | None, logs: str = "") -> None:
        self.info = SimpleNamespace(status=status, message=message, driver_exit_code=exit_code)
        self.logs = logs
        self.log_requests = 0

    def get_job_info(self, job_id: str) -> SimpleNamespace:
        return self.info

    def get_job_logs(self, job_id: str) -> str:
        self.log_requests += 1
        return self.logs


@pytest.fixture
def cluster(monkeypatch):
    """Point the job commands at a FakeJobs (set ``cluster.jobs``) instead of connecting."""
    state = SimpleNamespace(jobs=None)
    monkeypatch.setattr(jobs, "_connect", lambda address, insecure=False: (jobs._Client(state.jobs, None), ADDRESS))
    return state


@pytest.mark.parametrize(
    ("logs", "line"),
    [
        (f"10:04:47 INFO pipelines.runner: planning\n{ERROR}\n", ERROR),
        (f"{BUSY}\r\n", BUSY),
        (f"error: first\n{ERROR}\n2026-12-01 10:04:54,547 INFO worker.py:2000 -- shutting down\n", ERROR),
        ("(MapWorker pid=12) error: a worker's output, not the job's line\nTraceback ...\nKeyError: 'x'\n", ""),
        ("10:04:47 ERROR pipelines.runner: a log record\nerror:no space after the colon\n", ""),
        ("", ""),
    ],
)
def test_own_line_is_the_jobs_last_error_or_busy_line(logs, line):
    assert jobs.own_line(logs) == line


def test_status_of_a_failed_job_shows_its_own_error_line(cluster, capsys):
    cluster.jobs = FakeJobs("FAILED", ray_message(2, f"ARGS run jobs/x.yaml\n{ERROR}\n"), 2)
    assert main(["status", "raysubmit_x", "--address", ADDRESS]) == 0
    assert capsys.readouterr().out == (
        f"raysubmit_x: FAILED (Job entrypoint command failed with exit code 2) {ERROR}\n"
    )
    assert cluster.jobs.log_requests == 0  # Ray's excerpt in the message held it


def test_the_line_is_looked_up_in_the_logs_when_the_excerpt_lacks_it(cluster):
    noise = "".join(f"(raylet) shutting down {i}\n" for i in range(12))  # pushed the line out of the last 10
    cluster.jobs = FakeJobs("FAILED", ray_message(75, noise), 75, logs=f"ARGS\n{BUSY}\n{noise}")
    report = jobs.status("raysubmit_x", ADDRESS)
    assert (report.own_line, report.exit_code) == (BUSY, 75)
    assert cluster.jobs.log_requests == 1
    assert "\n" not in str(report)


def test_a_job_whose_runtime_env_setup_failed_says_where_the_reason_is(cluster, capsys):
    """A job whose uploaded project could not be set up on the cluster never ran: no logs, no line of its own, and
    status said only Ray's `runtime_env setup failed: Failed to set up runtime environment.`. It says where Ray's
    reason is now (the runtime_env agent's log; a tester had to find it to learn why 2 of 2 submissions failed)."""
    cluster.jobs = FakeJobs("FAILED", "runtime_env setup failed: Failed to set up runtime environment.", None, logs="")
    assert main(["status", "raysubmit_x", "--address", ADDRESS]) == 0
    said = capsys.readouterr().out
    assert said.startswith("raysubmit_x: FAILED (runtime_env setup failed: Failed to set up runtime environment.) "), said
    assert "never started" in said and "runtime_env_agent.log" in said and "ray exec cluster.yaml" in said, said


def test_a_status_whose_logs_cannot_be_fetched_is_still_the_status(cluster, capsys):
    """The line is an addition: a job server that fails to hand the logs over (gone, a timeout) leaves Ray's
    status as it was, not an error of the status command."""
    noise = "(raylet) shutting down\n"
    cluster.jobs = FakeJobs("FAILED", ray_message(2, noise), 2)

    def refuse(job_id: str) -> str:
        raise RuntimeError("Request failed with status code 504")

    cluster.jobs.get_job_logs = refuse
    assert main(["status", "raysubmit_x", "--address", ADDRESS]) == 0
    assert capsys.readouterr().out == "raysubmit_x: FAILED (Job entrypoint command failed with exit code 2)\n"


@pytest.mark.parametrize(
    ("status", "message"),
    [("RUNNING", "Job is currently running."), ("SUCCEEDED", "Job finished successfully."),
     ("STOPPED", "Job was intentionally stopped.")],
)
def test_other_jobs_read_no_logs(cluster, status, message):
    cluster.jobs = FakeJobs(status, message, 0 if status == "SUCCEEDED" else None, logs=ERROR)
    report = jobs.status("raysubmit_x", ADDRESS)
    assert str(report) == f"raysubmit_x: {status} ({message})"
    assert report.own_line == "" and cluster.jobs.log_requests == 0


def test_the_exit_code_comes_from_the_message_when_ray_does_not_give_it(cluster):
    cluster.jobs = FakeJobs("FAILED", "Job entrypoint command failed with exit code 75. No logs available.", None)
    assert jobs.status("raysubmit_x", ADDRESS).exit_code == 75


def test_wait_takes_the_line_from_the_logs_it_streamed(cluster, monkeypatch):
    cluster.jobs = FakeJobs("FAILED", ray_message(2, "(raylet) noise\n"), 2, logs="not asked for")
    monkeypatch.setattr(jobs, "follow_logs", lambda client, job_id: f"ARGS\n{ERROR}\n(raylet) noise\n")
    report = jobs.wait("raysubmit_x", ADDRESS)
    assert report.own_line == ERROR and cluster.jobs.log_requests == 0


@pytest.mark.parametrize(
    ("status", "message", "exit_code", "code"),
    [
        ("SUCCEEDED", "Job finished successfully.", 0, 0),
        ("FAILED", ray_message(75, BUSY), 75, 75),  # busy: try later, as a local `pipelines run` exits
        ("FAILED", ray_message(2, ERROR), 2, 1),
        ("FAILED", ray_message(1, "Traceback (most recent call last): ..."), 1, 1),
        ("FAILED", "Unexpected error occurred: the runtime_env could not be set up", None, 1),
        ("STOPPED", "Job was intentionally stopped.", None, 1),
    ],
)
def test_submit_wait_exit_status(status, message, exit_code, code):
    assert cli_cluster.wait_exit_status(jobs.JobReport("j", status, message, exit_code)) == code


@pytest.mark.parametrize(
    ("status", "exit_code", "line", "code"),
    [("FAILED", 75, BUSY, 75), ("FAILED", 2, ERROR, 1), ("SUCCEEDED", 0, "", 0)],
)
def test_submit_wait_exits_75_when_the_job_found_its_output_busy(status, exit_code, line, code, cluster, monkeypatch,
                                                                 capsys):
    message = ray_message(exit_code, f"ARGS\n{line}\n") if exit_code else "Job finished successfully."
    cluster.jobs = FakeJobs(status, message, exit_code)
    monkeypatch.setattr(jobs, "submit", lambda *args, **kwargs: "raysubmit_x")
    monkeypatch.setattr(jobs, "follow_logs", lambda client, job_id: f"ARGS\n{line}\n")
    argv = ["submit", str(ROOT / "jobs" / "label_news.yaml"), "--wait", "--address", ADDRESS,
            "--set", "output.path=s3://bucket/out"]
    assert main(argv) == code
    last = capsys.readouterr().err.splitlines()[-1]
    if status == "FAILED":
        assert last == f"job raysubmit_x: FAILED (Job entrypoint command failed with exit code {exit_code}) {line}"
    else:
        assert last == "job raysubmit_x: SUCCEEDED (Job finished successfully.)"


def test_logs_follow_exits_0_when_the_job_ended_whatever_its_status(cluster, monkeypatch, capsys):
    """README: `--wait` exits by how the job ended; `logs --follow` prints the logs to the job's end and exits 0, also
    for a failed job (the README said of both that "the exit status is the job's")."""
    cluster.jobs = FakeJobs("FAILED", ray_message(2, f"ARGS\n{ERROR}\n"), 2)
    monkeypatch.setattr(jobs, "follow_logs", lambda client, job_id: print(f"ARGS\n{ERROR}") or f"ARGS\n{ERROR}\n")
    assert main(["logs", "raysubmit_x", "--follow", "--address", ADDRESS]) == 0
    assert capsys.readouterr().out == f"ARGS\n{ERROR}\n"


@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt, 130), ("terminated", 143)])
def test_stopping_logs_follow_says_the_job_keeps_running(monkeypatch, capsys, stop, status):
    """Ctrl-C (or SIGTERM) while `pipelines logs --follow` prints a cluster job's logs stops the following, not the
    job: it says so and how to get back to it, as `submit --wait` does (it said a run's 'committed shards are
    kept' line, about a run on this machine)."""
    from pipelines.errors import Terminated

    def following(*args, **kwargs):
        raise Terminated() if stop == "terminated" else stop()

    monkeypatch.setattr(jobs, "logs", following)
    monkeypatch.setattr(jobs, "status", lambda job_id, address, insecure=False: jobs.JobReport(job_id, "RUNNING", ""))
    args = SimpleNamespace(job_id="raysubmit_abc", address="http://127.0.0.1:8265", follow=True, insecure=False)
    assert cli_cluster._logs(args) == status
    said = capsys.readouterr().err
    assert "stopped following raysubmit_abc; it keeps running" in said and "pipelines stop raysubmit_abc" in said


def test_stopping_logs_follow_does_not_wait_on_a_cluster_that_does_not_answer(monkeypatch, capsys):
    """The look at the status after Ctrl-C had no bound: a dashboard that accepts and never answers held the command
    (a reviewer's case); under SIGTERM, whose exit 143 is promised at once, it was asked too. Ctrl-C waits a bounded
    time (STATUS_WAIT_S) and says what it said before; SIGTERM asks nothing."""
    import threading

    from pipelines.errors import Terminated

    never = threading.Event()
    monkeypatch.setattr(cli_cluster, "STATUS_WAIT_S", 0.05)
    monkeypatch.setattr(jobs, "status", lambda *args, **kwargs: never.wait())
    assert cli_cluster.stopped_following("raysubmit_abc", "http://127.0.0.1:8265", KeyboardInterrupt()) == 130
    assert "it keeps running" in capsys.readouterr().err
    monkeypatch.setattr(jobs, "status", lambda *args, **kwargs: pytest.fail("asked under SIGTERM"))
    assert cli_cluster.stopped_following("raysubmit_abc", "http://127.0.0.1:8265", Terminated()) == 143
    never.set()


@pytest.mark.parametrize("known", [True, False])
def test_stopping_logs_follow_of_a_job_that_has_ended_says_how_it_ended(monkeypatch, capsys, known):
    """Ctrl-C while following a job that ended meanwhile said it "keeps running" (a cluster audit's case); it says
    how the job ended now, and where the cluster can't be asked, what it said before."""
    def following(*args, **kwargs):
        raise KeyboardInterrupt()

    def status(job_id, address, insecure=False):
        if not known:
            raise PipelineError("cannot reach the cluster")
        return jobs.JobReport(job_id, "SUCCEEDED", "Job finished successfully.")

    monkeypatch.setattr(jobs, "logs", following)
    monkeypatch.setattr(jobs, "status", status)
    args = SimpleNamespace(job_id="raysubmit_abc", address="http://127.0.0.1:8265", follow=True, insecure=False)
    assert cli_cluster._logs(args) == 130
    said = capsys.readouterr().err
    if known:
        assert "stopped following raysubmit_abc, which has ended: raysubmit_abc: SUCCEEDED" in said, said
        assert "keeps running" not in said
    else:
        assert "it keeps running" in said
