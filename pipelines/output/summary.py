"""The run summary (``_run.json``): built from the commit records, and its readable form."""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.output.records import (
    Agreement,
    CommitRecord,
    Confusion,
    Fidelity,
    JobRecord,
    RunSummary,
    cut,
    merge_confusion,
    merge_counts,
    precision_label,
)


def agreement(matrix: Confusion) -> Agreement | None:
    """Accuracy and the confusion matrix {truth: {predicted: n}}, or None with nothing to compare."""
    total = sum(sum(row.values()) for row in matrix.values())
    if not total:
        return None
    correct = sum(row.get(truth, 0) for truth, row in matrix.items())
    return Agreement(accuracy=round(correct / total, 4), rows=total, confusion=matrix)


def build(
    job: JobRecord, commits: list[CommitRecord], this_run: list[CommitRecord], wall_s: float, status: str
) -> RunSummary:
    """Totals over every committed shard; speed over the shards this run did."""
    confusion: Confusion = {}
    reasons: dict[str, int] = {}
    for record in commits:
        merge_confusion(confusion, record.confusion)
        merge_counts(reasons, record.reasons)
    rows_now = sum(r.rows_in for r in this_run)
    tokens_now = sum(r.tokens for r in this_run)
    padded_now = sum(r.padded for r in this_run)
    generated_now = sum(r.generated for r in this_run)
    rows_in = sum(r.rows_in for r in commits)
    errors = sum(r.errors for r in commits)
    return RunSummary(
        job=job.name,
        status=status,
        spec_hash=job.spec_hash,
        model=job.model,
        quantization=job.quantization,
        device=job.device,
        task=job.task,
        shards=len(commits),
        shards_this_run=len(this_run),
        rows_in=rows_in,
        rows_out=sum(r.rows for r in commits),
        errors=errors,
        error_rate=round(errors / rows_in, 6) if rows_in else 0.0,
        error_reasons=reasons,
        tokens=sum(r.tokens for r in commits),
        padded=sum(r.padded for r in commits),
        rows_this_run=rows_now,
        rows_cut=sum(r.cut or 0 for r in commits),
        cut_uncounted_shards=sum(1 for r in commits if r.cut is None and r.rows),
        wall_s=round(wall_s, 3),
        rows_per_s=round(rows_now / wall_s, 2) if wall_s > 0 else None,
        tokens_per_s=round((tokens_now + generated_now) / wall_s, 1) if wall_s > 0 else None,
        prompt_tokens_per_s=round(tokens_now / wall_s, 1) if wall_s > 0 else None,
        generated_tokens_per_s=round(generated_now / wall_s, 1) if wall_s > 0 and generated_now else None,
        padding_efficiency=round(tokens_now / padded_now, 4) if padded_now else None,
        agreement=agreement(confusion),
        precision=job.precision,
        dtype=job.spec.get("model", {}).get("dtype"),
        unreadable_files=[r.unreadable for r in commits if r.unreadable is not None],
        files_with_unknown_rows=sum(1 for r in commits if r.unreadable is not None and r.unreadable.rows is None),
    )


def precision_said(summary: RunSummary) -> str:
    """The spec's quantization; under ``auto``, the precision the run took (``precision`` in ``_run.json``); not
    quantized, the reduced dtype it ran in (``dtype: auto`` computes in bfloat16, or float16, on a GPU)."""
    if summary.quantization == "auto" and summary.precision:
        return f"quantization auto: {precision_label(summary.precision)}"
    if summary.quantization == "none" and summary.dtype in ("bfloat16", "float16"):
        return summary.dtype
    if summary.quantization == "none" and summary.dtype == "auto" and summary.device == "cuda":
        return "dtype auto: bfloat16, or float16 on a GPU without bf16"
    return summary.quantization


def render(summary: RunSummary) -> str:
    """A few readable lines for the terminal."""
    lines = [
        f"{summary.status}: {summary.rows_out:,} rows written, {summary.errors:,} quarantined "
        f"of {summary.rows_in:,} ({summary.shards} shards, {summary.shards_this_run} this run)",
        f"model {summary.model.name} ({precision_said(summary)}, {summary.device}), task {summary.task}",
    ]
    if summary.rows_per_s is not None and summary.rows_this_run:
        split = ""
        if summary.generated_tokens_per_s:
            prompt, generated = summary.prompt_tokens_per_s or 0, summary.generated_tokens_per_s
            split = f" ({prompt:,.0f} prompt, {generated:,.0f} generated)"
        padding = (f"padding efficiency {summary.padding_efficiency}" if summary.padding_efficiency is not None
                   else "no token computed (every row of this run quarantined)")
        lines.append(
            f"{summary.wall_s:.1f} s, {summary.rows_per_s:,.1f} rows/s, "
            f"{summary.tokens_per_s or 0:,.0f} tokens/s{split}, {padding}"
        )
    if summary.error_reasons:
        lines.append(f"quarantined rows by reason: {reasons_line(summary.error_reasons)}")
    if summary.rows_cut:
        lines.append(f"cut to fit max_length: {cut_line(summary)}")
    for found in summary.unreadable_files:
        lines.append(f"unreadable input file: {found.uri} ({found.rows_told()}): {found.reason}")
    if summary.agreement:
        lines.append(f"agreement with ground truth: {agreement_line(summary.agreement)}")
    if summary.fidelity:
        lines.append(f"quantization fidelity: {fidelity_line(summary.fidelity)}")
    if summary.check_s is not None:
        lines.append(f"quantization auto's check: {check_line(summary)}")
    return "\n".join(lines)


def check_line(summary: RunSummary) -> str:
    """What ``quantization: auto``'s check made in this run took of its wall time, and that it is once."""
    return (f"{summary.check_s:.1f} s of the {summary.wall_s:.1f} s, in the pool's actor before its first row (this "
            "output's later runs keep its precision)")


def cut_line(summary: RunSummary) -> str:
    """How many of the rows written were scored on a text or prompt cut to fit ``max_length``, and what to do."""
    uncounted = summary.cut_uncounted_shards
    before = f"; {uncounted:,} shard(s) an earlier version committed not counted" if uncounted else ""
    return (f"{summary.rows_cut:,} of the {summary.rows_out:,} rows written{before} (each scored on what was kept; "
            "errors.too_long: error quarantines such rows instead)")


def reasons_line(reasons: dict[str, int]) -> str:
    """Quarantined rows by reason, the most first: ``text is null: 3, unreadable jsonl file: rows unknown`` (0 rows
    under a reason: a file quarantined whole whose rows nobody can count)."""
    return ", ".join(f"{k}: {v if v else 'rows unknown'}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))


def agreement_line(result: Agreement) -> str:
    """Accuracy and over how many rows: those with a truth label (rows without one are left out); where no truth
    value is a label the model gives, that the two may name the classes otherwise (:func:`unmatched_truth`)."""
    return f"{result.accuracy:.1%} of the {result.rows:,} rows with a truth label{unmatched_truth(result)}"


def unmatched_truth(result: Agreement) -> str:
    """Where no truth value is any label the model gives (a truth column of class numbers, ``0``, ``1``, against the
    model's ``NEGATIVE``, ``POSITIVE``; or names in another case), a clause that says so and how to map them; else
    nothing. An agreement of 0% is then no measure of the model. The truth is checked against the labels the run
    recorded the model can give (``labels``); a summary without them (written before they were recorded) is checked
    against the labels predicted, and says so: a label the model can give but did not predict here is not among
    those."""
    if result.accuracy > 0 or not result.confusion:
        return ""
    if result.labels is not None:
        if set(result.labels) & result.confusion.keys():
            return ""
        found = f"no truth value is a label the model gives (truth: {some_of(result.confusion)}; the model's labels: "
        found += f"{some_of(result.labels)})"
    else:
        predicted = {label for row in result.confusion.values() for label in row}
        if predicted & result.confusion.keys():
            return ""
        found = (f"no truth value is a label the model predicted here (truth: {some_of(result.confusion)}; predicted: "
                 f"{some_of(predicted)})")
    return f"; {found}: where they name the same classes otherwise, map them to the model's labels with input.label_map"


def some_of(values: Iterable[str], shown: int = 4) -> str:
    """A few of ``values``, sorted, for a message: ``0, 1, 2, 3, …``."""
    ordered = sorted(set(values))
    return ", ".join(ordered[:shown]) + (", …" if len(ordered) > shown else "")


def fidelity_line(result: Fidelity) -> str:
    """One line: the headline measure, the sample, the bar."""
    bar = ""
    if result.min_agreement is not None:
        bar = f", bar {result.min_agreement}: {'passed' if result.passed else 'FAILED'}"
    return (f"{result.measure} {cut(result.agreement)} on {result.rows} sampled rows "
            f"({result.quantization} vs {result.reference}{bar})")

