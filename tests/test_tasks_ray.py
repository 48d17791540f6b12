"""New tasks end to end on the shared local Ray: shards in, plain Parquet out, the same rows as without Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest
from helpers import SENTENCES, make_spec, read_output, write_jsonl, write_parquet

from pipelines.inference.predictor import Predictor
from pipelines.output.records import CommitRecord
from pipelines.output.summary import render
from pipelines.runner import run_job

pytestmark = pytest.mark.slow  # a local Ray: still part of make test

ROWS = [{"id": f"x{i:02d}", "text": SENTENCES[i % len(SENTENCES)], "title": f"Story {i}"} for i in range(12)]

GENERATION = {
    "type": "text-generation",
    "max_new_tokens": 5,
    "do_sample": True,
    "num_return_sequences": 2,
    "prompt_template": "{title}: {text}",
}
LABELING = {"type": "llm-label", "candidate_labels": ["good", "bad"], "prompt_template": "{text}\nVerdict:"}


@pytest.mark.parametrize(
    ("task", "columns"),
    [
        (
            GENERATION,
            {
                "generated_text": pa.list_(pa.string()),
                "prompt_tokens": pa.int32(),
                "finish_reason": pa.list_(pa.string()),
            },
        ),
        (LABELING, {"label": pa.string(), "scores": pa.struct([("good", pa.float32()), ("bad", pa.float32())])}),
    ],
    ids=["text-generation", "llm-label"],
)
def test_new_tasks_on_ray_match_the_predictor_alone(ray_session, tiny_models, tmp_path, task, columns):
    write_jsonl(tmp_path / "in" / "a.jsonl", ROWS[:7])
    write_parquet(tmp_path / "in" / "b.parquet", ROWS[7:])
    spec = make_spec(tiny_models("causal"), task, tmp_path / "out", batching={"batch_size": 4, "max_rows": 3})
    spec.input.paths = [str(tmp_path / "in")]
    spec.seed = 11
    summary = run_job(spec).to_json()
    assert summary["rows_out"] == len(ROWS) and summary["errors"] == 0

    table = read_output(spec.output.path)
    for name, type_ in columns.items():
        assert table.schema.field(name).type == type_
    # Ray split the rows into other batches than this single call: sampling and labels must not care.
    direct = Predictor(spec)(pa.Table.from_pylist(ROWS)).to_pylist()
    names = list(columns)
    by_id = {r["id"]: {n: r[n] for n in names} for r in table.to_pylist()}
    for row in direct:
        got = by_id[row["id"]]
        for name in names:
            if name == "scores":
                assert got[name] == pytest.approx(row[name], abs=1e-5)
            else:
                assert got[name] == row[name]


def test_run_summary_counts_prompt_and_generated_tokens(ray_session, tiny_models, tmp_path):
    """_run.json and the terminal summary give prompt and generated tokens/s apart; commits hold the counts."""
    write_jsonl(tmp_path / "in" / "a.jsonl", ROWS)
    task = {"type": "text-generation", "max_new_tokens": 6, "stop": ["zz"]}
    spec = make_spec(tiny_models("causal"), task, tmp_path / "out", batching={"batch_size": 5})
    spec.input.paths = [str(tmp_path / "in")]
    summary = run_job(spec)
    table = read_output(spec.output.path)
    [commit] = [CommitRecord.model_validate_json(p.read_text()) for p in (tmp_path / "out" / "_commits").iterdir()]
    assert commit.generated == sum(table.column("generated_tokens").to_pylist()) > 0
    shared = len(Predictor(spec).task.kv_prefix)  # the shared start (a begin-of-text token) is not counted per row
    assert commit.tokens == sum(table.column("prompt_tokens").to_pylist()) - shared * len(ROWS)
    wall, rounding = summary.wall_s, 0.051  # the rates are given to one decimal: 3.7 for 3.7466 tokens/s
    assert summary.generated_tokens_per_s == pytest.approx(commit.generated / wall, abs=rounding)
    assert summary.prompt_tokens_per_s == pytest.approx(commit.tokens / wall, abs=rounding)
    assert summary.tokens_per_s == pytest.approx((commit.tokens + commit.generated) / wall, abs=rounding)
    assert f"({summary.prompt_tokens_per_s:,.0f} prompt, {summary.generated_tokens_per_s:,.0f} generated)" in render(
        summary
    )
