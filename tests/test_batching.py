"""Micro-batching: every row once, inside the budget, padded little, order restored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.inference.batching import Ragged, padded_tokens, padding_efficiency, plan_microbatches

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
