"""Finding input shards: files, directories and globs, local or any URI pyarrow's filesystems take.

A shard is identified by its **name**: its path relative to the input location it
was found under (a directory, the fixed part of a glob, or the folder of a file
given by name). The name, not the absolute path, keys the shard's output and
commit record, so the same data read from another working directory (a
resubmitted job, a moved checkout) is recognised as the same shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
from wcmatch import fnmatch as wcfnmatch
from wcmatch import glob as wcglob

from pipelines.errors import PipelineError
from pipelines.io import stores

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
#: What a folder's Batch request files are named (``input.format: openai-batch``): as JSON lines files are.
BATCH_FILES = "JSON lines files (.jsonl, .ndjson, .json, each also .gz)"
#: The ends of the names of files compressed as the reader does not decompress (only gzip, in a file named ``.gz``),
#: and their compression: in a folder such a file is no shard, and a folder of them says so.
COMPRESSED_NAMES = {".zst": ("zstd", "zstd -dc"), ".zstd": ("zstd", "zstd -dc"), ".bz2": ("bzip2", "bzip2 -dc"),
                    ".xz": ("xz", "xz -dc"), ".lz4": ("lz4", "lz4 -dc"), ".zip": ("zip", "unzip -p"),
                    ".gzip": ("gzip", "")}
GLOB_CHARS = set("*?[")
HIDDEN = (".", "_")  # the first letter of names a listing skips (but a partition folder's: see hides)
#: Table formats whose folder keeps the data files of the table's earlier versions (rows since overwritten, deleted or
#: compacted) beside the current ones, until the table is cleaned up, and whose own files say which are live: a folder
#: or glob whose files lie in such a table is refused (read as plain files: every version's rows, some twice). Each is
#: known by a folder at the table's top: its name, and what it is called in a message.
TABLE_LOGS = {"_delta_log": ("Delta Lake", "_delta_log/"), ".hoodie": ("Apache Hudi", ".hoodie/")}
#: An Apache Iceberg table is known by the files of its ``metadata/`` folder: ``v3.metadata.json`` (a Hadoop
#: catalog's), ``00002-<uuid>.metadata.json`` (any other's), maybe gzip-compressed.
ICEBERG_METADATA = re.compile(r"(?:v\d+|\d{5}-[0-9a-fA-F-]{36})(?:\.gz)?\.metadata\.json")
ICEBERG = ("Apache Iceberg", "metadata/*.metadata.json")
#: How to read a table's current rows: its reader's way to write them as Parquet, and to name its live files.
TABLE_READERS = {
    "Delta Lake": "deltalake's DeltaTable(TABLE).to_pyarrow_table(); its files: DeltaTable(TABLE).file_uris()",
    "Apache Hudi": "Spark's spark.read.format('hudi').load(TABLE); its files: that DataFrame's inputFiles()",
    "Apache Iceberg": "pyiceberg's table.scan().to_arrow(); its files: table.inspect.files()",
}
#: A Hive partition folder's name (``date=2024-06-01``), and an Iceberg table's data folder: a table's own folder is
#: above it.
IN_TABLE = re.compile(r"[^=/]+=[^/]*|data")
#: A glob matches as a shell's does: ``*``, ``?`` and ``[...]`` within one name, ``**`` across folders (any
#: number, none included); names starting with ``.`` or ``_`` are left to :func:`_glob_hides`, as in a listing.
GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTGLOB | wcglob.FORCEUNIX | wcglob.CASE
NAME_FLAGS = wcfnmatch.DOTMATCH | wcfnmatch.FORCEUNIX | wcfnmatch.CASE


@dataclass(frozen=True)
class Shard:
    """One input file: where it is, its name under its input location, and what identifies its content."""

    uri: str
    path: str
    format: Literal["parquet", "jsonl", "openai-batch"]
    compressed: bool
    size: int
    mtime_ns: int | None
    name: str = ""

    @property
    def key(self) -> str:
        """A stable short id for the shard (from its name), used in output file names and commit records."""
        return hashlib.sha1((self.name or self.uri).encode()).hexdigest()[:12]

    def fingerprint(self) -> dict:
        found = {"uri": self.uri, "size": self.size, "mtime_ns": self.mtime_ns, "name": self.name}
        folder = real_folder(self.uri)
        if folder is not None:  # listed through a symbolic link: where the file was (only then, so records stay)
            found["folder"] = folder
        target = link_target(self.uri)
        if target is not None:  # a link to a plain file (latest.jsonl -> 2026-11-28.jsonl): the file it led to
            found["target"] = target
        return found

    def filesystem(self) -> pafs.FileSystem:
        return resolve(self.uri)[0]


#: What a URI's path may hold as it is (RFC 3986 ``pchar`` but ``%``); anything else is percent-encoded.
PATH_CHARS = "/!$&'()*+,;=:@~"
#: A location as a user writes it also keeps ``%`` escapes and a query (``?region=...``); glob brackets, a ``?``
#: wildcard and a ``#`` are encoded (pyarrow refuses brackets in a URI, reads ``?`` as a query and ``#`` as the start
#: of a fragment, which it drops with all after it, and decodes them all).
LOCATION_CHARS = PATH_CHARS + "?%"
#: What a location's path (before its query) may hold that pyarrow would not take as part of the path as it is.
NOT_PATH = set("?#")


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as ``s3://bucket/prefix``.

    pyarrow parses URIs strictly: a space or an accented letter is a syntax error there, and ``%20`` is a
    space. A location that does not parse as written is tried again with those characters percent-encoded
    (``s3://bucket/my out`` opens ``my out``); shards' own URIs come encoded (:func:`uri_of`). A ``?`` before
    the options at the end is a wildcard, encoded first: for ``file://`` pyarrow would take it for a query. So is a
    ``#``, a character of the key (``team#3/``): pyarrow takes it for the start of a fragment and drops the rest, so
    ``s3://bucket/team#3/a.jsonl`` opened ``bucket/team`` (another folder's files read, an output written there). A
    local path that starts with ``~`` is in the home directory (a spec's paths meet no shell to expand it).
    """
    if "://" in location:
        scheme, rest = location.split("://", 1)
        query = QUERY.search(rest)
        try:
            if NOT_PATH & set(rest[: query.start() if query else None]):
                return pafs.FileSystem.from_uri(f"{scheme}://{_encode_location(rest)}")
            try:
                return pafs.FileSystem.from_uri(location)
            except pa.ArrowInvalid:
                return pafs.FileSystem.from_uri(f"{scheme}://{_encode_location(rest)}")
        except (pa.ArrowInvalid, ValueError, OSError) as exc:
            raise PipelineError(f"{location}: cannot open this location ({exc})") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))  # ~/out: in the home, as a shell


def real_folder(uri: str) -> str | None:
    """The folder a local file is in, its symbolic links resolved, where that is not the folder it was listed in
    (``landing/latest/part-0.jsonl``, ``latest`` a link to ``2026-11-28``: ``…/landing/2026-11-28``); else None. The
    file's own link is not followed: a new version of a file kept as a link into a store (DVC, git-annex) is a new
    version."""
    if "://" in uri:
        return None
    folder = os.path.dirname(os.path.abspath(os.path.expanduser(uri)))
    real = os.path.realpath(folder)
    return real if real != folder else None


def link_target(uri: str) -> str | None:
    """The file a local file listed as a symbolic link to another plain file leads to (``latest.jsonl``, a link to
    ``2026-11-28.jsonl``: ``…/2026-11-28.jsonl``, its links resolved); None for a file that is no link, or not
    local, or a link into a content store, whose target changes with each version of the file: git-annex's
    (``../.git/annex/objects/…/KEY``) and DVC's with ``cache.type symlink`` (``.dvc/cache/files/md5/ab/cdef…``, or
    a shared cache elsewhere, ``/srv/dvc-cache/files/md5/ab/cdef…``), told by :func:`in_store`."""
    if "://" in uri:
        return None
    path = os.path.abspath(os.path.expanduser(uri))
    try:
        written = os.readlink(path)
    except OSError:  # no link (or not there)
        return None
    real = os.path.realpath(path)
    return None if in_store(path, os.path.normpath(os.path.join(os.path.dirname(path), written)), real) else real


#: A content-addressed object's folder and name: a hash's first two hex digits, then the rest (DVC's cache).
_HASHED = re.compile(r"[0-9a-f]{2}/[0-9a-f]{30,}")


def in_store(link: str, written: str, real: str) -> bool:
    """Whether a link (``link``, as its text leads, ``written``, and with every link resolved, ``real``) leads into a
    content store: below the folder it shares with the link's, through a hidden folder (a name starting with ``.``,
    as a listing skips: git-annex's ``.git/annex/objects``, DVC's ``.dvc/cache``), or to an object named by a hash
    in a folder named by its first two digits (DVC's cache anywhere: ``dvc cache dir /srv/dvc-cache``)."""
    for base, target in ((os.path.dirname(link), written), (os.path.realpath(os.path.dirname(link)), real)):
        below = os.path.relpath(target, os.path.commonpath([base, target])).split(os.sep)
        if any(part.startswith(".") and part not in (".", "..") for part in below[:-1]):
            return True
    return any(_HASHED.fullmatch("/".join(target.split(os.sep)[-2:])) for target in (written, real))


def uri_of(location: str, path: str) -> str:
    """The URI of ``path`` (as a filesystem under ``location`` names it): percent-encoded, so that it names the
    same object when parsed again (a key may hold spaces, ``%``, ``?`` or any letter)."""
    if "://" in location:
        scheme = location.split("://", 1)[0]
        return f"{scheme}://{urllib.parse.quote(path, safe=PATH_CHARS)}"
    return path


def reader_uri(location: str) -> str | None:
    """The URI that readers parsing it (pyarrow, pandas) read as ``location``, where that is not ``location`` as
    written: a ``#`` in a key, which they take for the start of a fragment and drop with all after it (``s3://b/runs#2``
    reads ``runs/``, another location, silently), or a space or an accent, which they refuse; else None."""
    if "://" not in location:
        return None
    scheme, rest = location.split("://", 1)
    encoded = f"{scheme}://{_encode_location(rest)}"
    return encoded if encoded != location else None


#: A location's query: options at its end, ``?region=us-east-1&scheme=http``. Any other ``?`` is a glob's.
QUERY = re.compile(r"\?[A-Za-z_][\w.-]*=[^&#]*(?:&(?:[A-Za-z_][\w.-]*=[^&#]*)?)*$")


def _encode_location(rest: str) -> str:
    """A location's part after ``scheme://`` with what a URI can't hold percent-encoded; ``%XX`` escapes kept, and a
    query at its end; a ``?`` before that is a wildcard (``part-?.jsonl``), which a URI would take for a query, and a
    ``#`` a character of a name, which a URI would take for the start of a fragment."""
    query = QUERY.search(rest)
    path, options = (rest[: query.start()], query.group()) if query else (rest, "")
    quoted = urllib.parse.quote(path, safe=LOCATION_CHARS.replace("?", ""))
    return re.sub(r"%(?![0-9A-Fa-f]{2})", "%25", quoted) + options


#: A location that starts as a URI with one ``/`` after its scheme: ``file:/data/out``, ``s3:/bucket/out``.
ONE_SLASH = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def one_slash_problem(location: str) -> str | None:
    """Why a location written as a URI with one ``/`` after its scheme (``file:/data/out``, as Hadoop and Spark print
    a local path; ``s3:/bucket/out``, a slash short) is refused, with the spelling to use; None for any other. Without
    the ``//`` it is no URI here but a relative path: a folder named ``file:`` under the directory the command runs
    in, another one from each directory, where every row would be scored again and none reach the place it names."""
    found = ONE_SLASH.match(location)
    if found is None:
        return None
    scheme, rest = found.group(1), location[found.end() :]
    fix = f"file:///{rest} or /{rest}" if scheme.lower() == "file" else f"{scheme}://{rest}"
    return (
        f"{location} has one / after {scheme}:, so it would be a relative path, a folder named {scheme}: in the "
        f"directory the command runs in (another one from each directory); write {fix} (./{location} for a local "
        "folder of that name)"
    )


def store_path_problem(location: str) -> str | None:
    """What a store's location holds that a path there can't, as a sentence with the spelling to use; None if
    nothing. A URI with one ``/`` after its scheme (:func:`one_slash_problem`). An empty name (``s3://bucket//x``):
    pyarrow refuses it. A ``.`` or ``..`` between slashes: a store keeps it in the key, where a reader (and the check
    of output.path against the input, which compares paths as written) takes a step between folders. Trailing
    slashes are no names (a folder); a local path or a ``file://`` URI is the disk's to resolve."""
    if (one_slash := one_slash_problem(location)) is not None:
        return one_slash
    if stores.is_local_location(location):
        return None
    body, query = _split_query(location)
    scheme, rest = body.split("://", 1)
    bucket, _, path = rest.partition("/")
    path = path.rstrip("/")
    names = urllib.parse.unquote(path).split("/") if path else []
    odd = next((name for name in names if name in ("", ".", "..")), None)
    if odd is None:
        return None
    kept: list[str] = []
    for name in names:  # decoded: a %2F%2F or %2E%2E is the same empty or dot name
        if name == "..":
            kept = kept[:-1]
        elif name not in ("", "."):
            kept.append(name)
    fix = f"{scheme}://{bucket}/{'/'.join(kept)}{'/' if kept and body.endswith('/') else ''}{query}"
    plain = fix != location and "%" not in "".join(kept) and store_path_problem(fix) is None
    spelling = f"write {fix}" if plain else "write each name once between single slashes"
    if odd == "":
        return f"an empty name (//) in {location}: pyarrow refuses it in a store's path; {spelling}"
    return (
        f"a {odd!r} between slashes in {location}: a store keeps it in the key, where readers take a step between "
        f"folders; {spelling}"
    )


def detect_format(path: str, wanted: str, named: bool = False) -> tuple[str, bool] | None:
    """(format, gzip-compressed) of a file name, or None for files that are not shards.

    ``named``: the file is named in input.paths itself, not found in a folder or by a glob. Batch requests are
    JSON lines: in a folder, the files named as JSON lines are (a README.txt beside them is no request file);
    a file named by itself is read whatever its name, as an explicit ``jsonl`` format reads it. Parquet never.
    """
    name = path.rsplit("/", 1)[-1]
    compressed = name.lower().endswith(".gz")
    stem = name[:-3] if compressed else name
    ext = os.path.splitext(stem)[1].lower()
    found = FORMATS.get(ext)
    if wanted == "openai-batch":
        return (wanted, compressed) if found == "jsonl" or (named and found is None) else None
    if wanted != "auto":
        return None if found and found != wanted else (wanted, compressed)
    return (found, compressed) if found else None


def _is_hidden(path: str, root: str) -> bool:
    """Whether a name under ``root`` starts with ``.`` or ``_``: a writer's temporary or bookkeeping files
    (``_temporary/``, ``.part-0.crc``, this project's ``_staging/``), which a listing skips (:func:`hides`)."""
    relative = path[len(root) :].lstrip("/")
    return any(hides(part) for part in relative.split("/"))


def hides(name: str) -> bool:
    """Whether a listing skips a name: one starting with ``.``, or with ``_`` but for a Hive partition folder's (it
    holds a ``=``: ``_ingest_date=2024-06-01``), which Spark reads as data too."""
    return name.startswith(".") or (name.startswith("_") and "=" not in name)


def _expand(
    location: str, wanted: str = "auto", outputs: Sequence[str] = ()
) -> tuple[str, list[tuple[str, pafs.FileInfo]]]:
    """The root a location's files are named relative to, and the files: (uri, info). ``wanted``: the input's format,
    which tells the files of a listing that are read (a table is refused only where one of those lies in it);
    ``outputs``: local folders left out of the input (their real paths), which a link to nothing may lead into.

    A store's refusal (no such bucket, access denied), or a path pyarrow refuses, is one line naming the location.
    """
    fs, path = resolve(location)
    try:
        return _list(location, fs, path, wanted, outputs)
    except OSError as exc:
        raise stores.refusal("input.paths:", location, exc) from None
    except pa.ArrowInvalid as exc:  # a path it can't take (an empty name, s3://bucket//x): spec.py refuses most
        raise stores.invalid_path("input.paths:", location, exc) from None


def _list(
    location: str, fs: pafs.FileSystem, path: str, wanted: str = "auto", outputs: Sequence[str] = ()
) -> tuple[str, list[tuple[str, pafs.FileInfo]]]:
    """A glob's files; a folder's files; or a file named as it is.

    A location ending in ``/`` names a folder (pyarrow drops the ``/``). On a store a key may be both an object and
    the folder of the keys under it (``aws s3 cp f s3://bucket/data`` makes an object ``data`` beside ``data/...``),
    and pyarrow finds the object first: the folder is listed when the location ends in ``/``, and a location without
    it that is both is refused, rather than reading one of the two without a word.

    A glob that matches nothing is the path as written, where that exists, as a shell takes it: ``[team-a]`` in
    ``landing [team-a]/`` is a set of characters to a glob, which matches a one-letter name only."""
    if GLOB_CHARS & set(path):
        root, files = _glob(location, fs, path, wanted, outputs)
        if files or "[" not in path or fs.get_file_info(path).type == pafs.FileType.NotFound:
            return root, files
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        stores.check_bucket(fs, path, "input.paths:", location)  # a missing bucket, said so
        raise PipelineError(
            f"input.paths: {location} does not exist; check the path (relative paths start at the current directory)"
        )
    if info.type == pafs.FileType.Directory:
        return path, _folder_files(location, _files_under(fs, path), path, wanted, outputs)
    folder = names_folder(location)
    if stores.is_local(fs):
        if folder:
            raise PipelineError(
                f"input.paths: {location} names a folder (it ends in /), but it is a file; drop the / to read the file"
            )
    elif folder:
        below = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        if below:
            return path, _folder_files(location, below, path, wanted)
        raise PipelineError(
            f"input.paths: {location} names a folder (it ends in /), and there is none: only an object of that name, "
            "with no key under it; drop the / to read the object"
        )
    elif fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):  # keys under path/: a folder too
        raise PipelineError(
            f"input.paths: {location} is both an object and a folder (keys under {path.split('/', 1)[-1]}/), so it "
            f"is not read as either; write {with_slash(location)} (with the /) to read the folder, or delete or rename "
            "the object (a file copied to the folder's name without its trailing /, as `aws s3 cp f s3://bucket/data`)"
        )
    return info.path.rsplit("/", 1)[0], [(uri_of(location, info.path), info)]


def _files_under(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """Every file under a folder (its folders below too). A store's by its listing; a local folder's by a walk that
    follows symbolic links, as a listing does, but none to a folder it is in: a link to a folder above (``up ->
    ..``) had pyarrow's listing go down until the system's limit on links (every file read once per level, and two
    such links, 2**40 paths: no end). A folder reached by several names (``latest -> 2024-06-01`` beside it) is
    listed under each: which of a file's names is read is :func:`list_shards`' choice, once hidden names and a glob
    have had their say (a folder reached first as ``.snapshots/2024-06-01``, which a listing skips, or as ``v2``, which
    ``data/**/latest/*.jsonl`` does not match, is read under its link). The folders reached without a link are walked
    first."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    files: list[pafs.FileInfo] = []
    top = _identity(folder)
    plain: deque[tuple[str, tuple]] = deque([(folder, (top,))])  # reached without a link below ``folder``, and the
    linked: deque[tuple[str, tuple]] = deque()  # identities of the folders it is in; through a link
    cycles: list[str] = []  # links to a folder they are in
    while plain or linked:
        through_link = not plain
        at, within = linked.popleft() if through_link else plain.popleft()
        listing = fs.get_file_info(pafs.FileSelector(at, allow_not_found=True))  # gone since it was found: no files
        files.extend(_dangling(at))
        for info in sorted(listing, key=lambda info: info.path):
            if info.type == pafs.FileType.Directory:
                identity = _identity(info.path)
                if identity is None:  # gone since the listing
                    continue
                if identity in within:
                    cycles.append(info.path[len(folder) :].lstrip("/"))
                    continue
                queue = linked if through_link or os.path.islink(info.path) else plain
                queue.append((info.path, (*within, identity)))
            elif info.is_file:
                files.append(info)
    if cycles:
        log.warning(
            "input.paths: %d symbolic link(s) under %s lead to a folder they are in (%s): not followed, its files are "
            "read under the names without the link", len(cycles), folder, ", ".join(sorted(cycles)[:3]))
    return files


def _dangling(folder: str) -> list[pafs.FileInfo]:
    """The symbolic links in a local folder that lead to nothing (their target missing: a share not mounted, a
    git-annex or DataLad file not fetched; or a loop of links), as infos of an unknown type: pyarrow's listing leaves
    them out without a word, and the rows behind them with them (:func:`_refuse_dangling`)."""
    try:
        with os.scandir(folder) as entries:
            return [pafs.FileInfo(entry.path, pafs.FileType.Unknown) for entry in entries
                    if entry.is_symlink() and not os.path.exists(entry.path)]
    except OSError:  # gone since it was listed: nothing in it
        return []


def _refuse_dangling(location: str, links: list[str], root: str, wanted: str, outputs: Sequence[str] = ()) -> None:
    """PipelineError naming the links to nothing (:func:`_dangling`, their paths) that stand where the input would
    read a file (named as one of the format ``wanted``) or a folder (a name without an extension); others (named
    as no input file: ``notes.txt``) are no input, as such a file is none, and so is one that leads into a folder of
    ``outputs`` (the job's output, not made yet: left out of the input when it is)."""
    read = [link for link in links
            if (detect_format(link, wanted) is not None or not os.path.splitext(link.rsplit("/", 1)[-1])[1])
            and not any(is_within(os.path.realpath(link), output) for output in outputs)]
    if read:
        names = ", ".join(f"{link[len(root):].lstrip('/')} -> {os.readlink(link)}" for link in sorted(read)[:3])
        raise PipelineError(
            f"input.paths: {location}: {len(read)} symbolic link(s) where the input reads a file or folder "
            f"lead to nothing ({names}{' …' if len(read) > 3 else ''}): the rows behind them can't be read, and a "
            "run without them would leave them out of the output; mount or fetch what they lead to (`git annex get`, "
            "`datalad get`), or delete the links"
        )


def _folder_files(
    location: str, infos: list[pafs.FileInfo], path: str, wanted: str = "auto", outputs: Sequence[str] = ()
) -> list[tuple[str, pafs.FileInfo]]:
    """The files of a folder's listing, but hidden ones; a table that keeps earlier versions' files is refused, where
    a file the input reads (of the format ``wanted``) lies in it; so are links to nothing (:func:`_refuse_dangling`)."""
    links = [i.path for i in infos if i.type == pafs.FileType.Unknown and not _is_hidden(i.path, path)]
    _refuse_dangling(location, links, path, wanted, outputs)
    files = [(uri_of(location, i.path), i) for i in infos if i.is_file and not _is_hidden(i.path, path)]
    _no_table(location, table_tops((info.path for info in infos), path), _read_paths(files, wanted))
    return files


def _read_paths(files: list[tuple[str, pafs.FileInfo]], wanted: str) -> list[str]:
    """The paths of a listing's files that the input reads as shards of the format ``wanted`` (the table of a Delta
    Lake table's Parquet beside JSON lines read under ``input.format: jsonl`` is no file of the input)."""
    return [info.path for _, info in files if detect_format(info.path, wanted) is not None]


def _split_query(location: str) -> tuple[str, str]:
    """(the location without its query, the query: ``?region=...`` at the end of a URI, or '')."""
    if "://" not in location:
        return location, ""
    query = QUERY.search(location.split("://", 1)[1])
    return (location[: len(location) - len(query.group())], query.group()) if query else (location, "")


def names_folder(location: str) -> bool:
    """Whether a location ends in ``/`` (before a URI's query): it names a folder, not a file."""
    return _split_query(location)[0].rstrip().endswith("/")


def with_slash(location: str) -> str:
    """The location with a ``/`` at the end of its path (before a URI's query)."""
    body, query = _split_query(location)
    return f"{body.rstrip().rstrip('/')}/{query}"


def _glob(
    location: str, fs: pafs.FileSystem, pattern: str, wanted: str = "auto", outputs: Sequence[str] = ()
) -> tuple[str, list[tuple[str, pafs.FileInfo]]]:
    """The files a glob names, as if each match were listed itself: a file, or a folder with every file under
    it (only folders when it ends with ``/``). Named relative to the glob's fixed part (the folders before its
    first wildcard), which must name a folder (a bucket at least)."""
    segments = pattern.split("/")
    fixed = next(i for i, name in enumerate(segments) if GLOB_CHARS & set(name))
    base = "/".join(segments[:fixed])
    if not base.strip("/"):
        raise PipelineError(
            f"input.paths: {location}: a glob needs a folder before its first wildcard (a bucket, at least); "
            "name the folder the files are in"
        )
    wild = [name for name in segments[fixed:] if name]
    matcher = wcglob.compile("/".join(wild), flags=GLOB_FLAGS)
    folders_only = names_folder(location)
    files = []
    listed = []  # a store's listing holds a table's own keys (a local one: _tables)
    dangling = []  # links to nothing the glob matches, or that stand for a folder it would enter
    for info in _glob_listing(fs, base, wild):
        parts = info.path[len(base) :].lstrip("/").split("/")
        if info.type == pafs.FileType.Unknown and not _glob_hides(parts, wild) and _may_match(parts, wild, matcher):
            dangling.append(info.path)
        if not info.is_file:
            continue
        listed.append(info.path)
        if _glob_hides(parts, wild):
            continue
        depths = range(len(parts) - 1 if folders_only else len(parts), 0, -1)
        if any(matcher.match("/".join(parts[:depth])) for depth in depths):
            files.append((uri_of(location, info.path), info))
    _no_table(location, table_tops(listed, base), _read_paths(files, wanted))
    _refuse_dangling(location, dangling, base, wanted, outputs)
    if not files:
        # A store lists a missing bucket as empty; credentials limited to a prefix may not look at the bucket.
        stores.check_bucket(fs, base, "input.paths:", location, refused_is_unknown=True)
    return base, files


def _may_match(parts: list[str], wild: list[str], matcher: Any) -> bool:
    """Whether a path (its names below a glob's fixed part) is one the glob reads, or lies in a folder it reads, or,
    without an extension, may be a folder it would enter (its names match the glob's, each at its place, up to a
    ``**``, below which every folder is entered)."""
    if any(matcher.match("/".join(parts[:depth])) for depth in range(len(parts), 0, -1)):
        return True
    if os.path.splitext(parts[-1])[1]:  # a file the glob does not read
        return False
    spread = wild.index("**") if "**" in wild else len(wild)
    entered = all(wcfnmatch.fnmatch(part, name, flags=NAME_FLAGS) for part, name in zip(parts, wild[:spread]))
    return entered and (len(parts) <= spread or "**" in wild)


def _glob_listing(fs: pafs.FileSystem, base: str, wild: list[str]) -> Iterator[pafs.FileInfo]:
    """What a glob needs listed. On a local disk, folder by folder for its names before a ``**``, entering only
    the folders that match (``incoming/*.jsonl`` lists incoming/ alone, not a growing incoming/done/), then
    everything under the folders matched last. On a store, everything under the glob's fixed part: a store's
    folders are key prefixes, which arrow's listing of one level leaves out on GCS (only marker objects show),
    and a request per folder would cost more than a listing of a thousand keys a request."""
    if not isinstance(fs, pafs.LocalFileSystem):
        yield from fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return
    folders = [base]
    for at, name in enumerate(wild):
        if name == "**":
            break
        matched = []
        for folder in folders:
            for link in _dangling(folder):  # a link to nothing the level's name matches: :func:`_glob` says so
                if wcfnmatch.fnmatch(link.base_name, name, flags=NAME_FLAGS):
                    yield link
            for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                if not wcfnmatch.fnmatch(info.base_name, name, flags=NAME_FLAGS):
                    continue
                if info.type == pafs.FileType.Directory:
                    matched.append(info.path)
                elif at == len(wild) - 1:
                    yield info
        folders = matched
    for folder in folders:
        yield from _files_under(fs, folder)


def _glob_hides(parts: list[str], wild: list[str]) -> bool:
    """Whether a file (its names below the glob's fixed part) has a name a listing skips that the glob does not
    spell out where it stands: by a name of its own that starts the same way (``_incoming``, ``.cache*``), at
    that place, or anywhere after a ``**`` before it. Below a matched folder nothing is spelled out."""
    spread = wild.index("**") if "**" in wild else len(wild)
    for at, part in enumerate(parts):
        if not hides(part):
            continue
        names = wild[at : at + 1] if at < spread else wild[spread + 1 :]
        if not any(name.startswith(HIDDEN) and wcfnmatch.fnmatch(part, name, flags=NAME_FLAGS) for name in names):
            return True
    return False


def _table_mark(parts: list[str]) -> tuple[int, tuple[str, str]] | None:
    """Where a listed file's names (below a listing's root) enter a table's own folder (:data:`TABLE_LOGS`,
    :data:`ICEBERG_METADATA`), and that table's format, or None."""
    for at, name in enumerate(parts[:-1]):
        if name in TABLE_LOGS:
            return at, TABLE_LOGS[name]
        if name == "metadata" and at == len(parts) - 2 and ICEBERG_METADATA.fullmatch(parts[-1]):
            return at, ICEBERG
    return None


def table_tops(paths: Iterable[str], root: str) -> dict[str, tuple[str, str]]:
    """The tables whose own files (:data:`TABLE_LOGS`, :data:`ICEBERG_METADATA`) a listing holds (``paths`` under
    ``root``): each table's top folder, as a path of the listing's, and its format."""
    tops: dict[str, tuple[str, str]] = {}
    for path in paths:
        parts = path[len(root) :].lstrip("/").split("/")
        if (mark := _table_mark(parts)) is not None:
            tops.setdefault("/".join([root.rstrip("/"), *parts[: mark[0]]]), mark[1])
    return tops


def _no_table(location: str, tops: dict[str, tuple[str, str]], read: Iterable[str]) -> None:
    """Refuse files to be read (paths) that lie in one of the tables ``tops`` (:func:`table_tops`). Only those: a
    table beside the files a glob matches, or in a folder a listing skips (``_archive/``), is no file of the input."""
    if not tops:
        return
    for path in read:
        folder = path
        while "/" in folder:
            folder = folder.rpartition("/")[0]
            if folder in tops:
                raise table_refusal(location, uri_of(location, folder), tops[folder])


def _local_table(folder: str) -> tuple[str, str] | None:
    """The format of a local folder that is a table's top folder, or None."""
    for name, kind in TABLE_LOGS.items():
        if os.path.isdir(os.path.join(folder, name)):
            return kind
    metadata = os.path.join(folder, "metadata")
    try:
        with os.scandir(metadata) as entries:
            if any(ICEBERG_METADATA.fullmatch(entry.name) for entry in entries):
                return ICEBERG
    except OSError:  # none there (or one this process may not list: no table it can tell)
        pass
    return None


def _tables(location: str, fs: pafs.FileSystem, root: str, files: list[pafs.FileInfo]) -> None:
    """Refuse files of a folder or glob that lie in a table that keeps earlier versions' files (:data:`TABLE_LOGS`),
    where a listing's own entries don't show the table's: on a local disk (a few stat calls) a table in any folder
    above a file (a glob's matched names hide the table's beside them; a location inside a table,
    ``events/date=2024-06-01/``, an Iceberg table's ``events/data/``); on a store (a few requests, only where such a
    location names a Hive partition folder or a ``data`` folder, as one inside a table does) the folders above
    those."""
    if stores.is_local(fs):
        seen: set[str] = set()
        for info in files:
            folder = os.path.dirname(info.path)
            while folder not in seen:
                seen.add(folder)
                if (kind := _local_table(folder)) is not None:
                    raise table_refusal(location, folder, kind)
                folder = os.path.dirname(folder)
        return
    names = root.split("/")
    above = list(dict.fromkeys("/".join(names[:at]) for at in range(1, len(names)) if IN_TABLE.fullmatch(names[at])))
    if not above:
        return
    try:
        marks = fs.get_file_info([f"{folder}/{name}" for folder in above for name in (*TABLE_LOGS, "metadata")])
        for info in marks:
            if info.type != pafs.FileType.Directory:
                continue
            folder, _, name = info.path.rpartition("/")
            if name in TABLE_LOGS:
                raise table_refusal(location, uri_of(location, folder), TABLE_LOGS[name])
            metadata = fs.get_file_info(pafs.FileSelector(info.path, allow_not_found=True))
            if any(ICEBERG_METADATA.fullmatch(entry.base_name) for entry in metadata):
                raise table_refusal(location, uri_of(location, folder), ICEBERG)
    except OSError:  # a store that refuses the look above the location (credentials for its prefix only): can't tell
        return


def table_refusal(location: str, table: str, kind: tuple[str, str]) -> PipelineError:
    """Why a location whose files lie in a table that keeps earlier versions' files is not read as its files, and how
    to read the table."""
    name, mark = kind
    article = "an" if name[0] in "AEIOU" else "a"
    where = "" if table.rstrip("/") == location.rstrip("/") else f"{location}: "  # a glob, a folder in it or above
    return PipelineError(
        f"input.paths: {where}{table} is {article} {name} table (it holds {mark}), whose folder keeps the data "
        "files of its earlier versions (rows since overwritten, deleted or compacted) until the table is cleaned "
        "up, so its files are not the table's rows (read as plain files: every version's rows, some twice); write its "
        f"current version as Parquet and read that, or name its current files in input.paths ({TABLE_READERS[name]})"
    )


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (paths as the filesystem gives them)."""
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def real_path(fs: pafs.FileSystem, path: str) -> str:
    """A local path with its symbolic links resolved (the folder it really is); a store's path as it is."""
    return os.path.realpath(path) if isinstance(fs, pafs.LocalFileSystem) else path


class UnderFolder:
    """Whether a local path lies in a folder (or is it), by the folder's identity (device and inode): the same
    through every path to it, which a comparison of paths misses (a bind mount of the folder elsewhere, or
    another spelling of a name on a disk that ignores case). Each folder is looked at once."""

    def __init__(self, fs: pafs.FileSystem, folder: str) -> None:
        self.identity = _identity(folder) if isinstance(fs, pafs.LocalFileSystem) else None
        self.seen: dict[str, bool] = {}

    def __call__(self, path: str) -> bool:
        if self.identity is None:
            return False
        walked: list[str] = []
        folder, found = path, False
        while True:
            if folder in self.seen:
                found = self.seen[folder]
                break
            walked.append(folder)
            if _identity(folder) == self.identity:
                found = True
                break
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        self.seen.update(dict.fromkeys(walked, found))
        return found


def _identity(path: str, folder: bool = True) -> tuple[int, int] | None:
    """A local folder's (``folder``) or file's device and inode, through its symbolic links: the same for each of a
    file's hard links, and through a bind mount; None where it can't be looked at (gone since the listing), or is
    no folder where a folder is asked for."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if not folder or stat.S_ISDIR(found.st_mode) else None


def list_shards(
    paths: list[str], wanted_format: str = "auto", exclude: Sequence[str] = (), empty_is_no_input: bool = False,
    not_read: list[str] | None = None,
) -> list[Shard]:
    """Every input shard under ``paths``, sorted and without duplicates.

    Each location must give a file: one that gives none (a glob that matches nothing, a folder without
    .parquet or .jsonl files) is an error, as a path that does not exist is, not a job without its rows. A
    scheduled tick passes ``empty_is_no_input``: a folder or glob with nothing in it yet is no input (a file
    it names must still be one to read).

    ``not_read``: a list the local paths of the names not read are added to (a file found under another).

    Files under an ``exclude`` location (the job's own output, when it lies inside an input folder,
    or is reached through a symbolic link there: a listing follows links) are left out. Two different
    files with the same name (path under their input location) are an error: they would be taken for
    one shard.
    """
    shards: dict[str, Shard] = {}
    # a local file (its device and inode, which its hard links and a bind mount share; else its real path): the uri
    # of its shard, reached through a link
    by_file: dict[tuple[int, int] | str, tuple[str, bool, str]] = {}  # (uri, through a link, real path)
    doubles: list[tuple[str, str]] = []  # (a name not read, the name read): one file found under both
    unread = [] if not_read is None else not_read  # the paths of the names not read
    real_file = _RealPaths()
    skipped = [(xfs, xpath, real_path(xfs, xpath)) for xfs, xpath in map(resolve, exclude)]
    aliases = [UnderFolder(xfs, xpath) for xfs, xpath in map(resolve, exclude)]  # reached by another path
    outputs = [xreal for xfs, _, xreal in skipped if isinstance(xfs, pafs.LocalFileSystem)]
    for location in paths:
        try:
            root, files = _expand(location, wanted_format, outputs)
        except UnicodeDecodeError as exc:  # pyarrow's listing decodes each name as UTF-8
            raise PipelineError(
                f"input.paths: {location} holds a file or folder whose name is not UTF-8 text "
                f"({bytes(exc.object[max(0, exc.start - 40) : exc.end + 20])!r}), so it can't be named as a shard; "
                "rename it (`convmv -f latin1 -t utf8 -r --notest FOLDER` renames a folder's Latin-1 names)"
            ) from None
        fs, path = resolve(location)
        named = [info.path for _, info in files] == [path]  # a file named as it is (a glob's chars in its name too)
        globbed = bool(GLOB_CHARS & set(path)) and root != path and not named  # not the path as written (_list)
        a_listing = globbed or root == path  # a folder or a glob, not a named file
        if a_listing:  # a Delta Lake, Iceberg or Hudi table's folder holds its earlier versions' files too
            _tables(location, fs, root, [info for _, info in files if detect_format(info.path, wanted_format)])
        found = left_out = 0
        other: list[str] = []  # files that are no shard by their name: said, not dropped without a word
        for uri, info in files:
            kind = detect_format(info.path, wanted_format, named=not a_listing)
            if kind is None:
                other.append(info.base_name)
                continue
            if any(
                type(fs) is type(xfs) and (is_within(info.path, xpath) or is_within(real_path(fs, info.path), xreal))
                for xfs, xpath, xreal in skipped
            ) or (isinstance(fs, pafs.LocalFileSystem) and any(under(os.path.dirname(info.path)) for under in aliases)):
                left_out += 1
                continue
            name = info.path[len(root) :].lstrip("/") if is_within(info.path, root) else info.base_name
            mtime = info.mtime_ns if info.mtime_ns is not None else None
            found += 1
            earlier = shards.get(uri)
            if earlier is not None:  # listed again from a location inside another: the name under the outer one
                if name.endswith(f"/{earlier.name}"):
                    shards[uri] = replace(earlier, name=name)
                continue
            if isinstance(fs, pafs.LocalFileSystem):  # a file found under two names (a link to it) is read once
                real = real_file(info.path)
                linked = real != f"{real_file(root)}/{name}"
                same = _identity(info.path, folder=False) or real  # a hard link, a folder bound elsewhere: no link
                prior = by_file.get(same)
                if prior is not None and prior[0] != uri:
                    kept = shards[prior[0]].name
                    # the same path spelled from an outer location (not a hard link under the same name below)
                    outer = prior[1] == linked and prior[2] == real and name.endswith(f"/{kept}")
                    if (not prior[1] or linked) and not outer:  # the first, unless the new one goes through no link
                        doubles.append((name, kept))
                        unread.append(info.path)
                        continue
                    dropped = shards.pop(prior[0])
                    doubles.append((dropped.name, name))
                    unread.append(dropped.path)
                by_file[same] = (uri, linked, real)
            shards[uri] = Shard(uri, info.path, kind[0], kind[1], info.size or 0, mtime, name)  # type: ignore[arg-type]
        compressed = sorted(n for n in other if os.path.splitext(n)[1].lower() in COMPRESSED_NAMES)
        if other and (found or (empty_is_no_input and a_listing)):  # a landing folder of files not read: said
            kinds, hint = {
                "auto": ("Parquet or JSON lines files (.parquet, .jsonl, .ndjson, .json, each also .gz)",
                         "convert them to be read"),
                "openai-batch": (f"{BATCH_FILES}, which input.format openai-batch reads",
                                 "rename them, or name each in input.paths, to be read"),
            }.get(wanted_format, (f"{wanted_format} files (input.format)", "convert them to be read"))
            if compressed:
                hint += (f"; {', '.join(compressed[:3])}: compressed as {_compressions(compressed)}, and only gzip "
                         "files named .gz are decompressed")
            log.warning(
                "input.paths: %s holds %d file(s) that are not read, their names not those of %s: e.g. %s; their "
                "rows are in no output (%s)", location, len(other), kinds, ", ".join(sorted(other)[:3]), hint)
        if not found and not (empty_is_no_input and a_listing):
            below = ""
            if left_out:
                raise PipelineError(
                    f"input.paths: {location} gives no file outside output.path ({left_out} there: a job's output "
                    "is never its input); move the input out of the output folder, or choose another output.path"
                )
            if globbed and "**" not in location:
                below = f" (a glob's * stays within one folder: {_recursive(location)} takes the folders below too)"
            if globbed and "[" in location:  # the path as written does not exist either (_list)
                below += " ([...] in a glob is a set of characters that matches one: write [[] for a [ of a name)"
            if compressed:
                raise PipelineError(_compressed_only(location, compressed))
            if wanted_format == "openai-batch":
                raise PipelineError(
                    f"input.paths: no {BATCH_FILES} found under {location}; check the path{below}, remove it "
                    "from the list, or name each file of requests in input.paths (one named so is read whatever "
                    "its name)"
                )
            raise PipelineError(
                f"input.paths: no .parquet or .jsonl(.gz) files found under {location}; check the path{below}, "
                "remove it from the list, or set input.format for files without those extensions"
            )
    if doubles:
        log.warning(
            "input.paths: %d file(s) found under two names (through a symbolic or hard link, or named twice) are "
            "read once, under the name without a symbolic link: %s", len(doubles),
            ", ".join(f"{name} (read as {kept})" for name, kept in sorted(doubles)[:3]))
    _check_names(list(shards.values()))
    return [shards[k] for k in sorted(shards)]


def _compressions(names: list[str]) -> str:
    """The compressions that files named so are in (:data:`COMPRESSED_NAMES`): ``bzip2 or zstd``."""
    return " or ".join(sorted({COMPRESSED_NAMES[os.path.splitext(n)[1].lower()][0] for n in names}))


def _compressed_only(location: str, names: list[str]) -> str:
    """Why a location whose files are compressed as the reader does not decompress (:data:`COMPRESSED_NAMES`) gives
    none, and how to make them readable, the first one's command as the example."""
    kinds = _compressions(names)
    stem, ext = os.path.splitext(names[0])
    tool = COMPRESSED_NAMES[ext.lower()][1]
    example = f"`{tool} {names[0]} | gzip > {stem}.gz`" if tool else f"`mv {names[0]} {stem}.gz`"
    return (
        f"input.paths: no file found under {location} that is read: its {len(names)} file(s) compressed as {kinds} "
        f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) are not, as only gzip files named .gz are "
        f"decompressed; decompress them, or make them gzip files named .gz (as {example})"
    )


class _RealPaths:
    """A local path with its symbolic links resolved, each folder's once (a folder of many files: one lookup)."""

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        folder, _, name = path.rpartition("/")
        real = self.folders.get(folder)
        if real is None:
            real = self.folders[folder] = os.path.realpath(folder or "/")
        joined = f"{real.rstrip('/')}/{name}"
        return os.path.realpath(joined) if os.path.islink(joined) else joined


def _recursive(glob: str) -> str:
    """``data/*.parquet`` as ``data/**/*.parquet``: the same last name, in data/ or any folder below it."""
    head, _, name = glob.rstrip("/").rpartition("/")
    return f"{head}/**/{name}" if head else f"**/{name}"


def _check_names(shards: list[Shard]) -> None:
    seen: dict[str, Shard] = {}
    for shard in shards:
        other = seen.setdefault(shard.name, shard)
        if other is not shard:
            raise PipelineError(
                f"input.paths: {other.uri} and {shard.uri} have the same name {shard.name!r} under their input "
                f"paths, and a shard is known by that name; {_same_name_fix(other.uri, shard.uri)}"
            )


def _same_name_fix(first: str, second: str) -> str:
    """How to list two files of one name apart: their common parent folder, unless its listing would skip one of
    them (a name starting with ``.`` or ``_`` between them and it: :func:`hides`), which that advice lost unsaid."""
    parts = [uri.split("/") for uri in (first, second)]
    common = os.path.commonprefix([p[:-1] for p in parts])
    parent = "/".join(common) or "/"
    skipped = [uri for uri, p in zip((first, second), parts, strict=True) if any(hides(n) for n in p[len(common):])]
    if skipped:
        return (f"their common parent folder, {parent}, would not read {skipped[0]} (a listing skips names that start "
                "with . or _): rename or move one of them so that their names differ")
    return (f"list their common parent folder ({parent}; or a glob such as data/*/) instead of each folder, so that "
            "their names differ")
