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
