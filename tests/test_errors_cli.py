"""Errors a user makes before any work: one line on stderr, exit status 2, nothing written (the CLI as a subprocess)."""

from __future__ import annotations

import pytest
from test_cli import MAIN_JOB, cli


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


def test_an_output_started_on_cpu_resumes_with_device_auto_but_not_with_another_row_policy(tiny_models, tmp_path):
    """The spec hash: `--set model.device=auto` (the README's submit example) resumes a local output;
    `errors.too_long: error` would change which rows are written, so it is refused."""
    from test_faults import cli as run_cli
    from test_faults import commits, many_shards, output_ids, write_job

    ids = many_shards(tmp_path / "in", shards=2)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", model={"device": "cpu"})
    out = tmp_path / "out"
    crashed = run_cli("run", str(job), env={"PIPELINES_CRASH_AT": "after_commit:1"})
    assert crashed.returncode == -9 and commits(out) == 1, crashed.stderr[-2000:]

    refused = run_cli("run", str(job), "--set", "errors.too_long=error")
    one_line_error(refused, "different job spec")
    assert commits(out) == 1

    resumed = run_cli("run", str(job), "--set", "model.device=auto", "--set", f"model.cache_dir={tmp_path / 'cache'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 shards, 1 this run" in resumed.stdout
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
