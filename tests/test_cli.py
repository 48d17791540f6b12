"""The CLI as a user runs it: a subprocess, real Ray, the main job, and failures as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
from helpers import ROOT

MAIN_JOB = ROOT / "jobs" / "label_news.yaml"


def cli(*args: str, timeout: int = 600, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``unset``: variables of this process the command is run without (as in a user's shell)."""
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def input_ids() -> list[str]:
    ids = []
    for path in sorted((ROOT / "jobs/data/news").iterdir()):
        if path.suffix == ".parquet":
            ids += pq.read_table(path).column("id").to_pylist()
        else:
            import gzip

            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as f:
                ids += [json.loads(line)["id"] for line in f if line.strip()]
    return ids


def test_main_job_labels_every_row_once(tmp_path):
    out = tmp_path / "news"
    # RAY_AUTH_MODE unset, as in a user's shell (the session's Ray of other tests sets it in this process)
    done = cli("run", str(MAIN_JOB), "--set", f"output.path={out}", "--set", "compute.cpus_per_actor=0.5",
               unset=("RAY_AUTH_MODE",))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "agreement with ground truth" in done.stdout
    # the local Ray it started has token auth on, Ray's default, without Ray's notice telling how to turn it off
    assert "Token authentication" not in done.stderr, done.stderr[-3000:]
    table = pq.read_table(out)
    assert sorted(table.column("id").to_pylist()) == sorted(input_ids())
    assert len(set(table.column("id").to_pylist())) == 600
    assert set(table.column("predicted_label").to_pylist()) <= {"World", "Sports", "Business", "Sci/Tech"}
    summary = json.loads((out / "_run.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == 600
    assert summary["quantization"] == "auto"
    # what auto chose (by this CPU: float32, bfloat16 or an int8), said in the summary
    assert summary["precision"]["quantization"] in ("per-token-int8", "smooth-int8", "none")
    assert summary["agreement"]["accuracy"] > 0.6
    assert summary["padding_efficiency"] > 0.8

    again = cli("run", str(MAIN_JOB), "--set", f"output.path={out}")
    assert again.returncode == 0
    assert "up to date" in again.stdout


def test_bad_spec_exits_non_zero_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MAIN_JOB.read_text().replace("batch_size: 256", "batch_size: lots"))
    done = cli("validate", str(bad))
    assert done.returncode == 2
    assert "batching.batch_size" in done.stderr
    assert "Traceback" not in done.stderr
    done = cli("run", str(bad))
    assert done.returncode == 2 and "batching.batch_size" in done.stderr


def test_validate_and_unknown_model(tmp_path):
    done = cli("validate", str(MAIN_JOB))
    assert done.returncode == 0 and "valid" in done.stdout
    out = tmp_path / "never"
    done = cli("run", str(MAIN_JOB), "--set", "model.name=/nowhere/model", "--set", f"output.path={out}")
    assert done.returncode == 2
    assert "model '/nowhere/model'" in done.stderr
    assert not out.exists()


def test_run_json_names_the_run_report_page_as_the_readable_summary_does(monkeypatch, capsys, tmp_path):
    """`pipelines run` ends with `report: OUTPUT/_report.html`; with --json a script had the summary and no way to
    the page but to guess its path. The JSON holds it as `report` (null where this run wrote none)."""
    from pipelines import runner
    from pipelines.cli.main import main
    from pipelines.output.records import ModelRef, RunSummary

    page = str(tmp_path / "out" / "_report.html")
    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="minilm"), quantization="none",
                         device="cpu", task="text-classification", shards=1, shards_this_run=1, rows_in=1,
                         rows_out=1, errors=0, error_rate=0.0, report=page)
    monkeypatch.setattr(runner, "run_job", lambda spec, **kwargs: summary.model_copy())
    assert main(["run", str(MAIN_JOB), "--set", f"output.path={tmp_path / 'out'}", "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["report"] == page and said["rows_out"] == 1
    summary.report = None
    assert main(["run", str(MAIN_JOB), "--set", f"output.path={tmp_path / 'out'}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"] is None
