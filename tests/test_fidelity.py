"""Quantization fidelity: the deterministic sample, each task's measures, the bar before a run, the command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import yaml
from helpers import ROOT, SENTENCES, joining, make_spec, write_jsonl, write_parquet
from test_cli import cli

from pipelines.errors import PipelineError
from pipelines.fidelity import _decision_path, check
from pipelines.inference.fidelity import Predictions, compare, measure
from pipelines.io.reader import Columns
from pipelines.io.sample import sample_rows
from pipelines.io.shards import list_shards
from pipelines.output.records import Fidelity
from pipelines.runner import run_job
from pipelines.spec import FidelitySpec
from pipelines.tasks.options import TASK_OPTIONS

TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def build_wide_encoder(base: str, path) -> str:
    """A tiny BERT wide enough for 4-bit blocks (hidden 64) and with weights large enough (init range 0.2) that
    quantization moves its outputs: int8 keeps its zero-shot labels, nf4 changes about one in ten."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertModel

    config = AutoConfig.from_pretrained(base)
    config.hidden_size, config.intermediate_size, config.initializer_range = 64, 128, 0.2
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(base).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def wide_encoder(tiny_models, tmp_path_factory):
    return build_wide_encoder(tiny_models("encoder"), tmp_path_factory.mktemp("wide") / "encoder")


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    """88 rows with a ground-truth topic, in a JSONL and a Parquet shard."""
    from tiny_models import CORPUS

    rows = [{"id": f"n{i:03d}", "text": text, "topic": TOPICS[i % 4]} for i, text in enumerate(CORPUS * 2)]
    folder = tmp_path_factory.mktemp("topics")
    write_jsonl(folder / "a.jsonl", rows[:50])
    write_parquet(folder / "b.parquet", rows[50:])
    return folder


def quantized_spec(model_dir: str, task: dict, quantization: str, out="unused", fidelity=None, **sections):
    spec = make_spec(model_dir, task, out, **sections)
    spec.model.quantization, spec.model.device = quantization, "cpu"
    if fidelity is not None:
        spec.model.fidelity = fidelity
    return spec


def topic_spec(model_dir: str, folder, out, quantization: str, fidelity=None):
    task = {"type": "zero-shot-classification", "candidate_labels": TOPICS, "method": "embedding"}
    input_ = {"paths": [str(folder)], "label_column": "topic"}
    return quantized_spec(model_dir, task, quantization, out, fidelity, input=input_)


# the sample ------------------------------------------------------------------------------------


def test_the_sample_is_the_same_rows_whatever_the_shard_order(tmp_path):
    rows = [{"id": f"r{i}", "text": SENTENCES[i % 8]} for i in range(300)]
    rows[7]["text"] = None  # unusable rows are never sampled
    write_jsonl(tmp_path / "a.jsonl", rows[:120])
    write_parquet(tmp_path / "b.parquet", rows[120:])
    shards = list_shards([str(tmp_path)])
    columns = Columns(text="text", id="id")
    first = sample_rows(shards, columns, 50).column("id").to_pylist()
    again = sample_rows(list(reversed(shards)), columns, 50).column("id").to_pylist()
    assert sorted(first) == sorted(again) and len(set(first)) == 50
    assert "r7" not in sample_rows(shards, columns, 299).column("id").to_pylist()
    assert sample_rows(shards, columns, 1000).num_rows == 299
    # adding rows only adds the new ids that rank among the lowest
    write_jsonl(tmp_path / "c.jsonl", [{"id": f"new{i}", "text": "x"} for i in range(20)])
    grown = sample_rows(list_shards([str(tmp_path)]), columns, 50).column("id").to_pylist()
    assert {i for i in grown if not i.startswith("new")} <= set(first)


def test_rows_whose_other_task_input_is_null_are_not_sampled_so_the_check_judges_the_rows_asked(tiny_models, tmp_path):
    """Only the text column was looked at: a question-answering job's rows with no question (or a prompt job's
    with a null prompt column), which the model can't predict, were sampled and then left out as the reference's
    failures, so `--rows 10` on questions half of which were null judged 5 rows (and warned of too few rows). Rows
    with a null task input are not sampled, as rows with a null text are not."""
    from tiny_models import CORPUS

    rows = [{"id": f"q{i}", "context": CORPUS[i], "question": None if i % 2 else "what is it?"} for i in range(40)]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    task = {"type": "question-answering", "question_column": "question", "context_column": "context"}
    spec = quantized_spec(tiny_models("qa"), task, "dynamic-int8", input={"paths": [str(tmp_path)],
                                                                            "text_column": "context"})
    result = check(spec, list_shards([str(tmp_path)]), rows=10)
    assert result.rows == 10 and result.failed_reference == 0


def test_rows_whose_question_is_blank_are_not_sampled_either(tiny_models, tmp_path):
    """The question-answering task refuses a blank question as it does a null one (`question is null or empty`),
    but only null ones were left out of the sample: on questions half of which were "" or spaces (a CSV export's
    missing value), `--rows 10` judged 5 rows."""
    from tiny_models import CORPUS

    rows = [{"id": f"q{i}", "context": CORPUS[i], "question": ("", "  ")[i % 4 // 2] if i % 2 else "what is it?"}
            for i in range(40)]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    task = {"type": "question-answering", "question_column": "question", "context_column": "context"}
    spec = quantized_spec(tiny_models("qa"), task, "dynamic-int8", input={"paths": [str(tmp_path)],
                                                                            "text_column": "context"})
    result = check(spec, list_shards([str(tmp_path)]), rows=10)
    assert result.rows == 10 and result.failed_reference == 0, result


# each task's measures, on predictions made up to show them ---------------------------------------


def predictions(ok: list[bool], **columns) -> Predictions:
    return Predictions(columns, np.array(ok), tokenizer=None)


def test_label_measures_count_a_quantized_failure_as_disagreeing():
    options = TASK_OPTIONS["text-classification"](type="text-classification")
    reference = predictions([True, True, True, False], label=["a", "b", "a", None])
    quantized = predictions([True, True, False, True], label=["a", "a", None, "b"])
    result = compare(options, quantized, reference, ids=["1", "2", "3", "4"], truth=["a", "a", "a", "b"])
    assert result.rows == 3 and result.failed_quantized == 1 and result.failed_reference == 1
    assert result.measure == "label_agreement" and result.agreement == pytest.approx(1 / 3)
    assert result.metrics["truth_accuracy_reference"] == pytest.approx(2 / 3)
    assert result.metrics["truth_accuracy_quantized"] == pytest.approx(2 / 3)
    assert [e["id"] for e in result.examples] == ["2", "3"]


def test_a_truth_column_of_numbers_or_booleans_is_compared_as_the_runs_agreement_reads_it():
    """A ground-truth column of floats (pandas writes an integer column with a gap as float64) or booleans: the run's
    agreement reads 1.0 as "1" and True as "true" (Arrow's text), the check read "1.0" and "True" (Python's), so a
    model whose labels are "1" and "true" was 100% right in the summary and 0% in the fidelity check."""
    options = TASK_OPTIONS["text-classification"](type="text-classification")
    for labels, truth in ((["1", "0"], [1.0, 0.0]), (["true", "false"], [True, False])):
        both = predictions([True, True], label=labels)
        result = compare(options, both, both, ids=["1", "2"], truth=truth)
        assert result.metrics["truth_accuracy_reference"] == result.metrics["truth_accuracy_quantized"] == 1.0


def test_the_check_reads_truth_labels_through_the_label_map_as_the_run_does(tiny_models):
    """With input.label_map, the run's agreement reads a class number as the label it stands for; the fidelity check's
    accuracies against the truth read it so too (they compared "0" with the model's names: 0.0 for both models). Every
    row's truth is 0, mapped to each of the model's three labels in turn: each row is right under exactly one."""
    sample = pa.table({"id": [f"r{i}" for i in range(6)], "text": SENTENCES[:6], "stars": [0] * 6})
    accuracies = []
    for label in ("negative", "neutral", "positive"):
        spec = quantized_spec(tiny_models("classifier"), {"type": "text-classification"}, "dynamic-int8",
                              input={"label_column": "stars", "label_map": {0: label}})
        accuracies.append(measure(spec, sample).metrics["truth_accuracy_reference"])
    assert sum(accuracies) == pytest.approx(1.0), accuracies


def test_a_nan_truth_label_is_no_truth_label_in_the_check_either():
    """NaN in a float truth column (Polars and DuckDB keep it where pandas writes null) was the truth "nan", a
    disagreement on every such row, as the run's agreement counted it too; it is no truth label, as null is."""
    options = TASK_OPTIONS["text-classification"](type="text-classification")
    both = predictions([True, True], label=["1", "0"])
    result = compare(options, both, both, ids=["1", "2"], truth=[1.0, float("nan")])
    assert result.metrics["truth_accuracy_reference"] == result.metrics["truth_accuracy_quantized"] == 1.0


def test_no_accuracy_is_told_where_no_sampled_row_has_a_truth_label():
    """input.label_column set, but the sample's rows all without a value there (a column filled in later, for some
    rows): both models were shown as 0.0 accurate against the truth. Nothing was measured, so nothing is told."""
    options = TASK_OPTIONS["text-classification"](type="text-classification")
    reference = predictions([True, True], label=["a", "b"])
    quantized = predictions([True, True], label=["a", "b"])
    result = compare(options, quantized, reference, ids=["1", "2"], truth=[None, None])
    assert result.agreement == 1.0
    assert not {"truth_accuracy_quantized", "truth_accuracy_reference"} & set(result.metrics), result.metrics


def test_embedding_measures_are_cosines():
    options = TASK_OPTIONS["feature-extraction"](type="feature-extraction")
    reference = predictions([True] * 3, embedding=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    quantized = predictions([True] * 3, embedding=[[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    result = compare(options, quantized, reference, ids=["a", "b", "c"])
    assert result.metrics["cosine_min"] == pytest.approx(0.0)
    assert result.agreement == pytest.approx(2 / 3)
    assert result.examples[0] == {"id": "c", "cosine": 0.0}


def test_span_entity_and_mask_measures():
    qa = TASK_OPTIONS["question-answering"](type="question-answering")
    reference = predictions([True] * 2, start=[0, 5], end=[4, 9], answer=["Pari", "Londo"])
    quantized = predictions([True] * 2, start=[0, 5], end=[4, 8], answer=["Pari", "Lond"])
    assert compare(qa, quantized, reference, ids=["a", "b"]).metrics == {"span_agreement": 0.5, "answer_agreement": 0.5}

    ner = TASK_OPTIONS["token-classification"](type="token-classification")
    paris = {"entity_group": "LOC", "start": 0, "end": 5, "word": "Paris", "score": 0.9}
    obama = {"entity_group": "PER", "start": 10, "end": 15, "word": "Obama", "score": 0.9}
    reference = predictions([True] * 2, entities=[[paris, obama], []])
    quantized = predictions([True] * 2, entities=[[paris], [obama]])
    result = compare(ner, quantized, reference, ids=["a", "b"])
    assert result.metrics["entity_precision"] == 0.5 and result.metrics["entity_recall"] == 0.5
    assert result.agreement == pytest.approx(0.5)

    fill = TASK_OPTIONS["fill-mask"](type="fill-mask")

    def masks(*ids):
        return [[{"token": str(i), "token_id": i, "score": 0.5}] for i in ids]

    reference = predictions([True] * 2, predictions=[masks(1, 2), masks(3)])
    quantized = predictions([True] * 2, predictions=[masks(1, 5), masks(3)])
    result = compare(fill, quantized, reference, ids=["a", "b"])
    assert result.agreement == pytest.approx(2 / 3) and result.metrics["row_agreement"] == 0.5


def test_generation_measures_exact_match_and_tokens_before_they_part(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models("causal"))
    options = TASK_OPTIONS["text-generation"](type="text-generation")
    reference = Predictions({"generated_text": ["the cat sat on the mat", "hello"]}, np.array([True, True]), tokenizer)
    quantized = Predictions({"generated_text": ["the cat sat on a hat", "hello"]}, np.array([True, True]), tokenizer)
    result = compare(options, quantized, reference, ids=["a", "b"])
    assert result.measure == "exact_match" and result.agreement == 0.5
    assert 0.5 < result.metrics["token_agreement"] < 1


def _best_cases(options, quantized: Predictions, reference: Predictions, rows: int) -> list[float]:
    """The headline measure of ``quantized`` with its rows from each point on predicted as ``reference`` predicted
    them (as quantization auto's check bounds a candidate's pass so far), from the first row to none."""
    from dataclasses import replace

    found = []
    for done in range(rows + 1):
        rest = replace(quantized, columns={name: values[:done] + reference.columns[name][done:]
                                           for name, values in quantized.columns.items()},
                       ok=np.concatenate([quantized.ok[:done], reference.ok[done:]]))
        found.append(compare(options, rest, reference, ids=[str(i) for i in range(rows)]).agreement)
    return found


def test_every_measure_is_at_its_highest_where_the_rows_left_are_predicted_as_float32_did(tiny_models):
    """quantization auto's check stops a candidate's pass where, counting every row left as predicted exactly as
    float32 predicted it, it would still be below the bar: sound only where no other prediction of those rows
    could measure higher. So for every task's measure: the more rows are the candidate's own, the lower (or the
    same) the bound, down to its true measure."""
    from transformers import AutoTokenizer

    paris = {"entity_group": "LOC", "start": 0, "end": 5, "word": "Paris", "score": 0.9}
    obama = {"entity_group": "PER", "start": 10, "end": 15, "word": "Obama", "score": 0.9}

    def masks(*ids):
        return [[{"token": str(i), "token_id": i, "score": 0.5}] for i in ids]

    tokenizer = AutoTokenizer.from_pretrained(tiny_models("causal"))
    cases = [
        ("text-classification", predictions([True, True, True, True], label=["a", "b", "a", "b"]),
         predictions([True, True, False, True], label=["a", "a", None, "b"])),
        ("text-classification", Predictions({"label": ["L"] * 4, "score": [0.0, 1.0, 2.0, 4.0]}, np.ones(4, bool), None,
                                            labels=1),
         Predictions({"label": ["L"] * 3 + [None], "score": [0.5, 1.0, 2.0, None]}, np.array([True] * 3 + [False]),
                     None, labels=1)),
        ("feature-extraction", predictions([True] * 3, embedding=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
         predictions([True] * 3, embedding=[[1.0, 0.2], [0.0, 2.0], [1.0, -1.0]])),
        ("question-answering", predictions([True] * 2, start=[0, 5], end=[4, 9], answer=["Pari", "Londo"]),
         predictions([True] * 2, start=[0, 5], end=[4, 8], answer=["Pari", "Lond"])),
        ("token-classification", predictions([True] * 3, entities=[[paris, obama], [], [paris]]),
         predictions([True] * 3, entities=[[paris], [obama], [obama]])),
        ("fill-mask", predictions([True] * 2, predictions=[masks(1, 2), masks(3)]),
         predictions([True] * 2, predictions=[masks(1, 5), masks(4)])),
        ("text-generation", Predictions({"generated_text": ["the cat sat", "hello", "a b c"]}, np.ones(3, bool),
                                        tokenizer),
         Predictions({"generated_text": ["the cat ran", "hello", "a b d"]}, np.ones(3, bool), tokenizer)),
    ]
    for task, reference, quantized in cases:
        options = TASK_OPTIONS[task](type=task)
        rows = len(reference.ok)
        bounds = _best_cases(options, quantized, reference, rows)
        truly = compare(options, quantized, reference, ids=[str(i) for i in range(rows)]).agreement
        assert bounds[-1] == pytest.approx(truly) and bounds[0] == pytest.approx(1.0), (task, bounds)
        assert all(a >= b - 1e-12 for a, b in zip(bounds, bounds[1:])), (task, bounds)
        assert truly < 1.0, task  # each case does move its measure


# real models -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "task", "measure_name"),
    [
        ("encoder", {"type": "feature-extraction"}, "cosine_mean"),
        ("classifier", {"type": "text-classification"}, "label_agreement"),
        ("qa", {"type": "question-answering"}, "span_agreement"),
        ("token-classifier", {"type": "token-classification", "ignore_labels": []}, "entity_f1"),
        ("mlm", {"type": "fill-mask", "mask_placeholder": "<mask>"}, "top1_agreement"),
        ("causal", {"type": "text-generation", "max_new_tokens": 4}, "exact_match"),
        ("seq2seq", {"type": "summarization", "max_new_tokens": 4}, "exact_match"),
    ],
)
def test_every_task_kind_is_measured_on_real_models(tiny_models, kind, task, measure_name):
    spec = quantized_spec(tiny_models(kind), task, "int8")
    texts = ["Paris is the capital of <mask> .", "Obama visited London <mask> Berlin ."] * 4
    sample = pa.table({"id": [f"r{i}" for i in range(8)], "text": texts, "context": texts, "question": ["Where is Paris?"] * 8})
    result = measure(spec, sample)
    assert result.measure == measure_name and result.quantization == "int8"
    assert result.rows == 8 and result.failed_quantized == 0
    assert all(0 <= value <= 1 + 1e-9 for value in result.metrics.values()), result.metrics


def test_nf4_changes_labels_that_int8_keeps(wide_encoder, topics, tmp_path):
    """In one process, no Ray: what `pipelines fidelity` runs."""
    shards = list_shards([str(topics)])
    int8 = check(topic_spec(wide_encoder, topics, tmp_path / "x", "int8"), shards, rows=64)
    nf4 = check(topic_spec(wide_encoder, topics, tmp_path / "x", "nf4"), shards, rows=64)
    assert int8.rows == nf4.rows == 64
    assert int8.agreement >= 0.99
    assert nf4.agreement < 0.95
    assert {"truth_accuracy_quantized", "truth_accuracy_reference"} <= set(nf4.metrics)
    assert nf4.examples and nf4.examples[0]["quantized"] != nf4.examples[0]["reference"]
    assert int8.passed is None  # no bar without model.fidelity
    with pytest.raises(PipelineError, match="nothing to compare"):
        check(topic_spec(wide_encoder, topics, tmp_path / "x", "none"), shards)


def test_a_run_below_the_bar_fails_before_writing(ray_session, wide_encoder, topics, tmp_path):
    out = tmp_path / "out"
    spec = topic_spec(wide_encoder, topics, out, "nf4", fidelity={"rows": 64, "min_agreement": 0.99})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    done = cli("run", str(job), *joining(ray_session))  # the session's Ray: none started and stopped for it
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert re.match(r"error: quantization fidelity below the bar: label_agreement \d+\.\d+% on 64 sampled rows, "
                    r"nf4 vs unquantized, under model.fidelity.min_agreement=0.99; nothing was written", line), line
    assert "Traceback" not in done.stderr
    assert not out.exists()

    passing = topic_spec(wide_encoder, topics, out, "int8", fidelity={"rows": 64, "min_agreement": 0.99})
    summary = run_job(passing)
    assert summary.fidelity is not None and summary.fidelity.passed
    assert summary.fidelity.rows == 64 and summary.fidelity.min_agreement == 0.99
    written = json.loads((out / "_run.json").read_text())
    assert written["fidelity"]["measure"] == "label_agreement" and written["fidelity"]["passed"] is True
    # the check is not part of the results: the spec hash is that of the same spec without it
    assert summary.spec_hash == topic_spec(wide_encoder, topics, out, "int8").fingerprint()


def test_the_command_below_the_bar_prints_its_result_under_json_then_fails(wide_encoder, topics, tmp_path):
    """The README said a command that fails prints nothing on stdout under --json, `fidelity` too: below the job's
    bar `pipelines fidelity --json` prints its result (the measurement is what it is asked for), `passed` false,
    and then fails with its `error:` line on stderr, status 2."""
    spec = topic_spec(wide_encoder, topics, tmp_path / "out", "nf4", fidelity={"rows": 64, "min_agreement": 0.99})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    done = cli("fidelity", str(job), "--json")
    assert done.returncode == 2, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["passed"] is False and result["min_agreement"] == 0.99 and result["agreement"] < 0.99
    error = done.stderr.splitlines()[-1]
    assert error.startswith("error: quantization fidelity below the bar: ")
    # the line of a run's gate said "nothing was written" and to run `pipelines fidelity`: this is that command
    assert "nothing was written" not in error and "pipelines fidelity" not in error and "Use " in error


def test_cli_fidelity_on_minilm(tmp_path):
    (tmp_path / "landing").mkdir()  # as a scheduled job's tick lists it: an empty landing folder is no input yet
    done = cli("fidelity", "jobs/label_news.yaml", "--rows", "48", "--json", "--set", "model.quantization=int8",
               "--set", f"input.paths=[jobs/data/news, {tmp_path / 'landing'}]", "--set", "schedule.cron=0 2 * * *")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["task"] == "zero-shot-classification" and result["quantization"] == "int8"
    assert result["rows"] == 48 and result["measure"] == "label_agreement"
    assert result["agreement"] >= 0.85
    assert result["metrics"]["truth_accuracy_reference"] > 0.6
    assert abs(result["metrics"]["truth_accuracy_quantized"] - result["metrics"]["truth_accuracy_reference"]) < 0.1
    assert "Ray instance" not in done.stderr and "Token authentication" not in done.stderr  # no Ray started


def test_the_gates_check_imports_as_a_runs_actor_does(tiny_models):
    """The gate's check (a Ray task before a first run's pool, where ``model.fidelity`` is set) and ``pipelines
    fidelity`` load their models after the imports a run's actor makes (:func:`~pipelines.inference.heavy_imports.
    import_predictor`): made with Python's collections, ``pipelines fidelity jobs/label_news.yaml --set
    model.quantization=per-token-int8`` took 8.61-9.58 s from the command to its exit, against 6.35-6.84 s now (two
    runs each, a 2-core Zen 4)."""
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    spec.model.quantization = "per-token-int8"
    code = (
        "import gc, json\n"
        "import pyarrow as pa\n"
        "from pipelines.fidelity import _measure_remote\n"
        f"spec = json.loads({json.dumps(json.dumps(spec.model_dump(mode='json')))})\n"
        f"result = _measure_remote(spec, pa.table({{'id': ['a', 'b'], 'text': {SENTENCES[:2]!r}}}))\n"
        "print(json.dumps([gc.get_freeze_count(), result['rows']]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    set_aside, rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert set_aside > 100_000 and rows == 2  # torch's and Transformers' objects, set aside before the loads


PICKED = pa.table({"id": ["a", "b"], "text": SENTENCES[:2]})


def test_quantization_auto_decides_again_for_another_cpu_matmul_not_for_other_batching(tmp_path):
    spec = make_spec("minilm", {"type": "feature-extraction"})
    spec.model.cache_dir = str(tmp_path)
    first = _decision_path(spec, 0.99, PICKED, False)
    spec.batching.batch_size = 64  # how many rows per call: not what the candidates' speeds depend on
    assert _decision_path(spec, 0.99, PICKED, False) == first
    spec.compute.cpu_matmul = "torch"  # another kernel: another ranking of the candidates' speeds
    assert _decision_path(spec, 0.99, PICKED, False) != first


def test_quantization_auto_decides_again_for_other_lanes_on_a_cpu_only(tmp_path):
    spec = make_spec("minilm", {"type": "feature-extraction"})
    spec.model.cache_dir = str(tmp_path)
    first = _decision_path(spec, 0.99, PICKED, False)
    spec.compute.cpu_lanes = False  # another way of running the forwards on a CPU: another ranking of speeds
    assert _decision_path(spec, 0.99, PICKED, False) != first
    spec.model.device = "cuda"  # on a GPU the lanes don't apply: the same decision either way
    on_gpu = _decision_path(spec, 0.99, PICKED, False)
    spec.compute.cpu_lanes = True
    assert _decision_path(spec, 0.99, PICKED, False) == on_gpu


def test_quantization_auto_decides_on_the_jobs_own_sample_the_same_rows_anywhere(tmp_path):
    """A decision was kept per model, task and device only: a job on other rows took another input's decision and
    reported that input's check (its rows, its differing ids) as its own 'passed', below its bar on its own rows.
    The same sampled rows in other files, or another order, are the same sample and keep the decision."""
    from pipelines.fidelity import sample

    rows = [{"id": f"r{i}", "text": SENTENCES[i % len(SENTENCES)] + f" {i}"} for i in range(30)]
    write_jsonl(tmp_path / "a" / "one.jsonl", rows)
    write_jsonl(tmp_path / "b" / "x.jsonl", rows[20:])  # the same rows, in other files and another order
    write_parquet(tmp_path / "b" / "y.parquet", rows[:20][::-1])
    write_jsonl(tmp_path / "c" / "one.jsonl", [{**r, "text": r["text"] + "!"} for r in rows])  # other texts

    def path(folder: str):
        spec = make_spec("minilm", {"type": "feature-extraction"}, input={"paths": [str(tmp_path / folder)]})
        spec.model.cache_dir = str(tmp_path / "cache")
        shards = list_shards(spec.input.paths)
        return _decision_path(spec, 0.99, sample(spec, shards, 16), False)

    assert path("a") == path("b")
    assert path("c") != path("a")


def test_a_reduced_dtype_is_named_as_the_precision_compared(tiny_models):
    """``dtype: bfloat16`` with no quantization was reported as "none vs float32" (and "none vs unquantized" below
    the bar): the user was told nothing was reduced, about a check of bfloat16 against float32."""
    from pipelines.fidelity import below_bar, judge

    spec = quantized_spec(tiny_models("classifier"), {"type": "text-classification"}, "none",
                          fidelity={"rows": 8, "min_agreement": 1.0})
    spec.model.dtype = "bfloat16"
    sample = pa.table({"id": [f"r{i}" for i in range(8)], "text": SENTENCES[:8]})
    result = judge(spec, measure(spec, sample))
    assert result.quantization == "bfloat16" and result.reference == "float32"
    failed = result.model_copy(update={"agreement": 0.5, "passed": False})
    assert "rows, bfloat16 vs unquantized, under" in below_bar(spec, failed)


def test_quantization_auto_refuses_a_pinned_dtype():
    """``quantization: auto`` with ``model.dtype: float16`` ran at what auto chose (bfloat16, dynamic-int8 or float32)
    and said nothing of the dtype asked for; the two settings contradict each other and are refused."""
    from pipelines.spec import spec_from_dict

    raw = {"input": {"paths": ["unused"]}, "model": {"name": "minilm", "quantization": "auto", "dtype": "float16"},
           "task": {"type": "feature-extraction"}, "output": {"path": "unused"}}
    with pytest.raises(PipelineError, match=r"model.dtype float16 with quantization auto"):
        spec_from_dict(raw)
    raw["model"]["dtype"] = "auto"
    assert spec_from_dict(raw).model.quantization == "auto"


def test_the_report_says_why_a_quantization_auto_run_shows_no_check():
    """The page told every run without a check to "set model.fidelity in the spec": under quantization auto the
    precision was checked (float32 chosen: nothing to compare) or kept from the output's first run, and setting
    model.fidelity would not have shown a check either."""
    from pipelines.output.records import ModelRef, RunSummary
    from pipelines.output.report import _no_fidelity

    def summary(quantization: str, precision: dict[str, str] | None) -> RunSummary:
        return RunSummary(status="succeeded", spec_hash="x", model=ModelRef(name="minilm"), quantization=quantization,
                          device="cpu", task="zero-shot-classification", shards=1, shards_this_run=1, rows_in=1,
                          rows_out=1, errors=0, error_rate=0.0, precision=precision)

    chose_float32 = _no_fidelity(summary("auto", {"quantization": "none", "dtype": "float32"}))
    assert "chose float32" in chose_float32 and "set model.fidelity" not in chose_float32
    # float32 is taken where every candidate is below the bar too (a tester's zero-shot job: 0.25 against 0.99), not
    # only where one within it was slower: the page said "no reduced precision was faster within the bar"
    assert "both within the bar and faster" in chose_float32 and "each candidate's figure" in chose_float32
    kept = _no_fidelity(summary("auto", {"quantization": "none", "dtype": "bfloat16"}))
    assert "bfloat16" in kept and "earlier run" in kept and "set model.fidelity" not in kept
    assert "set model.fidelity" in _no_fidelity(summary("int8", None))


def test_the_report_does_not_call_a_run_in_a_reduced_dtype_unquantized_and_unchecked_for_nothing():
    """A run with quantization none in bfloat16 (or float16, or dtype auto on a GPU) and no model.fidelity got "The
    model is not quantized." on its page, where a check belongs: the model line said bfloat16 and the README counts a
    reduced precision as one `pipelines fidelity` compares with float32. The page names the precision and the way
    to check it; a float32 run stays "not quantized"."""
    from pipelines.output.records import ModelRef, RunSummary
    from pipelines.output.report import _no_fidelity

    def summary(dtype: str, device: str = "cpu") -> RunSummary:
        return RunSummary(status="succeeded", spec_hash="x", model=ModelRef(name="minilm"), quantization="none",
                          device=device, task="feature-extraction", shards=1, shards_this_run=1, rows_in=1,
                          rows_out=1, errors=0, error_rate=0.0, dtype=dtype)

    for said, dtype, device in [("bfloat16", "bfloat16", "cpu"), ("float16", "float16", "cuda"),
                                ("dtype auto", "auto", "cuda")]:
        told = _no_fidelity(summary(dtype, device))
        assert "not quantized" not in told and said in told and "pipelines fidelity JOB.yaml" in told, told
    assert _no_fidelity(summary("float32")) == "The model is not quantized."
    assert _no_fidelity(summary("auto")) == "The model is not quantized."  # dtype auto on a CPU: float32


def test_dtype_auto_on_a_gpu_is_a_reduced_precision_to_check(tiny_models):
    """On a GPU ``dtype: auto`` computes in bfloat16 (float16 without bf16): a spec with model.fidelity was told "the
    model is not quantized; nothing to check" and ran unchecked in a reduced precision."""
    from pipelines.fidelity import is_quantized

    spec = quantized_spec(tiny_models("classifier"), {"type": "text-classification"}, "none")
    spec.model.device = "auto"
    assert not is_quantized(spec)  # on a CPU, dtype auto is float32
    spec.compute.gpus_per_actor = 1
    assert is_quantized(spec)
    spec.model.dtype = "float32"
    assert not is_quantized(spec)
    # where no GPU is visible (pipelines fidelity on a laptop), dtype auto loads float32 on the CPU: no comparison of
    # float32 with itself passes for a check of the GPU's precision
    spec.model.dtype = "auto"
    sample = pa.table({"id": [f"r{i}" for i in range(8)], "text": SENTENCES[:8]})
    with pytest.raises(PipelineError, match="loaded in float32 here"):
        measure(spec, sample)


@pytest.mark.parametrize(("task", "column"), [("text-classification", "label"), ("token-classification", "entities")])
def test_a_sample_the_unquantized_model_cannot_predict_is_no_measure(task, column):
    """Where the unquantized model failed on every sampled row (e.g. errors.too_long: error and long texts), nothing
    was compared, yet the check said "label_agreement 0.0000 on 0 sampled rows" (below the bar: quantization blamed)
    or "entity_f1 1.0000 on 0 sampled rows" (passed: auto took the candidate)."""
    options = TASK_OPTIONS[task](type=task)
    failed = predictions([False, False], **{column: [None, None]})
    with pytest.raises(PipelineError, match="none of the 2 sampled rows"):
        compare(options, failed, failed, ids=["a", "b"])


def test_a_row_only_the_quantized_model_failed_on_disagrees_whatever_the_reference_found():
    """A quantized failure was compared as an empty prediction: on a row where the unquantized model found no entity
    (or an llm-label answer parsed to no label) it counted as agreeing, though the check prints "rows only the
    quantized model failed on: 1 (counted as disagreeing)"."""
    ner = TASK_OPTIONS["token-classification"](type="token-classification")
    paris = {"entity_group": "LOC", "start": 0, "end": 5, "word": "Paris", "score": 0.9}
    reference = predictions([True, True], entities=[[], [paris]])
    quantized = predictions([False, True], entities=[None, [paris]])
    result = compare(ner, quantized, reference, ids=["a", "b"])
    assert result.failed_quantized == 1
    assert result.metrics["row_agreement"] == 0.5 and result.agreement < 1
    labels = TASK_OPTIONS["text-classification"](type="text-classification")
    reference = predictions([True, True], label=[None, "a"])
    quantized = predictions([False, True], label=[None, "a"])
    assert compare(labels, quantized, reference, ids=["a", "b"]).agreement == 0.5


def test_a_sample_too_small_to_measure_the_bar_is_said(wide_encoder, topics, tmp_path, caplog):
    """On 16 rows one changed label is 6.25 points: "passed" at a bar of 0.99 only says no row of 16 changed (the main
    job's auto took dynamic-int8 on 16 rows at 1.0000, which keeps 91% of the labels on 256). The check says so."""
    shards = list_shards([str(topics)])
    bar = {"rows": 16, "min_agreement": 0.99}
    with caplog.at_level("WARNING", logger="pipelines.fidelity"):
        check(topic_spec(wide_encoder, topics, tmp_path / "x", "int8", fidelity=bar), shards)
    [said] = [r.getMessage() for r in caplog.records if r.name == "pipelines.fidelity" and r.levelname == "WARNING"]
    assert "16 sampled rows" in said and "at least 100" in said
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipelines.fidelity"):
        check(topic_spec(wide_encoder, topics, tmp_path / "x", "int8", fidelity={**bar, "min_agreement": 0.9}), shards)
    assert not [r for r in caplog.records if r.name == "pipelines.fidelity" and r.levelname == "WARNING"]  # 16 rows can tell 0.9: one row is 0.0625


def test_the_too_small_sample_warning_says_where_its_bar_comes_from(monkeypatch, caplog):
    """`pipelines fidelity` on a job without model.fidelity judges against no bar, yet its warning spoke of "the bar
    0.99" as if the job set one: it says the bar is model.fidelity.min_agreement's default (the README's 0.99) and
    that this job sets none; with model.fidelity it names model.fidelity.min_agreement."""
    import pipelines.fidelity as fidelity
    import pipelines.inference.fidelity as measuring

    monkeypatch.setattr(fidelity, "sample", lambda spec, shards, rows: pa.table({"id": ["a", "b"]}))
    monkeypatch.setattr(measuring, "measure", lambda spec, picked: Fidelity(
        task="text-classification", quantization="dynamic-int8", rows=2, measure="label_agreement", agreement=1.0))
    said = {}
    for name, fidelity_section in (("unset", None), ("set", {"min_agreement": 0.999})):
        spec = make_spec("minilm", {"type": "text-classification"})
        spec.model.quantization = "dynamic-int8"
        spec.model.fidelity = FidelitySpec(**fidelity_section) if fidelity_section else None
        caplog.clear()
        with caplog.at_level("WARNING", logger="pipelines.fidelity"):
            check(spec, [], 2)
        [said[name]] = [r.getMessage() for r in caplog.records if r.name == "pipelines.fidelity"
                        and r.levelname == "WARNING"]
    assert "the bar 0.99 (the default of model.fidelity.min_agreement; this job sets no model.fidelity" in said["unset"]
    assert "the bar 0.999 (model.fidelity.min_agreement) passes only" in said["set"]


def test_below_the_bar_a_reduced_dtype_is_told_the_dtype_to_set():
    """A bfloat16 model below the bar was told to "use a lighter quantization (int8, or none)": its quantization is
    none already; what lifts it is model.dtype float32."""
    from pipelines.fidelity import below_bar

    spec = make_spec("minilm", {"type": "text-classification"})
    spec.model.dtype = "bfloat16"
    result = Fidelity(task="text-classification", quantization="bfloat16", rows=100,
                      measure="label_agreement", agreement=0.9, min_agreement=0.99, passed=False)
    said = below_bar(spec, result)
    assert "model.dtype float32" in said and "int8, or none" not in said
    spec.model.dtype, spec.model.quantization = "auto", "nf4"
    assert "int8, or none" in below_bar(spec, result.model_copy(update={"quantization": "nf4"}))


def test_below_the_bar_an_int8_model_is_not_told_to_use_int8():
    """An int8 (or dynamic-int8) model below the bar was told to "use a lighter quantization (int8, or none)": int8 is
    what it ran; what lifts it is no quantization."""
    from pipelines.fidelity import below_bar

    spec = make_spec("minilm", {"type": "text-classification"})
    for quantization in ("int8", "dynamic-int8"):
        spec.model.quantization = quantization
        result = Fidelity(task="text-classification", quantization=quantization, rows=100,
                          measure="label_agreement", agreement=0.9, min_agreement=0.99, passed=False)
        said = below_bar(spec, result)
        assert "int8, or none" not in said and "Use no quantization (model.quantization none)" in said, said
    for quantization, lighter in (("per-token-int8", "smooth-int8, or no quantization"), ("smooth-int8", "no quantization")):
        spec.model.quantization = quantization  # smooth-int8 keeps more labels than per-token-int8, none keeps all
        result = Fidelity(task="text-classification", quantization=quantization, rows=100,
                          measure="label_agreement", agreement=0.9, min_agreement=0.99, passed=False)
        assert f"Use {lighter} (model.quantization none)" in below_bar(spec, result)


def test_quantization_auto_decides_again_for_another_truth_column_or_too_long_policy(tmp_path):
    """The decision's key left out input.label_column and errors.too_long: a job with another ground-truth column
    (or the same column holding other labels), or another too_long policy (rows quarantined, not truncated),
    took another job's check and reported its truth accuracies and rows as its own."""
    spec = make_spec("minilm", {"type": "feature-extraction"})
    spec.model.cache_dir = str(tmp_path)
    first = _decision_path(spec, 0.99, PICKED, False)
    spec.errors.too_long = "error"
    assert _decision_path(spec, 0.99, PICKED, False) != first, "another errors.too_long took the same decision"
    spec.errors.too_long = "truncate"
    labelled = PICKED.append_column("topic", pa.array(["World", "Sports"]))
    spec.input.label_column = "topic"
    with_truth = _decision_path(spec, 0.99, labelled, False)
    assert with_truth != first, "a check with a ground-truth column took the decision of one without"
    relabelled = PICKED.append_column("topic", pa.array(["Sports", "Sports"]))
    assert _decision_path(spec, 0.99, relabelled, False) != with_truth, "other ground-truth labels took the same decision"


def auto_embedding_job(tmp_path):
    """A quantization: auto embedding job on 8 rows, its decisions kept under tmp_path; the spec and its shards."""
    rows = [{"id": f"r{i}", "text": SENTENCES[i % len(SENTENCES)] + f" {i}"} for i in range(8)]
    write_jsonl(tmp_path / "in" / "one.jsonl", rows)
    spec = make_spec("minilm", {"type": "feature-extraction"}, input={"paths": [str(tmp_path / "in")]})
    spec.model.quantization = "auto"
    spec.model.cache_dir = str(tmp_path / "cache")
    return spec, list_shards(spec.input.paths)


def resolve_auto(spec, shards, decide):
    """The spec a run takes under quantization auto where its output recorded no precision: the decision kept for its
    sample, else ``decide()``'s (in a run, the pool's actor's), kept."""
    from pipelines.fidelity import PoolChoice, auto_precision

    found = auto_precision(spec, shards, None)
    return (found.keep(spec, decide()) if isinstance(found, PoolChoice) else found)[0]


def test_every_pool_actor_takes_the_first_decision_posted_not_its_own(ray_session, monkeypatch):
    """Under quantization auto the pool's actors decide. Two measuring at once can come out apart (two candidates
    about as fast): each takes the first decision posted to the run's board, so that one output holds one precision,
    and one that finds a decision there (started later, or restarted) measures nothing. A board that is gone (its
    process lost) is one line, not Ray's report."""
    from pipelines import fidelity

    raw = make_spec("minilm", {"type": "feature-extraction"}).model_dump(mode="json")
    raw["model"]["quantization"] = "auto"
    board = fidelity.open_board()
    bfloat16 = {"quantization": "none", "dtype": "bfloat16", "fidelity": None, "why": "another actor's"}

    def measured_while_another_posted(spec_json, picked, bar):
        ray_session.get(board.post.remote(bfloat16))  # the other actor, done first
        return {"quantization": "per-token-int8", "dtype": "float32", "fidelity": None, "why": "this actor's"}

    monkeypatch.setattr(fidelity, "choose_here", measured_while_another_posted)
    took = fidelity.run_precision(raw, board, PICKED, 0.99)
    assert (took["model"]["quantization"], took["model"]["dtype"]) == ("none", "bfloat16")
    monkeypatch.setattr(fidelity, "choose_here", lambda *args: pytest.fail("measured where the board had a decision"))
    later = fidelity.run_precision(raw, board, PICKED, 0.99)
    assert (later["model"]["quantization"], later["model"]["dtype"]) == ("none", "bfloat16")
    ray_session.kill(board)
    # ray.kill is asynchronous: a call right after it may still be answered (a CI run saw run_precision succeed);
    # ask until the board is gone, then the run's line is the one said
    with pytest.raises(ray_session.exceptions.RayActorError):
        for _ in range(100_000):
            ray_session.get(board.decided.remote())
    with pytest.raises(PipelineError, match="the run's board of its precision .* is gone .*run the same command"):
        fidelity.run_precision(raw, board, PICKED, 0.99)


def test_one_pool_actor_at_a_time_measures_quantization_autos_candidates(ray_session):
    """Actors sharing a node, all measuring at once, timed the candidates while slowing each other down: one measures
    (the same one again when Ray restarts it), the others wait and are told its decision as it is posted; a claim
    held past its time (an actor lost and not restarted) goes to the next actor that asks."""
    from pipelines import fidelity

    get = ray_session.get
    board = fidelity.open_board()
    assert get(board.take.remote("a")) == {"measure": True}
    assert get(board.take.remote("b")) == {"wait": True}
    assert get(board.take.remote("a")) == {"measure": True}  # the same actor, restarted
    assert get(board.wait.remote(0.01)) is None
    waiting = board.wait.remote(600)
    decided = {"quantization": "none", "dtype": "bfloat16", "fidelity": None, "why": "a's"}
    assert get(board.post.remote(decided)) == decided
    assert get(waiting) == decided  # told as it is posted
    assert get(board.take.remote("b")) == {"found": decided}
    stale = fidelity.open_board(claim_s=0.0)
    assert get(stale.take.remote("a")) == {"measure": True}
    assert get(stale.take.remote("b")) == {"measure": True}
    # an actor that dies in each check (killed for memory) and that Ray restarts for ever: begun at most CHECK_TRIES
    # times, then the run fails saying why, where it would have begun again without end
    me = f"pid {os.getpid()}"  # how run_precision names a process that is no actor (this one)
    dying = fidelity.open_board()
    assert [get(dying.take.remote(me)) for _ in range(fidelity.CHECK_TRIES)] == [{"measure": True}] * 3
    raw = make_spec("minilm", {"type": "feature-extraction"}).model_dump(mode="json")
    with pytest.raises(PipelineError, match="the check was begun 3 times in this run by a pool actor that died"):
        fidelity.run_precision(raw, dying, PICKED, 0.99)


def test_quantization_auto_keys_its_decision_by_the_actors_node_not_the_drivers(tmp_path, monkeypatch):
    """The key held the driver's bfloat16 support, but the candidates are those of the node where the check runs
    (where an actor runs): a cluster whose nodes compute bf16 natively took the decision made for nodes that don't
    (bfloat16 never tried), because the driver was the same."""
    from pipelines import fidelity

    spec, shards = auto_embedding_job(tmp_path)
    monkeypatch.setattr(fidelity, "_cpu_bf16", lambda: False)  # the driver: no native bf16, on every call
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # not a local Ray (whose node is this machine)
    decided = []

    def on_node(node_bf16: bool):
        def decide():
            decided.append(node_bf16)
            return {"quantization": "none", "dtype": "bfloat16" if node_bf16 else "float32", "fidelity": None,
                    "why": "test"}
        return decide

    monkeypatch.setattr(fidelity, "_node_bf16", lambda spec: False, raising=False)
    monkeypatch.setattr(fidelity, "_on_ray", lambda spec, function, picked, *args: function(
        spec.model_dump(mode="json"), picked, *args))  # the node's answers, here
    assert resolve_auto(spec, shards, on_node(False)).model.dtype == "float32"
    monkeypatch.setattr(fidelity, "_node_bf16", lambda spec: True, raising=False)  # nodes with AMX, same driver
    chosen = resolve_auto(spec, shards, on_node(True))
    assert decided == [False, True], "the decision made for nodes without bf16 was taken on nodes with it"
    assert chosen.model.dtype == "bfloat16"


def test_quantization_auto_keys_its_decision_by_the_cpus_kernel_flags(tmp_path, monkeypatch):
    """Decisions are kept in the model cache, which a cluster's nodes may share (a home folder on its file system):
    one made on a CPU with AVX-512, where per-token-int8 ran faster than float32, was taken on an AVX2 one, where
    torch's int8 product takes 60x float32's time, since both compute bfloat16 alike (neither natively). The key
    holds the CPU's flags that decide the kernels; other flags (a CPU's own features) don't move it."""
    from pipelines import fidelity

    spec, shards = auto_embedding_job(tmp_path)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(fidelity, "_on_ray", lambda spec, function, picked, *args: function(
        spec.model_dump(mode="json"), picked, *args))  # the node's answers, here
    decided = []

    def decide(quantization: str):
        def made():
            decided.append(quantization)
            return {"quantization": quantization, "dtype": "float32", "fidelity": None, "why": "test"}
        return made

    monkeypatch.setattr(fidelity, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni", "sse4_2"}, raising=False)
    assert resolve_auto(spec, shards, decide("per-token-int8")).model.quantization == "per-token-int8"
    monkeypatch.setattr(fidelity, "_cpu_flags", lambda: {"avx2", "sse4_2"})  # an AVX2 node, sharing the cache
    assert resolve_auto(spec, shards, decide("none")).model.quantization == "none"
    monkeypatch.setattr(fidelity, "_cpu_flags", lambda: {"avx2", "sse4_2", "sha_ni"})  # the same kernels
    assert resolve_auto(spec, shards, decide("unused")).model.quantization == "none"
    assert decided == ["per-token-int8", "none"]


def test_quantization_auto_on_a_local_ray_answers_the_bfloat16_question_without_a_task(ray_session, tmp_path,
                                                                                       monkeypatch):
    """On a Ray of this machine alone the node that decides is this one: its CPU's flags answer whether bfloat16 is a
    candidate. A task for it started a worker that imported torch before every run of a job under auto (the main
    job's), seconds of start-up on 2 cores, even where the decision was kept from an earlier run."""
    from pipelines import fidelity

    rows = [{"id": f"r{i}", "text": SENTENCES[i % len(SENTENCES)] + f" {i}"} for i in range(8)]
    write_jsonl(tmp_path / "in" / "one.jsonl", rows)
    spec = make_spec("minilm", {"type": "feature-extraction"}, input={"paths": [str(tmp_path / "in")]})
    spec.model.quantization = "auto"
    spec.model.cache_dir = str(tmp_path / "cache")
    asked = []

    def on_ray(spec, function, picked, *args):
        asked.append(function.__name__)

    def decide():
        asked.append("decided")
        return {"quantization": "none", "dtype": "float32", "fidelity": None, "why": "test"}

    monkeypatch.setattr(fidelity, "_on_ray", on_ray)
    monkeypatch.setattr(fidelity, "_cpu_bf16", lambda: True)
    resolve_auto(spec, list_shards(spec.input.paths), decide)
    resolve_auto(spec, list_shards(spec.input.paths), decide)  # kept: nothing to run at all
    assert asked == ["decided"]


def test_the_summary_names_a_pinned_reduced_dtype():
    """With quantization none and model.dtype bfloat16 the summary (the terminal's, _run.json's, the page's) said
    "(none, cpu)": nothing told the user the run computed in bfloat16."""
    from pipelines.output.records import RunSummary
    from pipelines.output.summary import build, render
    from pipelines.runner import job_record

    spec = make_spec("minilm", {"type": "feature-extraction"})
    spec.model.dtype = "bfloat16"
    summary = RunSummary.model_validate_json(build(job_record(spec), [], [], 1.0, "succeeded").model_dump_json())
    assert "model minilm (bfloat16, cpu)" in render(summary), render(summary)
    spec.model.dtype = "float32"
    assert "model minilm (none, cpu)" in render(build(job_record(spec), [], [], 1.0, "succeeded"))
    spec.model.dtype, spec.model.device, spec.compute.gpus_per_actor = "auto", "auto", 1  # bf16 or fp16 there
    assert "(dtype auto: bfloat16, or float16 on a GPU without bf16, cuda)" in render(
        build(job_record(spec), [], [], 1.0, "succeeded"))


def test_a_kept_precision_below_a_raised_bar_is_refused_with_both_figures():
    """model.fidelity is not in the spec's hash: a scheduled job (or a resumed output) whose min_agreement was raised
    from 0.99 to 0.999 kept its first run's bfloat16, chosen at 0.9960, on every later run without a check or a
    word. The kept precision's recorded agreement is held against the bar: below it, the run is refused with both
    figures and the ways out; at or above it, or float32 (the reference itself), the precision is kept."""
    from pipelines.fidelity import auto_precision

    spec = make_spec("minilm", {"type": "feature-extraction"})
    spec.model.quantization = "auto"
    spec.model.fidelity = FidelitySpec(rows=256, min_agreement=0.999)
    kept = {"quantization": "none", "dtype": "bfloat16", "measure": "cosine_mean", "agreement": 0.996, "rows": 256,
            "bar": 0.99}
    with pytest.raises(PipelineError) as refused:
        auto_precision(spec, [], kept)
    said = str(refused.value)
    assert "bfloat16" in said and "cosine_mean 0.9960 on 256 sampled rows" in said
    assert "min_agreement=0.999" in said and "--rescore" in said and "--overwrite" in said
    spec.model.fidelity = FidelitySpec(rows=256, min_agreement=0.995)
    assert auto_precision(spec, [], kept)[0].model.dtype == "bfloat16"
    spec.model.fidelity = FidelitySpec(rows=256, min_agreement=1.0)
    assert auto_precision(spec, [], {"quantization": "none", "dtype": "float32"})[0].model.dtype == "float32"


def build_overflowing_classifier(base: str, path) -> str:
    """The tiny classifier with a first layer whose activations overflow float16 (past 65504: inf, then NaN after its
    LayerNorm), as some real models' do, and whose float32 predictions are all label 0 (``negative``), as a
    majority class is: in float16 every row's logits are NaN, which torch's argmax takes for label 0."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base)
    with torch.no_grad():
        layer = model.bert.encoder.layer[0]
        layer.intermediate.dense.weight.mul_(1e5)
        layer.output.dense.weight.mul_(1e3)
        model.classifier.bias[0] += 20
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{base}/{name}", path / name)
    return str(path)


def test_a_float16_model_that_computes_nan_does_not_agree_with_float32(tiny_models, tmp_path):
    """A model whose float16 activations overflowed computed NaN on every row; its labels were argmax of NaN logits
    (label 0), and where float32 predicted label 0 too (a majority class) the check said "label_agreement 1.0000":
    model.fidelity passed, and the run wrote NaN scores. A row whose prediction holds a NaN or infinite number was
    predicted by nothing: it counts as one the quantized model failed on (a disagreement)."""
    model = build_overflowing_classifier(tiny_models("classifier"), tmp_path / "overflowing")
    spec = quantized_spec(model, {"type": "text-classification"}, "none", fidelity={"rows": 8, "min_agreement": 0.5})
    spec.model.dtype = "float16"
    sample = pa.table({"id": [f"r{i}" for i in range(8)], "text": SENTENCES[:8]})
    from pipelines.fidelity import judge

    result = judge(spec, measure(spec, sample))
    assert result.quantization == "float16" and result.rows == 8
    assert result.agreement == 0.0 and result.failed_quantized == 8 and result.passed is False


def test_nan_embeddings_are_disagreements_and_named_not_a_nan_measure():
    """One NaN embedding (float16 overflow) made cosine_mean, p5 and min NaN: `pipelines fidelity` printed "nan",
    --json printed NaN (not JSON), its "lowest cosines" listed the NaN rows last, and "lower the bar" could never
    pass (NaN is below every bar). The NaN row is one the quantized model failed on (cosine 0, listed first); a row
    the unquantized model computed NaN on is left out, as one it failed on."""
    from pipelines.cli.quality import render

    nan = float("nan")
    options = TASK_OPTIONS["feature-extraction"](type="feature-extraction")
    reference = predictions([True] * 4, embedding=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [nan, 1.0]])
    quantized = predictions([True] * 4, embedding=[[1.0, 0.0], [nan, nan], [1.0, 0.9], [1.0, 1.0]])
    result = compare(options, quantized, reference, ids=["a", "b", "c", "d"])
    assert result.rows == 3 and result.failed_quantized == 1 and result.failed_reference == 1
    assert result.agreement == pytest.approx((1 + 0 + 0.998618) / 3, abs=1e-5)
    assert result.metrics["cosine_min"] == 0.0 and result.examples[0] == {"id": "b", "cosine": 0.0}
    json.loads(json.dumps(result.to_json()), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert "nan" not in render(result) and "rows only the quantized model failed on: 1" in render(result)


def test_a_model_with_one_output_is_judged_by_its_scores_not_its_one_label(tiny_models):
    """A regression head (an STS cross-encoder, a quality scorer), one sigmoid logit or zero-shot with one candidate
    label names the same label on every row: the check said "label_agreement 1.0000" whatever quantization did to
    the scores the user thresholds or ranks by, and quantization auto took dynamic-int8 on it without looking. Such a
    model is judged by its scores: the share of rows whose score moved by at most 1% of the sample's score range,
    and the share of pairs of rows the two models order alike."""
    from tiny_models import CORPUS

    sample = pa.table({"id": [f"r{i}" for i in range(40)], "text": CORPUS[:40]})
    spec = quantized_spec(tiny_models("regression"), {"type": "text-classification"}, "dynamic-int8")
    result = measure(spec, sample)
    assert result.measure == "score_agreement" and result.rows == 40
    # dynamic int8 moved scores by up to 0.04 on a range of about 0.8 (this tiny model's weights are large)
    assert 0 < result.agreement < 1 and 0.5 < result.metrics["rank_agreement"] < 1
    assert result.examples and {"id", "quantized", "reference"} <= set(result.examples[0])
    zero_shot = {"type": "zero-shot-classification", "candidate_labels": ["sports"], "method": "nli"}
    assert measure(quantized_spec(tiny_models("nli"), zero_shot, "dynamic-int8"), sample).measure == "score_agreement"


def test_one_output_scores_agree_within_1pct_of_their_range_and_a_failure_never_agrees():
    options = TASK_OPTIONS["text-classification"](type="text-classification")
    scores = [0.0, 1.0, 2.0, 3.0, 4.0]
    reference = Predictions({"label": ["LABEL_0"] * 5, "score": scores}, np.array([True] * 5), None, labels=1)
    moved = [0.0, 1.03, 1.9, 3.0, None]  # within 0.04 (1% of 4): alike; 0.1: not; a failure: not
    quantized = Predictions({"label": ["LABEL_0"] * 4 + [None], "score": moved}, np.array([True] * 4 + [False]), None,
                            labels=1)
    result = compare(options, quantized, reference, ids=list("abcde"))
    assert result.measure == "score_agreement" and result.agreement == pytest.approx(3 / 5)
    assert result.metrics["rank_agreement"] == pytest.approx(6 / 10)  # the 4 pairs of the failed row order nothing
    assert [e["id"] for e in result.examples] == ["e", "c"]
    two_labels = Predictions({"label": ["a"] * 5, "score": scores}, np.array([True] * 5), None, labels=2)
    assert compare(options, two_labels, two_labels, ids=list("abcde")).measure == "label_agreement"


def test_scores_that_all_tie_in_float32_are_judged_against_their_magnitude_not_a_range_of_zero():
    """A one-output model's scores were judged within 1% of their range over the sample: where every unquantized score
    is the same (a one-row sample, `--rows 1` or a one-row input; rows of one text) the range is 0, so a score that
    moved by 1e-4 disagreed and the check said score_agreement 0.0000 (dynamic-int8 on the tiny regression model,
    40 rows of one text: 0.0 while a sample of 2 texts gave 0.5). Tied scores are judged within 1% of their size."""
    options = TASK_OPTIONS["text-classification"](type="text-classification")
    reference = Predictions({"label": ["LABEL_0"] * 3, "score": [0.9313725] * 3}, np.array([True] * 3), None, labels=1)
    moved = [0.9313, 0.9314, 0.85]  # 1e-4 from it: alike; 0.08 (over 1% of 0.93): not
    quantized = Predictions({"label": ["LABEL_0"] * 3, "score": moved}, np.array([True] * 3), None, labels=1)
    result = compare(options, quantized, reference, ids=list("abc"))
    assert result.agreement == pytest.approx(2 / 3) and [e["id"] for e in result.examples] == ["c"]
    noisy = [0.9313725, 0.9313724, 0.9313725]  # float32 noise of batching is no spread to measure moves against
    reference = Predictions({"label": ["LABEL_0"] * 3, "score": noisy}, np.array([True] * 3), None, labels=1)
    assert compare(options, quantized, reference, ids=list("abc")).agreement == pytest.approx(2 / 3)
    zeros = Predictions({"label": ["LABEL_0"] * 2, "score": [0.0, 0.0]}, np.array([True] * 2), None, labels=1)
    assert compare(options, zeros, zeros, ids=list("ab")).agreement == 1.0  # the same scores always agree


def test_the_rows_left_out_because_float32_failed_on_them_are_told_not_only_in_the_json():
    """`--json` held failed_reference (sampled rows the unquantized model could not predict, left out), but the text
    and the page said only "3 sampled rows" for a sample of 5: nothing told the user why the check judged fewer rows
    than it sampled. Both say how many were left out and why."""
    from pipelines.cli.quality import render
    from pipelines.output.report import _fidelity_table

    result = Fidelity(task="text-classification", quantization="int8", rows=3, measure="label_agreement",
                      agreement=1.0, metrics={"label_agreement": 1.0}, failed_reference=2)
    assert "sampled rows left out, float32 failed on them: 2" in render(result), render(result)
    assert "sampled rows left out, float32 failed on them" in _fidelity_table(result)
    assert "left out" not in render(result.model_copy(update={"failed_reference": 0}))


def test_a_measure_a_hair_under_the_bar_is_not_rounded_up_to_it_in_the_measures_shown():
    """Each measure was kept rounded to six decimals, and the text, the page's table and chart and `--json`'s
    metrics show those: an embedding check with cosine_mean 0.99999996 under the bar 1.0, or 0.98999996 under 0.99,
    printed `cosine_mean 1.0000   <- headline` above `min_agreement 1.0: below the bar`. Measures are cut to six
    decimals, as they are shown, never above what was measured."""
    from pipelines.cli.quality import render
    from pipelines.fidelity import judge

    options = TASK_OPTIONS["feature-extraction"](type="feature-extraction")
    c = 0.98999996
    reference = predictions([True], embedding=[[1.0, 0.0]])
    quantized = predictions([True], embedding=[[c, float(np.sqrt(1 - c * c))]])
    spec = make_spec("m", {"type": "feature-extraction"})
    spec.model.fidelity = FidelitySpec(min_agreement=0.99)
    result = judge(spec, compare(options, quantized, reference, ids=["a"]))
    assert result.passed is False and result.metrics["cosine_mean"] < 0.99
    assert "cosine_mean                0.9899   <- headline" in render(result), render(result)


def test_an_agreement_just_under_the_bar_is_shown_under_it_and_the_advice_keeps_to_it(tmp_path):
    """An agreement of 0.98996 under the bar 0.99 was shown rounded, `0.9900 … bar 0.99: FAILED` (`99.00%` in the
    error), and `quantization: auto`'s advice to keep min_agreement "at or below 0.9900" named a bar the agreement
    does not reach. Figures are cut, not rounded: what is shown is never above what was measured."""
    from pipelines.cli.quality import render
    from pipelines.fidelity import Precision, below_bar, hold_bar
    from pipelines.output.summary import fidelity_line

    result = Fidelity(task="text-classification", quantization="int8", rows=256, measure="label_agreement",
                      agreement=0.98996, metrics={"label_agreement": 0.98996}, min_agreement=0.99, passed=False)
    assert "label_agreement 0.9899 on 256" in fidelity_line(result) and "0.9900" not in fidelity_line(result)
    assert "0.9899" in render(result) and "0.9900" not in render(result)
    spec = make_spec("m", {"type": "text-classification"})
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"quantization": "int8"})})
    assert "label_agreement 98.99% on 256" in below_bar(spec, result)
    auto = spec.model_copy(update={"model": spec.model.model_copy(update={
        "quantization": "auto", "fidelity": FidelitySpec(min_agreement=0.99)})})
    recorded = {"agreement": 0.98996, "measure": "label_agreement", "rows": 256, "bar": 0.98}
    with pytest.raises(PipelineError, match=r"min_agreement at or below 0\.9899$"):
        hold_bar(auto, Precision("dynamic-int8", "float32"), recorded)


def test_a_multi_label_model_is_judged_by_every_label_score_it_writes_not_its_top_label(tiny_models):
    """A multi-label classifier (problem_type multi_label_classification: a sigmoid per label) or zero-shot with
    multi_label writes each label's own score (return_all_scores), which the user thresholds label by label: the
    check said "label_agreement 1.0000" while dynamic int8 moved the scores (on this model by up to 0.017, more than
    1% of their range on most rows), since the top label alone was compared; a label crossing the user's threshold
    beside an unchanged top label passed the same way. Such a model is judged by every score it writes, as a model
    with one output is by its one score; the top label's agreement is still shown."""
    from tiny_models import CORPUS

    sample = pa.table({"id": [f"r{i}" for i in range(len(CORPUS))], "text": CORPUS})
    task = {"type": "text-classification", "return_all_scores": True}
    result = measure(quantized_spec(tiny_models("multi-label"), task, "dynamic-int8"), sample)
    assert result.measure == "score_agreement", result.metrics
    assert result.metrics["label_agreement"] == 1.0  # the top label never changed here
    assert 0 < result.agreement < 0.9 and 0 < result.metrics["rank_agreement"] < 1
    assert result.examples and {"id", "quantized", "reference"} <= set(result.examples[0])
    zero_shot = {"type": "zero-shot-classification", "candidate_labels": ["sports", "politics"], "method": "nli",
                 "multi_label": True}
    assert measure(quantized_spec(tiny_models("nli"), zero_shot, "dynamic-int8"), sample).measure == "score_agreement"


def test_a_label_that_crosses_beside_an_unchanged_top_label_disagrees_where_scores_are_each_labels_own():
    options = TASK_OPTIONS["text-classification"](type="text-classification", return_all_scores=True)

    def side(rows: list[dict[str, float]], independent: bool, ok=None) -> Predictions:
        ok = [True] * len(rows) if ok is None else ok
        columns = {"label": [max(s, key=s.get) if good else None for s, good in zip(rows, ok)],
                   "score": [max(s.values()) if good else None for s, good in zip(rows, ok)],
                   "scores": [s if good else None for s, good in zip(rows, ok)]}
        return Predictions(columns, np.array(ok), None, labels=3, independent=independent)

    reference = [{"news": 0.9, "sport": 0.6, "tech": 0.1}, {"news": 0.2, "sport": 0.1, "tech": 1.0},
                 {"news": 0.0, "sport": 0.7, "tech": 0.3}, {"news": 0.5, "sport": 0.5, "tech": 0.8}]
    quantized = [{"news": 0.9, "sport": 0.4, "tech": 0.1},  # sport no longer passes 0.5; news still on top
                 {"news": 0.2, "sport": 0.105, "tech": 1.0},  # moved by 0.005: within 1% of the range (0.01)
                 {"news": 0.0, "sport": 0.7, "tech": 0.3}, {"news": 0.5, "sport": 0.5, "tech": 0.8}]
    ok = [True, True, True, False]
    result = compare(options, side(quantized, True, ok), side(reference, True), ids=list("abcd"))
    assert result.measure == "score_agreement" and result.agreement == pytest.approx(2 / 4)
    assert result.metrics["label_agreement"] == pytest.approx(3 / 4)
    assert result.examples == [{"id": "d", "quantized": "None", "reference": "tech 0.8000"},
                               {"id": "a", "quantized": "sport 0.4000", "reference": "sport 0.6000"}]
    # a softmax over the labels (one label per row): its top label is what the row says
    assert compare(options, side(quantized, False, ok), side(reference, False), ids=list("abcd")).measure == (
        "label_agreement")
    # without return_all_scores a multi-label row writes its top label and that label's own score: both count
    top_only = TASK_OPTIONS["text-classification"](type="text-classification")
    q, r = side(quantized, True), side(reference, True)
    for predicted in (q, r):
        del predicted.columns["scores"]
    q.columns["label"][2], q.columns["score"][2] = "tech", 0.7  # a near tie flipped: the same score, another label
    result = compare(top_only, q, r, ids=list("abcd"))
    assert result.measure == "score_agreement" and result.agreement == pytest.approx(3 / 4)
    assert result.examples == [{"id": "c", "quantized": "tech 0.7000", "reference": "sport 0.7000"}]


def test_quantization_auto_decides_again_after_torch_or_transformers_changed(tmp_path, monkeypatch):
    """A kept decision ("dynamic-int8 keeps 99% and is the fastest") was keyed without the versions of the libraries
    whose kernels made it: after `pip install -U torch` (other int8 and bfloat16 kernels, other speeds) or a new
    transformers (another attention implementation) the old figures were taken and reported as this run's check.
    The versions are those of the node that decides (asked with its bfloat16 support), read without importing torch."""
    import importlib.metadata

    from pipelines import fidelity

    spec, shards = auto_embedding_job(tmp_path)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a cluster: the deciding node is asked in a task
    decided = []

    def decide():
        decided.append(importlib.metadata.version("torch"))
        return {"quantization": "dynamic-int8", "dtype": "float32", "fidelity": None, "why": "test"}

    monkeypatch.setattr(fidelity, "_on_ray", lambda spec, function, picked, *args: function(
        spec.model_dump(mode="json"), picked, *args))  # the node's answers, here
    installed = importlib.metadata.version

    def upgraded(to: dict[str, str]):
        monkeypatch.setattr(importlib.metadata, "version", lambda name: to.get(name) or installed(name))

    resolve_auto(spec, shards, decide)
    resolve_auto(spec, shards, decide)  # the same libraries: kept
    upgraded({"torch": "99.0.0"})
    resolve_auto(spec, shards, decide)
    upgraded({"torch": "99.0.0", "transformers": "99.0.0"})
    resolve_auto(spec, shards, decide)
    assert decided == [installed("torch"), "99.0.0", "99.0.0"], "a decision made with other kernels was kept"
    assert _decision_path(spec, 0.99, PICKED, False) != _decision_path(spec, 0.99, PICKED, False, {"torch": "1"})


def test_the_timed_pass_over_the_sample_follows_an_untimed_one_over_all_of_it_on_a_gpu():
    """quantization: auto times each candidate on the sample. On an H200 bfloat16's timed pass took 0.87 s after a
    warm-up of 8 rows and float32's 0.07 s, where bfloat16 runs 1.5x float32 warm (the first pass over new shapes
    loads kernels and picks matmul algorithms), so auto kept float32 (benchmarks/gpu_check.py, part auto). Where the
    model is on a GPU the first, untimed pass is the whole sample; on a CPU a few rows still do."""
    from pipelines.inference.fidelity import WARM_UP_ROWS, warm_up_rows

    assert (warm_up_rows("cuda", 256), warm_up_rows("cpu", 256)) == (256, WARM_UP_ROWS)


def _recorded_calls(monkeypatch) -> list[int]:
    import pipelines.inference.fidelity as fidelity

    calls: list[int] = []

    class Recorded(fidelity.Predictor):
        def __call__(self, batch):
            calls.append(batch.num_rows)
            return super().__call__(batch)

    monkeypatch.setattr(fidelity, "Predictor", Recorded)
    return calls


def test_a_gpu_jobs_candidate_loaded_on_a_cpu_is_timed_after_a_few_rows_not_the_whole_sample(tiny_models,
                                                                                             monkeypatch):
    """The whole-sample warm-up is for a model on a GPU. A job for GPU actors whose candidates load on this
    machine's CPU (`pipelines fidelity` with quantization: auto where no GPU is visible: device auto loads them on the
    CPU) scored every candidate's sample twice there: the warm-up went by the spec's device, not the model's."""
    import pipelines.inference.fidelity as fidelity

    calls = _recorded_calls(monkeypatch)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, compute={"gpus_per_actor": 1})
    assert spec.actor_device() == "cuda"
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    predicted = fidelity.predict(spec, sample)  # no GPU here: device auto loads it on the CPU
    assert calls == [fidelity.WARM_UP_ROWS, 24]
    assert predicted.ok.all()


def test_a_precision_is_timed_by_the_fastest_of_its_passes_over_the_sample(tiny_models, monkeypatch):
    """quantization: auto took each precision's one pass over the sample as its speed: in a Ray task on 2 cores one
    pass of the main job moved by a third between two decisions (float32 0.81 s against smooth-int8's 0.92 s in one,
    1.16 s against 0.92 s in the other), so a precision 1.15x faster could lose to float32 on one slow pass. The
    fastest of the timed passes counts; a clock that makes the first pass slow shows which is taken."""
    import pipelines.inference.fidelity as fidelity

    calls = _recorded_calls(monkeypatch)
    ticks = iter([0.0, 3.0, 10.0, 11.0])  # the first timed pass 3 s, the second 1 s

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return next(ticks)

    monkeypatch.setattr(fidelity, "time", Clock)
    monkeypatch.setattr(fidelity, "TIMED_PASSES", 2, raising=False)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    assert fidelity.predict(spec, sample, again=lambda predicted: True).seconds == 1.0
    assert calls == [fidelity.WARM_UP_ROWS, 24, 24]


def test_the_checks_collections_look_only_at_what_it_made_and_each_model_is_freed_before_the_next(tiny_models,
                                                                                                   monkeypatch,
                                                                                                   request):
    """After each model the check made a full collection of cyclic garbage (to free the model before the next load),
    and each walked every object the process held: about 400,000 once torch and Transformers are imported, 0.22 s a
    collection, 0.9 s of the main job's 7.5 s check on a 2-core Zen 4. The objects from before the check are now set
    aside while it runs (``gc.freeze``) and put back after it; each model is still freed before the next loads."""
    import gc
    import weakref

    import pipelines.inference.fidelity as fidelity

    models: list[weakref.ref] = []
    freed_before: list[bool] = []
    set_aside: list[int] = []

    class Watched(fidelity.Predictor):
        def __init__(self, spec):
            freed_before.append(all(model() is None for model in models))
            super().__init__(spec)
            models.append(weakref.ref(self.loaded.model))

    free = fidelity._free

    def watched_free(device: str) -> None:
        set_aside.append(gc.get_freeze_count())
        free(device)

    monkeypatch.setattr(fidelity, "Predictor", Watched)
    monkeypatch.setattr(fidelity, "_free", watched_free)
    _int8_product_as_fast_as_float32(monkeypatch)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    reference = fidelity.reference_spec(spec)
    candidate = reference.model_copy(deep=True)
    candidate.model.quantization = "per-token-int8"
    if gc.get_freeze_count():  # an earlier test's actor or plan in this process set its objects aside for good
        gc.unfreeze()  # here none are, as in `pipelines fidelity`'s process
        request.addfinalizer(gc.freeze)
    fidelity.measure_against(reference, [candidate], sample, bar=0.0)
    assert len(set_aside) >= 2 and all(count > 0 for count in set_aside), set_aside
    assert gc.get_freeze_count() == 0  # put back
    assert freed_before == [True] * len(models) and all(model() is None for model in models)
    fidelity.measure(candidate, sample)  # the gate's check, the same way
    assert len(set_aside) >= 4 and all(count > 0 for count in set_aside) and gc.get_freeze_count() == 0


def _recorded_loads(monkeypatch) -> list[tuple[str, str, int]]:
    """Each model the fidelity check loads, as (quantization, dtype, its passes over the whole sample of 24 rows:
    the rows it predicted after its warm-up's, over 24; a candidate's first pass is in parts)."""
    import pipelines.inference.fidelity as fidelity

    loads: list[tuple[str, str, int]] = []
    rows: list[int] = []

    class Recorded(fidelity.Predictor):
        def __init__(self, spec):
            super().__init__(spec)
            loads.append((spec.model.quantization, spec.model.dtype, 0))
            rows.append(-fidelity.WARM_UP_ROWS)

        def __call__(self, batch):
            rows[-1] += batch.num_rows
            quantization, dtype, _ = loads[-1]
            loads[-1] = (quantization, dtype, max(rows[-1], 0) // 24)
            return super().__call__(batch)

    monkeypatch.setattr(fidelity, "Predictor", Recorded)
    _int8_product_as_fast_as_float32(monkeypatch)
    return loads


def _int8_product_as_fast_as_float32(monkeypatch) -> None:
    """The int8 candidates tried on any CPU: on one whose int8 product is far slower (AVX2 alone) auto passes them
    over without a pass (test_auto_passes_int8_over_…)."""
    from pipelines.inference import int8_linear

    monkeypatch.setattr(int8_linear, "int8_product_ratio", lambda: 1.0)


def test_auto_times_again_only_what_can_decide_and_skips_a_candidate_that_cant_win(tiny_models, monkeypatch,
                                                                                     tmp_path):
    """quantization auto timed every precision twice over the sample (the main job's first run: 8 passes, 12.7 s of
    its 15 s check): float32, whose one pass there took 1.8x the fastest candidate's, and per-token-int8, below the
    bar, twice too, and smooth-int8 even where per-token-int8 (which it computes all of, and more) was within the
    bar. Now a candidate's labels take one pass, only one within the bar is timed again (and only where that may change
    the decision: test_a_candidate_is_timed_again_only_where_its_second_pass_can_change_the_decision), float32 is loaded and timed
    again only where a candidate within the bar is ahead of it by a little, and smooth-int8 isn't tried where per-token-int8
    is within the bar: the decision says so."""
    import pipelines.fidelity as decision
    import pipelines.inference.fidelity as fidelity

    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    spec.model.quantization, spec.model.cache_dir = "auto", str(tmp_path)  # smooth-int8's calibration kept there
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    reference = decision.concrete(spec, decision.Precision("none", "float32"))
    options = [decision.concrete(spec, decision.Precision(q, "float32")) for q in ("per-token-int8", "dynamic-int8")]

    loads = _recorded_loads(monkeypatch)
    monkeypatch.setattr(fidelity, "SLOWER", float("inf"))  # none stopped as slower (int8 is, on an AVX2 CPU)
    results, stopped = fidelity.measure_against(reference, options, sample, bar=1.01)  # none within the bar
    # none can reach it: each stopped after its first part (the next test), float32's pass whole
    assert loads == [("none", "float32", 1), ("per-token-int8", "float32", 0), ("dynamic-int8", "float32", 0)]
    assert results == [] and [(how.rows, how.slower) for _, how in stopped] == [(8, False), (8, False)]
    assert len({how.reference_s for _, how in stopped}) == 1

    loads.clear()
    monkeypatch.setattr(fidelity, "CLOSE", 0.0)  # never a close call (see the test after this one for those)
    int8_s = [1.0]  # the two candidates as fast as each other: each one's second pass may make it the faster
    _clocked_passes(monkeypatch, int8_s)
    fidelity.measure_against(reference, options, sample, bar=0.0)
    assert loads == [("none", "float32", 1), ("per-token-int8", "float32", 2), ("dynamic-int8", "float32", 2)]

    loads.clear()
    monkeypatch.setattr(decision, "_node_bf16", lambda spec: False)
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.0)  # per-token-int8 within the bar
    assert [load[:2] for load in loads[:2]] == [("none", "float32"), ("per-token-int8", "float32")]
    assert ("smooth-int8", "float32") not in [load[:2] for load in loads]
    assert "smooth-int8 not tried (per-token-int8 is within the bar and computes less)" in found["why"]
    loads.clear()
    int8_s[0] = 0.5  # per-token-int8 faster than float32 (the next test: where no faster, it isn't)
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 1.01)  # below it: smooth-int8 is tried
    assert [load[:2] for load in loads[:3]] == [("none", "float32"), ("per-token-int8", "float32"),
                                                ("smooth-int8", "float32")]
    assert "not tried" not in found["why"]


def test_auto_does_not_try_smooth_int8_where_per_token_int8_below_the_bar_was_no_faster_than_one_within_it():
    """On the main job's first run on a CPU with VNNI and native bfloat16 (a 2-core AMD EPYC, Zen 4) per-token-int8,
    below the bar, took 0.82 s over the sample and bfloat16, within it, 0.79 s; smooth-int8 was then loaded (its
    calibration 1.4 s) and timed twice (0.83-1.01 s a pass) though it computes all that per-token-int8 does and
    more: it was unlikely to be the fastest (the README says why this is a judgement, not a proof). bfloat16 is now timed before it, and it is not tried where per-token-int8 took
    no less than float32 or the fastest candidate within the bar; where per-token-int8 was faster, it is."""
    import pipelines.fidelity as decision

    spec = make_spec("unused", {"type": "text-classification"})
    ptq, bf16, smooth = (decision.concrete(spec, decision.Precision(q, d)) for q, d in (
        ("per-token-int8", "float32"), ("none", "bfloat16"), ("smooth-int8", "float32")))
    assert [(c.quantization, c.dtype) for c in decision.candidates("cpu", bf16=True)] == [
        ("per-token-int8", "float32"), ("none", "bfloat16"), ("smooth-int8", "float32")]

    def result(agreement: float, seconds: float) -> Fidelity:
        return Fidelity(task="text-classification", quantization="", rows=256, measure="label_agreement",
                        agreement=agreement, predict_s=seconds)

    slow_int8 = [(ptq, result(0.9687, 0.82)), (bf16, result(0.9960, 0.79))]
    assert decision.outrun(smooth, slow_int8, 0.99, reference_s=1.39) == (
        "per-token-int8 took 0.82 s, no less than bfloat16's 0.79 s within the bar, and computes less")
    assert decision.outrun(smooth, [(ptq, result(0.9687, 0.60)), (bf16, result(0.9960, 0.79))], 0.99, (), 1.39) is None
    assert decision.outrun(smooth, [(ptq, result(0.9687, 0.82))], 0.99, (), 1.39) is None  # faster than float32
    # float32 is within any bar: an Intel Xeon's main job, float32 0.81 s, per-token-int8 below the bar 0.95 s
    assert decision.outrun(smooth, [(ptq, result(0.9687, 0.95)), (bf16, result(0.9960, 1.30))], 0.99, (), 0.81) == (
        "per-token-int8 took 0.95 s, no less than float32's 0.81 s, and computes less")
    assert decision.outrun(bf16, slow_int8, 0.99, (), 1.39) is None  # bfloat16 does not compute what per-token-int8 does
    # per-token-int8 stopped below the bar: read at float32's pace where its pass got far enough, else tried
    from pipelines.inference.fidelity import BelowBar

    paced, early = BelowBar(0.55, 128, 256, 0.9882, "label_agreement"), BelowBar(0.05, 16, 256, 0.9, "label_agreement")
    paced.estimate_s = 1.09
    assert decision.outrun(smooth, [(bf16, result(0.9960, 0.88))], 0.99, [(ptq, paced)], 1.39) == (
        "per-token-int8, stopped below the bar after 128 of 256 rows, would have taken 1.09 s at its pace, no less "
        "than bfloat16's 0.88 s within the bar, and computes less")
    paced.estimate_s = 0.80
    assert decision.outrun(smooth, [(bf16, result(0.9960, 0.88))], 0.99, [(ptq, paced)], 1.39) is None
    assert decision.outrun(smooth, [(bf16, result(0.9960, 0.88))], 0.99, [(ptq, early)], 1.39) is None  # no pace


def _clocked_passes(monkeypatch, int8_s: list[float]) -> list[tuple[str, int]]:
    """The check's clock made to count each call's rows: a row takes 1 s in float32 and ``int8_s[0]`` s in any
    candidate (so that a test of what is stopped holds on any CPU); the calls' (quantization, rows), in order. The
    models and their predictions stay real; the node is one without native bfloat16 (no bfloat16 candidate)."""
    import types

    import pipelines.fidelity as decision
    import pipelines.inference.fidelity as fidelity

    clock = [0.0]
    calls: list[tuple[str, int]] = []

    class Clocked(fidelity.Predictor):
        def __call__(self, batch):
            calls.append((self.spec.model.quantization, batch.num_rows))
            clock[0] += batch.num_rows * (1.0 if self.spec.model.quantization == "none" else int8_s[0])
            return super().__call__(batch)

    monkeypatch.setattr(fidelity, "Predictor", Clocked)
    monkeypatch.setattr(fidelity, "time", types.SimpleNamespace(perf_counter=lambda: clock[0],
                                                                 monotonic=time.monotonic))
    monkeypatch.setattr(decision, "_node_bf16", lambda spec: False)
    _int8_product_as_fast_as_float32(monkeypatch)
    return calls


def test_a_candidate_slower_than_float32_is_stopped_not_timed_to_the_end_and_smooth_int8_not_tried(
        tiny_models, monkeypatch, tmp_path):
    """On a CPU with AVX2 and no AVX-512 torch's int8 product takes about 60x float32's time: the main job's first run
    there timed per-token-int8 over the whole sample for 109 s and then smooth-int8 for 150 s, where float32 took
    7.4 s, to take float32 (its `make run` ran 8 minutes in the test-suite). A candidate's first pass is stopped at
    the end of the part (fidelity.parts) in which it passed SLOWER times float32's pass; smooth-int8, which computes all that
    per-token-int8 does, is not tried after it; the decision says so. The clock here counts each call's rows (int8
    ten times float32's), so that the test holds on any CPU; the models and their predictions are real."""
    import pipelines.fidelity as decision
    import pipelines.inference.fidelity as fidelity

    int8_s = [10.0]
    calls = _clocked_passes(monkeypatch, int8_s)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    spec.model.quantization, spec.model.cache_dir = "auto", str(tmp_path)
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.0)  # every candidate within the bar

    assert (found["quantization"], found["dtype"]) == ("none", "float32")
    # float32's pass: 24 s on this clock, in parts of 8, 8, 8 rows; the budget 36 s; int8's first part 80 s
    assert [rows for quantization, rows in calls if quantization == "per-token-int8"] == [fidelity.WARM_UP_ROWS, 8]
    assert [rows for quantization, rows in calls if quantization == "none"] == [fidelity.WARM_UP_ROWS, 8, 8, 8]
    assert "smooth-int8" not in [quantization for quantization, _ in calls]
    assert ("per-token-int8 stopped after 80.00 s on 8 of 24 rows (slower than float32), smooth-int8 not tried "
            "(per-token-int8 was slower than float32 and computes less); float32 in 24.00 s") in found["why"]

    calls.clear()  # a candidate as fast as float32 runs to its end, in the same parts, and its labels are judged
    int8_s[0] = 1.0
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.0)
    assert [rows for quantization, rows in calls if quantization == "per-token-int8"] == [fidelity.WARM_UP_ROWS, 8, 8,
                                                                                            8, 24]  # timed again
    assert re.search(r"per-token-int8 [\d.]+ in 24\.00 s", found["why"]) and "stopped" not in found["why"]

    calls.clear()  # below the bar and no faster than float32: smooth-int8, which does more, isn't tried
    int8_s[0] = 1.2
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 1.01)
    assert "smooth-int8" not in [quantization for quantization, _ in calls]
    assert ("smooth-int8 not tried (per-token-int8, stopped below the bar after 8 of 24 rows, would have taken "
            "28.80 s at its pace, no less than float32's 24.00 s, and computes less)") in found["why"], found["why"]


def _labels_changed(monkeypatch, changed: set[str]) -> None:
    """Every candidate precision (not float32) predicts the label ``changed`` for the rows of those ids; its other
    labels stay the model's own."""
    import pipelines.inference.fidelity as fidelity

    class Changed(fidelity.Predictor):
        def __call__(self, batch):
            table = super().__call__(batch)
            if self.spec.model.quantization == "none":
                return table
            name = self.spec.output.prediction_prefix + "label"
            labels = ["changed" if row in changed else label
                      for row, label in zip(batch.column("id").to_pylist(), table.column(name).to_pylist())]
            return table.set_column(table.schema.get_field_index(name), name, pa.array(labels))

    monkeypatch.setattr(fidelity, "Predictor", Changed)


@pytest.mark.parametrize("changed, int8_calls, said", [
    ({"r3", "r9", "r10"}, [8, 8], "per-token-int8 stopped after 8.00 s on 16 of 24 rows (below the bar whatever the "
                                   "rest: at most 0.8750)"),
    # within reach to the end, and within the bar: ahead of float32 (24 s) by CLOSE, and smooth-int8 passed over, so
    # not timed again
    ({"r3", "r9"}, [8, 8, 8], "per-token-int8 0.9166 in 12.00 s"),
    ({"r17", "r18", "r19"}, [8, 8, 8], "per-token-int8 0.8750 in 12.00 s"),  # out of reach only in the last part
])
def test_a_candidate_that_can_no_longer_reach_the_bar_is_stopped_at_the_end_of_that_part(
        changed, int8_calls, said, tiny_models, monkeypatch, tmp_path):
    """On the main job's first run per-token-int8 is below the bar (0.9687: 8 of 256 labels changed, the third in
    the sample's 122nd row), and its whole pass (1.0-1.2 s on a 2-core Zen 4) was made to learn it, though after the
    part that held that third change no rest of the sample could bring it to 0.99. A candidate's first pass is now
    stopped at the end of the part (fidelity.parts) after which, with every row left counted as agreeing with
    float32, it would still be below the bar; the decision says how far it got and the most it could have reached.
    Where the rows changed so far leave the bar within reach, it goes on. Its labels are real but for the rows made
    to change (here 3 of 24 are too many for the bar 0.9); the clock counts rows."""
    import pipelines.fidelity as decision
    import pipelines.inference.fidelity as fidelity

    calls = _clocked_passes(monkeypatch, [0.5])  # a row in 0.5 s at int8, 1 s at float32
    _labels_changed(monkeypatch, changed)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    spec.model.quantization, spec.model.cache_dir = "auto", str(tmp_path)
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.9)

    assert [rows for quantization, rows in calls if quantization == "per-token-int8"] == [fidelity.WARM_UP_ROWS,
                                                                                            *int8_calls]
    assert said in found["why"], found["why"]
    assert "label_agreement vs float32: " in found["why"]  # the measure named, where no candidate made its whole pass
    assert (found["quantization"], found["dtype"]) == (("per-token-int8", "float32") if len(changed) < 3
                                                       else ("none", "float32"))


@pytest.mark.parametrize("changed, stopped_at, smooth_tried", [
    ({"r1", "r2", "r3"}, 8, True),  # 8 of 48 rows: too few calls to read its pace from, so smooth-int8 is tried
    ({"r1", "r2", "r9"}, 16, False),  # 16 of 48, a third: at float32's pace, no faster, so it is not
])
def test_a_candidate_stopped_below_the_bar_is_read_at_float32s_pace_only_past_a_quarter_of_the_sample(
        changed, stopped_at, smooth_tried, tiny_models, monkeypatch, tmp_path):
    """smooth-int8 is left untried where per-token-int8, below the bar, was no faster than float32; a per-token-int8
    stopped below the bar is read at float32's pace over the same calls. Scaled up from its first calls of 8 or 16
    rows (tens of milliseconds each), that estimate is too noisy to leave a candidate out on: under a quarter of the
    sample (fidelity.PACED_SHARE) it is not read, and smooth-int8 is tried. Here int8 runs at float32's pace (the
    clock counts rows); every candidate's labels change on the rows named."""
    import pipelines.fidelity as decision

    calls = _clocked_passes(monkeypatch, [1.0])
    _labels_changed(monkeypatch, changed)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    spec.model.quantization, spec.model.cache_dir = "auto", str(tmp_path)
    sample = pa.table({"id": [f"r{i}" for i in range(48)], "text": SENTENCES * 6})
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.95)  # at most 2 of 48 changed

    assert f"per-token-int8 stopped after {stopped_at:.2f} s on {stopped_at} of 48 rows" in found["why"], found["why"]
    assert ("smooth-int8" in [quantization for quantization, _ in calls]) is smooth_tried
    if not smooth_tried:
        assert (f"smooth-int8 not tried (per-token-int8, stopped below the bar after {stopped_at} of 48 rows, would "
                "have taken 48.00 s at its pace, no less than float32's 48.00 s, and computes less)") in found["why"]


def test_a_sample_float32_predicts_none_of_is_refused_even_where_every_candidate_is_stopped_as_slower(
        tiny_models, monkeypatch, tmp_path):
    """Every sampled row quarantined by float32 (each longer than max_length under errors.too_long: error): the check
    has nothing to compare. It said so only when it compared a candidate; a candidate stopped as slower than float32
    is not compared, so where per-token-int8 was stopped (as on an AVX2 CPU, or by the noise of a pass over 10 rows
    that all fail at once) quantization auto took float32 on no evidence and the run quarantined every row (the
    suite's test_errors_cli failed so on such a host). Refused after float32's pass, before any candidate."""
    import pipelines.fidelity as decision

    calls = _clocked_passes(monkeypatch, [10.0])  # per-token-int8 stopped after its first part
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, batching={"max_length": 3},
                     errors={"too_long": "error"})
    spec.model.quantization, spec.model.cache_dir = "auto", str(tmp_path)
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": [f"words and more words, {i} of them"
                                                                    for i in range(24)]})
    with pytest.raises(PipelineError) as refused:
        decision.choose_here(spec.model_dump(mode="json"), sample, 0.0)
    assert str(refused.value).startswith("none of the 24 sampled rows could be predicted by the unquantized model")
    assert {quantization for quantization, _ in calls} == {"none"}  # no candidate loaded for nothing


def test_auto_passes_int8_over_without_a_pass_where_this_cpus_int8_product_is_far_slower_than_float32(
        tiny_models, monkeypatch, tmp_path):
    """On an AVX2-only CPU (Zen 3) torch's int8 product took 30x float32's time: the main job's first run loaded
    float32 and per-token-int8, warmed each up and timed them until per-token-int8 was stopped (a 20.6 s check) to
    take float32. The int8 product is timed first now (a fraction of a second); where it takes over SLOW_INT8_RATIO
    times float32's, no int8 layer can be faster, so neither int8 candidate is loaded, nor float32 (nothing is left
    to compare it with), and the decision says why. With bfloat16 native, bfloat16 is still timed against float32."""
    import pipelines.fidelity as decision
    from pipelines.inference import int8_linear

    loads = _recorded_loads(monkeypatch)
    monkeypatch.setattr(int8_linear, "int8_product_ratio", lambda: 67.2)
    monkeypatch.setattr(decision, "_node_bf16", lambda spec: False)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    spec.model.quantization, spec.model.cache_dir = "auto", str(tmp_path)
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.99)
    assert (found["quantization"], found["dtype"], found["fidelity"]) == ("none", "float32", None)
    assert loads == []
    assert found["why"] == (
        "float32, as no candidate can be faster here; agreement vs float32: per-token-int8 not tried (torch's int8 "
        "matrix product took 67x float32's time on this CPU), smooth-int8 not tried (torch's int8 matrix product "
        "took 67x float32's time on this CPU)")

    monkeypatch.setattr(decision, "_node_bf16", lambda spec: True)  # bfloat16 is still a candidate: timed
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.0)
    assert [load[:2] for load in loads[:2]] == [("none", "float32"), ("none", "bfloat16")]  # (float32 may be timed
    assert {load[0] for load in loads} == {"none"}  # again in a close call: test_float32_is_timed_again_…)
    assert "per-token-int8 not tried (torch's int8 matrix product took 67x" in found["why"]

    loads.clear()  # an int8 product under SLOW_INT8_RATIO times float32's: the int8 candidates are tried
    monkeypatch.setattr(int8_linear, "int8_product_ratio", lambda: int8_linear.SLOW_INT8_RATIO)
    monkeypatch.setattr(decision, "_node_bf16", lambda spec: False)
    decision.choose_here(spec.model_dump(mode="json"), sample, 0.0)
    assert ("per-token-int8", "float32") in [load[:2] for load in loads]

    loads.clear()  # a product that can't be timed here (the probe raises): no reason to pass int8 over, nor to fail

    probed = []

    def cannot_time() -> float:
        probed.append(True)
        raise RuntimeError("torch._int_mm: no kernel for this CPU")

    monkeypatch.setattr(int8_linear, "int8_product_ratio", cannot_time)
    found = decision.choose_here(spec.model_dump(mode="json"), sample, 0.0)
    assert probed and ("per-token-int8", "float32") in [load[:2] for load in loads]
    assert "int8 matrix product" not in found["why"]  # not passed over as slow


def test_pipelines_fidelity_of_a_gpu_job_scores_its_sample_once_per_model_after_a_few_rows(tiny_models, monkeypatch):
    """`pipelines fidelity` (not auto) and a run's model.fidelity gate compare labels and use no timing: a
    whole-sample warm-up there scored the sample twice with each model for nothing (on a GPU a large model's sample
    took twice as long). Here (no GPU) the bfloat16 model loads on the CPU; each model's first call is a few rows."""
    import pipelines.inference.fidelity as fidelity

    calls = _recorded_calls(monkeypatch)
    raw = make_spec(tiny_models("classifier"), {"type": "text-classification"}, compute={"gpus_per_actor": 1})
    dumped = raw.model_dump(mode="json")
    spec = type(raw).model_validate({**dumped, "model": {**dumped["model"], "dtype": "bfloat16"}})
    sample = pa.table({"id": [f"r{i}" for i in range(24)], "text": SENTENCES * 3})
    monkeypatch.setattr(fidelity, "warm_up_rows", lambda *args: 24)  # as on a GPU
    result = fidelity.measure(spec, sample)
    assert calls == [fidelity.WARM_UP_ROWS, 24, fidelity.WARM_UP_ROWS, 24]
    assert result.rows == 24


@pytest.mark.parametrize("device, float32_s, bfloat16_s, expected, reference_s", [
    ("cuda", [1.0], 0.9, [("float32", 2), ("bfloat16", 2)], 1.0),  # timed again while loaded: no second load
    ("cpu", [1.2, 1.0], 0.9, [("float32", 1), ("bfloat16", 2), ("float32", 1)], 1.0),  # close: loaded again
    ("cpu", [2.0], 0.5, [("float32", 1), ("bfloat16", 1)], 2.0),  # bfloat16 far ahead: one pass of each decides
    ("cpu", [0.8], 1.0, [("float32", 1), ("bfloat16", 2)], 0.8),  # float32 ahead already: it is taken as it is
])
def test_float32_is_timed_again_while_loaded_on_a_gpu_and_loaded_again_only_in_a_close_call_on_a_cpu(
    device, float32_s, bfloat16_s, expected, reference_s, monkeypatch
):
    """A close call on a GPU (bfloat16 about 1.5x float32 there, at the edge of CLOSE) would load float32 a second
    time, which for a large model is far longer than a pass over the sample: there it is timed twice while loaded,
    as before; on a CPU, where a pass costs about a load, only a close call (the fastest candidate within the bar
    ahead of float32's one pass, by less than CLOSE) loads it again, and the faster of its two calls counts. The
    predictions and times here are made up (no GPU here): under test is which model is loaded, how many times each is
    timed, and which time counts."""
    import pipelines.inference.fidelity as fidelity

    loads: list[tuple[str, int]] = []
    times = {"float32": iter(float32_s), "bfloat16": iter([bfloat16_s])}

    def predict(spec, sample, timed=True, again=None, in_parts=False, budget_s=None, best_case=None):
        dtype = spec.model.dtype
        predicted = Predictions({"label": ["a", "b", "a"], "score": [0.9, 0.8, 0.7]}, np.ones(3, dtype=bool), None,
                                next(times[dtype]), dtype, labels=2, device=device)
        if again is not None and again(predicted):
            predicted.passes = fidelity.TIMED_PASSES
        loads.append((dtype, predicted.passes))
        return predicted

    monkeypatch.setattr(fidelity, "predict", predict)
    spec = make_spec("unused", {"type": "text-classification"})
    reference, bf16 = spec.model_copy(deep=True), spec.model_copy(deep=True)
    reference.model.dtype, bf16.model.dtype = "float32", "bfloat16"
    sample = pa.table({"id": ["r0", "r1", "r2"], "text": SENTENCES[:3]})
    ((_, result),), _ = fidelity.measure_against(reference, [bf16], sample, bar=0.99)
    assert loads == expected
    assert (result.agreement, result.predict_s, result.reference_predict_s) == (1.0, bfloat16_s, reference_s)


@pytest.mark.parametrize("float32_s, first, needless_says, expected, taken", [
    # bfloat16 far ahead of float32 and nothing left to try: its one pass decides (it was timed twice)
    (2.0, None, None, [("none", "float32", 1), ("none", "bfloat16", 1)], "bfloat16"),
    # smooth-int8 left, and given bfloat16's one pass it can't win: passed over, bfloat16 timed once
    (2.0, None, True, [("none", "float32", 1), ("none", "bfloat16", 1)], "bfloat16"),
    # smooth-int8 left, and it may still win: bfloat16 timed again; then smooth-int8's first pass is behind
    # bfloat16's second, and its own second makes it the faster
    (2.0, None, False, [("none", "float32", 1), ("none", "bfloat16", 2), ("smooth-int8", "float32", 2)],
     "smooth-int8"),
    # per-token-int8 within the bar, bfloat16 left to try; bfloat16's first pass behind per-token-int8's: its second
    # makes it the faster
    (2.0, (0.4, 0.38), None, [("none", "float32", 1), ("per-token-int8", "float32", 2), ("none", "bfloat16", 2)],
     "bfloat16"),
    # bfloat16's first pass behind float32's: its second makes it the faster, by less than CLOSE: float32 loaded again
    (0.45, None, None, [("none", "float32", 1), ("none", "bfloat16", 2), ("none", "float32", 1)], "bfloat16"),
])
def test_a_candidate_is_timed_again_only_where_its_second_pass_can_change_the_decision(
    float32_s, first, needless_says, expected, taken, monkeypatch
):
    """quantization: auto timed every candidate within the bar twice: on the main job's first run bfloat16's second
    pass (about 0.8 s of a 5 s check) changed nothing where its first was ahead of float32's by CLOSE or more, the
    fastest within the bar, and smooth-int8 passed over given it. A second pass can only lower a candidate's time: it
    is made only where a lower time can change which precision is taken, and the decision is the one that timing
    every candidate within the bar twice gives (here each second pass is faster than the first). The times are made
    up: under test is which model is loaded and timed how many times, and the decision."""
    import pipelines.fidelity as decision
    import pipelines.inference.fidelity as fidelity

    spec = make_spec("unused", {"type": "text-classification"})
    reference = spec.model_copy(deep=True)
    reference.model.dtype = "float32"
    candidates = []
    for quantization, dtype, wanted in [("per-token-int8", "float32", first), ("none", "bfloat16", True),
                                        ("smooth-int8", "float32", needless_says is not None)]:
        if wanted:
            candidate = spec.model_copy(deep=True)
            candidate.model.quantization, candidate.model.dtype = quantization, dtype
            candidates.append(candidate)
    sample = pa.table({"id": ["r0", "r1", "r2"], "text": SENTENCES[:3]})

    def check(every_twice: bool):
        """The check with these times; ``every_twice``: each candidate within the bar (all are, here) timed twice,
        whatever ``again`` says, as before the change."""
        loads: list[tuple[str, str, int]] = []
        asked: list[list[str]] = []
        float32 = iter([float32_s, 0.59])  # a second load (a close call) times 0.59
        passes = {"bfloat16": (0.5, 0.35), "per-token-int8": first, "smooth-int8": (0.45, 0.3)}

        def predict(spec, sample, timed=True, again=None, in_parts=False, budget_s=None, best_case=None):
            name = spec.model.quantization if spec.model.quantization != "none" else spec.model.dtype
            one, two = (next(float32), None) if name == "float32" else passes[name]
            predicted = Predictions({"label": ["a", "b", "a"], "score": [0.9, 0.8, 0.7]}, np.ones(3, dtype=bool),
                                    None, one, spec.model.dtype, labels=2)
            timed_again = again is not None and again(predicted)
            if two is not None and (timed_again or every_twice):
                predicted.seconds, predicted.passes = min(one, two), fidelity.TIMED_PASSES
            elif timed_again:  # float32 on a GPU: not here
                predicted.passes = fidelity.TIMED_PASSES
            loads.append((spec.model.quantization, spec.model.dtype, predicted.passes))
            return predicted

        def needless(candidate, done, stopped, reference_s):  # says only of smooth-int8, as decision.outrun does
            if candidate.model.quantization != "smooth-int8":
                return False
            asked.append([f"{result.quantization} {result.predict_s}" for _, result in done])
            return bool(needless_says)

        monkeypatch.setattr(fidelity, "predict", predict)
        results, stopped = fidelity.measure_against(reference, candidates, sample, bar=0.99,
                                                    needless=needless if needless_says is not None else None)
        assert not stopped
        chosen = decision.fastest_within(results, 0.99, [], stopped)
        return loads, asked, decision.Precision(chosen["quantization"], chosen["dtype"]).label

    loads, asked, chosen = check(every_twice=False)
    assert loads == expected
    assert chosen == taken == check(every_twice=True)[2]
    if needless_says:  # asked ahead with bfloat16's one pass, before a second pass could be made, then in turn
        assert asked == [["bfloat16 0.5"], ["bfloat16 0.5"]]
    elif needless_says is False:  # asked ahead with its first pass, then in turn with the faster of its two
        assert asked == [["bfloat16 0.5"], ["bfloat16 0.35"]]


def test_fidelity_under_auto_reports_the_precision_a_run_takes_not_a_fresh_choice(wide_encoder, topics, tmp_path):
    """`pipelines fidelity` under `quantization: auto` timed the candidates afresh at each call and reported its own
    pick: a tester's output ran (and its summary, `_run.json`, `_job.json`, page and plan said) per-token-int8, while
    `pipelines fidelity` said "would take bfloat16" with bfloat16's figures, two candidates within the bar being
    about as fast. It reports the precision a run of the job takes: the output's kept one, else the decision kept
    here for this sample (and the decision it makes is kept, for the run to take)."""
    from pipelines.fidelity import Precision, _auto_bar, _node_bf16, _rows, _write_decision, concrete, judge, sample
    from pipelines.output.commit import OutputDir
    from pipelines.runner import job_record

    spec = topic_spec(wide_encoder, topics, tmp_path / "out", "auto")
    spec.model.cache_dir = str(tmp_path / "cache")
    shards = list_shards([str(topics)])
    picked = sample(spec, shards, _rows(spec))
    smooth = concrete(spec, Precision("smooth-int8", "float32"))  # within the bar; a fresh choice never times it
    figures = judge(smooth, measure(smooth, picked))  # where per-token-int8 is within the bar as well (it computes less)
    assert figures.agreement >= _auto_bar(spec)
    kept = {"quantization": "smooth-int8", "dtype": "float32", "fidelity": figures.to_json(), "why": "decided before",
            "decided_at": 1796572800.0}
    _write_decision(_decision_path(spec, _auto_bar(spec), picked, _node_bf16(spec)), kept)
    said = check(spec, shards)
    assert (said.quantization, said.agreement) == ("smooth-int8", figures.agreement)
    # read, not measured: the first line's seconds (reading the sample) said as such, not as the check's
    from pipelines.cli.quality import render

    assert said.kept_at == 1796572800.0
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(1796572800.0))
    assert (f"sampled rows ({said.wall_s:.1f} s, the figures of quantization auto's check made {stamp} and kept on "
            "this machine)") in render(said).splitlines()[0]
    # a bar the job does not set is said to be the default one (it read as the job's own setting)
    assert "model.fidelity.min_agreement 0.99 (the default: this job sets no model.fidelity): passed" in render(
        said, set_bar=spec.model.fidelity is not None)

    # an output whose runs keep a precision: that one, measured on the sample, whatever is kept here
    job = job_record(spec)
    job.precision = {"quantization": "per-token-int8", "dtype": "float32"}
    output = OutputDir(str(tmp_path / "out"))
    output.start(job)
    said = check(spec, shards)
    per_token = concrete(spec, Precision("per-token-int8", "float32"))
    assert (said.quantization, said.agreement) == ("per-token-int8", measure(per_token, picked).agreement)

    # kept in float32: nothing to compare, and why auto chose it, where the decision is kept here
    why = "per-token-int8 label_agreement 0.5 below the bar 0.99"
    _write_decision(_decision_path(spec, _auto_bar(spec), picked, _node_bf16(spec)),
                    {"quantization": "none", "dtype": "float32", "fidelity": None, "why": why})
    job.precision = {"quantization": "none", "dtype": "float32"}
    output.write_json("_job.json", job.to_json())
    with pytest.raises(PipelineError, match=f"in float32, as its earlier runs chose \\({why}\\): there is nothing"):
        check(spec, shards)
