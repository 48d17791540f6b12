"""The output directory: staged files become visible one whole shard at a time.

Layout under ``output.path``::

    part-<shard>-<n>.parquet       predictions (plain Parquet; readers skip the _ entries)
    _errors/part-<shard>-<n>.parquet   quarantined rows with their reasons
    _commits/<shard>.json          one record per committed shard: input fingerprint, counts, files
    _job.json                      the spec (and its hash) these results belong to
    _staging/                      files of shards not yet committed
    _run.json, _SUCCESS            written when every input shard is committed

A shard is committed by moving its staged files into place and then writing its
``_commits`` record (write-then-rename, one small file per shard, so it works on
object stores too). Whatever is not named by a commit record is a leftover of a
crash and is deleted before a run starts, so re-running redoes exactly the
uncommitted shards.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow.fs as pafs

from pipelines import faults
from pipelines.errors import PipelineError
from pipelines.io.shards import Shard, resolve
from pipelines.io.writer import STAGING

log = logging.getLogger(__name__)

COMMITS = "_commits"
ERRORS = "_errors"
JOB = "_job.json"
RUN = "_run.json"
SUCCESS = "_SUCCESS"
OURS = (COMMITS, ERRORS, STAGING, JOB, RUN, SUCCESS)


class OutputDir:
    """One job's output location on any pyarrow filesystem."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.fs, self.root = resolve(location)

    # reading state -----------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        try:
            with self.fs.open_input_stream(f"{self.root}/{name}") as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None

    def commits(self) -> dict[str, dict]:
        """Committed shards by key; a half-written record (crash mid-write) does not count."""
        selector = pafs.FileSelector(f"{self.root}/{COMMITS}", allow_not_found=True)
        found = {}
        for info in self.fs.get_file_info(selector):
            if info.is_file and info.base_name.endswith(".json"):
                record = self.read_json(f"{COMMITS}/{info.base_name}")
                if record and "shard" in record:
                    found[record["shard"]] = record
        return found

    def entries(self) -> list[pafs.FileInfo]:
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type != pafs.FileType.Directory:
            raise PipelineError(f"output.path {self.location} is a file; give a directory")
        return self.fs.get_file_info(pafs.FileSelector(self.root))

    # preparing a run ---------------------------------------------------------------

    def prepare(self, job: dict, shards: list[Shard], overwrite: bool) -> list[Shard]:
        """Check the output belongs to this job; return the shards still to do. Writes nothing."""
        entries = self.entries()
        recorded = self.read_json(JOB)
        if entries and recorded is None and not overwrite:
            if any(not e.base_name.startswith(OURS) for e in entries):
                raise PipelineError(
                    f"output.path {self.location} is not empty and holds no results of this project; "
                    "choose an empty or new output.path"
                )
        if overwrite:
            return list(shards)
        if recorded and recorded.get("spec_hash") != job["spec_hash"]:
            raise PipelineError(
                f"output.path {self.location} holds results of a different job spec "
                f"(hash {recorded.get('spec_hash')}, this spec is {job['spec_hash']}); "
                "use a new output.path, or --overwrite to replace them"
            )
        committed = self.commits()
        changed = _changed_inputs(committed, shards)
        if changed:
            raise PipelineError(
                f"input changed since it was scored: {changed[0]}"
                f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}; "
                "use --overwrite to redo the job, or a new output.path"
            )
        return [s for s in shards if s.key not in committed]

    def finished(self) -> bool:
        return self.fs.get_file_info(f"{self.root}/{SUCCESS}").type == pafs.FileType.File

    def start(self, job: dict, overwrite: bool) -> None:
        """Before work: clear (with overwrite) or clean crash leftovers, and record whose output this is."""
        if overwrite:
            self.clear()
        self.clean(set(self.commits()))
        self.write_json(JOB, job)

    def clear(self) -> None:
        """Delete this project's files under the output path (and nothing else)."""
        for entry in self.entries():
            if entry.base_name.startswith(OURS) or _is_part(entry.base_name):
                _delete(self.fs, entry)

    def clean(self, committed: set[str]) -> None:
        """Delete staging files and any part file of a shard that has no commit record."""
        _delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}"))
        for folder in (self.root, f"{self.root}/{ERRORS}"):
            for entry in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                key = _part_shard(entry.base_name)
                if key is not None and key not in committed:
                    log.info("removing %s: left over from an interrupted run", entry.path)
                    self.fs.delete_file(entry.path)
        for name in (RUN, SUCCESS):
            _delete(self.fs, self.fs.get_file_info(f"{self.root}/{name}"))

    # committing ----------------------------------------------------------------------

    def commit(self, shard: Shard, reports: list[dict], job: dict) -> dict:
        """Move a complete shard's staged files into place, then record the commit."""
        files = self._place(shard.key, [f for r in reports for f in r["files"]], self.root)
        error_files = self._place(shard.key, [f for r in reports for f in r["error_files"]], f"{self.root}/{ERRORS}")
        faults.checkpoint("mid_commit")
        record = {
            "shard": shard.key,
            "input": shard.fingerprint(),
            "spec_hash": job["spec_hash"],
            "model": job["model"],
            "rows_in": sum(r["rows"] + r["errors"] for r in reports),
            "rows": sum(r["rows"] for r in reports),
            "errors": sum(r["errors"] for r in reports),
            "tokens": sum(r["tokens"] for r in reports),
            "padded": sum(r["padded"] for r in reports),
            "confusion": _merged(r["confusion"] for r in reports),
            "reasons": _merged_counts(r["reasons"] for r in reports),
            "files": files,
            "error_files": error_files,
            "committed_at": time.time(),
        }
        self.write_json(f"{COMMITS}/{shard.key}.json", record)
        _delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}/{shard.key}"))
        return record

    def _place(self, key: str, staged: list[str], folder: str) -> list[str]:
        if staged:
            self.fs.create_dir(folder, recursive=True)
        placed = []
        for n, path in enumerate(staged):
            target = f"{folder}/part-{key}-{n:05d}.parquet"
            self.fs.move(path, target)
            placed.append(target[len(self.root) + 1 :])
        return placed

    def write_json(self, name: str, value: Any) -> None:
        """Write-then-rename: a reader sees the old file or the new one, never half of one."""
        path = f"{self.root}/{name}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(f"{path}.tmp") as stream:
            stream.write(json.dumps(value, indent=1, sort_keys=True, default=str).encode())
        self.fs.move(f"{path}.tmp", path)

    def finish(self) -> None:
        """Every shard is committed: drop the empty staging area and write ``_SUCCESS``."""
        _delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}"))
        with self.fs.open_output_stream(f"{self.root}/{SUCCESS}") as stream:
            stream.write(b"")


def _changed_inputs(committed: dict[str, dict], shards: list[Shard]) -> list[str]:
    by_key = {s.key: s for s in shards}
    return [
        by_key[key].uri
        for key, record in committed.items()
        if key in by_key and record.get("input") != by_key[key].fingerprint()
    ]


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def _part_shard(name: str) -> str | None:
    """The shard key in ``part-<key>-<n>.parquet`` (also for ``.tmp`` leftovers)."""
    if not name.startswith("part-"):
        return None
    parts = name.split("-")
    return parts[1] if len(parts) >= 3 else None


def _delete(fs: pafs.FileSystem, info: pafs.FileInfo) -> None:
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(info.path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(info.path)


def _merged(matrices) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for text in matrices:
        for truth, row in json.loads(text).items():
            target = total.setdefault(truth, {})
            for predicted, n in row.items():
                target[predicted] = target.get(predicted, 0) + n
    return total


def _merged_counts(items) -> dict[str, int]:
    total: dict[str, int] = {}
    for text in items:
        for reason, n in json.loads(text).items():
            total[reason] = total.get(reason, 0) + n
    return total
