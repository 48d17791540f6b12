"""A real, local, token-authenticated Ray head for tests (loopback only).

Usage::

    from ray_head import ray_head

    with ray_head() as head:          # ~8-10 s to start on 2 cores
        monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
        jobs_client.submit(..., address=head.address, ...)

The head runs ``ray start --head --block`` in its own session with
``RAY_AUTH_MODE=token`` and a fresh random token passed as ``RAY_AUTH_TOKEN``
(nothing is written to ``~/.ray``), a private ``--temp-dir``, free ports for
every listener Ray would otherwise put on a fixed default port, and the
dashboard on 127.0.0.1. Leaving the block stops exactly this head (SIGTERM to
its ``ray start --block``, which takes its processes down; SIGKILL to its
process group as a fallback) — never ``ray stop``, which would stop every Ray
on the machine. Job entrypoints see this interpreter's bin directory first on
PATH, so ``python`` in an entrypoint is the test interpreter.
"""

from __future__ import annotations

import contextlib
import os
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

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RayHead:
    """A running head: where to submit jobs and the token it accepts."""

    address: str  # dashboard / job server URL, e.g. http://127.0.0.1:41234
    gcs_address: str  # 127.0.0.1:PORT, for ray.init(address=...)
    token: str
    temp_dir: Path
    log_path: Path  # output of `ray start`


@contextlib.contextmanager
def ray_head(
    *,
    num_cpus: int = 1,
    token: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RayHead]:
    """Start a token-auth Ray head on loopback; stop and clean it up on exit."""
    token = token or secrets.token_hex(32)
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # short: socket paths
    log_path = temp_dir / "ray_start.log"
    ports = _free_ports(7)
    gcs_port, dashboard_port = ports[0], ports[1]
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={ports[2]}",
        f"--dashboard-agent-grpc-port={ports[3]}",
        f"--ray-client-server-port={ports[4]}",
        f"--runtime-env-agent-port={ports[5]}",
        f"--metrics-export-port={ports[6]}",
        "--include-dashboard=true",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=_head_env(token, extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    head = RayHead(
        address=f"http://127.0.0.1:{dashboard_port}",
        gcs_address=f"127.0.0.1:{gcs_port}",
        token=token,
        temp_dir=temp_dir,
        log_path=log_path,
    )
    try:
        _wait_until_ready(proc, head)
        yield head
    finally:
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _head_env(token: str, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    """Environment for the head: token auth on, this venv first on PATH."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")
    }
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra_env or {})
    return env


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_until_ready(proc: subprocess.Popen, head: RayHead) -> None:
    """Wait until the job server answers (401 without a token counts as up)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{_log_tail(head.log_path)}")
        if _job_server_answers(head.address, head.token):
            return
        time.sleep(0.5)
    raise RuntimeError(f"Ray head not ready after {START_TIMEOUT_S:.0f}s:\n{_log_tail(head.log_path)}")


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
