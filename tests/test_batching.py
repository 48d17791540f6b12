"""Micro-batching: every row once, inside the budget, padded little, order restored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.inference.batching import (
    Ragged,
    padded_tokens,
    padding_efficiency,
    plan_microbatches,
    spread_over_lanes,
)

ROOT = Path(__file__).resolve().parents[1]


def random_rows(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 1000, size=rng.integers(1, 60)).tolist() for _ in range(n)]


def test_ragged_round_trip_and_take():
    rows = random_rows(50)
    ragged = Ragged.from_lists(rows)
    assert len(ragged) == 50
    assert [ragged.row(i).tolist() for i in range(50)] == rows
    picked = ragged.take(np.array([7, 3, 3, 49]))
    assert [picked.row(i).tolist() for i in range(4)] == [rows[7], rows[3], rows[3], rows[49]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_to_the_micro_batch_longest(side):
    rows = [[1, 2, 3], [4], [5, 6]]
    ids, mask = Ragged.from_lists(rows).pad(np.array([0, 1, 2]), pad_value=0, side=side)
    assert ids.shape == (3, 3)
    assert mask.sum(axis=1).tolist() == [3, 1, 2]
    for i, row in enumerate(rows):
        assert ids[i][mask[i] == 1].tolist() == row
        assert (ids[i][mask[i] == 0] == 0).all()
    if side == "left":
        assert mask[1].tolist() == [0, 0, 1]


def test_every_row_once_and_no_micro_batch_over_budget():
    lengths = np.array([len(r) for r in random_rows(500, seed=1)])
    batches = plan_microbatches(lengths, max_tokens=300, max_rows=32, min_fill=0.8)
    covered = np.sort(np.concatenate(batches))
    assert covered.tolist() == list(range(500))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) * lengths[batch].max() <= 300 or len(batch) == 1
        assert lengths[batch].min() >= 0.8 * lengths[batch].max() or len(batch) == 1


def test_a_row_over_the_budget_runs_alone():
    batches = plan_microbatches(np.array([10, 500, 12]), max_tokens=100, max_rows=8)
    assert [len(b) for b in batches] == [1, 2]
    assert batches[0].tolist() == [1]


def test_outputs_restore_input_order():
    from pipelines.tasks.base import Outputs

    lengths = np.array([len(r) for r in random_rows(100, seed=2)])
    outputs = Outputs(100)
    for batch in plan_microbatches(lengths, max_tokens=200, max_rows=16):
        outputs.add(batch, {"value": lengths[batch] * 10, "items": [f"row{i}" for i in batch]})
    assert outputs.stacked("value").tolist() == (lengths * 10).tolist()
    assert outputs.listed("items") == [f"row{i}" for i in range(100)]


def skewed_lengths() -> np.ndarray:
    """Token-ish lengths of the repo's sample: short SST-2 reviews mixed with longer AG News items."""
    texts = []
    for path in [ROOT / "jobs/data/reviews/sst2-sample.jsonl", *sorted((ROOT / "jobs/data/news").glob("*.jsonl"))]:
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines()]
    order = np.random.default_rng(0).permutation(len(texts))
    return np.array([len(texts[i].split()) + 2 for i in order])


def test_length_sorting_pads_far_less_than_input_order():
    lengths = skewed_lengths()
    sorted_batches = plan_microbatches(lengths, max_tokens=4096, max_rows=64, min_fill=0.8)
    input_order = [np.arange(i, min(i + 32, len(lengths))) for i in range(0, len(lengths), 32)]
    assert padding_efficiency(lengths, sorted_batches) >= 0.9
    assert padding_efficiency(lengths, input_order) < 0.6
    assert padded_tokens(lengths, sorted_batches) < 0.7 * padded_tokens(lengths, input_order)


def cost(lengths: np.ndarray, batches: list[np.ndarray], forward_cost: int) -> int:
    return padded_tokens(lengths, batches) + forward_cost * len(batches)


def test_least_cost_cuts_are_the_best_of_every_possible_cut():
    """With a cost per forward, the cuts are the cheapest of all ways to cut the sorted rows under the bounds
    (checked against every one of the 2**(n-1) ways on small inputs)."""
    import itertools

    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(1, 11))
        lengths = rng.integers(1, 40, size=n)
        max_tokens, max_rows, min_fill, forward_cost = int(rng.integers(20, 200)), int(rng.integers(1, 6)), 0.3, 16
        batches = plan_microbatches(lengths, max_tokens, max_rows, min_fill, forward_cost=forward_cost)
        assert np.sort(np.concatenate(batches)).tolist() == list(range(n))
        s = np.sort(lengths)[::-1]

        def allowed(run: np.ndarray) -> bool:
            return len(run) == 1 or (
                len(run) <= max_rows and len(run) * run[0] <= max_tokens and run[-1] >= min_fill * run[0]
            )

        best = None
        for cuts in itertools.product([False, True], repeat=n - 1):
            bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
            runs = [s[a:b] for a, b in zip(bounds, bounds[1:])]
            if all(allowed(r) for r in runs):
                total = sum(len(r) * max(int(r[0]), 1) + forward_cost for r in runs)
                best = total if best is None else min(best, total)
        assert all(allowed(np.sort(lengths[b])[::-1]) for b in batches)
        assert cost(np.maximum(lengths, 1), batches, forward_cost) == best


def test_least_cost_cuts_pad_less_than_filling_each_micro_batch_in_turn():
    lengths = skewed_lengths()
    filled = plan_microbatches(lengths, max_tokens=4096, max_rows=64, min_fill=0.8)
    cut = plan_microbatches(lengths, max_tokens=4096, max_rows=64, min_fill=0.8, forward_cost=64)
    assert np.sort(np.concatenate(cut)).tolist() == list(range(len(lengths)))
    assert padding_efficiency(lengths, cut) > padding_efficiency(lengths, filled)
    assert cost(lengths, cut, 64) < cost(lengths, filled, 64)


def test_lanes_take_the_costliest_first_and_as_many_each():
    lengths = np.array([len(row) for row in random_rows(45, seed=3)])

    def cost(index: np.ndarray) -> int:
        return 64 + len(index) * int(lengths[index].max())

    batches = plan_microbatches(lengths, 200, 8)[:9]  # an odd count: two lanes would not end together
    spread = spread_over_lanes(batches, cost, 2)
    assert len(spread) == 10  # the costliest was halved, once
    assert sorted(np.concatenate(spread).tolist()) == sorted(np.concatenate(batches).tolist())  # every row once
    costs = [cost(index) for index in spread]
    assert costs == sorted(costs, reverse=True)
    single_rows = [np.array([0]), np.array([1]), np.array([2])]
    assert len(spread_over_lanes(single_rows, cost, 2)) == 3  # a micro-batch of one row can't be halved
