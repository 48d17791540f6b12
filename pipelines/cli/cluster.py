"""``pipelines submit | status | logs | stop``: jobs on a remote Ray cluster, through its job server.

These commands take the head's **dashboard URL** (``http://HEAD_IP:8265``), from ``--address`` or else
RAY_API_SERVER_ADDRESS / RAY_ADDRESS when it is an http URL (as ``ray job`` reads them). That is not the
GCS address (``HEAD_IP:6379``, ``auto``) that ``pipelines run --address`` joins as a driver on a node of
the cluster. The transport is :mod:`pipelines.cluster.jobs`, token auth :mod:`pipelines.cluster.auth`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import EXIT_TERMINATED, PipelineError, Terminated

if TYPE_CHECKING:
    from pipelines.cluster.jobs import JobReport

log = logging.getLogger(__name__)

ADDRESS_HELP = (
    "the head's dashboard URL (job server), e.g. http://HEAD_IP:8265 (default: RAY_API_SERVER_ADDRESS or "
    "RAY_ADDRESS if it is an http URL); not the GCS address HEAD_IP:6379 that `pipelines run --address` takes"
)
INSECURE_HELP = (
    "send the cluster's auth token over plain http to another machine, or through a proxy named by HTTP_PROXY/"
    "ALL_PROXY (refused by default: anyone on the network path could read it); prefer https or an SSH tunnel "
    "to http://127.0.0.1:8265 (with NO_PROXY=127.0.0.1 if a proxy is set)"
)


def register(subparsers, job_command) -> None:
    """Add the four sub-commands to the `pipelines` parser."""
    submit = job_command(
        "submit",
        "run a job on a remote Ray cluster through its job server; the project (package, spec, local data) "
        "is uploaded as the job's working_dir",
    )
    submit.add_argument("--address", help=ADDRESS_HELP)
    submit.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the job's logs to its end; exit 0 if it succeeded, 75 if it found its output busy (another "
        "run of it in progress: try later), 1 if it failed otherwise or was stopped",
    )
    submit.add_argument(
        "--project-root",
        type=Path,
        help="directory uploaded as the working_dir (default: the nearest one above the spec holding pipelines/)",
    )
    for flag, what in (("--overwrite", "replace results of another spec or changed input"),
                       ("--prune", "delete the output of committed shards whose input file is gone"),
                       ("--redo-changed", "score again the input files that changed since they were scored")):
        submit.add_argument(flag, action="store_true", help=f"passed to the cluster's `pipelines run`: {what}")
    submit.set_defaults(handler=_submit)

    for name, help_, handler in (
        ("status", "show a submitted job's status", _status),
        ("logs", "print a submitted job's logs", _logs),
        ("stop", "stop a submitted job", _stop),
    ):
        command = subparsers.add_parser(name, help=help_)
        command.add_argument("job_id", help="the id `pipelines submit` printed (raysubmit_...)")
        command.add_argument("--address", help=ADDRESS_HELP)
        command.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
        command.set_defaults(handler=handler)
        if name == "logs":
            command.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")


def _submit(args: argparse.Namespace) -> int:
    from pipelines.cluster import jobs
    from pipelines.spec import load_spec

    spec = load_spec(args.job, args.overrides)  # a broken spec fails here, not after the upload
    _check_output_path(spec.output.path)
    root = args.project_root or jobs.find_project_root(args.job)
    # the cluster runs in the project root: relative paths are sent as `pipelines run` reads them here
    overrides = [*args.overrides, *jobs.paths_as_run_reads_them(
        root, spec.input.paths, spec.model.name, spec.model.cache_dir)]
    spec = load_spec(args.job, overrides)
    # before any connection: an input file the upload leaves out would be missing rows in a job that succeeds
    jobs.check_inputs_uploaded(root, spec.input.paths, spec.input.format, spec.output.path)
    jobs.check_model_uploaded(root, spec.model.name)  # nor a model folder the job would miss
    address = jobs.resolve_address(args.address)
    flags = [flag for flag, given in (("--overwrite", args.overwrite), ("--prune", args.prune),
                                      ("--redo-changed", args.redo_changed)) if given]
    job_id = jobs.submit(args.job, address, overrides=overrides, project_root=root, insecure=args.insecure,
                         extra_args=flags)
    if not args.wait:
        print(job_id)
        print(f"follow it: pipelines logs {job_id} --follow --address {address}", file=sys.stderr)
        return 0
    print(f"submitted {job_id} to {address}; following its logs (Ctrl-C stops following, not the job)", file=sys.stderr)
    try:
        report = jobs.wait(job_id, address, insecure=args.insecure)
    except (KeyboardInterrupt, Terminated) as stop:
        return stopped_following(job_id, address, stop, args.insecure)
    print(f"job {report}", file=sys.stderr)
    return wait_exit_status(report)


def stopped_following(job_id: str, address: str, stop: BaseException, insecure: bool = False) -> int:
    """Ctrl-C or SIGTERM while following a cluster job's logs: the job goes on; say so, and how to get back to it; or,
    where the cluster says it has ended meanwhile (a job that ended as its logs were followed), how it ended."""
    report = None if isinstance(stop, Terminated) else _status_within(job_id, address, insecure, STATUS_WAIT_S)
    if report is not None and report.is_terminal:
        print(f"stopped following {job_id}, which has ended: {report}", file=sys.stderr)
    else:
        print(
            f"stopped following {job_id}; it keeps running. `pipelines logs {job_id} --follow` resumes, "
            f"`pipelines stop {job_id}` stops it (both with --address {address})",
            file=sys.stderr,
        )
    return 130 if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED


#: How long Ctrl-C's courtesy look at a followed job's status may take (a dashboard that does not answer: the line
#: says what it said before). Under SIGTERM there is no look: a process asked to end ends at once.
STATUS_WAIT_S = 3.0


def _status_within(job_id: str, address: str, insecure: bool, seconds: float) -> JobReport | None:
    """The job's status, where the cluster answers within ``seconds``; else (or on any failure) None."""
    import threading

    from pipelines.cluster import jobs

    found: list[JobReport] = []

    def ask() -> None:
        try:
            found.append(jobs.status(job_id, address, insecure=insecure))
        except Exception:  # noqa: BLE001 - the status is a courtesy: unknown, say what holds
            log.debug("no status for %s after Ctrl-C", job_id, exc_info=True)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    try:
        asking.join(seconds)
    except KeyboardInterrupt:  # a second Ctrl-C: stop asking
        return None
    return found[0] if found else None


def wait_exit_status(report: JobReport) -> int:
    """``submit --wait``'s exit status for the job's final report: 0 if it succeeded; 75 (EX_TEMPFAIL) if its
    ``pipelines run`` exited 75, another run of the output being in progress (try later, as for a local run);
    else 1 (failed or stopped)."""
    from pipelines.cli.main import EXIT_BUSY

    if report.status == "SUCCEEDED":
        return 0
    return EXIT_BUSY if report.status == "FAILED" and report.exit_code == EXIT_BUSY else 1


def _check_output_path(path: str) -> None:
    """A submitted job runs in a temporary copy of the project on the head: a relative output would vanish.
    ``~/…`` is sent as written: the home directory of the user the job runs as on the cluster; ``~NAME/…`` is
    refused, as it is relative there where NAME has no account."""
    from pipelines.cluster.jobs import local_relative

    if local_relative(path):
        raise PipelineError(
            f"output.path {path!r} is relative: on the cluster it would land in the job's temporary working "
            "directory on the head and be deleted with it; set an object-store URI (--set "
            "output.path=s3://bucket/prefix) or an absolute path on storage every node shares"
        )
    if path.startswith("~") and path != "~" and not path.startswith("~/"):
        raise PipelineError(
            f"output.path {path!r} is in another user's home (~NAME/…): on the cluster the job runs as its own user, "
            "and where NAME has no account there the path stays a folder of that name in the job's temporary "
            "working directory, deleted with it; write the absolute path, or ~/… for the home of the user the job "
            "runs as"
        )


def _status(args: argparse.Namespace) -> int:
    from pipelines.cluster import jobs

    print(jobs.status(args.job_id, jobs.resolve_address(args.address), insecure=args.insecure))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from pipelines.cluster import jobs

    address = jobs.resolve_address(args.address)
    if args.follow:
        try:
            jobs.logs(args.job_id, address, follow=True, insecure=args.insecure)  # writes to stdout as logs come
        except (KeyboardInterrupt, Terminated) as stop:
            return stopped_following(args.job_id, address, stop, args.insecure)
    else:
        sys.stdout.write(jobs.logs(args.job_id, address, insecure=args.insecure))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from pipelines.cluster import jobs

    address = jobs.resolve_address(args.address)
    if jobs.stop(args.job_id, address, insecure=args.insecure):
        print(f"stop requested for {args.job_id}")
    else:
        print(f"{args.job_id} was not running ({jobs.status(args.job_id, address, insecure=args.insecure).status})")
    return 0
