"""``pipelines schedule`` and ``pipelines runs``: scheduled incremental runs and their ledger.

Registered by :mod:`pipelines.cli.main`; the work is in :mod:`pipelines.schedule`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from pipelines.spec import JobSpec


def register(commands, job_command) -> None:
    schedule = job_command(
        "schedule",
        "run the job at each tick of its schedule, scoring only new or changed input (--once: the due work, now)",
    )
    schedule.add_argument("--once", action="store_true",
                          help="do the due work now and exit (for cron, Airflow, a Kubernetes CronJob)")
    schedule.add_argument(
        "--address",
        help="GCS address of a Ray cluster to join as the driver, from a node of that cluster: auto or HEAD_IP:6379 "
        "(default: RAY_ADDRESS, else a local Ray for each run); not ray:// (Ray Data cannot run over Ray Client) "
        "nor the dashboard URL",
    )
    schedule.add_argument("--rescore", action="store_true",
                          help="score every input shard again (e.g. with a new model) into a new partition; "
                               "earlier partitions move to _superseded/")
    schedule.add_argument("--prune", action="store_true",
                          help="move the output of shards whose input file is gone to _superseded/ (with --once; "
                               "in the loop, at its first tick)")
    schedule.add_argument("--abandon", metavar="RUN",
                          help="give up on an unfinished run (one that keeps failing): it is no longer resumed; "
                               "its committed shards stay, the others are scored again by the next tick "
                               "(a rescore's keep their earlier output)")
    schedule.add_argument("--json", action="store_true",
                          help="with --once or --abandon: print the ledger lines written as JSON")
    schedule.set_defaults(handler=_schedule)
    runs = job_command("runs", "print a scheduled job's run ledger (<output.path>/_runs.jsonl) as a table")
    runs.add_argument("--json", action="store_true", help="print the raw ledger lines")
    runs.set_defaults(handler=_runs)


def _schedule(args: argparse.Namespace) -> int:
    from pipelines.cli.main import EXIT_BUSY
    from pipelines.errors import PipelineError
    from pipelines.output.lock import LockHeld
    from pipelines.schedule.executor import abandon, describe, run_due
    from pipelines.schedule.loop import serve
    from pipelines.schedule.ticks import upcoming
    from pipelines.spec import load_spec

    if args.json and not args.once and not args.abandon:
        raise PipelineError("--json prints the ledger lines one invocation writes: use it with --once or --abandon RUN "
                            "(the scheduler that runs at every tick logs each run instead; `pipelines runs JOB --json` "
                            "prints the ledger)")
    spec = load_spec(args.job, args.overrides)
    if args.abandon:
        entry = abandon(spec, args.abandon)
        print(json.dumps(entry.to_json(), sort_keys=True, default=str) if args.json else describe(entry))
        return 0
    if not args.once:
        serve(spec, address=args.address, rescore=args.rescore, prune=args.prune)
        return 0
    try:
        report = run_due(spec, address=args.address, rescore=args.rescore, prune=args.prune)
    except LockHeld as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    if args.json:
        for entry in report.entries:
            print(json.dumps(entry.to_json(), sort_keys=True, default=str))
    else:
        for entry in report.entries:
            print(describe(entry))
        if spec.schedule is not None:
            from datetime import UTC, datetime

            print(f"next tick: {upcoming(spec.schedule, report.tick, datetime.now(UTC))}")
        print(f"output: {spec.output.path} (ledger: pipelines runs {args.job})")
        from pipelines.io.shards import reader_uri

        if (readable := reader_uri(spec.output.path)) is not None:
            print(f"read it as {readable} (pyarrow and pandas cut a URI at a # and refuse a space)")
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    return 2 if report.failures else 0


def _no_ledger(spec: JobSpec, job: str) -> str:
    """What to say of an output without a ledger: a `pipelines run` at work on it (said first: its summary, where
    there is one yet, is an earlier run's, which it deletes when it starts its work), `pipelines run`'s output (it
    keeps no ledger: its summary and its page tell its run; without a summary, a run that failed or was stopped
    before its end), or nothing ran yet."""
    from pipelines.output.commit import OutputDir
    from pipelines.output.layout import RUN_LOCK
    from pipelines.output.lock import output_lock

    path = spec.output.path
    try:
        busy = output_lock(path, RUN_LOCK, f"the output {path}", quiet=True).held_elsewhere()
        output = OutputDir(path)
        summary = output.summary()
        started = summary is not None or output.job() is not None or bool(output.commits())
    except (PipelineError, OSError):  # can't be read here: said as before
        busy, summary, started = None, None, False
    if busy is not None:
        held = str(busy).split("; not starting")[0]  # who holds it, since when: not a refusal, nothing is refused
        return (f"no scheduled runs: a `pipelines run` is at work on {path}: {held}; it keeps no ledger "
                f"(`pipelines plan {job}` says what is committed as of now)")
    if summary is not None:
        return (
            f"no scheduled runs: {path} holds the output of pipelines run ({summary.status}, {summary.rows_out:,} "
            f"rows written, {summary.errors:,} quarantined), which keeps no ledger; its summary is {path}/_run.json, "
            f"and `pipelines report {path}` draws it as a page (`pipelines runs` shows the runs of `pipelines "
            "schedule`)"
        )
    if started:
        return (f"no scheduled runs: {path} holds the output of pipelines run, unfinished (no summary: a run is at "
                f"work, or failed or was stopped before its end), which keeps no ledger; the same `pipelines run` "
                f"resumes it, and `pipelines report {path}` draws what is committed")
    return f"no runs yet in {path} (start with: pipelines schedule {job} --once)"


def _runs(args: argparse.Namespace) -> int:
    from pipelines.schedule.ledger import Ledger, render_table
    from pipelines.spec import load_spec

    spec = load_spec(args.job, args.overrides)
    entries = Ledger(spec.output.path).read()
    if args.json:
        for entry in entries:
            print(json.dumps(entry.to_json(), sort_keys=True, default=str))
        return 0
    if not entries:
        print(_no_ledger(spec, args.job))
        return 0
    print(render_table(entries))
    return 0
