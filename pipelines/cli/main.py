"""The ``pipelines`` command: a thin layer over the library's functions.

Every failure the project foresees is a PipelineError; it is printed as one
line naming the cause, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from pipelines.cli import cluster as cli_cluster
from pipelines.cli import plan as cli_plan
from pipelines.cli import quality as cli_quality
from pipelines.cli import schedule as cli_schedule
from pipelines.errors import (
    EXIT_TERMINATED,
    PipelineError,
    Terminated,
    act_on_sigterm,
    from_ray,
    raise_terminated,
)
from pipelines.faults import checkpoint
from pipelines.output.lock import LockHeld, release_held

log = logging.getLogger("pipelines")

EXIT_BUSY = 75  # EX_TEMPFAIL: another run holds the output's lock; try again later
STOPPED = "committed shards are kept; run the same command again to resume"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipelines", description="Batch inference with Transformers on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def job_command(name: str, help_: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_)
        command.add_argument("job", type=Path, help="job spec (YAML)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override a spec field, e.g. --set batching.batch_size=64 (repeatable)")
        return command

    run = job_command("run", "run or resume a job")
    run.add_argument(
        "--address",
        help="GCS address of a Ray cluster to join as its driver, from a node of that cluster: auto or "
        "HEAD_IP:6379 (default: RAY_ADDRESS, else a local Ray); not the dashboard URL http://HEAD_IP:8265, "
        "which `pipelines submit` takes",
    )
    run.add_argument("--overwrite", action="store_true",
                     help="replace results of another spec or changed input (deletes only files this project's "
                     "commit records name)")
    run.add_argument("--prune", action="store_true",
                     help="delete the output of committed shards whose input file is gone, instead of refusing")
    run.add_argument("--redo-changed", action="store_true",
                     help="score again the input files that changed since they were scored (their earlier output is "
                     "deleted first; the other files' output stays), instead of refusing")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    job_command("validate", "check a job spec without running it")
    for register in EXTENSIONS:
        register(commands, job_command)
    return parser


# Modules that add sub-commands: each is a function (subparsers, job_command) that adds parsers
# and sets `handler=` defaults on them (see argparse's set_defaults).
EXTENSIONS: list = [cli_schedule.register, cli_cluster.register, cli_plan.register, cli_quality.register]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    signal.signal(signal.SIGTERM, raise_terminated)  # kept across ray.init (see errors.keeping_sigterm)
    if argv is None:  # the program itself (tests call main(ARGS) in their own process)
        act_on_sigterm(end_terminated)  # at once, where a local Ray could end this process first
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return handler(args)
    except LockHeld as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except PipelineError as exc:
        if exc.report:  # a run that failed after it started its work (see PipelineError); the error stays last
            print(f"report: {exc.report} (the failed run's page)", file=sys.stderr)
        elif exc.unreported:
            print(f"report: none written for this run; build one of what is committed with "
                  f"`pipelines report {exc.unreported}`", file=sys.stderr)
        elif exc.uncommitted:
            print(f"report: none, as no shard of {exc.uncommitted} is committed yet", file=sys.stderr)
        print(f"error: {from_ray(exc) or exc}", file=sys.stderr)  # a task's error, not Ray's remote traceback
        return 2
    except KeyboardInterrupt:
        say_last(f"interrupted: {STOPPED}", alone=argv is None)
        return 130
    except Terminated:
        end_terminated()
        raise  # not reached
    finally:
        if argv is None:  # the program itself (tests call main(ARGS) in their own process)
            quiet_after_the_end()
        checkpoint("exit")


def quiet_after_the_end() -> None:
    """The command has said how it ended; what is left is Ray's shutdown at exit (about half a second for a local
    Ray: cluster.connect.stop_local_ray), which a second Ctrl-C interrupted with a traceback after the command's last
    line, leaving Ray's processes behind. Ctrl-C is now ignored while it runs; a SIGTERM ends the process at once,
    quietly, with status 143."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: exit_at_once(EXIT_TERMINATED))


_ENDING = threading.Lock()


def end_terminated() -> None:
    """SIGTERM's way out, from the main thread (Terminated) or the watching thread (errors.watch_sigterm), whichever
    comes first (the other waits here for the exit): let go of the locks, say so in one line, exit 143."""
    _ENDING.acquire()
    release_held()
    say_last(f"terminated: {STOPPED}")
    exit_at_once(EXIT_TERMINATED)


def say_last(line: str, alone: bool = True) -> None:
    """The command's last line, in one write, after which nothing logs (``alone``: the program itself, not a test
    calling :func:`main`): Ray Data's threads logged a line of their own (`execution finished`) between the words
    and their newline, so the last line was theirs, glued to ours."""
    try:
        fd = sys.stderr.fileno() if alone else None
    except (AttributeError, OSError, ValueError):  # a stream without a file (captured)
        fd = None
    if fd is None:
        print(line, file=sys.stderr)
        return
    logging.disable(logging.CRITICAL)
    sys.stderr.flush()
    os.write(fd, f"{line}\n".encode())


def exit_at_once(status: int) -> None:
    """Exit without the interpreter's exit handlers. The run has let go of its lock already; what is left is Ray's
    own ``ray.shutdown`` at exit, which aborts the process (SIGABRT, a core dump where enabled) when the signal went
    to every process and ended the local Ray's processes first (systemd's stop). A local Ray's processes end with
    this one either way (the kernel kills them as it exits; where it can't, Ray's reaper)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _validate(args: argparse.Namespace) -> int:
    from pipelines.spec import load_spec

    spec = load_spec(args.job, args.overrides)
    print(f"{args.job}: valid ({spec.task.type} with {spec.model.name}, spec hash {spec.fingerprint()})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipelines.io.shards import reader_uri
    from pipelines.output.summary import render
    from pipelines.runner import run_job
    from pipelines.spec import load_spec

    spec = load_spec(args.job, args.overrides)
    result = run_job(spec, address=args.address, overwrite=args.overwrite, prune=args.prune,
                     redo_changed=args.redo_changed)
    if args.json:  # with the page's path, as the readable summary's last line names it (null: this run wrote none)
        print(json.dumps({**result.to_json(), "report": result.report}, indent=1))
    elif result.status == "up to date":
        print(f"up to date: every shard of {args.job} is already committed in {spec.output.path}; nothing written")
    else:
        print(render(result))
        print(f"output: {spec.output.path}")
        if (readable := reader_uri(spec.output.path)) is not None:
            print(f"read it as {readable} (pyarrow and pandas cut a URI at a # and refuse a space)")
        if result.report:
            print(f"report: {result.report}")
        else:  # write_quietly logged why
            print(f"report: not written (see the warning above); rebuild it with `pipelines report {spec.output.path}`")
    return 0


COMMANDS = {"run": _run, "validate": _validate}


if __name__ == "__main__":
    sys.exit(main())
