"""What a run prints: Ray's progress, each library warning once, the summary and the report's path."""

from __future__ import annotations

import logging

from helpers import SENTENCES, batch_of, make_spec

from pipelines.inference.predictor import Predictor

CAST = "MatMul8bitLt: inputs will be cast"


def test_bitsandbytes_cast_warning_is_logged_once_per_process(tiny_models, caplog):
    """bitsandbytes logs it through `logging` on every int8 matmul: a `warnings` filter never saw it."""
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"})
    spec.model.quantization, spec.model.device = "int8", "cpu"
    with caplog.at_level(logging.WARNING):
        predictor = Predictor(spec)
        for _ in range(3):
            predictor(batch_of(SENTENCES))
        Predictor(spec)(batch_of(SENTENCES))  # a second predictor in the same process adds none
    casts = [r for r in caplog.records if CAST in r.getMessage()]
    assert len(casts) == 1, f"{len(casts)} cast warnings"
