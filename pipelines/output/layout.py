"""The output layout: every name this project writes under ``output.path``, and how it writes a file.

One job's output directory::

    part-<shard>-<n>.parquet        predictions (plain Parquet; readers skip the ``_`` entries)
    _errors/part-<shard>-<n>.parquet    quarantined rows with their reasons
                                    (.jsonl for both with output.format: openai-batch)
    _commits/<shard>.json           one record per committed shard
    _job.json                       the spec (and its hash) these results belong to
    _staging/<shard>/...            files of shards not yet committed
    _run.json, _SUCCESS             the run summary; written last, when every shard is committed
    _run.lock                       the lock a run holds (one run at a time)
    _report.html                    the run report (a page), written with _run.json

A scheduled job's root holds one such directory per run, and its own files::

    run=<run id>/                   a partition: a job output directory as above
    _runs.jsonl                     the run ledger
    _input_digests.json             the hashes of input files found with a new time but the bytes scored
    _report.html                    the page over the runs
    _schedule.lock                  the job's lock
    _superseded/run=<run id>/...    outputs that newer ones replaced

Every file is written whole or not at all: to a temporary name first, flushed to the disk, then renamed
into place (:func:`write_bytes`), so a reader or a crash never sees half of one (nor, on the local disk, a power
cut an empty one).
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import faults
from pipelines.errors import PipelineError
from pipelines.io import stores
from pipelines.io.shards import Shard, resolve

COMMITS = "_commits"
ERRORS = "_errors"
STAGING = "_staging"
JOB = "_job.json"
RUN = "_run.json"
SUCCESS = "_SUCCESS"
RUN_LOCK = "_run.lock"
REPORT = "_report.html"
#: The entries of a job output directory that are this project's bookkeeping.
OURS = (COMMITS, ERRORS, STAGING, JOB, RUN, SUCCESS, RUN_LOCK, REPORT)

LEDGER = "_runs.jsonl"
INPUT_DIGESTS = "_input_digests.json"
LOCK = "_schedule.lock"
SUPERSEDED = "_superseded"
PARTITION = "run="

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
#: The suffixes of committed part files: Parquet, or JSON lines (output.format: openai-batch).
PART_SUFFIXES = (PART_SUFFIX, ".jsonl")
TMP_SUFFIX = ".tmp"
#: Files read at once where a reader reads many small ones (commit records, part files for the page): on an object
#: store each read is a request or two of some tens of milliseconds.
READERS = 16


def part_name(shard_key: str, n: int, suffix: str = PART_SUFFIX) -> str:
    """The name of a shard's n-th committed data (or error) file."""
    return f"{PART_PREFIX}{shard_key}-{n:05d}{suffix}"


def is_part_file(name: str) -> bool:
    """Whether a file name is one of this project's committed part files."""
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIXES)


def part_shard(name: str) -> str | None:
    """The shard key in ``part-<key>-<n>.parquet`` (also for ``.tmp`` leftovers); None for other names."""
    if not name.startswith(PART_PREFIX):
        return None
    parts = name.split("-")
    return parts[1] if len(parts) >= 3 else None


#: The name of a committed part file, as :func:`part_name` makes it (a shard key is 12 hex digits).
PART_FILE = re.compile(r"part-[0-9a-f]{12}-\d{5}\.(?:parquet|jsonl)")


def check_no_other_outputs(shards: Sequence[Shard]) -> None:
    """Refuse input files that are another job's output lying inside an input folder (``data/scored`` of an earlier
    job, beside ``data``'s files): read as input, its rows would be scored again (where the text is kept) or each
    quarantined. A job's own output is left out of its listing already (``list_shards``' ``exclude``)."""
    found = outputs_in_input(shards)
    if found:
        folder = found[0].uri.rsplit("/", 1)[0]
        more = f" (and {len(found) - 1} more such folder(s))" if len(found) > 1 else ""
        raise PipelineError(
            f"input.paths: {folder} is another job's output (it holds {JOB}), inside an input folder{more}: its part "
            "files would be read as input, their rows scored again or quarantined; move it out of the input folder, "
            "or name the input files with a glob that leaves it out (data/*.jsonl); to read that output as input, "
            "name its folder itself in input.paths"
        )


def outputs_in_input(shards: Sequence[Shard]) -> list[Shard]:
    """Input files that are part files of another job's output lying below the input location they were found under
    (``data/scored/part-….parquet`` for ``input.paths: [data]``): one of each such output folder. A folder is looked
    at only where a file in it is named as a part file, for its ``_job.json``; a location that is itself an output,
    or a scheduled job's root (its partitions are outputs), is that output named as the input, and read: it is
    looked at once, before its folders (a scheduled root's thousand partitions: two requests on a store, not three
    thousand)."""
    candidates: dict[tuple[str, str], dict[str, Shard]] = {}  # (scheme, location's root): {folder: a part file}
    for shard in shards:
        folder, _, name = shard.path.rpartition("/")
        if "/" in shard.name and PART_FILE.fullmatch(name):
            root = shard.path[: len(shard.path) - len(shard.name)].rstrip("/")
            scheme = shard.uri.split("://", 1)[0] if "://" in shard.uri else ""
            candidates.setdefault((scheme, root), {}).setdefault(folder, shard)
    found = []
    for (_, root), folders in candidates.items():
        fs = next(iter(folders.values())).filesystem()
        if any(mark.type == pafs.FileType.File for mark in fs.get_file_info([f"{root}/{JOB}", f"{root}/{LEDGER}"])):
            continue  # an output, or a scheduled job's root, named as the input
        jobs = fs.get_file_info([f"{folder}/{JOB}" for folder in folders])
        found += [shard for shard, job in zip(folders.values(), jobs, strict=True) if job.type == pafs.FileType.File]
    return found


def commit_record_path(shard_key: str) -> str:
    return f"{COMMITS}/{shard_key}.json"


def partition_dir(run: str) -> str:
    return f"{PARTITION}{run}"


def not_a_folder(location: str, fs: pafs.FileSystem, path: str) -> PipelineError:
    """An output path that is a file; on a store, an object whose key is the output folder's own name (the job's
    keys would go under it, beside the object, but a reader given the path reads that one object)."""
    if stores.is_local(fs):
        return PipelineError(f"output.path {location} is a file; give a directory")
    key = path.split("/", 1)[-1]
    return PipelineError(
        f"output.path {location}: an object has this very key ({key}), beside the folder {key}/ a job writes; readers "
        "given this path read that object, not the job's files: delete or rename the object, or choose another "
        "output.path"
    )


# writing whole files ------------------------------------------------------------------------

#: What a disk that takes no more bytes says: no space left on it, or the user's quota on it used up.
DISK_FULL = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is used up"}


@contextmanager
def writing(location: str) -> Iterator[None]:
    """Refusals while writing the output at ``location`` become one line: where, why, what to do."""
    try:
        yield
    except OSError as exc:
        raise write_refusal(location, exc) from None


def dangling_link(location: str, path: str) -> PipelineError | None:
    """The refusal of a local output path that is, or lies under, a symbolic link to nothing (``ln -s
    /scratch/results out`` before the folder is made): no folder can be made through it; None where there is none."""
    at = path
    while True:
        if os.path.islink(at) and not os.path.exists(at):
            target = os.path.realpath(at)
            return PipelineError(
                f"output.path {location}: {at} is a symbolic link to {os.readlink(at)}, which does not exist; create "
                f"the folder it points to (mkdir -p {target}), or point output.path elsewhere"
            )
        parent = os.path.dirname(at)
        if parent == at:
            return None
        at = parent


def write_refusal(location: str, exc: OSError) -> PipelineError:
    """A failed write or delete under ``output.path`` as one line: a store's refusal, a full disk (free space and
    run again: it resumes), a symbolic link to nothing (:func:`dangling_link`), else a location this process may not
    write to."""
    if stores.is_store_error(exc):
        return stores.refusal("output.path", location, exc)
    if stores.is_local_location(location) and (dangling := dangling_link(location, resolve(location)[1])):
        return dangling
    reason = exc.strerror or str(exc).strip().splitlines()[0]
    full = DISK_FULL.get(exc.errno or 0)
    if full:
        return PipelineError(
            f"output.path {location}: {full} ({reason}); free space there (or choose an output.path on another "
            "disk), then run the same command again: it resumes where this run stopped (committed shards are kept; "
            "leave out --overwrite if you gave it, which would delete them again)"
        )
    return PipelineError(
        f"output.path {location}: cannot write or delete there ({reason}); choose an output.path this "
        "process may write to (and delete in), or fix its permissions"
    )


def write_whole(fs: pafs.FileSystem, path: str, write: Callable[[Any], None], point: str | None = None,
                shared: bool = False) -> None:
    """Write-then-rename: ``write`` fills a temporary file (given its stream), which is then flushed to the disk
    (:func:`synced`) and renamed to ``path``, so a reader sees the old file or the new one, never half of one. A
    write that fails (a full disk) deletes its temporary file: nothing is left behind. ``point``: where a test may
    make the write fail (:func:`pipelines.faults.write_fails`; default: the file's name). ``shared``: a file written
    without the output's lock (the report page: ``pipelines report`` writes it while a run may), whose temporary
    file is this writer's own (``<name>.<pid>-<random>.tmp``): two writers at once each rename a whole file, the
    last one stays."""
    tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}" if shared else f"{path}{TMP_SUFFIX}"
    try:
        with fs.open_output_stream(tmp) as stream:
            write(stream)
            faults.write_fails(point or path.rsplit("/", 1)[-1])
        synced(fs, tmp)
        fs.move(tmp, path)
    except BaseException:
        _discard(fs, tmp)
        raise
    synced(fs, posixpath.dirname(path) or "/", folder=True)


#: What a file system that can't flush a file or a folder says (some network and FUSE file systems): nothing to do.
NO_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF)


def synced(fs: pafs.FileSystem, path: str, folder: bool = False) -> None:
    """On the local disk, a file's bytes (``folder``: a folder's entries, the rename into it) flushed to the disk
    (``fsync``) before a file names it or a later step depends on it: after a power cut or a kernel crash a file
    renamed into place could otherwise come back empty (ext4 and XFS write a new file's bytes seconds after its
    name). On ext4 and XFS a folder's flush also carries every rename made before it (their journal is written in
    order), so the part files moved into place from ``_staging/`` are durable once the next file of the run is.
    An object store's write is durable once it is answered: nothing to do there."""
    if not stores.is_local(fs):
        return
    try:
        handle = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    except OSError:
        if folder:  # a folder that may be written but not read (mode -wx): its files are in place all the same
            return
        raise
    try:
        os.fsync(handle)
    except OSError as exc:
        if exc.errno not in NO_FSYNC:
            raise
    finally:
        os.close(handle)


def _discard(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file if it is there; a delete that fails too leaves the error being raised to be said."""
    try:
        fs.delete_file(path)
    except OSError:
        pass


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes, shared: bool = False) -> None:
    """Write-then-rename: a reader sees the old file or the new one, never half of one (``shared``: see
    :func:`write_whole`)."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    write_whole(fs, path, lambda stream: stream.write(data), shared=shared)


def write_json(fs: pafs.FileSystem, path: str, value: Any) -> None:
    write_bytes(fs, path, json.dumps(value, indent=1, sort_keys=True, default=str).encode())


def write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table, compression: str) -> None:
    """A file only this project reads again, written then renamed, so it is either whole or absent.

    Staged blocks are written so (fault point ``stage``). No dictionary encoding: these files are read once, by
    the commit, and writing is what costs here.
    """
    codec = None if compression == "none" else compression
    write_whole(fs, path, lambda stream: pq.write_table(table, stream, compression=codec, use_dictionary=False),
                point="stage")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet column paths worth dictionary-encoding: every leaf column except floating-point ones.

    Parquet writers try a dictionary for every column by default. Model outputs (embeddings, scores)
    have almost no repeated values, so for them the dictionary only overflows and falls back to plain
    encoding, after costing most of the write (an all-MiniLM embedding shard: 10x the time of a plain
    write, and a larger file). Labels, ids and other strings keep it.
    """
    return [path for path, leaf in _leaves(schema) if not pa.types.is_floating(leaf)]


def _leaves(fields: Any, prefix: str = "") -> list[tuple[str, pa.DataType]]:
    """(Parquet column path, Arrow type) of each leaf column, named as Parquet names nested columns."""
    leaves: list[tuple[str, pa.DataType]] = []
    for field in fields:
        path, kind = f"{prefix}{field.name}", field.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            leaves += _leaves([pa.field("element", kind.value_type)], f"{path}.list.")
        elif pa.types.is_map(kind):
            leaves += _leaves([kind.key_field, kind.item_field], f"{path}.key_value.")
        elif pa.types.is_struct(kind):
            leaves += _leaves([kind.field(i) for i in range(kind.num_fields)], f"{path}.")
        else:
            leaves.append((path, kind))
    return leaves


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """A JSON file's value; None when it is missing or not JSON (a half-written file never is: see write_bytes), or
    no UTF-8 text (another tool's file)."""
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def delete(fs: pafs.FileSystem, info: pafs.FileInfo) -> None:
    """Delete a file or a directory tree; nothing when it does not exist."""
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(info.path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(info.path)
