"""Failures inside a forward: the offending rows are isolated, out-of-memory shrinks the batches."""

from __future__ import annotations

import pytest
import torch
from helpers import SENTENCES, batch_of, make_spec

from pipelines.inference.predictor import ERROR, Predictor


def classifier(tiny_models, **batching) -> Predictor:
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, batching=batching)
    return Predictor(spec)


def poison_forward(predictor: Predictor, word: str) -> list[int]:
    """Make the model raise whenever the token of ``word`` is in the micro-batch; count calls."""
    model = predictor.loaded.model
    poison = predictor.loaded.tokenizer.convert_tokens_to_ids(word)
    original = model.forward
    calls: list[int] = []

    def forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if (kwargs["input_ids"] == poison).any():
            raise ValueError("poisoned row")
        return original(*args, **kwargs)

    model.forward = forward
    return calls


@pytest.mark.parametrize("max_rows", [64, 4], ids=["one-micro-batch", "eight-in-two-lanes"])
def test_a_failing_row_is_bisected_out_and_the_rest_predicted(tiny_models, max_rows):
    """One micro-batch of 32 rows is split in halves down to the culprits; in lanes (8 micro-batches, two at a
    time, each forward on one thread) a micro-batch that fails is run again alone and split the same way."""
    predictor = classifier(tiny_models, max_rows=max_rows, min_fill=0)
    assert predictor.lanes == 2
    clean = predictor(batch_of(SENTENCES * 4)).column("label").to_pylist()
    calls = poison_forward(predictor, "paris")
    out = predictor(batch_of(SENTENCES * 4))
    errors = out.column(ERROR).to_pylist()
    poisoned = [i for i, text in enumerate(SENTENCES * 4) if "Paris" in text]
    assert [i for i, e in enumerate(errors) if e] == poisoned
    assert all(errors[i] == "forward failed: ValueError: poisoned row" for i in poisoned)
    labels = out.column("label").to_pylist()
    assert [labels[i] for i in range(32) if i not in poisoned] == [clean[i] for i in range(32) if i not in poisoned]
    assert max(calls) == min(max_rows, 32) and 1 in calls  # whole micro-batches first, then halves to the culprits


def test_out_of_memory_splits_and_lowers_the_budget(tiny_models):
    predictor = classifier(tiny_models, max_tokens=4096, max_rows=64, min_fill=0)
    expected = predictor(batch_of(SENTENCES * 4)).column("label").to_pylist()
    model = predictor.loaded.model
    original = model.forward
    sizes: list[int] = []

    def forward(*args, **kwargs):
        sizes.append(kwargs["input_ids"].numel())
        if kwargs["input_ids"].numel() > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    model.forward = forward
    out = predictor(batch_of(SENTENCES * 4))
    assert out.column(ERROR).null_count == out.num_rows
    assert out.column("label").to_pylist() == expected
    assert predictor.max_tokens < 4096
    sizes.clear()
    predictor(batch_of(SENTENCES * 4))
    assert max(sizes) <= predictor.max_tokens  # later batches are planned under the lowered budget


def cpu_allocator_failure() -> BaseException:
    """What torch's CPU allocator really raises when it can't get the memory (a plain RuntimeError)."""
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("allocating 4 EiB succeeded")


@pytest.mark.parametrize(
    "failure", [cpu_allocator_failure, lambda: torch.OutOfMemoryError("out of memory")], ids=["cpu", "torch-oom"]
)
def test_cpu_out_of_memory_splits_and_lowers_the_budget(tiny_models, failure):
    """The CPU allocator's "can't allocate memory" is out of memory too: split, lower the budget, predict every row."""
    predictor = classifier(tiny_models, max_tokens=4096, max_rows=64, min_fill=0)
    expected = predictor(batch_of(SENTENCES * 4)).column("label").to_pylist()
    model = predictor.loaded.model
    original = model.forward

    def forward(*args, **kwargs):
        if kwargs["input_ids"].numel() > 100:
            raise failure()
        return original(*args, **kwargs)

    model.forward = forward
    out = predictor(batch_of(SENTENCES * 4))
    assert out.column(ERROR).to_pylist() == [None] * out.num_rows
    assert out.column("label").to_pylist() == expected
    assert predictor.max_tokens < 4096

