"""The run ledger of a scheduled job: ``<output.path>/_runs.jsonl``, one JSON object per line.

Every attempt writes a ``running`` line before it starts (with the inputs it
plans to score) and a closing line when it ends (``succeeded`` or ``failed``,
with the inputs actually committed, row counts, timings). A run killed outright
leaves only its ``running`` line: that is how the next tick knows what to resume.
Ticks that score nothing write one line too (``empty`` or ``skipped``).

Fields of a line:

``tick``       the schedule tick the invocation handled (UTC, ``2026-11-28T02:00:00Z``)
``run``        the partition id (``run=<run>/``), null when nothing was scored
``kind``       ``tick`` (new or changed input), ``resume`` (finishing an earlier run), ``rescore`` or ``prune``
``status``     ``running``, ``succeeded``, ``failed``, ``abandoned``, ``empty``, ``skipped`` or ``pruned``
``attempt``    1 for a run's first attempt, 2 for its first resume, ...
``rescore``    true on every line of a rescore, its resumes included
``inputs``     ``[{uri, name, size, mtime_ns, key, rows}]``: planned (running) or committed (succeeded, with each
               file's ``digest`` as its commit recorded it)
``replaces``   ``{shard key: run}``: shards whose earlier version, in that run, this run supersedes
``model``      lineage: name, revision, commit or content_hash, quantization, dtype
``model_changed``  ``{"from": lineage, "to": lineage, "since": run}`` when the model differs from the previous run's
``spec_changed``   ``{"from": hash, "to": hash, "since": run}`` when the spec hash differs from the previous run's
``precision``  ``{quantization, dtype}`` that ``quantization: auto`` ran at (a succeeded line), with its check's figures
``spec_hash``, ``hash_version`` (2 where the hash covers ``output.prediction_prefix``; lines written before: 1)
``gone``       names of the first :data:`GONE_NAMED` scored shards whose input file is gone (sorted), ``gone_count``
               how many are gone (lines written before it list them all); ``pruned``: ``{shard key: run}`` moved by
               ``--prune``; ``lost``: ``{shard key: run}`` scored again because that run's partition is gone
``rows_in``, ``rows_out``, ``errors``, ``shards_this_run``, ``rows_this_run``, ``started_at``, ``finished_at``,
``wall_s``, ``host``, ``pid``, ``error``, ``note``, ``missed``

The file is rewritten whole and renamed into place on each append (a reader sees
the old or the new file, never half a line), which works on object stores too;
one scheduler at a time writes it, under the job's lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.io.shards import resolve
from pipelines.output import layout
from pipelines.output.layout import LEDGER, SUPERSEDED
from pipelines.output.records import precision_label

log = logging.getLogger(__name__)

UNFINISHED = ("running", "failed")
#: A run given up on (``pipelines schedule --abandon``): not resumed; its committed shards stay scored.
ABANDONED = "abandoned"
TICK_KINDS = ("tick", "rescore")
#: How many gone shards a line names: landing files deleted after scoring (a retention policy) would otherwise make
#: every tick's line list them all, and the ledger (rewritten whole at each append) grow with the square of the ticks.
GONE_NAMED = 10


class LedgerInput(BaseModel):
    """An input shard as a ledger line lists it: its fingerprint, key (from its name) and, once committed, rows and
    the digest of the bytes it was scored from (lines written before digests were listed have none)."""

    model_config = ConfigDict(extra="allow")

    uri: str
    size: int
    mtime_ns: int | None = None
    name: str = ""
    key: str
    rows: int | None = None
    digest: str | None = None


class LedgerEntry(BaseModel):
    """One line of ``_runs.jsonl`` (the fields are listed in this module's docstring)."""

    model_config = ConfigDict(extra="allow")

    tick: str | None = None
    run: str | None = None
    kind: str = "tick"
    status: str
    attempt: int | None = None
    rescore: bool = False
    inputs: list[LedgerInput] | None = None
    replaces: dict[str, str] = Field(default_factory=dict)
    model: dict[str, Any] | None = None
    model_changed: dict[str, Any] | None = None
    precision: dict[str, Any] | None = None  # what quantization: auto ran at (a succeeded run's line)
    spec_changed: dict[str, Any] | None = None
    spec_hash: str | None = None
    hash_version: int = 1  # 2 where spec_hash covers output.prediction_prefix (lines written before: 1)
    rows_in: int | None = None
    rows_out: int | None = None
    errors: int | None = None
    shards_this_run: int | None = None
    rows_this_run: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    host: str | None = None
    pid: int | None = None
    error: str | None = None
    note: str | None = None
    missed: int | None = None
    #: Names of the first GONE_NAMED shards scored earlier whose input file is gone (their rows stay in their
    #: partitions), and how many are gone (None on lines written before it was kept: ``gone`` then lists them all).
    gone: list[str] | None = None
    gone_count: int | None = None
    #: ``{shard key: run}``: outputs of gone input moved to ``_superseded/`` (``--prune``).
    pruned: dict[str, str] | None = None
    #: ``{shard key: run}``: under ``errors.duplicate_ids: error``, shards that quarantined a ``duplicate id`` in a
    #: partition that ``--prune`` took a shard from (the row repeated may have left with it): the next run scores
    #: them again, into its partition, and their version in that run moves to ``_superseded/``. On a run's line: the
    #: shards it scores again so (in ``replaces`` too; no changed shards), for that reason or a changed shard's.
    repeats: dict[str, str] | None = None
    #: ``{shard key: run}``: shards scored again because that run's partition is gone from the output (in ``replaces``
    #: too, so that the partition put back later has its version moved to ``_superseded/``).
    lost: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def gone_total(self) -> int:
        """How many scored shards were gone from the input at this line."""
        return self.gone_count if self.gone_count is not None else len(self.gone or [])


class Ledger:
    """Read and append the lines of ``_runs.jsonl`` under a job's output path."""

    def __init__(self, location: str) -> None:
        self.fs, root = resolve(location)
        self.path = f"{root}/{LEDGER}"
        #: Called before each append; raises when this process may no longer write (its lock was lost).
        self.guard: Callable[[], None] | None = None
        #: The numbers (from 1) of the lines the last read skipped: no ledger entry (damaged by an edit, say).
        self.skipped: list[int] = []

    def _raw(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return stream.read()
        except FileNotFoundError:
            return b""

    def read(self) -> list[LedgerEntry]:
        entries, self.skipped = [], []
        for n, line in enumerate(self._raw().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(LedgerEntry.model_validate_json(line))
            except ValueError:
                self.skipped.append(n)
                log.warning("%s line %d is not a ledger entry; ignored", self.path, n)
        return entries

    def append(self, entry: LedgerEntry) -> LedgerEntry:
        if self.guard is not None:
            self.guard()
        data = self._raw()
        if data and not data.endswith(b"\n"):
            data += b"\n"
        data += json.dumps(entry.to_json(), sort_keys=True, default=str).encode() + b"\n"
        layout.write_bytes(self.fs, self.path, data)
        return entry


@dataclass
class History:
    """What the ledger says about a job's runs: the last tick, unfinished runs, what is scored."""

    entries: list[LedgerEntry]

    def last_tick(self) -> str | None:
        ticks = [e.tick for e in self.entries if e.kind in TICK_KINDS and e.tick]
        return max(ticks, default=None)

    def latest(self) -> dict[str, LedgerEntry]:
        """The last line of each run (partition), by run id."""
        found: dict[str, LedgerEntry] = {}
        for entry in self.entries:
            if entry.run:
                found[entry.run] = entry
        return dict(sorted(found.items()))

    def base(self) -> str:
        """The run of the last completed rescore: every run before it is superseded ("" if none)."""
        done = [run for run, e in self.latest().items() if e.rescore and e.status == "succeeded"]
        return max(done, default="")

    def unfinished(self) -> list[LedgerEntry]:
        """Runs to resume, oldest first; runs before an unfinished rescore are left to be superseded."""
        latest = self.latest()
        open_rescores = [run for run, e in latest.items() if e.rescore and e.status in UNFINISHED]
        floor = max([self.base(), *open_rescores])
        return [e for run, e in latest.items() if e.status in UNFINISHED and run >= floor]

    def first_attempt(self, run: str) -> LedgerEntry:
        """The first ``running`` line of a run: its plan (inputs, replaces, rescore)."""
        return next(e for e in self.entries if e.run == run and e.status == "running")

    def last_attempt(self, run: str) -> LedgerEntry:
        """The last ``running`` line of a run: the model that scored what its partition holds (an attempt with
        another model than the one before cleared the partition and scored it whole)."""
        return [e for e in self.entries if e.run == run and e.status == "running"][-1]

    def attempts(self, run: str) -> int:
        return sum(1 for e in self.entries if e.run == run and e.status == "running")

    def scored(self) -> dict[str, tuple[LedgerInput, str]]:
        """shard key → (its input as scored, run) of the newest scored version of every input since the last
        rescore: the committed inputs of succeeded runs, and of abandoned ones (their commits stay visible)."""
        base = self.base()
        pruned = {(run, key) for e in self.entries for key, run in (e.pruned or {}).items()}
        found: dict[str, tuple[LedgerInput, str]] = {}
        for run, entry in self.latest().items():
            if run >= base and entry.status in ("succeeded", ABANDONED):
                for item in entry.inputs or []:
                    if (run, item.key) not in pruned:
                        found[item.key] = (item, run)
        return found

    def taken_over(self, run: str) -> set[str]:
        """Keys of the shards whose output in ``run`` a later run replaces: their newer version is that run's.

        A later run that ended (succeeded or abandoned) without committing a shard hands it back."""
        latest = self.latest()
        taken: set[str] = set()
        for entry in self.entries:
            if not entry.run or entry.run <= run:
                continue
            last = latest[entry.run]
            ended = last.status in ("succeeded", ABANDONED)
            committed = {item.key for item in last.inputs or []}
            taken.update(
                key for key, old in (entry.replaces or {}).items() if old == run and (not ended or key in committed)
            )
        return taken

    def claimed(self) -> dict[str, str]:
        """shard key → run, for the shards that unfinished runs planned: theirs to finish, no one else's."""
        claims: dict[str, str] = {}
        for entry in self.unfinished():
            assert entry.run is not None
            for item in self.first_attempt(entry.run).inputs or []:
                claims[item.key] = entry.run
        return claims

    def failures(self, run: str) -> int:
        """How many attempts of a run failed in a row (since its last success or start)."""
        count = 0
        for entry in self.entries:
            if entry.run == run and entry.status == "failed":
                count += 1
        return count

    def last_model(self) -> tuple[dict, str] | None:
        """(lineage, run) of the newest run that scored anything."""
        for run, entry in reversed(self.latest().items()):
            if entry.status == "succeeded" and entry.model:
                return entry.model, run
        return None


# the table of ``pipelines runs`` ----------------------------------------------------------

COLUMNS = ("tick", "run", "kind", "status", "shards", "rows", "errors", "model", "wall_s", "note")


def model_label(model: dict | None, precision: dict[str, Any] | None = None) -> str:
    """``name@revision#hash (quantization)`` in a dozen characters or so; ``(auto: bfloat16)`` with the precision
    that ``quantization: auto`` ran at."""
    if not model:
        return ""
    name = str(model.get("name", "?")).rstrip("/").rsplit("/", 1)[-1]
    pin = model.get("commit") or model.get("content_hash") or model.get("revision")
    label = f"{name}@{str(pin)[:8]}" if pin else name
    quant = model.get("quantization")
    if quant == "auto" and precision:
        quant = f"auto: {precision_label(precision)}"
    return f"{label} ({quant})" if quant and quant != "none" else label


def table_rows(entries: list[LedgerEntry]) -> list[dict[str, str]]:
    """One row per finished attempt (and per attempt still running or killed), oldest first."""
    history = History(entries)
    base = history.base()
    closed = {(e.run, e.attempt) for e in entries if e.run and e.status != "running"}
    pruned: dict[str, list[tuple[str, str | None]]] = {}  # run → (shard key, the prune's tick) moved away
    for entry in entries:
        for key, run in (entry.pruned or {}).items():
            pruned.setdefault(run, []).append((key, entry.tick))
    replaced = _replaced(history)
    rows = []
    for entry in entries:
        if entry.status == "running" and (entry.run, entry.attempt) in closed:
            continue
        rows.append(_row(entry, base, pruned.get(entry.run or "", []), replaced.get(entry.run or "", [])))
    return rows


def _replaced(history: History) -> dict[str, list[tuple[str, str | None]]]:
    """run → (shard key, the later run) of its shards whose new version a later run committed (changed input, or one
    scored again after a prune took the row it repeated), their earlier version moved to ``_superseded/``; not a
    rescore's (its line says so), nor a partition's that was gone (``lost``)."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    by_run: dict[str, list[LedgerEntry]] = {}
    for entry in history.entries:
        if entry.run:
            by_run.setdefault(entry.run, []).append(entry)
    for run, last in history.latest().items():
        if last.rescore or last.status == "running":  # a run under way: nothing of it is committed for sure
            continue
        lines = by_run[run]
        replaces = {key: earlier for e in lines for key, earlier in e.replaces.items()}
        lost = {key for e in lines for key in (e.lost or {})}
        committed = {item.key for item in last.inputs or []}
        for key, earlier in replaces.items():
            if key in committed and key not in lost:
                found.setdefault(earlier, []).append((key, run))
    return found


def _moved_note(entry: LedgerEntry, moved: list[tuple[str, str | None]], by: str) -> str:
    """What was taken out of a run's partition to ``_superseded/``: its shards, their rows (where the line counts
    them), by what (``prune`` and its ticks, ``run`` and the later runs)."""
    keys = {key for key, _ in moved}
    counts = [item.rows for item in entry.inputs or [] if item.key in keys and item.rows is not None]
    rows = f" ({sum(counts):,} rows)" if len(counts) == len(keys) else ""  # a running line counts none
    when = ", ".join(sorted({tick or "?" for _, tick in moved}))
    return f"{len(keys)} shard(s){rows} moved to {SUPERSEDED}/ by {by} {when}"


def _row(
    entry: LedgerEntry, base: str, moved: list[tuple[str, str | None]], replaced: list[tuple[str, str | None]]
) -> dict[str, str]:
    status = entry.status
    if status == "running":
        status = "running/killed"
    notes = [entry.note] if entry.note else []
    if entry.run and entry.run < base:
        notes.append(f"superseded by rescore {base}")
    if entry.model_changed:
        notes.append(f"model changed (was {model_label(entry.model_changed['from'])})")
    if entry.spec_changed:
        notes.append(f"spec changed since run {entry.spec_changed.get('since')}")
    changed = len(entry.replaces) - len(entry.lost or {}) - len(entry.repeats or {})
    if changed > 0 and not entry.rescore:
        notes.append(f"{changed} changed shard(s)")
    if entry.error:
        notes.append(f"error: {str(entry.error).splitlines()[0][:120]}")
    if entry.gone:
        notes.append(f"{entry.gone_total()} shard(s) gone from the input (their rows stay)")
    if moved:
        notes.append(_moved_note(entry, moved, "prune"))
    if replaced and entry.status != "running":
        notes.append(_moved_note(entry, replaced, "run"))
    shards = entry.inputs
    return {
        "tick": entry.tick or "",
        "run": entry.run or "-",
        "kind": entry.kind,
        "status": status,
        "shards": "" if shards is None else str(len(shards)),
        "rows": _count(entry.rows_out),
        "errors": _count(entry.errors),
        "model": model_label(entry.model, entry.precision),
        "wall_s": f"{entry.wall_s:.1f}" if entry.wall_s is not None else "",
        "note": "; ".join(notes),
    }


def _count(value: Any) -> str:
    return "" if value is None else f"{value:,}"


def render_table(entries: list[LedgerEntry]) -> str:
    rows = table_rows(entries)
    if not rows:
        return "no runs yet"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)
