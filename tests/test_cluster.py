"""Jobs on a real Ray cluster started with `ray start` (loopback, token auth), driven the way a user does.

One module-wide cluster of two nodes on this machine (tests/ray_head.py): a head and a worker, each with
1 CPU, 1 logical GPU labelled L4 and one custom `slot` resource (~15-30 s to start on 2 cores). On it:

* ``pipelines submit --wait`` runs the main job through the head's job server (~60 s) and the refusals of
  a wrong or missing token;
* ``pipelines run --address <GCS>`` drives a job whose actor pool needs both nodes (two actors of
  {slot: 1}, each also asking for half a GPU of type L4: the nodes have logical GPUs); the actors' nodes
  and resources are read from the cluster's state API afterwards.

The cluster uses its own temp dirs and ports, and every driver is a subprocess with an environment built
from scratch (conftest's session-wide local ``ray.init`` sets RAY_AUTH_MODE in this process), so the two
never meet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, SENTENCES, write_jsonl
from ray_head import RayHead, ray_head, ray_worker, state_api

from pipelines.cli.main import main
from pipelines.cluster import connect as cluster
from pipelines.cluster import jobs as jobs_client
from pipelines.errors import PipelineError
from pipelines.runner import PredictAndStage
from pipelines.spec import ComputeSpec, spec_from_dict

POOL_ACTOR = PredictAndStage.__name__  # the class Ray names the pool's actors after

MAIN_JOB = "jobs/label_news.yaml"

# Ray's own log tailer passes ssl=None to aiohttp, which warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")


def cli(*args: str, env: dict[str, str], cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m pipelines ARGS` as a user runs it, with exactly the Ray settings in ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        check=False,
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any Ray setting (the session's ray.init may have set some), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"})
    env.update(extra)  # PYTHONPATH included: a driver may import another copy of the package
    return env


def one_line_error(done: subprocess.CompletedProcess, only: bool = True) -> str:
    """The CLI's one-line error: all of stderr, or (``only=False``) its last line, after the run's log lines."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), done.stderr[-3000:]
    assert len(lines) == 1 or not only, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return lines[-1]


# --------------------------------------------------------------------------- #
# pipelines submit against a token-auth head
# --------------------------------------------------------------------------- #


#: Each node: 1 CPU, 1 (logical) GPU labelled L4, and one `slot`, so a pool of two slot-actors needs both.
NODE = {"num_cpus": 1, "num_gpus": 1, "resources": {"slot": 1, "accelerator_type:L4": 1}}


@pytest.fixture(scope="module")
def head() -> RayHead:
    """A two-node cluster on this machine (see NODE); its head."""
    with ray_head(**NODE) as running, ray_worker(running, **NODE):
        yield running


@pytest.fixture(scope="module")
def submitted(head, tmp_path_factory):
    """The main job submitted with --wait: (job id, output dir, the finished CLI process)."""
    out = tmp_path_factory.mktemp("submitted") / "news"
    done = cli(
        "submit", MAIN_JOB, "--address", head.address, "--wait",
        "--set", f"output.path={out}", "--set", "compute.cpus_per_actor=0.5",
        env={"RAY_AUTH_TOKEN": head.token},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = next(word for word in done.stderr.split() if word.startswith("raysubmit_"))
    return job_id, out, done


def test_submit_wait_runs_the_main_job_on_the_cluster(submitted):
    job_id, out, done = submitted
    assert "agreement with ground truth" in done.stdout  # the job's own summary, streamed from the cluster
    assert f"job {job_id}: SUCCEEDED" in done.stderr
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == 600 and len(set(ids)) == 600
    assert set(table.column("predicted_label").to_pylist()) <= {"World", "Sports", "Business", "Sci/Tech"}
    assert json.loads((out / "_run.json").read_text())["rows_out"] == 600


def test_status_logs_and_stop_of_a_submitted_job(submitted, head):
    job_id, out, _ = submitted
    token = {"RAY_AUTH_TOKEN": head.token}
    # The address may come from the environment, as for `ray job`.
    status = cli("status", job_id, env={**token, "RAY_API_SERVER_ADDRESS": head.address})
    assert status.returncode == 0 and status.stdout.strip().startswith(f"{job_id}: SUCCEEDED"), status.stderr
    logs = cli("logs", job_id, env={**token, "RAY_ADDRESS": head.address})
    assert logs.returncode == 0 and f"output: {out}" in logs.stdout
    stop = cli("stop", job_id, "--address", head.address, env=token)
    assert stop.returncode == 0 and f"{job_id} was not running (SUCCEEDED)" in stop.stdout


def test_a_local_rays_start_drops_only_rays_notice_that_token_auth_is_on():
    """Ray 2.60 logs at each local start that it turned token auth on, and how to opt out: a line among the run's own
    (the README says it instead). Its other records, such as its warning that a Ray starts without a token, pass."""
    import logging

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(cluster.TOKEN_NOTICE_LOGGER, logging.WARNING, "x.py", 1, message, None, None)

    quiet = cluster.WithoutTokenNotice()
    assert not quiet.filter(record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=..."))
    assert quiet.filter(record("Token authentication is disabled for this Ray cluster. Anyone with network access"))
    assert not logging.getLogger(cluster.TOKEN_NOTICE_LOGGER).filters  # put on for a start only, then taken off


def test_submission_with_a_wrong_token_is_refused(head, tmp_path):
    env = {"RAY_AUTH_TOKEN": "not-the-cluster-token", "HOME": str(tmp_path)}
    done = cli("submit", MAIN_JOB, "--address", head.address, "--set", f"output.path={tmp_path / 'out'}", env=env)
    assert done.returncode == 2
    message = one_line_error(done)
    assert "rejected the authentication token from RAY_AUTH_TOKEN" in message
    assert "ray get-auth-token" in message and "export RAY_AUTH_TOKEN=" in message
    assert not (tmp_path / "out").exists()


def test_submission_without_a_token_is_refused(head, tmp_path, monkeypatch, capsys):
    # In-process (the CLI's import time spared): the same main() the `pipelines` command runs.
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    out = tmp_path / "out"
    code = main(["submit", str(ROOT / MAIN_JOB), "--address", head.address, "--set", f"output.path={out}"])
    assert code == 2
    [message] = capsys.readouterr().err.splitlines()
    assert "requires an authentication token and none was found" in message and "ray get-auth-token" in message
    assert not out.exists()


def test_submit_refuses_a_relative_output_path(capsys):
    code = main(["submit", str(ROOT / MAIN_JOB), "--address", "http://127.0.0.1:1"])  # output.path: output/...
    assert code == 2
    [message] = capsys.readouterr().err.splitlines()
    assert "output.path 'output/label_news' is relative" in message and "s3://" in message


def test_submit_refuses_an_output_path_in_another_users_home(capsys):
    # `~alice/out`: on the cluster a user the job does not run as, or one with no account there, whose `~alice`
    # stays a folder of that name in the job's temporary directory (it was sent, and the job succeeded there)
    code = main(["submit", str(ROOT / MAIN_JOB), "--address", "http://127.0.0.1:1",
                 "--set", "output.path=~nosuchuser_here/label_news"])
    assert code == 2
    [message] = capsys.readouterr().err.splitlines()
    assert "output.path '~nosuchuser_here/label_news'" in message and "another user's home" in message
    assert "~/" in message


# --------------------------------------------------------------------------- #
# pipelines run --address: a pool over both nodes
# --------------------------------------------------------------------------- #


@pytest.fixture
def job_on_slots(tmp_path, tiny_models):
    """A job whose pool is two actors of half an L4 and one slot each, on four small JSONL shards; its spec path.

    The GPUs are logical (the model runs on the CPU: no CUDA here); placement is what is tested.
    """
    rows = [{"id": f"r{i:03d}", "text": SENTENCES[i % len(SENTENCES)]} for i in range(64)]
    for part in range(4):
        write_jsonl(tmp_path / "in" / f"part-{part}.jsonl", rows[part * 16 : (part + 1) * 16])
    spec = {
        "input": {"paths": [str(tmp_path / "in")]},
        "model": {"name": tiny_models("encoder")},
        "task": {"type": "feature-extraction"},
        "batching": {"batch_size": 8},
        "compute": {
            "size": 2,
            "cpus_per_actor": 0.25,
            "threads_per_actor": 1,
            "gpus_per_actor": 0.5,
            "accelerator_type": "L4",
            "resources": {"slot": 1},
        },
        "output": {"path": str(tmp_path / "out")},
    }
    path = tmp_path / "slots.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def shipped_copy(folder: Path, marker: Path) -> Path:
    """A copy of the package in ``folder`` (its PYTHONPATH entry returned) whose runner module, wherever it is
    imported, appends the file it was imported from to ``marker``."""
    import shutil

    copy = folder / "pipelines"
    shutil.copytree(ROOT / "pipelines", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "runner.py").open("a") as runner:
        runner.write(f"\nwith open({str(marker)!r}, 'a') as _marker:\n    _marker.write(__file__ + '\\n')\n")
    return folder


def test_run_address_spreads_the_pool_over_both_nodes(head, job_on_slots, tmp_path):
    # The driver runs outside the project (cwd is not on the workers' path) and the nodes have no
    # PYTHONPATH. The workers could import the project installed on the nodes (here: this checkout, installed
    # with -e), so the driver imports a copy of the package that marks where it is imported from: the workers
    # must run that copy, the one the driver ships (py_modules), not the one installed on the nodes.
    # No RAY_AUTH_MODE: the driver turns token auth on because it has a token.
    # Ray Data starts feeding the first actor that is up; wait for both, so both see rows.
    marker = tmp_path / "runner_imported_from.txt"
    env = {"RAY_AUTH_TOKEN": head.token, "HOME": str(tmp_path), "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "240",
           "PYTHONPATH": str(shipped_copy(tmp_path / "driver_code", marker))}
    before = {a["actor_id"] for a in state_api(head, "actors")}  # e.g. the submitted job's
    done = cli("run", str(job_on_slots), "--address", head.gcs_address, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = pq.read_table(tmp_path / "out").column("id").to_pylist()
    assert sorted(ids) == [f"r{i:03d}" for i in range(64)]
    imported = set(marker.read_text().splitlines())
    driver = str(tmp_path / "driver_code" / "pipelines" / "runner.py")
    assert driver in imported, imported  # the driver ran the copy
    workers = imported - {driver}
    assert workers and all("py_modules_files" in path for path in workers), imported  # so did the workers, shipped

    actors = [a for a in state_api(head, "actors") if POOL_ACTOR in a["class_name"] and a["actor_id"] not in before]
    assert len(actors) == 2, actors
    nodes = {node["node_id"] for node in state_api(head, "nodes") if node["state"] == "ALIVE"}
    assert {a["node_id"] for a in actors} == nodes and len(nodes) == 2
    for actor in actors:  # what the runner asked Ray for, per actor
        assert actor["required_resources"] == {"CPU": 0.25, "GPU": 0.5, "slot": 1, "accelerator_type:L4": 0.001}


@pytest.mark.parametrize(
    "override, message",
    [
        ("compute.gpus_per_actor=2", "cannot add nodes and no node has GPU"),
        ("compute.accelerator_type=A10G", "cannot add nodes and no node has accelerator_type:A10G"),
    ],
    ids=["more GPUs than a node has", "an accelerator no node has"],
)
def test_a_pool_that_a_fixed_cluster_can_never_start_is_refused(head, job_on_slots, tmp_path, override, message):
    # This cluster's autoscaler is Ray's read-only one: the pool could only wait forever, so fail now.
    done = cli(
        "run", str(job_on_slots), "--address", head.gcs_address, "--set", override,
        env={"RAY_AUTH_TOKEN": head.token, "HOME": str(tmp_path)}, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in one_line_error(done, only=False)
    assert not (tmp_path / "out").exists()


def test_run_with_a_wrong_token_is_refused(head, job_on_slots, tmp_path):
    # Ray retries a refused connection for ~20 s; 3 attempts are enough to see the refusal.
    env = {"RAY_AUTH_TOKEN": "wrong", "HOME": str(tmp_path), "RAY_gcs_server_port_wait_time_s": "3"}
    done = cli("run", str(job_on_slots), "--address", head.gcs_address, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    message = one_line_error(done, only=False)
    assert "requires authentication" in message and "RAY_AUTH_TOKEN" in message and "ray get-auth-token" in message


# --------------------------------------------------------------------------- #
# Addresses and sizing, no cluster needed
# --------------------------------------------------------------------------- #


@pytest.fixture
def no_ray_env(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_run_takes_gcs_addresses_and_refuses_dashboard_urls(no_ray_env):
    assert cluster.gcs_address(None) is None  # local Ray
    assert cluster.gcs_address("auto") == "auto"
    assert cluster.gcs_address("10.0.0.5:6379") == "10.0.0.5:6379"
    with pytest.raises(PipelineError, match="is a dashboard URL.*pipelines submit"):
        cluster.gcs_address("http://10.0.0.5:8265")
    # Ray Data cannot run its streaming executor in a Ray Client driver (Ray 2.60: no core worker there).
    with pytest.raises(PipelineError, match="Ray Client address.*--address auto.*pipelines submit"):
        cluster.gcs_address("ray://10.0.0.5:10001")
    no_ray_env.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # what Ray sets for a submitted job's driver
    assert cluster.gcs_address(None) == "10.0.0.5:6379"
    no_ray_env.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")  # set for `ray job`
    for address in (None, "auto"):
        with pytest.raises(PipelineError, match="RAY_ADDRESS is http://10.0.0.5:8265, a dashboard URL"):
            cluster.gcs_address(address)
    # a Ray Client address in RAY_ADDRESS: the message says where it came from, and `--address auto` (which
    # ray.init resolves through RAY_ADDRESS) is refused too, not joined as a Ray Client at the job's start
    no_ray_env.setenv("RAY_ADDRESS", "ray://10.0.0.5:10001")
    for address in (None, "auto"):
        with pytest.raises(PipelineError, match=r"RAY_ADDRESS is ray://10.0.0.5:10001, a Ray Client address.*unset "
                                                r"RAY_ADDRESS"):
            cluster.gcs_address(address)
    assert cluster.gcs_address("10.0.0.5:6379") == "10.0.0.5:6379"  # a GCS address given: Ray takes it, not RAY_ADDRESS


def test_job_commands_take_the_dashboard_url(no_ray_env):
    with pytest.raises(PipelineError, match="--address http://HEAD_IP:8265"):
        jobs_client.resolve_address(None)
    no_ray_env.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(PipelineError, match="RAY_ADDRESS=10.0.0.5:6379 is a GCS address"):
        jobs_client.resolve_address(None)
    no_ray_env.setenv("RAY_ADDRESS", "http://a:8265")
    assert jobs_client.resolve_address(None) == "http://a:8265"
    no_ray_env.setenv("RAY_API_SERVER_ADDRESS", "http://b:8265")
    assert jobs_client.resolve_address(None) == "http://b:8265"
    assert jobs_client.resolve_address("http://c:8265") == "http://c:8265"


def test_code_is_shipped_unless_the_job_carries_it(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    shipped = cluster.code_runtime_env()
    assert shipped["py_modules"] == [str(ROOT / "pipelines")]
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    assert cluster.code_runtime_env() is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"pip": ["x"]}}))
    assert cluster.code_runtime_env() == shipped


def test_workers_get_local_paths_made_absolute_unless_they_run_from_the_jobs_working_dir(monkeypatch, tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    spec = spec_from_dict({"input": {"paths": ["in"]}, "model": {"name": "models/mine", "cache_dir": "cache"},
                           "task": {"type": "feature-extraction"}, "output": {"path": "out"}})
    sent = cluster.worker_spec(spec)
    assert (sent["model"]["name"], sent["model"]["cache_dir"], sent["output"]["path"]) == (
        str(tmp_path / "models" / "mine"), str(tmp_path / "cache"), str(tmp_path / "out"))
    assert spec.model.name == "models/mine"  # the spec (and its hash) keep them as written
    hub = spec_from_dict({**spec.model_dump(), "model": {"name": "org/model"}, "output": {"path": "s3://b/out"}})
    assert (cluster.worker_spec(hub)["model"]["name"], cluster.worker_spec(hub)["output"]["path"]) == (
        "org/model", "s3://b/out")  # not a folder here: a hub id; a URI stays one
    from pipelines.inference.aliases import ALIASES
    from pipelines.spec import MODEL_ALIASES

    assert set(ALIASES) == MODEL_ALIASES
    (tmp_path / "minilm").mkdir()  # a folder with a built-in model's name: the name stays the built-in one's
    aliased = spec_from_dict({**spec.model_dump(), "model": {"name": "minilm"}, "output": {"path": "~/out"}})
    sent = cluster.worker_spec(aliased)
    assert sent["model"]["name"] == "minilm"
    assert sent["output"]["path"] == os.path.expanduser("~/out")  # the home's, where the driver's resolve() writes it
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    assert cluster.worker_spec(spec) == spec.model_dump(mode="json")  # the workers run from the working_dir too


def test_actor_pool_sizing_on_nodes():
    gpu_node = {"CPU": 4, "GPU": 1, "accelerator_type:L4": 1}
    quarter = ComputeSpec(size=4, gpus_per_actor=0.25, cpus_per_actor=1, accelerator_type="L4")
    assert cluster.actor_request(quarter) == {"CPU": 1, "GPU": 0.25, "accelerator_type:L4": 0.001}
    assert cluster.actors_that_fit(cluster.actor_request(quarter), [gpu_node, {"CPU": 8}]) == 4
    assert cluster.actors_that_fit(cluster.actor_request(quarter), [{**gpu_node, "accelerator_type:L4": 0}]) == 0
    third = ComputeSpec(min=1, max=8, gpus_per_actor=0.34, cpus_per_actor=0.5)
    assert cluster.actors_that_fit(cluster.actor_request(third), [gpu_node, gpu_node]) == 4
    slot = ComputeSpec(size=2, cpus_per_actor=0.25, resources={"slot": 1})
    assert cluster.actors_that_fit(cluster.actor_request(slot), [{"CPU": 1, "slot": 1}] * 2) == 2
    assert cluster.actors_that_fit(cluster.actor_request(slot), [{"CPU": 1, "slot": 1}, {"CPU": 8}]) == 1


@pytest.mark.parametrize(("value", "spelled"), [
    ("127.0.0.1:8265", "http://127.0.0.1:8265"), ("auto", "http://HEAD_IP:8265"),
    ("ray://10.0.0.5:10001", "http://10.0.0.5:8265"),  # the Ray Client's port is no dashboard's
    ("10.0.0.5", "http://10.0.0.5:8265"),  # the host given is kept
])
def test_a_job_server_address_in_the_environment_that_is_no_url_is_named(value, spelled):
    """RAY_API_SERVER_ADDRESS=127.0.0.1:8265 (no http://) is not taken; the line said 'No job server address …, or
    export RAY_API_SERVER_ADDRESS' to a user who had exported it. It names the variable and the spelling to use."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "status", "raysubmit_x"],
        cwd=ROOT, env={**env, "RAY_API_SERVER_ADDRESS": value}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"RAY_API_SERVER_ADDRESS={value} is not an http(s) URL" in lines[0]
    assert f"e.g. RAY_API_SERVER_ADDRESS={spelled}," in lines[0]
    assert "or export RAY_API_SERVER_ADDRESS" not in lines[0]
