"""Reading shards into Arrow blocks with the columns a job needs, bad rows marked, none lost.

Every block carries the bookkeeping columns of :mod:`pipelines.io.block`. A file
that can't be read at all yields one row whose ``_row`` is -1 and whose
``_error`` says why.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import io
import json
import logging
import lzma
import re
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.errors import PipelineError, first_line
from pipelines.io.block import DIGEST, ERROR, FILE_SIZE, ROW, SHARD, SHARD_ROWS
from pipelines.io.shards import Shard

log = logging.getLogger(__name__)

BLOCK_ROWS = 1024
#: How the reason of a file starts when its bytes could not be fetched (a storage or network error that the store's
#: client did not get past with its own retries, or a file gone since it was listed), as opposed to bytes that don't
#: parse. Such a file may read on the next run, so it is never committed, whatever ``errors.unreadable_files`` says.
NOT_FETCHED = "could not fetch"
#: Small shards are read a few at a time and their rows sorted by length together (:func:`read_group`): the
#: wider the sort, the closer in length the rows of an actor batch, the fewer and fuller its micro-batches.
#: On AG News + SST-2 shards of ~530 rows (137 KB), sorting 4 shards together took the forward from 7% over
#: a whole-input sort to within 1% (the actor's forward 8% faster in the job); a group's shards are then
#: committed together, when its last batch is staged.
GROUP_BYTES = 512 << 10
GROUP_SHARDS = 16
#: The kept columns' types come from each JSON lines file's first 256 KiB, read on to the end of its first record
#: (a long text) up to this many bytes.
SAMPLE_MOST = 64 << 20


@dataclass(frozen=True)
class Columns:
    """The input columns a job reads: text, id, other task inputs, and columns passed through.

    ``keep_types`` fixes the Arrow type of passed-through columns (unified over
    every shard, see :func:`reference_types`), so every output file has the same schema.
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
    return read_group([shard], columns, block_rows)


def read_group(shards: Sequence[Shard], columns: Columns, block_rows: int = BLOCK_ROWS) -> Iterator[pa.Table]:
    """Blocks of several shards' rows (one read task's, see :func:`group_shards`), ordered by length together.

    A file that can't be read is one block of its one record, an empty shard an empty block; the rows of
    the others are sorted by length as one table (each keeps its shard and ``_row``). Never raises for bad
    content.
    """
    readable = []
    for shard in shards:
        table, ok = _read_one(shard, columns)
        if ok and table.num_rows:
            readable.append(table)
        else:
            yield table
    if len(readable) > 1:
        try:
            readable = [pa.concat_tables(readable, promote_options="permissive")]
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # passed-through columns of other types: each on its own
            pass
    for table in readable:
        table = by_length(table, columns.text)
        for start in range(0, table.num_rows, block_rows):
            yield table.slice(start, block_rows)


def _read_one(shard: Shard, columns: Columns) -> tuple[pa.Table, bool]:
    """The shard's rows normalised to the job's columns, or (False) the one record of a file that can't be read:
    its bytes could not be fetched (reason :data:`NOT_FETCHED`...) or they don't parse (``unreadable``...)."""
    try:
        raw = read_bytes(shard)
    except Exception as exc:  # noqa: BLE001 - the run fails on it, whatever errors.unreadable_files says
        return unreadable(shard, columns, f"{NOT_FETCHED} {shard.format} file: {_short(exc)}"), False
    if (pointer := pointer_reason(raw)) is not None:  # no bytes of the file are here: not fetched, as above
        return unreadable(shard, columns, f"{NOT_FETCHED} {shard.format} file: {pointer}"), False
    digest = content_digest(raw)  # also of a file that won't parse: a copy of it is the same input
    try:
        table = _read_table(shard, raw, columns)
    except Exception as exc:  # noqa: BLE001 - any unparsable file becomes one quarantined record
        return unreadable(shard, columns, f"unreadable {shard.format} file: {_short(exc)}", digest, len(raw)), False
    return normalize(table, shard, columns, digest, len(raw)), True


def group_shards(sizes: Sequence[int], group_bytes: int = GROUP_BYTES, most: int = GROUP_SHARDS) -> list[list[int]]:
    """Which shards (by index, consecutive) each read task reads: shards are added to a group until it holds
    ``group_bytes`` (on disk) or ``most`` shards; a shard of ``group_bytes`` or more is read alone.

    The first shard is always read alone: a group's shards are committed when its last rows are staged, so a
    first group of several shards would hold back the run's first output until all of them are predicted.
    """
    groups: list[list[int]] = []
    held = group_bytes
    for index, size in enumerate(sizes):
        if index > 1 and held < group_bytes and size < group_bytes and len(groups[-1]) < most:
            groups[-1].append(index)
            held += size
        else:
            groups.append([index])
            held = size
    return groups


def by_length(table: pa.Table, text: str) -> pa.Table:
    """The rows ordered by the length of their text (``_row`` keeps where each came from).

    Ray Data cuts actor batches out of the blocks in order, so a batch then holds rows of similar
    length and its micro-batches waste little on padding, however small the batch; the commit puts
    each shard's rows back in input order.
    """
    if table.num_rows < 2:
        return table
    lengths = pc.fill_null(pc.utf8_length(table.column(text)), 0).to_numpy(zero_copy_only=False)
    return table.take(pa.array(np.argsort(lengths, kind="stable")))


def read_bytes(shard: Shard) -> bytes:
    """The shard file's bytes, as stored (compressed if it is)."""
    with shard.filesystem().open_input_stream(shard.path, compression=None) as stream:
        return stream.read()


def content_digest(raw: bytes) -> str:
    """A short hash of a file's bytes: recorded at commit, so a file whose modification time changed but whose
    content did not (a copy, a re-uploaded working directory) is known to be the same input."""
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def same_content(shard: Shard, digest: str | None) -> bool:
    """Whether a shard's bytes hash to ``digest`` (read whole, on the driver, an object store's too: asked only for
    files whose size is the recorded one and whose time is not). No digest recorded (an older record): False.
    A file that can't be read is neither: the failure is raised as one line (calling it changed would send the user
    to delete its output, and the read after that would fail the same way)."""
    if not digest:
        return False
    try:
        return content_digest(read_bytes(shard)) == digest
    except OSError as exc:
        raise PipelineError(
            f"cannot read {shard.uri} to tell whether it changed since it was scored (its time changed, its size did "
            f"not): {first_line(exc)}; make it readable (a storage outage: try again later) and run again"
        ) from None


#: The unit Parquet's INT96 timestamps (Spark's default, Hive's, Impala's) are read in: Spark's own, microseconds.
#: pyarrow's default, nanoseconds, holds only 1677 to 2262: a ``9999-12-31`` (a row still valid in a slowly
#: changing dimension) overflowed into another date.
INT96_UNIT = "us"


def plain_under_gz_name(data: bytes) -> bool:
    """Bytes of a file named ``.gz`` that are no gzip stream but plain JSON or Parquet (a browser decompressed the
    download and kept its name): refused whole with :data:`PLAIN_GZ_REASON`, their rows counted as they are."""
    if not data or compression_of(data) is not None:
        return False
    return data.startswith(PARQUET_MAGIC) or JSON_START.match(data) is not None


PLAIN_GZ_REASON = ("the file is named .gz but is not gzip-compressed (its bytes are plain, as a browser leaves a "
                   "download it decompressed): remove the .gz from its name (NAME.jsonl, NAME.parquet) to be read")


def _read_table(shard: Shard, data: bytes, columns: Columns) -> pa.Table:
    if shard.compressed:
        if not data:
            raise ValueError(EMPTY_GZIP_REASON)
        if plain_under_gz_name(data):
            raise ValueError(PLAIN_GZ_REASON)
        data = gzip.decompress(data)
    if shard.format != "parquet" and (reason := utf16_reason(data)) is not None:
        raise ValueError(reason)
    if shard.format != "parquet" and (reason := compression_reason(data, shard.compressed)) is not None:
        raise ValueError(reason)
    if shard.format == "openai-batch":
        from pipelines.io.openai_batch import read_requests  # it reads lines with parse_line, from here

        return read_requests(data, columns.id_name, columns.text)
    if shard.format == "parquet":
        if (reason := json_reason(data, shard.compressed)) is not None:
            raise ValueError(reason)
        parquet = pq.ParquetFile(io.BytesIO(data), coerce_int96_timestamp_unit=INT96_UNIT)
        present = [c for c in columns.all if c in parquet.schema_arrow.names]
        return _only_utf8(_with_error_column(parquet.read(columns=present), parquet.metadata.num_rows), columns.all)
    return read_jsonl(data, columns)


def _with_error_column(table: pa.Table, rows: int) -> pa.Table:
    """Adds an all-null ``_error`` column, which also keeps the row count when no column was selected."""
    if table.num_columns == 0:
        return pa.table({ERROR: pa.nulls(rows, pa.string())})
    return table.append_column(ERROR, pa.nulls(table.num_rows, pa.string()))


#: The byte order marks of UTF-16 text (little- and big-endian), as Windows PowerShell 5 writes ``>`` and ``Out-File``:
#: a JSON lines file so written is refused whole, with how to convert it (read as UTF-8, each line was a broken row).
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
UTF16_REASON = (
    "the file is UTF-16 text (it starts with a UTF-16 byte order mark), not UTF-8: convert it (iconv -f UTF-16 -t "
    "UTF-8, or PowerShell's Out-File -Encoding utf8)"
)


def utf16_without_bom(data: bytes) -> str | None:
    """``utf-16-le`` or ``utf-16-be`` where the bytes are UTF-16 text without a byte order mark (Python's
    ``encoding="utf-16-le"``, iconv's ``-t UTF-16LE``), else None. JSON text starts with ASCII (``{"``, ``[``), which
    UTF-16 writes as a zero byte every other byte; valid UTF-8 JSON holds no zero byte. Its first 16 characters
    are looked at (where one of them is no ASCII the file is read as UTF-8, as before)."""
    head = data[:32]
    if len(head) < 4 or len(head) % 2:
        return None
    for codec, zeros, text in (("utf-16-le", head[1::2], head[0::2]), ("utf-16-be", head[0::2], head[1::2])):
        if not zeros.strip(b"\0") and b"\0" not in text:
            return codec
    return None


def utf16_reason(data: bytes) -> str | None:
    """Why a JSON lines file in UTF-16 is refused whole (:data:`UTF16_REASON`, or its kind without a byte order
    mark: :func:`utf16_without_bom`); None for any other file."""
    if data.startswith(UTF16_BOMS):
        return UTF16_REASON
    if (codec := utf16_without_bom(data)) is not None:
        said = codec.upper().replace("UTF-16-", "UTF-16")
        return (f"the file is {said} text without a byte order mark, not UTF-8: convert it (iconv -f {said} -t UTF-8, "
                "or Python's open(path, encoding='utf-8') when writing it)")
    return None


def utf16_codec(data: bytes) -> str | None:
    """The codec that decodes a UTF-16 file (with its byte order mark or without: :func:`utf16_reason`), else None."""
    return "utf-16" if data.startswith(UTF16_BOMS) else utf16_without_bom(data)


#: A file named ``.gz`` of 0 bytes: no gzip stream (one holds a header at least; ``gzip -t`` says "unexpected end of
#: file"), but an upload or copy that failed. Python's ``gzip.decompress`` reads it as no bytes, so it was a shard of
#: no rows, committed, and the real file uploaded later under its name was changed input; it is unreadable, rows
#: unknown, as a gzip file cut short is.
EMPTY_GZIP_REASON = ("the file is empty (0 bytes), and a gzip file never is (it holds a header at least): an upload or "
                     "copy that failed? Put the whole file in its place")

#: How the files of the compressions a JSON lines file may come in begin: (first bytes, what it is, its own tool's
#: command that decompresses it to standard output). Only gzip is read, in a file named ``.gz``; the bytes of another
#: were read as text, a row of ``not valid UTF-8`` for each newline byte they happened to hold instead of the rows.
COMPRESSIONS = (
    (re.compile(rb"\x1f\x8b"), "gzip", "gzip -dc"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd", "zstd -dc"),
    (re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)"), "bzip2", "bzip2 -dc"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz", "xz -dc"),
    (re.compile(rb"\x04\x22\x4d\x18"), "lz4", "lz4 -dc"),
    (re.compile(rb"PK\x03\x04"), "zip", "unzip -p"),
)


def compression_of(data: bytes) -> str | None:
    """The compression a file's bytes begin as (``zstd``, ``gzip``, ...: see :data:`COMPRESSIONS`), or None. No JSON
    text begins so: each starts with a byte that is no UTF-8 or a letter that no JSON value starts with."""
    return next((name for magic, name, _ in COMPRESSIONS if magic.match(data)), None)


#: How a Parquet file starts (and ends).
PARQUET_MAGIC = b"PAR1"
#: How a file of JSON starts (white space and a byte order mark before it): a Parquet file never does.
JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*[{\[]")


def json_reason(data: bytes, gz_named: bool) -> str | None:
    """Why a file under a Parquet name whose bytes (decompressed, where its name says gzip) are JSON is refused whole,
    with how to read it; None where they are not (the first bytes suffice)."""
    if data.startswith(PARQUET_MAGIC) or JSON_START.match(data) is None:
        return None
    return ("the file is JSON (its bytes start with { or [), not Parquet: give it a .jsonl name "
            f"(NAME.jsonl{'.gz' if gz_named else ''}) to be read as JSON lines")


#: A Git LFS pointer file's first line, and the size it names (what a clone holds in place of a file not pulled).
LFS_POINTER = re.compile(rb"version https://git-lfs\.github\.com/spec/v\d+\r?\n")
LFS_SIZE = re.compile(rb"(?m)^size (\d+)\r?$")
#: A git-annex pointer file (an unlocked file not fetched): the path of its object, its key, on one line.
ANNEX_POINTER = re.compile(rb"/annex/objects/(\S+)\r?\n?")
#: A pointer file is a few lines (Git LFS: about 130 bytes): a larger file is none.
POINTER_BYTES = 1024


def pointer_reason(data: bytes) -> str | None:
    """Why a file's bytes are a pointer to a file in a Git LFS or git-annex store that was not fetched (a clone
    without ``git lfs pull`` or ``git annex get``) rather than the file, with how to fetch it; None where they are
    not. Read as its bytes, such a file was a few broken rows (JSON lines) or an unreadable Parquet file, the real
    file's rows in no output."""
    if len(data) > POINTER_BYTES:
        return None
    if LFS_POINTER.match(data):
        size = LFS_SIZE.search(data)
        named = f" of {int(size.group(1)):,} bytes" if size else ""
        return (f"a Git LFS pointer to a file{named}, not the file (a clone without `git lfs pull`): fetch it with "
                "`git lfs pull`, then run again")
    if ANNEX_POINTER.fullmatch(data):
        return ("a git-annex pointer, not the file (an unlocked file not fetched): fetch it with `git annex get`, then "
                "run again")
    return None


def compression_reason(data: bytes, gz_named: bool) -> str | None:
    """Why a JSON lines file whose bytes (after the gzip decompression its ``.gz`` name asks for) are compressed, or
    are a Parquet file's, is refused whole, with how to make it readable; None when they are neither. (Read as text,
    such bytes were a few rows of ``not valid UTF-8``, its rows unread.)"""
    if data.startswith(PARQUET_MAGIC):
        return ("the file is Parquet (its bytes start with PAR1), not JSON lines: give it a .parquet name "
                f"(NAME.parquet{'.gz' if gz_named else ''}) to be read as Parquet")
    kind = compression_of(data)
    if kind is None:
        return None
    tool = next(command for _, name, command in COMPRESSIONS if name == kind)
    if kind == "gzip" and not gz_named:
        return ("the file is gzip-compressed, but its name does not end in .gz, by which gzip files are known: "
                "rename it to end in .gz (NAME.jsonl.gz) to be read")
    if kind == "gzip":
        return "the file is gzip-compressed twice (its bytes are gzip again once decompressed): decompress it once"
    return (f"the file is {kind}-compressed, and only gzip files (named .gz) are decompressed: decompress it "
            f"(`{tool} FILE > NAME.jsonl`) or make it gzip (`{tool} FILE | gzip > NAME.jsonl.gz`)")


#: A UTF-8 byte order mark, and marks after a newline: at the start of a line, where ``cat`` of files saved with one
#: puts it (Notepad, PowerShell 5's ``Out-File -Encoding utf8`` write one; a file of just the mark puts two in a row).
BOM = codecs.BOM_UTF8
LINE_BOM = b"\n" + BOM
LINE_BOMS = re.compile(rb"\n(?:\xef\xbb\xbf)+")


def without_marks(data: bytes) -> bytes:
    """JSON lines with the byte order marks at the start of the file and of any line left out, and DOS end-of-file
    marks (``\\x1a``) at the end of any line, the lines kept: a line of marks alone is left blank, which is no row,
    so rows keep their places. JSON allows none there, and a line starts after a newline (no JSON string holds one,
    nor a ``\\x1a``), so nothing else is touched."""
    while data.startswith(BOM):
        data = data[len(BOM) :]
    if DOS_EOF in data:
        data = DOS_EOFS.sub(b"", data)
    return LINE_BOMS.sub(b"\n", data) if LINE_BOM in data else data


#: DOS's end-of-file mark, which old Windows tools (``copy /a``, some editors) write after a text file's last line.
DOS_EOF = b"\x1a"
#: Marks at a line's end, with any ``\r`` between them (``\x1a\r\x1a``): all of them at once, so that stripping
#: what was stripped changes nothing (the plan strips the lines of an object cut by its chunks again).
DOS_EOFS = re.compile(rb"\x1a(?:\r*\x1a)*(?=\r?(?:\n|$))")


#: A line whose first value is ``null``, after a ``\n`` or a ``\r`` (pyarrow ends a line at either), white space and
#: byte order marks before it: pyarrow skips a mark where a block starts (a file saved by Notepad, ``cat`` of such
#: files after an old Mac ``\r``, which :func:`without_marks` leaves) and crashes on the ``null`` after it all the same.
#: Two patterns that start with their byte: searched about 10x faster than one that starts with a choice of them.
NULL_LINES = (re.compile(rb"\n(?:[ \t\r\n]|\xef\xbb\xbf)*null"), re.compile(rb"\r(?:[ \t\r\n]|\xef\xbb\xbf)*null"))
LEADING_SPACE = re.compile(rb"(?:[ \t\r\n]|\xef\xbb\xbf)*")


def null_line(data: bytes, start_only: bool = False) -> bool:
    """Whether a line of the bytes (the first only, with ``start_only``) starts with the value ``null``. Where a block
    that pyarrow reads starts with one (a file's first line, any line a 1 MiB block starts at) pyarrow 26 crashes the
    process (a segmentation fault): such bytes are read line by line, where that line is a row of its own error, as
    any value that is no object is. About 45 ms per 70 MB searched, where pyarrow reads them in about 550."""
    if data.startswith(b"null", LEADING_SPACE.match(data).end()):  # type: ignore[union-attr]
        return True
    return not start_only and any(lines.search(data) is not None for lines in NULL_LINES)


#: How deep a line's values may nest for pyarrow to read it: pyarrow 26 recurses as deep as the values nest, and a line
#: 18,000 levels deep overflows an 8 MiB stack (a segmentation fault; 16,000 read): half that, so that a line nested a
#: few thousand levels (past Python's limit of about 1,000, :func:`parse_line`) is still read by pyarrow, as before.
DEEPEST = 8_000


#: Every byte but brackets and line ends, which :func:`deep_line` leaves out first (about 55 ms per 70 MB).
NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"{[]}\n\r")


def deep_line(data: bytes) -> bool:
    """Whether a line of the bytes (ended by a ``\\n`` or a ``\\r``, as pyarrow ends one) may nest its values
    :data:`DEEPEST` levels or more, which would crash pyarrow: such bytes are read line by line. Its brackets alone
    are looked at, their rise over their lowest level on the line before (brackets in strings can only make it more)
    bounds its depth. About 90 ms per 70 MB of lines of flat records (0.5 s where they are 25% brackets)."""
    brackets = data.translate(None, NOT_BRACKETS)
    if len(brackets) < DEEPEST:
        return False
    array = np.frombuffer(brackets, np.uint8)
    ends = (array == 0x0A) | (array == 0x0D)
    steps = ((array == 0x7B) | (array == 0x5B)).astype(np.int64) - ((array == 0x7D) | (array == 0x5D))
    levels = np.cumsum(steps)
    line = np.cumsum(ends)  # a line's end starts the next line, at its level 0
    levels -= np.concatenate(([0], levels[ends]))[line]  # each line's levels from 0 at its start
    levels -= line * (len(array) + 1)  # each line below all before it: the running lowest level is its own line's
    return bool((levels - np.minimum(np.minimum.accumulate(levels), 0 - line * (len(array) + 1))).max() >= DEEPEST)


def read_jsonl(data: bytes, columns: Columns) -> pa.Table:
    """JSON lines into a table (:func:`_read_jsonl`). A file that is one JSON object holding the rows as a list under
    a key (``{"data": [{...}, ...]}``, as APIs and dataset viewers export them) is refused whole, saying so (it read as
    one row of ``missing column``, its rows unread, under the error budget beside other files)."""
    table = _read_jsonl(data, columns)
    if table.num_rows == 1 and (found := one_object_rows(data, columns.text)) is not None:
        raise ValueError(found[1])
    return table


def _one_object(data: bytes) -> dict[str, Any] | None:
    """The file's one JSON object, or None where it is none (or no JSON)."""
    try:
        value = json.loads(without_marks(data))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def one_object_rows(data: bytes, text: str) -> tuple[int, str] | None:
    """The rows of a file that is one JSON object holding them, and why it is refused whole (how to write them as
    lines): lists of objects under keys, where the object has no ``text`` (the text column) of its own
    (:func:`wrapped_rows`), or pandas' column layout (:func:`column_rows`); else None. What a run refuses, its record
    and ``pipelines plan`` count: one function, so they agree."""
    value = _one_object(data)
    if value is None:
        return None
    found = wrapped_rows(value, text) if value.get(text) is None else []
    if found:
        return sum(len(rows) for _, rows in found), wrapped_reason(found)
    if (count := column_rows(value, text)) is not None:
        return count, (f"the file is one JSON object holding {count} rows as columns (pandas' to_json() default), "
                       'not JSON lines: write them with to_json(NAME.jsonl, orient="records", lines=True)')
    return None


def wrapped_rows(value: dict[str, Any], text: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """The keys and rows of one JSON object holding non-empty lists of objects under keys: those whose objects hold
    ``text`` (the text column: the rows beside a list of errors; a dataset's splits, each a list of rows), or where
    the object holds one such list only, that one whatever its objects hold (none: ``[]``)."""
    lists = [(key, rows) for key, rows in value.items()
             if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows)]
    return [(key, rows) for key, rows in lists if any(text in row for row in rows)]


def column_rows(value: dict[str, Any], text: str) -> int | None:
    """How many rows one JSON object holds as columns, each an object of the same row keys (pandas' default
    ``DataFrame.to_json()``, ``{"id": {"0": …}, "text": {"0": …}}``), the text column ``text`` among them (alone,
    its keys must be row numbers, as pandas writes them: else it is one row whose text is an object); else None."""
    if text not in value:
        return None
    columns = list(value.values())
    if not all(isinstance(column, dict) and column for column in columns):
        return None
    keys = set(columns[0])
    if len(value) == 1 and not all(key.isdigit() for key in keys):
        return None
    return len(keys) if all(set(column) == keys for column in columns) else None


def wrapped_reason(found: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """Why a file of rows wrapped in one object (:func:`wrapped_rows`) is not read, and how to write them as lines."""
    rows = sum(len(rows) for _, rows in found)
    keys = [json.dumps(key) for key, _ in found]
    sizes = [f"{key} ({len(rows)})" for key, (_, rows) in zip(keys, found, strict=True)]
    where = f"as a list under {keys[0]}"
    if len(found) > 1:
        where = f"as lists under {', '.join(sizes[:-1])} and {sizes[-1]}"
    paths = ", ".join(f".[{key}][]" for key in keys)
    return (f"the file is one JSON object holding {rows} rows {where}, not JSON lines: "
            f"`jq -c '{paths}' FILE > NAME.jsonl` writes them one a line")


def _read_jsonl(data: bytes, columns: Columns) -> pa.Table:
    """JSON lines into a table, one row per non-blank line; bad lines become rows with an ``_error``.

    JSON strings are read as the strings they are written as, in every column the job reads (kept
    columns too, inside their lists and structs): where pyarrow's type inference turned one into
    something else (an id "2024-01-02" into a timestamp), the file is read again with those columns
    declared as text (see :func:`as_written`). Ids written as numbers pyarrow reads as floats (1.10, or
    integers past 2**63, which it rounds: two ids would become one) are read line by line, as written (and ids
    that are objects or lists, which pyarrow would give every key seen in the file), and
    so is a file with a kept column of floats past 2**53 (an integer past 2**63, or one past 2**53 beside a float,
    which pyarrow rounds: there it is text or a row error, see :func:`_read_jsonl_lines`). A byte order mark at
    the start of a line is skipped (:func:`without_marks`).
    """
    data = without_marks(data)
    if (values := json_array(data)) is not None:
        return _read_json_array(values, columns)
    if (broken := broken_array(data)) is not None:  # lines of it are no rows: refused whole
        raise ValueError(broken)
    if (stream := json_stream(data)) is not None:
        values, problem = stream
        if problem is not None:
            raise ValueError(problem)
        return _read_json_array(values, columns, "a JSON value of the file")
    if null_line(data) or deep_line(data):
        return _read_jsonl_lines(data, columns)
    try:
        table = pajson.read_json(io.BytesIO(data))
        id_type = table.schema.field(columns.id).type if columns.id in table.column_names else None
        if id_type is not None and (pa.types.is_floating(id_type) or pa.types.is_nested(id_type)):
            return _read_jsonl_lines(data, columns)  # objects as written too: keys in their order, none added
        if any(name in table.column_names and _past_int64(table.column(name)) for name in columns.keep):
            return _read_jsonl_lines(data, columns)
        retyped = [
            field.with_type(as_written(field.type))
            for field in table.schema
            if field.name in columns.all and as_written(field.type) != field.type
        ]
        if retyped:
            schema = pa.schema(retyped)
            table = pajson.read_json(io.BytesIO(data), parse_options=pajson.ParseOptions(explicit_schema=schema))
        for name in columns.all:  # bytes that are no UTF-8 text: each line on its own, so that they cost their row
            if name in table.column_names:
                table.column(name).validate(full=True)
        return _with_error_column(table.select([c for c in columns.all if c in table.column_names]), table.num_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):  # UnicodeDecodeError: a key that is no UTF-8
        return _read_jsonl_lines(data, columns)


def as_written(type_: pa.DataType) -> pa.DataType:
    """The type of JSON values that pyarrow inferred as ``type_``, with the types it infers from JSON strings
    (timestamps, dates: ``"2024-01-02T10:00:00+02:00"`` loses its offset) made text again, in lists and structs too.
    """
    if pa.types.is_timestamp(type_) or pa.types.is_date(type_) or pa.types.is_time(type_):
        return pa.string()
    if pa.types.is_struct(type_):
        return pa.struct([type_.field(i).with_type(as_written(type_.field(i).type)) for i in range(type_.num_fields)])
    if pa.types.is_list(type_):
        return pa.list_(type_.value_field.with_type(as_written(type_.value_type)))
    return type_


def _past_int64(column: Any) -> bool:
    """Whether pyarrow read a JSON column as floats of which one is 2**53 or more (in its structs and lists too): an
    integer it rounded, maybe (past 2**63, or one past 2**53 in a column that also holds a float)."""
    type_ = column.type
    if pa.types.is_floating(type_):
        return (pc.max(pc.abs(column)).as_py() or 0) >= 2**53
    if pa.types.is_struct(type_):
        return any(_past_int64(pc.struct_field(column, [i])) for i in range(type_.num_fields))
    if pa.types.is_list(type_):
        return _past_int64(pc.list_flatten(column))
    return False


def _big_integer(value: Any) -> int | None:
    """The first integer in a JSON value (in its lists and objects too) that no int64 holds, or None (Python's
    ``json`` reads it exactly; pyarrow rounds it to a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if -(2**63) <= value < 2**63 else value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return next((found for item in value if (found := _big_integer(item)) is not None), None)
    return None


#: A file that starts with ``[`` (after any byte order mark and white space) may be one JSON array.
ARRAY_START = re.compile(rb"\s*\[")


SPACE = re.compile(r"\s*")
REST_IS_SPACE = re.compile(r"\s*\Z")


#: What may stand before a file's first value and is no value: white space, byte order marks and DOS end-of-file
#: marks at a line's end (:func:`without_marks` leaves them out before the file is read).
LEADING_MARKS = re.compile(rb"(?:\xef\xbb\xbf)*(?:\s|(?<=\n)\xef\xbb\xbf|\x1a(?:\r*\x1a)*(?=\r?(?:\n|$)))*")


def array_start(data: bytes) -> bool:
    """Whether the bytes may begin one JSON array: ``[`` after any white space, byte order marks and DOS end-of-file
    marks (:data:`LEADING_MARKS`). Looks at the start only (every JSON lines shard passes here: no scan of the
    rest)."""
    return data.startswith(b"[", LEADING_MARKS.match(data).end())  # type: ignore[union-attr]


def json_array(data: bytes) -> list[Any] | None:
    """The elements of a file that is one JSON array (``json.dump(rows, f)``, pandas' ``to_json(orient="records")``),
    or None: JSON lines. A file that starts with ``[`` but is not one array (JSON lines of arrays) is read as lines,
    found at the end of its first value. Bytes that are no UTF-8 are read as lone surrogates (U+DC80-U+DCFF),
    which cost the row that holds them."""
    if not array_start(data):
        return None
    data = without_marks(data)
    start = ARRAY_START.match(data)
    if not start:
        return None
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        value, end = json.JSONDecoder(parse_float=WrittenFloat.parse).raw_decode(text, start.end() - 1)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, list) and REST_IS_SPACE.match(text, end) else None


def broken_array(data: bytes) -> str | None:
    """Why a file that is one JSON array does not parse as one (cut short, an element broken, more after it), or
    None: it parses, or it is no array, or it is JSON lines of arrays (its first line is a JSON value)."""
    if not array_start(data):
        return None
    text = without_marks(data).decode("utf-8", errors="surrogateescape")
    start = SPACE.match(text).end()  # type: ignore[union-attr]
    end = text.find("\n", start)
    try:
        json.loads(text[start:] if end < 0 else text[start:end])
        return None  # the first line is a value: JSON lines (of arrays), read line by line
    except RecursionError:
        return None
    except ValueError:
        pass
    following = next((line for line in text[end + 1:].split("\n", 8)[:8] if line.strip()), None) if end >= 0 else None
    if following is not None and _is_json(following):
        return None  # JSON lines whose first line is broken (`[2024-06-01 export]`): that line costs its row alone
    fix = "mend the file there (then `jq -c '.[]' FILE > NAME.jsonl` writes one element a line)"
    try:
        _, stop = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        return f"a JSON array that stops parsing at line {exc.lineno} ({exc.msg}); {fix}"
    except RecursionError:
        return f"a JSON array nested too deeply; {fix}"
    more = SPACE.match(text, stop).end()  # type: ignore[union-attr]  # where what follows the array starts
    return f"a JSON array followed by more at line {text.count(chr(10), 0, more) + 1}; {fix}"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def array_head(head: bytes, refused: bool = False) -> list[Any] | None:
    """The whole elements at the start of the first bytes of a file that is one JSON array (cut anywhere, as a
    sample or a count's prefix is), or None where they are JSON lines (the first value ends, and more follows).
    ``refused``: the file is one array that does not parse as one (:func:`broken_array`), so what follows its first
    value, or an element not followed by a comma, ends the elements it stands for instead."""
    if not array_start(head):
        return None
    head = without_marks(head)
    start = ARRAY_START.match(head)
    if not start:
        return None
    text = head.decode("utf-8", errors="ignore")  # a character cut at the end of the head is left out
    decoder = json.JSONDecoder()
    values: list[Any] = []
    at = start.end()
    while True:
        at = SPACE.match(text, at).end()  # type: ignore[union-attr]
        if at >= len(text):
            return values
        if text[at] == "]":
            return values if refused or REST_IS_SPACE.match(text, at + 1) else None
        try:
            value, at = decoder.raw_decode(text, at)
        except (json.JSONDecodeError, RecursionError):
            return values  # cut inside an element
        values.append(value)
        at = SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text.startswith(",", at):
            at += 1
        elif at < len(text) and text[at] != "]":
            return values if refused else None  # no array: JSON lines of arrays, or no JSON


def stream_start(data: bytes, cut: bool = False) -> bool:
    """Whether the bytes begin with a JSON object written over several lines (``jq .`` without ``-c`` writes each
    so, as ``json.dump(row, f, indent=2)`` does): the first line of text (after blank lines and marks,
    :data:`LEADING_MARKS`) starts an object but is no JSON value, and the object that starts there ends on a later
    line. Parses the first value only, and only where the first line does not parse (JSON lines' first line does,
    but where it is broken). Looks at the bytes as a run reads them (:func:`without_marks`: a mark inside the first
    object is left out there too), so the plan's count and the run's read agree. ``cut``: the bytes are a file's
    first ones only (the plan's first chunk), so that an object that goes on past their end may be one: the caller
    reads on (:func:`json_stream` tells)."""
    start = LEADING_MARKS.match(data).end()  # type: ignore[union-attr]  # blank lines, and marks on lines of their own
    end = data.find(b"\n", start)
    first = without_marks(data[start:end])
    if end < 0 or not first.lstrip().startswith(b"{"):
        return False
    try:
        json.loads(first)
        return False  # JSON lines: told from the first line alone, the file's other marks not searched for
    except RecursionError:  # nested past Python's limit: a line of JSON lines (pyarrow reads it), not {
        return False
    except ValueError:
        pass
    data = without_marks(data)
    text = data[LEADING_MARKS.match(data).end():].decode("utf-8", errors="surrogateescape")  # type: ignore[union-attr]
    try:
        value, stop = json.JSONDecoder().raw_decode(text, SPACE.match(text).end())  # type: ignore[union-attr]
    except json.JSONDecodeError as exc:
        return cut and exc.pos >= len(text)  # else a broken first line of JSON lines
    except RecursionError:
        return False
    return isinstance(value, dict) and "\n" in text[:stop]


def json_stream(data: bytes) -> tuple[list[Any], str | None] | None:
    """The values of a file of JSON objects written over several lines each (:func:`stream_start`), one after the
    other (an object on one line among them too), and why reading stopped before the end (a value that does not
    parse, or a file cut inside one: past it no value's start can be told), else None; or None: JSON lines. Bytes
    that are no UTF-8 are read as lone surrogates (U+DC80-U+DCFF), which cost the row that holds them."""
    if not stream_start(data):
        return None
    text = without_marks(data).decode("utf-8", errors="surrogateescape")
    decoder = json.JSONDecoder(parse_float=WrittenFloat.parse)
    values: list[Any] = []
    at = 0
    while (at := SPACE.match(text, at).end()) < len(text):  # type: ignore[union-attr]
        try:
            value, at = decoder.raw_decode(text, at)
        except (json.JSONDecodeError, RecursionError) as exc:
            line = text.count("\n", 0, at) + 1
            said = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            return values, (  # short: a file's reason is cut at 200 characters
                f"JSON objects over several lines (as `jq .` writes them) that stop parsing at line {line} ({said}); "
                "mend the file there (then `jq -c . FILE > FILE.jsonl` puts one a line)"
            )
        values.append(value)
    return values, None


def _read_json_array(values: list[Any], columns: Columns, each: str = "an element of a JSON array") -> pa.Table:
    """A JSON array file's elements (or a :func:`json_stream`'s values) as rows, in their order: each must be an
    object, as a JSON line must (``each``: what a value is called where it is not)."""
    records: list[dict[str, Any]] = []
    errors: list[str | None] = []
    for value in values:
        if isinstance(value, dict):
            records.append(value)
            errors.append(drop_lone_surrogates(value, columns.all, undecoded=True))
        else:
            records.append({})
            errors.append(f"{each} must be an object, got {type(value).__name__}")
    return _records_table(records, errors, columns)


def _read_jsonl_lines(data: bytes, columns: Columns) -> pa.Table:
    """The slow path for files pyarrow rejects: line by line, so one bad line costs one row."""
    records: list[dict[str, Any]] = []
    errors: list[str | None] = []
    data = without_marks(data)  # pyarrow skips a byte order mark at the start of the file too
    for number, line, _ in data_pieces(data, data.split(b"\n")):  # an object over several lines: one row, as pyarrow's
        if not line.strip():
            continue
        line = without_tail(line)
        record, error = parse_line(line, numbers_as_written=True, number=number)
        if several(line, error):
            parsed = line_values(line, number, columns=columns)
        elif error is not None and error.startswith("not valid UTF-8"):
            parsed = [_bytes_unread(line, number, columns, (record, error))]
        else:
            parsed = [(record, error)]
        for record, error in parsed:
            records.append(record)
            errors.append(error or drop_lone_surrogates(record, columns.all))
    return _records_table(records, errors, columns)


def _bytes_unread(
    line: bytes, number: int, columns: Columns, refused: tuple[dict[str, Any], str | None]
) -> tuple[dict[str, Any], str | None]:
    """A line that is no UTF-8 (``refused``: its record and reason) as its record where those bytes lie only in values
    of columns the job does not read, as pyarrow reads such a line (it checks the job's columns only); else
    ``refused``. So a file read line by line (a float id, a line of ``null``, one bad line anywhere) keeps the rows it
    keeps where pyarrow reads it."""
    record, error = parse_line(line, numbers_as_written=True, undecoded=True, number=number)
    if error is not None or lone_surrogate(list(record)) is not None:  # a key that is no UTF-8: pyarrow refuses it
        return refused
    if any(lone_surrogate(record.get(name)) is not None for name in columns.all):
        return refused
    return record, None


#: How a line that holds more than one JSON value fails to parse as one.
EXTRA_DATA = "invalid JSON: Extra data"
#: How a line nested past Python's limit fails: pyarrow reads it, and any value after it on the line (each a row).
NESTED = "invalid JSON: nested too deeply"
#: A line that may hold several JSON values: one object ends and another starts (maybe after a ``\\r``, a comma, NUL
#: bytes or ``\\x1a``, which are no value there: :data:`AFTER_OBJECT`), or a ``null`` does, which pyarrow reads as a
#: row of its own (where a byte that is no UTF-8 lies in a column the job does not read, it reads the object as a row
#: too: so many rows are counted and read line by line).
GLUED = re.compile(rb"\}[ \t\r,\x00\x1a]*(?:\xef\xbb\xbf)*(?:\{|null)")


#: What may end a line after its last object besides white space, no value of its own (see :data:`AFTER_OBJECT`).
LINE_TAIL = b", \t\r\x00\x1a"


def without_tail(line: bytes) -> bytes:
    """A line without what follows its last object and is no value (:data:`LINE_TAIL`: an array's lines with its
    brackets stripped end in ``,``); a line that does not end in an object after it is left as it is (``1,``, a CSV's
    line, is as broken as it was)."""
    if not line or line[-1] not in LINE_TAIL:
        return line
    trimmed = line.rstrip(LINE_TAIL)
    return trimmed if trimmed.endswith(b"}") else line


#: NUL bytes and an object after them: a block of them that a crash left (a file's unwritten end, zeroed), then what
#: was written after it. No JSON value holds a NUL byte (nor a string: it is a control character), so what stood
#: before the block on its line is cut, and the object after it starts a value.
#: Matched from the start of a run of NULs only (a search from each NUL of a long run would take quadratic time).
NULS_BEFORE_OBJECT = re.compile(rb"(?<!\x00)\x00+[ \t\r]*(?:\xef\xbb\xbf)*\{")
#: The same in a line decoded as text, up to the object.
NULS_BEFORE_OBJECT_TEXT = re.compile("(?<!\x00)\x00+[ \t\r\ufeff]*(?=\\{)")


def several(line: bytes, error: str | None) -> bool:
    """Whether a line that did not parse as one record (``error``: why) may hold several values: it holds more after
    its first, or one nested past Python's limit (which pyarrow reads, and what follows it), or it is no UTF-8 where
    one object ends and another (or a ``null``) starts (a record's byte then costs that record), or it holds NUL bytes
    before an object (:data:`NULS_BEFORE_OBJECT`)."""
    return error is not None and (
        error.startswith((EXTRA_DATA, NESTED))
        or (error.startswith("not valid UTF-8") and GLUED.search(line) is not None)
        or (b"\x00" in line and NULS_BEFORE_OBJECT.search(line) is not None))


class LinesCount(NamedTuple):
    """How many rows the reader makes of lines (:func:`lines_rows`)."""

    rows: int
    #: The lines not counted: from a line that opens an object the lines end inside of (a caller reading in chunks
    #: hands them on with the next).
    held: list[bytes]
    #: How many of the rows are objects written over several lines.
    spanning: int = 0


def lines_rows(lines: list[bytes], nuls: bool = True, last: bool = True) -> LinesCount:
    """How many rows the reader makes of these lines (:func:`line_pieces`), and the lines from one that opens an
    object the lines end inside of, unless they are the ``last`` of the file. Each line is :func:`line_rows`; the
    lines that it would parse (nested objects, a ``}`` in a string) are handed to pyarrow together first: where it
    reads each as one row, each is one (about 4x faster than parsing them one by one in Python); else each is counted
    on its own. ``nuls``: whether any line may hold a NUL byte (a caller that searched its chunk once says where none
    does)."""
    plain = [_plain_rows(line, nuls) for line in lines]
    nested = [line for line, rows in zip(lines, plain, strict=True) if rows is None]
    joined = b"\n".join(nested)
    if nested and _opens_any(lines, plain, closed_lines(joined)):  # objects over several lines among them
        return _pieces_rows(lines, last)
    return LinesCount(sum(count for count in plain if count is not None) + _nested_rows(nested, joined), [])


def _opens_any(lines: list[bytes], plain: list[int | None], closed: bool) -> bool:
    """Whether a line that :func:`_plain_rows` can't tell (``plain``: its counts) opens an object over several lines;
    ``closed``: those lines are :func:`closed_lines`, so only the last of them may (what follows it is not here)."""
    if closed:  # the last of them alone, found from the end (a chunk holds tens of thousands of lines)
        at = [len(plain) - 1 - plain[::-1].index(None)]
    else:
        at = [index for index, rows in enumerate(plain) if rows is None]
    for index in at:
        following = lines[index + 1] if index + 1 < len(lines) else None
        if opens_object(without_marks(lines[index]), following):
            return True
    return False


def _pieces_rows(lines: list[bytes], last: bool) -> LinesCount:
    """:func:`lines_rows` of lines among which one opens an object over several lines: each such object one row, the
    other lines counted together."""
    spanning = 0
    others: list[bytes] = []
    held: list[bytes] = []
    lines = [without_marks(line) for line in lines]
    for number, piece, spans in line_pieces(lines, last=last):
        if spans is None:  # an object the lines end inside of: counted with the lines after them
            held = [piece, *lines[number:]]
            break
        if spans:
            spanning += 1
        else:
            others.append(piece)
    plain = [_plain_rows(line) for line in others]
    nested = [line for line, rows in zip(others, plain, strict=True) if rows is None]
    return LinesCount(spanning + sum(count for count in plain if count is not None) + _nested_rows(nested), held,
                      spanning)


def _nested_rows(nested: list[bytes], joined: bytes | None = None) -> int:
    """How many rows the reader makes of lines that :func:`_plain_rows` can't tell, each on its own (``joined``: the
    lines joined by newlines, where the caller has them)."""
    rows = 0
    if not nested:
        return rows
    joined = b"\n".join(nested) if joined is None else joined
    if len(nested) > 1 and not null_line(joined) and not deep_line(joined):
        try:
            if pajson.read_json(io.BytesIO(joined)).num_rows == len(nested):
                return rows + len(nested)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    return rows + sum(line_rows(line) for line in nested)


def opens_object(line: bytes, following: bytes | None = None) -> bool:
    """Whether a line (its marks left out, :func:`without_marks`) opens a JSON object that it does not end: it starts
    with ``{`` and parsed alone it runs out of bytes (``{``, ``{"id": 1,``, ``{"meta": {"a": 1}``), not into one that
    is wrong (a string cut short). Not parsed where it ends with ``}`` and the ``following`` line starts with ``{``:
    no object goes on so (after an inner object's ``}`` comes ``,``, ``}`` or ``]``; a line's end is in no string)."""
    start = line.lstrip(b" \t\r")
    if not start.startswith(b"{"):
        return False
    if (following is not None and start.rstrip(b" \t\r").endswith(b"}")
            and following.lstrip(b" \t\r").startswith(b"{")):
        return False
    text = start.decode("utf-8", errors="surrogateescape")
    try:
        json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        return exc.pos >= len(text)
    except RecursionError:
        return False
    return False  # a value, and maybe more after it on the line


#: How many lines after the one that opens an object are parsed with it first (doubled while the object goes on).
OBJECT_LINES = 16


def object_over_lines(lines: list[bytes], at: int, first: bytes) -> tuple[bytes, int, bytes | None] | None | bool:
    """The object that ``first`` (the line ``lines[at]``, or what is left of it) opens (:func:`opens_object`), where
    it ends on a later line: its bytes (the lines joined as they were), the index of that line, and what follows the
    object on it past what may follow an object (:data:`AFTER_OBJECT`), if anything; None where the lines do not
    make one object (a line cut short, then the next line); False where they end inside it."""
    decoder = json.JSONDecoder()
    width = OBJECT_LINES
    while True:
        stop = min(at + 1 + width, len(lines))
        text = b"\n".join([first, *lines[at + 1 : stop]]).decode("utf-8", errors="surrogateescape")
        try:
            _, end = decoder.raw_decode(text, JSON_SPACE.match(text).end())  # type: ignore[union-attr]
            break
        except json.JSONDecodeError as exc:
            if exc.pos < len(text):
                return None
            if stop == len(lines):
                return False
            width *= 2
        except RecursionError:
            return None
    last = at + text.count("\n", 0, end)
    line_end = text.find("\n", end)
    tail = text[end:] if line_end < 0 else text[end:line_end]
    tail = tail[AFTER_OBJECT.match(tail).end():]  # type: ignore[union-attr]
    rest = tail.encode("utf-8", errors="surrogateescape") if tail else None
    return text[:end].encode("utf-8", errors="surrogateescape"), last, rest


def closed_lines(data: bytes) -> bool:
    """Whether no line of the bytes but the last may open an object that a later line ends: each line starts with
    ``{`` and each but the last ends with ``}`` (before a ``\\r``), as in every JSON lines file without blank lines or
    spaces at a line's start. So none does: where one opens an object (its ``}`` an inner object's), the next line,
    which starts with ``{`` after a value, is none of that object's. Told with numpy from where the newlines are, not a
    line at a time (0.7 ms for 4 MiB of lines, against 8 ms for counting byte pairs)."""
    array = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(array == NEWLINE)
    if not len(ends):
        return True
    if array[0] != OPEN:  # so every newline has a byte before it
        return False
    if not (array[ends[ends + 1 < len(array)] + 1] == OPEN).all():  # each line after a newline starts with {
        return False
    before = array[ends - 1]
    carriage = before == CARRIAGE
    before[carriage] = array[ends[carriage] - 2]  # the byte before a \r (never before 0: the byte at 0 is {)
    return bool((before == CLOSE).all())


NEWLINE, CARRIAGE, OPEN, CLOSE = b"\n"[0], b"\r"[0], b"{"[0], b"}"[0]


def data_pieces(data: bytes, lines: list[bytes]) -> Iterator[tuple[int, bytes, bool | None]]:
    """:func:`line_pieces` of ``lines``, the lines of ``data``; each line as it is, where no line of it may open an
    object over several lines (:func:`closed_lines`)."""
    if closed_lines(data):
        return ((number, line, False) for number, line in enumerate(lines, start=1))
    return line_pieces(lines)


def line_pieces(lines: list[bytes], last: bool = True) -> Iterator[tuple[int, bytes, bool | None]]:
    """The bytes of each row (or blank line) of JSON lines (their marks left out, :func:`without_marks`), in order:
    the number of the line it starts on (from 1), its bytes, and whether it spans several lines. Each line, but
    where a line opens an object (:func:`opens_object`) that ends on a later line (objects written over several
    lines after JSON lines, ``cat rows.jsonl more.json``), that object, as pyarrow reads it, and what follows it on
    its last line as a line of its own. A line that opens an object that the lines end inside of is one broken row
    where they are the ``last`` of the file; else it comes with ``None`` (and what is left of it), for the caller to
    read with the lines after these."""
    at = 0
    rest: bytes | None = None
    while at < len(lines):
        line, rest = (lines[at] if rest is None else rest), None
        following = lines[at + 1] if at + 1 < len(lines) else None  # none past the file's last line: no object on
        opens = (following is not None or not last) and opens_object(line, following)
        found = object_over_lines(lines, at, line) if opens else None
        if found is False and not last:
            yield at + 1, line, None
            return
        if not isinstance(found, tuple):
            yield at + 1, line, False
            at += 1
            continue
        piece, end, rest = found
        yield at + 1, piece, True
        at = end if rest is not None else end + 1


def line_rows(line: bytes) -> int:
    """How many rows the reader makes of one line (without its ``\\n``; byte order marks at its start skipped): none
    of a blank one, one of each value of a line that holds several (:func:`line_values`), else one. A line is parsed
    only where :func:`_plain_rows` can't tell."""
    if (plain := _plain_rows(line)) is not None:
        return plain
    line = without_tail(without_marks(line))
    _, error = parse_line(line)
    return len(line_values(line, 0)) if several(line, error) else 1


def _plain_rows(line: bytes, nuls: bool = True) -> int | None:
    """0 of a blank line; 1 of a line that is ``{`` with its only ``}`` at its end and no other ``{`` (an inner object's
    ``}`` may end a line its object goes on past: :func:`opens_object`) (between JSON's white space: a form
    feed after an object is a value that does not parse), where a first object that parses ends, and one that does
    not parse is one row, and no NUL byte is in it (NULs before an object: maybe two rows; ``nuls=False``: the caller
    knows there is none); else None (it may hold several values)."""
    line = without_marks(line)
    if not line.strip():
        return 0
    one = without_tail(line).strip(b" \t\r")
    plain = (one.startswith(b"{") and one.find(b"}") == len(one) - 1 and one.find(b"{", 1) < 0
             and not (nuls and b"\x00" in one))
    return 1 if plain else None


#: A byte that is no UTF-8, as ``surrogateescape`` decodes it.
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
#: What lies between JSON values on a line: JSON's own white space (a line's ``\r`` is one, where old Mac line ends
#: left it), and byte order marks (``cat`` of files saved with one, where a file before did not end in a newline).
JSON_SPACE = re.compile(r"[ \t\r\n\ufeff]*")
#: What may follow an object on a line besides white space, no value of its own: a comma (an array's lines with its
#: brackets stripped, ``{…},``; objects separated by commas), a DOS end-of-file mark (``\x1a``) and NUL bytes (a
#: block of them where a file was cut by a crash). Each was a quarantined row of its own, counted among the rows.
AFTER_OBJECT = re.compile(r"[ \t\r\n\ufeff,\x1a\x00]*")


def line_values(
    line: bytes, number: int, undecoded: bool = False, columns: Columns | None = None
) -> list[tuple[dict[str, Any], str | None]]:
    """The records of a line that holds several JSON values one after the other (written without a newline between
    them, or with a ``\\r`` alone), as pyarrow reads them: each a row, and so in every file, not only in those
    pyarrow reads. A comma, ``\\x1a`` or NUL bytes after an object are no value (:data:`AFTER_OBJECT`). What does not
    parse is one row, up to the line's next ``\\r`` (past it the values are read again) or up to the end of NUL bytes
    before an object (:data:`NULS_BEFORE_OBJECT`: what stood there is unknown, one row, as a line of them alone): its
    reason names the line and the column. Each value is checked as a line is (:func:`parse_line`), and one that holds
    bytes that are no UTF-8 costs its row, as such a line does (given the job's ``columns``: only where they lie in
    one of them or in a key, as pyarrow reads it and :func:`_bytes_unread` a line); with ``undecoded`` (as
    :func:`parse_line` takes it) such bytes are left in its values as lone surrogates, for the caller to find in the
    values that hold them (a Batch request keeps its ``custom_id``, as on a line of its own)."""
    text = line.decode("utf-8", errors="surrogateescape")  # bytes that are no UTF-8 as U+DC80-U+DCFF
    escaped = not undecoded and ESCAPED_BYTE.search(text) is not None
    decoder = json.JSONDecoder(parse_float=WrittenFloat.parse)
    found: list[tuple[dict[str, Any], str | None]] = []
    at = JSON_SPACE.match(text).end()  # type: ignore[union-attr]
    while at < len(text):
        try:
            start = at
            value, at = decoder.raw_decode(text, at)
            bad = ESCAPED_BYTE.search(text, start, at) if escaped else None
            if bad is not None and columns is not None and _unread_only(value, columns):
                bad = None  # in a column the job does not read: the object is its row, as on a line of its own
            if bad is not None:  # the byte counted in the line, as parse_line counts it
                byte = len(text[: bad.start()].encode("utf-8", errors="surrogateescape"))
                found.append(({}, f"not valid UTF-8 (line {number}, byte {byte})"))
            else:
                found.append(as_record(value, f"line {number}, ", number))
            if isinstance(value, dict):  # after what is no object a comma is no separator (a CSV's line)
                at = AFTER_OBJECT.match(text, at).end()  # type: ignore[union-attr]
        except (json.JSONDecodeError, RecursionError) as exc:
            said = f"{exc.msg} (line {number}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else (
                f"nested too deeply (line {number})")
            found.append(({}, f"invalid JSON: {said}"))
            stop = text.find("\r", getattr(exc, "pos", at))
            end = _value_end(text, start) if isinstance(exc, RecursionError) else None  # one too deep ends so
            nuls = NULS_BEFORE_OBJECT_TEXT.search(text, start) if "\x00" in text else None
            if nuls is not None and (stop < 0 or nuls.start() < stop) and _objects_to_end(text, nuls.end()):
                end = nuls.end()  # the objects after a crash's block are read
            at = end if end is not None else len(text) if stop < 0 else stop
        at = JSON_SPACE.match(text, at).end()  # type: ignore[union-attr]
    return found


def _objects_to_end(text: str, at: int) -> bool:
    """Whether the rest of the line from ``at`` parses as objects, one after the other (with what may follow one,
    :data:`AFTER_OBJECT`): what was written after a crash's block of NULs, not the rest of a record the block cut
    short (an object nested in it, whose row would be no input row)."""
    decoder = json.JSONDecoder()
    while at < len(text):
        try:
            value, at = decoder.raw_decode(text, at)
        except (json.JSONDecodeError, RecursionError):
            return False
        if not isinstance(value, dict):
            return False
        at = JSON_SPACE.match(text, AFTER_OBJECT.match(text, at).end()).end()  # type: ignore[union-attr]
    return True


def _unread_only(value: Any, columns: Columns) -> bool:
    """Whether the bytes that are no UTF-8 in an object (decoded as lone surrogates) lie only in values of columns the
    job does not read (not in a key, nor in one of ``columns``)."""
    return (isinstance(value, dict) and lone_surrogate(list(value)) is None
            and all(lone_surrogate(value.get(name)) is None for name in columns.all))


def _value_end(text: str, start: int) -> int | None:
    """Where an object or array at ``start`` ends (past its closing bracket), by its brackets outside strings; None
    where it does not end. For a value nested past Python's limit, which pyarrow reads with what follows it."""
    depth, in_string, escaped = 0, False, False
    for at in range(start, len(text)):
        char = text[at]
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return at + 1
    return None


def _records_table(records: list[dict[str, Any]], errors: list[str | None], columns: Columns) -> pa.Table:
    """Parsed JSON objects as the job's columns, plus their errors.

    An integer past 64 bits in a kept column is a row error where the job's type of the column is not text;
    where it is (or the column is new), the column is text, each value as written (see :func:`_column`).
    """
    table = {}
    types = dict(columns.keep_types)
    for name in columns.all:
        if not any(name in r for r in records):
            continue
        if name == columns.id:
            table[name] = pa.array([_as_text(r.get(name)) for r in records], pa.string())
            continue
        values = [r.get(name) for r in records]
        if name in columns.strings:
            values, errors = _strings_only(name, values, errors)
        elif (expected := types.get(name)) is not None and not _is_text(expected):
            values, errors = _no_big_integers(name, expected, values, errors)
            table[name], errors = _typed_column(name, expected, values, errors)
            continue
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
            kind = "float" if isinstance(value, WrittenFloat) else type(value).__name__
            reasons.append(error or f"{name} is not a string ({kind})")
    return kept, reasons


def _no_big_integers(
    name: str, expected: pa.DataType, values: list[Any], errors: list[str | None]
) -> tuple[list[Any], list[str | None]]:
    """Values that hold an integer past 64 bits become null, with the reason on their row: the job's type of the
    column can't hold it (a float would round it)."""
    kept, reasons = [], []
    for value, error in zip(values, errors):
        found = _big_integer(value)
        kept.append(value if found is None else None)
        reasons.append(error or (None if found is None else f"{name} holds an integer past 64 bits ({found}), "
                                 f"which its type in this job's output ({expected}) can't hold exactly"))
    return kept, reasons


def drop_lone_surrogates(record: dict[str, Any], names: Sequence[str], undecoded: bool = False) -> str | None:
    """The values of ``names`` that hold a lone surrogate become null (UTF-8, Arrow and Parquet can't hold one);
    the reason of the first, or None. Other values may hold one (a column the job does not read). ``undecoded``:
    the text was decoded with ``surrogateescape``, so U+DC80-U+DCFF stand for bytes that are no UTF-8."""
    reason = None
    for name in names:
        found = lone_surrogate(record.get(name))
        if found is not None:
            record[name] = None
            escaped = undecoded and "\\udc80" <= found <= "\\udcff"
            said = "is not valid UTF-8" if escaped else f"is not valid Unicode: a lone surrogate ({found})"
            reason = reason or f"{name} {said}"
    return reason


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a JSON value's strings (keys too), as its JSON escape (``\\ud83d``), or None.

    JSON may escape half of a surrogate pair: JavaScript writes ``"\\ud83d"`` of a string cut inside an emoji.
    It is no Unicode character (Python's ``json`` makes a whole pair one character, so what is left is alone).
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"\\u{ord(value[exc.start]):04x}"
        return None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next((found for item in value if (found := lone_surrogate(item)) is not None), None)
    return None


class WrittenFloat(float):
    """A JSON number with a fraction or an exponent, and its text as written (``1.10``, ``2e3``)."""

    text: str

    @classmethod
    def parse(cls, text: str) -> WrittenFloat:
        number = cls(text)
        number.text = text
        return number


def parse_line(
    line: bytes, numbers_as_written: bool = False, undecoded: bool = False, number: int | None = None
) -> tuple[dict[str, Any], str | None]:
    """One JSON line as an object, or the reason it is none. ``numbers_as_written``: floats as
    :class:`WrittenFloat`, so that an id keeps its text (integers are exact in Python already). ``undecoded``: bytes
    that are no UTF-8 are read as lone surrogates (U+DC80-U+DCFF), for the caller to find in the values that hold
    them (:func:`drop_lone_surrogates`), instead of costing the whole line. ``number``: the line's number in its file
    (from 1, blank lines counted, as an editor and ``sed -n 4p`` count), named in the reason: such a row has no id
    and no preview, and its ``row`` (its place among the non-blank lines, from 0) is another number past a blank
    line. The kind of the reason (see :func:`pipelines.output.staging.reason_kind`) stays the same."""
    where = "" if number is None else f"line {number}, "
    try:
        text = line.decode("utf-8", errors="surrogateescape" if undecoded else "strict")
    except UnicodeDecodeError as exc:
        return {}, f"not valid UTF-8 ({where}byte {exc.start})"
    try:
        record = json.loads(text, parse_float=WrittenFloat.parse if numbers_as_written else None)
    except json.JSONDecodeError as exc:
        return {}, f"invalid JSON: {exc.msg} ({where}column {exc.colno})"
    except RecursionError:  # nested past Python's limit (about 1,000 levels): the line's row, not the whole file
        return {}, "invalid JSON: nested too deeply" + ("" if number is None else f" (line {number})")
    return as_record(record, where, number)


def as_record(record: Any, where: str = "", number: int | None = None) -> tuple[dict[str, Any], str | None]:
    """A line's JSON value as a record, or the reason it is none (see :func:`parse_line`)."""
    if isinstance(record, list) and record and all(isinstance(item, dict) for item in record):
        return {}, (
            f"a JSON line must be an object, got list ({where}an array of {len(record)} objects: a JSON array file, "
            "not JSON lines; `jq -c '.[]' FILE > FILE.jsonl` writes them one per line: then move FILE out of "
            "input.paths)"
        )
    if not isinstance(record, dict):
        got = "null" if record is None else type(record).__name__
        return {}, f"a JSON line must be an object, got {got}" + (
            "" if number is None else f" (line {number})")
    return record, None


def _typed_column(
    name: str, expected: pa.DataType, values: list[Any], errors: list[str | None]
) -> tuple[pa.Array, list[str | None]]:
    """A kept column read line by line, where the job's type of it is not text. Values of one type are one column,
    cast with the rest of the shard (:func:`_kept_column`); values of mixed types (a list, then a late string) are
    cast one by one, each as a column of its own kind would be, so that one that does not fit costs its row only
    (as JSON text, the fallback of :func:`_column`, no row of a list column would fit)."""
    plain = [float(v) if isinstance(v, WrittenFloat) else v for v in values]
    try:
        return pa.array(plain), errors
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    target = expected.value_type if pa.types.is_dictionary(expected) else expected
    kept: list[Any] = []
    reasons = list(errors)
    for i, value in enumerate(plain):
        try:
            alone = pa.array([value])
            if _dropped_field(value, target) is not None:
                raise pa.ArrowInvalid("a field the job's type has not")
            kept.append(value if alone.type == target else _cast(alone, target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
            kept.append(None)
            written = _as_text(values[i]) or ""
            reasons[i] = reasons[i] or (f"schema differs: column {name!r} is {_json_kind(value)} here but {expected} "
                                        f"in this job's output (value {written[:40]!r})")
    return pa.array(kept, target), reasons


def _json_kind(value: Any) -> str:
    """The Arrow type a JSON value alone reads as, for a message."""
    try:
        return str(pa.array([value]).type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return type(value).__name__


def _column(values: list[Any]) -> pa.Array:
    """An Arrow column from Python values; mixed types fall back to their JSON text (numbers as written)."""
    try:
        return pa.array([float(v) if isinstance(v, WrittenFloat) else v for v in values])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # OverflowError: an integer past 64 bits
        return pa.array([_as_text(v) for v in values], pa.string())


def normalize(table: pa.Table, shard: Shard, columns: Columns, digest: str = "", size: int | None = None) -> pa.Table:
    """The job's columns with fixed types, plus bookkeeping (``digest`` and ``size``: of the bytes read); problems
    become per-row errors."""
    n = table.num_rows
    errors = table.column(ERROR) if ERROR in table.column_names else pa.nulls(n, pa.string())
    out: dict[str, pa.Array] = {}
    for name in columns.strings:
        out[name], errors = _string_column(table, name, errors)
    if columns.id:
        if columns.id in table.column_names:
            out[columns.id], errors = _id_column(table.column(columns.id), columns.id, errors)
        else:
            out[columns.id] = pa.nulls(n, pa.string())
            errors = _set(errors, f"missing id column {columns.id!r}")
    else:
        made = shard.name or shard.path.rsplit("/", 1)[-1]  # its name under its input path: unique among shards
        out["id"] = pa.array([f"{made}:{i}" for i in range(n)], pa.string())
    types = dict(columns.keep_types)
    for name in columns.keep:
        if name not in out:
            out[name], errors = _kept_column(table, name, types.get(name), errors)
    out[SHARD] = pa.array(np.full(n, shard.key, dtype=object), pa.string())
    out[ROW] = pa.array(np.arange(n, dtype=np.int64))
    out[SHARD_ROWS] = pa.array(np.full(n, n, dtype=np.int64))
    out[ERROR] = errors
    out[DIGEST] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([digest]))
    out[FILE_SIZE] = pa.array([size] * n, pa.int64())
    return pa.table(out)


def _only_utf8(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """A Parquet file's table with the values of ``names`` that hold bytes that are no UTF-8 text nulled, each costing
    its row (its ``_error``).

    pyarrow reads a Parquet text column without checking its bytes, and writers that don't check them (or a
    file saved in another encoding) leave some that are no UTF-8: the model's tokenizer, the driver's sample,
    the conversions in :func:`normalize` and readers of the output (pandas, DuckDB) would each fail on them.
    (JSON lines are checked where they are read: :func:`read_jsonl`.) Checked on the whole column first (cheap);
    where that fails, value by value.
    """
    errors = table.column(ERROR)
    for name in names:
        if name not in table.column_names:
            continue
        column = table.column(name)
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):  # one bad entry of a dictionary is a bad value of its rows only
            column = column.cast(column.type.value_type)
        reasons = _utf8_problems(name, column)
        bad = pa.array([reason is not None for reason in reasons])
        table = table.set_column(table.column_names.index(name), name, pc.if_else(bad, pa.scalar(None, column.type),
                                                                                   column))
        errors = pc.coalesce(errors, pa.array(reasons, pa.string()))
    return table.set_column(table.column_names.index(ERROR), ERROR, errors)


def _utf8_problems(name: str, column: pa.Array) -> list[str | None]:
    """Why each value is no UTF-8 text (with the byte where the value is a plain string), else None."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        reasons: list[str | None] = []
        for raw in column.cast(pa.large_binary()).to_pylist():
            try:
                if raw is not None:
                    raw.decode("utf-8")
                reasons.append(None)
            except UnicodeDecodeError as exc:
                reasons.append(f"{name} is not valid UTF-8 (byte {exc.start})")
        return reasons
    found: list[str | None] = []
    for i in range(len(column)):  # lists and structs: a slice would share (and check) every row's values
        try:
            column.take([i]).validate(full=True)
            found.append(None)
        except pa.ArrowInvalid:
            found.append(f"{name} holds text that is not valid UTF-8")
    return found


def _string_column(table: pa.Table, name: str, errors: Any) -> tuple[Any, Any]:
    n = table.num_rows
    if name not in table.column_names:
        return pa.nulls(n, pa.string()), _set(errors, f"missing column {name!r}")
    column = table.column(name)
    if pa.types.is_dictionary(column.type):  # a pandas category, or a Parquet writer's dictionary encoding
        column = column.cast(column.type.value_type)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or _is_string_view(column.type):
        return column.cast(pa.string()), errors
    if pa.types.is_null(column.type):
        return column.cast(pa.string()), errors
    if _is_bytes(column.type):  # text as Hive and Impala write it: bytes without Parquet's UTF8 mark
        return _bytes_as_text(column, name, errors)
    bad = pc.invert(column.is_null())
    reason = f"{name} is not a string ({column.type})"
    return pa.nulls(n, pa.string()), pc.if_else(pc.and_(errors.is_null(), bad), reason, errors)


def _id_column(column: Any, name: str, errors: Any) -> tuple[Any, Any]:
    """Ids as text: strings and numbers as they are; a UUID in its canonical form; bytes that are UTF-8 as their
    text; a list or an object (a JSON line's ``{"$oid": ...}``) as its JSON text. Bytes that are no text cost their
    row (any rendering of them would be a guess)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if _is_uuid(column.type):
        return _uuid_text(column), errors
    if _is_bytes(column.type):
        return _bytes_as_text(column, name, errors)
    if pa.types.is_floating(column.type):  # integers stored as floats (pandas, for a column with a missing value)
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        text = numbers_as_text(column)  # a NaN is pandas' missing value: no id, not the id "nan"
        nan = pc.fill_null(pc.is_nan(column.cast(pa.float64())), False)
        return pc.if_else(nan, pa.scalar(None, pa.string()), text), errors
    try:
        return column.cast(pa.string()), errors
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _cast_each(column, name, pa.string(), errors)  # a list or a struct: its JSON text


def numbers_as_text(column: Any) -> pa.Array:
    """Floating-point numbers as text: a whole number that a float holds exactly (below 2**53) as its digits,
    ``1733100000001``, as an integer column of the same value is written (Arrow writes ``1.733100000001e+12`` from
    10**10 up, so one id came in two spellings where pandas had stored one shard's ids as float64, for a missing
    one); other numbers as Arrow writes them, the shortest text that reads back as the same number (``0.5``,
    ``1e+21``, ``nan``): past 2**53 a float's digits are no longer the integer it was made from."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_float16(column.type):
        column = column.cast(pa.float32())
    text = column.cast(pa.string())
    exact = pc.and_(pc.equal(pc.floor(column), column), pc.less(pc.abs(column), 2.0**53))  # NaN, inf: false
    exact = pc.fill_null(exact, False)
    if not pc.any(exact).as_py():
        return text
    digits = pc.if_else(exact, column, pa.scalar(0, column.type)).cast(pa.int64()).cast(pa.string())
    return pc.if_else(exact, digits, text)


def _is_uuid(type_: pa.DataType) -> bool:
    """Parquet's UUID (DuckDB's UUID type), as pyarrow reads it."""
    return isinstance(type_, pa.BaseExtensionType) and type_.extension_name == "arrow.uuid"


def _uuid_text(column: Any) -> pa.Array:
    """UUIDs in their canonical form (``00000000-0000-0000-0000-000000000007``), not their 16 bytes."""
    values = column.cast(column.type.storage_type).to_pylist()
    return pa.array([None if v is None else str(uuid.UUID(bytes=v)) for v in values], pa.string())


def _text_uuids(values: Any, expected: pa.DataType) -> pa.Array:
    """Texts of UUIDs as the UUID type; a text that is no UUID fails the whole cast (ArrowInvalid), as a cast does."""
    found = []
    for text in values.to_pylist():
        try:
            found.append(None if text is None else uuid.UUID(text).bytes)
        except ValueError:
            raise pa.ArrowInvalid(f"not a UUID: {text[:40]!r}") from None
    return pa.ExtensionArray.from_storage(expected, pa.array(found, expected.storage_type))


def _is_bytes(type_: pa.DataType) -> bool:
    return (pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_)
            or _is_binary_view(type_))


def _bytes_as_text(column: Any, name: str, errors: Any) -> tuple[Any, Any]:
    """A bytes column as text: its values that are UTF-8; the others cost their row."""
    try:
        return column.cast(pa.string()), errors
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # some value is no UTF-8
        pass
    texts: list[str | None] = []
    reasons = errors.to_pylist()
    for i, value in enumerate(column.to_pylist()):
        try:
            texts.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(None)
            reasons[i] = reasons[i] or f"{name} is bytes that are not UTF-8 text ({column.type})"
    return pa.array(texts, pa.string()), pa.array(reasons, pa.string())


def _is_string_view(type_: pa.DataType) -> bool:
    """pyarrow 16's ``string_view`` text (``pa.types.is_string_view`` is not in pyarrow 15)."""
    return getattr(pa.types, "is_string_view", lambda _: False)(type_)


def _is_binary_view(type_: pa.DataType) -> bool:
    """pyarrow 16's ``binary_view`` bytes (``pa.types.is_binary_view`` is not in pyarrow 15)."""
    return getattr(pa.types, "is_binary_view", lambda _: False)(type_)


def _kept_column(table: pa.Table, name: str, expected: pa.DataType | None, errors: Any) -> tuple[Any, Any]:
    """A passed-through column in the job's type for it; values that can't be cast are row errors."""
    n = table.num_rows
    if name not in table.column_names:
        return pa.nulls(n, expected or pa.string()), errors
    column = table.column(name)
    if expected is None or column.type == expected:
        return column, errors
    if _holds_dropped(column, expected):  # a cast would drop them
        return _cast_each(column, name, expected, errors)  # value by value: those rows are row errors
    try:
        column = _cast(column, expected)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        column, errors = _cast_each(column, name, expected, errors)
    if column.type != expected:  # every output file must have the job's type: readers read the folder as one table
        raise TypeError(f"kept column {name!r} came out as {column.type}, not this job's {expected}")
    return column, errors


def _cast_each(column: Any, name: str, expected: pa.DataType, errors: Any) -> tuple[Any, Any]:
    """The slow path of a cast that failed: value by value, so one value that can't be cast costs its row only.

    Text takes any value (lists and structs as their JSON text); another type takes the values that cast
    safely, and the others are row errors, as is a struct with a field (not null) that the type has not.
    """
    values = column.to_pylist()
    if _is_text(expected):
        texts: list[str | None] = []
        reasons = errors.to_pylist()
        for i, value in enumerate(values):
            try:
                texts.append(_as_text(value))
            except UnicodeDecodeError:  # bytes that are no text: the value never reaches the output
                texts.append(None)
                reasons[i] = reasons[i] or f"{name} is bytes that are not UTF-8 text ({column.type})"
        return pa.array(texts, expected), pa.array(reasons, pa.string())
    reason = f"schema differs: column {name!r} is {column.type} here but {expected} in this job's output"
    kept: list[Any] = []
    reasons = errors.to_pylist()
    room = _dictionary_room(expected)
    distinct: set[Any] = set()
    for i, value in enumerate(values):
        if value is None:  # null in any type: a shard whose type can't be cast (text to a list) has nulls too
            kept.append(None)
            continue
        dropped = _dropped_field(value, expected)
        if dropped is not None:
            kept.append(None)
            reasons[i] = reasons[i] or f"{reason} (field {dropped!r} is not in it)"
            continue
        try:
            cast = _cast(pa.array([value], column.type), expected)[0].as_py()
            if room is not None and cast is not None and cast not in distinct:
                if len(distinct) == room:
                    raise pa.ArrowInvalid(f"more than {room} distinct values")
                distinct.add(cast)
            kept.append(cast)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            kept.append(None)
            reasons[i] = reasons[i] or f"{reason} (value {str(value)[:40]!r})"
    array = pa.array(kept, expected)
    if array.type != expected:  # a dictionary: pa.array gives it the indices its values need, not those asked for
        array = array.cast(expected)
    return array, pa.array(reasons, pa.string())


def _cast(values: Any, expected: pa.DataType) -> Any:
    """A safe cast. Text to a timestamp without a zone also takes a zone (``Z``, ``+02:00``) and converts it to UTC,
    as pyarrow's JSON reader did before kept JSON strings stayed text: an output begun then recorded such a
    column as a timestamp, and its later rows are read as text. Floats to text: whole numbers as their digits
    (:func:`numbers_as_text`); UUIDs to text: their canonical form, as ids (a cast gives their bytes), and text
    to UUIDs: each text read as a UUID (a cast refuses every value)."""
    if _is_text(expected) and pa.types.is_floating(values.type):  # whole numbers as their digits
        return numbers_as_text(values).cast(expected)
    if _is_text(expected) and _is_uuid(values.type):
        return _uuid_text(values).cast(expected)
    if _is_uuid(expected) and _is_text(values.type):
        return _text_uuids(values, expected)
    try:
        return values.cast(expected, safe=True)
    except pa.ArrowInvalid:
        if pa.types.is_timestamp(expected) and expected.tz is None and _is_text(values.type):
            return values.cast(pa.timestamp(expected.unit, "UTC"), safe=True).cast(expected)
        raise


def _holds_dropped(column: Any, expected: pa.DataType) -> bool:
    """Whether some value sets (not null) a struct field that ``expected`` has not: a cast would lose it. Vectorized:
    a field that is there but null everywhere (an optional key) loses nothing, and the column is cast whole."""
    type_ = column.type
    if pa.types.is_struct(type_) and pa.types.is_struct(expected):
        names = {expected.field(i).name: expected.field(i).type for i in range(expected.num_fields)}
        for i in range(type_.num_fields):
            child = pc.struct_field(column, [i])
            name = type_.field(i).name
            if name not in names and pc.any(pc.and_(column.is_valid(), child.is_valid())).as_py():
                return True
            if name in names and _holds_dropped(child, names[name]):
                return True
        return False
    if _is_list(type_) and _is_list(expected):
        return _holds_dropped(pc.list_flatten(column), expected.value_type)
    return False


def _dictionary_room(type_: pa.DataType) -> int | None:
    """How many distinct values a dictionary type's indices can point at (None for other types).

    Jobs record a dictionary column's value type (see :func:`unify_types`); an output begun before that may have
    recorded the dictionary with the indices of its first shards (a pandas category's int8 for up to 128 values).
    """
    if not pa.types.is_dictionary(type_):
        return None
    bits = type_.index_type.bit_width
    return 2 ** bits if pa.types.is_unsigned_integer(type_.index_type) else 2 ** (bits - 1)


def _dropped_field(value: Any, expected: pa.DataType) -> str | None:
    """The first key of a (nested) dict value, not null, that has no field in ``expected``: a cast would drop it."""
    if isinstance(value, dict) and pa.types.is_struct(expected):
        names = {expected.field(i).name: expected.field(i).type for i in range(expected.num_fields)}
        for key, item in value.items():
            if key not in names:
                if item is not None:
                    return key
            elif (found := _dropped_field(item, names[key])) is not None:
                return found
    if isinstance(value, list) and _is_list(expected):
        return next((f for item in value if (f := _dropped_field(item, expected.value_type)) is not None), None)
    return None


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID):  # its canonical form, not the JSON text of it (in quotes)
        return str(value)
    if isinstance(value, WrittenFloat):
        return value.text
    if isinstance(value, bytes):  # as the text column takes bytes: their UTF-8 text (UnicodeDecodeError: none)
        return value.decode("utf-8")
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    """What JSON can't write in a kept value made text: bytes as their UTF-8 text (UnicodeDecodeError where they are
    none), anything else as Python writes it (a date, a duration)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def reference_types(shards: list[Shard], columns: Columns, sample_bytes: int = 1 << 18) -> dict[str, pa.DataType]:
    """Types of the passed-through columns, unified over every shard that can be sampled.

    Parquet types come from each file's footer, JSON lines types from the first ``sample_bytes``
    of each file, read on to the end of its first record (see :func:`_sample_head`). A column that is
    an integer in one shard and a float in another is a float; one whose types don't agree otherwise is
    a string (every value cast to its text); a column found in no shard is a string. Unreadable shards
    are skipped (they are reported when they are read).
    """
    seen: dict[str, list[pa.DataType]] = {name: [] for name in columns.keep}
    present: set[str] = set()
    sampled = 0
    for shard in shards:
        try:
            schema = _sample_schema(shard, sample_bytes, columns.keep)
        except Exception:  # noqa: BLE001 - an unreadable shard is quarantined (or fails the job) when read
            continue
        sampled += 1
        present.update(name for name in columns.keep if name in schema.names)
        for name in columns.keep:
            found = schema.get_all_field_indices(name)  # a file naming a column twice is quarantined when read
            if len(found) == 1 and not pa.types.is_null(schema.field(found[0]).type):
                seen[name].append(schema.field(found[0]).type)
    missing = [name for name in columns.keep if name not in present]
    if sampled and missing:  # a typo, or a Hive partition folder's name= taken for a column: nulls in every row
        log.warning(
            "kept column(s) %s: in none of the %d input file(s) sampled (Parquet footers, the first 256 KiB and at "
            "least the first record of JSON lines files); rows without it get null there: check the name(s) (a "
            "folder name such as date=2024-01-01 is no column)", ", ".join(repr(n) for n in missing), sampled)
    return {name: unify_types(types) for name, types in seen.items()}


def sampled_columns(shards: Sequence[Shard], names: Sequence[str], limit: int = 32,
                    sample_bytes: int = 1 << 18) -> tuple[int, list[str]]:
    """How many of up to ``limit`` shards (spread over the list) could be sampled as :func:`reference_types` samples
    them and hold any column, and their column names in the order first seen (``names``: the columns the job reads,
    which a sample with a bad line is read by). An unreadable or empty file tells nothing and is not counted."""
    picked = [shards[i * len(shards) // limit] for i in range(limit)] if len(shards) > limit else list(shards)
    sampled, seen = 0, {}
    for shard in picked:
        try:
            schema = _sample_schema(shard, sample_bytes, names)
        except Exception:  # noqa: BLE001 - an unreadable shard is quarantined (or fails the job) when read
            continue
        if schema.names:
            sampled += 1
            seen.update(dict.fromkeys(schema.names))
    return sampled, list(seen)


def unify_types(types: list[pa.DataType]) -> pa.DataType:
    """One type that holds every value of columns of these types (see :func:`reference_types`).

    Integers of several widths are int64, and float64 beside floats; uint64 beside a signed integer is text (no
    integer type holds both), beside unsigned ones uint64. A dictionary (a pandas category) is its values' type: the
    width of its indices follows how many values a shard holds (int8 for up to 128), and files whose indices differ
    don't read as one table. Lists of values that agree are one list type, whatever their writers called or sized
    them: ``list<item: int64>``, ``list<element: int64 not null>`` and ``large_list<element: int64>`` are
    ``list<element: int64>``. Structs with the same fields, in the same order, are one struct type in the same way.
    Timestamps are one timestamp in the finest unit, and instants in several zones one in UTC (a local time beside
    an instant: text).
    """
    return _without_views(_unify(types) or pa.string())


def _without_views(type_: pa.DataType) -> pa.DataType:
    """The type with Arrow's view types as their plain ones, at any depth: ``string_view`` is ``string``,
    ``binary_view`` is ``binary``. pyarrow 26 has no ``take`` for views (the rows are sorted by length), and a
    DataFusion or pyarrow writer may store them in a Parquet file's Arrow schema."""
    if _is_string_view(type_):
        return pa.string()
    if _is_binary_view(type_):
        return pa.binary()
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_):
        item = type_.value_field.with_type(_without_views(type_.value_type))
        if pa.types.is_list(type_):
            return pa.list_(item)
        return pa.large_list(item) if pa.types.is_large_list(type_) else pa.list_(item, type_.list_size)
    if pa.types.is_struct(type_):
        return pa.struct([type_.field(i).with_type(_without_views(type_.field(i).type))
                          for i in range(type_.num_fields)])
    if pa.types.is_map(type_):
        return pa.map_(type_.key_field.with_type(_without_views(type_.key_type)),
                       type_.item_field.with_type(_without_views(type_.item_type)), type_.keys_sorted)
    return type_


def _unify(types: list[pa.DataType]) -> pa.DataType | None:
    """The type of :func:`unify_types`, or None where the types don't agree (their values then become text)."""
    distinct = list(dict.fromkeys(t.value_type if pa.types.is_dictionary(t) else t for t in types))
    if not distinct:
        return None
    if len(distinct) == 1:
        return distinct[0]
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
        if any(pa.types.is_floating(t) for t in distinct):
            return pa.float64()
        if pa.uint64() in distinct:  # no signed type holds its values past 2**63 (half of a column of hashes)
            return pa.uint64() if all(pa.types.is_unsigned_integer(t) for t in distinct) else None
        return pa.int64()
    if all(pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t) for t in distinct):
        return pa.string()
    if all(_is_bytes(t) for t in distinct):  # pyarrow's binary, Polars' large_binary, views, fixed sizes: bytes
        return pa.binary()
    if all(pa.types.is_duration(t) for t in distinct):  # the finest unit, as timestamps
        return pa.duration(_finest(distinct))
    if all(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) for t in distinct):
        item = _unify([t.value_type for t in distinct])
        return None if item is None else pa.list_(pa.field("element", item))
    if all(pa.types.is_timestamp(t) for t in distinct):  # the finest unit; instants in one zone (UTC if several)
        zones = {t.tz for t in distinct}
        if None in zones:  # a local time beside an instant, or local times only in other units: no common reading
            return pa.timestamp(_finest(distinct)) if zones == {None} else None
        return pa.timestamp(_finest(distinct), zones.pop() if len(zones) == 1 else "UTC")
    if all(pa.types.is_struct(t) for t in distinct):
        names = [[f.name for f in t] for t in distinct]
        if any(n != names[0] for n in names):
            return None
        fields = [_unify([t.field(i).type for t in distinct]) for i in range(len(names[0]))]
        if any(f is None for f in fields):
            return None
        return pa.struct([pa.field(n, f) for n, f in zip(names[0], fields)])
    return None


def _finest(types: list[pa.DataType]) -> str:
    """The finest unit of timestamp types (a coarser one's values fit it, as pyarrow's safe cast checks)."""
    return max((t.unit for t in types), key=["s", "ms", "us", "ns"].index)


def encode_types(types: dict[str, pa.DataType]) -> str:
    """Column types as text for a JSON record (an Arrow schema, serialized)."""
    schema = pa.schema(list(types.items()))
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_types(text: str) -> dict[str, pa.DataType]:
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    return {field.name: field.type for field in schema}


def _sample_schema(shard: Shard, sample_bytes: int, names: Sequence[str]) -> pa.Schema:
    fs = shard.filesystem()
    if shard.format == "parquet" and not shard.compressed:
        with fs.open_input_file(shard.path) as handle:
            return pq.ParquetFile(handle, coerce_int96_timestamp_unit=INT96_UNIT).schema_arrow
    if shard.format == "parquet":
        raise ValueError("gzip-compressed parquet can't be sampled")
    with fs.open_input_stream(shard.path, compression="gzip" if shard.compressed else None) as stream:
        head = without_marks(_sample_head(stream, sample_bytes))
    if (values := array_head(head)) is not None:  # one JSON array: its first whole elements, as JSON lines
        head = b"".join(json.dumps(value).encode() + b"\n" for value in values if isinstance(value, dict))
    elif (stream := json_stream(head)) is not None:  # objects over several lines: its first whole ones, so
        head = b"".join(json.dumps(value).encode() + b"\n" for value in stream[0] if isinstance(value, dict))
    try:
        table = _read_sample(head)
    except pa.ArrowInvalid:  # a bad line (invalid JSON, a lone surrogate) costs its row, not the shard's types
        table = _sample_by_column(head, names)
    rounded = {name for name in table.column_names if _past_int64(table.column(name))}
    if rounded:  # integers past 64 bits, if any, were rounded to floats: such a column is text, as read_jsonl reads it
        records = [json.loads(line) for line in _good_lines(head)]
        rounded = {name for name in rounded if any(_big_integer(r.get(name)) is not None for r in records)}
    return pa.schema([  # as read_jsonl reads them
        pa.field(f.name, pa.string()) if f.name in rounded else f.with_type(as_written(f.type)) for f in table.schema
    ])


def _sample_by_column(head: bytes, names: Sequence[str]) -> pa.Table:
    """A JSON lines sample that pyarrow refuses whole, read from its good lines one column of ``names`` at a time:
    the columns the job does not read are left out (their values may be of types that don't agree), and one it
    reads whose values' types don't agree is text, as :func:`unify_types` makes such a column."""
    records = [json.loads(line) for line in _good_lines(head)]
    columns = {}
    for name in names:
        if not any(name in r for r in records):
            continue
        lines = b"".join(json.dumps({name: r.get(name)}).encode() + b"\n" for r in records)
        try:
            columns[name] = _read_sample(lines).column(name)
        except pa.ArrowInvalid:
            columns[name] = pa.chunked_array([pa.array([_as_text(r.get(name)) for r in records], pa.string())])
    return pa.table(columns) if columns else pa.table({})


def _sample_head(stream: Any, sample_bytes: int, most: int = SAMPLE_MOST) -> bytes:
    """The whole lines of a JSON lines file's first ``sample_bytes``, read on to the end of its first record.

    A first record longer than ``sample_bytes`` (a long text) is read whole, up to ``most`` bytes, so that
    the sample holds at least one record; reading stops at the end of the file, whose last line counts
    even without its newline.
    """
    head = stream.read(sample_bytes)
    ended = len(head) < sample_bytes
    while not ended and len(head) < most and not _holds_record(head):
        more = stream.read(min(max(len(head), 1 << 16), most - len(head)))  # doubling: each line parsed a few times
        ended = not more
        head += more
    if ended or not stream.read(1):
        return head
    return head[: head.rfind(b"\n") + 1] or head


def _holds_record(head: bytes) -> bool:
    """Whether the whole lines of a sample hold a line the reader would read as a record (or, of one JSON array, an
    element that is an object)."""
    if any(isinstance(value, dict) for value in array_head(head) or []):
        return True
    if (stream := json_stream(head)) is not None:
        return any(isinstance(value, dict) for value in stream[0])
    return any(True for _ in _good_lines(head[: head.rfind(b"\n") + 1]))


def _read_sample(head: bytes) -> pa.Table:
    """A JSON lines sample as pyarrow reads it, in one block: a line longer than its default block is no error. One
    that starts with a line of ``null`` (which would crash pyarrow, :func:`null_line`) is refused as pyarrow refuses
    a bad line, and read a column at a time from its records."""
    if null_line(head, start_only=True) or deep_line(head):
        raise pa.ArrowInvalid("a line of null first, or one nested too deeply")
    return pajson.read_json(io.BytesIO(head), read_options=pajson.ReadOptions(block_size=max(len(head), 1 << 20)))


def _good_lines(head: bytes) -> Iterator[bytes]:
    """The lines of a JSON lines sample that the reader would read as records (each with its newline)."""
    for line in without_marks(head).splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit, no record
            continue
        if isinstance(record, dict) and lone_surrogate(record) is None:
            yield line + b"\n"


def _set(errors: Any, reason: str) -> Any:
    return pc.if_else(errors.is_null(), reason, errors)


def unreadable(shard: Shard, columns: Columns, reason: str, digest: str = "", size: int | None = None) -> pa.Table:
    """The one record that stands for a file that could not be read (row -1), with the job's column types."""
    out: dict[str, pa.Array] = {name: pa.nulls(1, pa.string()) for name in (*columns.strings, columns.id_name)}
    types = dict(columns.keep_types)
    for name in columns.keep:
        out.setdefault(name, pa.nulls(1, types.get(name, pa.string())))
    out[SHARD] = pa.array([shard.key])
    out[ROW] = pa.array([-1], pa.int64())
    out[SHARD_ROWS] = pa.array([1], pa.int64())
    out[ERROR] = pa.array([reason])
    out[DIGEST] = pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array([digest]))
    out[FILE_SIZE] = pa.array([size], pa.int64())
    return pa.table(out)


def count_rows(shard: Shard, text: str = "text") -> tuple[int | None, bool]:
    """How many rows an unreadable shard holds, as far as can be told: (rows, exact). ``text``: the job's text
    column (which list of a file of rows wrapped in one object holds them, :func:`one_object_rows`).

    A Parquet file whose footer reads gives its exact row count; a JSON lines file counts its
    non-blank lines (a gzip file cut short or corrupt: the whole lines before the damage, over all its
    members, a lower bound). None when nothing can be told (a Parquet file without a readable footer).
    """
    try:
        raw = read_bytes(shard)
    except OSError:
        return None, False
    if shard.compressed and not raw:  # no gzip stream (EMPTY_GZIP_REASON): what it was to hold is not known
        return None, False
    if pointer_reason(raw) is not None:  # the file's bytes are not here (a run fails on it): its rows unknown
        return None, False
    if shard.compressed and plain_under_gz_name(raw):  # refused whole (PLAIN_GZ_REASON): its rows as they are
        shard = replace(shard, compressed=False)
    if shard.format == "parquet":
        try:
            data = gzip.decompress(raw) if shard.compressed else raw
            if json_reason(data, shard.compressed) is None:
                return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows, True
        except Exception:  # noqa: BLE001 - no footer, no count
            return None, False
        # JSON under a Parquet name, refused whole: its rows, counted as JSON lines (below)
    data, exact = _gunzip_before_damage(raw) if shard.compressed else (raw, True)
    if exact and data.startswith(PARQUET_MAGIC):  # a Parquet file under a JSON lines name, refused whole: its rows
        try:
            return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows, True
        except Exception:  # noqa: BLE001 - no footer, no count
            return None, False
    if exact and (kind := compression_of(data)) is not None:  # refused whole: the rows of its decompressed lines
        data, exact = _decompress_before_damage(data, kind)
    if (codec := utf16_codec(data)) is not None:  # its lines as text (as bytes, the last newline's zero byte was one)
        data = data.decode(codec, errors="replace").encode()
    if shard.format == "openai-batch" and exact and (values := json_array(data)) is not None:
        return len(values), True  # a Batch file that is one JSON array, refused whole: its requests, not its lines
    if exact and shard.format != "openai-batch" and (one := one_object_rows(data, text)) is not None:
        return one[0], True  # rows wrapped in one object, or as its columns, refused whole: those rows
    if broken_array(data) is not None:  # one JSON array that does not parse, refused whole: the elements before that
        return len(array_head(data, refused=True) or []), False
    if (stream := json_stream(data)) is not None:  # objects over several lines: those read before any damage
        return (len(stream[0]) if stream[0] or (exact and stream[1] is None) else None), exact and stream[1] is None
    lines = without_marks(data).split(b"\n")  # a byte order mark alone on its line is no row
    if not exact and lines:
        lines = lines[:-1]  # the last line was cut
    counted = lines_rows(lines, last=exact).rows  # not past an object the damage cut
    return (counted if counted or exact else None), exact


def _decompress_before_damage(data: bytes, kind: str) -> tuple[bytes, bool]:
    """A compressed file's bytes decompressed (see :data:`COMPRESSIONS`), and whether that went to the end: gzip as
    :func:`_gunzip_before_damage`, zstd, bzip2 and lz4 by pyarrow, xz by :mod:`lzma`; nothing of a zip archive (it may
    hold several files) or of bytes that don't decompress."""
    if kind == "gzip":
        return _gunzip_before_damage(data)
    try:
        if kind == "xz":
            return lzma.decompress(data), True
        if kind in ("zstd", "bzip2", "lz4"):
            codec = {"bzip2": "bz2"}.get(kind, kind)
            with pa.input_stream(pa.py_buffer(data), compression=codec) as stream:
                return stream.read(), True
    except (OSError, ValueError, lzma.LZMAError, pa.ArrowException):
        pass
    return b"", False


def _gunzip_before_damage(raw: bytes, piece: int = 1 << 16) -> tuple[bytes, bool]:
    """What a gzip file's members give up to any damage, as zcat reads them, and whether there was none.

    A file may hold several members one after the other (``cat a.gz b.gz``), and zero bytes after the last.
    A member is read in pieces, so the bytes before a corrupt one are kept; the piece that holds it, byte by byte
    again, so that what it gave before is kept too (a wrong CRC, found at a member's end, after all of its bytes).
    """
    out: list[bytes] = []
    while raw:
        decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        rest = b""
        for start in range(0, len(raw), piece):
            before = decompressor.copy()
            try:
                out.append(decompressor.decompress(raw[start : start + piece]))
            except zlib.error:  # a corrupt byte, or bytes after a member that are no member
                return b"".join([*out, _before_error(before, raw[start : start + piece])]), False
            if decompressor.eof:
                rest = decompressor.unused_data + raw[start + piece :]
                break
        if not decompressor.eof:  # cut short
            return b"".join(out), False
        raw = rest.lstrip(b"\0")  # zeros after a member are padding, as gzip reads them
    return b"".join(out), True


def _before_error(decompressor: Any, piece: bytes) -> bytes:
    """What ``decompressor`` gives of ``piece``, fed a byte at a time, before the byte it fails on."""
    out: list[bytes] = []
    try:
        for at in range(len(piece)):
            out.append(decompressor.decompress(piece[at : at + 1]))
    except zlib.error:
        pass
    return b"".join(out)


def _short(exc: BaseException) -> str:
    return first_line(exc)[:200]

