"""Jobs end to end on a shared local Ray: shards in, every row out once, plain Parquet."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, SENTENCES, make_spec, read_output, write_jsonl, write_parquet

from pipelines.errors import PipelineError
from pipelines.output.records import Agreement
from pipelines.output.summary import agreement_line, render
from pipelines.runner import run_job
from pipelines.spec import spec_from_dict


def write_shards(folder):
    """Three shards in two formats, 24 rows, ids unique."""
    rows = [{"id": f"x{i:02d}", "text": SENTENCES[i % len(SENTENCES)], "label": "pos" if i % 2 else "neg"} for i in range(24)]
    write_jsonl(folder / "a.jsonl", rows[:10])
    write_jsonl(folder / "b.jsonl", rows[10:16])
    write_parquet(folder / "c.parquet", rows[16:])
    return folder, rows


@pytest.fixture()
def shards(tmp_path):
    """Three shards in two formats, 24 rows, ids unique (a test's own: it may add to them)."""
    return write_shards(tmp_path / "in")


def job(model_dir, task, shards, folder, **sections):
    spec = make_spec(model_dir, task, folder / "out", **sections)
    spec.input.paths = [str(shards[0])]
    return spec


#: Each kind's task in test_each_task_end_to_end, as ``finished`` runs it.
TASKS = {
    "encoder": {"type": "feature-extraction", "pooling": "cls"},
    "classifier": {"type": "text-classification"},
    "nli": {"type": "zero-shot-classification", "candidate_labels": ["pos", "neg"]},
}


@pytest.fixture(scope="module")
def finished(ray_session, tiny_models, tmp_path_factory):
    """A function kind → (spec, summary as JSON, input rows) of one finished run of ``TASKS[kind]`` over the three
    shards, made at most once per module. test_each_task_end_to_end asserts on each; the classifier's run is also
    the finished job that test_rerun_of_a_finished_job_writes_nothing runs again (which must write nothing) and
    that test_a_changed_spec_is_refused_unless_overwritten copies before changing it. No test changes its output."""
    root = tmp_path_factory.mktemp("finished")
    shards = write_shards(root / "in")
    done: dict[str, tuple] = {}

    def get(kind: str) -> tuple:
        if kind not in done:
            spec = job(tiny_models(kind), TASKS[kind], shards, root / kind)
            done[kind] = (spec, run_job(spec).to_json(), shards[1])
        return done[kind]

    return get


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("encoder", {"embedding": pa.list_(pa.float32(), 32)}),
        ("classifier", {"label": pa.string(), "score": pa.float32()}),
        ("nli", {"label": pa.string(), "scores": pa.struct([("pos", pa.float32()), ("neg", pa.float32())])}),
    ],
)
def test_each_task_end_to_end(finished, kind, columns):
    spec, summary, rows = finished(kind)
    out = Path(spec.output.path)
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == [r["id"] for r in rows]
    for name, type_ in columns.items():
        assert table.schema.field(name).type == type_
    assert summary["rows_in"] == summary["rows_out"] == 24
    assert summary["errors"] == 0
    assert 0 < summary["padding_efficiency"] <= 1
    assert (out / "_SUCCESS").exists()
    run = json.loads((out / "_run.json").read_text())
    assert run["rows_out"] == 24 and run["spec_hash"] == spec.fingerprint()
    # The model's float outputs are written plain (a dictionary of distinct floats only costs time and
    # space); ids and labels keep their dictionary.
    for part in out.glob("part-*.parquet"):
        meta = pq.ParquetFile(part).metadata
        for i in range(meta.num_columns):
            column = meta.row_group(0).column(i)
            dictionary = any("DICTIONARY" in encoding for encoding in column.encodings)
            assert dictionary == (column.physical_type not in ("FLOAT", "DOUBLE")), column.path_in_schema


def test_output_is_plain_parquet_for_every_reader(ray_session, tiny_models, shards, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl

    spec = job(tiny_models("encoder"), {"type": "feature-extraction"}, shards, tmp_path, input={"columns_to_keep": ["label"]})
    run_job(spec)
    out = tmp_path / "out"
    frame = pd.read_parquet(out)
    assert len(frame) == 24 and len(frame["embedding"].iloc[0]) == 32
    assert pl.read_parquet(f"{out}/*.parquet").height == 24
    [(count, width)] = duckdb.sql(f"select count(*), max(len(embedding)) from '{out}/*.parquet'").fetchall()
    assert (count, width) == (24, 32)
    assert set(frame.columns) == {"id", "label", "embedding"}


def test_ground_truth_agreement_and_prefix(ray_session, tiny_models, shards, tmp_path):
    spec = job(
        tiny_models("nli"),
        {"type": "zero-shot-classification", "candidate_labels": ["pos", "neg"]},
        shards, tmp_path,
        input={"label_column": "label"}, output={"prediction_prefix": "predicted_"},
    )
    summary = run_job(spec).to_json()
    table = read_output(spec.output.path)
    agreement = summary["agreement"]
    assert agreement["rows"] == 24
    matches = np.mean(np.array(table.column("label").to_pylist()) == np.array(table.column("predicted_label").to_pylist()))
    assert agreement["accuracy"] == pytest.approx(matches, abs=1e-4)
    assert sum(sum(r.values()) for r in agreement["confusion"].values()) == 24


def test_rows_without_a_truth_label_are_left_out_of_the_agreement(ray_session, tiny_models, shards, tmp_path):
    """A null truth label was a truth class of its own ("None"), every such row a disagreement: 10 of 50 rows
    without a label made 52.5% of 40 read 42.0% of 50."""
    folder, rows = shards
    unlabeled = [{**row, "id": f"u{i:02d}", "label": None} for i, row in enumerate(rows[:6])]
    write_parquet(folder / "d.parquet", unlabeled)
    spec = job(tiny_models("nli"), {"type": "zero-shot-classification", "candidate_labels": ["pos", "neg"]},
               shards, tmp_path, input={"label_column": "label"}, output={"prediction_prefix": "predicted_"})
    summary = run_job(spec)
    table = read_output(spec.output.path).to_pydict()
    labeled = [(t, p) for t, p in zip(table["label"], table["predicted_label"]) if t is not None]
    assert summary.rows_out == 30 and len(labeled) == 24
    assert summary.agreement is not None and summary.agreement.rows == 24
    assert set(summary.agreement.confusion) <= {"pos", "neg"}
    assert summary.agreement.accuracy == pytest.approx(np.mean([t == p for t, p in labeled]), abs=1e-4)
    said = f"{summary.agreement.accuracy:.1%} of the 24 rows with a truth label"
    assert f"agreement with ground truth: {said}" in render(summary)
    page = (tmp_path / "out" / "_report.html").read_text()
    assert said in page and "None" not in json.loads((tmp_path / "out" / "_run.json").read_text())["agreement"][
        "confusion"]


def test_a_quarantined_file_of_unknown_rows_is_not_said_to_have_quarantined_0_rows():
    """errors.unreadable_files: quarantine, and a Parquet file damaged so that its rows can't be counted: its commit
    counts it as no rows under its reason, and the summary said `quarantined rows by reason: unreadable parquet file:
    0`, as if the file had held no row (a helper's run with a half-truncated file among good ones)."""
    from pipelines.output.records import ModelRef, RunSummary, Unreadable

    damaged = Unreadable(uri="/data/b.parquet", reason="unreadable parquet file: footer damaged", rows=None)
    summary = RunSummary(status="succeeded", spec_hash="x", model=ModelRef(name="m"), quantization="none", device="cpu",
                         task="text-classification", shards=2, shards_this_run=2, rows_in=10, rows_out=7, errors=3,
                         error_rate=0.3, error_reasons={"unreadable parquet file": 0, "text longer than max_length": 3},
                         unreadable_files=[damaged], files_with_unknown_rows=1)
    said = render(summary)
    assert "unreadable parquet file: 0" not in said
    assert "quarantined rows by reason: text longer than max_length: 3, unreadable parquet file: rows unknown" in said


def test_truth_labels_that_name_the_classes_otherwise_are_compared_through_the_label_map(ray_session, tiny_models,
                                                                                        tmp_path):
    """A truth column of class numbers (Hugging Face datasets keep a ClassLabel as integers; SST-2's 1 is positive)
    against a model's label names: input.label_map says which label each number stands for. The agreement and its
    confusion matrix read the truth through it; the output keeps the column as the input holds it; a value the map
    does not name is compared as it is."""
    classes = {"neg": 0, "pos": 1}
    rows = [{"id": f"n{i:02d}", "text": SENTENCES[i % len(SENTENCES)], "label": classes["pos" if i % 2 else "neg"]}
            for i in range(20)] + [{"id": "n99", "text": SENTENCES[0], "label": 7}]
    write_parquet(tmp_path / "in" / "a.parquet", rows)
    spec = job(tiny_models("nli"), {"type": "zero-shot-classification", "candidate_labels": ["pos", "neg"]},
               [tmp_path / "in"], tmp_path, input={"label_column": "label", "label_map": {0: "neg", 1: "pos"}},
               output={"prediction_prefix": "predicted_"})
    summary = run_job(spec)
    table = read_output(spec.output.path)
    assert table.column("label").type == pa.int64() and sorted(table.column("label").to_pylist()) == sorted(
        r["label"] for r in rows)
    names = {0: "neg", 1: "pos"}
    pairs = [(names.get(t, str(t)), p) for t, p in zip(table.column("label").to_pylist(),
                                                       table.column("predicted_label").to_pylist())]
    assert summary.agreement is not None and summary.agreement.rows == 21
    assert set(summary.agreement.confusion) == {"neg", "pos", "7"}
    assert summary.agreement.accuracy == pytest.approx(np.mean([t == p for t, p in pairs]), abs=1e-4)
    assert "label_map" not in render(summary)
    assert summary.agreement.labels == ["pos", "neg"]  # the labels the model can give, as its actors held them
    # every shard committed, the run not finished (one over the error budget, say): a run scores nothing and writes
    # its summary again, no actor telling the labels; it recorded none, and a 0% agreement's line advised a label_map
    # against the labels predicted, not those the model gives
    (Path(spec.output.path) / "_SUCCESS").unlink()
    again = run_job(spec)
    assert again.shards_this_run == 0 and again.agreement is not None
    assert again.agreement.labels == ["pos", "neg"]  # as the run that predicted them recorded


def test_truth_values_that_are_labels_of_the_model_but_not_predicted_get_no_label_map_advice():
    """A small input whose truth values are real labels of the model (negative, positive) that it happened not to
    predict (it said neutral for every row): the agreement line advised input.label_map, as if the truth named the
    classes otherwise, because it compared the truth with the labels predicted. The run records the labels the model
    can give (``agreement.labels`` in ``_run.json``) and the line compares the truth with them; a ``_run.json`` written
    before that field compares with the labels predicted, and says so."""
    confusion = {"positive": {"neutral": 1}, "negative": {"neutral": 1}}
    known = Agreement(accuracy=0.0, rows=2, confusion=confusion, labels=["negative", "neutral", "positive"])
    assert agreement_line(known) == "0.0% of the 2 rows with a truth label"
    numbers = Agreement(accuracy=0.0, rows=2, confusion={"0": {"neutral": 2}}, labels=["negative", "neutral",
                                                                                        "positive"])
    said = agreement_line(numbers)
    assert "no truth value is a label the model gives (truth: 0; the model's labels: negative, neutral, positive)" in (
        said) and "input.label_map" in said
    older = Agreement.parse({"accuracy": 0.0, "rows": 2, "confusion": confusion})
    said = agreement_line(older)
    assert "no truth value is a label the model predicted here (truth: negative, positive; predicted: neutral)" in said
    assert "input.label_map" in said


def test_an_agreement_of_truth_values_that_are_no_label_of_the_model_says_so_and_how_to_map_them():
    """Class numbers against label names agree on no row: 0.0% read as a model that gets every row wrong. The line (in
    the terminal and on the report page, which show the same words) says that no truth value is one of the model's
    labels, and names input.label_map; an agreement with any value in common says nothing more."""
    numbers = Agreement(accuracy=0.0, rows=5, confusion={"0": {"NEGATIVE": 2, "POSITIVE": 1}, "1": {"POSITIVE": 2}})
    said = agreement_line(numbers)
    assert said.startswith("0.0% of the 5 rows with a truth label; no truth value is a label the model predicted here")
    assert "(truth: 0, 1; predicted: NEGATIVE, POSITIVE)" in said and "input.label_map" in said
    wrong = Agreement(accuracy=0.0, rows=2, confusion={"neg": {"pos": 1}, "pos": {"neg": 1}})
    assert agreement_line(wrong) == "0.0% of the 2 rows with a truth label"


def test_a_truth_column_arrow_reads_as_no_text_is_compared_as_text_not_the_end_of_the_job(ray_session, tiny_models,
                                                                                            tmp_path):
    """A ground-truth column of lists (multi-label truth, [1, 2]) or of bytes that are no UTF-8 (a binary column):
    counting the agreement cast it to text, which Arrow refuses for those, and the actor's batch failed: the whole
    job ended with a traceback after loading the model, no row written. Such values are read as text the way the
    fidelity check reads them (Python's), so every row comes out and the agreement is counted."""
    for name, truth in (("list", pa.array([[1, 2], [0], None, []])), ("binary", pa.array([b"pos", b"\xff", None, b"neg"]))):
        folder = tmp_path / name
        texts = pa.array(SENTENCES[:4])
        write = folder / "in" / "a.parquet"
        write.parent.mkdir(parents=True)
        pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": texts, "truth": truth}), write)
        spec = job(tiny_models("classifier"), {"type": "text-classification"}, (folder / "in",), folder,
                   input={"label_column": "truth"})
        summary = run_job(spec)
        assert summary.rows_out == 4 and summary.errors == 0, name
        assert summary.agreement is not None and summary.agreement.rows == 3, name
        assert read_output(spec.output.path).column("truth").type == truth.type, name
        if name == "binary":  # bytes that are UTF-8 read as their text beside ones that are not
            assert {"pos", "neg", "b'\\xff'"} == set(summary.agreement.confusion)


def test_a_nan_truth_label_is_no_truth_label_as_a_null_one_is():
    """A float truth column written by Polars or DuckDB keeps NaN where a label is missing (pandas writes null): NaN
    was a truth class of its own ("nan"), every such row a disagreement, as a null one was before."""
    from pipelines.output.staging import StagingConfig, confusion

    config = StagingConfig("out", "id", "text", (), truth_column="truth", predicted_column="label")
    for truth in (pa.array([1.0, float("nan"), 0.0], pa.float64()), pa.array([1.0, float("nan"), 0.0], pa.float32())):
        rows = pa.table({"truth": truth, "label": ["1", "1", "1"]})
        assert confusion(rows, config) == {"1": {"1": 1}, "0": {"1": 1}}, truth.type


def test_rerun_of_a_finished_job_writes_nothing(finished):
    """It scores nothing either: its answer (`pipelines run --json`, a scheduled resume's ledger line) said
    shards_this_run 0 beside the finishing run's rows_this_run, wall time and speeds, as if this run had scored them."""
    spec, _, _ = finished("classifier")
    out = Path(spec.output.path)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = run_job(spec).to_json()
    assert again["status"] == "up to date"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    done = json.loads((out / "_run.json").read_text())
    assert done["rows_this_run"] > 0 and (again["rows_in"], again["rows_out"]) == (done["rows_in"], done["rows_out"])
    assert (again["shards_this_run"], again["rows_this_run"]) == (0, 0)
    assert [again[k] for k in ("rows_per_s", "tokens_per_s", "prompt_tokens_per_s", "padding_efficiency")] == [None] * 4


def test_a_changed_spec_is_refused_unless_overwritten(finished, tmp_path):
    spec, _, _ = finished("classifier")
    out = shutil.copytree(spec.output.path, tmp_path / "out")  # the finished job's output, to change here
    changed = spec_from_dict({**spec.model_dump(), "task": {"type": "text-classification", "return_all_scores": True},
                              "output": {**spec.output.model_dump(), "path": str(out)}})
    with pytest.raises(PipelineError, match="different job spec"):
        run_job(changed)
    run_job(changed, overwrite=True)
    assert "scores" in read_output(out).column_names


def test_real_minilm_zero_shot_topics(ray_session, tmp_path):
    from helpers import ROOT

    spec = spec_from_dict(
        {
            "input": {"paths": [str(ROOT / "jobs/data/news/part-4.parquet")], "label_column": "label"},
            "model": {"name": "minilm"},
            "task": {
                "type": "zero-shot-classification",
                "candidate_labels": ["World", "Sports", "Business", "Sci/Tech"],
                "hypothesis_template": "This is a news article about {}.",
            },
            "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 2},
            "output": {"path": str(tmp_path / "out"), "prediction_prefix": "predicted_"},
        }
    )
    summary = run_job(spec).to_json()
    assert summary["rows_out"] == 100
    assert summary["agreement"]["accuracy"] > 0.5  # four topics: chance is 0.25


def test_redo_changed_looks_up_the_changed_files_once_not_once_per_shard(monkeypatch):
    """`--redo-changed` picked the changed shards out of the input with the list of changed files made into a set
    again for every shard: a re-exported folder of 10,000 changed files cost 10,000 sets of 10,000 (1.5 s; 40 s for
    50,000) before anything ran, twice (the check without the lock, then under it)."""
    from pipelines import runner
    from pipelines.io.shards import Shard

    shards = [Shard(f"/in/f{i}.jsonl", f"/in/f{i}.jsonl", "jsonl", False, 10, 1, f"f{i}.jsonl") for i in range(300)]
    walked = []

    class Changed(list):
        def __iter__(self):
            walked.append(1)
            return super().__iter__()

    class Output:
        def check_spec(self, job, changed=None):
            pass

        def commits(self):
            return {s.key: SimpleNamespace(shard=s.key) for s in shards}  # a commit record, as far as it is read

        def part_files(self):
            return []

        def check_unrecorded(self, records, listed):
            pass

        def committed(self, records=None):
            return self.commits()

    monkeypatch.setattr(runner, "changed_inputs", lambda committed, shards, same: Changed(s.uri for s in shards))
    pending, committed = runner._pending(Output(), None, shards, True, prune=False, dry=True, redo_changed=True)
    assert pending == shards and committed == {}
    assert len(walked) <= 2, len(walked)


def test_an_actor_that_finds_the_model_folder_saved_again_since_the_run_began_refuses_to_score(tiny_models, tmp_path):
    """The driver hashes the model folder once, at the start, and refuses a resume whose files changed; but an actor
    that starts later (a pool growing to compute.max, one Ray restarts after a node is lost) loaded whatever the
    folder held then: a model retrained and saved into it meanwhile scored the rest of the run's shards, beside the
    earlier model's, in one output whose _job.json names the earlier files. Such an actor now refuses to score."""
    from pipelines.cluster.connect import worker_spec
    from pipelines.inference.identity import model_files
    from pipelines.runner import PredictAndStage, staging_config

    model = tmp_path / "model"
    shutil.copytree(tiny_models("classifier"), model)
    spec = make_spec(str(model), {"type": "text-classification"}, tmp_path / "out")
    began = model_files(spec.model)
    PredictAndStage(worker_spec(spec), staging_config(spec, []), model_files=began)  # the same files: it scores
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "label2id": {**config["label2id"]}}, indent=1))
    with pytest.raises(PipelineError, match=r"model.name .*model: its files changed since this run began"):
        PredictAndStage(worker_spec(spec), staging_config(spec, []), model_files=began)


def test_the_pool_actor_makes_its_imports_without_full_collections_and_sets_them_aside(tiny_models, tmp_path):
    """The pool's actor imports torch, Transformers and the predictor as :func:`~pipelines.inference.heavy_imports.
    import_predictor` makes them (no full collection meanwhile, every object then set aside), not with a plain import:
    on the main job its imports and model load took 2.73-2.90 s against 3.55-3.66 s (a 2-core Zen 4). In a fresh
    interpreter, as the actor's worker is."""
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out")
    code = (
        "import gc, json\n"
        "from pipelines.cluster.connect import worker_spec\n"
        "from pipelines.runner import PredictAndStage, staging_config\n"
        "from pipelines.spec import JobSpec\n"
        f"spec = JobSpec.model_validate(json.loads({json.dumps(json.dumps(spec.model_dump(mode='json')))}))\n"
        "full = gc.get_stats()[2]['collections']\n"
        "PredictAndStage(worker_spec(spec), staging_config(spec, []))\n"
        "print(json.dumps([gc.get_freeze_count(), gc.get_stats()[2]['collections'] - full]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    set_aside, full = json.loads(done.stdout.strip().splitlines()[-1])
    assert set_aside > 100_000, set_aside  # torch's and Transformers' objects
    assert full <= 1, full  # four or more while they were imported with collections on (the load may still make one)


def test_the_pool_is_built_without_rays_deprecation_warning_and_with_its_batch_retries(ray_session, tiny_models,
                                                                                     tmp_path):
    """Every run printed `RayDeprecationWarning: ray_remote_args is deprecated and will be removed in Ray 2.64` for
    max_task_retries, which Ray Data takes only there (pyproject keeps Ray below 2.64): the option is still passed,
    the warning is not printed."""
    import warnings

    from ray.data._internal.logical.operators.map_operator import MapBatches

    from pipelines.io.shards import list_shards
    from pipelines.runner import BATCH_RETRIES, build_dataset, columns_of

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "x"}])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]})
    shards = list_shards(spec.input.paths, spec.input.format)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(spec, shards, columns_of(spec))
    assert not [w for w in caught if "ray_remote_args" in str(w.message)], [str(w.message) for w in caught]
    op = dataset._logical_plan.dag
    assert isinstance(op, MapBatches) and op.ray_remote_args["max_task_retries"] == BATCH_RETRIES


def test_shards_another_version_committed_are_named_by_the_run_and_the_plan(finished, tmp_path, caplog):
    """No record said which version of this project read and scored a shard: an output resumed after an upgrade
    that reads some files' rows otherwise kept the earlier rows without a word (an upgrade audit's case). Each commit
    records the code's SCORING; a resume, and the plan, name the shards committed under another. A record from before
    rows cut at max_length were counted leaves its shard out of that count, and the summary says so."""
    import logging

    from pipelines.io.shards import list_shards
    from pipelines.output.records import SCORING
    from pipelines.planning.inputs import survey
    from pipelines.planning.progress import output_plan

    spec, _, _ = finished("classifier")
    out = tmp_path / "out"
    shutil.copytree(spec.output.path, out)
    copy = spec.model_copy(deep=True)
    copy.output.path = str(out)
    records = sorted((out / "_commits").glob("*.json"))
    assert {json.loads(r.read_text())["scored_by"] for r in records} == {SCORING}
    earlier = json.loads(records[0].read_text())
    records[0].write_text(json.dumps({**{k: v for k, v in earlier.items() if k != "cut"}, "scored_by": "2026-01-01"}))
    counted = json.loads(records[1].read_text())
    records[1].write_text(json.dumps({**counted, "cut": 2}))  # as if 2 of its rows were cut at max_length
    shards = list_shards(copy.input.paths, copy.input.format, exclude=[copy.output.path])
    note = output_plan(copy, shards, survey(shards)).note
    assert "1 committed shard(s)" in note and "as of 2026-01-01" in note and "--overwrite" in note, note
    write_jsonl(Path(copy.input.paths[0]) / "d.jsonl", [{"id": "d0", "text": SENTENCES[0], "label": "pos"}])
    try:
        with caplog.at_level(logging.WARNING, logger="pipelines.runner"):
            summary = run_job(copy)
            assert summary.shards_this_run == 1
    finally:
        (Path(copy.input.paths[0]) / "d.jsonl").unlink()
    assert any("as of 2026-01-01" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    # nor did such a record count the rows it cut at max_length: the summary says it counted without them
    assert (summary.rows_cut, summary.cut_uncounted_shards) == (2, 1)
    assert "2 of the 25 rows written; 1 shard(s) an earlier version committed not counted" in render(summary)
