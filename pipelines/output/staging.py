"""Writing predicted blocks to staging files; runs in Ray tasks next to the data (no torch here).

Each block is split by shard: good rows go to a staged Parquet data file, bad
rows to a staged error file, under ``_staging/<shard>/`` (which readers skip);
the commit merges a shard's staged files into the one file readers see. What comes back to the driver is one small
:class:`StagingReport` per (block, shard), as an Arrow row with typed columns,
so the driver can commit a shard once all of its rows are accounted for.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.io.block import COUNTS, DIGEST, ERROR, FILE_SIZE, ROW, SHARD, SHARD_ROWS
from pipelines.io.shards import resolve
from pipelines.output import layout
from pipelines.output.records import Confusion, StagedBlock

PREVIEW_CHARS = 120
#: Staged files are read once more, by the commit that merges them: fast compression is enough.
STAGED_COMPRESSION = "lz4"

_COUNT = pa.struct([("key", pa.string()), ("n", pa.int64())])
_CELL = pa.struct([("truth", pa.string()), ("predicted", pa.string()), ("n", pa.int64())])

REPORT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("shard_rows", pa.int64()),
        ("rows", pa.int64()),
        ("errors", pa.int64()),
        ("tokens", pa.int64()),
        ("padded", pa.int64()),
        ("staged_at", pa.float64()),
        ("actor_started_at", pa.float64()),
        ("actor_imported_at", pa.float64()),
        ("actor_ready_at", pa.float64()),
        ("generated", pa.int64()),
        ("cut", pa.int64()),
        ("files", pa.list_(pa.string())),
        ("error_files", pa.list_(pa.string())),
        ("confusion", pa.list_(_CELL)),
        ("reasons", pa.list_(_COUNT)),
        ("row_ranges", pa.list_(pa.int64())),
        ("digest", pa.string()),
        ("file_size", pa.int64()),
        ("labels", pa.list_(pa.string())),
        ("precision", pa.string()),
    ]
)


@dataclass(frozen=True)
class ActorClock:
    """When the pool's actor that predicted a block began (its constructor ran: its Ray worker started and Ray Data's
    set-up done), had made its imports (torch, Transformers, the predictor), and was ready (its model loaded, after
    ``quantization: auto``'s check where the run decides it), in epoch seconds (0: not known). A run's timeline takes
    the first actor ready's (``actor_start``, ``actor_imported``, ``actor_ready``)."""

    started_at: float = 0.0
    imported_at: float = 0.0
    ready_at: float = 0.0


@dataclass
class StagingReport:
    """What one writer task staged for one shard: counts, staged files, and which rows (as ranges)."""

    shard: str
    shard_rows: int
    rows: int
    errors: int
    tokens: int = 0
    padded: int = 0
    staged_at: float = 0.0  # when the writer staged the block (epoch seconds)
    actor: ActorClock = field(default_factory=ActorClock)  # the start of the actor that predicted it
    generated: int = 0
    cut: int = 0  # rows cut to fit max_length
    files: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)
    confusion: Confusion = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    row_ranges: list[tuple[int, int]] = field(default_factory=list)
    digest: str = ""
    file_size: int | None = None  # of the shard file's bytes as read (``digest`` is their hash); None: not known
    #: The labels the actor's model can give, where the job predicts a label (the run's agreement checks the truth
    #: values against them); empty otherwise.
    labels: list[str] = field(default_factory=list)
    #: The precision the actor that predicted the block ran at, in one word (:func:`precision_label` of its
    #: quantization and the dtype its model loaded in); empty where no actor predicted it (an unreadable file).
    precision: str = ""

    @property
    def unreadable(self) -> bool:
        """The report stands for a file that could not be read (its one record has row -1)."""
        return self.row_ranges == [(-1, 0)]

    def block(self) -> StagedBlock:
        """The block's entry in its shard's commit record."""
        return StagedBlock(
            at=self.staged_at, rows=self.rows, errors=self.errors, tokens=self.tokens, padded=self.padded
        )

    def to_row(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "shard_rows": self.shard_rows,
            "rows": self.rows,
            "errors": self.errors,
            "tokens": self.tokens,
            "padded": self.padded,
            "staged_at": self.staged_at,
            "actor_started_at": self.actor.started_at,
            "actor_imported_at": self.actor.imported_at,
            "actor_ready_at": self.actor.ready_at,
            "generated": self.generated,
            "cut": self.cut,
            "files": self.files,
            "error_files": self.error_files,
            "confusion": [
                {"truth": t, "predicted": p, "n": n} for t, row in self.confusion.items() for p, n in row.items()
            ],
            "reasons": [{"key": k, "n": n} for k, n in self.reasons.items()],
            "row_ranges": [bound for pair in self.row_ranges for bound in pair],
            "digest": self.digest,
            "file_size": self.file_size,
            "labels": self.labels,
            "precision": self.precision,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StagingReport:
        confusion: Confusion = {}
        for cell in row["confusion"] or []:
            confusion.setdefault(cell["truth"], {})[cell["predicted"]] = cell["n"]
        flat = row["row_ranges"] or []
        return cls(
            shard=row["shard"],
            shard_rows=row["shard_rows"],
            rows=row["rows"],
            errors=row["errors"],
            tokens=row["tokens"],
            padded=row["padded"],
            staged_at=row.get("staged_at") or 0.0,
            actor=ActorClock(started_at=row.get("actor_started_at") or 0.0,
                             imported_at=row.get("actor_imported_at") or 0.0,
                             ready_at=row.get("actor_ready_at") or 0.0),
            generated=row.get("generated") or 0,
            cut=row.get("cut") or 0,
            files=list(row["files"] or []),
            error_files=list(row["error_files"] or []),
            confusion=confusion,
            reasons={item["key"]: item["n"] for item in row["reasons"] or []},
            row_ranges=list(zip(flat[::2], flat[1::2])),
            digest=row.get("digest") or "",
            file_size=row.get("file_size"),
            labels=list(row.get("labels") or []),
            precision=row.get("precision") or "",
        )

    @staticmethod
    def table(reports: list[StagingReport]) -> pa.Table:
        return pa.Table.from_pylist([r.to_row() for r in reports], schema=REPORT_SCHEMA)

    @staticmethod
    def from_table(table: pa.Table) -> list[StagingReport]:
        return [StagingReport.from_row(row) for row in table.to_pylist()]


@dataclass(frozen=True)
class StagingConfig:
    """What a staging writer needs to know; small and picklable."""

    output: str
    id_column: str
    text_column: str
    output_columns: tuple[str, ...]
    shard_uris: dict[str, str] = field(default_factory=dict)
    truth_column: str | None = None
    predicted_column: str | None = None
    truth_map: dict[str, str] | None = None  # input.label_map: a truth value (as text) -> the label it stands for


def write_staged(batch: pa.Table, config: StagingConfig, actor: ActorClock | None = None,
                 labels: Sequence[str] = (), precision: str = "") -> pa.Table:
    """Stage one predicted block; return one report row per shard in it (``actor``: the start of the actor that
    predicted it, ``labels``: those its model can give, and ``precision``: the one it ran at, as each report carries
    them)."""
    reports = []
    shards = pc.unique(batch.column(SHARD)).to_pylist()
    for shard in shards:
        part = batch.filter(pc.equal(batch.column(SHARD), shard))
        report = _stage_shard(part, shard, config)
        report.actor = actor or ActorClock()
        report.labels = list(labels)
        report.precision = precision
        reports.append(report)
    return StagingReport.table(reports)


def _stage_shard(part: pa.Table, shard: str, config: StagingConfig) -> StagingReport:
    failed = part.column(ERROR).is_null()
    good = part.filter(failed)
    bad = part.filter(pc.invert(failed))
    fs, root = resolve(config.output)
    folder = f"{root}/{layout.STAGING}/{shard}"
    fs.create_dir(folder, recursive=True)
    name = uuid.uuid4().hex
    files = []
    if good.num_rows:
        path = f"{folder}/{name}-data.parquet"
        # _row goes along: the commit puts the shard's rows back in input order, then drops it; so do the
        # token counts: the commit counts again without the rows it quarantines (duplicate ids)
        counts = [name for name in COUNTS if name in good.column_names]
        layout.write_parquet(fs, path, good.select([*config.output_columns, ROW, *counts]), STAGED_COMPRESSION)
        files.append(path)
    error_files = []
    if bad.num_rows:
        path = f"{folder}/{name}-errors.parquet"
        layout.write_parquet(fs, path, error_records(bad, config), STAGED_COMPRESSION)
        error_files.append(path)
    tokens, padded, generated, cut = spent(good)  # the rows the output will hold: a quarantined row counts in none
    return StagingReport(
        shard=shard,
        shard_rows=int(part.column(SHARD_ROWS)[0].as_py()),
        rows=good.num_rows,
        errors=bad.num_rows,
        tokens=tokens,
        padded=padded,
        staged_at=time.time(),
        generated=generated,
        cut=cut,
        files=files,
        error_files=error_files,
        confusion=confusion(good, config),
        reasons=reason_counts(bad),
        row_ranges=row_ranges(part.column(ROW).to_numpy()),
        digest=str(part.column(DIGEST)[0].as_py() or "") if DIGEST in part.column_names else "",
        file_size=part.column(FILE_SIZE)[0].as_py() if FILE_SIZE in part.column_names else None,
    )


def spent(rows: pa.Table | None) -> tuple[int, int, int, int]:
    """The real tokens, tokens computed, tokens generated and rows cut to fit ``max_length`` of these rows (0 for a
    count they don't carry)."""
    if rows is None:
        return 0, 0, 0, 0
    tokens, padded, generated, cut = (
        int(pc.sum(rows.column(name)).as_py() or 0) if name in rows.column_names else 0 for name in COUNTS
    )
    return tokens, padded, generated, cut


def error_records(bad: pa.Table, config: StagingConfig) -> pa.Table:
    """The quarantine rows: where the row came from, its id, why it failed, and a preview of its text."""
    shard = bad.column(SHARD).to_pylist()
    text = bad.column(config.text_column)
    preview = pc.utf8_slice_codeunits(text.cast(pa.string()), 0, PREVIEW_CHARS)
    return pa.table(
        {
            "shard": pa.array([config.shard_uris.get(s, s) for s in shard], pa.string()),
            "row": bad.column(ROW).cast(pa.int64()),
            "id": bad.column(config.id_column).cast(pa.string()),
            "reason": bad.column(ERROR).cast(pa.string()),
            "preview": preview,
        }
    )


def confusion(good: pa.Table, config: StagingConfig) -> Confusion:
    """Counts of (ground truth, prediction) pairs: {truth: {predicted: n}}, over the rows that have a truth label
    (a null one is no truth to agree with, nor is NaN: where pandas writes null for a missing float, Polars and
    DuckDB keep NaN)."""
    if not config.truth_column or not config.predicted_column or good.num_rows == 0:
        return {}
    good = good.filter(has_truth(good.column(config.truth_column)))
    truth = mapped(truth_texts(good.column(config.truth_column)), config.truth_map)
    predicted = good.column(config.predicted_column).cast(pa.string()).to_numpy(zero_copy_only=False)
    counts: Confusion = {}
    pairs = Counter(zip(truth, predicted.tolist()))
    for (t, p), n in pairs.items():
        counts.setdefault(str(t), {})[str(p)] = int(n)
    return counts


def has_truth(truth: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Per row: whether it holds a truth label, neither null nor a float NaN."""
    valid = truth.is_valid()
    if pa.types.is_floating(truth.type):
        valid = pc.and_(valid, pc.invert(pc.fill_null(pc.is_nan(truth), True)))
    return valid


def truth_texts(truth: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """Truth labels as text: Arrow's cast (a float 1.0 is "1", True "true"); where Arrow casts the column to no text
    (a list or a struct per row, bytes that are no UTF-8 in a binary column) each value on its own
    (:func:`truth_text`), as the fidelity check reads them: the cast raised in the actor, and a job with such a
    label_column ended before writing a row."""
    try:
        return truth.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return [truth_text(value) for value in truth.to_pylist()]


def mapped(truth: list[str | None], label_map: dict[str, str] | None) -> list[str | None]:
    """Truth labels (as text) as the model's labels they stand for under ``input.label_map``; a value the map does not
    name is compared as it is."""
    if not label_map:
        return truth
    return [label_map.get(t, t) if t is not None else None for t in truth]


def truth_text(value: Any) -> str | None:
    """One truth value Arrow casts to no text, as text: bytes as the UTF-8 they hold (as Arrow's cast reads them, so
    that a value reads alike whatever else its block holds), else as Python writes it (``[1, 2]``, ``b'\\xff'``)."""
    if value is None or (isinstance(value, float) and value != value):  # NaN: no label, as null
        return None
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    return str(value)


def row_ranges(rows: np.ndarray) -> list[tuple[int, int]]:
    """Row indices as [start, end) pairs, so the driver can spot a block seen twice."""
    rows = np.sort(rows)
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    ends = np.concatenate([rows[breaks], [rows[-1]]]) + 1
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


#: A reason that starts with the message it is about (an OpenAI Batch request's ``messages[2]: role 'tool' is ...``).
MESSAGE_PLACE = re.compile(r"messages\[\d+\]: ")
#: A reason that starts with the embedding input it is about (``input[7] has no tokens ...``).
INPUT_PLACE = re.compile(r"input\[\d+\]")


def reason_counts(bad: pa.Table) -> dict[str, int]:
    """Bad rows by kind of reason (the reason without its details), for the run summary. A request's message is
    named by what is wrong with it, its place left out (``messages[…]: role 'tool' is not supported``), and so is an
    embedding input (``input[…] has no tokens``)."""
    kinds = [reason_kind(reason) for reason in bad.column(ERROR).to_pylist()]
    return dict(Counter(kinds))


def reason_kind(reason: str) -> str:
    place = MESSAGE_PLACE.match(reason)
    if place:
        return f"messages[…]: {reason_kind(reason[place.end():])}"
    place = INPUT_PLACE.match(reason)
    if place:  # one kind for every string of the list
        return reason_kind("input[…]" + reason[place.end():])
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()
