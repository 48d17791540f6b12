"""Reading one shard into Arrow blocks with the columns a job needs, bad rows marked, none lost.

Every block carries the bookkeeping columns of :mod:`pipelines.io.block`. A file
that can't be read at all yields one row whose ``_row`` is -1 and whose
``_error`` says why.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.io.block import ERROR, ROW, SHARD, SHARD_ROWS
from pipelines.io.shards import Shard

BLOCK_ROWS = 1024


@dataclass(frozen=True)
class Columns:
    """The input columns a job reads: text, id, other task inputs, and columns passed through.

    ``keep_types`` fixes the Arrow type of passed-through columns (taken from the
    first shard), so every output file has the same schema.
    """

    text: str
    id: str | None
    inputs: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    keep_types: tuple[tuple[str, pa.DataType], ...] = ()

    @property
    def strings(self) -> tuple[str, ...]:
        """Columns that must hold text."""
        return (self.text, *self.inputs)

    @property
    def all(self) -> tuple[str, ...]:
        names = [*self.strings, *([self.id] if self.id else []), *self.keep]
        return tuple(dict.fromkeys(names))

    @property
    def id_name(self) -> str:
        return self.id or "id"


def read_shard(shard: Shard, columns: Columns, block_rows: int = BLOCK_ROWS) -> Iterator[pa.Table]:
    """Blocks of the shard's rows, normalised to the job's columns; never raises for bad content."""
    try:
        table = _read_table(shard, columns)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one quarantined record
        yield unreadable(shard, columns, f"unreadable {shard.format} file: {_short(exc)}")
        return
    table = normalize(table, shard, columns)
    if table.num_rows == 0:
        yield table
    for start in range(0, table.num_rows, block_rows):
        yield table.slice(start, block_rows)


def _read_table(shard: Shard, columns: Columns) -> pa.Table:
    fs = shard.filesystem()
    with fs.open_input_stream(shard.path, compression=None) as stream:
        data = stream.read()
    if shard.compressed:
        data = gzip.decompress(data)
    if shard.format == "parquet":
        parquet = pq.ParquetFile(io.BytesIO(data))
        present = [c for c in columns.all if c in parquet.schema_arrow.names]
        return _with_error_column(parquet.read(columns=present), parquet.metadata.num_rows)
    return read_jsonl(data, columns)


def _with_error_column(table: pa.Table, rows: int) -> pa.Table:
    """Adds an all-null ``_error`` column, which also keeps the row count when no column was selected."""
    if table.num_columns == 0:
        return pa.table({ERROR: pa.nulls(rows, pa.string())})
    return table.append_column(ERROR, pa.nulls(table.num_rows, pa.string()))


def read_jsonl(data: bytes, columns: Columns) -> pa.Table:
    """JSON lines into a table, one row per non-blank line; bad lines become rows with an ``_error``."""
    try:
        table = pajson.read_json(io.BytesIO(data))
        for name in columns.strings:
            if name in table.column_names:
                table.column(name).validate(full=True)
        return _with_error_column(table.select([c for c in columns.all if c in table.column_names]), table.num_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _read_jsonl_lines(data, columns)


def _read_jsonl_lines(data: bytes, columns: Columns) -> pa.Table:
    """The slow path for files pyarrow rejects: line by line, so one bad line costs one row."""
    records: list[dict[str, Any]] = []
    errors: list[str | None] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        record, error = _parse_line(line)
        records.append(record)
        errors.append(error)
    table = {}
    for name in columns.all:
        if not any(name in r for r in records):
            continue
        values = [r.get(name) for r in records]
        if name in columns.strings:
            values, errors = _strings_only(name, values, errors)
        table[name] = _column(values)
    table[ERROR] = pa.array(errors, pa.string())
    return pa.table(table)


def _strings_only(name: str, values: list[Any], errors: list[str | None]) -> tuple[list[Any], list[str | None]]:
    """Non-string values of a text column become null, with the reason on their row."""
    kept, reasons = [], []
    for value, error in zip(values, errors):
        if value is None or isinstance(value, str):
            kept.append(value)
            reasons.append(error)
        else:
            kept.append(None)
            reasons.append(error or f"{name} is not a string ({type(value).__name__})")
    return kept, reasons


def _parse_line(line: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, f"not valid UTF-8 (byte {exc.start})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"invalid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(record, dict):
        return {}, f"a JSON line must be an object, got {type(record).__name__}"
    return record, None


def _column(values: list[Any]) -> pa.Array:
    """An Arrow column from Python values; mixed types fall back to their JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([v if isinstance(v, str) or v is None else json.dumps(v) for v in values], pa.string())


def normalize(table: pa.Table, shard: Shard, columns: Columns) -> pa.Table:
    """The job's columns with fixed types, plus bookkeeping; problems become per-row errors."""
    n = table.num_rows
    errors = table.column(ERROR) if ERROR in table.column_names else pa.nulls(n, pa.string())
    out: dict[str, pa.Array] = {}
    for name in columns.strings:
        out[name], errors = _string_column(table, name, errors)
    if columns.id:
        if columns.id in table.column_names:
            out[columns.id] = table.column(columns.id).cast(pa.string())
        else:
            out[columns.id] = pa.nulls(n, pa.string())
            errors = _set(errors, f"missing id column {columns.id!r}")
    else:
        out["id"] = pa.array([f"{shard.path.rsplit('/', 1)[-1]}:{i}" for i in range(n)], pa.string())
    types = dict(columns.keep_types)
    for name in columns.keep:
        if name not in out:
            out[name], errors = _kept_column(table, name, types.get(name), errors)
    out[SHARD] = pa.array(np.full(n, shard.key, dtype=object), pa.string())
    out[ROW] = pa.array(np.arange(n, dtype=np.int64))
    out[SHARD_ROWS] = pa.array(np.full(n, n, dtype=np.int64))
    out[ERROR] = errors
    return pa.table(out)


def _string_column(table: pa.Table, name: str, errors: Any) -> tuple[Any, Any]:
    n = table.num_rows
    if name not in table.column_names:
        return pa.nulls(n, pa.string()), _set(errors, f"missing column {name!r}")
    column = table.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string()), errors
    if pa.types.is_null(column.type):
        return column.cast(pa.string()), errors
    bad = pc.invert(column.is_null())
    reason = f"{name} is not a string ({column.type})"
    return pa.nulls(n, pa.string()), pc.if_else(pc.and_(errors.is_null(), bad), reason, errors)


def _kept_column(table: pa.Table, name: str, expected: pa.DataType | None, errors: Any) -> tuple[Any, Any]:
    """A passed-through column in the type the other shards have; a clash quarantines the shard."""
    n = table.num_rows
    if name not in table.column_names:
        return pa.nulls(n, expected or pa.string()), errors
    column = table.column(name)
    if expected is None or column.type == expected:
        return column, errors
    try:
        return column.cast(expected, safe=True), errors
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        reason = f"schema differs: column {name!r} is {column.type} here but {expected} in the first shard"
        return pa.nulls(n, expected), _set(errors, reason)


def reference_types(shards: list[Shard], columns: Columns, sample_bytes: int = 1 << 18) -> dict[str, pa.DataType]:
    """Types of the passed-through columns, from the first shard that can be sampled cheaply."""
    for shard in shards[:5]:
        try:
            schema = _sample_schema(shard, sample_bytes)
        except Exception:  # noqa: BLE001 - an unreadable shard is quarantined later; try the next one
            continue
        present = [n for n in columns.keep if n in schema.names]
        return {n: schema.field(n).type for n in present if not pa.types.is_null(schema.field(n).type)}
    return {}


def _sample_schema(shard: Shard, sample_bytes: int) -> pa.Schema:
    fs = shard.filesystem()
    if shard.format == "parquet" and not shard.compressed:
        with fs.open_input_file(shard.path) as handle:
            return pq.ParquetFile(handle).schema_arrow
    with fs.open_input_stream(shard.path, compression="gzip" if shard.compressed else None) as stream:
        head = stream.read(sample_bytes)
    if shard.format == "parquet":
        raise ValueError("gzip-compressed parquet can't be sampled")
    head = head[: head.rfind(b"\n") + 1] or head
    return pajson.read_json(io.BytesIO(head)).schema


def _set(errors: Any, reason: str) -> Any:
    return pc.if_else(errors.is_null(), reason, errors)


def unreadable(shard: Shard, columns: Columns, reason: str) -> pa.Table:
    """The one record that stands for a file that could not be read."""
    out: dict[str, pa.Array] = {name: pa.nulls(1, pa.string()) for name in (*columns.strings, columns.id_name)}
    for name in columns.keep:
        out.setdefault(name, pa.nulls(1, pa.string()))
    out[SHARD] = pa.array([shard.key])
    out[ROW] = pa.array([-1], pa.int64())
    out[SHARD_ROWS] = pa.array([1], pa.int64())
    out[ERROR] = pa.array([reason])
    return pa.table(out)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]

