"""The run report: ``_report.html``, one self-contained page about a run, next to ``_run.json``.

The page is built from what the output directory already holds: the run summary
(``_run.json``), the commit records (``_commits/``: rows, errors, tokens, padding,
confusion counts, and each staged block's time) and the committed Parquet files
(the ``label`` and ``score`` columns only; an OpenAI Batch output's JSONL files hold
neither and are not read). Its charts are Plotly figures with
plotly.js inlined once in the page, so it opens from a laptop without network.
A scheduled job's root gets a page over its run ledger (``_runs.jsonl``).

Light: pyarrow, numpy and plotly; no torch.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from plotly.offline import get_plotlyjs

from pipelines.errors import PipelineError, first_line
from pipelines.io.shards import resolve
from pipelines.output import layout
from pipelines.output.layout import COMMITS, JOB, LEDGER, PARTITION, READERS, REPORT, RUN, SUPERSEDED
from pipelines.output.openai_batch import OpenAIBatchFiles
from pipelines.output.records import (
    CommitRecord,
    Fidelity,
    JobRecord,
    RunSummary,
    StagedBlock,
    cut,
    precision_label,
)
from pipelines.output.summary import agreement_line, check_line, cut_line, fidelity_line, precision_said

log = logging.getLogger(__name__)

BINS = 20
TIME_BUCKETS = 30
HEIGHT = 380  # a chart's pixels
UNREADABLE_SHOWN = 20  # unreadable input files named among the run's facts
SHARD_ROW, SHARD_CHART_MAX = 10, 4000  # the per-shard timings grow a row's pixels per shard, up to a page's worth
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class RunData:
    """What a run's page shows, read from an output directory."""

    location: str
    summary: RunSummary | None
    job: JobRecord | None
    commits: list[CommitRecord]
    labels: Counter = field(default_factory=Counter)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unread: list[str] = field(default_factory=list)  # part files that could not be read: "<file>: <why>"
    summary_unread: bool = False  # a _run.json is there that does not read as a run summary

    def openai_batch(self) -> bool:
        """Whether the output is OpenAI Batch files (JSONL answers: no label or score column)."""
        return ((self.job.spec if self.job else {}).get("output") or {}).get("format") == "openai-batch"

    def this_run(self) -> list[CommitRecord]:
        """Commits of the last run (those made after it started); every commit when that is unknown."""
        started = self.summary.started_at if self.summary else None
        if started is None:
            return self.commits
        return [c for c in self.commits if c.committed_at >= started]

    def t0(self) -> float:
        """The time axis' zero: the run's start, else the first staged block."""
        if self.summary and self.summary.started_at:
            return self.summary.started_at
        times = [b.at for c in self.commits for b in c.blocks] + [c.committed_at for c in self.commits]
        return min(times, default=0.0)


# reading ---------------------------------------------------------------------------------------


def _partition_page(location: str) -> bool:
    """A scheduled job's partition's page, unless the partition has gone meanwhile (False): a scheduler moves a
    partition a rescore superseded to ``_superseded/``, its page with it, while ``pipelines report`` may be
    between its listing and this write. The page is never what makes the folder again (on a disk: no folder is
    created; on an object store, where a write makes its prefix, a page written as the partition left is deleted):
    such a folder would hold only a page of nothing, which the next tick would move over the moved run's page."""
    fs, root = resolve(location)
    page = run_page(read_run(location)).encode()
    path = f"{root}/{REPORT}"
    try:
        layout.write_whole(fs, path, lambda stream: stream.write(page), shared=True)
    except FileNotFoundError:  # the folder, or this writer's temporary file in it, moved away
        if _holds_run(fs, root):
            raise
        return False
    if _holds_run(fs, root):
        return True
    try:
        fs.delete_file(path)
    except OSError:  # gone with the folder already
        pass
    return False


def _holds_run(fs: pafs.FileSystem, root: str) -> bool:
    """Whether a partition still holds a run's files (its record, summary or commit records), not only a page."""
    found = fs.get_file_info([f"{root}/{JOB}", f"{root}/{RUN}", f"{root}/{COMMITS}"])
    return any(info.type != pafs.FileType.NotFound for info in found)


def read_run(location: str) -> RunData:
    """The summary, commit records and predicted labels and scores of an output directory."""
    fs, root = resolve(location)
    summary = RunSummary.parse(layout.read_json(fs, f"{root}/{RUN}"))
    unread = summary is None and fs.get_file_info(f"{root}/{RUN}").type == pafs.FileType.File
    job = JobRecord.parse(layout.read_json(fs, f"{root}/{JOB}"))
    paths = [info.path for info in fs.get_file_info(pafs.FileSelector(f"{root}/{COMMITS}", allow_not_found=True))
             if info.is_file and info.base_name.endswith(".json")]
    with ThreadPoolExecutor(READERS) as pool:
        records = list(pool.map(lambda path: CommitRecord.parse(layout.read_json(fs, path)), paths))
    commits = sorted((r for r in records if r is not None), key=lambda c: c.committed_at)
    data = RunData(location, summary, job, commits, summary_unread=unread)
    spec = job.spec if job else {}
    prefix = str((spec.get("output") or {}).get("prediction_prefix") or "")
    label, score = (None if name in _input_columns(spec) else name for name in (prefix + "label", prefix + "score"))
    _read_predictions(fs, root, data, label, score)
    return data


def _input_columns(spec: dict[str, Any]) -> set[str]:
    """The columns of the job's output that are its input's, not the model's: the id and the kept columns (the spec
    refuses a prediction column of the same name as one of them). A job that keeps its dataset's ``label`` or
    ``score`` and whose task predicts none (feature-extraction, a generation task) has them in its part files."""
    given = spec.get("input") or {}
    return {str(given.get("id_column") or "id"), *map(str, given.get("columns_to_keep") or []),
            *([str(given["label_column"])] if given.get("label_column") else [])}


def _read_predictions(fs: pafs.FileSystem, root: str, data: RunData, label: str | None, score: str | None) -> None:
    """Count labels and gather scores from the committed Parquet part files (the predicted ``label`` and ``score``
    columns, nothing else; None: the output's column of that name, if any, is no prediction)."""
    columns = [c for c in (label, score) if c is not None]  # none: each part is still opened, its damage told
    # OpenAI Batch answers (JSONL) have no label and no score
    relatives = [f for record in data.commits for f in record.files if not f.endswith(OpenAIBatchFiles.suffix)]
    with ThreadPoolExecutor(READERS) as pool:
        read = list(pool.map(lambda relative: _read_part(fs, f"{root}/{relative}", columns), relatives))
    scores = []
    for relative, (table, error) in zip(relatives, read):
        if error is not None:  # a part damaged or deleted since: the page says so
            data.unread.append(f"{relative}: {error}")
        elif table is not None:
            if label is not None and label in table.column_names:
                data.labels.update(v for v in table.column(label).to_pylist() if v is not None)
            if score is not None and score in table.column_names:
                scores.append(table.column(score).to_numpy(zero_copy_only=False))
    if scores:
        values = np.concatenate(scores).astype(np.float64)
        data.scores = values[~np.isnan(values)]


def _read_part(fs: pafs.FileSystem, path: str, columns: list[str]) -> tuple[pa.Table | None, str | None]:
    """Those of ``columns`` a part file has (None where it has none of them), read in one open; or why it does not
    read."""
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            wanted = [c for c in columns if c in parquet.schema_arrow.names]
            return (parquet.read(columns=wanted) if wanted else None), None
    except (OSError, pa.ArrowException) as exc:
        return None, first_line(exc)[:200]


# charts of one run -----------------------------------------------------------------------------


def throughput_chart(data: RunData) -> go.Figure | None:
    """Rows per second over the run, in time buckets, and rows done so far."""
    blocks = sorted((b.at - data.t0(), n) for c in data.this_run() for b, n in _block_rows(c))
    if not blocks:
        return None
    times = np.array([t for t, _ in blocks])
    rows = np.array([n for _, n in blocks])
    span = float(times.max())  # the buckets tile [0, the last block]: a bucket past it would be a false slow-down
    buckets = min(TIME_BUCKETS, max(1, math.floor(span)))  # of a second at least (ceil cut 7.15 s into 0.89 s ones)
    width = span / buckets if span > 0 else 1.0
    edges = np.linspace(0.0, span, buckets + 1) if span > 0 else np.array([0.0, 1.0])
    counts, _ = np.histogram(times, bins=edges, weights=rows)
    figure = go.Figure()
    figure.add_bar(x=edges[:-1] + width / 2, y=counts / width, width=width * 0.9, name="rows/s")
    figure.add_scatter(x=times, y=np.cumsum(rows), mode="lines+markers", name="rows done", yaxis="y2")
    figure.update_layout(
        xaxis_title="seconds since the run started",
        yaxis_title="rows/s",
        yaxis2={"title": "rows done", "overlaying": "y", "side": "right", "rangemode": "tozero"},
    )
    return figure


def _block_rows(record: CommitRecord) -> list[tuple[StagedBlock, int]]:
    """Each staged block of a shard with the rows it stands for. An unreadable input file's one block is one error
    record, which stands for the file's rows as many as can be told (``rows_in``, 0 where unknown), as the summary
    counts them: counted as one, a Parquet file whose footer says 100 rows was 1 row done on the chart."""
    if record.unreadable is not None:
        return [(b, record.rows_in if i == 0 else 0) for i, b in enumerate(record.blocks)]
    return [(b, b.rows + b.errors) for b in record.blocks]


def padding_chart(data: RunData) -> go.Figure | None:
    """Padding efficiency (real tokens / tokens computed) of each shard, and over all of them."""
    shards = [c for c in data.this_run() if c.padded]
    if not shards:
        return None
    figure = go.Figure(go.Bar(x=shard_names(shards), y=[c.tokens / c.padded for c in shards], name="per shard",
                              marker_line_width=0))
    overall = sum(c.tokens for c in shards) / sum(c.padded for c in shards)
    figure.add_hline(y=overall, line_dash="dash", annotation_text=f"overall {overall:.3f}")
    figure.update_layout(yaxis={"title": "real tokens / tokens computed", "range": [0, 1.05]},
                         xaxis={"title": "shard", "type": "category"})
    return figure


def rows_chart(data: RunData) -> go.Figure | None:
    """Rows written and rows quarantined, by reason, over every committed shard."""
    reasons: Counter = Counter()
    for c in data.commits:
        reasons.update(c.reasons)
    written = sum(c.rows for c in data.commits)
    if not written and not reasons:
        return None
    names = ["written", *(f"quarantined: {plain(r)}" for r in reasons)]
    values = [written, *reasons.values()]
    colors = ["#2a9d8f", *(["#e76f51"] * len(reasons))]
    figure = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colors, text=values))
    figure.update_layout(xaxis_title="rows", yaxis={"autorange": "reversed"})
    return figure


def shard_chart(data: RunData) -> go.Figure | None:
    """When each shard of the run was worked on: first block staged → committed."""
    shards = [c for c in data.this_run() if c.blocks or c.committed_at]
    if not shards:
        return None
    t0 = data.t0()
    starts = [min((b.at for b in c.blocks), default=c.committed_at) - t0 for c in shards]
    ends = [c.committed_at - t0 for c in shards]
    figure = go.Figure(
        go.Bar(
            y=shard_names(shards),
            x=[max(e - s, 0.05) for s, e in zip(starts, ends)],
            base=starts,
            orientation="h",
            marker_line_width=0,
            customdata=[[c.rows_in, c.tokens] for c in shards],
            hovertemplate="%{y}<br>%{base:.1f} s → %{x:.1f} s later<br>%{customdata[0]} rows, "
            "%{customdata[1]} tokens<extra></extra>",
        )
    )
    figure.update_layout(xaxis_title="seconds since the run started (first block staged → committed)",
                         yaxis={"autorange": "reversed", "type": "category"},
                         height=min(SHARD_CHART_MAX, max(HEIGHT, 90 + SHARD_ROW * len(shards))))
    return figure


def label_chart(data: RunData) -> go.Figure | None:
    if not data.labels:
        return None
    ranked = data.labels.most_common()
    counts = [n for _, n in ranked]
    figure = go.Figure(go.Bar(x=[plain(str(k)) for k, _ in ranked], y=counts, text=counts))
    figure.update_layout(xaxis={"type": "category"})  # labels as named: Plotly takes '2024-01' for a date
    return figure


def score_chart(data: RunData) -> go.Figure | None:
    if not len(data.scores):
        return None
    counts, edges = np.histogram(data.scores, bins=BINS)
    centers = (edges[:-1] + edges[1:]) / 2
    figure = go.Figure(go.Bar(x=centers, y=counts, width=np.diff(edges) * 0.95))
    figure.update_layout(xaxis_title="score", yaxis_title="rows", bargap=0)
    return figure


def confusion_chart(data: RunData) -> go.Figure | None:
    agreement = data.summary.agreement if data.summary else None
    if agreement is None or not agreement.confusion:
        return None
    matrix = agreement.confusion
    truths = sorted(matrix)
    predicted = sorted({p for row in matrix.values() for p in row} | set(truths))
    z = [[matrix[t].get(p, 0) for p in predicted] for t in truths]
    figure = go.Figure(go.Heatmap(z=z, x=[plain(p) for p in predicted], y=[plain(t) for t in truths],
                                  colorscale="Blues", text=z, texttemplate="%{text}"))
    figure.update_layout(xaxis={"title": "predicted", "type": "category"},
                         yaxis={"title": "ground truth", "autorange": "reversed", "type": "category"})
    return figure


def fidelity_chart(data: RunData) -> go.Figure | None:
    result = data.summary.fidelity if data.summary else None
    if result is None:
        return None
    names = list(result.metrics)
    figure = go.Figure(go.Bar(x=names, y=[result.metrics[n] for n in names],
                              text=[cut(result.metrics[n]) for n in names]))
    if result.min_agreement is not None:
        figure.add_hline(y=result.min_agreement, line_dash="dash", annotation_text=f"bar {result.min_agreement}")
    figure.update_layout(yaxis={"title": f"{result.quantization} vs {result.reference}", "range": [0, 1.05]})
    return figure


def shard_names(records: list[CommitRecord]) -> list[str]:
    """Each shard's name on a chart: its file name, with as many of its folders as tell it from the others' (Plotly
    draws equal names as one bar: ``day=1/part-0.parquet`` and ``day=2/part-0.parquet`` are both ``part-0.parquet``)."""
    paths = [(c.input.uri.rstrip("/") or c.shard).split("/") for c in records]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(map(len, paths)):
            break
        depth += 1
    return [plain(n) for n in names]


def plain(text: str) -> str:
    """Text from the data (labels, file names, reasons) as Plotly shows it as it is: Plotly reads ``<a href>``,
    ``<b>``, ``<br>`` in a label as markup (a label could become a link), and decodes entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# pages -----------------------------------------------------------------------------------------


def run_page(data: RunData) -> str:
    """The run's page as one HTML document."""
    summary = data.summary
    title = f"Run report: {summary.job or data.location}" if summary else f"Run report: {data.location}"
    idle = _none_this_run(data)
    mine = data.this_run()
    sections = [
        ("throughput", "Throughput over time", throughput_chart(data),
         idle or _no_rows(mine, "staged", "hold no block's time")),
        ("padding", "Padding efficiency", padding_chart(data), idle or _no_rows(mine, "tokenized", "count no token")),
        ("rows", "Rows and errors by reason", rows_chart(data), _no_rows(data.commits, "committed", "count none")),
        ("shards", "Per-shard timings", shard_chart(data), idle),
        ("labels", "Label distribution", label_chart(data), _no_column(data, "label", "No label column")),
        ("scores", "Score histogram", score_chart(data), _no_column(data, "score", "No score column")),
        ("confusion", "Confusion matrix", confusion_chart(data), _no_confusion(data)),
        ("fidelity", "Quantization fidelity", fidelity_chart(data), _no_fidelity(summary)),
    ]
    body = [f"<h1>{_e(title)}</h1>", _facts(summary, data)]
    if data.unread:
        body.append(
            f"<p class='warning'>{len(data.unread)} part file(s) could not be read, so their rows are left out of "
            f"the label and score charts: {_e('; '.join(data.unread[:3]))}{' …' if len(data.unread) > 3 else ''}. "
            "Check the output folder's files (a part file damaged or deleted after its commit).</p>"
        )
    for key, heading, figure, missing in sections:
        body.append(f"<h2>{_e(heading)}</h2>")
        if key == "fidelity" and summary and summary.fidelity:
            body.append(_fidelity_table(summary.fidelity))
        body.append(_chart(key, figure) if figure is not None else f"<p class='none'>{_e(missing)}</p>")
    return _document(title, body)


def _none_this_run(data: RunData) -> str:
    """What the charts of this run's work say where it scored no shard (it finished what an earlier run committed)."""
    if not data.commits:
        return "No shard is committed yet."
    if data.this_run():
        return ""
    return (f"No shard was scored by this run: the {len(data.commits)} committed shard(s) were committed by earlier "
            "runs (the rows, labels and scores below count them).")


def _no_rows(commits: list[CommitRecord], what: str, otherwise: str) -> str:
    """Why a chart of rows is empty where shards are committed: they hold no rows (empty input files), or none that
    reached the model (every row quarantined), or their records time none."""
    if not commits:
        return "No shard is committed yet."
    if not sum(c.rows_in for c in commits):
        return f"No rows {what}: the {len(commits):,} shard(s) committed hold no rows (their input files have none)."
    if not sum(c.rows for c in commits):
        return f"No rows {what}: every row of the {len(commits):,} shard(s) committed was quarantined."
    return f"Nothing to draw: the commit records of the {len(commits):,} shard(s) committed {otherwise}."


def _no_column(data: RunData, name: str, missing: str) -> str:
    """Why the chart of the predicted ``name`` column is empty: the task has no such column, or no row of it is
    written (none committed, empty input files, every row quarantined), or its part files did not read."""
    if data.openai_batch():
        return "An OpenAI Batch output has no label or score column."
    if _predicts(data, name):
        return _no_written(data) or (f"No {name} read: the part files could not be read (named above)." if
                                     data.unread else f"No {name} in the part files of this output.")
    return f"{missing} in this task's output."


def _no_confusion(data: RunData) -> str:
    """Why there is no confusion matrix: the job names no ground truth, or no row written has a truth value."""
    column = ((data.job.spec if data.job else {}).get("input") or {}).get("label_column")
    if not column:
        return "No ground truth (input.label_column) in this job."
    if data.summary is None:
        return (f"No run summary (_run.json) yet: the confusion matrix against the ground truth ({column}) is the "
                "summary's, written when the run ends.")
    return _no_written(data) or f"No row written has a ground-truth value in its input.label_column ({column})."


def _no_written(data: RunData) -> str:
    """Why no row is written ("" where some are): nothing committed, empty input files, every row quarantined."""
    if data.commits and sum(c.rows for c in data.commits):
        return ""
    return _no_rows(data.commits, "written", "count none")


def _predicts(data: RunData, name: str) -> bool:
    """Whether the job's task writes the prediction column ``name`` (False where the job's record does not tell)."""
    from pipelines.spec import JobSpec

    try:
        return name in JobSpec.model_validate(data.job.spec).task.output_names() if data.job else False
    except (ValueError, PipelineError):  # a record another version wrote: not told
        return False


def _no_fidelity(summary: RunSummary | None) -> str:
    if summary and summary.quantization == "none":
        said = precision_said(summary)
        if said != "none":  # a reduced dtype: a precision the check compares with float32
            return (f"Not checked: the model ran unquantized in {said}, a reduced precision; set model.fidelity in the "
                    "spec, or run `pipelines fidelity JOB.yaml`, to compare it with float32.")
        return "The model is not quantized."
    if summary and summary.quantization == "auto" and summary.precision:
        said = precision_label(summary.precision)
        if said == "float32":
            return ("quantization auto chose float32: no reduced precision was both within the bar and faster (the "
                    "run's log line `quantization auto: float32 (…)` gives each candidate's figure): the model ran "
                    "unquantized, so there is nothing to compare.")
        return (f"Not checked in this run: it kept {said}, as an earlier run of this output (or of this scheduled "
                "job) chose under quantization auto; `pipelines fidelity JOB.yaml` measures it again.")
    return "Not checked: set model.fidelity in the spec, or run `pipelines fidelity JOB.yaml`."


def _facts(summary: RunSummary | None, data: RunData) -> str:
    if summary is None and data.summary_unread:
        return ("<p class='warning'>The run summary (_run.json) is here but does not read as one (not JSON, or not "
                "the fields this version writes: another version's or another tool's), so the run's facts are not "
                "shown. The charts show the shards committed.</p>")
    if summary is None:
        return ("<p class='none'>No run summary (_run.json) here yet: the run has not finished, or it failed or was "
                "stopped before its summary. The charts show the shards committed so far.</p>")
    rows = [
        ("status", f"{summary.status}: {summary.failure}" if summary.failure else summary.status),
        ("model", f"{summary.model.name} ({precision_said(summary)}, {summary.device})"),
        ("task", summary.task),
        ("rows", f"{summary.rows_out:,} written, {summary.errors:,} quarantined of {summary.rows_in:,}"),
        ("shards", f"{summary.shards} ({summary.shards_this_run} this run)"),
        ("wall time", f"{summary.wall_s:.1f} s"),
        ("speed", f"{summary.rows_per_s or 0:,.1f} rows/s, {summary.tokens_per_s or 0:,.0f} tokens/s"
         if summary.rows_this_run else "no rows scored by this run"),
        ("padding efficiency", "-" if summary.padding_efficiency is None else f"{summary.padding_efficiency}"),
        ("spec hash", summary.spec_hash),
    ]
    if summary.rows_cut:
        rows.insert(4, ("cut to fit max_length", cut_line(summary)))
    for found in summary.unreadable_files[:UNREADABLE_SHOWN]:  # as the summary on the terminal names them
        rows.append(("unreadable input file", f"{found.uri} ({found.rows_told()}): {found.reason}"))
    if len(summary.unreadable_files) > UNREADABLE_SHOWN:
        rows.append(("unreadable input file", f"… and {len(summary.unreadable_files) - UNREADABLE_SHOWN:,} more "
                                              "(_run.json lists every one)"))
    if summary.agreement:
        rows.append(("agreement with ground truth", agreement_line(summary.agreement)))
    if summary.fidelity:
        rows.append(("quantization fidelity", fidelity_line(summary.fidelity)))
    if summary.check_s is not None:
        rows.append(("quantization auto's check", check_line(summary)))
    if said := shard_precisions(data.commits):
        rows.append(("precision of the shards", said))
    if summary.started_at:
        rows.append(("started", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(summary.started_at))))
    rows.append(("output", data.location))
    return _table(None, rows)


def shard_precisions(commits: list[CommitRecord]) -> str:
    """What the commit records say their rows were scored at (``bfloat16 (6 shards)``; under quantization auto one
    output holds one), with the shards scored by a version that did not record it; empty where none says."""
    found = Counter(c.precision for c in commits if c.precision)
    unsaid = sum(1 for c in commits if not c.precision and c.rows_in and c.unreadable is None)
    said = [f"{precision} ({n:,} shard{'s' if n != 1 else ''})" for precision, n in found.most_common()]
    if unsaid and said:
        said.append(f"not recorded ({unsaid:,} shard{'s' if unsaid != 1 else ''}, committed by an earlier version)")
    return ", ".join(said)


def _fidelity_table(result: Fidelity) -> str:
    rows = [(name, cut(value)) for name, value in result.metrics.items()]
    rows += [("rows compared", str(result.rows)),
             ("rows only the quantized model failed", str(result.failed_quantized))]
    if result.failed_reference:
        rows.append((f"sampled rows left out, {result.reference} failed on them", str(result.failed_reference)))
    parts = [_table(["measure", "value"], rows)]
    if result.examples:
        columns = list(result.examples[0])
        parts.append("<p>Where they differ (first rows of the sample):</p>")
        parts.append(_table(columns, [tuple(str(e.get(c, "")) for c in columns) for e in result.examples]))
    return "".join(parts)


def _chart(key: str, figure: go.Figure) -> str:
    figure.update_layout(height=figure.layout.height or HEIGHT, margin={"l": 60, "r": 60, "t": 30, "b": 60},
                         template="plotly_white")
    inner = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{key}", config=PLOT_CONFIG)
    return f"<div class='chart' data-chart='{key}'>{inner}</div>"


def _table(header: list[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _e(value: Any) -> str:
    return html.escape(str(value))


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 2px 12px; text-align: left; }
tr:nth-child(even) { background: #f6f6f6; } .none { color: #777; font-style: italic; }
.warning { color: #8a3b00; background: #fff4e5; padding: 0.5em; }
"""


def _document(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        + "\n".join(body)
        + f"<p class='none'>Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} by ray-hf-batch.</p>"
        + "</body></html>"
    )


# the page of a scheduled job's ledger ------------------------------------------------------------


def ledger_page(location: str, entries: list[dict[str, Any]], pages: set[str] | None = None) -> str:
    """The page over a scheduled job's runs: runs over time, rows, errors, model changes, each run's page (``pages``:
    the folders, relative to the root, that hold one; None: link every run)."""
    runs = [e for e in entries if e.get("run") and e.get("status") != "running"]
    title = f"Scheduled runs: {location}"
    body = [f"<h1>{_e(title)}</h1>"]
    sections = [
        ("runs", "Rows scored per run over time", ledger_rows_chart(runs)),
        ("errors", "Quarantined rows per run", ledger_errors_chart(runs)),
        ("wall", "Wall time per run", ledger_wall_chart(runs)),
    ]
    for key, heading, figure in sections:
        body.append(f"<h2>{_e(heading)}</h2>")
        body.append(_chart(key, figure) if figure is not None else "<p class='none'>No finished run yet.</p>")
    body.append("<h2>Model changes</h2>")
    changes = [(e.get("run", ""), _model(e["model_changed"].get("from")), _model(e["model_changed"].get("to")))
               for e in runs if e.get("model_changed")]
    body.append(_table(["run", "from", "to"], changes) if changes else "<p class='none'>The model never changed.</p>")
    body.append("<h2>Runs</h2>")
    body.append(_runs_table(entries, location, pages))
    return _document(title, body)


def _when(entry: dict[str, Any]) -> str:
    return str(entry.get("finished_at") or entry.get("started_at") or entry.get("tick") or "")


def _model(model: dict[str, Any] | None) -> str:
    if not model:
        return ""
    name = str(model.get("name", "?")).rstrip("/").rsplit("/", 1)[-1]
    pin = model.get("commit") or model.get("content_hash") or model.get("revision") or ""
    return f"{name}{'@' + str(pin)[:12] if pin else ''} ({model.get('quantization', 'none')})"


def ledger_rows_chart(runs: list[dict[str, Any]]) -> go.Figure | None:
    if not runs:
        return None
    figure = go.Figure()
    for status in sorted({e["status"] for e in runs}):
        picked = [e for e in runs if e["status"] == status]
        figure.add_scatter(
            x=[_when(e) for e in picked], y=[e.get("rows_this_run") or 0 for e in picked], mode="markers+lines",
            name=status, text=[e["run"] for e in picked], hovertemplate="run %{text}<br>%{y} rows<extra></extra>",
        )
    for e in runs:
        if e.get("model_changed"):
            figure.add_vline(x=_when(e), line_dash="dot", line_color="#e76f51")
    figure.update_layout(xaxis_title="run finished (UTC); dotted: the model changed", yaxis_title="rows this run")
    return figure


def _attempt(entry: dict[str, Any]) -> str:
    """A run's attempt as a chart names it: the run, and the attempt's number from its first resume on (a failed
    attempt and its resume are two bars, not one drawn over the other)."""
    attempt = entry.get("attempt") or 1
    return f"{entry['run']} #{attempt}" if attempt > 1 else str(entry["run"])


def ledger_errors_chart(runs: list[dict[str, Any]]) -> go.Figure | None:
    if not runs:
        return None
    names = [_attempt(e) for e in runs]
    figure = go.Figure()
    figure.add_bar(x=names, y=[e.get("rows_out") or 0 for e in runs], name="rows in the partition")
    figure.add_bar(x=names, y=[e.get("errors") or 0 for e in runs], name="quarantined")
    figure.update_layout(barmode="group", xaxis={"title": "run", "type": "category"}, yaxis_title="rows")
    return figure


def ledger_wall_chart(runs: list[dict[str, Any]]) -> go.Figure | None:
    timed = [e for e in runs if e.get("wall_s") is not None]
    if not timed:
        return None
    figure = go.Figure(go.Bar(x=[_attempt(e) for e in timed], y=[e["wall_s"] for e in timed],
                              marker_color=["#2a9d8f" if e["status"] == "succeeded" else "#e76f51" for e in timed]))
    figure.update_layout(xaxis={"title": "run", "type": "category"}, yaxis_title="seconds")
    return figure


def run_folders(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Each run's folder relative to the job's root: its partition, or where a later rescore moved it."""
    base = _rescore_base(entries)
    return {str(run): (f"{SUPERSEDED}/" if run < base else "") + layout.partition_dir(run)
            for run in {e["run"] for e in entries if e.get("run")}}


def _runs_table(entries: list[dict[str, Any]], location: str = "", pages: set[str] | None = None) -> str:
    if not entries:
        return "<p class='none'>No runs yet.</p>"
    header = ["tick", "run", "kind", "status", "rows", "errors", "model", "wall s", "report", "error or note"]
    closed = {(e.get("run"), e.get("attempt")) for e in entries if e.get("run") and e.get("status") != "running"}
    base = _rescore_base(entries)
    folders = run_folders(entries)
    rows = []
    for e in entries:
        if e.get("status") == "running" and (e.get("run"), e.get("attempt")) in closed:
            continue  # its closing line follows
        run = str(e.get("run") or "")
        superseded = bool(run) and run < base  # its partition, page and all, moved away by the rescore
        folder = folders.get(run, "")
        link = f"<a href='{_e(folder)}/{REPORT}'>open</a>" if run else ""
        if run and pages is not None and folder not in pages:  # failed before its summary, its page not rebuilt
            link = _e(f"no page: `pipelines report {location}` builds one")
        cells = [e.get("tick") or "", run or "-", e.get("kind", ""), e.get("status", ""),
                 _count(e.get("rows_out")), _count(e.get("errors")), _model(e.get("model")),
                 "" if e.get("wall_s") is None else f"{e['wall_s']:.1f}"]
        notes = [e.get("error") or e.get("note"), f"superseded by rescore {base}" if superseded else None]
        said = "; ".join(str(n) for n in notes if n)
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + f"<td>{link}</td><td>{_e(said)}</td></tr>")
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _rescore_base(entries: list[dict[str, Any]]) -> str:
    """The run of the last rescore that succeeded: every run before it is in ``_superseded/`` ("" if none), as
    :meth:`pipelines.schedule.ledger.History.base` tells it."""
    latest = {e["run"]: e for e in entries if e.get("run")}
    return max((run for run, e in latest.items() if e.get("rescore") and e.get("status") == "succeeded"), default="")


def _count(value: Any) -> str:
    return "" if value is None else f"{value:,}"


# writing ----------------------------------------------------------------------------------------


def write_run_report(location: str) -> str:
    """Build ``<location>/_report.html`` from the output directory; returns its path."""
    fs, root = resolve(location)
    path = f"{root}/{REPORT}"
    layout.write_bytes(fs, path, run_page(read_run(location)).encode(), shared=True)
    return path


def write_ledger_report(location: str, entries: list[dict[str, Any]]) -> str:
    """Build the scheduled job's root page ``<location>/_report.html`` from its ledger lines."""
    fs, root = resolve(location)
    path = f"{root}/{REPORT}"
    folders = sorted(set(run_folders(entries).values()))
    found = fs.get_file_info([f"{root}/{folder}/{REPORT}" for folder in folders])
    pages = {folder for folder, info in zip(folders, found) if info.type == pafs.FileType.File}
    layout.write_bytes(fs, path, ledger_page(location, entries, pages).encode(), shared=True)
    return path


def write_quietly(location: str) -> str | None:
    """``write_run_report`` for the end of a run: a report that can't be built is a warning, not a failed job."""
    try:
        return write_run_report(location)
    except Exception as exc:  # noqa: BLE001 - the results are committed; the page is a view of them
        log.warning("run report not written (%s: %s); rebuild it with `pipelines report %s`",
                    type(exc).__name__, exc, location)
        remove_stale(location)
        return None


def remove_stale(location: str) -> None:
    """Delete an earlier run's page that a new one could not replace: it would show that run as the last one."""
    fs, root = resolve(location)
    try:
        fs.delete_file(f"{root}/{REPORT}")
    except OSError:  # none there, or the store refuses: nothing to leave behind that can be removed
        pass


def has_ledger(location: str) -> bool:
    fs, root = resolve(location)
    return fs.get_file_info(f"{root}/{LEDGER}").type == pafs.FileType.File


def report_path(location: str) -> str:
    """Where an output directory's page is, as the user named the directory."""
    return f"{location.rstrip('/')}/{REPORT}"


def ledger_entries(location: str) -> list[dict[str, Any]]:
    """The lines of a scheduled job's ``_runs.jsonl`` as JSON objects (lines that are not are skipped)."""
    fs, root = resolve(location)
    try:
        with fs.open_input_stream(f"{root}/{LEDGER}") as stream:
            lines = stream.read().decode().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def rebuild(location: str) -> list[str]:
    """Rebuild the pages under an output path: a job's page, or a scheduled job's root page and each run's."""
    fs, root = resolve(location)
    if has_ledger(location):
        partitions = [
            info.base_name for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
            if info.type == pafs.FileType.Directory and info.base_name.startswith(PARTITION)
        ]
        written = [name for name in sorted(partitions) if _partition_page(f"{location.rstrip('/')}/{name}")]
        write_ledger_report(location, ledger_entries(location))
        return [*(report_path(f"{location.rstrip('/')}/{n}") for n in written), report_path(location)]
    marks = [f"{root}/{RUN}", f"{root}/{COMMITS}"]
    if all(fs.get_file_info(m).type == pafs.FileType.NotFound for m in marks):
        return []
    write_run_report(location)
    return [report_path(location)]
