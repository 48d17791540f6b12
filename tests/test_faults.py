"""Fault injection with exact row accounting: killed drivers and actors, bad input, bad specs."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, SENTENCES, joining, unchecked_strings, write_jsonl, write_parquet

from pipelines.errors import PipelineError
from pipelines.output.staging import StagingReport
from pipelines.runner import run_job
from pipelines.spec import JobSpec, load_spec, spec_from_dict


def write_job(tmp_path: Path, model_dir: str, inputs: Path, **sections) -> Path:
    raw = {
        "input": {"paths": [str(inputs)]},
        "model": {"name": model_dir},
        "task": {"type": "text-classification"},
        "batching": {"batch_size": 8},
        "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1},
        "output": {"path": str(tmp_path / "out")},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def many_shards(folder: Path, shards: int = 6, rows: int = 10) -> list[str]:
    ids = []
    for k in range(shards):
        batch = [{"id": f"s{k}-{i}", "text": SENTENCES[(k + i) % len(SENTENCES)]} for i in range(rows)]
        write_jsonl(folder / f"part-{k}.jsonl", batch)
        ids += [r["id"] for r in batch]
    return ids


def output_ids(out: Path) -> list[str]:
    return pq.read_table(out).column("id").to_pylist()


def commits(out: Path) -> int:
    return len(list((out / "_commits").glob("*.json"))) if (out / "_commits").exists() else 0


def assert_whole_shards(out: Path, shard_ids: list[set[str]]) -> None:
    """What a reader globbing *.parquet sees: each shard's rows all, or none of them."""
    seen = set(pq.read_table(out).column("id").to_pylist()) if list(out.glob("*.parquet")) else set()
    for ids in shard_ids:
        assert ids <= seen or not (ids & seen), "a shard is partly visible"


def test_driver_killed_before_during_and_after_commits_resumes_exactly_once(ray_session, tiny_models, tmp_path):
    ids = many_shards(tmp_path / "in")
    shard_ids = [set(ids[k * 10 : (k + 1) * 10]) for k in range(6)]
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    out = tmp_path / "out"

    # the killed runs join the session's Ray (the points are the driver's): no local Ray started and stopped each
    crashed = cli("run", str(job), *joining(ray_session), env={"PIPELINES_CRASH_AT": "mid_commit:2"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert commits(out) == 2  # the second shard's record is written: it is committed ...
    assert len(list(out.glob("part-*.parquet"))) == 1  # ... but its rows are not visible yet
    assert_whole_shards(out, shard_ids)

    for point, committed in {"after_commit:2": 4, "before_summary:1": 6}.items():
        crashed = cli("run", str(job), *joining(ray_session), env={"PIPELINES_CRASH_AT": point})
        assert crashed.returncode == -9, (point, crashed.stderr[-2000:])
        assert commits(out) == committed, point  # the interrupted commit was finished, not redone
        assert_whole_shards(out, shard_ids)
        assert not (out / "_SUCCESS").exists()

    run_job(load_spec(job))  # the resuming run, in this process: a failure raises (the crashes above need the CLI)
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    summary = json.loads((out / "_run.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == len(ids)
    assert not (out / "_staging").exists()
    again = cli("run", str(job))
    assert again.returncode == 0 and "up to date" in again.stdout


@pytest.mark.parametrize("calls", [1, 2], ids=["one-call", "two-calls-in-flight"])  # 2: a GPU actor's default
def test_an_actor_killed_mid_run_still_gives_exact_counts(tiny_models, tmp_path, calls):
    ids = many_shards(tmp_path / "in", shards=4)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", compute={"calls_per_actor": calls})
    marker = tmp_path / "actor-killed"
    done = cli("run", str(job), env={"PIPELINES_CRASH_AT": "predict:2", "PIPELINES_CRASH_ONCE": str(marker)})
    assert marker.exists()  # an actor really died
    assert done.returncode == 0, done.stderr[-3000:]
    got = output_ids(tmp_path / "out")
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))


def test_quantization_auto_decided_in_the_pool_survives_the_deciding_actor_killed(tiny_models, tmp_path):
    """Under ``quantization: auto`` the pool's actors decide the precision (a separate Ray task paid the imports and
    the model's code again before). Of two actors one measures while the other waits; the measuring one is killed
    between its decision and posting it, and Ray restarts it, which measures again: the run still holds every row
    once and one precision, the one ``_job.json`` and ``_run.json`` record and the machine's decisions keep."""
    ids = many_shards(tmp_path / "in", shards=4)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", compute={"size": 2},
                    model={"quantization": "auto", "cache_dir": str(tmp_path / "cache"), "fidelity": {"rows": 24}})
    marker = tmp_path / "decider-killed"
    done = cli("run", str(job), env={"PIPELINES_CRASH_AT": "decided", "PIPELINES_CRASH_ONCE": str(marker)})
    assert marker.exists()  # an actor really died with its decision made
    assert done.returncode == 0, done.stderr[-3000:]
    got = output_ids(tmp_path / "out")
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    chosen = json.loads((tmp_path / "out" / "_job.json").read_text())["precision"]
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["precision"] == chosen
    [kept] = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "precision").glob("*.json")]
    assert (kept["quantization"], kept["dtype"]) == (chosen["quantization"], chosen["dtype"])
    assert "quantization auto's check: " in done.stdout, done.stdout
    # each shard's record names the precision its blocks' actors ran at: the output's, in every one
    said = chosen["quantization"] if chosen["quantization"] != "none" else chosen["dtype"]
    commits = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_commits").glob("*.json")]
    assert len(commits) == 4 and {c["precision"] for c in commits} == {said}


def bad_corpus(folder: Path) -> dict[str, str | None]:
    """Shards holding every kind of bad input; returns id → expected reason prefix (None: predicted)."""
    expected: dict[str, str | None] = {}
    good = [{"id": f"g{i}", "text": SENTENCES[i], "label": "x"} for i in range(4)]
    write_parquet(folder / "good.parquet", good)
    expected.update({r["id"]: None for r in good})
    lines = [
        json.dumps({"id": "ok1", "text": "fine words", "label": "y"}),
        json.dumps({"id": "null", "text": None, "label": "y"}),
        json.dumps({"id": "empty", "text": "  ", "label": "y"}),
        json.dumps({"id": "number", "text": 42, "label": "y"}),
        '{"id": "broken", "text": "unterminated',
        json.dumps({"id": "notext", "label": "y"}),
        json.dumps({"id": "long", "text": "word " * 600, "label": "y"}),
    ]
    (folder / "mixed.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "latin1", "text": "caf\xe9"}\n')
    expected.update({"ok1": None, "null": "text is null", "empty": "text is empty", "number": "text is not a string",
                     "notext": "text is null", "long": "text longer than max_length"})
    (folder / "truncated.parquet").write_bytes((folder / "good.parquet").read_bytes()[:200])
    (folder / "corrupt.jsonl.gz").write_bytes(gzip.compress(b'{"id": "z"}\n')[:15])
    # bytes that are no UTF-8 beside the text (a label saved in Windows-1252, a Parquet writer that does not check
    # its strings): each costs its row only, and none reaches the model or the output
    (folder / "latin1.jsonl").write_bytes(b'{"id": "latin1-id\xff", "text": "words"}\n'
                                          b'{"id": "latin1-label", "text": "words", "label": "positiv\xe9"}\n'
                                          b'{"id": "latin1-ok", "text": "fine words", "label": "x"}\n')
    pq.write_table(pa.table({"id": ["u-ok", "u-text", "u-label"],
                             "text": unchecked_strings([b"fine words", b"caf\xe9", b"more words"]),
                             "label": unchecked_strings([b"x", b"x", b"positiv\xe9"])}), folder / "unchecked.parquet")
    expected.update({"latin1-ok": None, "u-ok": None, "u-text": "text is not valid UTF-8 (byte 3)",
                     "u-label": "label is not valid UTF-8 (byte 7)"})
    # a label that is a list where the others are text: kept, as its JSON text
    write_parquet(folder / "other-schema.parquet", [{"id": "schema1", "text": "a sentence", "label": [1, 2]}])
    expected["schema1"] = None
    return expected


def test_every_kind_of_bad_input_is_quarantined_with_its_reason(ray_session, tiny_models, tmp_path):
    expected = bad_corpus(tmp_path / "in")
    spec = spec_from_dict(yaml.safe_load(write_job(
        tmp_path, tiny_models("classifier"), tmp_path / "in",
        input={"label_column": "label"}, output={"prediction_prefix": "p_"},
        batching={"max_length": 64}, errors={"too_long": "error", "max_rate": 1.0, "unreadable_files": "quarantine"},
    ).read_text()))
    summary = run_job(spec).to_json()
    out = tmp_path / "out"
    predicted = set(output_ids(out))
    errors = pq.read_table(out / "_errors").to_pylist()
    reasons = {e["id"]: e["reason"] for e in errors}
    assert predicted == {i for i, r in expected.items() if r is None}
    for row_id, reason in expected.items():
        if reason:
            assert reasons[row_id].startswith(reason), (row_id, reasons[row_id])
    by_row = {(Path(e["shard"]).name, e["row"]): e["reason"] for e in errors}
    assert by_row[("mixed.jsonl", 4)].startswith("invalid JSON")  # no id to name it by: shard and row do
    assert by_row[("mixed.jsonl", 7)].startswith("not valid UTF-8")
    assert by_row[("latin1.jsonl", 0)] == "not valid UTF-8 (line 1, byte 17)"  # the id's
    assert by_row[("latin1.jsonl", 1)] == "not valid UTF-8 (line 2, byte 57)"  # the label's: the actor died on it
    pq.read_table(out).validate(full=True)  # pandas and DuckDB refuse an output that holds bytes that are no UTF-8
    pq.read_table(out / "_errors").validate(full=True)
    unreadable = {Path(e["shard"]).name for e in errors if e["row"] == -1}
    assert unreadable == {"truncated.parquet", "corrupt.jsonl.gz"}
    # neither file tells how many rows it held: each is one record, counted as no rows, and said so
    assert summary["files_with_unknown_rows"] == 2
    assert {Path(u["uri"]).name for u in summary["unreadable_files"]} == unreadable
    assert summary["rows_in"] == summary["rows_out"] + summary["errors"] == len(predicted) + len(errors) - 2
    assert summary["error_reasons"]["text is null"] == 2


def test_the_error_policy_fails_the_job_with_reasons(ray_session, tiny_models, tmp_path):
    bad_corpus(tmp_path / "in")
    spec = spec_from_dict(yaml.safe_load(write_job(
        tmp_path, tiny_models("classifier"), tmp_path / "in", errors={"unreadable_files": "quarantine"}
    ).read_text()))
    with pytest.raises(PipelineError, match=r"rows were quarantined .* over errors.max_rate.*text is null: 2"):
        run_job(spec)
    summary = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert summary["status"] == "failed"
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": {"paths": ["/no/such/dir"]}}, "does not exist"),
        ({"model": {"name": "no-such-alias-or-dir"}}, "cannot load its config"),
        ({"compute": {"gpus_per_actor": 1}}, "has no GPUs"),
        ({"compute": {"size": 2, "cpus_per_actor": 1}}, "leave none of the cluster"),
    ],
)
def test_spec_and_environment_errors_stop_before_any_work(tiny_models, tmp_path, change, message):
    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", **change)
    done = cli("run", str(job))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]  # one line names the cause (progress logs aside)
    assert not (tmp_path / "out").exists()


def test_empty_input_and_foreign_output_are_refused(tiny_models, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a shard")
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    done = cli("run", str(job))
    assert done.returncode == 2 and "no .parquet or .jsonl" in done.stderr
    many_shards(tmp_path / "in", shards=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "somebody-else.csv").write_text("a,b\n")
    done = cli("run", str(job))
    assert done.returncode == 2 and "holds no results of this project" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["somebody-else.csv"]


@dataclass
class Finished:
    root: Path  # its input folder "in" and its output "out"
    summary: dict


@pytest.fixture(scope="module")
def finished_with_empty_shards(ray_session, tiny_models, tmp_path_factory) -> Finished:
    """A finished run of the plain job on a 10-row shard (part-0.jsonl), an empty one and one of blank lines. The
    two tests below share it (one run, not two): the first reads it, the second changes a copy of it."""
    root = tmp_path_factory.mktemp("empty-shards")
    many_shards(root / "in", shards=1)
    (root / "in" / "empty.jsonl").write_text("")
    (root / "in" / "blank.jsonl").write_text("\n\n")
    spec = spec_from_dict(yaml.safe_load(write_job(root, tiny_models("classifier"), root / "in").read_text()))
    return Finished(root, run_job(spec).to_json())


def test_an_empty_shard_is_committed_empty(finished_with_empty_shards):
    summary = finished_with_empty_shards.summary
    assert summary["shards"] == 3 and summary["rows_in"] == summary["rows_out"] == 10
    out = finished_with_empty_shards.root / "out"
    assert (out / "_SUCCESS").exists()
    # the README: a shard with no rows is committed with no file; the others, one file each
    records = {json.loads(p.read_text())["shard"]: json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")}
    assert len(records) == 3 and sorted(len(r["files"]) for r in records.values()) == [0, 0, 1]
    assert len(list(out.glob("part-*"))) == 1
    assert pq.ParquetFile(next(out.glob("part-*"))).metadata.num_rows == 10


def test_changed_input_is_detected(finished_with_empty_shards, tiny_models, tmp_path):
    """From a copy of the finished job above, input and output (a shard is known by its name under the input folder,
    and the copies keep the files' times): the same job, up to date until one of its files changes."""
    for folder in ("in", "out"):
        shutil.copytree(finished_with_empty_shards.root / folder, tmp_path / folder)
    spec = spec_from_dict(yaml.safe_load(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in").read_text()))
    assert run_job(spec).status == "up to date"  # read, nothing run
    write_jsonl(tmp_path / "in" / "part-0.jsonl", [{"id": "new", "text": "changed content here"}])
    with pytest.raises(PipelineError, match="input changed since it was scored: .*part-0.jsonl"):
        run_job(spec)
    run_job(spec, overwrite=True)
    assert sorted(output_ids(tmp_path / "out"))[0] == "new"


@pytest.fixture(scope="module")
def scored_two_shards(ray_session, tiny_models, tmp_path_factory) -> Path:
    """A finished run of the plain job on two shards of 4 rows (part-0.jsonl, part-1.jsonl): its folder, with the
    input "in" and the output "out". The two --redo-changed tests below each go on from a copy of it (one scoring
    run, not two; a copy keeps the files' times, and a shard is known by its name under the input folder)."""
    root = tmp_path_factory.mktemp("scored-two-shards")
    many_shards(root / "in", shards=2, rows=4)
    run_job(spec_from_dict(yaml.safe_load(write_job(root, tiny_models("classifier"), root / "in").read_text())))
    return root


def copy_of(finished: Path, tmp_path: Path) -> None:
    """The input and output of a finished job (``finished``) into ``tmp_path``, the files' times kept."""
    for folder in ("in", "out"):
        shutil.copytree(finished / folder, tmp_path / folder)


def test_redo_changed_scores_the_changed_files_again_and_leaves_the_others(scored_two_shards, tiny_models, tmp_path,
                                                                            monkeypatch):
    """A file fixed after it was scored (a corrupt file replaced, texts corrected) could only be scored again with
    --overwrite, which scores every file again. --redo-changed deletes the changed files' output and scores them
    again; the other files' output stays as it is, and every row is there once."""
    from pipelines.cli.main import main

    copy_of(scored_two_shards, tmp_path)  # two shards of 4 rows, scored
    spec = spec_from_dict(yaml.safe_load(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in").read_text()))
    assert run_job(spec).status == "up to date"

    def file_of(first_id: str) -> Path:
        [found] = [p for p in (tmp_path / "out").glob("*.parquet") if first_id in output_ids(p)]
        return found

    kept = file_of("s0-0").stat().st_mtime_ns
    write_jsonl(tmp_path / "in" / "part-1.jsonl", [{"id": f"fixed-{i}", "text": SENTENCES[i]} for i in range(3)])
    with pytest.raises(PipelineError, match=r"input changed since it was scored: .*part-1.jsonl.*--redo-changed"):
        run_job(spec)
    summary = run_job(spec, redo_changed=True)
    assert (summary.status, summary.rows_in, summary.rows_out) == ("succeeded", 7, 7)  # the whole output
    assert sorted(output_ids(tmp_path / "out")) == [*(f"fixed-{i}" for i in range(3)), *(f"s0-{i}" for i in range(4))]
    assert file_of("s0-0").stat().st_mtime_ns == kept  # the unchanged file's output was left as it was
    assert run_job(spec).status == "up to date"

    asked = {}
    monkeypatch.setattr("pipelines.runner.run_job", lambda spec, **kwargs: asked.update(kwargs) or summary)
    assert main(["run", str(tmp_path / "job.yaml"), "--redo-changed"]) == 0
    assert asked["redo_changed"] is True


def test_a_redo_changed_killed_between_its_deletion_and_the_new_commit_is_finished_by_the_next_run(
    ray_session, scored_two_shards, tiny_models, tmp_path
):
    """The README says of --redo-changed that until a changed file is committed again its rows are missing, and
    that a crash in between leaves it to the next run: the old rows are gone, a plain run (no flag) scores the file
    again, and every row is there once, the old version's none."""
    copy_of(scored_two_shards, tmp_path)  # two shards of 4 rows, scored in this process (the crash needs the CLI)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    out = tmp_path / "out"
    assert run_job(load_spec(job)).status == "up to date"
    write_jsonl(tmp_path / "in" / "part-1.jsonl", [{"id": f"fixed-{i}", "text": SENTENCES[i]} for i in range(3)])
    # joins the session's Ray (the crash point is the driver's): no local Ray started and stopped for it
    crashed = cli("run", str(job), "--redo-changed", *joining(ray_session),
                  env={"PIPELINES_CRASH_AT": "before_commit:1"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert not any(i.startswith("s1-") for i in output_ids(out))  # the old version's rows were deleted ...
    assert not (out / "_SUCCESS").exists()  # ... and the output says it is not finished
    summary = run_job(load_spec(job))  # no flag
    assert (summary.status, summary.rows_out) == ("succeeded", 7)
    assert sorted(output_ids(out)) == [*(f"fixed-{i}" for i in range(3)), *(f"s0-{i}" for i in range(4))]
    assert (out / "_SUCCESS").exists()


def test_a_file_replaced_between_its_listing_and_its_read_is_committed_as_read(tmp_path):
    """The driver lists a file, another process replaces it, the read task reads the new bytes: the commit records
    those bytes (their size and hash, no time), so the next run finds its input unchanged, and a change after the
    read is still changed input. Before, the record had the listed size: the next run refused a correct output."""
    from pipelines.io.block import GENERATED, PADDED, TOKENS
    from pipelines.io.reader import Columns, read_shard
    from pipelines.io.shards import list_shards
    from pipelines.output.commit import OutputDir, changed_inputs
    from pipelines.output.records import JobRecord, ModelRef
    from pipelines.output.staging import StagingConfig, write_staged
    from pipelines.runner import same_content

    path = write_jsonl(tmp_path / "in" / "part-0.jsonl", [{"id": f"old-{i}", "text": "old words"} for i in range(3)])
    [listed] = list_shards([str(tmp_path / "in")], "jsonl")
    write_jsonl(path, [{"id": f"new-{i}", "text": "new words, more of them"} for i in range(5)])  # after the listing
    blocks = []
    for block in read_shard(listed, Columns(text="text", id="id")):
        zeros = pa.array([0] * block.num_rows, pa.int64())
        blocks.append(block.append_column(TOKENS, zeros).append_column(PADDED, zeros).append_column(GENERATED, zeros))
    config = StagingConfig(output=str(tmp_path / "out"), id_column="id", text_column="text",
                           output_columns=("id", "text"))
    reports = [r for block in blocks for r in StagingReport.from_table(write_staged(block, config))]
    output = OutputDir(str(tmp_path / "out"))
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    record = output.commit(listed, reports, job)
    relisted = list_shards([str(tmp_path / "in")], "jsonl")
    assert changed_inputs(output.committed(), relisted, same_content) == []  # nothing changed since the read
    assert record.rows == 5 and record.input.size == path.stat().st_size != listed.size
    assert sorted(pq.read_table(tmp_path / "out" / record.files[0]).column("id").to_pylist())[0] == "new-0"
    write_jsonl(path, [{"id": f"new-{i}", "text": "new words, more of them"} for i in range(6)])
    assert changed_inputs(output.committed(), list_shards([str(tmp_path / "in")], "jsonl"), same_content) == [
        listed.uri
    ]
    write_jsonl(path, [{"id": f"new-{i}", "text": "new words, MORE of them"} for i in range(5)])  # same size
    assert changed_inputs(output.committed(), list_shards([str(tmp_path / "in")], "jsonl"), same_content) == [
        listed.uri
    ]


def test_a_file_that_cannot_be_read_to_tell_whether_it_changed_is_said_so_not_called_changed(tmp_path, monkeypatch):
    """A committed file with a new time and its old size is read to tell whether its bytes changed; where that read
    failed (a storage outage, a permission taken away) the file was called changed input, and the refusal sent the
    user to --redo-changed, which deletes the file's output and then fails to read it. The read's failure is said."""
    from pipelines.io import reader
    from pipelines.io.shards import list_shards
    from pipelines.output.commit import OutputDir, changed_inputs
    from pipelines.output.records import JobRecord, ModelRef
    from pipelines.output.staging import StagingConfig, write_staged
    from pipelines.runner import same_content

    path = write_jsonl(tmp_path / "in" / "part-0.jsonl", [{"id": f"r-{i}", "text": "some words"} for i in range(3)])
    [listed] = list_shards([str(tmp_path / "in")], "jsonl")
    block = next(iter(reader.read_shard(listed, reader.Columns(text="text", id="id"))))
    zeros = pa.array([0] * block.num_rows, pa.int64())
    from pipelines.io.block import GENERATED, PADDED, TOKENS

    block = block.append_column(TOKENS, zeros).append_column(PADDED, zeros).append_column(GENERATED, zeros)
    config = StagingConfig(output=str(tmp_path / "out"), id_column="id", text_column="text",
                           output_columns=("id", "text"))
    output = OutputDir(str(tmp_path / "out"))
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    output.commit(listed, StagingReport.from_table(write_staged(block, config)), job)
    later = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))  # copied again without its times: the same bytes, a new time
    relisted = list_shards([str(tmp_path / "in")], "jsonl")
    assert changed_inputs(output.committed(), relisted, same_content) == []

    def outage(shard):
        raise OSError("When reading information for key 'in/part-0.jsonl': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(reader, "read_bytes", outage)
    with pytest.raises(PipelineError, match=r"cannot read .*part-0.jsonl.* to tell whether it changed since it was "
                                            r"scored.*NETWORK_CONNECTION"):
        changed_inputs(output.committed(), relisted, same_content)


def test_types_of_kept_columns_come_from_every_file(ray_session, tiny_models, tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "one", "score": 1}])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "b", "text": "two", "score": 2.5}])
    spec = spec_from_dict(yaml.safe_load(write_job(
        tmp_path, tiny_models("classifier"), tmp_path / "in", input={"columns_to_keep": ["score"]},
        output={"prediction_prefix": "p_"}, errors={"max_rate": 1.0}).read_text()))
    run_job(spec)
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("score").type == pa.float64()
    assert sorted(table.column("score").to_pylist()) == [1.0, 2.5]
    assert not (tmp_path / "out" / "_errors").exists()


@pytest.mark.parametrize("policy", ["keep", "error"])
def test_duplicate_ids_follow_the_policy(ray_session, tiny_models, tmp_path, policy):
    golds = iter(["negative", "neutral", "positive", "negative", "neutral"])
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": i, "text": "some words", "gold": next(golds)} for i in "122"])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": i, "text": "other words", "gold": next(golds)} for i in "23"])
    spec = spec_from_dict(yaml.safe_load(write_job(
        tmp_path, tiny_models("classifier"), tmp_path / "in", input={"label_column": "gold"},
        errors={"duplicate_ids": policy, "max_rate": 1.0},
    ).read_text()))
    summary = run_job(spec).to_json()
    ids = sorted(output_ids(tmp_path / "out"))
    # agreement with ground truth and its confusion matrix count the rows of the output, no quarantined one
    # (they counted the duplicates too: 5 rows where the output holds 3), in the summary and the report
    table = pq.read_table(tmp_path / "out")
    agreement = summary["agreement"]
    assert agreement["rows"] == table.num_rows == sum(n for row in agreement["confusion"].values() for n in row.values())
    right = sum(g == p for g, p in zip(table.column("gold").to_pylist(), table.column("label").to_pylist()))
    assert agreement["accuracy"] == round(right / table.num_rows, 4)
    said = f"{agreement['accuracy']:.1%} of the {table.num_rows} rows with a truth label"
    assert said in (tmp_path / "out" / "_report.html").read_text()
    if policy == "keep":
        assert ids == ["1", "2", "2", "2", "3"]
        return
    assert ids == ["1", "2", "3"]
    errors = pq.read_table(tmp_path / "out" / "_errors").to_pylist()
    assert sorted(e["id"] for e in errors) == ["2", "2"] and {e["reason"] for e in errors} == {"duplicate id"}
    # each record says which input row it stands for, as any other quarantined row does (it said row=None)
    assert sorted((e["shard"].rsplit("/", 1)[-1], e["row"]) for e in errors) == [("a.jsonl", 2), ("b.jsonl", 0)]
    assert summary["error_reasons"] == {"duplicate id": 2}
    assert summary["rows_in"] == 5


def test_under_duplicate_ids_error_a_row_without_an_id_is_quarantined_as_such(tmp_path):
    """Null ids were taken for duplicates of each other: the first was written, the others quarantined as
    "duplicate id", so the output that should hold unique ids held a null one."""
    import pyarrow.fs as pafs

    from pipelines.io.block import ROW
    from pipelines.io.shards import list_shards
    from pipelines.output.duplicates import DuplicateIds

    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "t"}])
    [shard] = list_shards([str(tmp_path / "a.jsonl")])
    table = pa.table({"id": ["a", None, "a", None, "b"], ROW: list(range(5))})
    kept, errors = DuplicateIds(pafs.LocalFileSystem(), str(tmp_path), "id", [])(table, shard)
    assert kept.column("id").to_pylist() == ["a", "b"]
    assert errors is not None
    assert list(zip(errors.column("row").to_pylist(), errors.column("reason").to_pylist())) == [
        (1, "id is null"), (2, "duplicate id"), (3, "id is null")]


def test_duplicate_ids_sees_an_id_an_earlier_version_wrote_in_exponent_form(tmp_path):
    """An earlier version wrote a Parquet id stored as a float in Arrow's exponent form from 10**10 up
    (``1.733100000001e+12``); this one writes its digits. Resuming such an output under ``errors.duplicate_ids:
    error``, the screen knew the committed ids only in their old spelling, so a later shard's row with the same id
    (``1733100000001``, from an int64 or a float64 column alike) was written again: one id twice in the output whose
    ids this policy keeps unique."""
    import pyarrow.fs as pafs

    from pipelines.io.block import ROW
    from pipelines.io.shards import list_shards
    from pipelines.output.duplicates import DuplicateIds
    from pipelines.output.records import CommitRecord

    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"id": ["1.733100000001e+12", "1e+10", "20", "0.5", "9.223372036854776e+18"]}),
                   out / "part-old-00000.parquet")
    record = CommitRecord.parse({
        "shard": "old", "input": {"uri": str(tmp_path / "monday.parquet"), "size": 1}, "spec_hash": "h",
        "model": {"name": "m"}, "rows_in": 5, "rows": 5, "errors": 0, "files": ["part-old-00000.parquet"]})
    write_jsonl(tmp_path / "tuesday.jsonl", [{"id": "x", "text": "t"}])
    [shard] = list_shards([str(tmp_path / "tuesday.jsonl")])
    table = pa.table({"id": ["1733100000001", "10000000000", "20", "0.5", "1733100000002", "9223372036854775808"],
                      ROW: list(range(6))})
    kept, errors = DuplicateIds(pafs.LocalFileSystem(), str(out), "id", [record])(table, shard)
    assert kept.column("id").to_pylist() == ["1733100000002", "9223372036854775808"]  # past 2**53: no float's
    assert errors is not None and errors.column("reason").to_pylist() == ["duplicate id"] * 4


@pytest.mark.parametrize("how", ["prune", "redo_changed"])
def test_a_row_quarantined_as_a_duplicate_is_scored_again_when_the_row_it_repeated_leaves_the_output(tmp_path, how,
                                                                                                    monkeypatch):
    """Under ``errors.duplicate_ids: error``, b.jsonl's row ``x`` was quarantined as a duplicate of a.jsonl's. Then
    a.jsonl was deleted (``--prune``) or changed to drop ``x`` (``--redo-changed``): its output was deleted, and b's
    ``x`` stayed quarantined as a duplicate of a row that no output held: the input's id ``x`` was in no part file,
    though the policy promises ids that are unique and none missing. A shard that quarantined duplicate ids is now
    scored again with those whose output is deleted."""
    import pyarrow.fs as pafs

    from pipelines.io.shards import list_shards
    from pipelines.output.commit import OutputDir
    from pipelines.output.duplicates import DuplicateIds
    from pipelines.output.records import JobRecord, ModelRef
    from pipelines.runner import _pending

    out = tmp_path / "out"
    output = OutputDir(str(out))
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    inputs = {"a": ["x", "a1"], "b": ["x", "b1"], "c": ["c1"]}
    for name, ids in inputs.items():
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", [{"id": i, "text": "t"} for i in ids])
    shards = {s.name: s for s in list_shards([str(tmp_path / "in")])}
    for name, ids in inputs.items():  # committed as a run commits them: each screened against those before
        shard = shards[f"{name}.jsonl"]
        staged = out / "_staging" / shard.key / "data.parquet"
        staged.parent.mkdir(parents=True)
        pq.write_table(pa.table({"id": ids, "_row": list(range(len(ids)))}), staged)
        screen = DuplicateIds(pafs.LocalFileSystem(), str(out), "id", list(output.commits().values()))
        report = StagingReport(shard=shard.key, shard_rows=len(ids), rows=len(ids), errors=0, files=[str(staged)],
                               row_ranges=[(0, len(ids))])
        output.commit(shard, [report], job, screen=screen)
    assert pq.read_table(out / "_errors").column("id").to_pylist() == ["x"]  # b's

    if how == "prune":
        (tmp_path / "in" / "a.jsonl").unlink()
    else:
        write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a1", "text": "t"}])
    now = list_shards([str(tmp_path / "in")])
    forget, order = OutputDir.forget, []

    def forget_in_order(self, record):
        order.append(record.input.name)
        forget(self, record)

    monkeypatch.setattr(OutputDir, "forget", forget_in_order)
    pending, committed = _pending(output, job, now, False, prune=how == "prune", dry=False,
                                  redo_changed=how == "redo_changed")
    assert order == ["b.jsonl", "a.jsonl"]  # b's first: a crash between the two leaves a's to redo both next time
    assert sorted(s.name for s in pending) == (["b.jsonl"] if how == "prune" else ["a.jsonl", "b.jsonl"])
    assert [r.input.name for r in committed.values()] == ["c.jsonl"]  # a shard without repeats stays as it is
    assert not (out / "_errors").exists()  # no _errors/ where nothing is quarantined (an empty folder was left)
    assert sorted(pq.read_table(out).column("id").to_pylist()) == ["c1"]


def test_tokens_count_the_rows_the_output_holds_and_no_quarantined_one(tmp_path):
    """The rows quarantined as duplicate ids at commit kept their tokens in the shard's (and _run.json's) tokens,
    padded and generated tokens, as did a row quarantined by the predictor after its forward (a text cut under
    ``errors.too_long: error``): figures for rows the output does not hold."""
    import pyarrow.fs as pafs

    from pipelines.io.block import ERROR, GENERATED, PADDED, ROW, SHARD, SHARD_ROWS, TOKENS
    from pipelines.io.shards import list_shards
    from pipelines.output.commit import OutputDir
    from pipelines.output.duplicates import DuplicateIds
    from pipelines.output.records import JobRecord, ModelRef
    from pipelines.output.staging import StagingConfig, StagingReport, write_staged

    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "t"}])
    [shard] = list_shards([str(tmp_path / "a.jsonl")])
    errors = [None, None, None, "text longer than max_length (max_length is 4 tokens)", None]
    block = pa.table({
        "id": ["a", "b", "a", "c", "b"], "text": ["t"] * 5, ROW: list(range(5)), SHARD: [shard.key] * 5,
        SHARD_ROWS: [5] * 5, ERROR: pa.array(errors, pa.string()), TOKENS: [3, 5, 7, 11, 13],
        PADDED: [4, 6, 8, 12, 14], GENERATED: [1, 2, 4, 8, 16],
    })
    out = tmp_path / "out"
    config = StagingConfig(output=str(out), id_column="id", text_column="text", output_columns=("id",))
    reports = StagingReport.from_table(write_staged(block, config))
    output = OutputDir(str(out))
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    record = output.commit(shard, reports, job, screen=DuplicateIds(pafs.LocalFileSystem(), str(out), "id", []))
    assert (record.rows, record.errors) == (2, 3)  # a and b answered; the second a, c and the second b not
    assert (record.tokens, record.padded, record.generated) == (3 + 5, 4 + 6, 1 + 2)
    [part] = out.glob("part-*.parquet")
    assert pq.read_table(part).column_names == ["id"]  # the counts stay bookkeeping


# a full disk ----------------------------------------------------------------------------------------------------


def _disk_full_at(monkeypatch, point: str) -> None:
    """The n-th write at ``point`` of this process fails as a full disk does (see pipelines.faults), counted afresh."""
    from collections import Counter

    from pipelines import faults

    monkeypatch.setattr(faults, "_reached", Counter())
    monkeypatch.setenv("PIPELINES_WRITE_FAILS_AT", point)


def test_a_full_disk_during_a_commit_is_one_line_and_the_same_command_resumes(
    ray_session, tiny_models, tmp_path, monkeypatch
):
    """A full disk (or a used-up quota) is not a permission problem: the line says so, and that running the same
    command again after freeing space resumes, with no row lost or written twice."""
    ids = many_shards(tmp_path / "in", shards=3)
    spec = spec_from_dict(yaml.safe_load(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in").read_text()))
    out = tmp_path / "out"
    _disk_full_at(monkeypatch, "merge:2")  # the second shard's merge, in the driver
    with pytest.raises(PipelineError) as full:
        run_job(spec)
    said = str(full.value)
    assert said.startswith(f"output.path {out}: no space left on the disk (") and "[errno 28]" in said, said
    assert "run the same command again" in said and "committed shards are kept" in said, said
    assert "permissions" not in said, said
    assert commits(out) == 1

    _disk_full_at(monkeypatch, "_job.json:1:EDQUOT")  # the next run's first write: over the disk quota
    with pytest.raises(PipelineError, match=r"disk quota .*\[errno 122\].*run the same command again") as quota:
        run_job(spec)
    assert "permissions" not in str(quota.value)

    monkeypatch.delenv("PIPELINES_WRITE_FAILS_AT")
    resumed = run_job(spec)
    assert resumed.shards_this_run == 2
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))


@dataclass
class Unfinished:
    spec: JobSpec
    inputs: Path
    ids: list[str]
    out: Path  # the output as the failed run left it; resumed in place by the test of the summary
    copy: Path  # a copy taken as the run ended, before any test ran: for the test of the report
    said: str  # the failed run's error


@pytest.fixture(scope="module")
def summary_write_failed(ray_session, tiny_models, tmp_path_factory) -> Unfinished:
    """One scoring run of a one-shard job whose first _run.json write finds the disk full: its shard committed,
    no summary, no report, no _SUCCESS. The two tests below share it (one scoring run, not two): each goes on from
    there with a run that scores nothing, the summary's test in this output, the report's test in a copy of it."""
    root = tmp_path_factory.mktemp("summary-write-failed")
    ids = many_shards(root / "in", shards=1)
    spec = spec_from_dict(yaml.safe_load(write_job(root, tiny_models("classifier"), root / "in").read_text()))
    with pytest.MonkeyPatch.context() as monkeypatch:
        _disk_full_at(monkeypatch, "_run.json:1")
        with pytest.raises(PipelineError) as full:
            run_job(spec)
    shutil.copytree(root / "out", root / "unfinished")
    return Unfinished(spec, root / "in", ids, root / "out", root / "unfinished", str(full.value))


def test_a_write_that_fails_leaves_no_temporary_file(summary_write_failed, tiny_models, tmp_path, monkeypatch):
    """The report is a view of committed results: a full disk while writing it is a warning (report: not written),
    and its temporary file, as much of the page as fitted, is deleted with it. (The run that writes it here finishes
    an output whose shard is committed; the page is the same one a run that scored writes at its end.)"""
    shutil.copytree(summary_write_failed.copy, tmp_path / "out")
    inputs = summary_write_failed.inputs  # the same job, its output here
    spec = spec_from_dict(yaml.safe_load(write_job(tmp_path, tiny_models("classifier"), inputs).read_text()))
    out = tmp_path / "out"
    _disk_full_at(monkeypatch, "_report.html:1")
    done = run_job(spec)
    assert done.report is None and (out / "_SUCCESS").exists()
    assert sorted(output_ids(out)) == sorted(summary_write_failed.ids)
    assert [p.name for p in out.rglob("*.tmp")] == []


def test_a_full_disk_while_writing_the_run_summary_is_one_line(summary_write_failed):
    """After the last commit only _run.json and _SUCCESS are left to write: a full disk there is the same one line
    (no traceback), leaves no temporary file, and the same command finishes the job without scoring again."""
    spec, out = summary_write_failed.spec, summary_write_failed.out
    assert re.search(r"no space left on the disk .*run the same command again", summary_write_failed.said)
    assert [p.name for p in out.rglob("*.tmp")] == [] and not (out / "_SUCCESS").exists()
    assert run_job(spec).shards_this_run == 0 and (out / "_SUCCESS").exists()
    assert sorted(output_ids(out)) == sorted(summary_write_failed.ids)


def test_a_full_disk_while_the_actor_stages_is_the_same_one_line(tiny_models, tmp_path):
    """The pool's actor stages each predicted block under output.path: a full disk there ends the run as a full disk
    on the driver does (exit 2, one line), not with Ray's remote traceback and its advice on retries."""
    many_shards(tmp_path / "in", shards=2)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    done = cli("run", str(job), env={"PIPELINES_WRITE_FAILS_AT": "stage:2"})  # the actor's second staged file
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    report, line = done.stderr.strip().splitlines()[-2:]
    assert line.startswith(f"error: output.path {tmp_path / 'out'}: no space left on the disk ("), done.stderr[-3000:]
    assert "run the same command again" in line
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # the README's line before a failed run's error (the driver's own full disk had it; the actor's did not)
    # (the actor's second staged file is of the first shard: nothing is committed, and there is no page to build)
    assert report == f"report: none, as no shard of {tmp_path / 'out'} is committed yet", done.stderr[-3000:]


def test_the_duplicate_id_screen_looks_each_shards_ids_up_without_rebuilding_the_set_of_ids_seen(tmp_path, monkeypatch):
    """The screen (errors.duplicate_ids: error, or an OpenAI Batch input) combined every id committed so far into one
    array and built a hash table of it again at each shard's commit: work that grew with the ids seen, per shard, so
    quadratic in the shards. 1,000 shards of 100 rows took 4.7 s of the driver's time, 4,000 took 208 s (20,000
    small parts: hours). The ids handed to a set lookup (pyarrow's is_in / index_in build a table of their value set
    at each call) now add up to at most the rows screened; and every repeat, across shards too, is still found."""
    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    from pipelines.io.block import ROW
    from pipelines.io.shards import list_shards
    from pipelines.output import duplicates

    looked_up = []

    def counting(kernel):
        def lookup(values, *args, value_set, **kwargs):
            looked_up.append(len(value_set))
            return kernel(values, *args, value_set=value_set, **kwargs)
        return lookup

    for name in ("is_in", "index_in"):
        monkeypatch.setattr(pc, name, counting(getattr(pc, name)))
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "t"}])
    [shard] = list_shards([str(tmp_path / "a.jsonl")])
    screen = duplicates.DuplicateIds(pafs.LocalFileSystem(), str(tmp_path), "id", [])
    keep = duplicates.DuplicateIds(pafs.LocalFileSystem(), str(tmp_path), "id", [], quarantine=False)
    shards, rows = 300, 10
    quarantined = []
    for n in range(shards):  # each shard repeats one id of the shard before it, and one of its own
        ids = [f"s{n}-{i}" for i in range(rows - 2)] + [f"s{max(n - 1, 0)}-0", f"s{n}-1"]
        table = pa.table({"id": ids, ROW: list(range(rows))})
        kept, errors = screen(table, shard)
        keep(table, shard)
        assert kept.num_rows + (errors.num_rows if errors is not None else 0) == rows
        quarantined += [] if errors is None else errors.column("id").to_pylist()
    repeats = [[f"s{max(n - 1, 0)}-0", f"s{n}-1"] for n in range(shards)]
    assert quarantined == [i for pair in repeats for i in pair]
    assert keep.repeated == list(dict.fromkeys(i for pair in repeats for i in pair))  # each named once
    assert sum(looked_up) <= 2 * shards * rows, (
        f"the screen handed {sum(looked_up):,} ids to set lookups for {shards * rows:,} rows screened")


def test_a_batch_that_kills_its_actor_every_time_fails_the_run_naming_it_not_retried_forever(tiny_models, tmp_path):
    """The out-of-memory killer ends the actor on a batch too big for the node, every time it is tried: Ray Data
    restarted the actor and retried the batch without end (a tester's run: 47 restarts in 150 s, no line naming
    anything, ended only by SIGTERM). The batch is tried a few times, then the run fails saying so; shards committed
    before stay, whole, each row once, and the run resumes where it stopped once the cause is gone."""
    ids = many_shards(tmp_path / "in", shards=3)
    poisoned = tmp_path / "in" / "part-1.jsonl"
    poisoned.write_text(poisoned.read_text().replace('"text": "', '"text": "POISON ', 1))
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", batching={"batch_size": 4})
    failed = cli("run", str(job), env={"PIPELINES_CRASH_ON_TEXT": "POISON"})
    assert failed.returncode == 2, failed.stderr[-3000:]
    said = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(said) == 1, failed.stderr[-3000:]
    assert "actor died" in said[0] and "part-1.jsonl" in said[0] and "run the same command again" in said[0], said[0]
    assert "may or may not have been executed" not in said[0]  # Ray's own word, without what does not help here
    out = tmp_path / "out"
    got = output_ids(out) if commits(out) else []
    assert len(got) == len(set(got)) and not {i for i in got if i.startswith("s1-")}  # no row of the batch's shard
    resumed = cli("run", str(job))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
