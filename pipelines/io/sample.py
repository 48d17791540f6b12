"""A deterministic sample of a job's input rows: the same rows on every run, whatever the shard order.

Rows are ranked by a hash of their id and the ``n`` lowest are kept, so the sample
depends only on the ids: re-running, listing the shards in another order or reading
them in other blocks picks the same rows, and adding input changes the sample only
where a new id ranks among the lowest. Rows that can't be predicted (a null or
blank text, a null prompt column, a null or blank question, a bad JSON line) are not
sampled. Light: pyarrow and hashlib.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.io.block import ERROR
from pipelines.io.reader import Columns, read_shard
from pipelines.io.shards import Shard


def id_rank(ids: Iterable[str | None]) -> np.ndarray:
    """A stable 64-bit rank for each id (blake2b of its UTF-8 text); null ids rank last."""
    top = np.iinfo(np.uint64).max
    return np.fromiter(
        (top if i is None else int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") for i in ids),
        dtype=np.uint64,
    )


def sample_rows(shards: list[Shard], columns: Columns, n: int, filled: bool = False) -> pa.Table:
    """The ``n`` usable rows with the lowest id hash over all ``shards`` (fewer when there are fewer); ``filled``:
    the task refuses a blank value of its other inputs too, not only a null one (question answering)."""
    kept: pa.Table | None = None
    for shard in shards:
        for block in read_shard(shard, columns):
            usable = block.filter(_usable(block, columns, filled))
            if usable.num_rows:
                kept = _lowest(usable if kept is None else pa.concat_tables([kept, usable]), columns.id_name, n)
    if kept is None:
        return pa.table({})
    return kept


def _usable(block: pa.Table, columns: Columns, filled: bool) -> pa.Array:
    """Rows the reader took, whose text is there (the predictor refuses null or blank texts) and whose other task
    inputs are not null (a prompt's columns: the task refuses such a row), nor blank where ``filled`` (a
    question-answering row's question)."""
    usable = pc.and_(block.column(ERROR).is_null(), _not_blank(block.column(columns.text)))
    for name in columns.inputs:
        if name != columns.text and name in block.column_names:
            column = block.column(name)
            text = filled and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
            usable = pc.and_(usable, _not_blank(column) if text else column.is_valid())
    return usable


def _not_blank(column: pa.ChunkedArray) -> pa.Array:
    """Values that are not null, empty or only whitespace."""
    return pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(column, ""))), 0)


def _lowest(table: pa.Table, id_column: str, n: int) -> pa.Table:
    rank = id_rank(table.column(id_column).to_pylist())
    ids = np.asarray(table.column(id_column).to_pylist(), dtype=object)
    order = np.lexsort((ids.astype(str), rank))[:n]  # ties (equal hashes) broken by the id itself
    return table.take(pa.array(order))
