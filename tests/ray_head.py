"""A real, local, token-authenticated Ray head for tests (loopback only).

Usage::

    from ray_head import ray_head, ray_worker

    with ray_head() as head:          # ~8-10 s to start on 2 cores
        monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
        jobs_client.submit(..., address=head.address, ...)

    # A two-node cluster on one machine: each node with its own resources.
    with ray_head(num_cpus=1, resources={"slot": 1}) as head, ray_worker(head, num_cpus=1, resources={"slot": 1}):
        ...  # drivers: `ray.init(address=head.gcs_address)` with RAY_AUTH_MODE=token, RAY_AUTH_TOKEN=head.token

The head runs ``ray start --head --block`` in its own session with
``RAY_AUTH_MODE=token`` and a fresh random token passed as ``RAY_AUTH_TOKEN``
(nothing is written to ``~/.ray``), a private ``--temp-dir``, free ports below
the kernel's ephemeral range (:func:`free_ports`) for every listener Ray would
otherwise put on a fixed default port, and the dashboard on 127.0.0.1. Leaving
the block stops exactly this head (SIGTERM to its ``ray start --block``, which
takes its processes down; SIGKILL to its process group as a fallback) — never
``ray stop``, which would stop every Ray on the machine. Job entrypoints see
this interpreter's bin directory first on PATH, so ``python`` in an entrypoint is the test interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 180.0  # a guard against a hang: two test workers share the cores while a node starts
STOP_TIMEOUT_S = 5.0  # then SIGKILL: a node that ran Ray Data jobs can take 30 s to stop
#: Environment variables never passed to the nodes (they would point them at another cluster or at this checkout).
_NOT_INHERITED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "PYTHONPATH")


@dataclass(frozen=True)
class RayHead:
    """A running head: where to submit jobs and the token it accepts."""

    address: str  # dashboard / job server URL, e.g. http://127.0.0.1:41234
    gcs_address: str  # 127.0.0.1:PORT, for ray.init(address=...)
    token: str
    temp_dir: Path
    log_path: Path  # output of `ray start`
    client_address: str = ""  # ray://127.0.0.1:PORT, Ray Client


@dataclass(frozen=True)
class RayWorker:
    """A running worker node of a :class:`RayHead`'s cluster."""

    node_id: str
    temp_dir: Path
    log_path: Path


@contextlib.contextmanager
def ray_head(
    *,
    num_cpus: int = 1,
    num_gpus: int = 0,
    resources: Mapping[str, float] | None = None,
    token: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RayHead]:
    """Start a token-auth Ray head on loopback; stop and clean it up on exit."""
    token = token or secrets.token_hex(32)
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # short: socket paths
    log_path = temp_dir / "ray_start.log"
    gcs_port, dashboard_port, client_port, *node_ports = free_ports(7)
    cmd = [
        *_ray_start(temp_dir, num_cpus, num_gpus, resources, node_ports),
        "--head",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client_port}",
        "--include-dashboard=true",
    ]
    head = RayHead(
        address=f"http://127.0.0.1:{dashboard_port}",
        gcs_address=f"127.0.0.1:{gcs_port}",
        token=token,
        temp_dir=temp_dir,
        log_path=log_path,
        client_address=f"ray://127.0.0.1:{client_port}",
    )
    proc = _launch(cmd, _node_env(token, extra_env), temp_dir, log_path)
    try:
        _wait_until_ready(proc, head)
        yield head
    finally:
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_worker(
    head: RayHead,
    *,
    num_cpus: int = 1,
    num_gpus: int = 0,
    resources: Mapping[str, float] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RayWorker]:
    """Add a worker node to ``head``'s cluster (same machine, own temp dir and ports); remove it on exit."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rayw", dir="/tmp"))
    log_path = temp_dir / "ray_start.log"
    cmd = [*_ray_start(temp_dir, num_cpus, num_gpus, resources, free_ports(4)), f"--address={head.gcs_address}"]
    known = {node["node_id"] for node in list_nodes(head)}
    proc = _launch(cmd, _node_env(head.token, extra_env), temp_dir, log_path)
    try:
        node_id = _wait_for_new_node(proc, head, known, log_path)
        yield RayWorker(node_id=node_id, temp_dir=temp_dir, log_path=log_path)
    finally:
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def state_api(head: RayHead, resource: str, **params: str) -> list[dict]:
    """Rows of the dashboard's state API (what `ray list <resource>` shows), e.g. ``state_api(head, "actors")``."""
    query = "&".join(f"{k}={v}" for k, v in {"limit": "10000", "detail": "1", **params}.items())
    request = urllib.request.Request(
        f"{head.address}/api/v0/{resource}?{query}", headers={"Authorization": f"Bearer {head.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    return body["data"]["result"]["result"]


def list_nodes(head: RayHead) -> list[dict]:
    """The cluster's alive nodes, as the state API reports them."""
    return [node for node in state_api(head, "nodes") if node["state"] == "ALIVE"]


def _ray_start(
    temp_dir: Path, num_cpus: int, num_gpus: int, resources: Mapping[str, float] | None, ports: list[int]
) -> list[str]:
    """`ray start` options shared by head and workers: loopback, the 4 ``ports`` given, own temp dir.

    ``num_gpus`` > 0 on a machine without GPUs makes logical GPUs: Ray schedules by them (and sets
    CUDA_VISIBLE_DEVICES), so GPU placement can be tested on CPUs as long as the model runs on the CPU.
    """
    return [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={ports[0]}",
        f"--dashboard-agent-grpc-port={ports[1]}",
        f"--runtime-env-agent-port={ports[2]}",
        f"--metrics-export-port={ports[3]}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        *([f"--resources={json.dumps(dict(resources))}"] if resources else []),
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]


def _launch(cmd: list[str], env: dict[str, str], temp_dir: Path, log_path: Path) -> subprocess.Popen:
    """Run `ray start --block` in its own session (so it can be stopped alone), logging to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=temp_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _node_env(token: str, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    """Environment for a node: token auth on, this venv first on PATH, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra_env or {})
    return env


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports free on 127.0.0.1 now, from a range no other process takes on its own.

    A port the kernel hands out for ``bind(0)`` or an outgoing connection (the ephemeral range, 32768-60999
    here) can be taken by any process between this choice and ``ray start``'s bind: with two test workers
    each running Rays, that lost the race (GCS "Address already in use"). So the ports come from 20000 up to
    the ephemeral range, which only explicit binds use, and each pytest-xdist worker draws from its own slice
    of it, so two workers never choose the same port.
    """
    first, last = _explicit_port_range()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (last - first) // max(workers, 1)
    candidates = list(range(first + index * size, first + (index + 1) * size))
    random.shuffle(candidates)
    chosen: list[int] = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"fewer than {count} free ports in {first}-{last} for this test worker")


def _explicit_port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range and above Ray's own defaults (10001, 8265, 6379)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return 20000, max(low, 20000 + 1000)


def _wait_until_ready(proc: subprocess.Popen, head: RayHead) -> None:
    """Wait until the job server answers and the state API lists the head node."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{_log_tail(head.log_path)}")
        if _job_server_answers(head.address, head.token) and _head_listed(head):
            return
        time.sleep(0.5)
    raise RuntimeError(f"Ray head not ready after {START_TIMEOUT_S:.0f}s:\n{_log_tail(head.log_path)}")


def _wait_for_new_node(proc: subprocess.Popen, head: RayHead, known: set[str], log_path: Path) -> str:
    """Wait until a node not in ``known`` is alive in the cluster; return its id."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{_log_tail(log_path)}")
        with contextlib.suppress(urllib.error.URLError, OSError, KeyError, ValueError):
            new = [n["node_id"] for n in list_nodes(head) if n["node_id"] not in known and not n["is_head_node"]]
            if new:
                return new[0]
        time.sleep(0.5)
    raise RuntimeError(f"worker node not up after {START_TIMEOUT_S:.0f}s:\n{_log_tail(log_path)}")


def _head_listed(head: RayHead) -> bool:
    try:
        return any(node["is_head_node"] for node in list_nodes(head))
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


def _job_server_answers(address: str, token: str) -> bool:
    request = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop this head only: SIGTERM, then SIGKILL its whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers in the head's own group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
