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


#: What one forward costs beyond its tokens, in padded tokens (``forward_cost`` of :func:`plan_microbatches`). On a
#: CPU, a MiniLM forward of 4 x 16 tokens took what about 100 tokens take in a forward of 64 rows (fp32, measured
#: here): some 35 tokens of fixed cost; in bfloat16 tokens are about 3x cheaper and the fixed cost is not, so 64
#: sits between the two. On a GPU a forward's fixed cost (kernel launches, reading every weight once) is worth far
#: more tokens: on an H200 in bfloat16 (``benchmarks/gpu_check.py``, part ``forward_cost``) a forward of one row of
#: 16 tokens took as long as 54,600 tokens of a large forward for MiniLM, 11,800 for an encoder of BERT-base's size
#: and 13,200 for BERT-large's (fitted fixed cost 43,000, 7,000 and 8,100 tokens); 8,192 sits under the first three
#: and near the BERT sizes' fitted costs, for slower GPUs too (more time per token there, so fewer tokens' worth).
#: ``batching.min_fill`` still bounds the padding.
#: The main job's rows there ran at 1.23x with 4,096 against the 512 guessed before (part ``cuts``).
FORWARD_COST_TOKENS = {"cpu": 64, "cuda": 8192}


def plan_microbatches(
    lengths: np.ndarray,
    max_tokens: int,
    max_rows: int,
    min_fill: float = 0.0,
    footprint: Callable[[int], int] | None = None,
    forward_cost: int | None = None,
    new_tokens: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split rows into micro-batches of similar length whose padded size stays under ``max_tokens``.

    Rows are sorted longest first and cut into runs, so each micro-batch is padded
    to its first row's length; it holds at least one row, at most ``max_rows``, and
    no row shorter than ``min_fill`` x its longest (which bounds its padding). A row
    longer than the budget gets a micro-batch of its own. ``footprint`` maps a
    padded length to the tokens a row then holds (e.g. plus the tokens it will
    generate); the budget counts those. ``new_tokens``: the tokens each row may generate where that
    differs per row (``Task.planned_new_tokens``); a micro-batch generates the most of its rows' on each
    of them, so the budget counts that most on every row, beside ``footprint``.

    Where the cuts go: with ``forward_cost`` (and ``min_fill`` > 0), where they make
    the padded tokens plus ``forward_cost`` per micro-batch least (an exact
    dynamic programme over the sorted rows: it pads less than filling each
    micro-batch in turn, for as many forwards). Without, each micro-batch takes
    as many rows as the bounds allow, in turn. Returns index arrays into
    ``lengths``; together they cover every row exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    ascending = lengths[order][::-1]  # for searchsorted: rows from the end that are shorter than a bound
    n = len(order)

    def most_rows(start: int) -> int:
        """The most rows a micro-batch starting at sorted row ``start`` may hold."""
        longest = max(int(lengths[order[start]]), 1)
        held = footprint(longest) if footprint else longest
        if new_tokens is None:
            size = min(max_rows, max(1, max_tokens // max(held, 1)), n - start)
        else:  # k rows hold k x (held + the most any of them generates): a prefix of the window fits
            most = np.maximum.accumulate(new_tokens[order[start : start + min(max_rows, n - start)]])
            size = max(1, int((np.arange(1, len(most) + 1) * np.maximum(held + most, 1) <= max_tokens).sum()))
        if min_fill > 0:
            shorter = int(np.searchsorted(ascending, min_fill * longest, side="left"))  # rows below the bound
            size = max(1, min(size, n - shorter - start))
        return size

    if forward_cost is None or min_fill <= 0:
        sizes = []
        start = 0
        while start < n:
            sizes.append(most_rows(start))
            start += sizes[-1]
    else:
        sizes = _least_cost_sizes(np.maximum(lengths[order], 1), [most_rows(i) for i in range(n)], forward_cost)
    bounds = np.cumsum([0, *sizes])
    return [order[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


def _least_cost_sizes(widths: np.ndarray, most: list[int], forward_cost: int) -> list[int]:
    """Micro-batch sizes over rows sorted longest first (``widths``) that make ``sum(forward_cost + size x first
    width)`` least, a micro-batch starting at row ``i`` holding at most ``most[i]`` rows."""
    n = len(widths)
    best = np.zeros(n + 1)  # best[i]: least cost of the rows from i on
    size = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        k = np.arange(most[i], 0, -1)  # largest first: ties go to fewer micro-batches
        cost = forward_cost + k * int(widths[i]) + best[i + k]
        pick = int(np.argmin(cost))
        size[i], best[i] = k[pick], cost[pick]
    sizes = []
    i = 0
    while i < n:
        sizes.append(int(size[i]))
        i += sizes[-1]
    return sizes


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens a forward pass computes over these micro-batches, padding included."""
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))


def padding_efficiency(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Real tokens / padded tokens: 1.0 means no compute spent on padding."""
    padded = padded_tokens(lengths, batches)
    return float(np.sum(lengths)) / padded if padded else 1.0


def spread_over_lanes(batches: list[np.ndarray], cost: Callable[[np.ndarray], float], lanes: int) -> list[np.ndarray]:
    """The micro-batches in the order lanes should take them (each lane taking the next as it finishes one):
    costliest first, so that what is left at the end is short; and a whole number per lane where halving the
    costliest can make it so (at most ``lanes - 1`` halvings, of micro-batches of two rows or more), so that no
    lane waits out a last long forward alone. ``cost`` gives a micro-batch's cost (e.g. its padded tokens plus a
    cost per forward). The rows are the same, in as many micro-batches or a few more."""
    batches = sorted(batches, key=cost, reverse=True)
    for _ in range(lanes - 1):
        if len(batches) % lanes == 0:
            break
        splittable = [i for i, b in enumerate(batches) if len(b) > 1]
        if not splittable:
            break
        first = batches.pop(splittable[0])
        half = len(first) // 2
        batches = sorted([*batches, first[:half], first[half:]], key=cost, reverse=True)
    return batches
