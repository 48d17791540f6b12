"""The run ledger of a scheduled job: ``<output.path>/_runs.jsonl``, one JSON object per line.

Every attempt writes a ``running`` line before it starts (with the inputs it
plans to score) and a closing line when it ends (``succeeded`` or ``failed``,
with the inputs actually committed, row counts, timings). A run killed outright
leaves only its ``running`` line: that is how the next tick knows what to resume.
Ticks that score nothing write one line too (``empty`` or ``skipped``).

Fields of a line:

``tick``       the schedule tick the invocation handled (UTC, ``2026-11-28T02:00:00Z``)
``run``        the partition id (``run=<run>/``), null when nothing was scored
``kind``       ``tick`` (new or changed input), ``resume`` (finishing an earlier run) or ``rescore``
``status``     ``running``, ``succeeded``, ``failed``, ``empty`` or ``skipped``
``attempt``    1 for a run's first attempt, 2 for its first resume, ...
``inputs``     ``[{uri, size, mtime_ns, key, rows}]``: planned (running) or committed (succeeded)
``replaces``   ``{shard key: run}``: shards whose earlier version, in that run, this run supersedes
``model``      lineage: name, revision, commit or content_hash, quantization, dtype
``model_changed``  ``{"from": lineage, "to": lineage}`` when the model differs from the previous run's
``spec_hash``, ``rows_in``, ``rows_out``, ``errors``, ``shards``, ``started_at``, ``finished_at``,
``wall_s``, ``host``, ``pid``, ``error``, ``note``, ``missed``

The file is rewritten whole and renamed into place on each append (a reader sees
the old or the new file, never half a line), which works on object stores too;
one scheduler at a time writes it, under the job's lock.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pipelines.io.shards import resolve

log = logging.getLogger(__name__)

LEDGER = "_runs.jsonl"
UNFINISHED = ("running", "failed")
TICK_KINDS = ("tick", "rescore")


class Ledger:
    """Read and append the lines of ``_runs.jsonl`` under a job's output path."""

    def __init__(self, location: str) -> None:
        self.fs, root = resolve(location)
        self.path = f"{root}/{LEDGER}"

    def _raw(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return stream.read()
        except FileNotFoundError:
            return b""

    def read(self) -> list[dict]:
        entries = []
        for n, line in enumerate(self._raw().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON; ignored", self.path, n)
        return entries

    def append(self, entry: dict) -> dict:
        data = self._raw()
        if data and not data.endswith(b"\n"):
            data += b"\n"
        data += json.dumps(entry, sort_keys=True, default=str).encode() + b"\n"
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(f"{self.path}.tmp") as stream:
            stream.write(data)
        self.fs.move(f"{self.path}.tmp", self.path)
        return entry


@dataclass
class History:
    """What the ledger says about a job's runs: the last tick, unfinished runs, what is scored."""

    entries: list[dict]

    def last_tick(self) -> str | None:
        ticks = [e["tick"] for e in self.entries if e.get("kind") in TICK_KINDS and e.get("tick")]
        return max(ticks, default=None)

    def latest(self) -> dict[str, dict]:
        """The last line of each run (partition), by run id."""
        found: dict[str, dict] = {}
        for entry in self.entries:
            if entry.get("run"):
                found[entry["run"]] = entry
        return dict(sorted(found.items()))

    def base(self) -> str:
        """The run of the last completed rescore: every run before it is superseded ("" if none)."""
        done = [run for run, e in self.latest().items() if e.get("rescore") and e["status"] == "succeeded"]
        return max(done, default="")

    def unfinished(self) -> list[dict]:
        """Runs to resume, oldest first; runs before an unfinished rescore are left to be superseded."""
        latest = self.latest()
        open_rescores = [run for run, e in latest.items() if e.get("rescore") and e["status"] in UNFINISHED]
        floor = max([self.base(), *open_rescores])
        return [e for run, e in latest.items() if e["status"] in UNFINISHED and run >= floor]

    def first_attempt(self, run: str) -> dict:
        """The first ``running`` line of a run: its plan (inputs, replaces, rescore)."""
        return next(e for e in self.entries if e.get("run") == run and e["status"] == "running")

    def attempts(self, run: str) -> int:
        return sum(1 for e in self.entries if e.get("run") == run and e["status"] == "running")

    def scored(self) -> dict[str, tuple[dict, str]]:
        """uri → (fingerprint, run) of the newest scored version of every input since the last rescore."""
        base = self.base()
        found: dict[str, tuple[dict, str]] = {}
        for run, entry in self.latest().items():
            if run >= base and entry["status"] == "succeeded":
                for item in entry.get("inputs", []):
                    found[item["uri"]] = (fingerprint(item), run)
        return found

    def last_model(self) -> tuple[dict, str] | None:
        """(lineage, run) of the newest run that scored anything."""
        for run, entry in reversed(self.latest().items()):
            if entry["status"] == "succeeded" and entry.get("model"):
                return entry["model"], run
        return None


def fingerprint(item: dict) -> dict:
    return {"uri": item["uri"], "size": item["size"], "mtime_ns": item["mtime_ns"]}


# the table of ``pipelines runs`` ----------------------------------------------------------

COLUMNS = ("tick", "run", "kind", "status", "shards", "rows", "errors", "model", "wall_s", "note")


def model_label(model: dict | None) -> str:
    """``name@revision#hash (quantization)`` in a dozen characters or so."""
    if not model:
        return ""
    name = str(model.get("name", "?")).rstrip("/").rsplit("/", 1)[-1]
    pin = model.get("commit") or model.get("content_hash") or model.get("revision")
    label = f"{name}@{str(pin)[:8]}" if pin else name
    quant = model.get("quantization")
    return f"{label} ({quant})" if quant and quant != "none" else label


def table_rows(entries: list[dict]) -> list[dict[str, str]]:
    """One row per finished attempt (and per attempt still running or killed), oldest first."""
    history = History(entries)
    base = history.base()
    closed = {(e.get("run"), e.get("attempt")) for e in entries if e.get("run") and e["status"] != "running"}
    rows = []
    for entry in entries:
        if entry["status"] == "running" and (entry.get("run"), entry.get("attempt")) in closed:
            continue
        rows.append(_row(entry, base))
    return rows


def _row(entry: dict, base: str) -> dict[str, str]:
    status = entry["status"]
    if status == "running":
        status = "running/killed"
    notes = [entry["note"]] if entry.get("note") else []
    if entry.get("run") and entry["run"] < base:
        notes.append(f"superseded by rescore {base}")
    if entry.get("model_changed"):
        notes.append(f"model changed (was {model_label(entry['model_changed']['from'])})")
    if entry.get("replaces"):
        notes.append(f"{len(entry['replaces'])} changed shard(s)")
    if entry.get("error"):
        notes.append(f"error: {str(entry['error']).splitlines()[0][:120]}")
    shards = entry.get("inputs")
    return {
        "tick": entry.get("tick") or "",
        "run": entry.get("run") or "-",
        "kind": entry.get("kind", ""),
        "status": status,
        "shards": "" if shards is None else str(len(shards)),
        "rows": _count(entry.get("rows_out")),
        "errors": _count(entry.get("errors")),
        "model": model_label(entry.get("model")),
        "wall_s": f"{entry['wall_s']:.1f}" if entry.get("wall_s") is not None else "",
        "note": "; ".join(notes),
    }


def _count(value: Any) -> str:
    return "" if value is None else f"{value:,}"


def render_table(entries: list[dict]) -> str:
    rows = table_rows(entries)
    if not rows:
        return "no runs yet"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)
