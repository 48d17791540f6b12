"""Rows continued from a cached prefix compute what a full forward computes, through every cache operation."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.inference.kv_cache import Prefix, ReservedLayer, merge, shared_prefix

CPU = torch.device("cpu")
PREFIX = [1, 50, 60, 70, 71]
PROMPTS = [[80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90], [90, 91]]


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("kind", ["causal", "gpt2"])
def test_merged_rows_with_room_and_dropped_positions_match_full_forwards(tiny_models, kind):
    model = AutoModelForCausalLM.from_pretrained(tiny_models(kind)).eval()
    with torch.inference_mode():
        prefix = Prefix(model, PREFIX, CPU)
        parts = []
        for ids in PROMPTS:  # each prompt alone, then one batch: the short row padded after the prefix
            part = prefix.rows(torch.tensor([True]))
            part.extend(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), last_only=True)
            parts.append(part)
        rows = merge(parts, len(prefix))
        assert rows.mask.tolist()[1] == [1] * len(PREFIX) + [0] * 9 + [1, 1]
        rows.reserve(1)  # less room than the steps below need: the layer grows once
        assert all(isinstance(layer, ReservedLayer) for layer in rows.cache.layers)
        sequences = [PREFIX + ids for ids in PROMPTS]
        for step in ([5, 6], [7, 8], [9, 10]):
            got = rows.extend(model, torch.tensor(step)[:, None], torch.ones(2, 1, dtype=torch.long), last_only=True)
            for i, token in enumerate(step):
                sequences[i].append(token)
                assert torch.allclose(got[i], full_logits(model, sequences[i]), atol=1e-5)
        width = rows.cache.get_seq_length()
        rows.keep(torch.tensor([1]), compact=True)  # the long row leaves: the short one's padding goes too
        assert rows.cache.get_seq_length() == width - 9 == rows.mask.shape[1]
        got = rows.extend(model, torch.tensor([[11]]), torch.ones(1, 1, dtype=torch.long), last_only=True)
        assert torch.allclose(got[0], full_logits(model, [*sequences[1], 11]), atol=1e-5)


def test_a_model_that_ignores_the_layout_is_refused(tiny_models, caplog):
    """Setup's check: where continued rows don't get a full forward's logits, prefix reuse is off."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models("causal")).eval()
    with torch.inference_mode():
        assert shared_prefix(model, PREFIX, PROMPTS[1], CPU) is not None
        original = model.forward

        @functools.wraps(original)  # the same signature: only the check can tell
        def without_positions(*args, **kwargs):
            kwargs.pop("position_ids", None)  # as a model that computes positions from the cache would
            return original(*args, **kwargs)

        model.forward = without_positions
        assert shared_prefix(model, PREFIX, PROMPTS[1], CPU) is None
    assert "continued rows differ from a full forward" in caplog.text
