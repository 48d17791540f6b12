"""``pipelines plan``: rows, tokens, memory, actor fits and (``--measure``) time of a job, before it runs.

Registered by :mod:`pipelines.cli.main`; the work is in :mod:`pipelines.planning`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CLUSTER = Path("cluster.yaml")


def register(commands, job_command) -> None:
    plan = job_command(
        "plan", "count the input, tokenize a sample, size the model and the actors, and (--measure) time it"
    )
    plan.add_argument("--sample", type=int, default=None, metavar="N",
                      help="tokenize N rows spread over the input, in actor batches (default 1000; every row of a "
                      "smaller input)")
    plan.add_argument("--measure", action="store_true",
                      help="run the sample through one predictor here and estimate a run's wall time: the rows plus "
                      "its fixed cost (Ray's start, the actors' start and model load, ...), in parts")
    plan.add_argument("--cluster", type=Path, default=None, metavar="CLUSTER.yaml",
                      help="Ray cluster launcher config whose GPU node types to size (default: ./cluster.yaml "
                           "if present)")
    plan.add_argument("--cpus", type=int, default=None, metavar="N",
                      help="CPUs of the Ray cluster the job will run on: Ray Data cuts the input into more blocks "
                           "the more CPUs it has, which changes the batches (default: this machine's, as a local run)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> int:
    from pipelines.errors import PipelineError
    from pipelines.planning.build import DEFAULT_SAMPLE, build_plan
    from pipelines.planning.render import render
    from pipelines.spec import load_spec

    sample = DEFAULT_SAMPLE if args.sample is None else args.sample
    if sample < 1:
        raise PipelineError(f"--sample {sample}: give at least 1 row")
    if args.cpus is not None and args.cpus < 1:
        raise PipelineError(f"--cpus {args.cpus}: give at least 1")
    cluster = args.cluster or _default_cluster()
    spec = load_spec(args.job, args.overrides)
    plan = build_plan(spec, str(args.job), sample=sample, measure=args.measure, cluster=cluster, cpus=args.cpus)
    print(json.dumps(plan.to_json(), indent=1) if args.json else render(plan))
    return 0


def _default_cluster() -> Path | None:
    """``./cluster.yaml`` where it is a Ray cluster launcher config; a file of that name that is none (another
    tool's) is passed over with a warning, not an error: it was not asked for."""
    from pipelines.errors import PipelineError
    from pipelines.planning.hardware import read_cluster

    if not DEFAULT_CLUSTER.exists():
        return None
    try:
        read_cluster(DEFAULT_CLUSTER)
    except PipelineError as exc:
        print(f"warning: ./{DEFAULT_CLUSTER} passed over, no GPU node types sized ({exc})", file=sys.stderr)
        return None
    return DEFAULT_CLUSTER
