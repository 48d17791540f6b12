"""Driving a job on an existing Ray cluster: ``pipelines run --address`` and jobs started by ``pipelines submit``.

Two addresses name a Ray cluster, and this project keeps them apart:

* the **GCS address** (``HEAD_IP:6379`` or ``auto``) is what a driver joins: ``pipelines run --address``,
  and ``RAY_ADDRESS`` inside a job the cluster runs. The driver must run on a node of the cluster: Ray
  Data cannot drive a dataset over Ray Client (``ray://HEAD_IP:10001``), so such addresses are refused;
* the **dashboard URL** (``http://HEAD_IP:8265``) is the job server's: ``pipelines submit/status/logs/stop``
  (:mod:`pipelines.cluster.jobs`).

Joining from outside, the driver makes three decisions, all here:

* **Code.** Workers must import this package to run the predictor. Unless the driver itself runs inside a
  Ray job whose runtime env already carries the code (``pipelines submit`` uploads the project as the job's
  working_dir), the driver ships its own ``pipelines`` package with ``runtime_env={"py_modules": [...]}``.
  It does so even when the nodes have the project installed (cluster.yaml installs it): the shipped copy
  comes first on the workers' ``sys.path``, so the workers run exactly the driver's code, never an older
  checkout. The package is a few hundred kB, and Ray caches it by content hash.
* **Token.** Ray only turns token authentication on by itself for ``ray.init()`` without an address; with
  an explicit address a driver that has the token but not ``RAY_AUTH_MODE=token`` is refused after ~20 s.
  If ``RAY_AUTH_MODE`` is unset and a token is found (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
  ``~/.ray/auth_token``), token mode is turned on for this process; a cluster without token auth ignores it.
* **Can the pool ever start?** A cluster whose autoscaler can add nodes (``ray up``, KubeRay) gets what the
  pool asks for later, so nothing is checked. A cluster that cannot grow (nodes started by hand with
  ``ray start``, whose autoscaler is Ray's read-only one) has all it will ever have, and the same checks
  as a local Ray apply (:func:`check_resources`), plus :func:`check_pool_fits`: at least
  ``compute.min`` actors, each with its CPUs, GPUs, accelerator type and custom resources on one node.
  The answer comes from the autoscaler's own report (what ``ray status`` shows), see :func:`can_add_nodes`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipelines.cluster.auth import TOKEN_HELP, enable_token_auth_if_available, find_token
from pipelines.errors import PipelineError, first_line, keeping_sigterm, watch_sigterm
from pipelines.spec import MODEL_ALIASES, ComputeSpec, JobSpec

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Never shipped with the package.
PACKAGE_EXCLUDES = ["__pycache__", "*.pyc"]
_CONNECT_TIMEOUT_S = 5.0
#: The autoscaler reports every 5 s, the first time once the nodes' load has reached it.
_REPORT_WAIT_S = 20.0
#: The read-only autoscaler (clusters that cannot grow) names each node's type after the node's id.
_READONLY_NODE_TYPE = re.compile(r"^node_[0-9a-f]{56}$")


def gcs_address(address: str | None) -> str | None:
    """The cluster a driver joins: ``address``, else ``RAY_ADDRESS``; None means start a local Ray.

    Raises PipelineError for a dashboard URL (``http://...:8265``), which is for ``pipelines submit``.
    """
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        address = address.strip()
        if _is_http(address):
            raise PipelineError(
                f"--address {address} is a dashboard URL; `pipelines run --address` joins a cluster by its GCS "
                "address (HEAD_IP:6379, or auto on a node of the cluster). To run the job on the cluster through "
                f"its job server instead, use `pipelines submit JOB.yaml --address {address}`."
            )
        if address == "auto" and _is_http(env):
            raise PipelineError(_http_env_message(env, "--address auto"))
        if address == "auto" and _is_ray_client(env):  # ray.init resolves auto through RAY_ADDRESS
            raise PipelineError(_ray_client_env_message(env))
        _refuse_ray_client(address)
        return address
    if _is_http(env):
        raise PipelineError(_http_env_message(env, "`pipelines run`"))
    if _is_ray_client(env):
        raise PipelineError(_ray_client_env_message(env))
    return env or None


def _is_ray_client(address: str) -> bool:
    return address.lower().startswith("ray://")


def _refuse_ray_client(address: str) -> None:
    """Ray Data cannot drive a dataset through Ray Client (checked with Ray 2.60: the streaming executor
    needs a core worker in the driver, which a ray:// driver does not have), so a job would fail at its start."""
    if _is_ray_client(address):
        raise PipelineError(
            f"{address} is a Ray Client address, and Ray Data jobs cannot be driven through Ray Client; run "
            "`pipelines run --address auto` on a node of the cluster (e.g. after `ray attach cluster.yaml`), "
            "or submit the job from here with `pipelines submit JOB.yaml --address http://HEAD_IP:8265`."
        )


def _is_http(address: str) -> bool:
    return address.lower().startswith(("http://", "https://"))


def _http_env_message(env: str, what: str) -> str:
    return (
        f"RAY_ADDRESS is {env}, a dashboard URL, and {what} would join that as a cluster's GCS address; "
        f"use `pipelines submit JOB.yaml` (it reads the URL from RAY_ADDRESS) to run there, pass the GCS "
        "address (--address HEAD_IP:6379), or unset RAY_ADDRESS to run on a local Ray."
    )


def _ray_client_env_message(env: str) -> str:
    return (
        f"RAY_ADDRESS is {env}, a Ray Client address, and Ray Data jobs cannot be driven through Ray Client (a "
        "`--address auto` is resolved through RAY_ADDRESS too); unset RAY_ADDRESS, then run `pipelines run --address "
        "auto` on a node of the cluster (e.g. after `ray attach cluster.yaml`), pass its GCS address (--address "
        "HEAD_IP:6379), or submit the job from here with `pipelines submit JOB.yaml --address http://HEAD_IP:8265`."
    )


def _job_runtime_env() -> dict[str, Any]:
    """The runtime env of the submitted Ray job this driver runs in; empty outside one."""
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray for the driver of a submitted job
    if not job_config:
        return {}
    try:
        return json.loads(job_config).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def code_runtime_env() -> dict[str, Any] | None:
    """The runtime env that ships this package to the workers, or None if the job already carries it."""
    job_env = _job_runtime_env()
    if job_env.get("working_dir") or job_env.get("py_modules"):
        return None
    return {"py_modules": [str(PACKAGE_DIR)], "excludes": list(PACKAGE_EXCLUDES)}


def worker_spec(spec: JobSpec) -> dict[str, Any]:
    """The spec as the pool's actors and Ray tasks get it: local relative paths (``model.name`` where it is a
    folder here, ``model.cache_dir``, ``output.path``) made absolute. They are relative to the directory the
    command runs from, but a Ray worker runs from its own (joining with ``--address``: where the cluster was
    started), except in a submitted job with a working_dir, whose workers run from that directory as its driver
    does. The spec itself keeps them as written (``model.name`` is part of the spec hash)."""
    raw = spec.model_dump(mode="json")
    if _job_runtime_env().get("working_dir"):
        return raw

    def relative(path: str) -> bool:
        return "://" not in path and not os.path.isabs(path)  # ~/x too: the driver's home, as the driver reads it

    model, output = raw["model"], raw["output"]
    alias = model["name"].lower() in MODEL_ALIASES  # a built-in name, even where a folder here has it
    if not alias and relative(model["name"]) and os.path.exists(os.path.expanduser(model["name"])):
        model["name"] = os.path.abspath(os.path.expanduser(model["name"]))
    if model["cache_dir"] and relative(model["cache_dir"]):
        model["cache_dir"] = os.path.abspath(os.path.expanduser(model["cache_dir"]))
    if "://" not in output["path"] and not os.path.isabs(output["path"]):  # as the driver's resolve() takes it:
        output["path"] = os.path.abspath(os.path.expanduser(output["path"]))  # ~ the driver's home, the rest from here
    return raw


def join(address: str, runtime_env: Mapping[str, Any] | None) -> None:
    """``ray.init`` against an existing cluster; every failure is a one-line PipelineError."""
    import ray
    from ray.exceptions import AuthenticationError

    _check_reachable(address)
    token_auth = enable_token_auth_if_available()
    try:
        with keeping_sigterm():
            ray.init(address=address, runtime_env=dict(runtime_env) if runtime_env else None,
                     logging_level=logging.WARNING)
    except (AuthenticationError, ConnectionError, RuntimeError) as exc:
        if _refused_for_auth(exc):
            raise PipelineError(_auth_message(address, token_auth)) from None
        raise PipelineError(
            f"Cannot join the Ray cluster at {address} ({exc}); check the GCS address (HEAD_IP:6379, or auto on a "
            "node of the cluster) and that the head is up; the driver must run on a node of the cluster."
        ) from None
    log.info("joined the Ray cluster at %s%s", address, " (shipping the pipelines package)" if runtime_env else "")


def _refused_for_auth(exc: BaseException) -> bool:
    """Whether ray.init failed because the cluster refused this driver's token (or its lack of one).

    Ray raises AuthenticationError, or a ConnectionError/RuntimeError caused by one or quoting it.
    """
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AuthenticationError) or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _auth_message(address: str, token_auth: bool) -> str:
    token = find_token() if token_auth else None
    cause = "has no token" if token is None else f"sent the token from {token.source} and it was refused"
    return f"The Ray cluster at {address} requires authentication and this driver {cause}; {TOKEN_HELP}."


def _check_reachable(address: str) -> None:
    """Fail fast, with a clear message, if nothing listens at HOST:PORT (Ray itself retries for a minute)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or address == "auto":
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise PipelineError(
            f"Cannot reach the Ray cluster at {address} ({exc}); check the GCS address (HEAD_IP:6379), that the "
            "head is up and that its port is open to this node."
        ) from None


def can_add_nodes(wait_s: float = _REPORT_WAIT_S) -> bool | None:
    """Whether the autoscaler of the cluster this process joined may add nodes; None if it cannot be told.

    KubeRay (autoscaler v2) publishes the cluster's node groups: a cluster that has them can grow. Otherwise
    the answer comes from the report the autoscaler writes every few seconds (what ``ray status`` reads): a
    cluster nobody configured for autoscaling runs Ray's read-only autoscaler, whose node types are
    ``node_<node id>``, one per node it sees; a ``ray up`` cluster's types are those of its cluster.yaml.
    A cluster only seconds old has no report yet: wait up to ``wait_s`` for its first one.
    """
    import ray

    try:
        if ray._private.state.state.get_max_resources_from_cluster_config():
            return True
    except Exception:  # private API: fall back to the autoscaler's report
        log.debug("no cluster config published", exc_info=True)
    deadline = time.monotonic() + wait_s
    report = _autoscaler_report()
    while not report and time.monotonic() < deadline:
        time.sleep(1.0)
        report = _autoscaler_report()
    if not report:
        return None
    node_types = {*report.get("active_nodes", {}), *(report.get("node_type_mapping") or {}).values()}
    node_types |= {entry[1] for entry in report.get("pending_nodes", []) if len(entry) > 1}
    node_types |= set(report.get("pending_launches", {}))
    if not node_types:
        return None
    return not all(_READONLY_NODE_TYPE.match(name) for name in node_types)


def _autoscaler_report() -> dict | None:
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return json.loads(raw).get("autoscaler_report") if raw else None
    except Exception:  # no report is "cannot tell", not an error
        log.debug("no autoscaler report", exc_info=True)
        return None


def actor_request(compute: ComputeSpec) -> dict[str, float]:
    """What Ray reserves for one actor of the pool (accelerator_type becomes a tiny custom resource)."""
    request = {"CPU": compute.cpus_per_actor, **compute.resources}
    if compute.gpus_per_actor > 0:
        request["GPU"] = compute.gpus_per_actor
    if compute.accelerator_type:
        request[f"accelerator_type:{compute.accelerator_type}"] = 0.001
    return request


def actors_that_fit(request: Mapping[str, float], nodes: list[Mapping[str, float]]) -> int:
    """How many actors of ``request`` the ``nodes`` (their total resources) hold at once."""
    total = 0
    for node in nodes:
        per_node = [math.floor(node.get(name, 0) / amount + 1e-9) for name, amount in request.items() if amount > 0]
        total += min(per_node, default=0)
    return total


def check_pool_fits(compute: ComputeSpec) -> None:
    """On a cluster that cannot grow: at least ``min`` actors must fit on its nodes, or the job would hang."""
    import ray

    low, _ = compute.pool_bounds()
    request = actor_request(compute)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    fits = actors_that_fit(request, nodes)
    if fits >= low:
        return
    missing = sorted(name for name in request if not any(node.get(name, 0) >= request[name] for node in nodes))
    wanted = ", ".join(f"{name}: {amount:g}" for name, amount in request.items())
    reason = f"no node has {', '.join(missing)}" if missing else f"its {len(nodes)} node(s) hold only {fits}"
    raise PipelineError(
        f"compute: the pool needs at least {low} actor(s) of {{{wanted}}} at once, but this Ray cluster cannot add "
        f"nodes and {reason}; lower compute.size/min or the per-actor resources, or add nodes that have them"
    )


def warn_if_output_is_node_local(output_path: str) -> None:
    """Every node writes its part of the output: a local path must be on storage all nodes share."""
    import ray

    if "://" in output_path and not output_path.startswith("file://"):
        return
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1:
        log.warning(
            "output.path %s is a local path and this cluster has %d nodes: each node writes its part there, "
            "so it must be storage every node shares (or use s3://bucket/prefix)",
            output_path,
            len(nodes),
        )


def connect(address: str | None, spec: JobSpec) -> None:
    """Join the cluster at ``address`` (a GCS address: auto or HOST:6379, from a node of the cluster), else the
    one in RAY_ADDRESS (set by Ray for a submitted job's driver), else start a local Ray. Dashboard URLs and
    Ray Client (ray://) addresses are refused with a message that says what to use instead.

    Joining from outside ships this package to the workers unless the job already carries it, and turns on
    token auth when a token is at hand. The resource checks of a local Ray also apply
    to a cluster that cannot add nodes; on one that autoscales, the pool waits for the nodes it asks for.
    """
    import ray

    if ray.is_initialized():
        return
    target = gcs_address(address)
    if target is None:
        start_local()
        check_resources(spec, local=True)
        check_pool_fits(spec.compute)
        return
    join(target, code_runtime_env())
    grows = can_add_nodes()
    if grows is None:
        log.info("cannot tell yet whether the cluster at %s autoscales; resources not checked", target)
    check_resources(spec, local=grows is False)
    if grows is False:
        check_pool_fits(spec.compute)
    warn_if_output_is_node_local(spec.output.path)


def start_local() -> None:
    """Start a local Ray for this process; failing to (e.g. "The current node timed out during startup" on a
    loaded machine, an unusable temp directory) is a one-line PipelineError saying what to try."""
    import ray

    notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
    quiet = WithoutTokenNotice()
    notice.addFilter(quiet)
    try:
        with keeping_sigterm(), quick_local_start(), in_a_group_of_their_own():
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                     _system_config=quick_connect_config())
        _stop_local_ray_first_at_exit()
        watch_sigterm()  # a SIGTERM to every process (systemd's stop) ends this Ray's, and Ray then this one
    except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions and OSErrors while starting
        try:
            with keeping_sigterm():  # Ray's shutdown puts SIGTERM back to the kernel's default (see there)
                ray.shutdown()  # whatever did start
        except Exception:  # noqa: BLE001 - nothing more to clean up
            log.debug("ray.shutdown after a failed start", exc_info=True)
        home = os.path.expanduser("~")
        if isinstance(exc, OSError) and exc.filename is not None and _in_home_ray(str(exc.filename), home):
            raise PipelineError(
                f"Cannot start a local Ray ({first_line(exc)}): Ray keeps the token of a local Ray in "
                f"~/.ray/auth_token, and HOME ({home}) is no folder this user can write; set HOME to one, or "
                "RAY_AUTH_MODE=disabled to start a Ray of this machine without a token"
            ) from None
        temp = ray_temp_dir()
        raise PipelineError(
            f"Cannot start a local Ray ({first_line(exc)}); run the command again (a busy machine can time out while "
            f"Ray starts), check that {temp} is a writable directory with free space (RAY_TMPDIR moves it; Ray's "
            f"logs are in {temp}/ray/session_latest/logs), or join a running Ray with --address HEAD_IP:6379"
        ) from None
    finally:
        notice.removeFilter(quiet)


def _no_process(returns: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """For :data:`QUICK_START`: a start of a process that starts none, and returns ``returns``."""
    return lambda started: lambda *args, **kwargs: returns


#: The dashboard's address a local Ray without an API server gives in the GCS: one no server can have (port 0).
NO_DASHBOARD = b"127.0.0.1:0"


def _no_api_server(start_api_server: Callable[..., Any]) -> Callable[..., Any]:
    """For :data:`QUICK_START`: no API server, but the dashboard's address it would have put in the GCS (with its
    frontend off, an address where nothing listened) as :data:`NO_DASHBOARD`. The raylet's dashboard agent waits
    for that key, looking once a second and logging an error each time (Ray 2.60's event module), for as long as
    the Ray runs; Ray's state API, for 40 s before it fails. Returns what Ray's start does where it started none."""

    def address_only(include_dashboard: Any, raise_on_failure: Any, host: Any, gcs_address: str, cluster_id_hex: str,
                     *args: Any, **kwargs: Any) -> tuple[None, None]:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        try:
            GcsClient(address=gcs_address, cluster_id=cluster_id_hex).internal_kv_put(
                b"dashboard", NO_DASHBOARD, True, namespace=b"dashboard")
        except Exception:  # noqa: BLE001 - the agent's errors in Ray's log are all it costs
            log.debug("the dashboard's address in the GCS", exc_info=True)
        return None, None

    return address_only


def _registered_first(get_node: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """For :data:`QUICK_START`: Ray's ``get_node`` asked once the node is in the GCS's table, which is looked at
    every :data:`REGISTERED_POLL_S` (a GCS call of a millisecond here) for up to :data:`REGISTERED_WAIT_S`. Only
    before Ray's first ask: where that fails, Ray asks again until 30 s after its first, as it does without this."""
    looked: list[bool] = []

    def asked_when_registered(gcs_address: str, node_id: str) -> Any:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        if looked:
            return get_node(gcs_address, node_id)
        looked.append(True)
        try:
            client = GcsClient(address=gcs_address)
            deadline = time.monotonic() + REGISTERED_WAIT_S
            while time.monotonic() < deadline:
                if any(found.hex() == node_id for found in client.get_all_node_info(timeout=1)):
                    break
                time.sleep(REGISTERED_POLL_S)
        except Exception:  # noqa: BLE001 - Ray's own wait, which follows, says what is wrong
            log.debug("watching the raylet's registration", exc_info=True)
        return get_node(gcs_address, node_id)

    return asked_when_registered


#: How often, and for how long at most, a local Ray's start looks whether its raylet has registered with the GCS.
REGISTERED_POLL_S = 0.05
REGISTERED_WAIT_S = 20.0  # within the 30 s Ray gives its raylet to register

#: What a local Ray of one command starts otherwise than ``ray.init`` does, each where Ray 2.60 has it (module,
#: class or "", function) with what stands in for it (made from the function it stands in for).
QUICK_START: tuple[tuple[str, str, str, Callable[[Callable[..., Any]], Callable[..., Any]]], ...] = (
    # the API server: with the dashboard off it serves nothing (its one module, usage statistics, is off where
    # ray.init starts Ray from a release wheel), and ray.init waits for it to say its address (1.6-1.9 s on the
    # 2-core machine) before it starts the raylet
    ("ray._private.services", "", "start_api_server", _no_api_server),
    # the autoscaler's monitor: one machine has no node to add, and nothing of a run reads its reports
    ("ray._private.node", "Node", "start_monitor", _no_process(None)),
    # ray.init waits for its raylet to register through Ray's C++, which looks once a second: the raylet registers
    # about a second after its start here, so the wait ended after 1 s or 2 s
    ("ray._private.services", "", "get_node", _registered_first),
)


#: The Ray versions whose start :data:`QUICK_START` was read and run against: the stand-ins rely on how Ray calls
#: those functions (no process from the API server's start, nothing from the monitor's), which other versions within
#: the pin may not share.
QUICK_START_RAY = ("2.60.",)


#: Ray's settings for how its processes connect to a local socket (the raylet to its own object store, a worker to
#: the raylet): a connection that fails is tried again after this long, this many times. Ray's 1000 ms x 10: the
#: raylet's first try often came before its object store (a thread of its own) listened, and its start waited a whole
#: second (2026-12-08: 4 of 10 local starts took 2.7-2.9 s, the others 1.7-2.1 s; with these settings, 8 of 8 took
#: 1.7-2.2 s). The same 10 s in all before a connection is given up on.
QUICK_CONNECT = {"raylet_client_connect_timeout_milliseconds": 100, "raylet_client_num_connect_attempts": 100}


def quick_connect_config() -> dict[str, int] | None:
    """:data:`QUICK_CONNECT` as ``ray.init``'s ``_system_config`` for a Ray of :data:`QUICK_START_RAY`, the version
    it was measured on; None (Ray's own) for another. A setting the user gave as ``RAY_<name>`` is left to them
    (``_system_config`` would win over it). A copy: Ray adds its own settings to the dict it is given."""
    import ray

    if not ray.__version__.startswith(QUICK_START_RAY):
        return None
    return {name: value for name, value in QUICK_CONNECT.items() if f"RAY_{name}" not in os.environ} or None


@contextlib.contextmanager
def quick_local_start() -> Iterator[None]:
    """While a local Ray starts in this process: the changes of :data:`QUICK_START`, which no public option of
    ``ray.init`` makes. On the 2-core machine they took Ray's start from about 4 s to about 2.5 s (the processes left
    out no longer compete with the GCS, the raylet and its agents for the cores). A Ray of another version than
    :data:`QUICK_START_RAY`, or one that has any of those functions elsewhere than 2.60 has them, starts with none
    changed, as ``ray.init`` starts it."""
    import importlib

    import ray

    if not ray.__version__.startswith(QUICK_START_RAY):
        log.debug("Ray %s: a local Ray starts as ray.init starts it (the quick start is for Ray %s)", ray.__version__,
                  ", ".join(v + "x" for v in QUICK_START_RAY))
        yield
        return
    found = []
    for module, owner, name, stand_in in QUICK_START:
        try:
            holder = importlib.import_module(module)
            holder = getattr(holder, owner) if owner else holder
            found.append((holder, name, getattr(holder, name), stand_in))
        except (ImportError, AttributeError):
            log.debug("Ray has no %s.%s: a local Ray starts as ray.init starts it", module, owner or name)
            found = []
            break
    for holder, name, original, stand_in in found:
        setattr(holder, name, stand_in(original))
    try:
        yield
    finally:
        for holder, name, original, _ in found:
            setattr(holder, name, original)


@contextlib.contextmanager
def in_a_group_of_their_own() -> Iterator[None]:
    """While a local Ray starts in this process: each process Ray starts for it (the GCS, the raylet, whose agents
    join the raylet's group, the log monitor; Ray puts its workers in groups of their own) in a process group of its
    own, not in the command's.

    A SIGTERM to the command's process group (Airflow's killpg at a task's timeout, ``kill -TERM -PGID``) reached
    Ray's processes too; the raylet ended at once, and Ray's core worker then ended this process on its own (exit 1,
    no line of ours) where it came before the command's way out on SIGTERM (see
    :func:`pipelines.errors.watch_sigterm`). Now such a signal reaches the command alone, as a SIGTERM to its pid
    does: it lets go of its lock, says its line and exits 143, and its Ray's processes end with it, killed by the
    kernel as it exits (Ray starts them so on Linux: ``PR_SET_PDEATHSIG`` in the child, which Ray's own
    ``preexec_fn`` asks for before the child leaves the group, so that no child is ever out of both). Elsewhere
    Ray's reaper ends them by ending the command's process group, which they must stay in. A Ray without
    ``ConsolePopen`` where 2.60 has it starts as ``ray.init`` starts it."""
    import subprocess
    import sys

    import ray._private.services as services
    import ray._private.utils as utils

    started = getattr(services, "ConsolePopen", None)
    fate_shared = getattr(utils, "detect_fate_sharing_support", lambda: False)
    if not (sys.platform.startswith("linux") and isinstance(started, type) and issubclass(started, subprocess.Popen)
            and fate_shared()):
        log.debug("a local Ray's processes stay in this command's process group (the kernel does not end them with "
                  "it here: Ray's reaper ends them through that group)")
        yield
        return

    class InAGroupOfItsOwn(started):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if "process_group" not in kwargs and not kwargs.get("start_new_session"):
                kwargs["preexec_fn"] = _then_a_group_of_its_own(kwargs.get("preexec_fn"), os.getpid())
            super().__init__(*args, **kwargs)

    services.ConsolePopen = InAGroupOfItsOwn
    try:
        yield
    finally:
        services.ConsolePopen = started


def _then_a_group_of_its_own(ray_own: Callable[[], None] | None, parent: int) -> Callable[[], None]:
    """In the child, before it runs Ray's program: Ray's own ``preexec_fn`` (the kernel's signal at the command's
    exit), then a process group of its own; a child whose command ended in between (before that signal was asked
    for) ends too, as it would have with the command's group."""

    def child() -> None:
        if ray_own is not None:
            ray_own()
        os.setpgid(0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return child


#: Where Ray 2.60 logs, as a WARNING at every ``ray.init()`` that starts a Ray, that it turned token authentication on
#: by default ("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."): a
#: line among the run's own, about a Ray the command starts and stops itself.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


class WithoutTokenNotice(logging.Filter):
    """Drops Ray's notice that a local Ray it starts has token authentication on (its default; the README says so
    and how to turn it off); passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


_stop_registered = False


def _stop_local_ray_first_at_exit() -> None:
    """Registers :func:`stop_local_ray` to run at exit just before Ray's own shutdown (functions registered with
    atexit run last-registered first; Ray registers its shutdown when it is imported), once per process."""
    global _stop_registered
    if not _stop_registered:
        atexit.register(stop_local_ray)
        _stop_registered = True


def stop_local_ray() -> None:
    """Stop the local Ray this process started, its autoscaler's monitor first (where it has one: a Ray started
    without :func:`quick_local_start`'s changes): what Ray's shutdown at exit does,
    without two waits of it (Ray 2.60), 1.5-2.5 s of the exit of every command that started a local Ray on a 2-core
    machine.

    * Ray stops a local Ray's processes one after another, the GCS before the monitor; the monitor's SIGTERM
      handler then tries to tell the drivers through the GCS that is gone, and Ray waits out a second of grace
      before it sends SIGKILL. Killed first (Ray's own end for it, a second sooner), it goes at once.
    * At exit Ray sleeps half a second first, "to make sure that log messages finish printing": after the command's
      last line, which nothing is to follow (see :func:`pipelines.cli.main.say_last`). Shut down here, outside
      Ray's exit hook, it doesn't; Ray's hook then finds nothing left to do.

    Nothing where this process started no Ray of its own (one it joined, one already shut down). A local Ray started
    with :func:`quick_local_start`'s changes has no monitor: Ray's shutdown only."""
    try:
        import ray
        from ray._private.worker import _global_node as node

        if node is None or not node.head:
            return
        for info in node.all_processes.get("monitor", []):
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=1)  # reaped: Ray's shutdown finds it ended, goes on
        ray.shutdown()
    except Exception:  # noqa: BLE001 - Ray's own shutdown, which follows, stops whatever is left as it always did
        log.debug("stopping the local Ray at exit", exc_info=True)


def _in_home_ray(path: str, home: str) -> bool:
    """Whether ``path`` is the home folder, its ``.ray`` or the token file in it: what Ray's token set-up writes."""
    ray_dir = os.path.join(home, ".ray")
    return os.path.normpath(path) in {os.path.normpath(p) for p in (home, ray_dir, os.path.join(ray_dir, "auth_token"))}


def ray_temp_dir() -> str:
    """Where a local Ray keeps its sessions: RAY_TMPDIR, else TMPDIR, else /tmp (as Ray reads them on Linux)."""
    return os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"


def check_resources(spec: JobSpec, local: bool) -> None:
    import ray

    resources = ray.cluster_resources()
    compute = spec.compute
    if compute.gpus_per_actor > 0 and resources.get("GPU", 0) == 0 and local:
        raise PipelineError(
            "compute.gpus_per_actor > 0 but this Ray cluster has no GPUs; set gpus_per_actor: 0 to run on CPU, "
            "or submit to a cluster with GPU workers"
        )
    low, _ = compute.pool_bounds()
    cpus = resources.get("CPU", 0)
    if local and low * compute.cpus_per_actor >= cpus:
        raise PipelineError(
            f"compute: {low} actor(s) × {compute.cpus_per_actor} CPU leave none of the cluster's {cpus:g} CPUs "
            "for reading and writing, and the job would hang; lower compute.cpus_per_actor (fractions are "
            "allowed) or the number of actors"
        )
