"""A plan as the readable text ``pipelines plan`` prints. Light: formatting only."""

from __future__ import annotations

import os
from collections.abc import Collection

from pipelines.planning.memory import CUDA_CONTEXT, PROCESS_OVERHEAD
from pipelines.planning.records import Estimate, Fit, Plan, TokenPlan

COUNTED_BY = {
    "footer": "parquet footer",
    "counted": "rows counted",  # lines, or a JSON array's elements: each a row
    "estimated": "estimated",
    "unreadable": "unreadable",
}


def size(value: float | None) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"


def shown(uri: str) -> str:
    """A local path relative to the current directory when it lies below it; URIs as they are."""
    if "://" in uri or not os.path.isabs(uri):
        return uri
    relative = os.path.relpath(uri)
    return uri if relative.startswith("..") else relative


def count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


SHARDS_SHOWN = 20


def table(headers: list[str], rows: list[list[str]], right: Collection[int] = ()) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  " + "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def render(plan: Plan) -> str:
    lines = [
        f"plan for {plan.job}: {plan.task} with {plan.model.name} ({plan.model.quantization}), "
        f"spec hash {plan.spec_hash}",
        "",
    ]
    lines += _input(plan) + [""] + _output(plan) + _tokens(plan.tokens, plan.task) + [""] + _model(plan)
    if not plan.input.rows:
        lines += ["", "TIME  nothing to run: the input holds no rows (nothing measured, no wall time)"]
    elif plan.measurement:
        lines += [""] + _measured(plan)
    else:
        lines += ["", "TIME  not measured: add --measure to time the sample through one predictor here"]
    lines += ["", "PROBLEMS"] + [f"  {p}" for p in plan.problems or ["none found"]]
    return "\n".join(lines)


def _input(plan: Plan) -> list[str]:
    data = plan.input
    kinds = ", ".join(f"{k} {v}" for k, v in data.formats.items())
    exact = "exact" if data.rows_exact else "partly estimated"
    head = f"INPUT  {len(data.shards)} shard(s) ({kinds}), {size(data.bytes)}, {data.rows:,} rows ({exact})"
    rows = [
        [shown(c.uri), c.format + (".gz" if c.compressed else ""), f"{c.bytes:,}", f"{c.rows:,}", COUNTED_BY[c.count]]
        for c in data.shards[:SHARDS_SHOWN]
    ]
    lines = [head, *table(["SHARD", "FORMAT", "BYTES", "ROWS", "ROWS FROM"], rows, right={2, 3})]
    if len(data.shards) > SHARDS_SHOWN:
        lines.append(f"  … and {len(data.shards) - SHARDS_SHOWN:,} more (--json lists every shard)")
    return lines


def _output(plan: Plan) -> list[str]:
    out = plan.output
    if out is None:
        return []
    what = "a run is refused: " if out.state == "refused" else ""
    return [f"OUTPUT  {shown(out.path)}: {what}{out.note}", ""]


def _tokens(tokens: TokenPlan, task: str) -> list[str]:
    batches = f"{tokens.sample_batches} batch(es) of up to {tokens.batch_size} rows"
    lines = [
        f"TOKENS  sample: all {tokens.sample_rows:,} rows, in {batches} as actors get them: exact"
        if tokens.covers_input
        else f"TOKENS  sample: {tokens.sample_rows:,} rows spread evenly over the input, in {batches}; scaled to the "
        "input: estimated"
    ]
    dist = tokens.feature_tokens
    lengths = (
        f"mean {dist.mean:g}, p50 {dist.p50}, p90 {dist.p90}, p99 {dist.p99}, max {dist.max}" if dist else "none"
    )
    uncut = "long contexts become several windows" if task == "question-answering" else "this task cuts no input"
    refused = tokens.quarantined.get("text longer than max_length")  # errors.too_long: error
    truncated = (
        f"no truncation: {uncut}"
        if tokens.truncated_rows is None
        else f"{tokens.truncated_rows:,} row(s) in the sample over it: quarantined, not cut (errors.too_long: error)"
        if refused
        else f"{tokens.truncated_rows:,} row(s) in the sample"
    )
    efficiency = "-" if tokens.padding_efficiency is None else f"{tokens.padding_efficiency:.3f}"
    spread = "" if tokens.covers_input else " of the sampled rows (a run's batches hold rows closer in length)"
    pairs = [
        ("features", f"{tokens.features:,} ({tokens.features_per_row:g} per row scored)"),
        ("tokens per feature", f"{lengths} (max_length {tokens.max_length})"),
        ("cut at max_length", truncated),
        ("real tokens", f"{tokens.tokens_total:,} in the input"),
        ("padding efficiency", f"{efficiency}: {tokens.padded:,} tokens computed for {tokens.tokens:,} in "
                               f"{tokens.micro_batches:,} micro-batches{spread}"),
        ("rows out", f"{tokens.rows_out:,} ({sum(tokens.quarantined.values()):,} quarantined in the sample"
                     + (f", {sum(tokens.unreadable_quarantined.values()):,} in unreadable files)"
                        if tokens.unreadable_quarantined else ")")),
    ]
    return lines + [f"  {k:<19} {v}" for k, v in pairs]


def _model(plan: Plan) -> list[str]:
    model = plan.model
    quantized = f", {model.quantized_parameters / 1e6:,.1f} M of them quantized" if model.quantized_parameters else ""
    head = (f"MODEL  {model.name} → {model.resolved} ({model.model_class}), "
            f"{model.parameters / 1e6:,.1f} M parameters{quantized}")
    rows = [_fit_row(f) for f in model.fits]
    headers = ["WHERE", "DEVICE", "DTYPE", "MEMORY", "WEIGHTS", "ACTIVATIONS*", "PER ACTOR", "FIT BY MEMORY",
               "BY RESOURCES", "ACTORS"]
    note = (f"  * estimate for the largest micro-batch, times those an actor runs at once (its lanes on a CPU); "
            f"per actor also {PROCESS_OVERHEAD >> 20} MiB of process "
            f"(CPU) or {CUDA_CONTEXT >> 20} MiB of CUDA context (GPU), assumed")
    bases = [f"  {f.target}: {f.basis}" for f in model.fits]
    return [head, *table(headers, rows, right={3, 4, 5, 6, 7, 8, 9}), note, *bases]


def _fit_row(fit: Fit) -> list[str]:
    where = fit.target + (f" ({fit.accelerator})" if fit.accelerator else "")
    return [where, fit.device, fit.dtype, size(fit.memory_bytes), size(fit.weights_bytes), size(fit.activations_bytes),
            size(fit.per_actor_bytes), count(fit.by_memory), count(fit.by_resources), count(fit.actors)]


def _measured(plan: Plan) -> list[str]:
    m = plan.measurement
    assert m is not None
    efficiency = "-" if m.padding_efficiency is None else f"{m.padding_efficiency:.3f}"
    lines = [
        f"MEASURED here: one predictor, no Ray ({m.device}, {m.threads} threads"
        + (f"; {m.precision})" if m.precision else ")"),
        f"  model load {m.load_s:.1f} s; {m.rows:,} rows in {m.predict_s:.1f} s: {m.rows_per_s:,.1f} rows/s, "
        f"{m.tokens_per_s:,.0f} tokens/s, padding efficiency {efficiency}; peak memory {size(m.peak_rss_bytes)}",
        "",
        f"ESTIMATED wall time for {_estimated_rows(plan)}",
    ]
    rows = [_estimate_row(e) for e in plan.estimates]
    lines += table(["WHERE", "ACTORS", "NODES", "WALL"], rows, right={1, 2, 3})
    for basis in dict.fromkeys(e.basis for e in plan.estimates):
        lines.append(f"  basis: {basis}")
    shown = [e for e in plan.estimates if e.parts][:1]  # this machine's, else the first node type's
    for estimate in shown:
        fixed = [p for p in estimate.parts if p.name != "rows"]
        lines += [
            f"  WALL is from the command to its exit: the rows plus a run's fixed cost of "
            f"{sum(p.seconds for p in fixed):.1f} s; {estimate.where}, {estimate.actors} actor(s):",
            *table(["PART", "S", "HOW", "IN _run.json wall_s", "BASIS"], [
                [p.name, f"{p.seconds:.1f}", p.how, "yes" if p.in_run_wall else "no", p.basis]
                for p in estimate.parts
            ], right={1}),
            f"  a run's _run.json wall_s (its execution's start to its last commit) would be "
            f"{duration(estimate.run_wall_s)}; the known costs are the main job's on a 2-core CPU machine"
            f"{_scaled(estimate)}; not included: waiting for a node to start or for CPUs/GPUs other jobs hold, "
            "quantization auto's first check of a job here (5-6 s on the main job on a 2-core Zen 4, once), retries",
        ]
    return lines


def _scaled(estimate: Estimate) -> str:
    """How the known parts of ``estimate`` were scaled to this machine's speed, in words."""
    scale = next((p.scaled_by for p in estimate.parts if p.scaled_by is not None), None)
    if scale is None:
        return " and differ on others"
    return f", × {scale:g} for this machine's speed by its actor imports (a guess: Ray's start depends on cores too)"


def _estimated_rows(plan: Plan) -> str:
    rows = plan.estimates[0].rows if plan.estimates else plan.input.rows
    out = plan.output
    if out is not None and out.rows_todo == 0 and out.state in ("up to date", "resume", "scheduled"):
        again = "--rescore" if out.state == "scheduled" else "--overwrite"
        return f"{rows:,} rows, the whole input as {again} would score it (a run now scores none)"
    if rows == plan.input.rows:
        return f"{rows:,} rows"
    return f"the {rows:,} rows a run would score now (of {plan.input.rows:,} in the input)"


def _estimate_row(estimate: Estimate) -> list[str]:
    if estimate.possible:
        wall = duration(estimate.wall_s)
    elif estimate.where == "this machine":
        wall = "a local run would not start"  # fewer actors fit here than the pool needs: the basis says why
    else:
        wall = "no actor fits a node" if estimate.nodes is None else "more nodes than max_workers"
    return [estimate.where, str(estimate.actors), count(estimate.nodes), wall]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
