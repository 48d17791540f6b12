"""The ``errors.duplicate_ids: error`` policy: a row whose id was already written, or that has none, is quarantined.

Checked by the driver when a shard is committed (as the screen of its merge, see
:meth:`pipelines.output.commit.OutputDir.commit`), against every id committed
before (loaded once from the output) and the shard's own earlier rows. Only ids
are read, and only under this policy, or, under the default (``keep``), for an OpenAI Batch input, whose custom_ids
that repeat are named at the end of the run (the Batch API refuses such a file); otherwise ``keep`` costs nothing.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.io.block import ROW
from pipelines.io.shards import Shard
from pipelines.output.openai_batch import OpenAIBatchFiles, read_custom_ids
from pipelines.output.records import CommitRecord

REASON = "duplicate id"
NULL_REASON = "id is null"  # under this policy the output's ids are unique, so each row needs one


class DuplicateIds:
    """The ids written so far are held in one set, looked up and added to at each commit: a shard's screen costs
    its own rows, whatever was committed before (rebuilt from every id at each commit, it grew with the shards:
    4,000 shards of 100 rows took 208 s of the driver's time, 1,000 took 4.7 s). The set takes the driver about
    100 bytes an id (a 10-character id)."""

    def __init__(self, fs: pafs.FileSystem, root: str, id_column: str, committed: list[CommitRecord],
                 quarantine: bool = True) -> None:
        """``quarantine=False``: rows are all kept (``keep``); the ids that repeat are only noted, in ``repeated``."""
        self.fs = fs
        self.id_column = id_column
        self.quarantine = quarantine
        self.seen: set[str] = set()
        self._repeated: dict[str, None] = {}  # each once, in the order met
        for record in committed:
            for name in record.files:
                ids = self._ids(f"{root}/{name}")
                self.seen.update(i for i in ids.to_pylist() if i is not None)
                if not name.endswith(OpenAIBatchFiles.suffix):
                    self.seen.update(_as_written_now(ids))

    @property
    def repeated(self) -> list[str]:
        """Under ``keep``: the ids met again, each once, in the order met."""
        return list(self._repeated)

    def _ids(self, path: str) -> pa.Array:
        if path.endswith(OpenAIBatchFiles.suffix):
            return read_custom_ids(self.fs, path)
        with self.fs.open_input_file(path) as handle:
            return pq.read_table(handle, columns=[self.id_column]).column(0).combine_chunks().cast(pa.string())

    def __call__(self, table: pa.Table, shard: Shard) -> tuple[pa.Table, pa.Table | None]:
        """Split a shard's rows into those kept and the quarantine records of repeated ids."""
        ids = table.column(self.id_column).combine_chunks().cast(pa.string())
        missing = ids.is_null().to_numpy(zero_copy_only=False)  # no id: no unique key either (not a duplicate)
        repeated = self._screen(ids.to_pylist())
        if not self.quarantine:
            self._repeated.update(dict.fromkeys(ids.filter(pa.array(repeated & ~missing)).to_pylist()))
            return table, None
        kept = table.filter(pa.array(~repeated))
        if not repeated.any():
            return kept, None
        dropped = ids.filter(pa.array(repeated))
        n = len(dropped)
        rows = table.column(ROW).filter(pa.array(repeated)) if ROW in table.column_names else pa.nulls(n, pa.int64())
        errors = pa.table(
            {
                "shard": pa.array([shard.uri] * n, pa.string()),
                "row": rows,
                "id": dropped,
                "reason": pa.array([NULL_REASON if m else REASON for m in missing[repeated]], pa.string()),
                "preview": pa.nulls(n, pa.string()),
            }
        )
        return kept, errors

    def _screen(self, ids: list[str | None]) -> np.ndarray:
        """True where an id is null, already seen, or earlier in ``ids``; the others are seen from now on."""
        repeated = np.zeros(len(ids), dtype=bool)
        seen = self.seen
        for n, value in enumerate(ids):
            if value is None or value in seen:
                repeated[n] = True
            else:
                seen.add(value)
        return repeated


def quarantined_repeats(committed: dict[str, CommitRecord], leaving: set[str]) -> list[CommitRecord]:
    """The committed shards, but for those ``leaving`` (their keys: output deleted or moved away), that quarantined a
    row as a ``duplicate id``: the row it repeated may leave with them, and that id would then be in no part file, so
    they are to be scored again (each row screened against the output as it is then)."""
    return [record for key, record in committed.items() if key not in leaving and record.reasons.get(REASON)]


#: How an earlier version wrote a Parquet id stored as a float that is a whole number from 10**10 up (Arrow's form).
_EXPONENT_FORM = re.compile(r"-?[1-9](?:\.[0-9]+)?e\+[0-9]+")


def _as_written_now(ids: pa.Array) -> list[str]:
    """The ids among ``ids`` that an earlier version wrote in exponent form (``1.733100000001e+12``, a Parquet id
    stored as a float), as this one writes them (``1733100000001``, :func:`pipelines.io.reader.numbers_as_text`): an
    output begun before the change and resumed after it holds the first spelling in its committed shards and gets
    the second from the rest, and a repeat in the second is a repeat all the same."""
    found = []
    for text in ids.filter(pc.fill_null(pc.match_substring(ids, "e+"), False)).to_pylist():
        if _EXPONENT_FORM.fullmatch(text):
            number = float(text)
            if number.is_integer() and abs(number) < 2.0**53:  # past 2**53 both versions write the exponent form
                found.append(str(int(number)))
    return found


def repeated_custom_ids(repeated: list[str], said: str = "were asked more than once and answered each time",
                        shown: int = 10) -> str:
    """What an OpenAI Batch run under ``errors.duplicate_ids: keep`` says of the custom_ids it answered more than
    once: the default stays ``keep`` (it is in the spec hash of outputs written before), so the run says it."""
    names = ", ".join(repr(i) for i in repeated[:shown]) + (f" and {len(repeated) - shown} more"
                                                          if len(repeated) > shown else "")
    return (
        f"{len(repeated)} custom_id(s) {said} (errors.duplicate_ids: keep): "
        f"{names}; OpenAI's Batch API refuses such a file, and answers matched by custom_id lose all but one: set "
        "errors.duplicate_ids: error to answer each custom_id once (the spec hash changes: a new output.path, or "
        "--overwrite)"
    )
