"""The output layout and the typed records that cross module boundaries."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from pipelines.output import layout
from pipelines.output.records import CommitRecord
from pipelines.output.staging import StagingReport


def test_part_file_names_round_trip():
    name = layout.part_name("abc123", 7)
    assert name == "part-abc123-00007.parquet"
    assert layout.is_part_file(name) and layout.part_shard(name) == "abc123"
    assert layout.part_shard(name + layout.TMP_SUFFIX) == "abc123"  # a leftover of a cut-off write
    assert not layout.is_part_file("_errors") and layout.part_shard("_job.json") is None


def test_write_then_rename_leaves_no_temporary_file(tmp_path):
    fs = pafs.LocalFileSystem()
    layout.write_json(fs, f"{tmp_path}/a/b.json", {"x": 1})
    assert layout.read_json(fs, f"{tmp_path}/a/b.json") == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    (tmp_path / "a" / "half.json").write_text('{"x": ')
    assert layout.read_json(fs, f"{tmp_path}/a/half.json") is None


def test_a_staging_report_crosses_arrow_with_its_types():
    report = StagingReport(
        shard="k", shard_rows=10, rows=7, errors=3, tokens=70, padded=80, files=["a"], error_files=["b"],
        confusion={"World": {"World": 5, "Sports": 2}}, reasons={"text is null": 3}, row_ranges=[(0, 4), (6, 12)],
    )
    table = StagingReport.table([report])
    assert table.schema.field("reasons").type == pa.list_(pa.struct([("key", pa.string()), ("n", pa.int64())]))
    assert StagingReport.from_table(table) == [report]


def test_a_foreign_or_broken_commit_record_does_not_count():
    assert CommitRecord.parse({"shard": "k"}) is None
    assert CommitRecord.parse(None) is None


def test_a_commit_record_naming_files_outside_the_output_never_deletes_them(tmp_path):
    """A commit record is read back as the list of files to delete (a broken commit at any run's start, --overwrite,
    --prune, --redo-changed) or to move (a scheduled job's _superseded/), each joined to the output path as written:
    a record naming ``../victim.parquet`` or a folder (``../keep``) had any run's start delete a file and a whole
    folder beside the output, and one naming ``.`` or an empty name deleted the output folder itself, the user's files
    in it too. This project writes a part file's plain name, and ``_errors/`` with one; a record naming anything else
    is none of its own, and counts as none."""
    import json

    from pipelines.output.commit import OutputDir

    good = {"shard": "abcdefabcdef", "input": {"uri": "/in/a.jsonl", "size": 1, "name": "a.jsonl"}, "spec_hash": "h",
            "model": {"name": "m"}, "rows_in": 1, "rows": 1, "errors": 0,
            "files": ["part-abcdefabcdef-00000.parquet"], "error_files": ["_errors/part-abcdefabcdef-00000.parquet"]}
    assert CommitRecord.parse(good) is not None
    bad = [{"files": ["../victim.parquet", "../keep"]}, {"files": ["."]}, {"files": [""]}, {"files": [str(tmp_path / "case3" / "out" / "notes")]},
           {"files": ["notes"]}, {"error_files": ["_errors/../../keep"]}, {"error_files": ["../keep"]},
           {"files": ["_commits"]}, {"shard": "../../keep/a"}, {"shard": ".."}]
    for i, change in enumerate(bad):
        case = tmp_path / f"case{i}"
        (case / "out" / "_commits").mkdir(parents=True)
        (case / "victim.parquet").write_text("precious")
        (case / "keep").mkdir()
        (case / "keep" / "a.json").write_text("mine")
        (case / "out" / "notes").mkdir()
        record = {**good, **change}
        (case / "out" / "_commits" / "abcdefabcdef.json").write_text(json.dumps(record))
        out = OutputDir(str(case / "out"))
        out.recover()
        out.clear()
        kept = [(case / "victim.parquet").exists(), (case / "keep" / "a.json").exists(), (case / "out" / "notes").exists()]
        assert kept == [True, True, True], (change, kept)
        assert CommitRecord.parse(record) is None, change


def test_overwrite_refuses_a_folder_whose_underscore_folders_hold_files_of_another_tool(tmp_path):
    """--overwrite deletes this project's bookkeeping by exact name, ``_commits/`` and ``_errors/`` whole: an
    output.path holding only another tool's ``_commits/`` (its own records, not one of this project's) passed the
    check that refuses a folder of someone else's files, and --overwrite deleted that folder with all in it."""
    import pytest

    from pipelines.errors import PipelineError
    from pipelines.output.commit import OutputDir

    (tmp_path / "out" / "_commits").mkdir(parents=True)
    (tmp_path / "out" / "_commits" / "2024-06-01.txt").write_text("the other tool's")
    (tmp_path / "out" / "_errors").mkdir()
    out = OutputDir(str(tmp_path / "out"))
    try:
        out.check_owner()  # what run_job asks first, --overwrite or not
        out.clear()
    except PipelineError as exc:
        assert "_commits/2024-06-01.txt" in str(exc) and "choose an empty or new output.path" in str(exc), exc
    assert (tmp_path / "out" / "_commits" / "2024-06-01.txt").read_text() == "the other tool's"

    (tmp_path / "out" / "_commits" / "2024-06-01.txt").unlink()  # this project's own leftovers pass
    (tmp_path / "out" / "_commits" / "0123456789ab.json.tmp").write_text("{")
    (tmp_path / "out" / "_errors" / "part-0123456789ab-00000.parquet").write_text("")
    out.check_owner()
    with pytest.raises(PipelineError, match="holds no results of this project"):
        (tmp_path / "out" / "_errors" / "mine.csv").write_text("x")
        out.check_owner()


@pytest.mark.parametrize(("name", "named"), [
    ("_staging/thesis.md", "_staging/thesis.md"), ("_staging/drafts/chapter1.md", "_staging/drafts/chapter1.md"),
    ("_commits/2024-06-01.json", "_commits/2024-06-01.json"), ("_report.html/index.html", "_report.html"),
    ("_run.json", "_run.json"), ("_SUCCESS/flag", "_SUCCESS"), ("_errors", "_errors")])
def test_a_file_of_yours_under_a_bookkeeping_name_refuses_the_folder_before_a_run_deletes_it(tmp_path, name, named):
    """A folder given as output.path that holds only this project's ``_`` names was taken as its output without a
    look inside ``_staging/`` (which every run's start deletes whole), at what ``_commits/`` holds beyond a ``.json``
    ending, or at what a ``_run.json``, ``_report.html`` or ``_SUCCESS`` is: a plain run deleted a user's
    ``_staging/thesis.md``, and --overwrite a JSON file in ``_commits/``, a ``_report.html`` folder with its files,
    another tool's ``_run.json``. Such a folder is refused, naming the file, and nothing in it is touched."""
    from pipelines.errors import PipelineError
    from pipelines.output.commit import OutputDir

    out = tmp_path / "out"
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"state": "done", "rows": 12}')
    with pytest.raises(PipelineError, match=re.escape(f"({named} is none of its files)")):
        OutputDir(str(out)).check_owner()
    assert path.read_text() == '{"state": "done", "rows": 12}'


def test_what_a_cut_off_run_leaves_under_its_bookkeeping_names_is_its_own(tmp_path):
    """The other side of the check above: staged blocks, a commit's staged files and temporary copies, a write probe,
    a cut-off record's temporary copy and the run's page are this project's, and such a folder is taken (a run then
    deletes them: they hold no committed row)."""
    from pipelines.output.commit import OutputDir

    out = tmp_path / "out"
    staged = out / "_staging" / "0123456789ab"
    staged.mkdir(parents=True)
    for name in ("0123456789abcdef0123456789abcdef-data.parquet", "0123456789abcdef0123456789abcdef-errors.parquet",
                 "fedcba9876543210fedcba9876543210-data.parquet.tmp", "commit-data.parquet", "commit-errors.jsonl.tmp"):
        (staged / name).write_text("")
    (out / "_staging" / ".write-check-0123456789abcdef0123456789abcdef").write_text("")
    (out / "_staging" / "fedcba987654").mkdir()
    (out / "_commits").mkdir()
    (out / "_commits" / "0123456789ab.json.tmp").write_text("{")
    (out / "_SUCCESS").write_text("")
    (out / "_report.html").write_text("<!DOCTYPE html>")
    OutputDir(str(out)).check_owner()


def test_a_folder_holding_someone_elses_job_json_is_refused(tmp_path):
    """A folder whose only entry is another tool's ``_job.json`` (a JSON that is no job record of this project)
    passed the check for someone else's files by its name alone: a run then wrote its own ``_job.json`` over it, and
    --overwrite deleted it."""
    import pytest

    from pipelines.errors import PipelineError
    from pipelines.output.commit import OutputDir

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_job.json").write_text('{"job_id": 42, "state": "done"}')
    with pytest.raises(PipelineError, match=r"holds no results of this project \(_job.json is none of its files\)"):
        OutputDir(str(tmp_path / "out")).check_owner()
    assert (tmp_path / "out" / "_job.json").read_text() == '{"job_id": 42, "state": "done"}'


def test_a_lock_holders_time_is_said_in_utc_whatever_the_zone_of_the_machine_that_says_it(monkeypatch):
    """An S3 lock is read on other machines: its holder's start was said in the reader's local time, with no zone (a
    run started a minute ago on a machine in UTC read as five and a half hours off in India)."""
    import time

    from pipelines.output.lock import describe_holder

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        said = describe_holder({"pid": 7, "host": "head", "since": 1_764_748_800})  # 2025-12-03 08:00:00 UTC
    finally:
        monkeypatch.undo()
        time.tzset()
    assert said == "pid 7 on head since 2025-12-03 08:00:00 UTC"


def test_an_overwrite_cut_short_after_it_cleared_the_output_is_still_this_projects_output(tmp_path):
    """--overwrite clears the output (the committed shards' files, then the bookkeeping) before the run writes its own
    _job.json: cut short in between (killed, a full disk), an output that also holds a user's file (a README) held
    nothing left to tell it was this project's, and every later run was refused as 'not empty and holds no results of
    this project', --overwrite too. The output keeps its _job.json until the run writes the new one."""
    import json

    from helpers import make_spec

    from pipelines.output.commit import OutputDir
    from pipelines.runner import job_record

    out = tmp_path / "out"
    (out / "_commits").mkdir(parents=True)
    record = {"shard": "abcdefabcdef", "input": {"uri": "/in/a.jsonl", "size": 1, "name": "a.jsonl"},
              "spec_hash": "h", "model": {"name": "m"}, "rows_in": 1, "rows": 1, "errors": 0,
              "files": ["part-abcdefabcdef-00000.parquet"], "error_files": []}
    (out / "_commits" / "abcdefabcdef.json").write_text(json.dumps(record))
    (out / "part-abcdefabcdef-00000.parquet").write_text("rows")
    (out / "README.txt").write_text("the team's notes on this output")
    output = OutputDir(str(out))
    output.write_json("_job.json", job_record(make_spec("m", {"type": "text-classification"}, out)).to_json())
    output.check_owner()
    output.clear()  # --overwrite, cut short here
    OutputDir(str(out)).check_owner()  # the next run (the same command) takes the output again
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "_job.json"]


def test_an_output_whose_job_json_was_deleted_is_still_checked_against_its_commit_records_spec(tmp_path):
    """The spec check read ``_job.json`` only: with it deleted by hand, a run with other labels (another spec) passed
    and wrote its rows beside the old ones under one ``_SUCCESS``, two label sets in one output. Each commit record
    carries the spec hash it was made with: a run whose spec hash differs from any is refused, saying the record of
    the settings is gone; the same spec resumes (its start writes ``_job.json`` again)."""
    import json

    from helpers import make_spec

    from pipelines.errors import PipelineError
    from pipelines.output.commit import OutputDir
    from pipelines.runner import job_record

    out = tmp_path / "out"
    labels = {"type": "zero-shot-classification", "candidate_labels": ["sports", "world"]}
    made = job_record(make_spec("m", labels, out))
    (out / "_commits").mkdir(parents=True)
    record = {"shard": "abcdefabcdef", "input": {"uri": "/in/a.jsonl", "size": 1, "name": "a.jsonl"},
              "spec_hash": made.spec_hash, "model": {"name": "m"}, "rows_in": 1, "rows": 1, "errors": 0,
              "files": ["part-abcdefabcdef-00000.parquet"], "error_files": []}
    (out / "_commits" / "abcdefabcdef.json").write_text(json.dumps(record))
    (out / "part-abcdefabcdef-00000.parquet").write_text("rows")
    output = OutputDir(str(out))
    output.check_owner()
    output.check_spec(made)  # the spec it was made with: taken
    other = job_record(make_spec("m", {**labels, "candidate_labels": ["sports", "world", "business"]}, out))
    with pytest.raises(PipelineError, match=rf"its commit records were made with spec hash {made.spec_hash}, this "
                                            rf"spec is {other.spec_hash}, and _job.json.*is gone"):
        output.check_spec(other)
    # a spec that only adds output.prediction_prefix would write other column names beside the old ones
    prefixed = job_record(make_spec("m", labels, out, output={"prediction_prefix": "p_"}))
    with pytest.raises(PipelineError, match="its commit records were made with spec hash"):
        output.check_spec(prefixed)


def test_part_files_whose_records_were_deleted_refuse_a_resume_and_go_with_overwrite(tmp_path):
    """An output whose ``_commits/`` was deleted by hand (to "start over") kept its part files and its ``_job.json``:
    a run found nothing committed, scored every shard again and wrote its part files beside the old ones, so a reader
    got each row twice; --overwrite deleted only what a record names, so they stayed even then. A part file that no
    record names now refuses the run (and the plan), naming it, and --overwrite deletes it with the rest; a file of
    yours not named as a part file (``part-notes.parquet``) stays."""
    import json

    from helpers import make_spec

    from pipelines.errors import PipelineError
    from pipelines.output.commit import OutputDir
    from pipelines.runner import _pending, job_record

    out = tmp_path / "out"
    (out / "_errors").mkdir(parents=True)
    job = job_record(make_spec("m", {"type": "text-classification"}, out))
    output = OutputDir(str(out))
    output.write_json("_job.json", job.to_json())
    (out / "_commits").mkdir()
    record = {"shard": "abcdefabcdef", "input": {"uri": "/in/a.jsonl", "size": 1, "name": "a.jsonl"},
              "spec_hash": job.spec_hash, "model": {"name": "m"}, "rows_in": 1, "rows": 1, "errors": 0,
              "files": ["part-abcdefabcdef-00000.parquet"], "error_files": []}
    (out / "_commits" / "abcdefabcdef.json").write_text(json.dumps(record))
    for name in ("part-abcdefabcdef-00000.parquet", "part-0123456789ab-00000.parquet",
                 "_errors/part-0123456789ab-00000.parquet", "part-notes.parquet"):
        (out / name).write_text("rows")
    output.check_owner()
    with pytest.raises(PipelineError, match=r"holds 2 part files that no commit record names "
                                            r"\(_errors/part-0123456789ab-00000.parquet and 1 more\)"):
        _pending(output, job, [], given=True, prune=False, dry=True)
    output.clear()  # --overwrite
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["_job.json",
                                                                                     "part-notes.parquet"]


def test_a_commit_made_while_the_check_for_unrecorded_part_files_reads_is_not_taken_for_one(tmp_path, monkeypatch):
    """``pipelines plan`` reads an output without its lock, while a run may commit: a commit writes its record, then
    moves its files into place, and a forget deletes the files, then the record. The check read the records, then
    listed the files: a shard committed in between was a part file no record names, and the plan told the user to
    --overwrite a healthy output. The files are listed first, and what looks unrecorded is looked at again."""
    import json

    from pipelines.output.commit import OutputDir

    out = tmp_path / "out"
    (out / "_commits").mkdir(parents=True)
    output = OutputDir(str(out))

    def commit(key: str) -> None:
        record = {"shard": key, "input": {"uri": f"/in/{key}.jsonl", "size": 1, "name": f"{key}.jsonl"},
                  "spec_hash": "h", "model": {"name": "m"}, "rows_in": 1, "rows": 1, "errors": 0,
                  "files": [f"part-{key}-00000.parquet"], "error_files": []}
        (out / "_commits" / f"{key}.json").write_text(json.dumps(record))
        (out / f"part-{key}-00000.parquet").write_text("rows")

    commit("aaaaaaaaaaaa")
    reads = OutputDir.commits

    def a_commit_meanwhile(self):  # a run commits shard b right after the records are read
        found = reads(self)
        if not (out / "_commits" / "bbbbbbbbbbbb.json").exists():
            commit("bbbbbbbbbbbb")
        return found

    monkeypatch.setattr(OutputDir, "commits", a_commit_meanwhile)
    output.check_unrecorded()
    forgotten = out / "part-bbbbbbbbbbbb-00000.parquet"
    listed = OutputDir._existing

    def a_forget_meanwhile(self):  # a run's --prune deletes shard b's file, then its record, after the listing
        found = listed(self)
        if forgotten.exists():
            forgotten.unlink()
            (out / "_commits" / "bbbbbbbbbbbb.json").unlink()
        return found

    monkeypatch.setattr(OutputDir, "commits", reads)
    monkeypatch.setattr(OutputDir, "_existing", a_forget_meanwhile)
    output.check_unrecorded()


def test_an_undecodable_run_json_in_a_folder_of_no_job_is_refused_in_one_line(tmp_path):
    """The ownership check reads a folder's ``_run.json``: one that is no UTF-8 text ended the command in a
    UnicodeDecodeError traceback; it is none of this project's files, as other JSON is."""
    from pipelines.errors import PipelineError
    from pipelines.output.commit import OutputDir

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_run.json").write_bytes(b'{"status": "caf\xe9"}')  # Windows-1252
    with pytest.raises(PipelineError, match=r"\(_run.json is none of its files\)"):
        OutputDir(str(tmp_path / "out")).check_owner()


def test_a_new_outputs_first_record_cut_short_while_written_is_no_stranger_to_the_next_run(tmp_path):
    """A run killed while it wrote a new output's first _job.json (or _run.json) leaves that file's temporary copy
    (_job.json.tmp), which is no file of the names a run takes for its own: the output was refused as someone else's
    by every later run. A temporary copy of one of this project's files is its own."""
    from pipelines.output.commit import OutputDir

    out = tmp_path / "out"
    out.mkdir()
    (out / "_job.json.tmp").write_text('{"name": "cut sho')
    (out / "_run.lock").write_text("")
    OutputDir(str(out)).check_owner()


def test_an_output_whose_records_were_all_deleted_is_refused_naming_its_part_files(tmp_path):
    """A finished output whose ``_job.json`` and ``_commits/`` were both deleted by hand holds part files that no
    record says are this job's: refused (even under --overwrite, which deletes only what is evidently this project's),
    but it was refused as a folder of someone else's ("holds no results of this project"), which a user who sees this
    project's part files in it can't act on. The refusal names them and says what is gone."""
    import pyarrow.parquet as pq

    from pipelines.errors import PipelineError
    from pipelines.output.commit import OutputDir

    out = tmp_path / "out"
    (out / "_errors").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"]}), out / "part-0123456789ab-00000.parquet")
    pq.write_table(pa.table({"id": ["b"]}), out / "part-0123456789ac-00000.parquet")
    (out / "_SUCCESS").write_text("")
    with pytest.raises(PipelineError) as refused:
        OutputDir(str(out)).check_owner()
    said = str(refused.value)
    assert "part-0123456789ab-00000.parquet and 1 more" in said and "no _job.json and no commit record" in said, said
    assert "move them out" in said, said
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_errors", "part-0123456789ab-00000.parquet",
                                                      "part-0123456789ac-00000.parquet"]
