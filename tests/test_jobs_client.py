"""pipelines.jobs_client against a real, local, token-authenticated Ray head.

Loopback only. The head (tests/ray_head.py) takes ~8 s to start and is shared
by the tests of this module. The submitted "project" is a tiny stand-in with a
``pipelines`` package whose ``__main__`` echoes its arguments, so these tests
check the transport (working_dir upload, entrypoint, overrides, auth, logs,
status, stop), not the real pipeline.
"""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.cluster import jobs as jobs_client
from pipelines.errors import PipelineError

try:
    from ray_head import RayHead, free_ports, ray_head
except ImportError:  # tests/ imported as a package
    from tests.ray_head import RayHead, free_ports, ray_head

# Ray's own log tailer passes ssl=None to aiohttp, which warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def head() -> RayHead:
    with ray_head() as running:
        yield running


@pytest.fixture
def token_env(monkeypatch, head: RayHead) -> None:
    """The client finds the head's token in RAY_AUTH_TOKEN."""
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)


@pytest.fixture
def no_token_env(monkeypatch, tmp_path: Path) -> None:
    """No token anywhere: no env vars, and a HOME without ~/.ray/auth_token."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A stand-in project: ``python -m pipelines run JOB ...`` echoes its args.

    ``run`` prints the job spec's first line (proving the spec travelled),
    exits 3 with an ``error:`` line if the spec says ``fail``, and sleeps if it says ``sleep``.
    """
    root = tmp_path / "project"
    (root / "pipelines").mkdir(parents=True)
    (root / "jobs").mkdir()
    (root / "output").mkdir()
    (root / "output" / "big.bin").write_bytes(b"x" * 1024)  # excluded from upload
    (root / "pipelines" / "__init__.py").write_text("")
    (root / "pipelines" / "__main__.py").write_text(
        textwrap.dedent(
            """
            import os, sys, time
            args = sys.argv[1:]
            print("ARGS", " ".join(args))
            spec = open(args[1]).read().strip()
            print("SPEC", spec)
            print("OUTPUT_UPLOADED", os.path.exists("output/big.bin"))
            if spec == "sleep":
                time.sleep(120)
            if spec.startswith("gate "):  # runs until the test opens the gate (the file named)
                print("BEFORE THE GATE", flush=True)
                while not os.path.exists(spec[5:]):
                    time.sleep(0.1)
                print("AFTER THE GATE", flush=True)
            if spec == "fail":
                print("error: the stand-in failed on purpose", file=sys.stderr)
            sys.exit(3 if spec == "fail" else 0)
            """
        )
    )
    for name in ("hello", "fail", "sleep"):
        (root / "jobs" / f"{name}.yaml").write_text(name + "\n")
    return root


# --------------------------------------------------------------------------- #
# Against the real head
# --------------------------------------------------------------------------- #


def test_submit_wait_succeeds_and_streams_logs(head, token_env, project, capsys):
    job_id = jobs_client.submit(
        project / "jobs" / "hello.yaml",
        head.address,
        overrides=["greeting=hi there", "batch_size=4"],
        wait=True,
        project_root=project,
    )

    streamed = capsys.readouterr().out
    expected = "ARGS run jobs/hello.yaml --set greeting=hi there --set batch_size=4"
    assert expected in streamed
    assert "SPEC hello" in streamed and streamed.count(expected) == 1  # the logs read at the end add nothing twice
    assert "OUTPUT_UPLOADED False" in streamed
    assert jobs_client.status(job_id, head.address).status == "SUCCEEDED"
    assert expected in jobs_client.logs(job_id, head.address)


def test_wait_raises_when_the_job_fails(head, token_env, project):
    said = "error: the stand-in failed on purpose"
    with pytest.raises(PipelineError, match=rf"ended FAILED: .*exit code 3 {said} \(its logs are above\)") as raised:
        jobs_client.submit(project / "jobs" / "fail.yaml", head.address, wait=True, project_root=project)
    job_id = re.search(r"Job (raysubmit_\w+) ", str(raised.value)).group(1)
    # `pipelines status` and the end of `submit --wait`: Ray's exit code and the job's own line, in one line.
    for report in (jobs_client.status(job_id, head.address), jobs_client.wait(job_id, head.address)):
        assert (report.status, report.exit_code, report.own_line) == ("FAILED", 3, said)
        assert str(report) == f"{job_id}: FAILED (Job entrypoint command failed with exit code 3) {said}"


def test_wait_follows_a_job_to_its_end_when_the_log_stream_closes_before_it(
        head, token_env, project, tmp_path, monkeypatch, capsys):
    """A proxy or load balancer before the dashboard that closes long-lived websockets, a dashboard restarted: the log
    stream ended while the job ran, and `submit --wait` (and `logs --follow`) took that for the job's end: it waited up
    to 30 s for a final status, then failed with "ended RUNNING" while the job went on. The job is followed by polling
    its logs now, to its real end, each line printed once."""
    from ray.job_submission import JobSubmissionClient

    gate = tmp_path / "gate-open"
    (project / "jobs" / "gate.yaml").write_text(f"gate {gate}\n")
    real_tail = JobSubmissionClient.tail_job_logs

    async def closed_early(self, job_id):
        async for chunk in real_tail(self, job_id):
            yield chunk
            if "BEFORE THE GATE" in chunk:
                gate.touch()  # the job goes on to its end, which the stream, closed here, does not show
                return

    monkeypatch.setattr(JobSubmissionClient, "tail_job_logs", closed_early)
    monkeypatch.setattr(jobs_client, "_FINAL_STATUS_TIMEOUT_S", 0.0)  # the status is read once the logs are done
    job_id = jobs_client.submit(project / "jobs" / "gate.yaml", head.address, wait=True, project_root=project)
    streamed = capsys.readouterr().out
    assert streamed.count("BEFORE THE GATE") == 1 and streamed.count("AFTER THE GATE") == 1
    assert jobs_client.status(job_id, head.address).status == "SUCCEEDED"


def test_a_project_file_written_while_it_is_uploaded_does_not_fail_the_job(
        head, token_env, project, monkeypatch, capsys):
    """`pipelines submit … > submit.log` run in the project: its log grows while the project is uploaded. Ray's
    upload looked at the folder twice, once to name the job's package and once to name the package it uploaded, so
    the two names differed and the job failed setting up ("Failed to download runtime_env file package", no logs):
    2 of 2 tries of a tester's. Here the log grows after each look Ray's packaging takes at the folder; the job must
    run on a package of one look."""
    from ray._private.runtime_env import packaging

    log = project / "submit.log"
    log.write_text("")
    looked = packaging._dir_travel

    def look_then_log(path, *args, **kwargs):
        looked(path, *args, **kwargs)
        if Path(path) == project:  # a whole look at the project done: the log written to gets a line
            with log.open("a") as out:
                out.write("a line of the submit's own log\n")

    monkeypatch.setattr(packaging, "_dir_travel", look_then_log)
    job_id = jobs_client.submit(project / "jobs" / "hello.yaml", head.address, wait=True, project_root=project)
    assert "SPEC hello" in capsys.readouterr().out
    assert jobs_client.status(job_id, head.address).status == "SUCCEEDED"
    assert log.read_text().count("\n") >= 1  # the project did change while it was uploaded


def test_status_logs_and_stop(head, token_env, project, capsys):
    job_id = jobs_client.submit(project / "jobs" / "sleep.yaml", head.address, project_root=project)
    assert jobs_client.status(job_id, head.address).status in ("PENDING", "RUNNING")
    _wait_for_log(job_id, head.address, "SPEC sleep")

    assert jobs_client.stop(job_id, head.address) is True

    report = _wait_for_terminal(job_id, head.address)
    assert report.status == "STOPPED"
    followed = jobs_client.logs(job_id, head.address, follow=True)  # ends: job is over
    assert "SPEC sleep" in followed
    assert "SPEC sleep" in capsys.readouterr().out


def test_wrong_token_is_refused(head, monkeypatch, project):
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-cluster-token")
    with pytest.raises(PipelineError) as info:
        jobs_client.submit(project / "jobs" / "hello.yaml", head.address, project_root=project)
    message = str(info.value)
    assert "rejected the authentication token from RAY_AUTH_TOKEN" in message
    assert "ray get-auth-token" in message and "export RAY_AUTH_TOKEN=" in message
    assert "\n" not in message


def test_missing_token_is_refused(head, no_token_env, project):
    with pytest.raises(PipelineError, match="requires an authentication token and none"):
        jobs_client.submit(project / "jobs" / "hello.yaml", head.address, project_root=project)


def test_token_is_read_from_the_default_file(head, no_token_env):
    token_file = Path.home() / ".ray" / "auth_token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(head.token + "\n")
    # Past authentication, the server answers about the (unknown) job itself.
    with pytest.raises(PipelineError, match="has no job"):
        jobs_client.status("raysubmit_nope", head.address)


def test_unknown_job_id(head, token_env):
    with pytest.raises(PipelineError, match="has no job 'raysubmit_nope'"):
        jobs_client.status("raysubmit_nope", head.address)


# --------------------------------------------------------------------------- #
# No head needed
# --------------------------------------------------------------------------- #


def test_unreachable_address_fails_fast(token_env_free, monkeypatch):
    """Fast: one refused connection decides it, before Ray's job client (which retries) is made."""
    import ray.job_submission

    def no_client(*args, **kwargs):
        pytest.fail("the Ray job client was made for an address nothing listens at")

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", no_client)
    port = _closed_port()
    with pytest.raises(PipelineError, match="Cannot reach the Ray dashboard at http://127.0.0.1:") as refused:
        jobs_client.status("raysubmit_x", f"127.0.0.1:{port}")
    assert f"its port {port} is open" in str(refused.value)  # the port given, not always the default's 8265


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", "", "http://", "head:port"])
def test_bad_addresses_are_rejected(address):
    with pytest.raises(PipelineError, match="address"):
        jobs_client.dashboard_url(address)


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "AUTO"])
def test_a_gcs_address_is_refused_naming_pipelines_run(address):
    """What `pipelines run --address` takes, given to submit/status/logs/stop: one line naming the right command,
    not a connection to http://auto:8265 or to the GCS port as if it were the dashboard."""
    with pytest.raises(PipelineError, match=r"GCS address.*pipelines run --address.*http://HEAD_IP:8265"):
        jobs_client.dashboard_url(address)


@pytest.mark.parametrize("address", ["ray://10.0.0.5:10001", "RAY://10.0.0.5:10001"])
def test_a_ray_client_address_is_refused_naming_the_right_commands(address):
    """The README: each job command refuses the other kind of address (a ray:// one too) with a message naming the
    right command; it said only 'not a dashboard address'."""
    with pytest.raises(PipelineError, match=r"Ray Client address.*--address http://HEAD_IP:8265.*pipelines run --address auto"):
        jobs_client.dashboard_url(address)


@pytest.mark.parametrize(
    "address, url",
    [
        ("10.0.0.5:8265/", "http://10.0.0.5:8265"),
        ("head-node", "http://head-node:8265"),
        ("https://ray.example.com", "https://ray.example.com"),
        (" http://127.0.0.1:8265 ", "http://127.0.0.1:8265"),
    ],
)
def test_dashboard_url_normalization(address, url):
    assert jobs_client.dashboard_url(address) == url


def test_entrypoint_quotes_overrides_and_extra_args():
    entrypoint = jobs_client.build_entrypoint("jobs/my job.yaml", ["prompt=say 'hi'"], ["--dry-run"])
    assert entrypoint == ("python -m pipelines run 'jobs/my job.yaml' --set 'prompt=say '\"'\"'hi'\"'\"'' --dry-run")


def test_override_without_equals_is_rejected():
    with pytest.raises(PipelineError, match="key=value"):
        jobs_client.build_entrypoint("jobs/a.yaml", ["batch_size"])


def test_job_outside_project_is_rejected(project, tmp_path):
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("x")
    with pytest.raises(PipelineError, match="outside the project"):
        jobs_client.job_path_in_project(outside, project)


def test_project_root_must_hold_the_package(project):
    with pytest.raises(PipelineError, match="no pipelines/ package"):
        jobs_client.job_path_in_project(project / "jobs" / "hello.yaml", project / "jobs")


def test_token_precedence(monkeypatch, tmp_path, no_token_env):
    assert jobs_client.find_token() is None
    default = Path.home() / ".ray" / "auth_token"
    default.parent.mkdir(parents=True)
    default.write_text("from-file\n")
    assert jobs_client.find_token().value == "from-file"
    named = tmp_path / "token"
    named.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert jobs_client.find_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs_client.find_token() == jobs_client.AuthToken("from-env", "RAY_AUTH_TOKEN")


def test_unreadable_token_path_is_an_error(monkeypatch, tmp_path, no_token_env):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(PipelineError, match="RAY_AUTH_TOKEN_PATH"):
        jobs_client.find_token()


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


@pytest.fixture
def token_env_free(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "unused")


def _closed_port() -> int:
    return free_ports(1)[0]  # free now, and from a range nothing takes on its own


def _wait_for_log(job_id: str, address: str, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in jobs_client.logs(job_id, address):
        assert time.monotonic() < deadline, f"{text!r} never showed in the logs of {job_id}"
        time.sleep(0.5)


def _wait_for_terminal(job_id: str, address: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    report = jobs_client.status(job_id, address)
    while not report.is_terminal:
        assert time.monotonic() < deadline, f"{job_id} still {report.status}"
        time.sleep(0.5)
        report = jobs_client.status(job_id, address)
    return report


def test_submit_passes_the_runs_output_flags_to_the_cluster_run(monkeypatch, tmp_path):
    """A submitted job whose input changed is refused with `use --redo-changed …, --overwrite …`, and one whose input
    is gone with `--prune`; `pipelines submit` took none of them, so a team that runs on its cluster could not do what
    the error said. They go to the cluster's `pipelines run`."""
    from pipelines.cli.main import main

    root = Path(__file__).resolve().parents[1]
    sent = {}
    monkeypatch.setattr(jobs_client, "submit", lambda job, address, **kwargs: sent.update(kwargs) or "raysubmit_1")
    args = ["submit", str(root / "jobs" / "label_news.yaml"), "--address", "http://127.0.0.1:1",
            "--set", f"output.path={tmp_path / 'out'}"]
    assert main([*args, "--redo-changed", "--prune"]) == 0
    assert list(sent["extra_args"]) == ["--prune", "--redo-changed"]
    assert main([*args, "--overwrite"]) == 0
    assert list(sent["extra_args"]) == ["--overwrite"]
    assert main(args) == 0
    assert list(sent.get("extra_args", [])) == []
