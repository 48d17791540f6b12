"""What the speed-ups must not change: rows in input order per shard, a block seen twice left out, the
torch int8 path close to float32, oneDNN's packed linear layers giving torch's results, quantization auto
decided once per output, the run's timeline, the pool's actor running its model on one thread."""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import SENTENCES, batch_of, make_spec, torch_free_stages, write_jsonl
from transformers import AutoModel

from pipelines.errors import PipelineError
from pipelines.inference import packed_linear
from pipelines.inference import predictor as predictor_module
from pipelines.inference.aliases import minilm_dir
from pipelines.inference.packed_linear import PackedLinear, pack_linears
from pipelines.inference.predictor import ERROR, Predictor
from pipelines.io.reader import GROUP_BYTES, Columns, group_shards, read_group, read_shard
from pipelines.io.shards import list_shards
from pipelines.output.staging import StagingReport
from pipelines.output.summary import render
from pipelines.runner import PredictAndStage, Tally, run_job, staging_config
from pipelines.spec import ModelSpec, spec_from_dict


def lengths_rows(n: int) -> list[dict]:
    """Rows whose text lengths go up and down, so that sorting by length really reorders them."""
    return [{"id": f"r{i:03d}", "text": " ".join(["word"] * (1 + (i * 7) % 23))} for i in range(n)]


def test_the_reader_orders_by_length_and_the_output_keeps_input_order(ray_session, tiny_models, tmp_path):
    rows = lengths_rows(60)
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    [shard] = list_shards([str(tmp_path / "in")])
    [block] = list(read_shard(shard, Columns(text="text", id="id")))
    sizes = [len(t) for t in block.column("text").to_pylist()]
    assert sizes == sorted(sizes) and block.column("_row").to_pylist() != list(range(60))

    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     batching={"batch_size": 8})
    spec.input.paths = [str(tmp_path / "in")]
    run_job(spec)
    [part] = list((tmp_path / "out").glob("part-*.parquet"))
    assert pq.read_table(part).column("id").to_pylist() == [r["id"] for r in rows]  # one file, input order


@pytest.fixture(scope="module")
def length_shards_run(ray_session, tiny_models, tmp_path_factory):
    """One finished run of the classifier, 8 rows a batch, one call at a time in the actor (a CPU's default), over
    three shards of 30 rows of ``lengths_rows(90)`` and an empty one; returns its spec and the 90 rows. The run that
    test_small_shards_are_read_together_... checks, and the one-call-at-a-time reference of
    test_a_job_whose_actor_takes_two_batches_at_once_...; neither changes its input or output."""
    rows = lengths_rows(90)
    root = tmp_path_factory.mktemp("length-shards")
    for i, part in enumerate((rows[:30], rows[30:60], rows[60:])):
        write_jsonl(root / "in" / f"{i}.jsonl", part)
    (root / "in" / "3.jsonl").write_bytes(b"")
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, root / "out",
                     batching={"batch_size": 8})
    spec.input.paths = [str(root / "in")]
    run_job(spec)
    return spec, rows


def test_small_shards_are_read_together_sorted_by_length_and_each_keeps_its_rows(length_shards_run, tmp_path):
    """Shards under the group size share a read task whose blocks sort all their rows by length (closer lengths
    in each actor batch); a file that can't be read and an empty one are blocks of their own. The run still
    writes each shard's rows once, in input order."""
    spec, rows = length_shards_run
    shutil.copytree(spec.input.paths[0], tmp_path / "in")  # the run's input, and a file that can't be read
    (tmp_path / "in" / "4.jsonl.gz").write_bytes(b"not gzip")
    shards = list_shards([str(tmp_path / "in")])
    assert group_shards([s.size for s in shards]) == [[0], [1, 2, 3, 4]]  # the first alone: the first output sooner
    assert group_shards([100, GROUP_BYTES, 100, 100], most=1) == [[0], [1], [2], [3]]
    assert group_shards([10, GROUP_BYTES // 2, GROUP_BYTES // 2, 10, GROUP_BYTES, 10]) == [[0], [1, 2], [3], [4], [5]]

    blocks = list(read_group(shards, Columns(text="text", id="id")))
    empty, broken, together = blocks
    assert empty.num_rows == 0 and broken.column("_row").to_pylist() == [-1]
    sizes = [len(t) for t in together.column("text").to_pylist()]
    assert sizes == sorted(sizes) and len(set(together.column("_shard").to_pylist()[:30])) == 3
    texts = {(s, r): t for s, r, t in zip(*(together.column(c).to_pylist() for c in ("_shard", "_row", "text")))}
    by_key = {shard.key: shard for shard in shards}
    first_row = {key: 30 * int(Path(shard.path).name[0]) for key, shard in by_key.items()}
    assert all(texts[(key, r)] == rows[first_row[key] + r]["text"] for key, r in texts)

    # the run over these shards but the one that can't be read
    out = Path(spec.output.path)
    written = [pq.read_table(part).column("id").to_pylist() for part in sorted(out.glob("part-*"))]
    assert sorted(written) == sorted([[r["id"] for r in rows[i : i + 30]] for i in (0, 30, 60)])  # input order


def test_shards_whose_kept_columns_differ_in_type_are_sorted_each_on_its_own(tmp_path):
    """Without job-wide types for a passed-through column (an output that recorded none), shards that disagree
    can't be one table: each is still read whole and sorted, none lost."""
    write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": "x" * (9 - i), "n": i} for i in range(9)])
    write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": "y" * (9 - i), "n": f"v{i}"} for i in range(9)])
    shards = list_shards([str(tmp_path)])
    blocks = list(read_group(shards, Columns(text="text", id="id", keep=("n",))))
    assert [b.column("_shard").unique().to_pylist() for b in blocks] == [[s.key] for s in shards]
    for block in blocks:
        sizes = [len(t) for t in block.column("text").to_pylist()]
        assert sizes == sorted(sizes) and len(sizes) == 9


def test_a_block_that_comes_back_twice_is_left_out():
    tally = Tally()
    first = StagingReport(shard="k", shard_rows=6, rows=3, errors=0, row_ranges=[(0, 1), (3, 5)])
    again = StagingReport(shard="k", shard_rows=6, rows=1, errors=0, row_ranges=[(4, 5)])
    rest = StagingReport(shard="k", shard_rows=6, rows=3, errors=0, row_ranges=[(1, 3), (5, 6)])
    assert tally.add(first) is False
    assert tally.add(again) is False and tally.seen["k"] == 3  # row 4 was seen: the copy is dropped
    assert tally.add(rest) is True


@pytest.mark.parametrize("then", [dict(shard_rows=9, digest="a1"), dict(shard_rows=6, digest="b2")])
def test_a_shard_read_again_after_its_file_changed_is_not_committed_from_two_versions(then):
    """A read task Ray runs again (its output lost with a node) reads the file as it is then: rows of another
    version, or past the first read's end (an IndexError here before), must not be committed with the first
    read's rows."""
    tally = Tally(uris={"k": "s3://bucket/in/part-0.jsonl"})
    assert tally.add(StagingReport(shard="k", shard_rows=6, rows=3, errors=0, row_ranges=[(0, 3)], digest="a1")) is False
    with pytest.raises(PipelineError, match=r"input s3://bucket/in/part-0.jsonl changed while this run read it: two "
                                            r"reads of it differ \(6 rows, bytes a1; then .*nothing of it was committed"):
        tally.add(StagingReport(shard="k", rows=3, errors=0, row_ranges=[(3, 6)] if then["shard_rows"] == 6
                                else [(3, 9)], **then))


def test_dynamic_int8_stays_close_to_float32(tiny_models):
    texts = SENTENCES * 3
    full = Predictor(make_spec(tiny_models("encoder"), {"type": "feature-extraction"}))
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"})
    spec.model.quantization = "dynamic-int8"
    quantized = Predictor(spec)
    assert "quantized" in type(quantized.loaded.model.encoder.layer[0].attention.self.query).__module__
    a = np.array(full(batch_of(texts)).column("embedding").to_pylist())
    b = np.array(quantized(batch_of(texts)).column("embedding").to_pylist())
    assert (a * b).sum(axis=1).min() > 0.95  # normalised embeddings: the cosine of each row
    with pytest.raises(ValueError, match="quantizes the float32 model"):  # refused with the spec, before any work
        spec.model.dtype = "bfloat16"
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"dtype": "bfloat16"})})  # past the spec's
    # check (a copy is not validated): the loader's own
    with pytest.raises(PipelineError, match="quantizes a float32 model"):
        Predictor(spec)


def test_per_token_int8_stays_close_to_float32_and_a_rows_int8_products_do_not_depend_on_its_batch(tiny_models):
    """torch's dynamic-int8 quantizes a forward's input with one scale for all its rows and their padding, so a row's
    result changes with the rows beside it (the main job: 32 of 600 labels changed by the call size). With a scale
    per token, a layer's result for a row is the same to the bit alone or beside a row of large values."""
    from pipelines.inference.int8_linear import PerTokenInt8Linear

    texts = SENTENCES * 3
    full = Predictor(make_spec(tiny_models("encoder"), {"type": "feature-extraction"}))
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"})
    spec.model.quantization = "per-token-int8"
    quantized = Predictor(spec)
    model = quantized.loaded.model
    assert isinstance(model.encoder.layer[0].attention.self.query, PerTokenInt8Linear)
    assert not any(type(m) in (torch.nn.Linear, PackedLinear) for m in model.modules())
    a = np.array(full(batch_of(texts)).column("embedding").to_pylist())
    b = np.array(quantized(batch_of(texts)).column("embedding").to_pylist())
    assert (a * b).sum(axis=1).min() > 0.95  # normalised embeddings: the cosine of each row

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    row, loud = torch.randn(1, 5, 64), torch.randn(3, 5, 64) * 50
    int8 = PerTokenInt8Linear(linear)
    assert torch.equal(int8(row), int8(torch.cat([row, loud]))[:1])
    assert torch.equal(int8(torch.zeros(2, 64)), linear.bias.detach().expand(2, -1))  # no 0 × inf
    with torch.inference_mode():
        reference = linear(row)
        assert ((int8(row) - reference).abs().max() / reference.abs().max()) < 0.02
        dynamic = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), dtype=torch.qint8)
        assert not torch.equal(dynamic(row), dynamic(torch.cat([row, loud]))[:1])  # what it replaces in auto
    with pytest.raises(ValueError, match="per-token-int8 with model.dtype bfloat16"):  # refused with the spec
        spec.model.dtype = "bfloat16"
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"dtype": "bfloat16"})})  # past the spec's
    # check (a copy is not validated): the loader's own
    with pytest.raises(PipelineError, match="per-token-int8 quantizes a float32 model"):
        Predictor(spec)


def test_smooth_int8_computes_outlying_input_channels_in_float32_and_stays_closer_to_float32_than_per_token_int8():
    """A layer whose inputs hold a few channels 100 times louder than the rest (what a transformer's activations
    hold): per token, one int8 step of the loud channels swamps the others; after the migration, with the loudest
    channels computed from the float32 input, the layer is far closer to float32. A row's result still depends on
    that row alone."""
    from pipelines.inference.int8_linear import PerTokenInt8Linear, SmoothedInt8Linear, outlier_count

    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 48)
    loudness = torch.ones(128)
    loudness[[3, 77]] = 100.0
    calibration, row = torch.randn(64, 128) * loudness, torch.randn(2, 7, 128) * loudness
    smooth, plain = SmoothedInt8Linear(linear, calibration.abs().amax(0)), PerTokenInt8Linear(linear)
    assert {3, 77} <= set(smooth.outliers.tolist()) and len(smooth.outliers) == outlier_count(128) == 4
    with torch.inference_mode():
        reference = linear(row)
        smooth_error, plain_error = ((layer(row) - reference).abs().max() for layer in (smooth, plain))
        assert smooth_error < plain_error / 10
        loud = torch.randn(3, 7, 128) * 1000
        assert torch.equal(smooth(row), smooth(torch.cat([row, loud]))[:2])


def smoothed_layers(spec) -> list[torch.Tensor]:
    """What a smooth-int8 load of ``spec`` computed: each calibrated layer's factors, outlying channels and weights."""
    from pipelines.inference.int8_linear import SmoothedInt8Linear

    layers = [m for m in Predictor(spec).loaded.model.modules() if isinstance(m, SmoothedInt8Linear)]
    assert len(layers) == 6 * 6 + 1
    return [t for m in layers for t in (m.input_factor, m.outliers, m.weight_t)]


def test_smooth_int8_calibrates_every_load_to_the_same_layers_on_fixed_texts(tmp_path):
    """Every node's first load calibrates anew (each with a cache of its own here): the migration's factors and
    outlying channels come from fixed texts, not from a job's rows, and are the same at every calibration, at another
    torch thread count too; the base model's layers are calibrated (MiniLM's 37), its head (none here) is not."""
    spec = make_spec(minilm_dir(ModelSpec(name="minilm")), {"type": "feature-extraction"})
    spec.model.quantization = "smooth-int8"
    spec.model.cache_dir = str(tmp_path / "first")
    first = smoothed_layers(spec)
    spec.model.cache_dir = str(tmp_path / "again")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = smoothed_layers(spec)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_smooth_int8_keeps_its_calibration_and_a_later_load_of_the_model_reads_it(tmp_path, monkeypatch):
    """The calibration was most of a smooth-int8 load (MiniLM 1.2 s of 1.4; SmolLM2-135M 11 s), paid by every actor
    and every run. It is kept in the model cache: a later load of the same model, from another folder too, runs no
    calibration text and builds the same layers, so its predictions are the same."""
    from pipelines.inference import int8_linear

    model = shutil.copytree(minilm_dir(ModelSpec(name="minilm")), tmp_path / "model")
    spec = make_spec(str(model), {"type": "feature-extraction"})
    spec.model.quantization = "smooth-int8"
    spec.model.cache_dir = str(tmp_path / "cache")
    first = smoothed_layers(spec)
    assert len(list((tmp_path / "cache" / "calibration").glob("*.pt"))) == 1
    batch = batch_of(SENTENCES)
    expected = Predictor(spec)(batch)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(int8_linear, "input_maxima", no_calibration)
    spec.model.name = str(shutil.copytree(model, tmp_path / "elsewhere"))
    assert all(torch.equal(a, b) for a, b in zip(first, smoothed_layers(spec), strict=True))
    assert Predictor(spec)(batch).equals(expected)


def test_smooth_int8_calibrates_again_where_the_kept_calibrations_folder_cannot_be_searched(tiny_models, tmp_path,
                                                                                              monkeypatch):
    """A calibration folder another user made without the search permission (mode 700): asking whether the kept file
    is there raised PermissionError, and a run under quantization auto failed, blaming the model's files (an
    environment audit's case, as a user other than root); the README promises a kept file that can't be read is
    computed again. As root no mode stops a search, so the folder's answer is the error the kernel gives."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from pipelines.inference.int8_linear import calibration, input_maxima

    folder = tiny_models("classifier")
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    cache = tmp_path / "calibration"
    is_file = Path.is_file

    def not_searchable(path):
        if path.parent == cache:
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", not_searchable)
    found = calibration(model, tokenizer, SENTENCES, cache)
    expected = input_maxima(model, tokenizer, SENTENCES)
    assert found.keys() == expected.keys() and all(torch.equal(found[k], expected[k]) for k in found)


def test_smooth_int8_calibrates_again_for_other_weights_and_over_a_kept_file_it_cannot_use(tiny_models, tmp_path):
    """The kept calibration is the model's own: a model whose weights differ in one value gets its own; a kept file
    that is cut short or names layers the model doesn't have is calibrated again and replaced, not an error."""
    from transformers import AutoTokenizer

    from pipelines.inference.int8_linear import calibration, calibration_key

    folder = tiny_models("classifier")
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    texts = SENTENCES * 4
    key = calibration_key(model, tokenizer, texts)
    assert calibration_key(AutoModel.from_pretrained(folder), tokenizer, texts) == key
    other = AutoModel.from_pretrained(folder)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert calibration_key(other, tokenizer, texts) != key

    cache = tmp_path / "calibration"
    computed = calibration(model, tokenizer, texts, cache)
    kept = cache / f"{key}.pt"
    whole = kept.read_bytes()
    for unusable in (whole[: len(whole) // 2], None):
        if unusable is None:
            torch.save({"no.such.layer": torch.ones(4)}, kept)
        else:
            kept.write_bytes(unusable)
        again = calibration(model, tokenizer, texts, cache)
        assert again.keys() == computed.keys()
        assert all(torch.equal(again[k], computed[k]) for k in computed)
        assert kept.read_bytes() == whole


def test_per_token_int8_turns_a_float32_rounding_into_a_whole_int8_step():
    """Why per-token-int8's results move with the batch by more than float32's: the float parts before a layer round
    with the batch's shape (a last-bit change), and that can carry one of a token's values over an int8 rounding
    boundary, a step of 1/127 of the token's largest value (README: Reproducibility, under Guarantees)."""
    from pipelines.inference.int8_linear import PerTokenInt8Linear

    linear = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 1.0]]))
    int8 = PerTokenInt8Linear(linear)
    value = torch.tensor(2.5 / 127)
    before = int8(torch.stack([torch.tensor(1.0), value])[None])
    for _ in range(8):  # a few float32 steps up from a half-way point of the int8 grid
        value = torch.nextafter(value, torch.tensor(1.0))
        after = int8(torch.stack([torch.tensor(1.0), value])[None])
        if not torch.equal(after, before):
            break
    moved_in, moved_out = float(value - 2.5 / 127), float((after - before).abs().max())
    assert moved_in < 1e-8 and moved_out > 0.99 / 127  # an input moved by ~1e-9 moves the output by 1/127


def test_a_job_that_sets_cpu_int8_itself_is_warned_where_this_cpus_int8_product_is_far_slower_than_float32(
        monkeypatch, caplog):
    """On a CPU with AVX2 and no AVX-512 torch's int8 product took 30x float32's time (128 x 384 by 384 x 384), so a
    spec that sets per-token-int8 or smooth-int8 ran its matmuls that much slower, silently. The pool's actor now
    measures the product after it loads such a model on a CPU and warns; not on a GPU, nor at a quantization that
    runs no torch int8 product (an actor deciding auto passes the int8 candidates over there: test_fidelity)."""
    from pipelines import runner
    from pipelines.inference import int8_linear

    ratio = int8_linear.int8_product_ratio(rows=32, width=64, tries=1)  # measured here: a positive number
    assert 0 < ratio < float("inf")
    said = int8_linear.slow_int8_warning("smooth-int8", ratio=67.2)
    assert said is not None and said.startswith("model.quantization smooth-int8: torch's int8 matrix product took "
                                                 "67x float32's time on this CPU")
    assert "set model.quantization none, or auto" in said and "pipelines run --overwrite" in said
    assert int8_linear.slow_int8_warning("per-token-int8", ratio=0.6) is None  # AVX-512 VNNI: faster than float32

    measured: list[str] = []
    monkeypatch.setattr(int8_linear, "int8_product_ratio", lambda: measured.append("probe") or 67.2)
    for quantization, device in [("per-token-int8", "cpu"), ("smooth-int8", "cpu"), ("per-token-int8", "cuda"),
                                 ("none", "cpu"), ("dynamic-int8", "cpu")]:
        with caplog.at_level("WARNING", logger=runner.log.name):
            caplog.clear()
            runner.warn_of_slow_int8({"model": {"quantization": quantization}}, device)
        warned = [r.getMessage() for r in caplog.records if "int8 matrix product took" in r.getMessage()]
        assert len(warned) == (device == "cpu" and quantization in ("per-token-int8", "smooth-int8")), quantization
    assert measured == ["probe", "probe"]  # measured only where it can warn


def test_the_pools_actor_warns_of_a_slow_int8_product_after_loading_and_not_where_it_decides_auto(
        tiny_models, monkeypatch, caplog, tmp_path):
    """The wiring: the pool's actor, built in this process, at per-token-int8 on a CPU whose int8 product is 67x
    float32's, warns once it has loaded the model; one that decides auto (and so took int8 only where it timed it
    faster here) makes no probe of its own."""
    from pipelines import fidelity, runner
    from pipelines.cluster.connect import worker_spec
    from pipelines.inference import int8_linear
    from pipelines.runner import PredictAndStage, staging_config

    monkeypatch.setattr(int8_linear, "int8_product_ratio", lambda: 67.2)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out")
    spec.model.quantization = "per-token-int8"
    with caplog.at_level("WARNING", logger=runner.log.name):
        PredictAndStage(worker_spec(spec), staging_config(spec, []))
    assert [r.getMessage() for r in caplog.records if "int8 matrix product took 67x" in r.getMessage()]

    caplog.clear()
    decided = {"quantization": "per-token-int8", "dtype": "float32"}  # int8 decided here: measured here, no probe
    monkeypatch.setattr(fidelity, "run_precision", lambda raw, *deciding: {**raw, "model": {**raw["model"],
                                                                                             **decided}})
    with caplog.at_level("WARNING", logger=runner.log.name):
        PredictAndStage(worker_spec(spec), staging_config(spec, []), deciding=(None, None, 0.99))
    assert not [r for r in caplog.records if "int8 matrix product" in r.getMessage()]

    caplog.clear()  # a product that can't be timed on this CPU: the actor starts, unwarned (no unloadable model)

    probed = []

    def cannot_time() -> float:
        probed.append(True)
        raise RuntimeError("torch._int_mm: no kernel for this CPU")

    monkeypatch.setattr(int8_linear, "int8_product_ratio", cannot_time)
    with caplog.at_level("WARNING", logger=runner.log.name):
        PredictAndStage(worker_spec(spec), staging_config(spec, []))
    assert probed and not [r for r in caplog.records if "int8 matrix product" in r.getMessage()]


def test_per_token_int8_converts_a_linear_layer_one_module_holds_under_two_names():
    """A module that holds one Linear layer under two names (an alias) gets the int8 layer under both, not float32
    under the second (torch's named_children names a module once per parent)."""
    from pipelines.inference.int8_linear import PerTokenInt8Linear, quantize_per_token

    class Aliased(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.out = self.proj

    model = quantize_per_token(Aliased())
    assert isinstance(model.out, PerTokenInt8Linear) and model.out is model.proj


def test_a_cpu_models_linear_layers_run_packed_for_onednn_with_torchs_results():
    texts = SENTENCES * 3
    spec = make_spec(minilm_dir(ModelSpec(name="minilm")), {"type": "feature-extraction"})
    packed = Predictor(spec)
    layers = [m for m in packed.loaded.model.modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 6 * 6 + 1  # query, key, value, attention output, intermediate, output of 6 layers; pooler
    assert not any(type(m) is torch.nn.Linear for m in packed.loaded.model.modules())
    spec.compute.cpu_matmul = "torch"
    plain = Predictor(spec)
    assert not any(isinstance(m, PackedLinear) for m in plain.loaded.model.modules())
    a = np.array(packed(batch_of(texts)).column("embedding").to_pylist())
    b = np.array(plain(batch_of(texts)).column("embedding").to_pylist())
    assert np.abs(a - b).max() < 1e-5


def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack a layer of ``dtype`` on this CPU, as torch tells it (not by trying the code under test):
    bfloat16 needs AVX-512 or AVX-NE-CONVERT."""
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_is_all_or_nothing_a_layer_that_differs_leaves_the_model_as_it_was(monkeypatch, dtype):
    model = AutoModel.from_pretrained(minilm_dir(ModelSpec(name="minilm")), dtype=dtype).eval()
    if not onednn_packs(dtype):  # bfloat16 on a CPU without AVX-512: nothing is packed, the model is as it was
        assert pack_linears(model) == 0 and sum(type(m) is torch.nn.Linear for m in model.modules()) == 6 * 6 + 1
        return
    forward = PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: forward(self, x) * 1.05)
    assert pack_linears(model) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    monkeypatch.setattr(PackedLinear, "forward", forward)
    assert pack_linears(model) == 6 * 6 + 1


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("classifier", {"type": "text-classification"}),
        ("encoder", {"type": "zero-shot-classification", "candidate_labels": ["sports", "tech"], "method": "embedding"}),
        ("qa", {"type": "question-answering"}),
        ("token-classifier", {"type": "token-classification", "ignore_labels": []}),
        ("mlm", {"type": "fill-mask", "mask_placeholder": "<mask>"}),  # the output layer through fill-mask's hook
        ("causal", {"type": "text-generation", "max_new_tokens": 6}),  # this project's decoding loop
        ("seq2seq", {"type": "summarization", "max_new_tokens": 6}),  # model.generate
    ],
)
def test_every_task_gives_the_same_predictions_on_packed_layers(tiny_models, monkeypatch, kind, task):
    monkeypatch.setattr(packed_linear, "MIN_WEIGHTS", 0)  # the tiny models' layers are all small: pack them all
    texts = ["Paris is the capital of <mask> .", "Obama visited London <mask> Berlin .", *SENTENCES]
    batch = batch_of(texts).append_column("context", pa.array(texts)).append_column(
        "question", pa.array(["Where is Paris?"] * len(texts))
    )
    spec = make_spec(tiny_models(kind), task)
    packed = Predictor(spec)
    assert any(isinstance(m, PackedLinear) for m in packed.loaded.model.modules())
    spec.compute.cpu_matmul = "torch"
    got, expected = torch_free_stages(packed, batch).to_pylist(), Predictor(spec)(batch).to_pylist()
    assert len(got) == len(expected) and all(same(a, b) for a, b in zip(got, expected)), (got, expected)


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("classifier", {"type": "text-classification"}),
        ("nli", {"type": "zero-shot-classification", "candidate_labels": ["sports", "business", "politics"]}),
        ("token-classifier", {"type": "token-classification", "ignore_labels": []}),
        ("qa", {"type": "question-answering"}),
        ("mlm", {"type": "fill-mask", "mask_placeholder": "<mask>"}),  # a tied output layer, through fill-mask's hook
        ("seq2seq", {"type": "translation", "max_new_tokens": 6}),  # T5 reads wo.weight's dtype: int8
        ("gpt2", {"type": "llm-label", "candidate_labels": ["yes", "no"], "prompt_template": "{text}\nAnswer:"}),
        ("causal", {"type": "text-generation", "max_new_tokens": 6}),
    ],
)
@pytest.mark.parametrize("quantization", ["per-token-int8", "smooth-int8"])
def test_every_task_runs_under_cpu_int8_close_to_float32(tiny_models, kind, task, quantization):
    texts = ["Paris is the capital of <mask> .", "Obama visited London <mask> Berlin .", *SENTENCES]
    batch = batch_of(texts).append_column("context", pa.array(texts)).append_column(
        "question", pa.array(["Where is Paris?"] * len(texts))
    )
    spec = make_spec(tiny_models(kind), task)
    expected = Predictor(spec)(batch).to_pylist()
    spec.model.quantization = quantization
    quantized = Predictor(spec)
    assert not any(type(m) in (torch.nn.Linear, PackedLinear) for m in quantized.loaded.model.modules())
    got = quantized(batch).to_pylist()
    assert [row["_error"] for row in got] == [row["_error"] for row in expected]
    for a, b in zip(got, expected):
        for name in ("score", "predicted_score"):
            if a.get(name) is not None:
                assert abs(a[name] - b[name]) < 0.01, (a, b)


def same(a, b) -> bool:
    """Equal, floats (at any depth: scores in lists of entities, answers) within 1e-4."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_layer_onednn_cannot_pack_leaves_the_model_on_torchs_matmul(monkeypatch):
    model = AutoModel.from_pretrained(minilm_dir(ModelSpec(name="minilm"))).eval()

    def refuse(self, linear):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw")

    monkeypatch.setattr(PackedLinear, "__init__", refuse)  # what torch raises for bfloat16 on a CPU without AVX-512
    assert pack_linears(model) == 0
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == 6 * 6 + 1


def test_quantization_auto_is_decided_once_and_said(ray_session, tiny_models, tmp_path):
    rows = [{"id": f"x{i}", "text": SENTENCES[i % len(SENTENCES)]} for i in range(40)]
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    raw = {
        "input": {"paths": [str(tmp_path / "in")]},
        "model": {"name": tiny_models("classifier"), "quantization": "auto", "fidelity": {"rows": 40},
                  "cache_dir": str(tmp_path / "cache")},
        "task": {"type": "text-classification"},
        "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1},
        "output": {"path": str(tmp_path / "out")},
    }
    recorded_at_commit = []  # the pool's actor decides: _job.json holds its decision before a shard is visible

    def before_visible(shard):
        recorded_at_commit.append(json.loads((tmp_path / "out" / "_job.json").read_text())["precision"])

    summary = run_job(spec_from_dict(raw), before_visible=before_visible)
    chosen = json.loads((tmp_path / "out" / "_job.json").read_text())["precision"]
    assert chosen == summary.precision and chosen["quantization"] in ("per-token-int8", "smooth-int8", "none")
    assert recorded_at_commit == [chosen]
    assert summary.check_s is not None and 0 < summary.check_s < summary.wall_s  # measured within the run's time
    assert "quantization auto's check: " in render(summary)
    page = (tmp_path / "out" / "_report.html").read_text()
    assert "quantization auto&#x27;s check" in page or "quantization auto's check" in page
    said = chosen["quantization"] if chosen["quantization"] != "none" else chosen["dtype"]
    # the page said only "(auto, cpu)": the precision the run used was in _run.json and the terminal summary alone
    assert f"(quantization auto: {said}, cpu)" in (tmp_path / "out" / "_report.html").read_text()
    [commit] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_commits").glob("*.json")]
    assert commit["precision"] == said  # as the actor that scored it loaded its model
    assert f"<td>precision of the shards</td><td>{said} (1 shard)</td>" in page  # the page says it too
    assert summary.fidelity is None or summary.fidelity.agreement >= 0.99
    [kept] = list((tmp_path / "cache" / "precision").glob("*.json"))
    timeline = summary.timeline
    assert timeline["process_start"] <= timeline["ray_ready"] <= timeline["first_block"] <= timeline["last_commit"]
    assert timeline["actor_ready"] <= timeline["first_staged"] <= timeline["first_block"]  # staged, then sent back
    # the first actor's own start, in its own clock: its constructor after the execution began, its imports, then
    # the check (this run decides auto) and its model's load
    assert timeline["execution_start"] < timeline["actor_start"] < timeline["actor_imported"] < timeline["actor_ready"]
    assert timeline["actor_ready"] - timeline["actor_imported"] > summary.check_s  # the check came before the load

    # another output of the same rows (of the same model and task) takes the kept decision instead of measuring again
    before = kept.stat().st_mtime_ns
    other = run_job(spec_from_dict({**raw, "output": {"path": str(tmp_path / "other")}}))
    assert other.precision == chosen and kept.stat().st_mtime_ns == before
    assert other.check_s is None and "quantization auto's check" not in render(other)
    # a job on other rows is decided on its own sample: its check is never another input's (which it reported as
    # its own, 'passed', when it fell below its bar on its own rows)
    write_jsonl(tmp_path / "in2" / "b.jsonl", [{**r, "text": r["text"].upper()} for r in rows[:30]])
    third = run_job(spec_from_dict({**raw, "input": {"paths": [str(tmp_path / "in2")]},
                                    "output": {"path": str(tmp_path / "third")}}))
    decisions = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "precision").glob("*.json")]
    assert sorted(d.get("rows") for d in decisions) == [30, 40]
    assert third.fidelity is None or third.fidelity.rows == 30

    from pipelines.planning.progress import recorded_precision

    assert recorded_precision(spec_from_dict(raw)) == chosen  # what `plan --measure` measures for this output


@pytest.mark.parametrize(
    ("compute", "cpus", "threads"),
    [
        ({"size": 1}, 2, 2),  # one actor on a 2-core machine: both cores
        ({"size": 2, "cpus_per_actor": 0.5}, 2, 1),
        ({"min": 1, "max": 8, "cpus_per_actor": 1}, 8, 1),
        ({"size": 4, "cpus_per_actor": 1}, 8, 2),
        ({"size": 1, "threads_per_actor": 3}, 2, 3),  # what the spec says
    ],
)
def test_torch_threads_share_the_node_among_the_actors_on_it(compute, cpus, threads):
    from pipelines.spec import ComputeSpec

    assert ComputeSpec(**compute).torch_threads(cpus) == threads


def test_device_auto_takes_a_gpu_only_when_the_actor_was_given_one(monkeypatch):
    # Ray does not hide a node's GPUs from an actor that asked for none: `auto` must not use one anyway.
    import torch

    from pipelines.inference.loading import select_device

    def device(model_device: str, gpus: float) -> str:
        spec = spec_from_dict({
            "input": {"paths": ["in"]}, "model": {"name": "minilm", "device": model_device},
            "task": {"type": "feature-extraction"}, "output": {"path": "out"}, "compute": {"gpus_per_actor": gpus},
        })
        return select_device(spec.model, spec.actor_device()).type

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the decision, on a machine without a GPU
    assert device("auto", 0) == "cpu"
    assert device("auto", 0.5) == "cuda"
    assert device("cpu", 1) == "cpu"
    # device cuda where no GPU is visible (an actor Ray placed on a node without one): the fix named is the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match=r"no CUDA GPU is visible here.*compute.gpus_per_actor"):
        device("cuda", 0)


def test_quantization_auto_takes_the_fastest_precision_within_the_bar_float32_included():
    from pipelines.fidelity import Precision, concrete, fastest_within
    from pipelines.output.records import Fidelity

    spec = make_spec("minilm", {"type": "feature-extraction"})
    int8, bf16 = concrete(spec, Precision("dynamic-int8", "float32")), concrete(spec, Precision("none", "bfloat16"))

    def result(agreement: float, seconds: float, float32_s: float) -> Fidelity:
        return Fidelity(task="feature-extraction", quantization="", rows=256, measure="cosine_mean",
                        agreement=agreement, predict_s=seconds, reference_predict_s=float32_s)

    # both within the bar: the faster one, whatever the order tried (int8 used to win by coming first)
    found = fastest_within([(int8, result(0.995, 4.0, 9.0)), (bf16, result(0.999, 3.0, 9.0))], 0.99)
    assert (found["quantization"], found["dtype"]) == ("none", "bfloat16") and "fastest" in found["why"]
    # the fastest candidate below the bar is not taken
    found = fastest_within([(int8, result(0.91, 2.0, 9.0)), (bf16, result(0.996, 3.0, 9.0))], 0.99)
    assert (found["quantization"], found["dtype"]) == ("none", "bfloat16")
    assert found["fidelity"]["agreement"] == 0.996
    # float32 faster than every candidate within the bar: float32
    found = fastest_within([(int8, result(0.999, 5.0, 4.0)), (bf16, result(0.999, 6.0, 4.0))], 0.99)
    assert (found["quantization"], found["dtype"], found["fidelity"]) == ("none", "float32", None)
    assert "float32 the fastest within the bar" in found["why"]


def test_quantization_auto_on_a_gpu_without_bf16_tries_float16():
    from pipelines.fidelity import Precision, candidates

    assert candidates("cuda", bf16=True) == [Precision("none", "bfloat16")]
    assert candidates("cuda", bf16=False) == [Precision("none", "float16")]
    # on a CPU, int8 with a scale per token: torch's dynamic-int8 changes labels with the rows batched together
    assert [c.quantization for c in candidates("cpu", bf16=False)] == ["per-token-int8", "smooth-int8"]


def test_an_output_started_at_dynamic_int8_is_not_resumed_on_a_gpu(tmp_path):
    from pipelines.fidelity import auto_precision

    spec = spec_from_dict({
        "input": {"paths": [str(tmp_path)]}, "model": {"name": "minilm", "quantization": "auto", "device": "auto"},
        "task": {"type": "feature-extraction"}, "output": {"path": str(tmp_path / "out")},
        "compute": {"gpus_per_actor": 1},
    })
    for cpu_only in ("dynamic-int8", "per-token-int8"):
        with pytest.raises(PipelineError, match=f"chose {cpu_only} .*runs only on a CPU.*--overwrite"):
            auto_precision(spec, [], {"quantization": cpu_only, "dtype": "float32"})
    kept, _ = auto_precision(spec, [], {"quantization": "none", "dtype": "bfloat16"})
    assert (kept.model.quantization, kept.model.dtype) == ("none", "bfloat16")


def test_the_pools_actor_tokenizes_the_next_batch_while_its_model_thread_runs_the_forwards(
    tiny_models, tmp_path, monkeypatch
):
    """Ray Data builds the actor on one thread and calls it on others, with up to ``calls_per_actor`` batches at
    once (two here). The model's load and every batch's forwards share one thread (else torch's OpenMP runs a second team
    of threads on the same cores); the next batch is tokenized on its caller's thread while they run: the first
    batch's forwards wait here until the second batch is tokenized, which never happens where tokenizing
    shares the model's thread."""
    threads: dict[str, set[int]] = {"load": set(), "infer": set(), "encode": set()}
    encoded, both_encoded, waited = [], threading.Event(), []

    class Recorded(Predictor):
        def __init__(self, spec):
            threads["load"].add(threading.get_ident())
            super().__init__(spec)

        def _encode(self, batch, rows):
            features = super()._encode(batch, rows)
            threads["encode"].add(threading.get_ident())
            encoded.append(len(rows))
            if len(encoded) == 2:
                both_encoded.set()
            return features

        def infer(self, pending):
            threads["infer"].add(threading.get_ident())
            if not waited:
                waited.append(both_encoded.wait(timeout=120))  # a guard against a hang, not a timing
            return super().infer(pending)

    monkeypatch.setattr(predictor_module, "Predictor", Recorded)
    write_jsonl(tmp_path / "in" / "a.jsonl", lengths_rows(40))
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out")
    shards = list_shards([str(tmp_path / "in")])
    actor = PredictAndStage(spec.model_dump(mode="json"), staging_config(spec, shards))
    [block] = list(read_shard(shards[0], Columns(text="text", id="id")))
    halves = [block.slice(0, 20), block.slice(20)]
    with ThreadPoolExecutor(2) as callers:
        staged = list(callers.map(actor, halves))
    reports = [report for table in staged for report in StagingReport.from_table(table)]
    assert sum(report.rows for report in reports) == 40
    assert waited == [True], "the second batch was not tokenized while the first one's forwards ran"
    assert len(threads["load"]) == 1 and threads["infer"] == threads["load"]
    assert threading.get_ident() not in threads["load"]  # neither Ray Data's thread nor the caller's
    assert not threads["encode"] & threads["load"] and len(threads["encode"]) == 2  # each on its caller's


def test_a_job_whose_actor_takes_two_batches_at_once_writes_each_row_once_with_the_same_predictions(
    length_shards_run, tiny_models, tmp_path
):
    """``compute.calls_per_actor: 2`` through real Ray Data on this CPU: calls of 8 rows
    overlap in the actor, finish in any order, and every shard still holds each of its rows once, in input
    order, predicted as one call at a time predicts them (the module's run of the same shards)."""
    alone, rows = length_shards_run
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out2",
                     batching={"batch_size": 8}, compute={"calls_per_actor": 2})
    spec.input.paths = alone.input.paths
    assert (alone.calls_per_actor(), spec.calls_per_actor()) == (1, 2)
    run_job(spec)
    written = {}
    for calls, done in ((1, alone), (2, spec)):
        parts = Path(done.output.path).glob("part-*.parquet")
        written[calls] = {part.name: pq.read_table(part).select(["id", "label", "score"]).to_pylist() for part in parts}
    shards = sorted([r["id"] for r in rows[i * 30 : (i + 1) * 30]] for i in range(3))
    assert sorted([row["id"] for row in part] for part in written[2].values()) == shards
    assert written[2].keys() == written[1].keys()
    for name, part in written[2].items():
        alone_part = written[1][name]
        assert [r["label"] for r in part] == [r["label"] for r in alone_part]
        assert [r["score"] for r in part] == pytest.approx([r["score"] for r in alone_part], abs=1e-6)


def test_a_task_that_decodes_in_its_forward_holds_the_tokenizer_through_it(tiny_models):
    """Generation decodes in its forward (stop strings); a tokenizer serves one thread at a time, so no other
    batch may be tokenized meanwhile. An encoder's forward leaves the tokenizer free."""
    free: dict[str, bool] = {}

    def probe(predictor, name):
        def forward(features, index):
            def try_it():  # from another thread: the lock is re-entrant for the one that holds it
                free[name] = predictor.tokenizer_lock.acquire(blocking=False)
                if free[name]:
                    predictor.tokenizer_lock.release()

            other = threading.Thread(target=try_it)
            other.start()
            other.join()
            return original(features, index)

        original = predictor._forward
        predictor._forward = forward

    generation = Predictor(make_spec(tiny_models("causal"), {"type": "text-generation", "max_new_tokens": 2}, "/x"))
    classifier = Predictor(make_spec(tiny_models("classifier"), {"type": "text-classification"}, "/x"))
    for name, predictor in (("generation", generation), ("classifier", classifier)):
        probe(predictor, name)
        predictor(batch_of(SENTENCES[:3]))
    assert free == {"generation": False, "classifier": True}


#: Two texts of one length with their masks in other places, each filling micro-batches of 4 rows of its own:
#: two lanes then run micro-batches of one shape whose masks differ.
MASKED = (["<mask> is a paris ."] * 4 + ["paris is a <mask> ."] * 4) * 3


def rounded(value):
    """Predictions to compare across summation orders: floats to 4 places, everything else as it is."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "kind, task, rows, column",
    [
        ("encoder", {"type": "feature-extraction"}, SENTENCES * 6, "embedding"),
        ("mlm", {"type": "fill-mask", "mask_placeholder": "<mask>", "top_k": 2}, MASKED, "predictions"),
        (
            "causal",
            {"type": "llm-label", "candidate_labels": ["good", "bad", "not sure at all"], "return_all_scores": True,
             "prompt_template": "Review: {text}\nSentiment:"},
            SENTENCES * 6,
            "scores",
        ),
    ],
    ids=["feature-extraction", "fill-mask", "llm-label"],
)
def test_an_encoder_on_a_cpu_runs_its_micro_batches_in_lanes_with_the_same_results(
    tiny_models, kind, task, rows, column
):
    """Two micro-batches in flight at once, each forward on one torch thread; the predictions those of one forward
    at a time on both threads, row for row; the actor's threads as they were afterwards."""
    batching = {"max_rows": 4, "min_fill": 0}
    lanes = Predictor(make_spec(tiny_models(kind), task, batching=batching))
    alone = Predictor(make_spec(tiny_models(kind), task, batching=batching, compute={"cpu_lanes": False}))
    assert (lanes.lanes, alone.lanes) == (2, 1)
    seen: list[tuple[str, int]] = []
    both_in_flight = threading.Barrier(2, timeout=60)  # only waits out its timeout if the forwards never overlap
    original = lanes.loaded.model.forward

    def forward(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        if len(seen) <= 2:
            both_in_flight.wait()
        return original(*args, **kwargs)

    lanes.loaded.model.forward = forward
    head = lanes.loaded.model.get_output_embeddings()
    if head is not None:  # and both at the output layer at once (fill-mask selects its masks there)
        at_head = threading.Barrier(2, timeout=60)
        arrived: list[int] = []

        def meet(module, args):
            arrived.append(1)
            if len(arrived) <= 2:
                at_head.wait()

        head.register_forward_pre_hook(meet)
    got = torch_free_stages(lanes, batch_of(rows))
    want = alone(batch_of(rows))
    assert {name for name, _ in seen} == {"forward_0", "forward_1"} and {threads for _, threads in seen} == {1}
    assert len(seen) >= len(rows) // 4  # at most 4 rows per micro-batch
    assert got.column(ERROR).null_count == len(rows)
    if column == "embedding":
        vectors = np.array(got.column(column).to_pylist())
        np.testing.assert_allclose(vectors, np.array(want.column(column).to_pylist()), atol=1e-5)
    else:
        assert rounded(got.column(column).to_pylist()) == rounded(want.column(column).to_pylist())
    assert torch.get_num_threads() == 2


def test_lanes_only_where_forwards_are_independent_and_on_a_cpu(tiny_models):
    encoder = make_spec(tiny_models("encoder"), {"type": "feature-extraction"})
    assert encoder.lanes("cpu", 4) == 4
    assert encoder.lanes("cuda", 4) == encoder.lanes("cuda:1", 4) == 1  # the forward runs on the GPU
    off = make_spec(tiny_models("encoder"), {"type": "feature-extraction"}, compute={"cpu_lanes": False})
    assert off.lanes("cpu", 4) == 1
    bitsandbytes = encoder.model_copy(update={"model": encoder.model.model_copy(update={"quantization": "int8"})})
    assert bitsandbytes.lanes("cpu", 4) == 1  # its layers update their own state in the forward
    generation = make_spec(tiny_models("causal"), {"type": "text-generation", "max_new_tokens": 2})
    assert Predictor(generation).lanes == 1  # decoding keeps one forward at a time


def test_a_call_of_fewer_micro_batches_than_lanes_runs_them_on_the_callers_thread_with_every_thread(tiny_models):
    """One micro-batch would leave a lane idle: it runs on the thread that called, on all the actor's threads."""
    predictor = Predictor(make_spec(tiny_models("encoder"), {"type": "feature-extraction"}))
    assert predictor.lanes == 2
    seen: list[tuple[str, int]] = []
    original = predictor.loaded.model.forward

    def forward(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return original(*args, **kwargs)

    predictor.loaded.model.forward = forward
    predictor(batch_of([SENTENCES[0]] * 3))  # three rows of one length: one micro-batch
    assert seen == [(threading.current_thread().name, 2)]


def test_out_of_memory_in_a_lane_ends_the_lanes_and_every_row_is_predicted(tiny_models):
    """The lanes hold several micro-batches' activations at once: out of memory there runs the micro-batch again
    alone, and the actor goes on one forward at a time."""
    predictor = Predictor(make_spec(tiny_models("classifier"), {"type": "text-classification"}, batching={"max_rows": 4}))
    expected = predictor(batch_of(SENTENCES * 4)).column("label").to_pylist()
    original = predictor.loaded.model.forward
    threads: list[str] = []

    def forward(*args, **kwargs):
        threads.append(threading.current_thread().name)
        if threading.current_thread().name.startswith("forward"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes")
        return original(*args, **kwargs)

    predictor.loaded.model.forward = forward
    out = predictor(batch_of(SENTENCES * 4))
    assert out.column(ERROR).null_count == out.num_rows and out.column("label").to_pylist() == expected
    assert any(name.startswith("forward") for name in threads)  # it was tried in the lanes first
    threads.clear()
    out = predictor(batch_of(SENTENCES * 4))
    assert out.column("label").to_pylist() == expected
    assert threads and not any(name.startswith("forward") for name in threads)  # one at a time from then on
    assert torch.get_num_threads() == 2


def test_a_glob_lists_only_the_folders_it_can_match(tmp_path):
    """On a local disk ``incoming/*.jsonl`` is listed as incoming/ alone: a scheduled job's tick used to list every
    file under the glob's fixed part, so an incoming/done/ that grows every night cost more every night. Folders
    before a ``**`` are entered only when their name matches."""
    import pyarrow.fs as pafs

    from pipelines.io.shards import _glob, _glob_listing

    class Recording(pafs.LocalFileSystem):
        def __init__(self) -> None:
            super().__init__()
            self.listed: list[tuple[str, bool]] = []

        def get_file_info(self, paths_or_selector):
            if isinstance(paths_or_selector, pafs.FileSelector):
                self.listed.append((paths_or_selector.base_dir, paths_or_selector.recursive))
            return super().get_file_info(paths_or_selector)

    incoming = tmp_path / "incoming"
    for name in ("a.jsonl", "b.jsonl", "done/2024/old.jsonl", "2025-01/c.jsonl", "2025-02/d.jsonl", "x/e.jsonl"):
        write_jsonl(incoming / name, [{"id": name, "text": "words"}])

    def glob(pattern: str) -> tuple[list[str], list[tuple[str, bool]]]:
        fs = Recording()
        base, files = _glob(pattern, fs, pattern)
        found = sorted(info.path[len(base) + 1 :] for _, info in files)
        return found, [(path[len(str(incoming)) :], recursive) for path, recursive in fs.listed]

    assert glob(f"{incoming}/*.jsonl") == (["a.jsonl", "b.jsonl"], [("", False)])
    assert glob(f"{incoming}/2025-*/*.jsonl") == (
        ["2025-01/c.jsonl", "2025-02/d.jsonl"], [("", False), ("/2025-01", False), ("/2025-02", False)]
    )
    assert glob(f"{incoming}/2025-*/**/*.jsonl")[1] == [("", False), ("/2025-01", False), ("/2025-02", False)]
    assert glob(f"{incoming}/x*")[0] == ["x/e.jsonl"]  # a matched folder: everything under it

    # A store is listed whole under the fixed part: arrow's listing of one level on GCS leaves out folders that are
    # only key prefixes (their files would be lost), and a request per folder costs more than a thousand keys a
    # request. (A SubTreeFileSystem stands in for a store: it is not the local one.)
    store = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    listed = {info.path for info in _glob_listing(store, "incoming", ["*.jsonl"]) if info.is_file}
    assert "incoming/done/2024/old.jsonl" in listed and len(listed) == 6


def test_smooth_int8_loads_where_its_calibration_cannot_be_kept_and_says_so(tiny_models, tmp_path, caplog):
    """A model cache that can't be written (read-only, or a file where its folder should be) costs the next load a
    calibration, with a warning that names the place; the load itself goes on with the layers calibrated."""
    from transformers import AutoTokenizer

    from pipelines.inference.int8_linear import calibration, input_maxima

    folder = tiny_models("classifier")
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with caplog.at_level("WARNING", logger="pipelines.inference.int8_linear"):
        found = calibration(model, tokenizer, SENTENCES, blocked / "calibration")
    expected = input_maxima(model, tokenizer, SENTENCES)
    assert found.keys() == expected.keys() and all(torch.equal(found[k], expected[k]) for k in expected)
    assert "could not keep the calibration in" in caplog.text and str(blocked) in caplog.text


def test_a_cache_write_that_fails_midway_leaves_no_part_file(tiny_models, tmp_path, monkeypatch, caplog):
    """smooth-int8's calibration and quantization auto's decision are written to a temporary file, then moved into
    place. Where the move or the write failed after the temporary file was made (a full disk), the part written
    stayed in the model cache, never read and never removed, taking room on the disk that had run out of it. Now the
    failure warns and leaves no `.tmp` behind."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from pipelines.fidelity import _write_decision
    from pipelines.inference.int8_linear import calibration

    def full_disk(self, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", full_disk)  # the calibration's move into place
    monkeypatch.setenv("PIPELINES_WRITE_FAILS_AT", "key.json")  # the decision's write, after its temporary file
    folder = tiny_models("classifier")
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with caplog.at_level("WARNING"):
        calibration(model, tokenizer, SENTENCES, tmp_path / "calibration")
        _write_decision(tmp_path / "precision" / "key.json", {"quantization": "none", "dtype": "float32"})
    assert "could not keep the calibration" in caplog.text and "could not keep the decision" in caplog.text
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_a_processs_start_is_read_from_its_stat_line_whatever_its_name_holds():
    """The start is field 22 of /proc/PID/stat, counted after the name's last ")": a name may hold spaces and ")"."""
    from pipelines.runner import started_at

    fields = " ".join(["S"] + [str(n) for n in range(4, 22)] + ["250000", "0", "0"])  # field 22: 250,000 ticks
    for name in (b"python", b"a) b (c", b"x) 1 2 3 )"):
        line = b"4242 (" + name + b") " + fields.encode()
        assert started_at(line, since_boot=3000.5, now=1_000_000.0, ticks_per_s=100) == 1_000_000.0 - 500.5


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux's /proc: elsewhere psutil's create_time")
def test_a_runs_timeline_starts_when_its_process_started_not_up_to_a_second_before():
    """The timeline's ``process_start`` lies between the moments just before and just after the process was
    spawned. psutil's create_time adds the process's age at its start (in clock ticks since boot) to the boot time
    that /proc/stat gives in whole seconds: up to a second early, which every "s after the command" figure of the
    timeline, the report and the plan's measured start-up then carried (0.91 s on the 2-core machine)."""
    import subprocess
    import sys
    import time

    tick = 1 / os.sysconf("SC_CLK_TCK")  # the kernel keeps a process's start in clock ticks
    before = time.time()
    child = subprocess.Popen(
        [sys.executable, "-c", "from pipelines.runner import _process_start; print(repr(_process_start()))"],
        stdout=subprocess.PIPE, text=True,
    )
    spawned = time.time()
    out, _ = child.communicate()
    assert child.returncode == 0
    started = float(out)
    assert before - tick <= started <= spawned + tick, (started - before, spawned - before)


# A child that starts a local Ray as a run does (``whole``: without quick_local_start's changes), then exits as the
# command does, and says (one JSON line, last) which of Ray's processes it started, the dashboard's address in the
# GCS, whether Ray's get_node was asked only once the GCS's table had the node, which processes the shutdown had to
# wait out (a grace period that ran out: TimeoutExpired), what it slept for half a second or more, how the
# monitor (where there was one) and the raylet ended, which of Ray's processes share its process group, and Ray's
# connect settings in the GCS's system config (``whole`` on Ray 2.60 has them too: they are not quick_local_start's).
_EXIT_SCRIPT = """
import atexit, json, subprocess, sys, time
waited, slept, tables, asked = [], [], [], []
def said():  # registered first, so it runs last: after Ray's shutdown
    print(json.dumps({"processes": processes, "dashboard": dashboard, "asked_once_registered": asked,
                      "waited": waited, "slept": slept, "raylet": raylet.poll(), "together": sorted(together),
                      "config": config,
                      "monitor": monitor.poll() if monitor else None}), flush=True)
atexit.register(said)
import ray._raylet, ray._private.services as services
from pipelines.cluster import connect
if sys.argv[1] == "whole":
    connect.QUICK_START = ()
Gcs = ray._raylet.GcsClient
class Watched:  # Ray's GcsClient, saying the node ids in each table the start looks at
    def __init__(self, *args, **kwargs):
        self.client = Gcs(*args, **kwargs)
    def get_all_node_info(self, *args, **kwargs):
        table = self.client.get_all_node_info(*args, **kwargs)
        tables.append({node.hex() for node in table})
        return table
    def __getattr__(self, name):
        return getattr(self.client, name)
ray._raylet.GcsClient = Watched
get_node = services.get_node
def asking(address, node_id):  # Ray's own get_node, under quick_local_start's wait
    asked.append(bool(tables) and node_id in tables[-1])
    return get_node(address, node_id)
services.get_node = asking
connect.start_local()
import ray
from ray._private.worker import _global_node
from ray.experimental import internal_kv
processes = sorted(_global_node.all_processes)
dashboard = (internal_kv._internal_kv_get("dashboard", namespace="dashboard") or b"").decode()
from ray._private.state import state
config = {name: value for name, value in state.get_system_config().items() if name.startswith("raylet_client")}
[raylet] = [i.process for i in _global_node.all_processes["raylet"]]
monitor = next((i.process for i in _global_node.all_processes.get("monitor", [])), None)
assert ray.get(ray.remote(lambda: 1).remote()) == 1
import os, psutil
together = []  # Ray's processes in this one's process group (the worker that ran the task among those looked at)
for child in psutil.Process().children(recursive=True):
    try:
        if os.getpgid(child.pid) == os.getpgrp():
            together.append(child.name())
    except (OSError, psutil.Error):
        pass
wait, sleep = subprocess.Popen.wait, time.sleep
def timed_out(self, timeout=None):
    try:
        return wait(self, timeout)
    except subprocess.TimeoutExpired:
        waited.append(next((a.rsplit("/", 1)[-1] for a in self.args if a.endswith(".py")), str(self.args[0])))
        raise
def long(seconds):
    if seconds >= 0.5:
        slept.append(seconds)
    sleep(seconds)
subprocess.Popen.wait, time.sleep = timed_out, long
"""


def _local_ray_child(how: str) -> dict:
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, how], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_local_ray_starts_without_the_api_server_and_monitor_and_stops_without_waiting():
    """A local Ray the command starts runs no API server (with the dashboard off it ran one module; Ray's start
    waited 1.6-1.9 s for it on the 2-core machine) and no autoscaler monitor (one machine has no node to add), yet
    runs tasks; the dashboard's address its agent waits for is one no server has; Ray's get_node (which looks once a
    second) is asked once the GCS has the node; Ray's processes try a refused local connection again after 0.1 s (the
    raylet's to its own object store waited a whole second in 4 of 10 starts). At exit neither of Ray's waits is
    left (see the next test)."""
    said = _local_ray_child("quick")
    assert said["processes"] == ["gcs_server", "log_monitor", "raylet"], said  # before: 'dashboard', 'monitor' too
    assert said["dashboard"] == "127.0.0.1:0", said  # none: the dashboard agent logged an error every second
    assert said["asked_once_registered"] == [True], said  # before: asked at once, and it looked once a second
    assert said["waited"] == [] and said["slept"] == [], said
    assert said["raylet"] == 0, said  # stopped by Ray's shutdown
    # none in the command's process group, which Airflow's killpg signals: before, the GCS, the raylet, its agents
    assert said["together"] == [], said
    # Ray's processes try a refused local connection again after 0.1 s, not 1 s (before: {}, Ray's own)
    assert said["config"] == {"raylet_client_connect_timeout_milliseconds": 100,
                              "raylet_client_num_connect_attempts": 100}, said


def test_a_local_rays_stop_at_exit_waits_out_no_process_and_sleeps_no_half_second():
    """Where a local Ray starts whole (a Ray without the functions quick_local_start replaces): Ray's shutdown at
    exit stops its processes one after another, the GCS before the autoscaler's monitor; the monitor's SIGTERM
    handler then tries to tell the drivers through the GCS that is gone, and Ray waits out its second of grace before
    it kills it. And at exit it first sleeps half a second for log lines to print, after the command's last line.
    Together 1.5-2.5 s of the exit of every command that started a local Ray, on the 2-core machine. The run kills
    the monitor first (the end Ray gives it a second later) and shuts Ray down itself, outside Ray's exit hook:
    neither wait is left; the raylet still ends by Ray's shutdown."""
    said = _local_ray_child("whole")
    assert {"dashboard", "monitor"} <= set(said["processes"]), said  # started as ray.init starts it
    assert "monitor.py" not in said["waited"], said  # before 4b7d523: ['monitor.py'], its grace waited out
    assert said["slept"] == [], said  # before: [0.5], Ray's pause at exit
    assert (said["monitor"], said["raylet"]) == (-9, 0), said  # the monitor killed, the raylet stopped by shutdown
    assert said["together"] == [], said  # started whole, Ray's processes in a group of their own all the same


def test_a_ray_whose_start_functions_moved_starts_as_ray_init_starts_it(monkeypatch):
    """Where a Ray has the API server's start, the monitor's or ``get_node`` elsewhere than 2.60 has them, none is
    replaced (the local Ray starts as ``ray.init`` starts it); where it has all, each is replaced while Ray starts
    and put back after."""
    import ray._private.node as node
    import ray._private.services as services

    from pipelines.cluster import connect

    api, monitor, get_node = services.start_api_server, node.Node.start_monitor, services.get_node
    with connect.quick_local_start():
        assert services.start_api_server is not api
        assert node.Node.start_monitor(object()) is None
        assert services.get_node is not get_node
    assert (services.start_api_server, node.Node.start_monitor, services.get_node) == (api, monitor, get_node)
    monkeypatch.delattr(node.Node, "start_monitor")
    with connect.quick_local_start():
        assert (services.start_api_server, services.get_node) == (api, get_node)


def test_a_local_rays_processes_leave_the_commands_group_only_where_the_kernel_ends_them_with_it(monkeypatch,
                                                                                                 tmp_path):
    """Ray's processes go to a group of their own while a local Ray starts, each only after Ray's own ``preexec_fn``
    ran in it (where Ray asks the kernel to kill it as the command exits: a child out of the group before that would
    outlive a SIGKILL to the group), and ``ConsolePopen`` is Ray's again after; where Ray can't have the kernel kill
    them (its reaper ends the command's group instead) or has no ``ConsolePopen``, they stay in it."""
    import subprocess
    import sys

    import ray._private.services as services
    import ray._private.utils as utils

    from pipelines.cluster import connect

    popen = services.ConsolePopen
    mark = tmp_path / "ray-own"

    def ray_own():  # in the child: the group it is in while Ray's preexec_fn runs
        mark.write_text(str(os.getpgid(0)))

    with connect.in_a_group_of_their_own():
        child = services.ConsolePopen([sys.executable, "-c", "import os; print(os.getpgid(0) == os.getpid())"],
                                      stdout=subprocess.PIPE, text=True, preexec_fn=ray_own)
        own_session = services.ConsolePopen([sys.executable, "-c", "import os; print(os.getpgid(0))"],
                                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert services.ConsolePopen is popen
    assert child.communicate(timeout=60)[0].strip() == "True"  # a group of its own
    assert int(mark.read_text()) == os.getpgrp()  # Ray's preexec_fn ran first, still in the command's group
    # Ray's own choice (a session of its own) stands: a session's leader can't change its group (EPERM)
    assert own_session.communicate(timeout=60)[0].strip() == str(own_session.pid)
    monkeypatch.setattr(utils, "detect_fate_sharing_support", lambda: False)
    with connect.in_a_group_of_their_own():
        assert services.ConsolePopen is popen
    monkeypatch.undo()
    monkeypatch.delattr(services, "ConsolePopen")
    with connect.in_a_group_of_their_own():
        assert not hasattr(services, "ConsolePopen")


@pytest.mark.parametrize("version", ["2.59.0", "2.61.0", "3.0.0"])
def test_a_ray_of_another_version_than_the_quick_start_was_checked_on_starts_as_ray_init_starts_it(version,
                                                                                                monkeypatch):
    """The stand-ins rely on how Ray 2.60 calls the three functions (the API server's start returning no process,
    the monitor's start nothing), which the pin's other versions (2.50-2.63) may not share though they have the same
    names: on those a local Ray starts as ``ray.init`` starts it, with none replaced."""
    import ray
    import ray._private.node as node
    import ray._private.services as services

    from pipelines.cluster import connect

    api, monitor, get_node = services.start_api_server, node.Node.start_monitor, services.get_node
    monkeypatch.setattr(ray, "__version__", version)
    with connect.quick_local_start():
        assert (services.start_api_server, node.Node.start_monitor, services.get_node) == (api, monitor, get_node)
    assert connect.quick_connect_config() is None  # Ray's own connect settings (a name it lacks fails its start)


def test_a_local_rays_connect_settings_leave_a_users_own_to_them(monkeypatch):
    """On Ray 2.60 both settings go to ``ray.init`` (a copy: Ray adds to the dict it is given), but for one the user
    set as ``RAY_<name>``, which ``_system_config`` would override; with both set, Ray's own way (None)."""
    import ray

    from pipelines.cluster import connect

    monkeypatch.setattr(ray, "__version__", "2.60.0")
    for name in connect.QUICK_CONNECT:
        monkeypatch.delenv(f"RAY_{name}", raising=False)
    given = connect.quick_connect_config()
    assert given == connect.QUICK_CONNECT and given is not connect.QUICK_CONNECT
    monkeypatch.setenv("RAY_raylet_client_num_connect_attempts", "7")
    assert connect.quick_connect_config() == {"raylet_client_connect_timeout_milliseconds": 100}
    monkeypatch.setenv("RAY_raylet_client_connect_timeout_milliseconds", "500")
    assert connect.quick_connect_config() is None


def test_a_local_rays_start_asks_ray_for_its_node_once_the_gcs_has_it(monkeypatch):
    """Ray's ``get_node`` (which looks once a second) is asked only once the GCS's table has the node; a GCS that
    can't be asked leaves the wait to Ray's own; and only Ray's first ask is waited for (Ray asks again, where it
    fails, within its own 30 s)."""
    import ray._raylet

    from pipelines.cluster import connect

    tables = iter([{}, {}, {_Node("aa"): None}])  # the node registers at the third look
    looks: list[str] = []

    class Gcs:
        def __init__(self, address: str) -> None:
            looks.append(address)

        def get_all_node_info(self, timeout: float) -> dict:
            return next(tables)

    monkeypatch.setattr(ray._raylet, "GcsClient", Gcs)
    monkeypatch.setattr(connect, "REGISTERED_POLL_S", 0.0)
    asked: list[tuple[str, str]] = []

    def get_node(address: str, node_id: str) -> str:
        asked.append((address, node_id))
        assert next(tables, "none left") == "none left", "asked before the GCS had the node"
        return "info"

    assert connect._registered_first(get_node)("gcs:1", "aa") == "info"
    assert asked == [("gcs:1", "aa")] and looks == ["gcs:1"]

    class Gone:
        def __init__(self, address: str) -> None:
            raise ConnectionError("no GCS")

    monkeypatch.setattr(ray._raylet, "GcsClient", Gone)
    assert connect._registered_first(get_node)("gcs:1", "aa") == "info"  # Ray's own get_node says what is wrong

    monkeypatch.setattr(ray._raylet, "GcsClient", Gcs)
    monkeypatch.setattr(connect, "REGISTERED_WAIT_S", 0.0)
    looks.clear()
    waiting = connect._registered_first(lambda address, node_id: "info")
    assert [waiting("gcs:1", "bb"), waiting("gcs:1", "bb")] == ["info", "info"]
    assert looks == ["gcs:1"]  # Ray's asking again (its own 30 s) is not waited before each time


class _Node:
    """A node id as the GCS's table keys it (``hex()``)."""

    def __init__(self, hex_id: str) -> None:
        self.hex_id = hex_id

    def hex(self) -> str:
        return self.hex_id
