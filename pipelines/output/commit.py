"""Committing a job's output: each shard appears to readers whole, in one step, or not at all.

The names of the output directory are :mod:`pipelines.output.layout`'s. Writer
tasks stage each block's rows under ``_staging/<shard>/`` (readers skip ``_``
entries). When every row of a shard is accounted for, the driver commits it:

1. merges the shard's staged files into one data file and one error file, still
   under ``_staging/<shard>/`` (each written whole: write-then-rename);
2. writes the shard's commit record ``_commits/<shard>.json`` naming the final
   files: from here on the shard is committed, whatever happens next;
3. (a hook, e.g. the scheduler retiring the shard's older version);
4. renames the error file into ``_errors/``, then the data file into place —
   the one step that makes the shard's rows visible to readers;
5. deletes the shard's staging folder.

A crash after step 2 is rolled forward by the next run (:meth:`OutputDir.recover`):
the staged files of a committed shard are moved into place. A crash before it
leaves only staging files, which the next run deletes before redoing the shard.
So a reader listing ``*.parquet`` sees each shard whole or not at all, at every
moment; on an object store, where a rename is a copy and a delete, the copy of
the one data file is what makes it visible. Only files named by this project's
commit records (and its ``_`` bookkeeping) are ever deleted.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import faults
from pipelines.errors import PipelineError
from pipelines.io import stores
from pipelines.io.block import COUNTS, ROW
from pipelines.io.reader import content_digest, read_bytes
from pipelines.io.shards import Shard, real_path, resolve
from pipelines.output import layout
from pipelines.output.layout import (
    COMMITS,
    ERRORS,
    JOB,
    LEDGER,
    LOCK,
    OURS,
    READERS,
    REPORT,
    RUN,
    RUN_LOCK,
    STAGING,
    SUCCESS,
)
from pipelines.output.lock import output_lock
from pipelines.output.records import (
    SCORING,
    CommitRecord,
    Confusion,
    JobRecord,
    RunSummary,
    ShardInput,
    Unreadable,
    merge_confusion,
    merge_counts,
    precision_label,
)
from pipelines.output.staging import StagingReport, spent

log = logging.getLogger(__name__)

#: The largest object one S3 CopyObject request copies (the commit's move into place is one copy).
S3_COPY_LIMIT = 5 * 1024**3
DATA_STAGED = "commit-data"  # + the final file's suffix: commit-data.parquet, commit-data.jsonl
ERRORS_STAGED = "commit-errors"

#: Filters a shard's merged data before it is committed: (data, shard) → (kept data, quarantined rows).
Screen = Callable[[pa.Table, Shard], tuple[pa.Table, pa.Table | None]]
#: Counts the (ground truth, prediction) pairs of output rows, as the staging writers count each block's.
ConfusionOf = Callable[[pa.Table], Confusion]


class OutputFiles(Protocol):
    """How a shard's merged rows and quarantined rows are written: the final files' format."""

    suffix: ClassVar[str]

    def write_data(self, table: pa.Table, stream: Any) -> None: ...

    def write_errors(self, table: pa.Table, stream: Any) -> None: ...


@dataclass(frozen=True)
class ParquetFiles:
    """The default: plain Parquet, one row group per ``row_group_rows``; no dictionary for float columns."""

    compression: str = "zstd"
    row_group_rows: int = 100_000
    suffix: ClassVar[str] = ".parquet"

    def write_data(self, table: pa.Table, stream: Any) -> None:
        codec = None if self.compression == "none" else self.compression
        pq.write_table(
            table, stream, compression=codec, row_group_size=self.row_group_rows,
            use_dictionary=layout.dictionary_columns(table.schema),
        )

    write_errors = write_data


def staged_name(kind: str, final: str) -> str:
    """The name a committed file waits under in its shard's staging folder (``kind``: DATA_ or ERRORS_STAGED)."""
    return kind + final[final.rfind(".") :]


def scheduled_output(location: str, said: str) -> str:
    """Why `pipelines run` may not write to a scheduled job's output (``said``: how that was told)."""
    return (
        f"output.path {location} is a scheduled job's output ({said}): `pipelines run` would write its files beside "
        "the job's run=... partitions, and a reader of the folder would get their rows twice; give this run an "
        "output.path of its own"
    )


def scored_precision(shard: Shard, reports: list[StagingReport], job: JobRecord) -> str | None:
    """The precision the actors that predicted a shard's blocks ran at, which its commit records (None: no actor
    predicted any). Under ``quantization: auto`` (``job.precision``, the output's one precision) a shard with a block
    at another is refused before anything of it is committed; otherwise blocks may differ where the spec lets each
    node choose (``dtype: auto`` on GPUs with and without bfloat16), and the record names each (``bfloat16 and
    float16``), as the README allows an output to mix them."""
    found = sorted({report.precision for report in reports if report.precision})
    held = precision_label(job.precision) if job.precision else None
    if held is not None and any(precision != held for precision in found):
        raise PipelineError(
            f"shard {shard.uri}: its rows were scored at {' and '.join(found)}, where this output holds {held} "
            "(quantization auto's decision, in _job.json); nothing of it was committed. Run the same command again "
            "to score it again, and report this: the run's actors should all run at the output's precision"
        )
    return " and ".join(found) or None


class OutputDir:
    """One job's output location on any pyarrow filesystem."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.fs, self.root = resolve(location)
        #: Called before each commit merges anything, before its record is written, and before the run's last
        #: writes (:meth:`finish`); raises when this run may no longer write (its lock was lost).
        self.guard: Callable[[], None] | None = None

    def check_lock(self) -> None:
        """Raise (PipelineError) when this run may no longer write here: its lock was lost (see :attr:`guard`)."""
        if self.guard is not None:
            self.guard()

    # reading state -----------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        return layout.read_json(self.fs, f"{self.root}/{name}")

    def job(self) -> JobRecord | None:
        return JobRecord.parse(self.read_json(JOB))

    def summary(self) -> RunSummary | None:
        return RunSummary.parse(self.read_json(RUN))

    def commits(self) -> dict[str, CommitRecord]:
        """Commit records by shard key; a half-written or foreign record does not count. On an object store, read
        :data:`READERS` at a time: each is a request of some tens of milliseconds, and a resume reads them all a few
        times (500 records behind 20 ms of latency a request: 25.2 s one after the other, 3.4 s so; see
        benchmarks/commit_records.py). A local disk reads them faster one after the other."""
        selector = pafs.FileSelector(f"{self.root}/{COMMITS}", allow_not_found=True)
        names = [i.base_name for i in self.fs.get_file_info(selector) if i.is_file and i.base_name.endswith(".json")]

        def read(name: str) -> CommitRecord | None:
            return CommitRecord.parse(self.read_json(f"{COMMITS}/{name}"))

        if len(names) > 1 and not isinstance(self.fs, pafs.LocalFileSystem):
            with ThreadPoolExecutor(min(READERS, len(names))) as pool:
                records = list(pool.map(read, names))
        else:
            records = [read(name) for name in names]
        return {record.shard: record for record in records if record is not None}

    def commit_record(self, key: str) -> CommitRecord | None:
        """One shard's commit record, by its key (None: none, or a half-written or foreign one): one read, where
        :meth:`commits` reads every record of the output (a scheduled rescore retires each shard's earlier output
        at its commit: a listing each time made it read N²/2 records for N shards)."""
        record = CommitRecord.parse(self.read_json(layout.commit_record_path(key)))
        return record if record is not None and record.shard == key else None

    def entries(self) -> list[pafs.FileInfo]:
        """What is at the top of the output folder (a run's first look at it: a path pyarrow refuses is one line)."""
        try:
            info = self.fs.get_file_info(self.root)
        except pa.ArrowInvalid as exc:  # s3://bucket//x, which the spec refuses, reached here another way
            raise stores.invalid_path("output.path", self.location, exc) from None
        if info.type == pafs.FileType.NotFound:
            dangling = layout.dangling_link(self.location, self.root) if stores.is_local(self.fs) else None
            if dangling is not None:  # refused here, before any work: no folder can be made through it
                raise dangling
            return []
        if info.type != pafs.FileType.Directory:
            raise layout.not_a_folder(self.location, self.fs, self.root)
        return self.fs.get_file_info(pafs.FileSelector(self.root))

    def _existing(self) -> set[str]:
        """Paths (relative to the root) of the files at the top and in ``_errors/``: one listing each."""
        found = set()
        for folder in ("", ERRORS):
            selector = pafs.FileSelector(f"{self.root}/{folder}".rstrip("/"), allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.is_file:
                    found.add(info.path[len(self.root) + 1 :])
        return found

    def _staged(self) -> set[str]:
        selector = pafs.FileSelector(f"{self.root}/{STAGING}", recursive=True, allow_not_found=True)
        return {info.path[len(self.root) + 1 :] for info in self.fs.get_file_info(selector) if info.is_file}

    def committed(self, records: dict[str, CommitRecord] | None = None) -> dict[str, CommitRecord]:
        """Shards whose commit is complete or can be completed from staging (see :meth:`recover`); ``records``: the
        commit records, where the caller has read them (:meth:`commits`)."""
        records = self.commits() if records is None else records
        if not records:
            return {}
        existing, staged = self._existing(), self._staged()
        return {key: r for key, r in records.items() if _placeable(r, existing, staged)}

    def part_files(self) -> list[str]:
        """The files at the top and in ``_errors/`` named as this project names its part files, sorted."""
        return sorted(path for path in self._existing() if layout.PART_FILE.fullmatch(path.rsplit("/", 1)[-1]))

    def unrecorded(self, records: dict[str, CommitRecord] | None = None, listed: list[str] | None = None
                   ) -> list[str]:
        """The part files (:meth:`part_files`) that no commit record names: a commit writes its record before its
        files are in place, a forget deletes it after them, so only records deleted or changed by hand leave these,
        and a reader reads their rows beside a run's. ``listed`` (the part files) must be listed before ``records``
        are read, as here where they are not given: a commit between the two then leaves no file unrecorded. What
        looks unrecorded is looked at again (a forget between them deleted it, then its record). Sorted."""
        listed = self.part_files() if listed is None else listed
        records = self.commits() if records is None else records
        named = {name for record in records.values() for name in (*record.files, *record.error_files)}
        found = [path for path in listed if path not in named]
        return [path for path in found if self.fs.get_file_info(f"{self.root}/{path}").type == pafs.FileType.File]

    def check_unrecorded(self, records: dict[str, CommitRecord] | None = None, listed: list[str] | None = None
                         ) -> None:
        """Refuse an output that holds part files no commit record names (:meth:`unrecorded`)."""
        found = self.unrecorded(records, listed)
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise PipelineError(
                f"output.path {self.location} holds {len(found)} part file{'s' if len(found) > 1 else ''} that no "
                f"commit record names ({found[0]}{more}): their records in {COMMITS}/ were deleted or changed by hand, "
                "and a reader would read their rows beside what this run writes; use --overwrite to delete them with "
                "the rest of the output, or move them out of the folder, or use a new output.path"
            )

    # preparing a run ---------------------------------------------------------------

    def check_owner(self) -> None:
        """Refuse an output path that holds files but no results of this project (or a scheduled job's: its ledger)."""
        entries = self.entries()
        if entries and self.job() is None and not self.commits():
            if any(e.base_name == LEDGER for e in entries):
                raise PipelineError(scheduled_output(self.location, f"its ledger {LEDGER} is there"))
            if any(e.base_name == LOCK for e in entries):  # a scheduler started on it that has no ledger line yet
                held = output_lock(self.location, LOCK, "a scheduled job", quiet=True).held_elsewhere()
                if held is not None:
                    raise PipelineError(scheduled_output(self.location, str(held)))
            # a scheduler's lock file that nobody holds refuses nothing (as a run's refuses no tick); a cut-off write's
            # .tmp file is bookkeeping too
            bookkeeping = (*OURS, LOCK)
            inner = self._output_below([e for e in entries if e.type == pafs.FileType.Directory
                                        and e.base_name not in bookkeeping])
            if inner is not None:  # made while this run started (its own look found the folder empty)
                raise PipelineError(
                    f"output.path {self.location} holds another job's output, {inner}: a reader of {self.location} "
                    "reads every Parquet file under it, that job's rows as this one's too; choose an output.path that "
                    "holds no other job's output, or one beside it"
                )
            parts = sorted(e.base_name for e in entries if layout.PART_FILE.fullmatch(e.base_name))
            if parts:  # this project's part files whose records, which say whose they are, were all deleted by hand
                more = f" and {len(parts) - 1} more" if len(parts) > 1 else ""
                raise PipelineError(
                    f"output.path {self.location} holds part files named as this project names them ({parts[0]}"
                    f"{more}) but no {JOB} and no commit record in {COMMITS}/, which say which job and input they hold "
                    "(deleted by hand?): a run can't resume them, nor tell that they are its own to delete, even under "
                    "--overwrite; move them out of the folder (to keep them) or delete them, or choose an empty or new "
                    "output.path"
                )
            if any(e.base_name.removesuffix(layout.TMP_SUFFIX) not in bookkeeping for e in entries):
                raise PipelineError(
                    f"output.path {self.location} is not empty and holds no results of this project; "
                    "choose an empty or new output.path"
                )
            # Only bookkeeping names: each must hold what this project writes under it, as it writes it, or a run's
            # start (which deletes _staging/ whole, _SUCCESS, _run.json and _report.html) or --overwrite (_commits/
            # and _errors/ whole) would delete another tool's or a user's file.
            foreign = self._not_ours(entries)
            if foreign is not None:
                raise PipelineError(
                    f"output.path {self.location} is not empty and holds no results of this project ({foreign} is "
                    "none of its files); choose an empty or new output.path"
                )

    def _not_ours(self, entries: list[pafs.FileInfo]) -> str | None:
        """The first path (relative to the root) among ``entries``, all of them this project's bookkeeping names, that
        is not what this project writes there: a ``_job.json`` or ``_run.json`` that is not its record (another tool's
        JSON), a folder where it writes a file or a file where it writes a folder, a file in ``_commits/``,
        ``_errors/`` or ``_staging/`` of a name it does not write there. None where all are its own."""
        for entry in entries:
            name = entry.base_name.removesuffix(layout.TMP_SUFFIX)
            folder = name in (COMMITS, ERRORS, STAGING) and name == entry.base_name
            if folder != (entry.type == pafs.FileType.Directory):
                return entry.base_name
            if entry.base_name in (JOB, RUN) and (JobRecord if name == JOB else RunSummary).parse(
                    self.read_json(name)) is None:
                return entry.base_name
            if not folder:
                continue
            selector = pafs.FileSelector(entry.path, recursive=True, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                relative = info.path[len(self.root) + 1 :]
                if not _ours_under(name, relative.split("/")[1:], info.type == pafs.FileType.Directory):
                    return relative
        return None

    def _output_below(self, folders: list[pafs.FileInfo]) -> str | None:
        """The first of these folders (at the top of the output) that is another job's output, and what says so:
        its ``_job.json`` or ledger, or a ``_run.lock`` that a run holds (a new output's first mark), else None."""
        for folder in folders:
            where = f"{self.location.rstrip('/')}/{folder.base_name}"
            said = _output_marks(self.fs, folder.path, where)
            if said is not None:
                return f"{where} ({said})"
        return None

    def check_not_inside_another(self) -> None:
        """Refuse an output path inside another job's output (a folder above it holds ``_job.json``, or a scheduled
        job's ledger): a reader of that folder reads every Parquet file under it, this job's rows too. A local path is
        looked at as written and as the links resolve (a link elsewhere to a folder inside an output is that folder)."""
        self._check_above(self.root)
        if (real := real_path(self.fs, self.root)) != self.root.rstrip("/"):
            self._check_above(real)

    def _check_above(self, root: str) -> None:
        parent = root.rstrip("/")
        scheme = f"{self.location.split('://', 1)[0]}://" if "://" in self.location else ""
        while "/" in parent.strip("/"):
            parent = parent.rsplit("/", 1)[0]
            try:
                said = _output_marks(self.fs, parent, f"{scheme}{parent}")
            except OSError as exc:  # credentials for this prefix only (S3 answers 403 above it): can't tell, not no
                log.debug("output.path %s: could not look for an output above it, in %s: %s", self.location, parent,
                          exc)
                return
            if said is not None:
                raise PipelineError(
                    f"output.path {self.location} lies inside another job's output, {scheme}{parent} ({said}): a "
                    "reader of that folder reads every Parquet file under it, this job's rows as its own too; choose "
                    "an output.path outside it"
                )

    def check_spec(self, job: JobRecord, changed: Callable[[dict[str, Any], dict[str, Any]], list[str]] | None = None
                   ) -> None:
        """Refuse results of another spec (an output with nothing committed yet belongs to nobody). ``changed`` says
        which settings differ between the recorded spec and this one (both as JSON), each in words (none: can't
        tell), so that the refusal names them. Where ``_job.json`` is gone (deleted by hand), the commit records'
        spec hashes are compared: the settings that differ can't be named then."""
        recorded = self.job()
        if recorded is None:
            # a record does not say its hash's version: one written before the hash covered output.prediction_prefix
            # is refused under a prefix (its spec can't be told from one that only added the prefix)
            made = sorted({record.spec_hash for record in self.commits().values()} - {job.spec_hash})
            if made:
                raise PipelineError(
                    f"output.path {self.location} holds results of a different job spec: its commit records were made "
                    f"with spec hash {made[0]}, this spec is {job.spec_hash}, and {JOB}, which would name the settings "
                    "that differ, is gone; run the spec they were made with to resume, or use a new output.path, or "
                    "--overwrite to replace them"
                )
            return
        if recorded.spec_hash != job.spec_hash and self.commits():
            differ = changed(recorded.spec, job.spec) if changed is not None else []
            shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
            back = f": {shown}; set {'it' if len(differ) == 1 else 'them'} back to resume," if differ else ";"
            raise PipelineError(
                f"output.path {self.location} holds results of a different job spec "
                f"(hash {recorded.spec_hash}, this spec is {job.spec_hash}){back} "
                "use a new output.path, or --overwrite to replace them"
            )

    def check_writable(self) -> None:
        """On an object store: the bucket exists and objects may be written and deleted here (a probe)."""
        stores.check_writable(self.fs, self.root, self.location, STAGING)

    def finished(self) -> bool:
        return self.fs.get_file_info(f"{self.root}/{SUCCESS}").type == pafs.FileType.File

    def start(self, job: JobRecord) -> None:
        """Before work: finish interrupted commits, delete crash leftovers, record whose output this is. A finished
        output's ``_SUCCESS`` goes first, before anything that may delete (a commit record whose files are gone).

        Nothing is touched unless the lock is still this run's: a run stalled past its lease must not finish, drop or
        delete what a new holder is doing."""
        self.check_lock()
        self.unfinish()
        self.recover()
        self.clean()
        self.write_json(JOB, job.to_json())

    def recover(self) -> None:
        """Roll committed shards forward: move staged files of a commit record into place; drop broken records."""
        records = self.commits()
        if not records:
            return
        existing, staged = self._existing(), self._staged()
        dropped = False
        for key, record in records.items():
            missing = [f for f in [*record.error_files, *record.files] if f not in existing]
            if not missing:
                continue
            if _placeable(record, existing, staged):
                log.info("finishing the commit of %s, interrupted by a crash", record.input.uri)
                self._reveal(key, record)
            else:
                log.warning("commit record of %s names files that are gone; the shard is redone", record.input.uri)
                self.forget(record)
                dropped = True
        if dropped:
            self.drop_empty_errors()

    def clean(self) -> None:
        """Delete what earlier runs left staged (``start`` has taken ``_SUCCESS`` and ``_run.json`` away already)."""
        self.check_lock()
        layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}"))

    def unfinish(self) -> None:
        """Delete ``_SUCCESS`` (first), ``_run.json`` and the page made from it (``_report.html``): the output is no
        longer a finished one, and a run that stops before its summary must not leave the last run's page to pass for
        the output's state."""
        for name in (SUCCESS, RUN):
            layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{name}"))
        page = self.fs.get_file_info(f"{self.root}/{REPORT}")
        if page.type == pafs.FileType.File:  # a page; a folder of that name is none of this project's
            self.fs.delete_file(page.path)

    def clear(self) -> None:
        """``--overwrite``: delete every file a commit record names, then this project's bookkeeping.

        Files not named by a commit record are never touched, whatever their name, but for part files named as this
        project names them (:meth:`unrecorded`: their records were deleted by hand); the bookkeeping goes by exact
        name, and the run lock stays (this run holds it). ``_SUCCESS`` and ``_run.json`` go first: a
        reader that waits for ``_SUCCESS`` must never find it beside a half-deleted output. ``_job.json`` stays
        until :meth:`start` writes the run's own over it: an overwrite cut short between the two leaves the output
        recognisably this project's (with no commit, it belongs to the next run's spec), where a user's file beside
        it would otherwise have every later run refuse the folder as someone else's.
        """
        self.unfinish()
        listed = self.part_files()  # before the records: see unrecorded
        records = self.commits()
        unrecorded = self.unrecorded(records, listed)
        for record in records.values():
            self.forget(record)
        for relative in unrecorded:  # records deleted by hand: named as this project names its part files
            layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{relative}"))
        bookkeeping = set(OURS) - {RUN_LOCK, JOB}
        for entry in self.entries():
            if entry.base_name in bookkeeping:
                layout.delete(self.fs, entry)

    def forget(self, record: CommitRecord) -> None:
        """Delete a committed shard's files, then its record (last: a cut-off delete is redone)."""
        self.check_lock()
        for relative in [*record.files, *record.error_files]:
            layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{relative}"))
        layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{layout.commit_record_path(record.shard)}"))

    def drop_empty_errors(self) -> None:
        """Delete ``_errors/`` once it holds no file (after :meth:`forget` deleted the last quarantined rows): there is
        no ``_errors/`` where nothing is quarantined, and readers given the empty folder get a table of no columns."""
        selector = pafs.FileSelector(f"{self.root}/{ERRORS}", recursive=True, allow_not_found=True)
        if self.fs.get_file_info(f"{self.root}/{ERRORS}").type != pafs.FileType.Directory or any(
                info.is_file for info in self.fs.get_file_info(selector)):
            return
        self.check_lock()
        self.fs.delete_dir(f"{self.root}/{ERRORS}")

    # committing ----------------------------------------------------------------------

    def commit(
        self,
        shard: Shard,
        reports: list[StagingReport],
        job: JobRecord,
        *,
        compression: str = "zstd",
        row_group_rows: int = 100_000,
        screen: Screen | None = None,
        before_visible: Callable[[Shard], None] | None = None,
        unreadable: Unreadable | None = None,
        files: OutputFiles | None = None,
        confusion_of: ConfusionOf | None = None,
    ) -> CommitRecord:
        """Commit a shard whose rows are all staged: merge, record, then reveal in one rename.

        ``files`` is the format of the final files (default: Parquet with ``compression`` and ``row_group_rows``).
        The record's confusion and token counts are the staged blocks'; when ``screen`` took rows out, they are
        counted again over the rows the data file holds (with ``confusion_of`` for the confusion): a quarantined
        row is no agreement, and its tokens are no output's.
        """
        # an unreadable file's one error record passed through an actor, which read none of its rows: no precision
        precision = None if unreadable is not None else scored_precision(shard, reports, job)
        folder = f"{STAGING}/{shard.key}"
        files = files or ParquetFiles(compression, row_group_rows)
        final = layout.part_name(shard.key, 0, files.suffix)
        writer = _Merger(self.fs, f"{self.root}/{folder}")
        self.check_lock()  # before the merge reads staged files (a new holder deletes them) or writes any
        try:
            kept, quarantined = writer.merge(
                [f for r in reports for f in r.files], staged_name(DATA_STAGED, final), files.write_data,
                screen=screen, shard=shard,
            )
            error_files = [f for r in reports for f in r.error_files]
            errors_kept, _ = writer.merge(error_files, staged_name(ERRORS_STAGED, final), files.write_errors,
                                          extra=quarantined)
        except OSError:
            self.check_lock()  # staged files gone with a lock lost meanwhile: that is what to say
            raise
        data_rows = 0 if kept is None else kept.num_rows
        error_rows = 0 if errors_kept is None else errors_kept.num_rows
        for kind, rows in ((DATA_STAGED, data_rows), (ERRORS_STAGED, error_rows)):
            if rows:
                self._check_copyable(f"{self.root}/{folder}/{staged_name(kind, final)}", shard)
        confusion: dict[str, dict[str, int]] = {}
        reasons: dict[str, int] = {}
        for report in reports:
            merge_confusion(confusion, report.confusion)
            merge_counts(reasons, report.reasons)
        tokens, padded, generated, cut = (sum(r.tokens for r in reports), sum(r.padded for r in reports),
                                          sum(r.generated for r in reports), sum(r.cut for r in reports))
        screened = 0 if quarantined is None else quarantined.num_rows
        if screened:
            merge_counts(reasons, _reason_counts(quarantined))
            if confusion_of is not None:
                confusion = confusion_of(kept) if kept is not None else {}
            tokens, padded, generated, cut = spent(kept)
        rows_in = sum(r.rows + r.errors for r in reports)
        errors = sum(r.errors for r in reports) + screened
        if unreadable is not None:  # one record stands for the file's rows, as many as can be told
            rows_in = errors = unreadable.rows or 0
            reasons = {unreadable.reason.split(":", 1)[0]: errors}
        record = CommitRecord(
            shard=shard.key,
            input=scored_input(shard, reports),
            spec_hash=job.spec_hash,
            model=job.model,
            rows_in=rows_in,
            rows=data_rows,
            errors=errors,
            tokens=tokens,
            padded=padded,
            blocks=[r.block() for r in reports],
            generated=generated,
            cut=cut,
            confusion=confusion,
            reasons=reasons,
            files=[final] if data_rows else [],
            error_files=[f"{ERRORS}/{final}"] if error_rows else [],
            committed_at=time.time(),
            unreadable=unreadable,
            scored_by=SCORING,
            precision=precision,
        )
        self.check_lock()  # the commit point: the record is written only under the lock
        self.write_json(layout.commit_record_path(shard.key), record.to_json())
        faults.checkpoint("mid_commit")
        if before_visible is not None:
            before_visible(shard)
        self._reveal(shard.key, record)
        return record

    def _reveal(self, key: str, record: CommitRecord) -> None:
        """Move a committed shard's staged files into place: errors first, then the data file (the visible step)."""
        folder = f"{self.root}/{STAGING}/{key}"
        for staged, final in ((ERRORS_STAGED, record.error_files), (DATA_STAGED, record.files)):
            for relative in final:
                source = f"{folder}/{staged_name(staged, relative)}"
                if self.fs.get_file_info(source).type != pafs.FileType.File:
                    continue  # already in place
                self._move(source, f"{self.root}/{relative}")
        layout.delete(self.fs, self.fs.get_file_info(folder))

    def _check_copyable(self, path: str, shard: Shard) -> None:
        """Refuse, before its commit record, a file too large for one S3 copy: it could never be put in place."""
        if not isinstance(self.fs, pafs.S3FileSystem):
            return
        size = self.fs.get_file_info(path).size or 0
        if size > S3_COPY_LIMIT:
            raise PipelineError(
                f"shard {shard.uri}: its output is {size / 1024**3:.1f} GiB, more than S3 copies in one request "
                f"({S3_COPY_LIMIT // 1024**3} GiB), so it cannot be committed; split the input file into smaller ones"
            )

    def _move(self, source: str, target: str) -> None:
        """One rename on a local disk. On an object store a copy, then a delete: the copy is one object
        that appears whole (S3 CopyObject); a crash before the delete leaves the staged copy, which the
        next run's clean-up deletes (its commit record says the shard is in place)."""
        if stores.is_local(self.fs):
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            self.fs.move(source, target)
            return
        self.fs.copy_file(source, target)
        faults.checkpoint("mid_reveal")
        self.fs.delete_file(source)

    def write_json(self, name: str, value: Any) -> None:
        layout.write_json(self.fs, f"{self.root}/{name}", value)

    def finish(self) -> None:
        """Every shard is committed: drop the empty staging area and write ``_SUCCESS``."""
        self.check_lock()  # a run that lost its lock must not delete the new holder's staging area
        layout.delete(self.fs, self.fs.get_file_info(f"{self.root}/{STAGING}"))
        layout.write_bytes(self.fs, f"{self.root}/{SUCCESS}", b"")


class _Merger:
    """Merges staged Parquet files into one file of a shard's staging folder, written by ``write``."""

    def __init__(self, fs: pafs.FileSystem, folder: str) -> None:
        self.fs = fs
        self.folder = folder

    def merge(
        self,
        paths: list[str],
        name: str,
        write: Callable[[pa.Table, Any], None],
        *,
        screen: Screen | None = None,
        shard: Shard | None = None,
        extra: pa.Table | None = None,
    ) -> tuple[pa.Table | None, pa.Table | None]:
        """Write ``paths`` (and ``extra`` rows) as ``name``; return (the rows written, with their token counts, and
        the rows the screen took out)."""
        tables = [self._read(path) for path in paths]
        if extra is not None and extra.num_rows:
            tables.append(extra)
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return None, None
        table = in_input_order(pa.concat_tables(tables, promote_options="permissive"))
        taken = None
        if screen is not None and shard is not None:
            table, taken = screen(table, shard)  # it may read each row's ``_row``
        table = table.drop_columns([ROW]) if ROW in table.column_names else table  # bookkeeping, not output
        if not table.num_rows:
            return None, taken
        self.fs.create_dir(self.folder, recursive=True)
        output = table.drop_columns([name for name in COUNTS if name in table.column_names])  # bookkeeping too
        layout.write_whole(self.fs, f"{self.folder}/{name}", partial(write, output), point="merge")
        return table, taken

    def _read(self, path: str) -> pa.Table:
        with self.fs.open_input_file(path) as handle:
            return pq.read_table(handle)


def in_input_order(table: pa.Table) -> pa.Table:
    """A shard's staged rows in the order of its input file: by ``_row`` (predicted rows, where a kept column of the
    input may be named ``row``), else by ``row`` (quarantine records)."""
    column = ROW if ROW in table.column_names else "row"
    return table.sort_by([(column, "ascending")]) if column in table.column_names else table


#: The files this project writes in ``_staging/<shard>/``: a write task's staged blocks (see
#: :mod:`pipelines.output.staging`) and a commit's merged files (:func:`staged_name`), each maybe cut off while written.
STAGED_FILE = re.compile(rf"(?:[0-9a-f]{{32}}-(?:data|errors)\.parquet|(?:{DATA_STAGED}|{ERRORS_STAGED})\.\w+)"
                         rf"(?:{re.escape(layout.TMP_SUFFIX)})?")
#: An object store's write probe at the top of ``_staging/`` (see :func:`pipelines.io.stores.check_writable`).
WRITE_PROBE = re.compile(r"\.write-check-[0-9a-f]{32}")


def _output_marks(fs: pafs.FileSystem, path: str, location: str) -> str | None:
    """What says that the folder ``path`` (``location``, as the user names it) is a job's output: ``it holds
    _job.json`` or its ledger, or ``it holds _run.lock, held by another run`` (a run's lock, held, is a new
    output's first mark: its _job.json comes once it has started Ray); else None. A lock nobody holds says nothing
    (a run that stopped before its first record leaves one)."""
    infos = fs.get_file_info([f"{path}/{name}" for name in (JOB, LEDGER, RUN_LOCK)])
    for info in infos[:2]:
        if info.type == pafs.FileType.File:
            return f"it holds {info.base_name}"
    if infos[2].type == pafs.FileType.File:
        if output_lock(location, RUN_LOCK, f"the output {location}", quiet=True).held_elsewhere() is not None:
            return f"it holds {RUN_LOCK}, held by another run"
    return None


def _ours_under(folder: str, parts: list[str], is_folder: bool) -> bool:
    """Whether ``parts`` (a path below ``folder``, one of ``_commits``, ``_errors`` or ``_staging``, split at its
    slashes) is what this project writes there: in ``_commits/`` a record's temporary copy (a whole record would have
    counted as one; see :meth:`OutputDir.check_owner`), in ``_errors/`` a part file (or one being written), in
    ``_staging/`` a folder per shard holding staged files, or a write probe."""
    if folder == STAGING:
        if len(parts) == 1:
            return is_folder or WRITE_PROBE.fullmatch(parts[0]) is not None
        return len(parts) == 2 and not is_folder and STAGED_FILE.fullmatch(parts[1]) is not None
    if len(parts) != 1 or is_folder:
        return False
    if folder == COMMITS:
        return parts[0].endswith(".json" + layout.TMP_SUFFIX)
    return layout.is_part_file(parts[0].removesuffix(layout.TMP_SUFFIX))


def _placeable(record: CommitRecord, existing: set[str], staged: set[str]) -> bool:
    """Whether each of a record's files is in place or waits in its staging folder."""
    folder = f"{STAGING}/{record.shard}"
    for kind, finals in ((ERRORS_STAGED, record.error_files), (DATA_STAGED, record.files)):
        for relative in finals:
            if relative not in existing and f"{folder}/{staged_name(kind, relative)}" not in staged:
                return False
    return True


def _reason_counts(quarantined: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in quarantined.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def changed_inputs(committed: dict[str, CommitRecord], shards: list[Shard], same_content: Callable) -> list[str]:
    """Shards whose file differs from what their commit recorded (size; or time, unless the bytes are the same)."""
    changed = []
    for shard in shards:
        record = committed.get(shard.key)
        if record is None:
            continue
        if record.input.size != shard.size:
            changed.append(shard.uri)
        elif record.input.mtime_ns != shard.mtime_ns and not same_content(shard, record.input.digest):
            changed.append(shard.uri)
    return changed


def scored_input(shard: Shard, reports: list[StagingReport]) -> ShardInput:
    """The fingerprint a commit records: of the bytes that were scored. The size and time are the listing's, the
    digest is of the bytes the reader fetched; where those are not the listed file (replaced or grown between the
    listing and the read: another size), the record says what was read: its size, and no time (which was never
    seen), so the next run compares the file's bytes with the digest instead of calling it changed input."""
    digest, size = _fetched(shard, reports)
    fingerprint = shard.fingerprint()
    if size is not None and size != shard.size:
        log.warning("%s changed between its listing (%d bytes) and its read (%d bytes): its commit records the "
                    "bytes it was scored from", shard.uri, shard.size, size)
        fingerprint.update(size=size, mtime_ns=None)
    return ShardInput(**fingerprint, digest=digest)


def _fetched(shard: Shard, reports: list[StagingReport]) -> tuple[str | None, int | None]:
    """The digest and size of the shard's bytes, as its reader fetched them (size None: not known, as in a report
    staged before readers counted it). An empty shard has no report, so it is read here (without a digest, a copy
    of the file, with a new time and the same bytes, would look like changed input); bytes of another size than
    the listed file's are not the ones found empty: no digest then, the listing stays (the next run finds the
    change)."""
    if reports:
        digest = next((r.digest for r in reports if r.digest), None)
        return digest, next((r.file_size for r in reports if r.digest and r.file_size is not None), None)
    try:
        raw = read_bytes(shard)
    except OSError:
        return None, None
    return (content_digest(raw), None) if len(raw) == shard.size else (None, None)
