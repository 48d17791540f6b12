"""Object stores for real: jobs that read from and write to an S3 API (moto on 127.0.0.1, one per session).

The server checks every request's signature and the user's policy (``s3_server``), so a wrong key, a
read-only user and a missing bucket are refused the way S3 refuses them. The CLI runs as a user runs
it, credentials and endpoint in its environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and
``AWS_ENDPOINT_URL``, or ``AWS_PROFILE``), each run on its own local Ray, whose workers inherit them; but for the
killed and resumed runs of one output (``resuming_ray``), which join one Ray started with the same user's settings.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, SENTENCES, write_jsonl, write_parquet
from s3_server import REGION

from pipelines.errors import PipelineError
from pipelines.io import stores
from pipelines.io.shards import Shard
from pipelines.output import commit as commits_module
from pipelines.output.commit import OutputDir
from pipelines.output.layout import is_part_file, part_shard
from pipelines.output.lock import LockHeld, output_lock
from pipelines.output.object_lock import ObjectLock, Seen, here, stale_reason
from pipelines.output.records import JobRecord, ModelRef
from pipelines.output.staging import StagingReport
from pipelines.runner import run_job
from pipelines.spec import load_spec, spec_from_dict

IN, OUT = "pipelines-in", "pipelines-out"


def news_shards(folder: Path, rows: int = 10) -> dict[str, set[str]]:
    """Two shards each of JSON lines, gzip-compressed JSON lines and Parquet; shard name → its ids."""
    shards: dict[str, set[str]] = {}
    for k in range(2):
        for name, kind in ((f"jsonl/part-{k}.jsonl", "j"), (f"gzip/part-{k}.jsonl.gz", "g"),
                           (f"parquet/part-{k}.parquet", "p")):
            batch = [{"id": f"{kind}{k}-{i}", "text": SENTENCES[(k + i) % len(SENTENCES)]} for i in range(rows)]
            path = folder / name
            if kind == "p":
                write_parquet(path, batch)
            elif kind == "g":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in batch).encode()))
            else:
                write_jsonl(path, batch)
            shards[name] = {r["id"] for r in batch}
    return shards


def s3_job(tmp_path: Path, model: str, inputs: str, output: str) -> Path:
    raw = {
        "name": "s3-news",
        "input": {"paths": [inputs]},
        "model": {"name": model},
        "task": {"type": "text-classification"},
        "batching": {"batch_size": 8},
        "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1},
        "output": {"path": output},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(s3, *args: str, user: str | None = "admin", env: dict | None = None, address: str | None = None,
        token: str | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, with the AWS settings a user exports (never this machine's own); ``address`` and
    ``token``: join that Ray (see :func:`resuming_ray`) instead of starting a local one."""
    environment = s3.env(user, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **(env or {}))
    environment.pop("RAY_ADDRESS", None)
    if token:
        environment["RAY_AUTH_TOKEN"] = token
    joining = ["--address", address] if address else []
    return subprocess.run([sys.executable, "-m", "pipelines", *args, *joining], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture()
def resuming_ray(s3_server):
    """A Ray whose workers have the admin user's AWS settings, as a local Ray started by ``cli(s3_server, ...)`` has
    them: a run given ``joined(resuming_ray)`` joins it rather than starting and stopping a Ray of its own (5-10 s a
    run on 2 cores; this one takes about 15 s to start and stop, so it pays for a test of several runs). The crash
    points (mid_commit, ...) are the driver's, read from the command's own environment."""
    from ray_head import ray_head

    with ray_head(num_cpus=2, extra_env=s3_server.aws_env("admin")) as head:
        yield head


def joined(head) -> dict:
    """``cli`` keyword arguments that join ``head`` (see :func:`resuming_ray`)."""
    return {"address": head.gcs_address, "token": head.token}


def read_object(s3, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(s3.client().get_object(Bucket=OUT, Key=key)["Body"].read()))


def reader_view(s3, prefix: str, shards: dict[str, set[str]]) -> tuple[dict[str, set[str]], list[str]]:
    """What a reader listing ``prefix/`` sees, checked: apart from ``_`` entries only part files, each with a
    commit record and holding exactly all of one shard's rows. Returns the visible shards and every key."""
    keys = s3.keys(OUT, prefix)
    records = [json.loads(s3.client().get_object(Bucket=OUT, Key=f"{prefix}/{k}")["Body"].read())
               for k in keys if k.startswith("_commits/") and k.endswith(".json")]
    names = {r["shard"]: r["input"]["name"] for r in records}
    visible = {}
    for key in keys:
        if key == "" or key.startswith("_"):
            continue  # the prefix's own marker; bookkeeping and staging, which readers skip
        assert is_part_file(key) and "/" not in key, f"a reader sees {key}"
        name = names[part_shard(key)]  # a visible file has its commit record ...
        ids = read_object(s3, f"{prefix}/{key}").column("id").to_pylist()
        assert sorted(ids) == sorted(shards[name]), name  # ... and all of its shard's rows, once
        visible[name] = set(ids)
    return visible, keys


def use_s3(monkeypatch, s3, user: str | None = "admin") -> None:
    """This process (the test, as a reader or a second machine) with the AWS settings a user exports."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3.aws_env(user).items():
        monkeypatch.setenv(name, value)


# the cluster workflow's storage: run, crash, resume, read, overwrite --------------------------------------


def test_a_job_on_s3_resumes_after_a_driver_kill_at_each_commit_point(s3_server, resuming_ray, tiny_models, tmp_path,
                                                                       monkeypatch):
    shards = news_shards(tmp_path / "in")
    s3_server.upload(IN, "news", tmp_path / "in")
    job = s3_job(tmp_path, tiny_models("classifier"), f"s3://{IN}/news", f"s3://{OUT}/labels")
    ids = sorted(set().union(*shards.values()))

    # point the driver is killed at → (commit records, shards visible) after it; each run resumes the last (a kill
    # before a commit and before the summary: test_faults.py, on a local folder)
    steps = {"mid_commit:1": (1, 0), "mid_reveal:1": (1, 1), "after_commit:1": (2, 2)}
    for point, (committed, shown) in steps.items():
        crashed = cli(s3_server, "run", str(job), env={"PIPELINES_CRASH_AT": point}, **joined(resuming_ray))
        assert crashed.returncode == -9, (point, crashed.stderr[-3000:])
        visible, keys = reader_view(s3_server, "labels", shards)
        assert len([k for k in keys if k.startswith("_commits/") and k.endswith(".json")]) == committed, point
        assert len(visible) == shown, point
        assert "_SUCCESS" not in keys and "_run.lock" in keys  # the killed run's lock object is left behind
        if point == "mid_reveal:1":  # the data object was copied into place, its staged copy not yet deleted
            assert [k for k in keys if k.endswith("/commit-data.parquet")], keys
        if point != "mid_commit:1":  # the next run took over the lock of the killed one at once
            assert "took over the lock" in crashed.stderr and "has ended" in crashed.stderr

    finished = cli(s3_server, "run", str(job), **joined(resuming_ray))
    assert finished.returncode == 0, finished.stderr[-3000:]
    visible, keys = reader_view(s3_server, "labels", shards)
    assert visible == shards and "_SUCCESS" in keys
    assert not [k for k in keys if k.startswith("_staging/") and not k.endswith("/")], keys  # staging cleaned up
    assert "_run.lock" not in keys  # released
    summary = json.loads(s3_server.client().get_object(Bucket=OUT, Key="labels/_run.json")["Body"].read())
    assert summary["rows_in"] == summary["rows_out"] == len(ids)

    use_s3(monkeypatch, s3_server)
    assert_readers_see(f"s3://{OUT}/labels", ids)
    again = cli(s3_server, "run", str(job))
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-2000:]

    # --overwrite replaces every shard (new commit records) and deletes only what this project wrote
    before = {r["shard"]: r["committed_at"] for r in records(s3_server, "labels")}
    s3_server.client().put_object(Bucket=OUT, Key="labels/README.txt", Body=b"someone else's file")
    redone = cli(s3_server, "run", str(job), "--overwrite", **joined(resuming_ray))
    assert redone.returncode == 0, redone.stderr[-3000:]
    after = {r["shard"]: r["committed_at"] for r in records(s3_server, "labels")}
    assert after.keys() == before.keys() and all(after[k] > before[k] for k in before)
    keys = s3_server.keys(OUT, "labels")
    assert "README.txt" in keys
    assert sorted(i for k in keys if is_part_file(k) for i in read_object(s3_server, f"labels/{k}")["id"].to_pylist()) == ids


def records(s3, prefix: str) -> list[dict]:
    client = s3.client()
    return [json.loads(client.get_object(Bucket=OUT, Key=f"{prefix}/{k}")["Body"].read())
            for k in s3.keys(OUT, prefix) if k.startswith("_commits/") and k.endswith(".json")]


def assert_readers_see(uri: str, ids: list[str]) -> None:
    """The README's reads of a job's output, on the object store: each row once."""
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds

    assert sorted(pq.read_table(uri).column("id").to_pylist()) == ids  # _run.json, _commits/ ... skipped
    frame = pl.read_parquet(f"{uri}/*.parquet")  # Polars reads AWS_ENDPOINT_URL and the keys from the environment
    assert sorted(frame["id"].to_list()) == ids
    # DuckDB reads s3:// through its httpfs extension, which it downloads on INSTALL from DuckDB's own server
    # (unreachable here); the PyPI builds of it are for other DuckDB versions than the one installed. So DuckDB
    # queries the files through pyarrow's dataset (its Arrow scan), the way to read them without httpfs.
    dataset = ds.dataset(uri, format="parquet")  # noqa: F841 - DuckDB finds it by its name
    counted = duckdb.sql("select count(*), count(distinct id) from dataset").fetchall()
    assert counted == [(len(ids), len(ids))]


def test_schedule_once_on_s3_scores_only_the_new_object(s3_server, tiny_models, tmp_path, monkeypatch):
    """Credentials from a profile (AWS_PROFILE and a shared credentials file) instead of the environment."""
    write_jsonl(tmp_path / "landing" / "a.jsonl", [{"id": f"a{i}", "text": SENTENCES[i]} for i in range(6)])
    s3_server.upload(IN, "landing", tmp_path / "landing")
    job = s3_job(tmp_path, tiny_models("classifier"), f"s3://{IN}/landing", f"s3://{OUT}/nightly")
    profile = {"AWS_PROFILE": "pipelines",
               "AWS_SHARED_CREDENTIALS_FILE": str(s3_server.credentials_file(tmp_path / "credentials", "pipelines"))}

    first = cli(s3_server, "schedule", str(job), "--once", user=None, env=profile)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "succeeded, scored new input: 1 shard(s) this run, 6 rows" in first.stdout

    use_s3(monkeypatch, s3_server)
    with output_lock(f"s3://{OUT}/nightly", "_schedule.lock", "job s3-news"):  # held here: a second machine waits
        busy = cli(s3_server, "schedule", str(job), "--once", user=None, env=profile)
    assert busy.returncode == 75 and f"another run of job s3-news is in progress (pid {os.getpid()}" in busy.stderr

    write_jsonl(tmp_path / "more" / "b.jsonl", [{"id": f"b{i}", "text": SENTENCES[i]} for i in range(4)])
    s3_server.upload(IN, "landing", tmp_path / "more")
    second = cli(s3_server, "schedule", str(job), "--once", user=None, env=profile)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "succeeded, scored new input: 1 shard(s) this run, 4 rows" in second.stdout

    import pyarrow.dataset as ds

    every = ds.dataset(f"s3://{OUT}/nightly", format="parquet", partitioning="hive").to_table()
    assert sorted(every.column("id").to_pylist()) == sorted([f"a{i}" for i in range(6)] + [f"b{i}" for i in range(4)])
    assert len(set(every.column("run").to_pylist())) == 2
    assert not [k for k in s3_server.keys(OUT, "nightly") if k.endswith(".lock")]

    # a changed object: its earlier output moves to _superseded/, so a reader of the root sees each row once. On S3
    # it stayed in place (the partition's records were looked for at the bucket's path taken for a local folder, and
    # not found): every row of a.jsonl twice, while the log and `pipelines runs` said it had moved
    write_jsonl(tmp_path / "changed" / "a.jsonl", [{"id": f"a{i}", "text": SENTENCES[i + 1]} for i in range(6)])
    s3_server.upload(IN, "landing", tmp_path / "changed")
    third = cli(s3_server, "schedule", str(job), "--once", user=None, env=profile)
    assert third.returncode == 0, third.stderr[-3000:]
    every = ds.dataset(f"s3://{OUT}/nightly", format="parquet", partitioning="hive", exclude_invalid_files=True,
                       ignore_prefixes=["_", "."]).to_table()
    assert sorted(every.column("id").to_pylist()) == sorted([f"a{i}" for i in range(6)] + [f"b{i}" for i in range(4)])
    assert [k for k in s3_server.keys(OUT, "nightly") if "/_superseded/" in f"/{k}" and k.endswith(".parquet")]


# refused before any work -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "output", "user", "command", "message"),
    [
        ("s3://no-such-bucket/news", f"s3://{OUT}/refused", "admin", "run",
         "input.paths: s3://no-such-bucket/news: the bucket no-such-bucket does not exist at http://127.0.0.1:"),
        (f"s3://{IN}/news", "s3://no-such-bucket/labels", "admin", "run",
         "output.path s3://no-such-bucket/labels: the bucket no-such-bucket does not exist at http://127.0.0.1:"),
        (f"s3://{IN}/news", f"s3://{OUT}/refused", "reader", "run",
         f"output.path s3://{OUT}/refused: access denied at http://127.0.0.1:"),
        (f"s3://{IN}/news", f"s3://{OUT}/refused", "reader", "schedule",
         f"output.path s3://{OUT}/refused: access denied at http://127.0.0.1:"),
        (f"s3://{IN}/news/*.jsonl", f"s3://{OUT}/refused", "stranger", "run",
         f"input.paths: s3://{IN}/news/*.jsonl: the store at http://127.0.0.1:"),
        # a scheduled tick took any error listing a glob for "no new input yet" and succeeded, every night
        ("s3://no-such-bucket/news/*.jsonl", f"s3://{OUT}/refused", "admin", "schedule",
         "input.paths: s3://no-such-bucket/news/*.jsonl: the bucket no-such-bucket does not exist at http://127.0.0.1:"),
    ],
)
def test_a_missing_bucket_or_a_refused_request_is_one_line_before_any_work(
    s3_server, tiny_models, tmp_path, inputs, output, user, command, message
):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "words"}])
    s3_server.upload(IN, "news", tmp_path / "in")
    job = s3_job(tmp_path, tiny_models("classifier"), inputs, output)
    env = {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN", "AWS_SECRET_ACCESS_KEY": "wrong"} if user == "stranger" else {}
    done = cli(s3_server, command, str(job), *(["--once"] if command == "schedule" else []),
               user="admin" if user == "stranger" else user, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert message in line, line
    if user == "reader":
        assert "may write and delete objects (s3:PutObject, s3:DeleteObject)" in line
    if user == "stranger":
        assert "refused the credentials (invalid_access_key_id)" in line
    assert "Traceback" not in done.stderr and "Started a local Ray" not in done.stderr
    bucket, prefix = output.removeprefix("s3://").split("/", 1)
    if bucket == OUT and command == "schedule" and message.startswith("input.paths"):
        assert "_runs.jsonl" not in s3_server.keys(OUT, prefix)  # no tick recorded: the next one tries again
    elif bucket == OUT:
        assert s3_server.keys(OUT, prefix) == []  # nothing written (nor left: the write probe is deleted)


def test_credentials_that_may_write_but_not_delete_are_refused_naming_the_probe_they_leave(s3_server, tiny_models,
                                                                                          tmp_path):
    """README: before any work nothing is left written; a user that may write objects and not delete them writes the
    empty probe object and cannot delete it, so it stays: the one line says so and names it (it said nothing of it)."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "words"}])
    s3_server.upload(IN, "news-writer", tmp_path / "in")
    job = s3_job(tmp_path, tiny_models("classifier"), f"s3://{IN}/news-writer", f"s3://{OUT}/no-delete")
    done = cli(s3_server, "run", str(job), user="writer")
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: output.path s3://{OUT}/no-delete: access denied at http://127.0.0.1:"), line
    assert "(DeleteObject)" in line and "may write and delete objects (s3:PutObject, s3:DeleteObject)" in line, line
    [left] = s3_server.keys(OUT, "no-delete")
    assert left.startswith("_staging/.write-check-"), left
    assert f"the empty probe object s3://{OUT}/no-delete/{left} it wrote stays there" in line, line
    assert "Traceback" not in done.stderr and "Started a local Ray" not in done.stderr


# the lock across machines ---------------------------------------------------------------------------


def test_commit_records_on_an_object_store_are_read_several_at_a_time(s3_server, monkeypatch):
    """A resume reads every commit record a few times; on an object store each read is a request of tens of
    milliseconds, so 20,000 records read one after the other took minutes a pass. Here four reads must be in
    flight at once to get past the barrier (read one at a time, the first waits alone until it breaks)."""
    import threading

    from pipelines.output import layout
    from pipelines.output.commit import OutputDir

    use_s3(monkeypatch, s3_server)
    client = s3_server.client()
    for n in range(4):
        record = {"shard": f"k{n}", "input": {"uri": f"s3://{IN}/k{n}.jsonl", "size": 1}, "spec_hash": "h",
                  "model": {"name": "m"}, "rows_in": 1, "rows": 1, "errors": 0, "files": [f"part-k{n}.parquet"]}
        client.put_object(Bucket=OUT, Key=f"records/_commits/k{n}.json", Body=json.dumps(record).encode())
    together = threading.Barrier(4, timeout=60)
    read_json = layout.read_json

    def read_with_the_others(fs, path):
        if "/_commits/" in path:
            together.wait()
        return read_json(fs, path)

    monkeypatch.setattr(layout, "read_json", read_with_the_others)
    assert sorted(OutputDir(f"s3://{OUT}/records").commits()) == ["k0", "k1", "k2", "k3"]


def test_the_s3_lock_is_one_holder_at_a_time_and_a_lease(s3_server, monkeypatch):
    use_s3(monkeypatch, s3_server)
    location = f"s3://{OUT}/locked"
    first = output_lock(location, "_run.lock", "the output")
    assert isinstance(first, ObjectLock)
    with first:
        with pytest.raises(LockHeld, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            output_lock(location, "_run.lock", "the output").acquire()
        second = output_lock(location, "_run.lock", "the output")
        seen = second.read()
        first.renew()  # the lease starts again: a take-over decided on what was seen before fails
        assert not second.take_over(seen)
        assert second.take_over(second.read())  # as if the first holder had stalled past its lease
        first.renew()
        with pytest.raises(PipelineError, match="was taken over by another run"):
            first.check()  # the stalled run stops before its next commit
    assert second.read().holder["token"] == second.token  # releasing a lost lock leaves the new holder's

    # a holder on another machine: held until its lease runs out (by the store's clock), then taken over
    s3_server.client().put_object(Bucket=OUT, Key="locked/_run.lock",
                                  Body=json.dumps({"pid": 1, "host": "other-machine", "since": 0}).encode())
    with pytest.raises(LockHeld, match="pid 1 on other-machine"):
        output_lock(location, "_run.lock", "the output").acquire()
    this = {"host": "this-machine", "processes": "boot-1/4026531836"}
    young = Seen("etag", {"pid": 1, "host": "other-machine"}, age_s=5)
    assert stale_reason(young, 60, this, lambda pid: True) is None
    assert "not renewed for 61 s" in stale_reason(Seen("etag", young.holder, 61), 60, this, lambda pid: True)
    ended = Seen("etag", {"pid": 1, **this}, age_s=5)
    assert "has ended" in stale_reason(ended, 60, this, lambda pid: False)
    # the same host name, other processes (a container with the node's host name, another machine of that name;
    # an older record that doesn't say): a pid that is not alive here may be alive there, so only the lease counts
    for holder in ({"pid": 1, "host": "this-machine", "processes": "boot-1/4026532999"},
                   {"pid": 1, "host": "this-machine", "processes": "boot-2/4026531836"},
                   {"pid": 1, "host": "this-machine"}):
        assert stale_reason(Seen("etag", holder, age_s=5), 60, this, lambda pid: False) is None, holder
    assert here()["host"] == socket.gethostname() and here()["processes"].count("/") == 1  # read from /proc
    elsewhere = {"pid": 2**22 + 1, "host": socket.gethostname(), "processes": "boot-x/1", "since": 0}  # a pid not
    s3_server.client().put_object(Bucket=OUT, Key="locked/_run.lock", Body=json.dumps(elsewhere).encode())  # here
    with pytest.raises(LockHeld, match=f"pid {2**22 + 1} on {socket.gethostname()}"):
        output_lock(location, "_run.lock", "the output").acquire()  # not taken over: its lease is young


def test_a_run_that_meets_another_runs_overwrite_half_done_on_s3_is_refused_as_busy(s3_server, tiny_models, tmp_path,
                                                                                   monkeypatch):
    """On S3 too, an output met half-way through another run's --overwrite (its user's objects, none of this
    project's records) is that run's: refused as busy while its lease is renewed, not as someone else's folder."""
    use_s3(monkeypatch, s3_server)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a0", "text": SENTENCES[0]}])
    spec = load_spec(s3_job(tmp_path, tiny_models("classifier"), str(tmp_path / "in"), f"s3://{OUT}/half-cleared"))
    s3_server.client().put_object(Bucket=OUT, Key="half-cleared/notes.txt", Body=b"the user's")
    with output_lock(f"s3://{OUT}/half-cleared", "_run.lock", "the output"):  # the --overwrite run, half done
        with pytest.raises(LockHeld, match="another run of the output .* is in progress.* Meanwhile, reading the "
                                           "output met: .* holds no results of this project"):
            run_job(spec)
    with pytest.raises(PipelineError, match="holds no results of this project") as refused:
        run_job(spec)  # released: the lock object is gone
    assert not isinstance(refused.value, LockHeld)
    ended = {"pid": 2**22 + 1, **here(), "since": 0}  # above Linux's largest pid: not alive
    s3_server.client().put_object(Bucket=OUT, Key="half-cleared/_run.lock", Body=json.dumps(ended).encode())
    with pytest.raises(PipelineError, match="holds no results of this project") as refused:
        run_job(spec)  # a lock left by a run that has ended holds nothing up
    assert not isinstance(refused.value, LockHeld)


def test_pipelines_lock_local_keeps_apart_the_runs_of_this_machine_and_says_so(s3_server, monkeypatch, tmp_path,
                                                                               caplog):
    use_s3(monkeypatch, s3_server)
    monkeypatch.setenv("PIPELINES_LOCK", "local")
    monkeypatch.setenv("PIPELINES_LOCK_DIR", str(tmp_path / "locks"))
    location = f"s3://{OUT}/local-lock"
    with caplog.at_level("WARNING", logger="pipelines.output.lock"):
        first = output_lock(location, "_run.lock", "the output")
    assert not isinstance(first, ObjectLock)
    assert "kept apart only on this machine" in caplog.text
    with first:
        for same in (location, f"{location}/", f"s3://{OUT}/local%2Dlock"):  # one output, however it is written
            with pytest.raises(LockHeld):
                output_lock(same, "_run.lock", "the output").acquire()
        other_output = output_lock(f"s3://{OUT}/another", "_run.lock", "the output")
        other_output.acquire().release()  # a lock per output location, not one for the bucket
    assert [p.suffix for p in (tmp_path / "locks").iterdir()] == [".lock", ".lock"]
    listed = s3_server.client().list_objects_v2(Bucket=OUT, Prefix="local-lock/")
    assert listed.get("KeyCount", 0) == 0  # nothing written to the store


def test_a_lock_folder_given_relative_or_with_a_tilde_is_one_folder_for_every_working_directory(
    s3_server, tiny_models, monkeypatch, tmp_path
):
    """PIPELINES_LOCK_DIR=.locks, or ~/locks set where no shell expands the ~ (a systemd unit, a Kubernetes env, a
    crontab's variable), was a folder under the directory each command ran from: `pipelines schedule JOB --once` from
    cron (in the home directory) and `pipelines run` by hand from the project took their locks in two folders, and
    both wrote the output at once. A ~ is the home directory, as in a spec's paths; a relative folder is refused
    before any work, with one line that says to make it absolute."""
    use_s3(monkeypatch, s3_server)
    monkeypatch.setenv("PIPELINES_LOCK", "local")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINES_LOCK_DIR", "~/locks")
    location = f"s3://{OUT}/lock-dir"
    for folder in ("cron", "project"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "cron")
    with output_lock(location, "_run.lock", "the output"):
        monkeypatch.chdir(tmp_path / "project")
        with pytest.raises(LockHeld):
            output_lock(location, "_run.lock", "the output").acquire()
    assert [p.suffix for p in (tmp_path / "home" / "locks").iterdir()] == [".lock"]

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a0", "text": SENTENCES[0]}])
    job = s3_job(tmp_path, tiny_models("classifier"), str(tmp_path / "in"), location)
    environment = s3_server.env("admin", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), PIPELINES_LOCK="local",
                                PIPELINES_LOCK_DIR=".locks")
    environment.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "pipelines", "run", str(job)], cwd=tmp_path / "project",
                          env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-3000:])
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: PIPELINES_LOCK_DIR .locks is a relative path") and "absolute" in line, line
    assert not (tmp_path / "project" / ".locks").exists()
    assert s3_server.client().list_objects_v2(Bucket=OUT, Prefix="lock-dir/").get("KeyCount", 0) == 0


def test_no_commit_record_after_the_lock_is_lost_or_for_a_file_too_large_for_one_s3_copy(s3_server, monkeypatch):
    use_s3(monkeypatch, s3_server)
    output = OutputDir(f"s3://{OUT}/large")
    shard = Shard(f"s3://{IN}/large.jsonl", f"{IN}/large.jsonl", "jsonl", False, 1, 1, "large.jsonl")
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")

    def staged() -> StagingReport:
        path = f"{output.root}/_staging/{shard.key}/block-data.parquet"
        with output.fs.open_output_stream(path) as stream:
            pq.write_table(pa.table({"id": [f"r{i}" for i in range(500)]}), stream)
        return StagingReport(shard=shard.key, shard_rows=500, rows=500, errors=0, files=[path], row_ranges=[(0, 500)])

    lock = output_lock(output.location, "_run.lock", "the output").acquire()
    output.guard = lock.check  # as run_job sets it
    output_lock(output.location, "_run.lock", "the output").take_over(lock.read())  # another run took it over
    lock.renew()
    with pytest.raises(PipelineError, match="was taken over by another run"):
        output.commit(shard, [staged()], job)
    lock.release()
    assert output.commits() == {}

    output.guard = None
    monkeypatch.setattr(commits_module, "S3_COPY_LIMIT", 100)  # bytes, for a small file (S3's is 5 GiB)
    with pytest.raises(PipelineError, match="more than S3 copies in one request"):
        output.commit(shard, [staged()], job)
    assert output.commits() == {}


def test_a_run_that_lost_its_lock_stops_with_that_line_before_it_merges_or_cleans_up(s3_server, monkeypatch):
    """A holder stalled past its lease resumes into a commit while another run holds the lock and has deleted its
    staged files: it says its lock was taken over (not that it may not write there: the merge found the files gone),
    writes nothing into the new holder's staging folder, no record, and no _SUCCESS; stalled so that its renewing
    thread has not noticed yet, the commit's check renews the overdue lease itself and finds the take-over."""
    use_s3(monkeypatch, s3_server)
    output = OutputDir(f"s3://{OUT}/lost")
    shard = Shard(f"s3://{IN}/lost.jsonl", f"{IN}/lost.jsonl", "jsonl", False, 1, 1, "lost.jsonl")
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    folder = f"{output.root}/_staging/{shard.key}"

    def staged(name: str) -> StagingReport:
        with output.fs.open_output_stream(f"{folder}/{name}") as stream:
            pq.write_table(pa.table({"id": [f"r{i}" for i in range(5)]}), stream)
        return StagingReport(shard=shard.key, shard_rows=5, rows=5, errors=0, files=[f"{folder}/{name}"],
                             row_ranges=[(0, 5)])

    lock = output_lock(output.location, "_run.lock", "the output").acquire()
    output.guard = lock.check  # as run_job sets it
    mine = staged("old-data.parquet")
    output_lock(output.location, "_run.lock", "the output").take_over(lock.read())  # stalled past the lease
    OutputDir(output.location).clean()  # the new holder's start deletes the staging area
    staged("new-data.parquet")  # and stages the same shard anew
    # the stall: its renewing thread has not run since, the lease is overdue
    monkeypatch.setattr(lock, "_renewed", getattr(lock, "_renewed", 0.0) - lock.lease_s - 1, raising=False)
    for step in (lambda: output.commit(shard, [mine], job), output.finish):
        with pytest.raises(PipelineError, match="was taken over by another run"):
            step()
    lock.release()
    assert output.commits() == {}
    left = [key for key in s3_server.keys(OUT, "lost") if key and not key.endswith("/")]  # not folder markers
    assert left == ["_run.lock", f"_staging/{shard.key}/new-data.parquet"]  # the new holder's, and nothing else


def test_a_lock_taken_before_ray_starts_and_lost_meanwhile_stops_overwrite_before_it_deletes(
        s3_server, tiny_models, tmp_path, monkeypatch):
    """A lock a crashed run left is taken over before Ray starts, and held through the start. Lost meanwhile (not
    renewed past its lease, and taken over by a run on another machine), --overwrite stops with the lost-lock line
    and deletes nothing of what the new holder wrote."""
    import pipelines.cluster.connect
    from pipelines.runner import run_job
    from pipelines.spec import load_spec

    use_s3(monkeypatch, s3_server)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "r0", "text": SENTENCES[0]}])
    s3_server.upload(IN, "early", tmp_path / "in")
    job = s3_job(tmp_path, tiny_models("classifier"), f"s3://{IN}/early", f"s3://{OUT}/early")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    client = s3_server.client()
    client.put_object(Bucket=OUT, Key="early/_run.lock", Body=json.dumps(
        {"pid": ended.pid, **here(), "since": 0, "token": "crashed", "lease_s": 60}).encode())
    taken: list[ObjectLock] = []
    acquire = ObjectLock.acquire

    def recording(lock: ObjectLock) -> ObjectLock:
        taken.append(acquire(lock))
        return lock

    def connect(address, spec):  # Ray's start, during which the lease lapses and another machine takes over
        [mine] = taken
        output_lock(f"s3://{OUT}/early", "_run.lock", "the output").take_over(mine.read())
        client.put_object(Bucket=OUT, Key="early/_job.json", Body=b"the new holder's")  # which --overwrite deletes
        monkeypatch.setattr(mine, "_renewed", mine._renewed - mine.lease_s - 1, raising=False)

    monkeypatch.setattr(ObjectLock, "acquire", recording)
    monkeypatch.setattr(pipelines.cluster.connect, "connect", connect)
    with pytest.raises(PipelineError, match="was taken over by another run"):
        run_job(load_spec(job), overwrite=True)
    assert client.get_object(Bucket=OUT, Key="early/_job.json")["Body"].read() == b"the new holder's"


# README, One run at a time per output: "a run that lost its lock ... writes nothing more (no _run.json, no
# _SUCCESS, the new holder's _staging/ left alone)". Between run_job's last check of the lock and OutputDir.start()
# (unfinish, recover, clean, _job.json) it reads the input's samples for the column types, a GET per input file: a
# run stalled past its lease there (or whose renewals failed for a lease) deleted what the new holder had staged,
# its _SUCCESS and _run.json, and rewrote _job.json. start() checks the lock first.
def test_a_run_that_lost_its_lock_before_its_start_leaves_the_new_holders_output_alone(s3_server, monkeypatch):
    use_s3(monkeypatch, s3_server)
    output = OutputDir(f"s3://{OUT}/probe-start")
    lock = output_lock(output.location, "_run.lock", "the output").acquire()
    output.guard = lock.check  # as run_job sets it
    output.check_lock()  # run_job's last check before start(): the lock is still this run's
    # the stall: another machine takes the lock over and works in the output
    output_lock(output.location, "_run.lock", "the output").take_over(lock.read())
    staged = f"{output.root}/_staging/0123456789ab/new-data.parquet"
    with output.fs.open_output_stream(staged) as stream:
        pq.write_table(pa.table({"id": ["n0"]}), stream)
    s3_server.client().put_object(Bucket=OUT, Key="probe-start/_job.json", Body=b"the new holder's")
    monkeypatch.setattr(lock, "_renewed", lock._renewed - lock.lease_s - 1)  # its renewing thread has not run since
    try:
        output.start(A_JOB)
    except PipelineError as refused:
        assert "was taken over by another run" in str(refused)
    finally:
        lock.release()
    left = keys_under(s3_server, "probe-start")
    assert "_staging/0123456789ab/new-data.parquet" in left, f"the new holder's staged block was deleted: {left}"
    body = s3_server.client().get_object(Bucket=OUT, Key="probe-start/_job.json")["Body"].read()
    assert body == b"the new holder's", "the run that lost its lock rewrote _job.json"


# The same, with rows lost: a lost-lock run's recover() lists the top of the output and then _staging/; the new
# holder's reveal between the two listings made a committed shard look like "a commit record whose files are gone",
# which recover() dropped (forget: its part file, then its record), and the new holder then wrote _SUCCESS beside an
# output without that shard's rows.
def test_a_lost_lock_runs_start_cannot_drop_a_shard_the_new_holder_commits(s3_server, monkeypatch, tmp_path):
    use_s3(monkeypatch, s3_server)
    location = f"s3://{OUT}/probe-recover"
    stalled, holder = OutputDir(location), OutputDir(location)
    old = output_lock(location, "_run.lock", "the output").acquire()
    stalled.guard = old.check
    new = output_lock(location, "_run.lock", "the output")
    new.take_over(old.read())  # the stall: the lease ran out and another machine took the lock
    holder.guard = new.check
    monkeypatch.setattr(old, "_renewed", old._renewed - old.lease_s - 1)
    shard = Shard(str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl"), "jsonl", False, 1, 1, "a.jsonl")
    staged = f"{holder.root}/_staging/{shard.key}/block-data.parquet"
    with holder.fs.open_output_stream(staged) as stream:
        pq.write_table(pa.table({"id": ["a0", "a1"], "_row": [0, 1]}), stream)
    report = StagingReport(shard=shard.key, shard_rows=2, rows=2, errors=0, files=[staged], row_ranges=[(0, 2)])
    listed_staging = OutputDir._staged

    def staging_listed_after_the_reveal(self):  # the new holder's reveal lands between the two listings
        if self is stalled:
            record = holder.commits()[shard.key]
            holder._reveal(shard.key, record)
        return listed_staging(self)

    def stalled_run_resumes(_shard):  # the new holder's commit record is written; the stalled run resumes now
        monkeypatch.setattr(OutputDir, "_staged", staging_listed_after_the_reveal)
        try:
            stalled.start(A_JOB)
        except PipelineError:
            pass
        monkeypatch.setattr(OutputDir, "_staged", listed_staging)

    holder.commit(shard, [report], A_JOB, before_visible=stalled_run_resumes)
    holder.finish()
    new.release()
    old.release()
    left = keys_under(s3_server, "probe-recover")
    assert "_SUCCESS" in left
    parts = [key for key in left if key.startswith("part-")]
    assert parts, f"_SUCCESS stands beside an output that lost the rows of a committed shard: {left}"


# README, One run at a time per output: "a second run on the same output exits with status 75 (busy: ...) before
# it writes anything to the output". On S3 run_job probed the output with a write (stores.check_writable: an object
# _staging/.write-check-<uuid>, then its delete) before it asked for the lock, also when the lock was held.
@pytest.mark.parametrize("command", ["run", "schedule"])  # schedule: its probe came before its lock too
def test_a_busy_s3_output_is_refused_before_the_second_run_writes_to_it(s3_server, monkeypatch, tmp_path, command):
    import pipelines.runner
    from pipelines.schedule.executor import run_due

    use_s3(monkeypatch, s3_server)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a0", "text": SENTENCES[0]}])
    (tmp_path / "model").mkdir()
    path = f"s3://{OUT}/probe-busy-{command}"
    spec = spec_from_dict({
        "input": {"paths": [str(tmp_path / "in")]}, "model": {"name": str(tmp_path / "model")},
        "task": {"type": "text-classification"}, "output": {"path": path},
        **({"schedule": {"cron": "0 2 * * *"}} if command == "schedule" else {}),
    })
    monkeypatch.setattr(pipelines.runner, "preflight", lambda spec: None)  # the model is not the point here
    written: list[str] = []
    probe = stores.check_writable

    def recording(fs, root, location, scratch, role="output.path"):
        written.append(f"{root}/{scratch}/.write-check-…")
        probe(fs, root, location, scratch, role)

    monkeypatch.setattr(stores, "check_writable", recording)
    with output_lock(path, "_run.lock" if command == "run" else "_schedule.lock", "the first run, in progress"):
        with pytest.raises(LockHeld):
            if command == "run":
                pipelines.runner.run_job(spec)
            else:
                run_due(spec, runner=lambda *args, **kwargs: pytest.fail("a busy job scores nothing"))
    assert written == [], f"the busy {command} wrote to the output before it was refused: {written}"


# README, One run at a time per output (S3): "The store must support conditional writes ...; one that refuses them
# is named in a one-line error, and PIPELINES_LOCK=local then ..."; "PIPELINES_LOCK_LEASE_S sets the lease". No test
# met a store that refuses If-None-Match; this one gives the lock that refusal, as botocore raises it (holds).
def test_a_store_without_conditional_writes_is_one_line_naming_pipelines_lock_local(monkeypatch):
    from botocore.exceptions import ClientError

    from pipelines.output.object_lock import ObjectLock

    monkeypatch.setenv("PIPELINES_LOCK_LEASE_S", "7")
    lock = ObjectLock("bucket", "out/_run.lock", "the output")
    assert lock.lease_s == 7.0

    class Refusing:
        def put_object(self, **request):
            assert request.get("IfNoneMatch") == "*"
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "A header you provided implies "
                                         "functionality that is not implemented"}}, "PutObject")

    lock._client = Refusing()
    with pytest.raises(PipelineError) as refused:
        lock.acquire()
    said = str(refused.value)
    assert "\n" not in said and not isinstance(refused.value, LockHeld)
    assert "does not support conditional writes" in said and "PIPELINES_LOCK=local" in said


A_JOB = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")


def keys_under(s3, prefix: str) -> list[str]:
    """The keys under ``prefix/``, folder markers left out."""
    return [key for key in s3.keys(OUT, prefix) if key and not key.endswith("/")]


# names as users write them ------------------------------------------------------------------------------


def test_a_location_keeps_its_options_and_its_wildcards():
    """A location that pyarrow can't parse as written (a space, brackets, a ``?`` wildcard) is percent-encoded and
    tried again. Its query, options at its end, must come through whole whatever its values hold: a first version
    of the ``?`` wildcard folded ``?endpoint_override=http://...`` into the path, which then went to AWS."""
    from pipelines.io.shards import _encode_location

    assert _encode_location("b/my x/*.jsonl?endpoint_override=http://127.0.0.1:9&region=us-east-1") == (
        "b/my%20x/*.jsonl?endpoint_override=http://127.0.0.1:9&region=us-east-1"
    )
    assert _encode_location("b/[ab]?region=us-east-1&tls_ca_file_path=/etc/ca.pem&") == (
        "b/%5Bab%5D?region=us-east-1&tls_ca_file_path=/etc/ca.pem&"
    )
    assert _encode_location("b/part-?.jsonl") == "b/part-%3F.jsonl"  # a wildcard, decoded back by pyarrow
    assert _encode_location("b/part-?.jsonl?region=us-east-1") == "b/part-%3F.jsonl?region=us-east-1"
    assert _encode_location("b/p?x=1/y.jsonl") == "b/p?x=1/y.jsonl"  # a query, refused as before: say %3F


def test_an_empty_glob_is_no_input_also_for_credentials_that_may_not_look_at_the_bucket():
    """A glob that matches nothing on a store looks at its bucket, to tell a missing bucket (an error) from an
    empty landing prefix (no input yet). Credentials limited to a prefix are refused that look: that says
    nothing, so a scheduled tick over an empty landing glob must not fail on it (no server: a stand-in store)."""
    from pipelines.io.shards import _glob

    class PrefixOnly:  # what the glob asks of an S3 filesystem
        def get_file_info(self, what):
            if isinstance(what, pafs.FileSelector):
                return []  # the landing prefix is empty
            raise OSError("AWS Error ACCESS_DENIED during HeadBucket operation")

    assert _glob("s3://bucket/landing/*.jsonl", PrefixOnly(), "bucket/landing/*.jsonl")[1] == []


def test_object_keys_with_spaces_or_accents_are_read_like_any_other(s3_server, monkeypatch, tmp_path):
    """A key such as ``2024 q1/données.jsonl`` is a shard like any other: listed, read whole, counted; and a
    location written with a space (``s3://bucket/my out``) opens. pyarrow parses URIs strictly (a space is a
    syntax error), so the URIs built for shards must be percent-encoded and decode back to the same key."""
    from pipelines.io.reader import Columns, count_rows, read_shard
    from pipelines.io.shards import list_shards, resolve

    use_s3(monkeypatch, s3_server)
    rows = {"2024 q1/a b.jsonl": ["x1", "x2"], "2024 q1/données.jsonl": ["y1"], "2024 q1/100%.jsonl": ["z1", "z2"]}
    for key, ids in rows.items():
        write_jsonl(tmp_path / "in" / key, [{"id": i, "text": f"text of {i}"} for i in ids])
    s3_server.upload(IN, "odd", tmp_path / "in")
    shards = list_shards([f"s3://{IN}/odd/2024 q1"])
    assert sorted(s.name for s in shards) == ["100%.jsonl", "a b.jsonl", "données.jsonl"]
    for shard in shards:
        blocks = list(read_shard(shard, Columns(text="text", id="id")))
        assert [i for b in blocks for i in b.column("id").to_pylist()] == rows[f"2024 q1/{shard.name}"], shard.uri
        assert count_rows(shard) == (len(rows[f"2024 q1/{shard.name}"]), True)
    assert resolve(f"s3://{OUT}/my out")[1] == f"{OUT}/my out"
    glob = list_shards([f"s3://{IN}/odd/2024 q1/[ad]*.jsonl"])  # brackets, which a URI may not hold as they are
    assert sorted(s.name for s in glob) == ["a b.jsonl", "données.jsonl"]
    # a ? in a glob, which a URI takes for a query ("Unexpected query parameter in S3 URI: '.jsonl'" before); a
    # query at the end stays one
    assert [s.name for s in list_shards([f"s3://{IN}/odd/2024 q1/a?b.jsonl"])] == ["a b.jsonl"]
    assert [s.name for s in list_shards([f"s3://{IN}/odd/2024 q1/10?%.jsonl?region={REGION}"])] == ["100%.jsonl"]


def test_a_delta_lake_or_iceberg_table_on_s3_is_refused_as_a_local_one_is(s3_server, monkeypatch, tmp_path):
    """A Delta Lake table's keys on a store: its folder, a glob in it and a partition folder inside it are refused
    (their listing holds the log's keys; a partition folder's table is looked for above it), as on a local disk
    (``test_a_delta_lake_table_folder_is_refused_not_read_with_its_earlier_versions_files``)."""
    from pipelines.io.shards import list_shards

    use_s3(monkeypatch, s3_server)
    table = tmp_path / "in" / "events"
    write_parquet(table / "part-00000-2dc9-c000.snappy.parquet", [{"id": 1, "text": "a"}])
    write_parquet(table / "date=2024-06-01" / "part-00001-77aa-c000.snappy.parquet", [{"id": 2, "text": "b"}])
    (table / "_delta_log").mkdir()
    (table / "_delta_log" / f"{0:020d}.json").write_text('{"commitInfo": {}}\n')
    s3_server.upload(IN, "lake", tmp_path / "in")
    for location in ("lake/events", "lake/events/", "lake", "lake/events/*.parquet", "lake/**/*.parquet",
                     "lake/events/date=2024-06-01", "lake/events/date=2024-06-01/*.parquet"):
        with pytest.raises(PipelineError, match=rf"s3://{IN}/lake/events is a Delta Lake table \(it holds _delta"):
            list_shards([f"s3://{IN}/{location}"])
    named = f"s3://{IN}/lake/events/date=2024-06-01/part-00001-77aa-c000.snappy.parquet"  # a file_uris() name
    assert [s.name for s in list_shards([named])] == ["part-00001-77aa-c000.snappy.parquet"]

    iceberg = tmp_path / "ice" / "events"  # an Iceberg table named by its data/ folder: looked for above it
    write_parquet(iceberg / "data" / "00000-0-10eda6e1.parquet", [{"id": 1, "text": "a"}])
    write_jsonl(iceberg / "metadata" / "v1.metadata.json", [{"format-version": 2}])
    s3_server.upload(IN, "ice", tmp_path / "ice")
    for location in ("ice/events/data", "ice/events/data/*.parquet", "ice/events"):
        with pytest.raises(PipelineError, match=rf"s3://{IN}/ice/events is an Apache Iceberg table \(it holds meta"):
            list_shards([f"s3://{IN}/{location}"])


def test_a_glob_on_s3_beside_a_table_reads_its_own_files_and_a_table_at_a_buckets_top_is_found(
        s3_server, monkeypatch, tmp_path):
    """A glob's listing on a store holds every key under its fixed part: ``s3://bucket/landing/*.jsonl`` beside a
    Delta table's folder was refused for the table's log, none of whose files it matched (the user's own files could
    not be read). And a partition folder of a table at a bucket's top (``s3://bucket/date=2024-06-01/``, its log at
    ``s3://bucket/_delta_log/``) was read as plain files: the look above it stopped short of the bucket itself."""
    from pipelines.io.shards import list_shards

    use_s3(monkeypatch, s3_server)
    write_jsonl(tmp_path / "in" / "day1.jsonl", [{"id": "a", "text": "x"}])
    write_parquet(tmp_path / "in" / "events" / "part-00000-2dc9-c000.snappy.parquet", [{"id": 1, "text": "a"}])
    (tmp_path / "in" / "events" / "_delta_log").mkdir()
    (tmp_path / "in" / "events" / "_delta_log" / f"{0:020d}.json").write_text('{"commitInfo": {}}\n')
    s3_server.upload(IN, "beside", tmp_path / "in")
    for location in ("beside/*.jsonl", "beside/**/*.jsonl"):
        assert [s.name for s in list_shards([f"s3://{IN}/{location}"])] == ["day1.jsonl"], location

    bucket = "pipelines-table-top"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=f"_delta_log/{0:020d}.json", Body=b'{"commitInfo": {}}\n')
    write_parquet(tmp_path / "top.parquet", [{"id": 1, "text": "a"}])
    client.upload_file(str(tmp_path / "top.parquet"), bucket, "date=2024-06-01/part-00000-77aa-c000.snappy.parquet")
    for location in ("date=2024-06-01", "date=2024-06-01/*.parquet"):
        with pytest.raises(PipelineError, match=rf"s3://{bucket} is a Delta Lake table \(it holds _delta_log/\)"):
            list_shards([f"s3://{bucket}/{location}"])


def test_a_hash_sign_in_a_location_is_part_of_the_key_not_a_fragment(s3_server, monkeypatch, tmp_path):
    """A key may hold ``#`` (``team#3/``). pyarrow parses a URI's ``#`` as the start of a fragment and drops it and
    all after it, so ``s3://bucket/hash/team#3/b.jsonl`` read ``hash/team``'s files instead, and the run succeeded
    on rows of another folder; an output.path ``s3://bucket/runs#2`` was written in ``runs``."""
    from pipelines.io.reader import Columns, read_shard
    from pipelines.io.shards import list_shards, resolve

    use_s3(monkeypatch, s3_server)
    write_jsonl(tmp_path / "in" / "team" / "a.jsonl", [{"id": "team-a", "text": "words"}])
    write_jsonl(tmp_path / "in" / "team#3" / "b.jsonl", [{"id": "team#3-b", "text": "words"}])
    s3_server.upload(IN, "hash", tmp_path / "in")
    for location in (f"s3://{IN}/hash/team#3", f"s3://{IN}/hash/team#3/", f"s3://{IN}/hash/team#3/b.jsonl",
                     f"s3://{IN}/hash/team#3/*.jsonl", f"s3://{IN}/hash/team#3/b.jsonl?region={REGION}"):
        [shard] = list_shards([location])
        assert shard.path == f"{IN}/hash/team#3/b.jsonl", location
        assert [i for b in read_shard(shard, Columns(text="text", id="id")) for i in b.column("id").to_pylist()] == [
            "team#3-b"], location
    assert resolve(f"s3://{OUT}/runs#2")[1] == f"{OUT}/runs#2"
    write_jsonl(tmp_path / "local" / "team" / "a.jsonl", [{"id": "team-a", "text": "words"}])
    write_jsonl(tmp_path / "local" / "team#3" / "b.jsonl", [{"id": "team#3-b", "text": "words"}])
    [shard] = list_shards([f"file://{tmp_path}/local/team#3"])
    assert shard.path == f"{tmp_path}/local/team#3/b.jsonl"


# a folder and an object of the same name; spellings a store can't hold ------------------------------------


def test_an_object_named_like_the_input_folder_neither_hides_the_folder_nor_stands_for_it(s3_server, monkeypatch,
                                                                                          tmp_path):
    """``aws s3 cp f s3://bucket/data`` (the trailing / forgotten) makes an object whose key is the folder's name.
    pyarrow looks for that object first, so ``s3://bucket/data/`` listed it alone for the folder: a run read its one
    row, wrote _SUCCESS, and the folder's rows were in no output. A location ending in / is the folder; one without
    it that is both an object and a folder is refused, naming both and how to pick."""
    from pipelines.io.shards import list_shards

    use_s3(monkeypatch, s3_server)
    for k in range(2):
        write_jsonl(tmp_path / "in" / f"part-{k}.jsonl", [{"id": f"r{k}", "text": "words"}])
    s3_server.upload(IN, "shadowed", tmp_path / "in")
    client = s3_server.client()
    client.put_object(Bucket=IN, Key="shadowed", Body=b'{"id": "stray", "text": "an object named like the folder"}\n')
    folder = f"s3://{IN}/shadowed"
    for wanted in ("jsonl", "auto"):
        assert [s.name for s in list_shards([f"{folder}/"], wanted)] == ["part-0.jsonl", "part-1.jsonl"], wanted
        assert [s.name for s in list_shards([f"{folder}/?region={REGION}"], wanted)] == ["part-0.jsonl", "part-1.jsonl"]
    for spelling in (folder, f"{folder}?region={REGION}"):
        with pytest.raises(PipelineError) as refused:
            list_shards([spelling], "jsonl")
        said = str(refused.value)
        assert said.startswith(f"input.paths: {spelling} is both an object and a folder"), said
        assert f"write {folder}/{spelling[len(folder):]} (with the /) to read the folder" in said, said
        assert "delete or rename the object" in said and "\n" not in said, said

    # an object with nothing under its name is a named file, as before; a / after it names a folder not there
    client.put_object(Bucket=IN, Key="lone.jsonl", Body=b'{"id": "l", "text": "words"}\n')
    assert [s.name for s in list_shards([f"s3://{IN}/lone.jsonl"])] == ["lone.jsonl"]
    with pytest.raises(PipelineError, match=rf"^input.paths: s3://{IN}/lone.jsonl/ names a folder \(it ends in /\)"
                                            r".*an object of that name.*; drop the / to read the object"):
        list_shards([f"s3://{IN}/lone.jsonl/"])


def test_a_local_folder_or_a_link_to_it_lists_the_same_with_or_without_a_slash_and_a_file_is_no_folder(tmp_path):
    """What the store's rule means on a local disk (where one name is a file or a folder, never both): a folder, a
    link to it, each with or without a trailing /, give the same files; a file (or a link to one) with a trailing /
    names a folder that is not there, as a shell says (``ls f.jsonl/``: not a directory)."""
    from pipelines.io.shards import list_shards

    for name in ("a.jsonl", "sub/b.jsonl"):
        write_jsonl(tmp_path / "data" / name, [{"id": name, "text": "words"}])
    write_jsonl(tmp_path / "f.jsonl", [{"id": "f", "text": "words"}])
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "flink.jsonl").symlink_to(tmp_path / "f.jsonl")
    for spelling in ("data", "data/", "link", "link/", "link//"):
        assert [s.name for s in list_shards([f"{tmp_path}/{spelling}"])] == ["a.jsonl", "sub/b.jsonl"], spelling
    assert [s.name for s in list_shards([f"file://{tmp_path}/link/"])] == ["a.jsonl", "sub/b.jsonl"]
    assert [s.name for s in list_shards([str(tmp_path / "f.jsonl")])] == ["f.jsonl"]
    assert [s.name for s in list_shards([str(tmp_path / "flink.jsonl")])] == ["flink.jsonl"]
    for spelling in ("f.jsonl/", "flink.jsonl/"):
        with pytest.raises(PipelineError, match=r"names a folder \(it ends in /\), but it is a file; drop the /"):
            list_shards([f"{tmp_path}/{spelling}"])


def test_an_object_at_the_output_path_is_refused_by_name_and_nothing_is_deleted(s3_server, monkeypatch):
    """An object whose key is output.path's own name: the job's files would go under ``out/`` beside it, but a
    reader given ``s3://bucket/out`` (with or without the /) reads that one object, not the job's files. Refused,
    with what to do (it said 'is a file; give a directory', also when the folder held this job's results), and
    --overwrite deletes nothing."""
    use_s3(monkeypatch, s3_server)
    client = s3_server.client()
    client.put_object(Bucket=OUT, Key="taken", Body=b"someone's file")
    for spelling in (f"s3://{OUT}/taken", f"s3://{OUT}/taken/"):
        with pytest.raises(PipelineError) as refused:
            OutputDir(spelling).check_owner()
        said = str(refused.value)
        assert said.startswith(f"output.path {spelling}: an object has this very key (taken)"), said
        assert "readers given this path read that object" in said and "delete or rename the object" in said, said

    client.put_object(Bucket=OUT, Key="taken/_job.json", Body=b"{}")  # results under it, the object came later
    client.put_object(Bucket=OUT, Key="taken/part-0.parquet", Body=b"rows")
    before = s3_server.keys(OUT, "taken")
    with pytest.raises(PipelineError, match="an object has this very key"):
        OutputDir(f"s3://{OUT}/taken").clear()
    assert s3_server.keys(OUT, "taken") == before
    assert client.get_object(Bucket=OUT, Key="taken")["Body"].read() == b"someone's file"


@pytest.mark.parametrize(
    ("where", "given", "fix"),
    [
        ("input.paths", "s3://b//x", "s3://b/x"),
        ("output.path", "s3://b//x", "s3://b/x"),
        ("input.paths", "s3://b/./news/*.jsonl", "s3://b/news/*.jsonl"),
        ("output.path", "s3://b/x/../y", "s3://b/y"),
        ("output.path", "s3://b/x/.", "s3://b/x"),
        ("input.paths", "s3://b/a//b/?region=us-east-1", "s3://b/a/b/?region=us-east-1"),
        ("input.paths", "gs://b/x//y", "gs://b/x/y"),
        ("output.path", "s3://b/a%2F%2Fb", "s3://b/a/b"),  # escaped: the same names (was a RecursionError)
        ("input.paths", "s3://b/%2E%2E/x", "s3://b/x"),
    ],
)
def test_a_store_path_with_an_empty_or_dot_name_is_refused_by_the_spec_with_the_spelling_to_use(where, given, fix):
    """``s3://bucket//x`` failed deep in a run with pyarrow's 'Empty path component' and a traceback (exit 1); a
    ``.`` or ``..`` between slashes is a key's name to S3 but a folder step to a reader (and to the output check,
    which compares paths as written). Each is refused when the spec is read, naming the spelling to use."""
    from pipelines.spec import spec_from_dict

    raw = {"input": {"paths": [f"s3://{IN}/news"]}, "model": {"name": "m"}, "task": {"type": "text-classification"},
           "output": {"path": f"s3://{OUT}/labels"}}
    if where == "input.paths":
        raw["input"]["paths"] = [f"s3://{IN}/news", given]
    else:
        raw["output"]["path"] = given
    with pytest.raises(PipelineError) as refused:
        spec_from_dict(raw)
    said = str(refused.value)
    assert f"  {where}" in said and f"write {fix}" in said, said
    assert len(said.splitlines()) == 2, said  # the spec's header line, and this one

    for fine in ("s3://b/x/", "s3://b/x//", "s3://b/x?region=us-east-1", "data//news/../news", "./out",
                 "file:///tmp//x/./y", "s3://b/x.y/..z/.hidden"):
        raw["input"]["paths"], raw["output"]["path"] = [fine], fine
        spec_from_dict(raw)  # a trailing / (or two) names a folder; a local path is the disk's to resolve


def test_a_path_pyarrow_refuses_is_one_line_also_where_no_spec_checked_it(s3_server, monkeypatch):
    """The listing of input and output catch pyarrow's ArrowInvalid too, not only OSError: a location that reaches
    them without the spec's check (a caller of the functions) is one line, not a traceback."""
    from pipelines.io.shards import list_shards

    use_s3(monkeypatch, s3_server)
    for location in (f"s3://{IN}//news", f"s3://{IN}/a%2F%2Fb", f"s3://{IN}//news/*.jsonl"):
        with pytest.raises(PipelineError, match=rf"^input.paths: {re.escape(location)}: .*Empty path component"):
            list_shards([location])
    with pytest.raises(PipelineError, match=rf"^output.path s3://{OUT}//x: .*Empty path component"):
        OutputDir(f"s3://{OUT}//x").check_owner()


def test_an_empty_name_in_an_output_path_exits_2_with_one_line(s3_server, tiny_models, tmp_path):
    """The tester's run: ``output.path=s3://pipelines-out//x`` ended in a traceback, exit 1."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "words"}])
    s3_server.upload(IN, "news", tmp_path / "in")
    job = s3_job(tmp_path, tiny_models("classifier"), f"s3://{IN}/news", f"s3://{OUT}/x")
    done = cli(s3_server, "run", str(job), "--set", f"output.path=s3://{OUT}//x")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "ArrowInvalid" not in done.stderr, done.stderr[-3000:]
    assert f"an empty name (//) in s3://{OUT}//x" in done.stderr and f"write s3://{OUT}/x" in done.stderr


def test_the_output_line_of_a_path_with_a_hash_or_a_space_names_a_uri_that_readers_read_as_this_output(
        s3_server, monkeypatch, tmp_path, capsys):
    """``output.path: s3://bucket/runs#2`` is written at the key ``runs#2/`` (README, input.paths), but pyarrow and
    pandas, given that URI as written (``pq.read_table("s3://bucket/runs#2")``, the README's way to read results),
    cut it at the ``#`` and read ``runs/``: another output's rows, silently. A space in the path makes them fail.
    The run's ``output:`` line also names the URI that readers read as this output (no run: the CLI's print)."""
    import types

    import pandas as pd

    import pipelines.output.summary as summary
    import pipelines.runner as runner
    from pipelines.cli.main import main

    use_s3(monkeypatch, s3_server)
    client = s3_server.client()
    for key, ids in (("runs#2/part-aaaaaaaaaaaa-00000.parquet", ["this", "job"]),
                     ("runs/part-bbbbbbbbbbbb-00000.parquet", ["other"]),
                     ("res 1/part-cccccccccccc-00000.parquet", ["spaced"])):
        body = io.BytesIO()
        pq.write_table(pa.table({"id": ids}), body)
        client.put_object(Bucket=OUT, Key=key, Body=body.getvalue())
    assert pq.read_table(f"s3://{OUT}/runs#2")["id"].to_pylist() == ["other"]  # the trap, as pyarrow reads it

    result = types.SimpleNamespace(status="succeeded", report=None)
    monkeypatch.setattr(runner, "run_job", lambda spec, **kwargs: result)
    monkeypatch.setattr(summary, "render", lambda r: "succeeded")
    for written, ids in ((f"s3://{OUT}/runs#2", ["job", "this"]), (f"s3://{OUT}/res 1", ["spaced"])):
        job = s3_job(tmp_path, "some/model", f"s3://{IN}/news", written)
        capsys.readouterr()
        assert main(["run", str(job)]) == 0
        printed = capsys.readouterr().out
        assert f"output: {written}" in printed
        [readable] = re.findall(r"read it as (s3://\S+)", printed)
        assert sorted(pq.read_table(readable)["id"].to_pylist()) == ids, printed
        assert sorted(pd.read_parquet(readable)["id"]) == ids
    job = s3_job(tmp_path, "some/model", f"s3://{IN}/news", f"s3://{OUT}/labels")
    assert main(["run", str(job)]) == 0
    assert "read it as" not in capsys.readouterr().out  # a plain path is read as written

    # a scheduled job's output line too (its partitions, run=*/, lie under the path as written)
    import pipelines.schedule.executor as executor

    monkeypatch.setattr(executor, "run_due", lambda spec, **kwargs: types.SimpleNamespace(entries=[], failures=[]))
    job = s3_job(tmp_path, "some/model", f"s3://{IN}/news", f"s3://{OUT}/runs#2")
    assert main(["schedule", str(job), "--once"]) == 0
    assert f"read it as s3://{OUT}/runs%232 " in capsys.readouterr().out


def test_the_write_probe_on_a_new_s3_output_leaves_only_a_staging_marker_that_a_later_run_accepts(s3_server,
                                                                                                   monkeypatch):
    """README, One run at a time per output: a run on a new output refused after the write probe (the precision
    gate) leaves no file and no lock, only the empty ``_staging/`` marker pyarrow writes when it deletes a folder's
    last object (it said "no trace" before): readers skip it and a later run takes the output as this project's."""
    use_s3(monkeypatch, s3_server)
    output = OutputDir(f"s3://{OUT}/probed")
    output.check_writable()
    assert s3_server.keys(OUT, "probed") == ["_staging/"]
    output.check_owner()  # not refused as someone else's folder
    output.check_writable()  # a second probe: the same one marker
    assert s3_server.keys(OUT, "probed") == ["_staging/"]
