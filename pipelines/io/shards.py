"""Finding input shards: files, directories and globs, local or any URI pyarrow's filesystems take."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from pipelines.errors import PipelineError

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Shard:
    """One input file and what identifies its content (size and modification time)."""

    uri: str
    path: str
    format: Literal["parquet", "jsonl"]
    compressed: bool
    size: int
    mtime_ns: int | None

    @property
    def key(self) -> str:
        """A stable short name for the shard, used in output file names and the manifest."""
        return hashlib.sha1(self.uri.encode()).hexdigest()[:12]

    def fingerprint(self) -> dict:
        return {"uri": self.uri, "size": self.size, "mtime_ns": self.mtime_ns}

    def filesystem(self) -> pafs.FileSystem:
        return resolve(self.uri)[0]


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as ``s3://bucket/prefix``."""
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except (pafs.ArrowInvalid, ValueError, OSError) as exc:
            raise PipelineError(f"{location}: cannot open this location ({exc})") from None
    return pafs.LocalFileSystem(), os.path.abspath(location)


def uri_of(location: str, path: str) -> str:
    if "://" in location:
        scheme = location.split("://", 1)[0]
        return f"{scheme}://{path}"
    return path


def detect_format(path: str, wanted: str) -> tuple[str, bool] | None:
    """(format, gzip-compressed) of a file name, or None for files that are not shards."""
    name = path.rsplit("/", 1)[-1]
    compressed = name.endswith(".gz")
    stem = name[:-3] if compressed else name
    ext = os.path.splitext(stem)[1].lower()
    found = FORMATS.get(ext)
    if wanted != "auto":
        return None if found and found != wanted else (wanted, compressed)
    return (found, compressed) if found else None


def _is_hidden(path: str, root: str) -> bool:
    relative = path[len(root) :].lstrip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _expand(location: str) -> list[tuple[str, pafs.FileInfo]]:
    fs, path = resolve(location)
    if GLOB_CHARS & set(path):
        base = path
        while GLOB_CHARS & set(base):
            base = base.rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return [(uri_of(location, i.path), i) for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise PipelineError(
            f"input.paths: {location} does not exist; check the path (relative paths start at the current directory)"
        )
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return [(uri_of(location, i.path), i) for i in infos if i.is_file and not _is_hidden(i.path, path)]
    return [(uri_of(location, info.path), info)]


def list_shards(paths: list[str], wanted_format: str = "auto") -> list[Shard]:
    """Every input shard under ``paths``, sorted and without duplicates; an error if there are none."""
    shards: dict[str, Shard] = {}
    for location in paths:
        for uri, info in _expand(location):
            kind = detect_format(info.path, wanted_format)
            if kind is None:
                continue
            mtime = info.mtime_ns if info.mtime_ns is not None else None
            shards[uri] = Shard(uri, info.path, kind[0], kind[1], info.size or 0, mtime)  # type: ignore[arg-type]
    if not shards:
        raise PipelineError(
            f"input.paths: no .parquet or .jsonl(.gz) files found under {', '.join(paths)}; "
            "check the paths, or set input.format for files without those extensions"
        )
    return [shards[k] for k in sorted(shards)]
