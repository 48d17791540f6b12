"""What a run prints: Ray's progress, each library warning once, the summary and the report's path."""

from __future__ import annotations

import logging

from helpers import SENTENCES, batch_of, make_spec, write_jsonl
from test_cli import cli

from pipelines.inference.library_logs import OncePerProcess
from pipelines.inference.predictor import Predictor

CAST = "MatMul8bitLt: inputs will be cast"


def forget_shown_warnings() -> None:
    """As in a new process: drop the once-filters that earlier tests' predictors put on bitsandbytes' loggers."""
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        for once in [f for f in logger.filters if isinstance(f, OncePerProcess)]:
            logger.removeFilter(once)


def test_bitsandbytes_cast_warning_is_logged_once_per_process(tiny_models, caplog):
    """bitsandbytes logs it through `logging` on every int8 matmul: a `warnings` filter never saw it."""
    forget_shown_warnings()
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"})
    spec.model.quantization, spec.model.device = "int8", "cpu"
    with caplog.at_level(logging.WARNING):
        predictor = Predictor(spec)
        for _ in range(3):
            predictor(batch_of(SENTENCES))
        Predictor(spec)(batch_of(SENTENCES))  # a second predictor in the same process adds none
    casts = [r for r in caplog.records if CAST in r.getMessage()]
    assert len(casts) == 1, f"{len(casts)} cast warnings"


def test_an_int8_run_prints_the_cast_warning_at_most_once_and_the_report_path(tiny_models, tmp_path):
    rows = [{"id": f"r{i}", "text": SENTENCES[i % len(SENTENCES)], "label": "x"} for i in range(64)]
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[:32])
    write_jsonl(tmp_path / "in" / "b.jsonl", rows[32:])
    out = tmp_path / "out"
    done = cli(
        "run", "jobs/embed_news.yaml",
        "--set", f"model.name={tiny_models('encoder')}", "--set", "model.quantization=int8",
        "--set", f"input.paths=[{tmp_path / 'in'}]", "--set", f"output.path={out}",
        "--set", "batching.batch_size=8", "--set", "batching.max_rows=4", "--set", "compute.cpus_per_actor=0.5",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    terminal = done.stdout + done.stderr
    assert terminal.count(CAST) <= 1, terminal.count(CAST)
    assert "Loading weights" not in terminal
    assert f"report: {out}/_report.html" in done.stdout
    assert (out / "_report.html").stat().st_size > 100_000
    assert "succeeded: 64 rows written" in done.stdout
