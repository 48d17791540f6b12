"""Committing a job's output: staged files become visible one whole shard at a time.

The names of the output directory are :mod:`pipelines.output.layout`'s. A shard is
committed by moving its staged files into place and then writing its commit
record (write-then-rename, one small file per shard). Whatever is not named by a
commit record is a leftover of a crash and is deleted before a run starts, so
re-running redoes exactly the uncommitted shards.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow.fs as pafs

from pipelines import faults
from pipelines.errors import PipelineError
from pipelines.io.shards import Shard, resolve
from pipelines.output import layout
from pipelines.output.layout import COMMITS, ERRORS, JOB, OURS, RUN, STAGING, SUCCESS
from pipelines.output.records import CommitRecord, JobRecord, RunSummary, ShardInput, merge_confusion, merge_counts
from pipelines.output.staging import StagingReport

log = logging.getLogger(__name__)


class OutputDir:
    """One job's output location on any pyarrow filesystem."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.fs, self.root = resolve(location)

    # reading state -----------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        return layout.read_json(self.fs, f"{self.root}/{name}")

    def job(self) -> JobRecord | None:
        return JobRecord.parse(self.read_json(JOB))

    def summary(self) -> RunSummary | None:
        return RunSummary.parse(self.read_json(RUN))

    def commits(self) -> dict[str, CommitRecord]:
        """Committed shards by key; a half-written record (crash mid-write) does not count."""
        selector = pafs.FileSelector(f"{self.root}/{COMMITS}", allow_not_found=True)
        found = {}
        for info in self.fs.get_file_info(selector):
            if info.is_file and info.base_name.endswith(".json"):
                record = CommitRecord.parse(self.read_json(f"{COMMITS}/{info.base_name}"))
                if record is not None:
                    found[record.shard] = record
        return found

    def entries(self) -> list[pafs.FileInfo]:
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type != pafs.FileType.Directory:
            raise PipelineError(f"output.path {self.location} is a file; give a directory")
        return self.fs.get_file_info(pafs.FileSelector(self.root))

    # preparing a run ---------------------------------------------------------------

    def prepare(self, job: JobRecord, shards: list[Shard], overwrite: bool) -> list[Shard]:
        """Check the output belongs to this job; return the shards still to do. Writes nothing."""
        entries = self.entries()
        recorded = self.job()
        if entries and recorded is None and not overwrite:
            if any(not e.base_name.startswith(OURS) for e in entries):
                raise PipelineError(
                    f"output.path {self.location} is not empty and holds no results of this project; "
                    "choose an empty or new output.path"
                )
        if overwrite:
            return list(shards)
        if recorded and recorded.spec_hash != job.spec_hash:
            raise PipelineError(
                f"output.path {self.location} holds results of a different job spec "
                f"(hash {recorded.spec_hash}, this spec is {job.spec_hash}); "
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

    def start(self, job: JobRecord, overwrite: bool) -> None:
        """Before work: clear (with overwrite) or clean crash leftovers, and record whose output this is."""
        if overwrite:
            self.clear()
        self.clean(set(self.commits()))
        self.write_json(JOB, job.to_json())

    def clear(self) -> None:
        """Delete this project's files under the output path (and nothing else)."""
        for entry in self.entries():
            if entry.base_name.startswith(OURS) or layout.is_part_file(entry.base_name):
                layout.delete(self.fs, entry)

    def clean(self, committed: set[str]) -> None:
        """Delete staging files and any part file of a shard that has no commit record."""
        layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}"))
        for folder in (self.root, f"{self.root}/{ERRORS}"):
            for entry in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                key = layout.part_shard(entry.base_name)
                if key is not None and key not in committed:
                    log.info("removing %s: left over from an interrupted run", entry.path)
                    self.fs.delete_file(entry.path)
        for name in (RUN, SUCCESS):
            layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{name}"))

    # committing ----------------------------------------------------------------------

    def commit(self, shard: Shard, reports: list[StagingReport], job: JobRecord) -> CommitRecord:
        """Move a complete shard's staged files into place, then record the commit."""
        files = self._place(shard.key, [f for r in reports for f in r.files], self.root)
        error_files = self._place(shard.key, [f for r in reports for f in r.error_files], f"{self.root}/{ERRORS}")
        faults.checkpoint("mid_commit")
        confusion: dict[str, dict[str, int]] = {}
        reasons: dict[str, int] = {}
        for report in reports:
            merge_confusion(confusion, report.confusion)
            merge_counts(reasons, report.reasons)
        record = CommitRecord(
            shard=shard.key,
            input=ShardInput(**shard.fingerprint()),
            spec_hash=job.spec_hash,
            model=job.model,
            rows_in=sum(r.rows + r.errors for r in reports),
            rows=sum(r.rows for r in reports),
            errors=sum(r.errors for r in reports),
            tokens=sum(r.tokens for r in reports),
            padded=sum(r.padded for r in reports),
            generated=sum(r.generated for r in reports),
            confusion=confusion,
            reasons=reasons,
            files=files,
            error_files=error_files,
            committed_at=time.time(),
        )
        self.write_json(layout.commit_record_path(shard.key), record.to_json())
        layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}/{shard.key}"))
        return record

    def _place(self, key: str, staged: list[str], folder: str) -> list[str]:
        if staged:
            self.fs.create_dir(folder, recursive=True)
        placed = []
        for n, path in enumerate(staged):
            target = f"{folder}/{layout.part_name(key, n)}"
            self.fs.move(path, target)
            placed.append(target[len(self.root) + 1 :])
        return placed

    def write_json(self, name: str, value: Any) -> None:
        layout.write_json(self.fs, f"{self.root}/{name}", value)

    def finish(self) -> None:
        """Every shard is committed: drop the empty staging area and write ``_SUCCESS``."""
        layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}"))
        with self.fs.open_output_stream(f"{self.root}/{SUCCESS}") as stream:
            stream.write(b"")


def _changed_inputs(committed: dict[str, CommitRecord], shards: list[Shard]) -> list[str]:
    by_key = {s.key: s for s in shards}
    return [
        by_key[key].uri
        for key, record in committed.items()
        if key in by_key and record.input.model_dump(include={"uri", "size", "mtime_ns"}) != by_key[key].fingerprint()
    ]
