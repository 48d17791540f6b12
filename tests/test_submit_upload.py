"""What `pipelines submit` uploads, and its refusal of input files the upload would leave behind.

No cluster: the decision is made before any connection, with Ray's own rules; these tests compare it with
the package Ray's upload really builds (its zip, made here) and run the CLI against a port nothing listens on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

from pipelines.cluster import jobs
from pipelines.errors import PipelineError

ROWS = 5


def write_rows(path: Path, rows: int = ROWS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{path.name}-{i}", "text": "a", "label": "World"}) + "\n"
                            for i in range(rows)))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project as a user has it: this repo's .gitignore plus `*.parquet`, the package, the main job, and an
    input folder holding sub-folders named build/ and dist/ (the tester's repro) and a Parquet file."""
    root = tmp_path / "proj"
    (root / "jobs").mkdir(parents=True)
    (root / "pipelines").symlink_to(ROOT / "pipelines")
    shutil.copy(ROOT / "jobs" / "label_news.yaml", root / "jobs")
    (root / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "*.parquet\n")
    for name in ("ok/part-0.jsonl", "build/part-1.jsonl", "dist/part-2.jsonl"):
        write_rows(root / "jobs/data/probe" / name)
    return root


def uploaded(root: Path, tmp_path: Path) -> set[str]:
    """The files in the package Ray's upload builds from ``root`` with this project's excludes."""
    from ray._private.runtime_env.packaging import create_package

    package = tmp_path / "package.zip"
    create_package(str(root), package, include_gitignore=True, excludes=list(jobs.DEFAULT_EXCLUDES))
    with zipfile.ZipFile(package) as zipped:
        return {name for name in zipped.namelist() if not name.endswith("/")}


def every_file(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "pipelines" not in p.parts)


def test_left_out_names_each_file_and_the_rule_that_leaves_it_out(project):
    (project / "jobs/data/probe/ok/more.parquet").write_bytes(b"")
    (project / "build").mkdir()
    (project / "build/lib.py").write_text("")
    left = jobs.left_out_of_upload(project, every_file(project))
    assert {(item.path, item.rule) for item in left} == {
        ("jobs/data/probe/ok/more.parquet", ".gitignore: *.parquet"),
        ("build/lib.py", "pipelines' own excludes: /build"),  # setuptools' build/ at the root stays behind
    }


def test_left_out_agrees_with_the_package_ray_builds(project, tmp_path, monkeypatch):
    """Nested .gitignore and .rayignore files, negations, anchored and folder patterns: the files the decision
    leaves out are exactly those missing from Ray's own package."""
    monkeypatch.delenv(jobs.IGNORE_GITIGNORE_ENV, raising=False)
    data = project / "jobs/data"
    for name in ("a/keep.jsonl", "a/drop.tmp", "a/raw/x.jsonl", "a/raw/y.jsonl", "b/c/z.jsonl", "b/c/w.jsonl",
                 "b/venv/v.jsonl", "b/.cache/q.jsonl", "b/x.egg-info/e.jsonl", "b/n.parquet", "b/deep/n.parquet",
                 "top/dist/d.jsonl", "top/build/b.jsonl"):
        write_rows(data / name, 1)
    # Ray matches a folder's path without its trailing /: `raw/` leaves out raw/'s files one by one, not raw/
    # itself (unlike git), so the `!` brings y.jsonl back
    (data / "a/.gitignore").write_text("*.tmp\nraw/\n!raw/y.jsonl\n")
    (data / "b/.rayignore").write_text("/c/w.jsonl\n")
    (data / "b/deep/.gitignore").write_text("!n.parquet\n")  # does not undo the root's *.parquet (Ray: any rule)
    (project / "notes.parquet").write_bytes(b"")
    (project / "build").mkdir()
    (project / "build/out.txt").write_text("")
    files = every_file(project)
    carried = uploaded(project, tmp_path)
    expected = sorted(f for f in files if f not in carried)
    assert sorted(item.path for item in jobs.left_out_of_upload(project, files)) == expected
    assert "jobs/data/probe/build/part-1.jsonl" in carried and "jobs/data/top/build/b.jsonl" in carried
    assert "jobs/data/b/c/w.jsonl" in expected and "jobs/data/b/deep/n.parquet" in expected
    assert "jobs/data/a/raw/x.jsonl" in expected and "jobs/data/a/raw/y.jsonl" in carried


def test_gitignore_is_not_read_when_ray_is_told_so(project, monkeypatch):
    (project / "jobs/data/probe/ok/more.parquet").write_bytes(b"")
    monkeypatch.setenv(jobs.IGNORE_GITIGNORE_ENV, "1")
    assert jobs.left_out_of_upload(project, every_file(project)) == []


def test_the_matcher_is_the_one_rays_upload_uses():
    from ray._private.runtime_env import packaging

    rules = jobs._Rules.of("x", ROOT, ["build/"])
    assert type(rules.spec) is packaging.PathSpec


@pytest.mark.parametrize(
    ("ignored", "rule"),
    [("build/\n", ".gitignore: build/"), ("data/\n", ".gitignore: data/"), ("*.jsonl\n", ".gitignore: *.jsonl")],
)
def test_relative_inputs_the_upload_leaves_out_are_refused(project, ignored, rule):
    (project / ".gitignore").write_text(ignored)
    with pytest.raises(PipelineError) as caught:
        jobs.check_inputs_uploaded(project, ["jobs/data/probe"], "auto", "/abs/out")
    message = str(caught.value)
    assert rule in message and "would not be uploaded" in message and "\n" not in message
    assert "move the data" in message and "s3://" in message and ".gitignore" in message


def test_relative_inputs_the_upload_leaves_out_are_refused_with_an_s3_output_this_machine_cannot_reach(
        project, monkeypatch):
    """The output is an s3:// URI (what submit asks for), written only by the cluster: its store need not answer
    here (no credentials or endpoint for it on this machine, offline): opening it fails as pyarrow fails to find
    the bucket's region."""
    from pipelines.io import shards

    (project / ".gitignore").write_text("data/\n")
    opened = shards.resolve

    def unreachable_store(location):
        if location.startswith("s3://"):
            raise PipelineError(f"{location}: cannot open this location (Could not resolve hostname)")
        return opened(location)

    monkeypatch.setattr(shards, "resolve", unreachable_store)
    with pytest.raises(PipelineError, match=r"would not be uploaded.*\.gitignore: data/"):
        jobs.check_inputs_uploaded(project, ["jobs/data/probe"], "auto", "s3://bucket/results")


def test_inputs_that_are_uploaded_or_not_relative_pass(project, tmp_path):
    jobs.check_inputs_uploaded(project, ["jobs/data/probe", "jobs/data/probe/ok/*.jsonl"], "auto", "/abs/out")
    outside = tmp_path / "elsewhere"
    write_rows(outside / "build/part.jsonl")
    jobs.check_inputs_uploaded(project, [str(outside), "s3://bucket/build/"], "auto", "/abs/out")
    jobs.check_inputs_uploaded(project, ["~/elsewhere/data"], "auto", "/abs/out")  # the home dir on the cluster


def test_an_input_file_reached_under_two_names_is_refused_as_the_upload_would_carry_it_twice(project, tmp_path):
    """A listing here reads a file reached under two names once (`latest -> 2024-06-01` beside it, a hard link); Ray's
    upload follows the link and stores a copy under each name, so on the cluster they are two files: a submitted job
    read the 600 rows of the tester's `feed/` twice (1,200 written, every id twice; `pipelines run` wrote 600).
    Refused before the upload, naming a name the upload would carry twice; left out of the upload, it passes."""
    feed = project / "jobs/data/feed"
    write_rows(feed / "2024-06-01/part-0.jsonl")
    (feed / "latest").symlink_to("2024-06-01")
    carried = uploaded(project, tmp_path)
    assert {"jobs/data/feed/2024-06-01/part-0.jsonl", "jobs/data/feed/latest/part-0.jsonl"} <= carried  # twice
    with pytest.raises(PipelineError, match=r"1 input file\(s\) reached here under two names .* "
                                            r"jobs/data/feed/latest/part-0\.jsonl;.*read each twice"):
        jobs.check_inputs_uploaded(project, ["jobs/data/feed"], "auto", "/abs/out")
    jobs.check_inputs_uploaded(project, ["jobs/data/feed/2024-06-01"], "auto", "/abs/out")  # the link not listed
    (feed / ".rayignore").write_text("latest\n")
    (tmp_path / "again").mkdir()  # a package already there is not built again
    assert "jobs/data/feed/latest/part-0.jsonl" not in uploaded(project, tmp_path / "again")
    jobs.check_inputs_uploaded(project, ["jobs/data/feed"], "auto", "/abs/out")
    (feed / ".rayignore").unlink()
    (feed / "latest").unlink()
    os.link(feed / "2024-06-01/part-0.jsonl", feed / "copy.jsonl")  # a hard link: two files in the zip too
    with pytest.raises(PipelineError, match=r"under two names"):
        jobs.check_inputs_uploaded(project, ["jobs/data/feed"], "auto", "/abs/out")


def test_a_relative_input_that_lists_no_file_is_refused_before_the_upload(project):
    """On the cluster it is read in the uploaded project, where it is missing as it is here: the job would
    fail there, after the upload, with the same error. Before: sent, and failed on the cluster."""
    with pytest.raises(PipelineError, match=r"jobs/data/nothing-here.*before anything is uploaded"):
        jobs.check_inputs_uploaded(project, ["jobs/data/nothing-here"], "auto", "/abs/out")


def test_a_relative_input_outside_the_project_is_refused(project, tmp_path):
    write_rows(tmp_path / "next-door/part.jsonl")
    with pytest.raises(PipelineError, match=r"1 of the 1 input files .*\(outside the project\)"):
        jobs.check_inputs_uploaded(project, ["../next-door"], "auto", "/abs/out")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def submit(project: Path, *sets: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "submit", "jobs/label_news.yaml", "--wait",
         "--address", f"http://127.0.0.1:{free_port()}", "--set", "output.path=/abs/out",
         *(arg for value in sets for arg in ("--set", value))],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_submit_refuses_input_the_upload_leaves_behind_before_connecting(project):
    """The tester's repro: data/probe holds ok/, build/ and dist/; the project's .gitignore lists build/ and
    dist/ (unanchored, as they were). Before: the job succeeded with a third of the rows."""
    (project / ".gitignore").write_text("build/\ndist/\n")
    done = submit(project, "input.paths=[jobs/data/probe]")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: 2 of the 3 input files") and "Cannot reach" not in line
    assert "jobs/data/probe/build/part-1.jsonl (.gitignore: build/)" in line
    assert "jobs/data/probe/dist/part-2.jsonl (.gitignore: dist/)" in line


def test_submit_with_uploaded_input_goes_on_to_connect(project):
    """This repo's .gitignore anchors build/ and dist/ to the root: the same folders are uploaded."""
    done = submit(project, "input.paths=[jobs/data/probe]")
    assert done.returncode == 2 and "Cannot reach the Ray dashboard" in done.stderr, done.stderr


def test_submit_refuses_a_missing_relative_input_before_connecting(project):
    done = submit(project, "input.paths=[jobs/data/typo]")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "jobs/data/typo" in line and "Cannot reach" not in line


def test_submit_sends_an_output_path_in_the_home_directory(project):
    """README: a `~/…` path is sent as written, the home directory on the cluster. Before: refused as relative."""
    done = submit(project, "input.paths=[jobs/data/probe]", "output.path=~/results/news")
    assert done.returncode == 2 and "Cannot reach the Ray dashboard" in done.stderr, done.stderr
    assert "is relative" not in done.stderr


def test_submit_refuses_a_spec_the_upload_leaves_behind(project, tmp_path):
    (project / ".gitignore").write_text("label_news.yaml\n")
    with pytest.raises(PipelineError, match=r"Job spec jobs/label_news.yaml would not be uploaded .*label_news"):
        jobs.submit(project / "jobs/label_news.yaml", f"http://127.0.0.1:{free_port()}", project_root=project)


# --------------------------------------------------------------------------- #
# A model folder in the project: the job loads it from the upload
# --------------------------------------------------------------------------- #

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def write_model(folder: Path) -> None:
    """A fine-tuned model as save_pretrained() leaves it (contents do not matter: nothing loads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        (folder / name).write_text("{}")
    (folder / ".cache/huggingface").mkdir(parents=True)  # what `hf download --local-dir` leaves: never loaded
    (folder / ".cache/huggingface/.gitignore").write_text("*\n")


def test_submit_refuses_a_model_folder_the_upload_leaves_behind_before_connecting(project):
    """models/ is .gitignored (models are large): the job would be uploaded without its model and fail on the
    cluster saying no such directory or Hub repository, though the folder is right here."""
    write_model(project / "models/mine")
    (project / ".gitignore").write_text("models/\n")
    done = submit(project, "input.paths=[jobs/data/probe]", "model.name=models/mine", "model.quantization=none")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: model.name models/mine: 4 of the 4 files of the model folder"), line
    assert "models/mine/config.json and 3 more (.gitignore: models/)" in line and "Cannot reach" not in line
    assert "Hugging Face Hub" in line and "absolute path" in line


@pytest.mark.parametrize(
    ("ignored", "left"),
    [("*.safetensors\n", "1 of the 4 files of the model folder would not be uploaded with the project: "
                         "models/mine/model.safetensors (models/.rayignore: *.safetensors)"),
     ("mine/\n", "4 of the 4 files")],
)
def test_a_model_folder_partly_or_wholly_left_out_is_refused(project, ignored, left):
    write_model(project / "models/mine")
    (project / "models/.rayignore").write_text(ignored)
    with pytest.raises(PipelineError) as caught:
        jobs.check_model_uploaded(project, "models/mine")
    assert left in str(caught.value) and "\n" not in str(caught.value)


def test_a_relative_model_folder_outside_the_project_is_refused(project, tmp_path):
    write_model(tmp_path / "models/mine")
    with pytest.raises(PipelineError, match=r"model.name ../models/mine: 4 of the 4 .*\(outside the project\)"):
        jobs.check_model_uploaded(project, "../models/mine")


def test_models_that_are_uploaded_or_not_a_project_folder_pass(project, tmp_path):
    write_model(project / "models/mine")  # hidden files (its .cache/) are not the model's
    jobs.check_model_uploaded(project, "models/mine")
    jobs.check_model_uploaded(project, "./models/mine/")
    (project / ".gitignore").write_text("models/\n")
    (project / "minilm").mkdir()  # an alias is the installed package's, on every node
    for name in ("minilm", "MiniLM", "org/model", str(project / "models/mine"), "~/models/mine"):
        jobs.check_model_uploaded(project, name)  # a Hub id, or an absolute path: read where it is


# --------------------------------------------------------------------------- #
# Relative paths: the cluster reads what `pipelines run` reads from where submit runs
# --------------------------------------------------------------------------- #


def submitted_from(folder: Path, monkeypatch, *sets: str, job: str = "label_news.yaml") -> tuple[int, str]:
    """`pipelines submit JOB --set …` run from ``folder``; its exit status and the entrypoint the cluster got
    (nothing is connected to: the request is taken where it would be sent)."""
    from pipelines.cli.main import main

    sent: list[dict] = []
    monkeypatch.setattr(jobs, "_connect", lambda address, insecure=False: (jobs._Client(None, None), address))
    monkeypatch.setattr(jobs, "_submit_when_ready", lambda client, url, request, *rest: sent.append(request) or "r_1")
    monkeypatch.chdir(folder)
    code = main(["submit", job, "--address", "http://127.0.0.1:1", "--set", "output.path=/abs/out",
                 *(arg for value in sets for arg in ("--set", value))])  # fmt: skip
    return code, sent[0]["entrypoint"] if sent else ""


def as_the_cluster_reads(project: Path, entrypoint: str):
    """The spec the cluster's `pipelines run` loads, in the uploaded project (its current directory)."""
    import shlex

    from pipelines.spec import load_spec

    argv = shlex.split(entrypoint)
    assert argv[:4] == ["python", "-m", "pipelines", "run"]
    return load_spec(project / argv[4], [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"])


def from_root(project: Path, path: str) -> str:
    return os.path.normpath(project / path)


def test_submit_from_a_subfolder_reads_relative_paths_from_there_as_run_does(project, monkeypatch, capsys):
    """The reviewer's repro: from jobs/, `--set input.paths=[data/probe/ok]` is jobs/data/probe/ok to `pipelines
    run`, but submit sent it as written and the cluster, running in the project root, read data/probe/ok there (a
    folder that exists too: other rows, silently). The same for a spec file's own relative paths (relative to the
    directory the command runs in, not to the spec's folder), a model folder and the cache folder."""
    write_rows(project / "data/probe/ok/other.jsonl")  # the root's data/: not what run reads from jobs/
    write_model(project / "models/mine")
    code, entrypoint = submitted_from(project / "jobs", monkeypatch, "input.paths=[data/probe/ok, ./data/probe/b*]",
                                      "model.name=../models/mine", "model.quantization=none", "model.cache_dir=cache")
    assert code == 0, capsys.readouterr().err
    spec = as_the_cluster_reads(project, entrypoint)
    assert [from_root(project, p) for p in spec.input.paths] == [
        str(project / "jobs/data/probe/ok"), str(project / "jobs/data/probe/b*")]
    assert from_root(project, spec.model.name) == str(project / "models/mine")
    assert from_root(project, spec.model.cache_dir or "") == str(project / "jobs/cache")

    spec_file = project / "jobs/label_news.yaml"  # written relative to jobs/, where it is run from
    spec_file.write_text(spec_file.read_text().replace("[jobs/data/news]", "[data/probe/ok]"))
    code, entrypoint = submitted_from(project / "jobs", monkeypatch)
    assert code == 0, capsys.readouterr().err
    assert [from_root(project, p) for p in as_the_cluster_reads(project, entrypoint).input.paths] == [
        str(project / "jobs/data/probe/ok")]


def test_submit_from_the_project_root_sends_relative_paths_as_written(project, monkeypatch, capsys):
    write_model(project / "models/mine")
    sets = ("input.paths=[jobs/data/probe]", "model.name=models/mine", "model.quantization=none")
    code, entrypoint = submitted_from(project, monkeypatch, *sets, job="jobs/label_news.yaml")
    assert code == 0, capsys.readouterr().err
    assert entrypoint == jobs.build_entrypoint("jobs/label_news.yaml", ["output.path=/abs/out", *sets])


@pytest.mark.parametrize(
    ("value", "said"),
    [("input.paths=[../../elsewhere]", "input.paths ../../elsewhere is read by `pipelines run` from"),
     ("model.cache_dir=../../cache", "model.cache_dir ../../cache is read by `pipelines run` from")],
)
def test_submit_refuses_a_relative_path_that_leads_out_of_the_project(project, tmp_path, monkeypatch, capsys, value,
                                                                      said):
    write_rows(tmp_path / "elsewhere/part.jsonl")
    code, entrypoint = submitted_from(project / "jobs", monkeypatch, value)
    assert code == 2 and not entrypoint
    [line] = capsys.readouterr().err.strip().splitlines()
    assert said in line and f"as {tmp_path}" in line and "outside the project" in line, line
    assert "absolute path on storage every node" in line and "s3://" in line


def test_submit_refuses_a_model_name_that_is_a_folder_only_in_the_project_root(project, monkeypatch, capsys):
    """From jobs/, `models/mine` is no folder: `pipelines run` there takes it as a Hugging Face id; the cluster,
    in the project root, would load the folder instead."""
    write_model(project / "models/mine")
    code, entrypoint = submitted_from(project / "jobs", monkeypatch, "model.name=models/mine",
                                      "model.quantization=none")
    assert code == 2 and not entrypoint
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "model.name models/mine" in line and "Hugging Face id" in line and "../models/mine" in line, line
