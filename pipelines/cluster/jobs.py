"""Run pipeline jobs on a remote Ray cluster through Ray Job Submission.

The CLI calls the public functions here: :func:`submit`, :func:`wait`,
:func:`status`, :func:`logs` and :func:`stop`. They talk HTTP to the cluster's
dashboard (``http://HEAD:8265``, the job server) with
:class:`ray.job_submission.JobSubmissionClient`. That URL is not the GCS address
(``HEAD:6379``) a driver joins with ``pipelines run --address``; see
:func:`resolve_address` for where it comes from when no ``--address`` is given.

Authentication (Ray 2.60 token auth). A cluster started with
``RAY_AUTH_MODE=token`` answers every dashboard request without a token with
HTTP 401 and every request with a wrong token with HTTP 403; the Ray client
turns both into :class:`ray.exceptions.AuthenticationError`. The client only
attaches a token by itself when ``RAY_AUTH_MODE=token`` is set in *this*
process, so this module finds the token itself (:func:`pipelines.cluster.auth.find_token`)
and always sends it as ``Authorization: Bearer``. A cluster without token auth
ignores the header. The header is readable by anyone on the way over plain http,
so :func:`check_transport` refuses http to any host but this one, and http that a proxy from the
environment would carry, unless the user passes ``--insecure`` (https, and an SSH tunnel to 127.0.0.1,
need nothing). The guard reads the address with urllib and the Ray client sends with requests (urllib3),
which read some addresses differently (``http://evil\\@127.0.0.1``: host 127.0.0.1 for urllib, evil for
urllib3), so :func:`dashboard_url` accepts only addresses both read the same way (:data:`PLAIN_ADDRESS`).

Every failure leaves this module as :class:`~pipelines.errors.PipelineError`
with a one-line message that says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import re
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pipelines.cluster.auth import TOKEN_HELP, AuthToken, find_token
from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

logger = logging.getLogger(__name__)

#: Paths (gitignore syntax, relative to the project root) never uploaded with the job's working_dir.
#: Ray also skips whatever the .gitignore and .rayignore files in the project list (see :func:`left_out_of_upload`).
#: ``/build`` and ``/dist`` (setuptools' outputs) are anchored to the root: a data folder named build/ or dist/
#: further down is uploaded. The rest are never data and are skipped at any depth.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".venv",
    "venv",
    "/output",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    "*.egg-info",
    "/build",
    "/dist",
    ".cache",
)

#: Environment variables every job gets (logs stream line by line).
DEFAULT_ENV_VARS: Mapping[str, str] = {"PYTHONUNBUFFERED": "1"}

_TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: What Ray's job server answers (HTTP 500) while no node's job agent has registered yet, e.g. for a few
#: seconds after `ray start --head`: a transient state, so a submission is retried for a while.
AGENT_NOT_READY = "No available agent to submit job"
SUBMIT_RETRY_S = 60.0
SUBMIT_RETRY_EVERY_S = 2.0
_CONNECT_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 1.0
#: How long a job's status may lag the end of its log stream before the stream is taken to have closed early.
_STREAM_END_GRACE_S = 5.0
_FINAL_STATUS_TIMEOUT_S = 30.0
#: The line ``pipelines run`` ends a foreseen failure with (cli.main): ``error: …``, or ``busy: …`` (exit 75).
_OWN_LINE = re.compile(r"^(?:error|busy): \S.*$", re.MULTILINE)
_EXIT_CODE = re.compile(r"\bfailed with exit code (-?\d+)\b")
#: A dashboard address made only of characters that urllib (the token guard), urllib3 (requests, which
#: the Ray client sends with) and yarl (aiohttp, its log stream) split into the same host: no user info
#: (``@``), backslash, whitespace or control character, ``?``/``#``/``%``, or non-ASCII letter.
PLAIN_ADDRESS = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?(?P<path>/[A-Za-z0-9._~/-]*)?",
    re.ASCII | re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class JobReport:
    """What the cluster says about one job."""

    job_id: str
    status: str
    message: str
    #: The entrypoint's exit status once it exited (Ray's ``driver_exit_code``), else None.
    exit_code: int | None = None
    #: A failed job's own last ``error: …`` or ``busy: …`` line from its logs (:func:`own_line`), else "".
    own_line: str = ""

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change status."""
        return self.status in _TERMINAL_STATUSES

    @property
    def summary(self) -> str:
        """The message's first line, without the log excerpt Ray appends."""
        first_line = self.message.splitlines()[0] if self.message else ""
        return first_line.split(", last available logs")[0].rstrip(":").strip()

    def __str__(self) -> str:
        text = f"{self.job_id}: {self.status}" + (f" ({self.summary})" if self.summary else "")
        return text + (f" {self.own_line}" if self.own_line else "")


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def submit(
    job_path: Path,
    address: str,
    *,
    overrides: Sequence[str] = (),
    wait: bool = False,
    project_root: Path,
    extra_args: Sequence[str] = (),
    env_vars: Mapping[str, str] | None = None,
    insecure: bool = False,
    retry_for_s: float = SUBMIT_RETRY_S,
    retry_every_s: float = SUBMIT_RETRY_EVERY_S,
) -> str:
    """Submit ``python -m pipelines run JOB [--set k=v ...]`` to the cluster.

    ``project_root`` is uploaded as the job's working_dir (zipped once, :func:`package_project`: minus
    :data:`DEFAULT_EXCLUDES` and .gitignored files), so this package and the
    job spec travel with the job; ``job_path`` must lie inside it.
    ``env_vars`` are added to :data:`DEFAULT_ENV_VARS` for the job's processes.
    ``insecure`` allows sending the token over plain http to another machine (see :func:`check_transport`).
    A job server with no job agent ready yet (:data:`AGENT_NOT_READY`) is asked again every
    ``retry_every_s`` for up to ``retry_for_s`` seconds.

    Returns the job id. With ``wait``, writes the job's logs to stdout as they
    come and returns only when the job succeeded; raises PipelineError if it
    failed or was stopped.
    """
    root = Path(project_root).resolve()
    job_rel = job_path_in_project(Path(job_path), root)
    if left := left_out_of_upload(root, [job_rel]):
        raise PipelineError(
            f"Job spec {job_rel} would not be uploaded with the project ({left[0].rule}); move it (e.g. into "
            "jobs/) or change that rule"
        )
    entrypoint = build_entrypoint(job_rel, overrides, extra_args)
    client, url = _connect(address, insecure)
    with tempfile.TemporaryDirectory(prefix="pipelines-upload-") as scratch, \
            _errors_as_pipeline_errors(url, client.token):
        runtime_env = build_runtime_env(package_project(root, Path(scratch)), env_vars)
        job_id = _submit_when_ready(
            client,
            url,
            {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": {"pipelines_job": job_rel}},
            retry_for_s,
            retry_every_s,
        )
    logger.info("Submitted job %s to %s: %s", job_id, url, entrypoint)
    if wait:
        _wait_for_success(client, url, job_id)
    return job_id


def _submit_when_ready(client: _Client, url: str, request: dict, retry_for_s: float, retry_every_s: float) -> str:
    """``submit_job``, asked again while the job server says it has no job agent ready (one log line says so)."""
    deadline = time.monotonic() + retry_for_s
    waiting = False
    while True:
        try:
            return client.jobs.submit_job(**request)
        except RuntimeError as exc:
            if AGENT_NOT_READY not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise PipelineError(
                    f"The Ray job server at {url} still had no job agent ready after {retry_for_s:.0f} s "
                    f'("{AGENT_NOT_READY}"); check the head with `ray status` (its Ray may still be starting or '
                    "be overloaded) and submit again"
                ) from None
            if not waiting:
                logger.warning(
                    "The Ray job server at %s has no job agent ready yet (a head that just started); "
                    "asking again for up to %.0f s",
                    url,
                    retry_for_s,
                )
                waiting = True
            time.sleep(retry_every_s)


def wait(job_id: str, address: str, insecure: bool = False) -> JobReport:
    """Write the job's logs to stdout as they come until it ends; return its final report."""
    client, url = _connect(address, insecure)
    with _errors_as_pipeline_errors(url, client.token, job_id):
        logs = follow_logs(client, job_id)
        return _with_own_line(client, _final_report(client, job_id), logs)


def status(job_id: str, address: str, insecure: bool = False) -> JobReport:
    """Return the job's current status and the cluster's message about it (a failed job's own last
    ``error:``/``busy:`` line included, from the logs the cluster holds)."""
    client, url = _connect(address, insecure)
    with _errors_as_pipeline_errors(url, client.token, job_id):
        return _with_own_line(client, _report(client, job_id))


def logs(job_id: str, address: str, follow: bool = False, insecure: bool = False) -> str:
    """Return the job's logs so far.

    With ``follow``, also writes them to stdout as they come, until the job ends.
    """
    client, url = _connect(address, insecure)
    with _errors_as_pipeline_errors(url, client.token, job_id):
        if follow:
            return follow_logs(client, job_id)
        return client.jobs.get_job_logs(job_id)


def stop(job_id: str, address: str, insecure: bool = False) -> bool:
    """Ask the cluster to stop the job; True if it was still running."""
    client, url = _connect(address, insecure)
    with _errors_as_pipeline_errors(url, client.token, job_id):
        stopped = client.jobs.stop_job(job_id)
    logger.info("Stop requested for job %s (was running: %s)", job_id, stopped)
    return stopped


# --------------------------------------------------------------------------- #
# Where the job server is, where the project is
# --------------------------------------------------------------------------- #


def resolve_address(address: str | None) -> str:
    """The job server's address: ``address``, else the first http(s) URL in RAY_API_SERVER_ADDRESS, RAY_ADDRESS.

    The environment is read the way ``ray job`` reads it, except that an explicit ``address`` wins and a
    GCS address in RAY_ADDRESS (``HOST:6379``: what a driver joins) is not taken for the job server's.
    """
    if address and address.strip():
        return address.strip()
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "").strip()
        if value.lower().startswith(("http://", "https://")):
            return value
    api = os.environ.get("RAY_API_SERVER_ADDRESS", "").strip()
    if api:  # set, but not a URL: say so, rather than ask for the variable the user has exported
        raise PipelineError(
            f"No job server address: RAY_API_SERVER_ADDRESS={api} is not an http(s) URL, which it must be here; "
            f"export it as the head's dashboard URL, e.g. RAY_API_SERVER_ADDRESS=http://{_host_port(api)}, or pass "
            "--address http://HEAD_IP:8265 (`ray dashboard cluster.yaml` tunnels it to http://127.0.0.1:8265)."
        )
    gcs = os.environ.get("RAY_ADDRESS", "").strip()
    hint = f" (RAY_ADDRESS={gcs} is a GCS address, for `pipelines run --address`)" if gcs else ""
    raise PipelineError(
        f"No job server address{hint}; pass the head's dashboard URL, e.g. --address http://HEAD_IP:8265 "
        "(`ray dashboard cluster.yaml` tunnels it to http://127.0.0.1:8265), or export RAY_API_SERVER_ADDRESS."
    )


def _host_port(value: str) -> str:
    """``HOST:8265``, the dashboard's port, on the host a bare address names, for the spelling a message suggests
    (HEAD_IP where it names none: ``auto``)."""
    host = value.split("://", 1)[-1].rstrip("/").rsplit(":", 1)[0]
    return f"{host if host and host.lower() != 'auto' else 'HEAD_IP'}:8265"


def find_project_root(job_path: Path) -> Path:
    """The nearest directory above the job spec that holds the ``pipelines`` package, else the current one."""
    for folder in Path(job_path).resolve().parents:
        if (folder / "pipelines" / "__init__.py").is_file():
            return folder
    return Path.cwd()


# --------------------------------------------------------------------------- #
# What the upload carries
# --------------------------------------------------------------------------- #

#: Set to 1 in the submitting process, Ray's upload reads no .gitignore files (it always reads .rayignore files).
IGNORE_GITIGNORE_ENV = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"
_EXCLUDES_SOURCE = "pipelines' own excludes"
_RULES_SHOWN = 3


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """A file that uploading the project leaves out, and the rule that leaves it out."""

    path: str  #: relative to the project root, POSIX style
    rule: str  #: e.g. ``.gitignore: *.parquet``, ``jobs/data/.rayignore: raw/``, ``outside the project``


@dataclasses.dataclass(frozen=True)
class _Rules:
    """The patterns of one source, matched as Ray matches them: against paths relative to ``base``."""

    source: str
    base: Path
    lines: tuple[str, ...]
    spec: Any  # Ray's PathSpec

    @classmethod
    def of(cls, source: str, base: Path, lines: Sequence[str]) -> _Rules:
        from ray._private.runtime_env.packaging import PathSpec  # the matcher Ray's upload uses, as it uses it

        kept = tuple(line for line in lines if line)
        return cls(source, base, kept, PathSpec.from_lines("gitwildmatch", kept))

    def rule_for(self, path: Path) -> str | None:
        """``SOURCE: PATTERN`` if these patterns leave ``path`` out (the last pattern that matches it decides)."""
        name = str(path.relative_to(self.base))
        if not self.spec.match_file(name):
            return None
        for line, pattern in reversed(list(zip(self.lines, self.spec.patterns, strict=True))):
            if pattern.include is not None and list(pattern.match([name])):
                return f"{self.source}: {line.strip()}"
        return self.source  # not reached: what matched is an including pattern


def left_out_of_upload(
    project_root: Path, files: Iterable[str], excludes: Sequence[str] = DEFAULT_EXCLUDES
) -> list[LeftOut]:
    """Which of ``files`` (paths relative to the project root) uploading the project as a working_dir leaves out.

    The rules are those of Ray's upload (``_dir_travel`` in ray._private.runtime_env.packaging), matched with
    its own pattern matcher: the runtime_env's ``excludes``, relative to the root; then, in each folder on the
    way down, the .gitignore there (unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and the .rayignore there,
    relative to that folder. A folder or file that any of them matches is left out, a folder with everything
    below it (no ``!`` pattern brings back a file of it). Unlike git: a folder is matched by its path without
    a trailing ``/``, so ``raw/`` leaves out the files below raw/ one by one, not the folder, and a later
    ``!raw/keep.jsonl`` brings that one back; and a deeper .gitignore does not undo what an upper one matches.
    A file outside the project is left out too.
    """
    root = Path(project_root).absolute()
    names = (".gitignore", ".rayignore") if os.environ.get(IGNORE_GITIGNORE_ENV, "0") != "1" else (".rayignore",)
    folders: dict[tuple[str, ...], tuple[str | None, list[_Rules]]] = {}

    def first_rule(path: Path, rules: list[_Rules]) -> str | None:
        return next((rule for rule in (r.rule_for(path) for r in rules) if rule), None)

    def folder(parts: tuple[str, ...]) -> tuple[str | None, list[_Rules]]:
        """(the rule that leaves this folder out, or None; the rules in force below it)."""
        if parts not in folders:
            if parts:
                rule, rules = folder(parts[:-1])
                path = root.joinpath(*parts)
            else:
                rule, rules, path = None, [_Rules.of(_EXCLUDES_SOURCE, root, excludes)], root
            if rule is None:
                rules = rules + [
                    _Rules.of((path / name).relative_to(root).as_posix(), path, _read_lines(path / name))
                    for name in names
                    if (path / name).is_file()
                ]
                rule = first_rule(path, rules)
            folders[parts] = (rule, rules)
        return folders[parts]

    left = []
    for file in files:
        path = Path(os.path.normpath(root / file))
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            left.append(LeftOut(path.as_posix(), "outside the project"))
            continue
        rule, rules = folder(parts[:-1])
        rule = rule or first_rule(path, rules)
        if rule:
            left.append(LeftOut("/".join(parts), rule))
    return left


def _read_lines(path: Path) -> list[str]:
    with path.open("r") as lines:  # as Ray reads an ignore file
        return lines.readlines()


def local_relative(path: str) -> bool:
    """A local path the command's directory gives its meaning to: no URI, not absolute, not ``~/…`` (sent as
    written: the home directory on the cluster)."""
    return "://" not in path and not os.path.isabs(path) and not path.startswith("~")


def check_inputs_uploaded(project_root: Path, input_paths: Sequence[str], input_format: str, output_path: str) -> None:
    """Refuse (PipelineError) a submission whose relative ``input.paths`` read files the upload leaves out.

    On the cluster a relative input path is read in the uploaded project; a file the upload left out
    (:func:`left_out_of_upload`) is simply not there, and the job would succeed without its rows. The files
    are found here as the job finds them (:func:`pipelines.io.shards.list_shards`); a path that fails to list
    here (missing, no file matches) would fail the same way in the upload, so it is refused now with the job's
    own error, before an upload and a cluster job that could only fail. ``~/…`` paths are the home directory on
    the cluster: not checked here.
    """
    from pipelines.io.shards import list_shards

    root = Path(project_root).resolve()
    # where the job will write, as it sees it: a relative output path is in the project on the cluster too. An
    # object-store output lies in no local input folder, and is not opened here: its store need not answer this
    # machine (opening it failed before, and the check was skipped)
    output = output_path if os.path.isabs(output_path) else os.path.join(root, output_path)
    exclude = [] if "://" in output_path else [output]
    files: list[str] = []
    twice: list[str] = []  # files found here under a second name, not read under it
    for location in input_paths:
        if not local_relative(location):
            continue
        try:
            shards = list_shards([os.path.join(root, location)], input_format, exclude=exclude, not_read=twice)
        except PipelineError as error:
            raise PipelineError(
                f"{error} (the relative input path {location} is read in the uploaded project on the cluster, where "
                "the job would fail the same way; refused before anything is uploaded)"
            ) from None
        files += [os.path.relpath(shard.path, root) for shard in shards]
    check_carried_once(root, twice)
    left = left_out_of_upload(root, files)
    if not left:
        return
    raise PipelineError(
        f"{len(left)} of the {len(files)} input files that relative input.paths read in the project would not be "
        f"uploaded with it, and the job would succeed without their rows: {_by_rule(left)}; move the data to a "
        "folder that is uploaded, or change that rule (.gitignore, .rayignore), or give input.paths an s3:// URI "
        "or an absolute path on storage every node of the cluster reads"
    )


def check_carried_once(root: Path, twice: list[str]) -> None:
    """Refuse (PipelineError) a submission whose input reaches a file under a second name (``twice``: the paths of
    the names a listing does not read, :func:`pipelines.io.shards.list_shards`' ``not_read``) that the upload would
    carry: Ray's upload follows a symbolic link and stores a copy under each name (a hard link too), so on the
    cluster they are two files, and the job would read the rows of each, every row twice."""
    inside = [os.path.relpath(path, root) for path in twice if Path(path).is_relative_to(root)]
    left = {item.path for item in left_out_of_upload(root, inside)}
    carried = sorted(name for name in inside if name not in left)
    if carried:
        raise PipelineError(
            f"{len(carried)} input file(s) reached here under two names (a symbolic link, a hard link), which a run "
            f"here reads once, would be uploaded under both, as copies: {', '.join(carried[:3])}"
            f"{' …' if len(carried) > 3 else ''}; on the cluster they are two files, and the job would read each "
            "twice, its rows written twice. Name the folder without the link in input.paths, or leave the other name "
            "out of the upload (.rayignore), or give input.paths an s3:// URI or an absolute path on storage every "
            "node of the cluster reads"
        )


def check_model_uploaded(project_root: Path, model_name: str) -> None:
    """Refuse (PipelineError) a submission whose ``model.name`` is a relative folder the upload leaves out, in
    part or whole.

    On the cluster a relative model folder is read in the uploaded project, as a relative input path is. Models
    are large and often listed in .gitignore (``models/``, ``*.safetensors``); without its folder the job
    fails on the cluster as a Hugging Face id that does not exist, without its weights as a folder that has
    none, though the folder is whole here. The files checked are those a model's identity is hashed over
    (hidden ones left out: ``from_pretrained`` reads none, and ``hf download --local-dir`` keeps a ``.cache/``
    there). An alias is the installed package's on every node; a Hub id, an absolute path (``~/…`` included)
    and a relative name that is no folder in the project are not uploaded, and not checked here.
    """
    from pipelines.spec import MODEL_ALIASES

    if model_name.lower() in MODEL_ALIASES or model_name.startswith("~") or os.path.isabs(model_name):
        return
    root = Path(project_root).resolve()
    folder = Path(os.path.normpath(root / model_name))
    if not folder.is_dir():
        return
    files = [
        os.path.relpath(path, root)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    left = left_out_of_upload(root, files)
    if not left:
        return
    raise PipelineError(
        f"model.name {model_name}: {len(left)} of the {len(files)} files of the model folder would not be uploaded "
        f"with the project: {_by_rule(left)}, and the job would fail on the cluster without them (no such "
        "folder or Hugging Face id, or no weights); push the model to the Hugging Face Hub (a private repository, "
        "with HF_TOKEN on the cluster's nodes) and give its id, or copy it to storage every node reads and give "
        "its absolute path, or, for a small model, change that rule (.gitignore, .rayignore: the job server takes "
        "an upload of at most 100 MiB, zipped)"
    )


def paths_as_run_reads_them(project_root: Path, input_paths: Sequence[str], model_name: str,
                            cache_dir: str | None, here: Path | None = None) -> list[str]:
    """``--set`` overrides that make the job on the cluster read the files ``pipelines run`` would read here.

    A relative local path (``input.paths``, a ``model.name`` that is a folder, ``model.cache_dir``; in the spec file
    or given to ``--set`` alike) is relative to the directory a command runs in, ``here`` (default: the current
    one), but the cluster's ``pipelines run`` runs in the uploaded project root: each such path that would name
    another place from there is sent relative to the root, and one that leads out of the project (which is not
    uploaded) is refused (PipelineError), as is a ``model.name`` that is no folder here (run takes it as a Hugging
    Face id) but one in the project root (the cluster would load that folder). ``~/…`` paths, absolute paths,
    URIs and aliases are sent as written. Empty when run from the root.
    """
    from pipelines.spec import MODEL_ALIASES

    root = Path(project_root).resolve()
    here = Path(here if here is not None else os.getcwd())

    def in_project(field: str, path: str) -> str:
        """``path`` as read from ``here``, relative to the root (as written where that names the same place)."""
        target = os.path.normpath(here / path)
        if target == os.path.normpath(root / path):
            return path
        inside = os.path.relpath(target, root)
        if inside == os.pardir or inside.startswith(os.pardir + os.sep):
            raise PipelineError(
                f"{field} {path} is read by `pipelines run` from the directory it runs in ({here}), as {target}, "
                f"which is outside the project {root} that submit uploads, so the job on the cluster would not find "
                "it; submit from the folder the path is written relative to, or give an s3:// URI or an absolute "
                "path on storage every node of the cluster reads, or move it into the project"
            )
        return Path(inside).as_posix()

    overrides: list[str] = []
    paths = [in_project("input.paths", p) if local_relative(p) else p for p in input_paths]
    if paths != list(input_paths):
        overrides.append("input.paths=" + json.dumps(paths, ensure_ascii=False))
    if model_name.lower() not in MODEL_ALIASES and local_relative(model_name):
        if os.path.exists(here / model_name):
            if (name := in_project("model.name", model_name)) != model_name:
                overrides.append("model.name=" + json.dumps(name, ensure_ascii=False))
        elif os.path.exists(root / model_name):
            raise PipelineError(
                f"model.name {model_name} is no folder in the directory submit runs in ({here}), so `pipelines run` "
                f"here would take it as a Hugging Face id, but the cluster runs in the project root {root} and would "
                "load the folder there; give the folder's path relative to here "
                f"({Path(os.path.relpath(root / model_name, here)).as_posix()}), or submit from the project root"
            )
    if cache_dir and local_relative(cache_dir) and (folder := in_project("model.cache_dir", cache_dir)) != cache_dir:
        overrides.append("model.cache_dir=" + json.dumps(folder, ensure_ascii=False))
    return overrides


def _by_rule(left: Sequence[LeftOut]) -> str:
    """The files left out, grouped by the rule that leaves them out: the first of each and how many more."""
    by_rule: dict[str, list[str]] = {}
    for item in left:
        by_rule.setdefault(item.rule, []).append(item.path)
    shown = [
        f"{paths[0]}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else "") + f" ({rule})"
        for rule, paths in list(by_rule.items())[:_RULES_SHOWN]
    ]
    if len(by_rule) > _RULES_SHOWN:
        shown.append(f"more by {len(by_rule) - _RULES_SHOWN} other rule(s)")
    return ", ".join(shown)


# --------------------------------------------------------------------------- #
# Building the submission
# --------------------------------------------------------------------------- #


def job_path_in_project(job_path: Path, project_root: Path) -> str:
    """Return the job spec's path relative to the project root, POSIX style.

    Raises PipelineError if the spec is missing, or outside the project (it
    would not be uploaded), or if the project has no ``pipelines`` package.
    """
    root = project_root.resolve()
    if not (root / "pipelines").is_dir():
        raise PipelineError(
            f"{root} is not this project's root (it has no pipelines/ package); "
            "pass the directory that contains pipelines/ and jobs/."
        )
    path = job_path.resolve()
    if not path.is_file():
        raise PipelineError(f"Job spec {job_path} does not exist.")
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise PipelineError(
            f"Job spec {job_path} is outside the project {root}, so it would not be "
            "uploaded with the job; move it under the project (e.g. into jobs/)."
        ) from None


def build_entrypoint(job_rel: str, overrides: Sequence[str] = (), extra_args: Sequence[str] = ()) -> str:
    """Return the shell command the cluster runs in the uploaded working_dir."""
    args = ["python", "-m", "pipelines", "run", job_rel]
    for override in overrides:
        if "=" not in override:
            raise PipelineError(f"Override {override!r} is not of the form key=value (e.g. batch_size=64).")
        args += ["--set", override]
    args += list(extra_args)
    return shlex.join(args)


def package_project(project_root: Path, scratch: Path) -> Path:
    """Zip the project as Ray's upload of it as a working_dir would (the same function, the same rules: Ray's
    default excludes and :data:`DEFAULT_EXCLUDES`, the .gitignore and .rayignore files, see
    :func:`left_out_of_upload`) into ``scratch``, and return the zip.

    Submitting the folder itself, Ray looks at it twice: once to name the package the job asks for, once to name
    the package it uploads. A file that changes in between (a log the submit writes inside the project, ``pipelines
    submit … > submit.log`` run there) made the names differ and the job fail setting up, asking for a package never
    sent. A zip is looked at once, and named by its bytes.
    """
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    package = scratch / "project.zip"
    try:
        create_package(
            str(project_root),
            package,
            include_gitignore=os.environ.get(IGNORE_GITIGNORE_ENV, "0") != "1",
            excludes=[*get_runtime_env_default_excludes(), *DEFAULT_EXCLUDES],
        )
    except OSError as exc:
        raise PipelineError(
            f"Could not package the project {project_root} for upload: {exc}; make that file readable, or leave it "
            "out of the upload (.gitignore or .rayignore)"
        ) from None
    return package


def build_runtime_env(working_dir: Path, env_vars: Mapping[str, str] | None = None) -> dict:
    """Return the job's runtime_env: ``working_dir`` (the project's zip, :func:`package_project`), plus env vars."""
    return {"working_dir": str(working_dir), "env_vars": {**DEFAULT_ENV_VARS, **(env_vars or {})}}


# --------------------------------------------------------------------------- #
# Connecting
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class _Client:
    """A JobSubmissionClient and the token it sends (None: no token)."""

    jobs: JobSubmissionClient
    token: AuthToken | None


def dashboard_url(address: str) -> str:
    """Normalize a dashboard address to ``http(s)://host[:port]``.

    A bare ``host[:port]`` gets ``http://`` (and port 8265 if it has none):
    the Ray client would otherwise take it for a GCS address and hang for 40 s.
    An address that is not plain (:data:`PLAIN_ADDRESS`: user info, a backslash, ``#``, whitespace …)
    is refused: the token guard and the HTTP client could read different hosts in it.
    """
    address = (address or "").strip()
    if not address:
        raise PipelineError("No cluster address given; pass the dashboard address, e.g. --address http://HEAD_IP:8265.")
    bare = "://" not in address
    if bare and (address.lower() == "auto" or address.rstrip("/").endswith(":6379")):
        raise PipelineError(
            f"{address!r} is a GCS address, for `pipelines run --address` on a node of the cluster; submit, status, "
            "logs and stop talk to the head's job server: pass its dashboard URL, e.g. --address "
            "http://HEAD_IP:8265 (`ray dashboard cluster.yaml` tunnels it to http://127.0.0.1:8265)."
        )
    if address.lower().startswith("ray://"):
        raise PipelineError(
            f"{address!r} is a Ray Client address, which no pipelines command takes (Ray Data cannot run through Ray "
            "Client); submit, status, logs and stop talk to the head's job server: pass its dashboard URL, e.g. "
            "--address http://HEAD_IP:8265 (`ray dashboard cluster.yaml` tunnels it to http://127.0.0.1:8265); on a "
            "node of the cluster, `pipelines run --address auto` drives the job there."
        )
    if bare:
        address = "http://" + address
    address = address.rstrip("/")
    scheme = address.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        if not PLAIN_ADDRESS.fullmatch(address):
            raise PipelineError(_not_plain_message(address))
        address = scheme + address[len(scheme) :]  # HTTP:// -> http://, which the Ray client expects
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:  # a bracketed host that is no IPv6 address, a port out of range
        parts, port = urlsplit("invalid:"), None
    if bare and port is None and parts.hostname and not parts.path:
        address += ":8265"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PipelineError(
            f"{address!r} is not a dashboard address; jobs are submitted over HTTP, "
            "e.g. --address http://HEAD_IP:8265 (not ray:// or the GCS port 6379)."
        )
    return address


def _not_plain_message(address: str) -> str:
    """Why an http(s) address that does not match :data:`PLAIN_ADDRESS` is refused, in one line."""
    rest = address.split("://", 1)[1]
    odd = sorted({c for c in rest if not (c.isascii() and (c.isalnum() or c in "._~/:[]-"))})
    if not odd:
        return (
            f"{address!r} is not a dashboard address: its host or port is malformed; pass http(s)://HOST[:PORT], "
            "e.g. --address http://HEAD_IP:8265."
        )
    user_info = " (@: user info before the host)" if "@" in odd else ""
    return (
        f"{ascii(address)} is not a plain dashboard address: it has {' '.join(map(ascii, odd))}{user_info}, so "
        "the HTTP client could send the auth token to another host than the one checked here; pass only "
        "http(s)://HOST[:PORT], e.g. --address http://HEAD_IP:8265."
    )


def check_transport(url: str, token: AuthToken | None, insecure: bool = False) -> None:
    """Refuse to send the token in clear text to another machine, unless the user said ``--insecure``:
    over plain http to a host that is not this one (a literal loopback name or address), or over plain
    http through a proxy that requests would take from the environment (HTTP_PROXY, ALL_PROXY, … not
    bypassed by NO_PROXY; decided by requests' own functions, so it is the proxy requests would use).

    Whoever reads the token on the way can submit jobs, which run any code on the cluster.
    """
    url = dashboard_url(url)  # refuses an address whose host the HTTP client could read differently
    if token is None or insecure:
        return
    parts = urlsplit(url)
    if parts.scheme == "https":
        return  # through a proxy too: requests tunnels https (CONNECT), the proxy sees no header
    if not is_loopback(parts.hostname or ""):
        raise PipelineError(
            f"Refusing to send the Ray auth token (from {token.source}) to {url} over plain http: anyone on the "
            "network path could read it and run code on the cluster. Use an https:// address, or an SSH tunnel "
            "(`ray dashboard cluster.yaml`, then --address http://127.0.0.1:8265), or pass --insecure on a "
            "network you trust."
        )
    proxy = proxy_for(url)
    if proxy:
        raise PipelineError(
            f"Refusing to send the Ray auth token (from {token.source}) to {url} over plain http through the "
            f"proxy {proxy} that the environment names (HTTP_PROXY, http_proxy or ALL_PROXY): the proxy, and "
            f"anyone on the way to it, could read the token and run code on the cluster. Set "
            f"NO_PROXY={parts.hostname} (this address needs no proxy), or use an https:// address, or pass "
            "--insecure to send it through the proxy anyway."
        )


def proxy_for(url: str) -> str | None:
    """The proxy requests would send a request to ``url`` through (from the environment), without credentials.

    requests' own choice: ``get_environ_proxies`` (NO_PROXY applied) and ``select_proxy``, as a
    ``requests.request`` (what the Ray client calls) does.
    """
    from requests.utils import get_environ_proxies, select_proxy

    proxy = select_proxy(url, get_environ_proxies(url))
    if not proxy:
        return None
    scheme, _, rest = proxy.rpartition("://")
    return (scheme + "://" if scheme else "") + rest.split("/")[0].rpartition("@")[2]  # no user:password


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine without asking DNS: localhost, 127.0.0.0/8, ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_reachable(url: str) -> None:
    """Fail fast, with a clear message, if nothing listens at the URL's port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise PipelineError(_unreachable_message(url, exc)) from None


def _unreachable_message(url: str, reason: object) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (
        f"Cannot reach the Ray dashboard at {url} ({reason}); check the address (the head's dashboard URL, "
        "http://HEAD_IP:8265 by default, not the port `ray start --port` names) and that the head is up and its "
        f"port {port} is open or tunnelled (`ray dashboard cluster.yaml`)."
    )


def _connect(address: str, insecure: bool = False) -> tuple[_Client, str]:
    """Return a connected client (token attached if one exists) and its URL."""
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(address)
    token = find_token()
    check_transport(url, token, insecure)  # before any connection is made
    _check_reachable(url)
    headers = {"Authorization": f"Bearer {token.value}"} if token else None
    with _errors_as_pipeline_errors(url, token):
        try:
            jobs = JobSubmissionClient(url, headers=headers)
        except RuntimeError as exc:  # something else answers at that address
            raise PipelineError(
                f"{url} does not answer as a Ray job server ({exc}); check that the "
                "address is the head's dashboard, e.g. http://HEAD_IP:8265."
            ) from None
    return _Client(jobs, token), url


@contextlib.contextmanager
def _errors_as_pipeline_errors(url: str, token: AuthToken | None, job_id: str | None = None) -> Iterator[None]:
    """Turn the Ray client's exceptions into one-line PipelineErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError:
        raise PipelineError(_auth_message(url, token)) from None
    except (ConnectionError, requests.RequestException) as exc:
        raise PipelineError(_unreachable_message(url, exc)) from None
    except RuntimeError as exc:  # the job server answered with an HTTP error
        if job_id and "404" in str(exc):
            raise PipelineError(
                f"The cluster at {url} has no job {job_id!r}; check the id (`ray list jobs` on the head lists them)."
            ) from None
        if "status code 413" in str(exc):  # aiohttp's cap on a request's body: the project's package
            raise PipelineError(
                f"The Ray job server at {url} refused the project's upload as too large ({exc}); it takes a package "
                "of at most 100 MiB, zipped, by default: leave large files out of the upload (.gitignore or "
                ".rayignore), with the data on s3:// or on storage every node of the cluster reads and a model on the "
                "Hugging Face Hub, then submit again"
            ) from None
        raise PipelineError(f"The Ray job server at {url} refused the request: {exc}") from None


def _auth_message(url: str, token: AuthToken | None) -> str:
    if token is None:
        return f"The Ray cluster at {url} requires an authentication token and none was found here; {TOKEN_HELP}."
    return f"The Ray cluster at {url} rejected the authentication token from {token.source}; {TOKEN_HELP}."


# --------------------------------------------------------------------------- #
# Following a job
# --------------------------------------------------------------------------- #


def _report(client: _Client, job_id: str) -> JobReport:
    info = client.jobs.get_job_info(job_id)
    message = info.message or ""
    exit_code = getattr(info, "driver_exit_code", None)
    if exit_code is None and (found := _EXIT_CODE.search(message.split("\n", 1)[0])):
        exit_code = int(found.group(1))  # a job server without driver_exit_code says it in its message
    return JobReport(job_id, str(info.status), message, exit_code)


def own_line(logs: str) -> str:
    """The last line of ``logs`` that ``pipelines run`` wrote to end a foreseen failure (``error: …`` or
    ``busy: …``, at the start of a line: not a worker's prefixed output), stripped; "" if there is none."""
    found = _OWN_LINE.findall(logs.replace("\r\n", "\n"))
    return found[-1].strip() if found else ""


def _with_own_line(client: _Client, report: JobReport, logs: str | None = None) -> JobReport:
    """A failed job's report with its own last ``error:``/``busy:`` line, from the log excerpt Ray put in the
    message, else from ``logs`` (what was streamed) or the logs the job server holds."""
    if report.status != "FAILED":
        return report
    line = own_line(report.message)
    if not line and logs is None:
        try:
            logs = client.jobs.get_job_logs(report.job_id)
        except Exception as exc:  # noqa: BLE001 - the status stands without the line; Ray's errors vary
            logger.debug("could not fetch the logs of %s for its error line: %s", report.job_id, exc)
    if not line and logs:
        line = own_line(logs)
    if not line and "runtime_env setup failed" in report.message:  # the job never started: no line of its own
        line = RUNTIME_ENV_HINT
    return dataclasses.replace(report, own_line=line)


#: What a job that failed in its runtime_env setup is told, where it has no line of its own (it never ran, so it has
#: no logs): where Ray's reason is (the runtime_env agent's log of the node, which ``ray exec`` reads on the head).
RUNTIME_ENV_HINT = (
    "hint: the uploaded project could not be set up on the cluster, so the job never started and has no logs; Ray's "
    "reason is in the node's /tmp/ray/session_latest/logs/runtime_env_agent.log (on the head: `ray exec cluster.yaml "
    "'tail -n 50 /tmp/ray/session_latest/logs/runtime_env_agent.log'`), e.g. a package no longer on the cluster (a "
    "head restarted since the upload) or a full disk; submit again once it is mended"
)


def follow_logs(client: _Client, job_id: str, out: IO[str] | None = None) -> str:
    """Write the job's logs to ``out`` (stdout) as they come until the job ends.

    Returns the logs. Streams over the job server's websocket; if that breaks, or closes while the job still runs
    (a proxy's or load balancer's timeout, a dashboard restarted: Ray's stream then just ends), or an event loop is
    already running here, polls the logs instead, to the job's end.
    """
    import aiohttp

    out = out or sys.stdout
    chunks: list[str] = []
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no running loop: the normal case for the CLI
        try:
            asyncio.run(_stream_logs(client, job_id, out, chunks))
            if not _final_report(client, job_id, _STREAM_END_GRACE_S).is_terminal:
                logger.warning("Log stream for job %s closed while the job runs; polling instead.", job_id)
        except (RuntimeError, OSError, aiohttp.ClientError) as exc:
            logger.warning("Log stream for job %s broke (%s); polling instead.", job_id, exc)
    # Also after a stream that ended with the job: what it did not carry (it may have closed before the last lines)
    # comes from the job server's logs, read once the job has ended.
    return _poll_logs(client, job_id, out, already="".join(chunks))


async def _stream_logs(client: _Client, job_id: str, out: IO[str], chunks: list[str]) -> None:
    async for chunk in client.jobs.tail_job_logs(job_id):
        chunks.append(chunk)
        out.write(chunk)
        out.flush()


def _poll_logs(client: _Client, job_id: str, out: IO[str], already: str = "") -> str:
    """Poll the full logs, writing only what is new, until the job ends."""
    seen = already
    while True:
        terminal = _report(client, job_id).is_terminal
        text = client.jobs.get_job_logs(job_id)
        new = text.removeprefix(seen)
        if new:
            out.write(new)
            out.flush()
        seen = text
        if terminal:
            return seen
        time.sleep(_POLL_INTERVAL_S)


def _wait_for_success(client: _Client, url: str, job_id: str) -> None:
    """Follow the job's logs to stdout; raise PipelineError unless it succeeded."""
    with _errors_as_pipeline_errors(url, client.token, job_id):
        try:
            logs = follow_logs(client, job_id)
        except KeyboardInterrupt:
            logger.warning("Stopped following job %s; it keeps running on %s.", job_id, url)
            raise
        report = _with_own_line(client, _final_report(client, job_id), logs)
    if report.status != "SUCCEEDED":
        said = f" {report.own_line}" if report.own_line else ""
        raise PipelineError(
            f"Job {job_id} on {url} ended {report.status}: {report.summary or 'no message'}{said} "
            "(its logs are above)."
        )


def _final_report(client: _Client, job_id: str, wait_s: float | None = None) -> JobReport:
    """Return the job's report once it is terminal (the log stream ends first), or as it is after ``wait_s``
    (default: ``_FINAL_STATUS_TIMEOUT_S``)."""
    deadline = time.monotonic() + (_FINAL_STATUS_TIMEOUT_S if wait_s is None else wait_s)
    report = _report(client, job_id)
    while not report.is_terminal and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL_S / 4)
        report = _report(client, job_id)
    return report
