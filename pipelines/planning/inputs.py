"""The input of a plan: rows per shard, the batches Ray Data will hand the actors, and a sample of them.

Rows are counted the way :func:`pipelines.io.reader.read_group` reads them: a
Parquet file's rows from its footer, a JSONL file's non-blank lines (gzip
decompressed as a stream; a byte order mark at its start is no line; an object
written over several lines is one row). A JSONL file is counted up to
``count_limit`` decompressed bytes and the rest estimated from its size; a file
that can't be read is one quarantined record, as in a run, which counts the
rows it can tell of it. Light: pyarrow and numpy.
"""

from __future__ import annotations

import bisect
import gzip
import io
import itertools
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.errors import first_line
from pipelines.io.block import ERROR, ROW, SHARD
from pipelines.io.openai_batch import array_reason, spanning_reason, stream_reason
from pipelines.io.reader import (
    EMPTY_GZIP_REASON,
    NOT_FETCHED,
    POINTER_BYTES,
    Columns,
    LinesCount,
    array_head,
    array_start,
    broken_array,
    compression_reason,
    json_array,
    json_reason,
    json_stream,
    lines_rows,
    one_object_rows,
    pointer_reason,
    read_bytes,
    read_group,
    stream_start,
    utf16_reason,
)
from pipelines.io.reader import count_rows as reader_count_rows
from pipelines.io.shards import Shard
from pipelines.planning.records import InputPlan, ShardCount

log = logging.getLogger(__name__)

COUNT_LIMIT = 1 << 30  # decompressed bytes of one JSONL file counted line by line; the rest is estimated
ARRAY_COUNT_LIMIT = 64 << 20  # of a file that is one JSON array, parsed whole to count its elements
CHUNK = 1 << 22


def count_rows(shard: Shard, count_limit: int = COUNT_LIMIT, text: str = "text") -> ShardCount:
    """The rows a run reads from ``shard`` (``text``: the job's text column); never raises for bad content."""
    base = ShardCount(uri=shard.uri, format=shard.format, compressed=shard.compressed, bytes=shard.size, rows=0,
                      count="counted")
    try:
        if shard.compressed and shard.size == 0:  # a run reads it as an unreadable file
            raise ValueError(EMPTY_GZIP_REASON)
        if shard.size <= POINTER_BYTES and (pointer := pointer_reason(read_bytes(shard))) is not None:
            return as_unreadable(base, shard, f"{NOT_FETCHED} {shard.format} file: {pointer}", text)  # a run fails
        if shard.format == "parquet":
            return base.model_copy(update={"rows": _parquet_rows(shard), "count": "footer"})
        rows, exact = _jsonl_rows(shard, count_limit)
        if rows == 1 and exact and (reason := _one_object_reason(shard, text)) is not None:
            raise ValueError(reason)
        return base.model_copy(update={"rows": rows, "count": "counted" if exact else "estimated"})
    except Exception as exc:  # noqa: BLE001 - an unreadable file is one quarantined record in a run
        said = (_json_under_parquet_name(shard) if shard.format == "parquet" else None) or first_line(exc)[:200]
        return as_unreadable(base, shard, f"unreadable {shard.format} file: {said}", text)


def _one_object_reason(shard: Shard, text: str) -> str | None:
    """Why a run refuses a file of one row whole, where that row is one JSON object holding the rows (a list under a
    key, pandas' columns: :func:`one_object_rows`); None where it is a row. Told of a file up to
    :data:`ARRAY_COUNT_LIMIT` bytes (a larger one, counted 1 row here, is refused by the run)."""
    if shard.format == "openai-batch" or shard.size > ARRAY_COUNT_LIMIT:
        return None
    raw = read_bytes(shard)
    found = one_object_rows(gzip.decompress(raw) if shard.compressed else raw, text)
    return found[1] if found is not None else None


def _json_under_parquet_name(shard: Shard) -> str | None:
    """Why a run refuses a Parquet-named file of JSON (:func:`json_reason`), from its first bytes; else None."""
    try:
        with shard.filesystem().open_input_stream(shard.path, compression="gzip" if shard.compressed else None) as f:
            return json_reason(f.read(4096), shard.compressed)
    except Exception:  # noqa: BLE001 - pyarrow's own reason then
        return None


def as_unreadable(count: ShardCount, shard: Shard, reason: str, text: str = "text") -> ShardCount:
    """``count`` as a run tells an unreadable file: one quarantined record, its rows as the run counts them (a
    footer's, or the lines before the damage), ``reason`` with them."""
    rows, exact = reader_count_rows(shard, text)
    told = "rows unknown" if rows is None else f"{rows:,} rows" + ("" if exact else " before the damage")
    return count.model_copy(update={"rows": rows or 0, "rows_exact": exact, "records": 1, "count": "unreadable",
                                    "error": f"{reason}; {told}"})


def _parquet_rows(shard: Shard) -> int:
    fs = shard.filesystem()
    if shard.compressed:
        with fs.open_input_stream(shard.path, compression=None) as stream:
            data = gzip.decompress(stream.read())
        return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    with fs.open_input_file(shard.path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _jsonl_rows(shard: Shard, count_limit: int) -> tuple[int, bool]:
    """(non-blank lines, exact); past ``count_limit`` bytes, lines so far scaled to the file's size."""
    with shard.filesystem().open_input_stream(shard.path, compression=None) as source:
        raw = _Counting(source)
        stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if shard.compressed else raw  # type: ignore[call-overload]
        rows, read = 0, 0
        chunk = stream.read(min(CHUNK, count_limit))
        if (reason := utf16_reason(chunk)) is not None:  # a run refuses it whole: count_rows counts it as the run does
            raise ValueError(reason)
        if (reason := compression_reason(chunk, shard.compressed)) is not None:  # so too a compressed one
            raise ValueError(reason)
        if array_start(chunk):  # perhaps one JSON array
            counted, chunk = _array_rows(stream, raw, chunk, shard.size, min(count_limit, ARRAY_COUNT_LIMIT))
            if counted is not None and shard.format == "openai-batch":  # refused whole by a run, as above
                raise ValueError(array_reason(counted[0]))
            if counted is not None:
                return counted
        elif stream_start(chunk, cut=True):  # objects over several lines each: a run reads them, one row each
            counted, chunk = _stream_rows(stream, raw, chunk, shard, min(count_limit, ARRAY_COUNT_LIMIT))
            if counted is not None:
                return counted
        line: list[bytes] = []  # the line not ended yet, its bytes so far: joined once, where it ends
        held: list[bytes] = []  # lines of an object over several lines that goes on past the chunk: counted with it
        waiting = 0  # bytes to read before the held lines are looked at again (as many as they hold: linear time)
        while chunk:
            read += len(chunk)
            waiting -= len(chunk)
            lines = chunk.split(b"\n")
            if len(lines) > 1:
                lines[0] = b"".join([*line, lines[0]])
                line = []
            line.append(lines.pop())
            if lines and held and waiting > 0:
                held.extend(lines)
            elif lines:  # NUL bytes searched once a chunk (and in the line it ends), not once a line
                told = _batch_lines(shard, lines_rows(
                    [*held, *lines], b"\x00" in chunk or b"\x00" in lines[0] or held != [], last=False))
                rows, held = rows + told.rows, told.held
                waiting = sum(len(part) for part in held)
            consumed = raw.consumed  # file bytes behind ``rows`` and ``line`` (compressed ones, for gzip)
            chunk = stream.read(min(CHUNK, count_limit))
            if read >= count_limit and chunk:  # the line so far counts too: all of a file of objects with no newline
                return round((rows + _last_rows(shard, held, line)) * shard.size / max(consumed, 1)), False
        return rows + _last_rows(shard, held, line), True


def _last_rows(shard: Shard, held: list[bytes], line: list[bytes]) -> int:
    """The rows of the lines a count ends with: those ``held`` (an object over several lines not ended in them) and
    the last line's bytes."""
    return _batch_lines(shard, lines_rows([*held, b"".join(line)])).rows


def _batch_lines(shard: Shard, counted: LinesCount) -> LinesCount:
    """``counted``, where it holds no request written over several lines of a Batch file, which a run refuses whole
    (:func:`spanning_reason`): that raises it."""
    if counted.spanning and shard.format == "openai-batch":
        raise ValueError(spanning_reason())
    return counted


def _read_ahead(stream: Any, chunk: bytes, limit: int) -> tuple[bytes, bool]:
    """The bytes from ``chunk`` on, up to ``limit`` and one more byte; and whether they are the whole rest of the
    file."""
    parts = [chunk]
    read = len(chunk)
    while read < limit and (more := stream.read(min(CHUNK, limit - read))):
        parts.append(more)
        read += len(more)
    last = stream.read(1)  # the end of the file, or one more byte
    return b"".join([*parts, last]), not last


def _array_rows(
    stream: Any, raw: _Counting, chunk: bytes, size: int, limit: int
) -> tuple[tuple[int, bool] | None, bytes]:
    """(rows, exact) of a file that is one JSON array, its elements counted (past ``limit`` bytes, those in the
    bytes read so far, scaled to the file's size); or None and the bytes read, where it is JSON lines after all."""
    data, whole = _read_ahead(stream, chunk, limit)
    if whole:
        values = json_array(data)
        if values is None and (broken := broken_array(data)) is not None:  # a run refuses it whole, saying this
            raise ValueError(broken)
        return ((len(values), True) if values is not None else None), data
    head = array_head(data)
    if head is None:
        return None, data
    return (round(len(head) * size / max(raw.consumed, 1)), False), data


def _stream_rows(
    stream: Any, raw: _Counting, chunk: bytes, shard: Shard, limit: int
) -> tuple[tuple[int, bool] | None, bytes]:
    """(rows, exact) of a file of JSON objects written over several lines each (:func:`json_stream`), its objects
    counted (past ``limit`` bytes, those in the bytes read so far, scaled to the file's size); a file a run refuses
    whole (one that does not parse to its end, or a Batch file) raises its reason. None and the bytes read, where
    it is JSON lines after all."""
    data, whole = _read_ahead(stream, chunk, limit)
    found = json_stream(data)
    if found is None:
        return None, data
    values, problem = found
    if whole and shard.format == "openai-batch":
        raise ValueError(stream_reason(len(values)))
    if whole and problem is not None:
        raise ValueError(problem)
    if whole:
        return (len(values), True), data
    return (round(len(values) * shard.size / max(raw.consumed, 1)), False), data


class _Counting:
    """A stream that counts the bytes read from it (compressed bytes, under a gzip reader)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.consumed += len(data)
        return data


def survey(shards: list[Shard], count_limit: int = COUNT_LIMIT, text: str = "text") -> InputPlan:
    counts = [count_rows(shard, count_limit, text) for shard in shards]
    kinds = Counter(c.format + (".gz" if c.compressed else "") for c in counts)
    return InputPlan(shards=counts, bytes=sum(c.bytes for c in counts), formats=dict(sorted(kinds.items())),
                     **_totals(counts))


def _totals(counts: list[ShardCount]) -> dict[str, Any]:
    """The input's rows, whether they are exact, and its unreadable files, from its shards' counts."""
    return {"rows": sum(c.rows for c in counts), "unreadable": sum(c.count == "unreadable" for c in counts),
            "rows_exact": all(c.count != "estimated" and c.rows_exact for c in counts)}


# the batches an actor receives ------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of read task number ``task`` (its rows as :func:`~pipelines.io.reader.read_group`
    yields them: a group of shards sorted by length together)."""

    task: int
    start: int
    stop: int


# Ray Data's defaults (DataContext) that decide how a read is cut into blocks.
READ_MIN_BLOCKS = 200
MIN_BLOCK_BYTES = 1 << 20
MAX_BLOCK_BYTES = 128 << 20


def split_factor(task_bytes: list[int], cpus: int) -> int:
    """Into how many blocks Ray Data splits each read task's output (one read task per group of shards).

    As Ray 2.60 decides it: a target parallelism of max(min(200, bytes / 1 MiB), bytes / 128 MiB,
    2 × CPUs); with fewer (size-shaped) blocks than that, every block is split into k.
    """
    total = sum(task_bytes)
    tasks = max(1, len(task_bytes))
    reasonable = max(1, total // MIN_BLOCK_BYTES)
    safe = max(1, total // MAX_BLOCK_BYTES)
    parallelism = max(min(READ_MIN_BLOCKS, reasonable), safe, 2 * cpus)
    blocks = tasks * round(max(1, total / tasks / MAX_BLOCK_BYTES))
    return math.ceil(parallelism / blocks) if blocks < parallelism else 1


def read_blocks(rows: list[int], task_bytes: list[int], cpus: int) -> Iterator[Segment]:
    """The blocks the read tasks yield, in task order: each read task's rows shaped to blocks of at most 128 MiB
    (by its shards' size on disk), each block split into ``split_factor`` nearly equal parts."""
    k = split_factor(task_bytes, cpus)
    for index, (count, size) in enumerate(zip(rows, task_bytes)):
        shaped = max(1, round(size / MAX_BLOCK_BYTES))
        for block in _splitrange(Segment(index, 0, count), shaped):
            yield from _splitrange(block, k)


def _splitrange(segment: Segment, parts: int) -> Iterator[Segment]:
    """``np.array_split`` of the segment's rows into ``parts`` (the first ones one row longer); no empty parts."""
    n = segment.stop - segment.start
    base, extra = divmod(n, parts)
    start = segment.start
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        if size > 0:
            yield Segment(segment.task, start, start + size)
            start += size


def actor_batches(blocks: Iterator[Segment], batch_size: int) -> Iterator[list[Segment]]:
    """The batches of ``batch_size`` rows the predictor is called with, as Ray Data forms them from ``blocks``.

    Ray bundles whole blocks until they hold ``batch_size`` rows and cuts each bundle into batches of
    ``batch_size``, the last one shorter. Ray takes blocks in the order the read tasks yield them; this
    takes them in read task order, so a run's batches may pair other blocks.
    """
    pending: list[Segment] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += block.stop - block.start
        if held >= batch_size:
            yield from _cut(pending, batch_size)
            pending, held = [], 0
    if pending:
        yield from _cut(pending, batch_size)


def _cut(bundle: list[Segment], batch_size: int) -> Iterator[list[Segment]]:
    batch: list[Segment] = []
    room = batch_size
    for segment in bundle:
        start = segment.start
        while start < segment.stop:
            take = min(room, segment.stop - start)
            batch.append(Segment(segment.task, start, start + take))
            start += take
            room -= take
            if room == 0:
                yield batch
                batch, room = [], batch_size
    if batch:
        yield batch


def pick_batches(batches: list[list[Segment]], rows: list[int], sample: int, batch_size: int) -> list[list[Segment]]:
    """The batches to tokenize: all of ``batches`` when the input (``rows``: each read task's) holds no more than
    ``sample`` rows, else ``sample`` rows spread evenly over the input (:func:`spread_rows`)."""
    if sum(rows) <= sample:
        return batches
    return spread_rows(rows, sample, batch_size)


#: A sample of part of the input reads the read tasks that hold about this many times its rows (all of them in
#: an input of no more): tasks spread over the input, rows spread over each, and not the whole input read.
SPREAD = 4


def spread_rows(rows: list[int], sample: int, batch_size: int) -> list[list[Segment]]:
    """``sample`` rows of the input, in batches of ``batch_size``; ``rows``: each read task's.

    A read task yields its rows sorted by length, so an actor batch is one band of lengths: a sample of whole
    batches saw a band or two, not the spread (none of the long rows, or only those). The sample is the middle row
    of each of ``sample`` equal stretches of the rows of read tasks spread evenly over the input (:func:`_spread`):
    each length band in proportion (a sample stratified by length), the same rows each time.
    """
    tasks = _spread(rows, sample * SPREAD)
    starts = list(itertools.accumulate((rows[t] for t in tasks), initial=0))
    total = starts[-1]
    segments = []
    for i in range(sample):
        index = math.floor((i + 0.5) * total / sample)
        at = bisect.bisect_right(starts, index) - 1  # past the read tasks with no rows
        segments.append(Segment(tasks[at], index - starts[at], index - starts[at] + 1))
    return [segments[i : i + batch_size] for i in range(0, len(segments), batch_size)]


def _spread(rows: list[int], wanted: int) -> list[int]:
    """The fewest read tasks at even steps over the input that hold ``wanted`` rows (every task, if they don't)."""
    if sum(rows) <= wanted:
        return list(range(len(rows)))
    count = max(1, min(len(rows), math.ceil(wanted * len(rows) / sum(rows))))
    while True:
        picked = sorted({math.floor((i + 0.5) * len(rows) / count) for i in range(count)})
        if count >= len(rows) or sum(rows[t] for t in picked) >= wanted:
            return picked
        count = min(len(rows), count + max(1, count // 8))


def read_batches(tasks: list[list[Shard]], columns: Columns, batches: list[list[Segment]]) -> list[pa.Table]:
    """The rows of ``batches`` as the predictor receives them (reader's columns, bad rows marked); ``tasks``: the
    shards of each read task. A read task's rows are held only until the last batch that takes some of them."""
    last = {s.task: at for at, batch in enumerate(batches) for s in batch}
    tables: dict[int, pa.Table] = {}
    out = []
    for at, batch in enumerate(batches):
        for index in sorted({s.task for s in batch} - tables.keys()):
            blocks = list(read_group(tasks[index], columns))
            tables[index] = pa.concat_tables(blocks, promote_options="permissive")
        parts = [tables[s.task].slice(s.start, s.stop - s.start) for s in batch]
        out.append(pa.concat_tables(parts, promote_options="permissive").combine_chunks())
        for index in [task for task, final in last.items() if final == at]:
            del tables[index]
    return out


def found_unreadable(
    inputs: InputPlan, shards: list[Shard], tables: list[pa.Table], text: str = "text"
) -> InputPlan:
    """``inputs`` with the files that reading ``tables`` found unreadable where their count had read (a Parquet file
    whose footer reads but whose data does not), told as a run tells them: their rows quarantined as one record."""
    found: dict[str, str] = {}
    for table in tables:
        records = table.filter(pc.equal(table.column(ROW), -1))
        found.update(zip(records.column(SHARD).to_pylist(), records.column(ERROR).to_pylist()))
    counts = []
    for shard, count in zip(shards, inputs.shards, strict=True):
        reason = found.get(shard.key)
        if reason is not None and count.error is None and not reason.startswith(NOT_FETCHED):  # a fetch is retried
            count = as_unreadable(count, shard, reason, text)
        counts.append(count)
    return inputs.model_copy(update={"shards": counts, **_totals(counts)})


def unreadable_records(shards: list[Shard], counts: list[ShardCount], columns: Columns) -> pa.Table | None:
    """The one record a run makes of each input file it can't read (``counts``: the shards', as :func:`survey`
    counted them), for a sampled plan to count apart from its sample; None when every file reads."""
    found = [
        table.filter(pc.equal(table.column(ROW), -1))
        for shard, count in zip(shards, counts, strict=True) if count.error
        for table in read_group([shard], columns)
    ]
    found = [table for table in found if table.num_rows]
    return pa.concat_tables(found, promote_options="permissive") if found else None
