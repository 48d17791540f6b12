"""Writing predicted blocks to staging files; runs in Ray tasks next to the data.

Each block is split by shard: good rows go to a staged Parquet data file, bad
rows to a staged error file. What comes back to the driver is one small row per
(block, shard) with counts and file names, so the driver can commit a shard
once all of its rows are accounted for.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.io.reader import ERROR, ROW, SHARD, SHARD_ROWS
from pipelines.io.shards import resolve
from pipelines.predictor import PADDED, TOKENS

STAGING = "_staging"
PREVIEW_CHARS = 120

REPORT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("shard_rows", pa.int64()),
        ("rows", pa.int64()),
        ("errors", pa.int64()),
        ("tokens", pa.int64()),
        ("padded", pa.int64()),
        ("files", pa.list_(pa.string())),
        ("error_files", pa.list_(pa.string())),
        ("confusion", pa.string()),
        ("reasons", pa.string()),
        ("row_ranges", pa.list_(pa.int64())),
    ]
)


@dataclass(frozen=True)
class StagingConfig:
    """What a staging writer needs to know; small and picklable."""

    output: str
    id_column: str
    text_column: str
    output_columns: tuple[str, ...]
    shard_uris: dict[str, str] = field(default_factory=dict)
    compression: str = "zstd"
    max_rows_per_file: int = 100_000
    truth_column: str | None = None
    predicted_column: str | None = None


def write_staged(batch: pa.Table, config: StagingConfig) -> pa.Table:
    """Stage one predicted block; return one report row per shard in it."""
    reports = []
    shards = pc.unique(batch.column(SHARD)).to_pylist()
    for shard in shards:
        part = batch.filter(pc.equal(batch.column(SHARD), shard))
        reports.append(_stage_shard(part, shard, config))
    return pa.Table.from_pylist(reports, schema=REPORT_SCHEMA)


def _stage_shard(part: pa.Table, shard: str, config: StagingConfig) -> dict:
    failed = part.column(ERROR).is_null()
    good = part.filter(failed)
    bad = part.filter(pc.invert(failed))
    fs, root = resolve(config.output)
    folder = f"{root}/{STAGING}/{shard}"
    fs.create_dir(folder, recursive=True)
    name = uuid.uuid4().hex
    files = []
    data = good.select(list(config.output_columns))
    for k, start in enumerate(range(0, data.num_rows, config.max_rows_per_file)):
        path = f"{folder}/{name}-{k}.parquet"
        write_atomically(fs, path, data.slice(start, config.max_rows_per_file), config.compression)
        files.append(path)
    error_files = []
    if bad.num_rows:
        path = f"{folder}/{name}-errors.parquet"
        write_atomically(fs, path, error_records(bad, config), config.compression)
        error_files.append(path)
    return {
        "shard": shard,
        "shard_rows": int(part.column(SHARD_ROWS)[0].as_py()),
        "rows": good.num_rows,
        "errors": bad.num_rows,
        "tokens": int(pc.sum(part.column(TOKENS)).as_py() or 0),
        "padded": int(pc.sum(part.column(PADDED)).as_py() or 0),
        "files": files,
        "error_files": error_files,
        "confusion": json.dumps(confusion(good, config)),
        "reasons": json.dumps(reason_counts(bad)),
        "row_ranges": row_ranges(part.column(ROW).to_numpy()),
    }


def write_atomically(fs, path: str, table: pa.Table, compression: str) -> None:
    """Write then rename, so a staged file is either whole or absent."""
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as stream:
        pq.write_table(table, stream, compression=None if compression == "none" else compression)
    fs.move(tmp, path)


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


def confusion(good: pa.Table, config: StagingConfig) -> dict[str, dict[str, int]]:
    """Counts of (ground truth, prediction) pairs: {truth: {predicted: n}}."""
    if not config.truth_column or not config.predicted_column or good.num_rows == 0:
        return {}
    truth = good.column(config.truth_column).cast(pa.string()).to_numpy(zero_copy_only=False)
    predicted = good.column(config.predicted_column).cast(pa.string()).to_numpy(zero_copy_only=False)
    counts: dict[str, dict[str, int]] = {}
    pairs = Counter(zip(truth.tolist(), predicted.tolist()))
    for (t, p), n in pairs.items():
        counts.setdefault(str(t), {})[str(p)] = int(n)
    return counts


def row_ranges(rows: np.ndarray) -> list[int]:
    """Row indices as flat [start, end) pairs: [s0, e0, s1, e1, ...], so the driver can spot a block seen twice."""
    rows = np.sort(rows)
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    ends = np.concatenate([rows[breaks], [rows[-1]]]) + 1
    return np.stack([starts, ends], axis=1).reshape(-1).tolist()


def reason_counts(bad: pa.Table) -> dict[str, int]:
    """Bad rows by kind of reason (the reason without its details), for the run summary."""
    kinds = [re.split(r"[:(]", reason, maxsplit=1)[0].strip() for reason in bad.column(ERROR).to_pylist()]
    return dict(Counter(kinds))
