"""Length-sorted micro-batches under a token budget, and padding without Python loops over rows.

Token ids are held as a :class:`Ragged` array (one flat buffer plus offsets), so
cutting a micro-batch out of it and padding that micro-batch to its own longest
row are a few numpy operations, whatever the number of rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Ragged:
    """Variable-length integer rows in one flat buffer: row ``i`` is ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> Ragged:
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> Ragged:
        """The rows at ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths)
        return Ragged(self.values[starts + np.arange(offsets[-1])], offsets)

    def pad(
        self, rows: np.ndarray, pad_value: int, side: Literal["right", "left"] = "right"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``rows`` padded to their own longest: (ids ``[b, L]``, attention mask ``[b, L]``)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 0
        columns = np.arange(width)[None, :]
        if side == "right":
            mask = columns < lengths[:, None]
            source = self.offsets[rows][:, None] + columns
        else:
            mask = columns >= (width - lengths)[:, None]
            source = self.offsets[rows][:, None] + columns - (width - lengths)[:, None]
        ids = np.where(mask, self.values[np.clip(source, 0, max(len(self.values) - 1, 0))], pad_value)
        return ids, mask.astype(np.int64)


def plan_microbatches(
    lengths: np.ndarray,
    max_tokens: int,
    max_rows: int,
    min_fill: float = 0.0,
    footprint: Callable[[int], int] | None = None,
) -> list[np.ndarray]:
    """Split rows into micro-batches of similar length whose padded size stays under ``max_tokens``.

    Rows are sorted longest first, so each micro-batch is padded to its first
    row's length and holds as many rows as the budget allows (at least one, at
    most ``max_rows``), stopping early at the first row shorter than
    ``min_fill`` × that length, which bounds the padding of every micro-batch.
    A row longer than the budget gets a micro-batch of its own. ``footprint``
    maps a padded length to the tokens a row then holds (e.g. plus the tokens it
    will generate); the budget counts those. Returns index arrays into
    ``lengths``; together they cover every row exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    ascending = lengths[order][::-1]  # for searchsorted: rows from the end that are shorter than a bound
    n = len(order)
    batches = []
    start = 0
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        held = footprint(longest) if footprint else longest
        size = min(max_rows, max(1, max_tokens // max(held, 1)), n - start)
        if min_fill > 0:
            shorter = int(np.searchsorted(ascending, min_fill * longest, side="left"))  # rows below the bound
            size = max(1, min(size, n - shorter - start))
        batches.append(order[start : start + size])
        start += size
    return batches


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens a forward pass computes over these micro-batches, padding included."""
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))


def padding_efficiency(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Real tokens / padded tokens: 1.0 means no compute spent on padding."""
    padded = padded_tokens(lengths, batches)
    return float(np.sum(lengths)) / padded if padded else 1.0
