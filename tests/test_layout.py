"""The output layout and the typed records that cross module boundaries."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs

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
