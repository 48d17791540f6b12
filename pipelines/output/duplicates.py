"""The ``errors.duplicate_ids: error`` policy: a row whose id was already written is quarantined.

Checked by the driver when a shard is committed, against every id committed
before (loaded once from the output) and the shard's own earlier rows. Only ids
are read, and only under this policy; the default (``keep``) costs nothing.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.output import layout
from pipelines.output.records import CommitRecord
from pipelines.output.staging import StagingReport

REASON = "duplicate id"


class DuplicateIds:
    def __init__(self, fs, root: str, id_column: str, committed: list[CommitRecord]) -> None:
        self.fs = fs
        self.id_column = id_column
        self.seen = pa.chunked_array([pa.array([], pa.string())])
        for record in committed:
            for name in record.files:
                self._remember(self._ids(f"{root}/{name}"))

    def _ids(self, path: str) -> pa.Array:
        with self.fs.open_input_file(path) as handle:
            return pq.read_table(handle, columns=[self.id_column]).column(0).combine_chunks().cast(pa.string())

    def _remember(self, ids: pa.Array) -> None:
        self.seen = pa.chunked_array([*self.seen.chunks, ids])

    def screen(self, report: StagingReport, shard_uri: str, compression: str) -> None:
        """Drop repeated ids from a report's staged files (rewriting them) and stage them as errors."""
        repeated_total = []
        for path in report.files:
            with self.fs.open_input_file(path) as handle:
                table = pq.read_table(handle)
            ids = table.column(self.id_column).combine_chunks().cast(pa.string())
            repeated = _repeats(ids, self.seen.combine_chunks())
            if repeated.any():
                layout.write_parquet(self.fs, path, table.filter(pa.array(~repeated)), compression)
                repeated_total.append(ids.filter(pa.array(repeated)))
            self._remember(ids.filter(pa.array(~repeated)))
        if not repeated_total:
            return
        dropped = pa.concat_arrays(repeated_total)
        n = len(dropped)
        errors = pa.table(
            {
                "shard": pa.array([shard_uri] * n, pa.string()),
                "row": pa.nulls(n, pa.int64()),
                "id": dropped,
                "reason": pa.array([REASON] * n, pa.string()),
                "preview": pa.nulls(n, pa.string()),
            }
        )
        path = f"{report.files[0].rsplit('/', 1)[0]}/{uuid.uuid4().hex}-duplicates.parquet"
        layout.write_parquet(self.fs, path, errors, compression)
        report.error_files = [*report.error_files, path]
        report.rows -= n
        report.errors += n
        report.reasons[REASON] = report.reasons.get(REASON, 0) + n


def _repeats(ids: pa.Array, seen: pa.Array) -> np.ndarray:
    """True where an id is already in ``seen`` or appeared earlier in ``ids``."""
    known = pc.is_in(ids, value_set=seen).to_numpy(zero_copy_only=False)
    positions = pa.array(np.arange(len(ids)))
    first = pa.table({"id": ids, "pos": positions}).group_by("id").aggregate([("pos", "min")])
    first_pos = first.column("pos_min").to_numpy()[pc.index_in(ids, value_set=first.column("id")).to_numpy()]
    return known | (first_pos != np.arange(len(ids)))
