"""``pipelines fidelity`` and ``pipelines report``: what quantization cost, and a run's page.

Registered by :mod:`pipelines.cli.main`; the work is in :mod:`pipelines.fidelity`
and :mod:`pipelines.output.report`.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(commands, job_command) -> None:
    fidelity = job_command(
        "fidelity",
        "score a sample of the job's rows with its quantized model and unquantized, and compare (no Ray)",
    )
    fidelity.add_argument("--rows", type=int, default=None,
                          help="rows to sample (default: model.fidelity.rows, else 256); the same rows every time")
    fidelity.add_argument("--json", action="store_true", help="print the comparison as JSON")
    fidelity.set_defaults(handler=_fidelity)
    report = commands.add_parser("report", help="rebuild the HTML run report (_report.html) of an output directory")
    report.add_argument("output", help="a job's output.path (or a scheduled job's, for the page over its runs)")
    report.set_defaults(handler=_report)


def _fidelity(args: argparse.Namespace) -> int:
    from pipelines.errors import PipelineError
    from pipelines.fidelity import below_bar, check
    from pipelines.io.shards import list_shards
    from pipelines.spec import load_spec

    if args.rows is not None and args.rows <= 0:
        raise PipelineError(f"--rows {args.rows}: give a positive number of rows")
    spec = load_spec(args.job, args.overrides)
    shards = list_shards(spec.input.paths, spec.input.format, exclude=[spec.output.path],
                         empty_is_no_input=spec.schedule is not None)  # as a tick lists a scheduled job's input
    result = check(spec, shards, args.rows)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(render(result, set_bar=spec.model.fidelity is not None))
    if result.passed is False:
        print(f"error: {below_bar(spec, result, run=False)}", file=sys.stderr)
        return 2
    return 0


def render(result, set_bar: bool = True) -> str:
    """The comparison as a few lines: every measure, failures, and the rows that changed (``set_bar``: whether the
    job sets the bar, ``model.fidelity``, or it is the default, as quantization auto's is where the job sets none)."""
    import time

    from pipelines.output.records import cut

    took = f"{result.wall_s:.1f} s"
    if result.kept_at is not None:  # read, not measured: the seconds are the reading's
        took += (", the figures of quantization auto's check made "
                 f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(result.kept_at))} and kept on this machine")
    lines = [
        f"{result.task}, {result.quantization} vs {result.reference}, {result.rows} sampled rows ({took})",
        *(f"  {name:<26} {cut(value)}{'   <- headline' if name == result.measure else ''}"
          for name, value in result.metrics.items()),
    ]
    if result.failed_quantized:
        lines.append(f"  rows only the quantized model failed on: {result.failed_quantized} (counted as disagreeing; a "
                     "NaN or infinite score or embedding is a failure)")
    if result.failed_reference:
        lines.append(f"  sampled rows left out, {result.reference} failed on them: {result.failed_reference} (a run "
                     "quarantines them with their reasons: errors.too_long: error, a NaN score...)")
    if result.min_agreement is not None:
        verdict = "passed" if result.passed else "below the bar"
        default = "" if set_bar else " (the default: this job sets no model.fidelity)"
        lines.append(f"model.fidelity.min_agreement {result.min_agreement}{default}: {verdict}")
    if result.examples:
        lines.append("where they differ:" if "quantized" in result.examples[0] else "lowest cosines:")
        for example in result.examples:
            lines.append("  " + ", ".join(f"{k}: {v}" for k, v in example.items()))
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from pipelines.errors import PipelineError, first_line
    from pipelines.output import report

    try:
        paths = report.rebuild(args.output)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line that names the folder, not a traceback
        if isinstance(exc, OSError) and "/_report.html" in str(exc):  # the page or its temporary file, in words
            raise PipelineError(
                f"{args.output}: could not write the page ({type(exc).__name__}: {first_line(exc)[:300]}); the page "
                "is written into the output folder: give this user write access there (or build it in a copy)"
            ) from None
        raise PipelineError(
            f"{args.output}: the report could not be built ({type(exc).__name__}: {first_line(exc)[:300]}); check "
            "the output folder's files (_run.json, _commits/, the part files)"
        ) from None
    if not paths:
        from pipelines.output.commit import OutputDir

        if OutputDir(args.output).job() is not None:  # a run's start (--overwrite's too) before its first commit
            raise PipelineError(f"{args.output}: a job's output with no shard committed yet (a run is starting, or "
                                "one ended before its first commit): nothing to report; ask again once a shard is "
                                "committed")
        raise PipelineError(f"{args.output}: no job output here (no _run.json, _commits/ or _runs.jsonl); "
                            "give a job's output.path")
    for path in paths:
        print(f"report: {path}")
    return 0
