"""The README's promises against real faults and habits: every input row exactly once, atomic shards, safe
resume, safe --overwrite, one run at a time, nothing silently lost."""

from __future__ import annotations

import codecs
import dataclasses
import datetime
import gzip
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import SENTENCES, joining, unchecked_strings, write_jsonl, write_parquet
from test_faults import cli, many_shards, output_ids, write_job

from pipelines.errors import PipelineError
from pipelines.io.block import ERROR, ROW
from pipelines.io.reader import NOT_FETCHED, Columns, read_shard, reference_types, unify_types
from pipelines.io.reader import count_rows as reader_count_rows
from pipelines.io.shards import Shard, list_shards
from pipelines.output import summary as summaries
from pipelines.output.commit import OutputDir
from pipelines.output.lock import JobLock, LockHeld
from pipelines.output.records import JobRecord, ModelRef, Unreadable
from pipelines.output.staging import StagingReport
from pipelines.planning.inputs import count_rows as plan_count_rows
from pipelines.runner import check_paths, resume_state, run_job, unreadable_violation
from pipelines.spec import JobSpec, spec_from_dict


def spec_of(job: Path, **changes):
    raw = yaml.safe_load(job.read_text())
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return spec_from_dict(raw)


def corrupt_parquet(path: Path, rows: int) -> None:
    """A Parquet file whose footer reads (it tells its row count) but whose data pages do not."""
    table = pa.table({"id": [f"lost{i}" for i in range(rows)], "text": [f"sentence {i} of a lost file" for i in range(rows)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    data = bytearray(buffer.getvalue())
    footer = int.from_bytes(data[-8:-4], "little") + 8  # the footer, its length and the magic bytes
    start, end = 4, len(data) - footer
    data[start:end] = b"\x55" * (end - start)  # every data page, not the footer
    path.write_bytes(bytes(data))


def test_an_unreadable_file_fails_the_job_and_its_rows_are_counted(ray_session, tiny_models, tmp_path):
    ids = many_shards(tmp_path / "in", shards=3)
    corrupt_parquet(tmp_path / "in" / "lost.parquet", 1000)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    out = tmp_path / "out"
    failed = cli("run", str(job), *joining(ray_session))  # the session's Ray: none started and stopped for it
    assert failed.returncode == 2, failed.stderr[-2000:]
    [line] = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert "lost.parquet" in line and "1,000 rows" in line and "unreadable_files: quarantine" in line
    assert not (out / "_SUCCESS").exists()
    assert sorted(output_ids(out)) == sorted(ids)  # the readable shards are committed, and kept

    # the run the line asks for, in this process: the spec `run --set ...` reads, and the summary the CLI prints of
    # it (a failure raises; the failing run above is the CLI's exit status and line)
    from pipelines.output.summary import render
    from pipelines.spec import load_spec

    done = run_job(load_spec(job, ["errors.unreadable_files=quarantine", "errors.max_rate=1"]))
    summary = json.loads((out / "_run.json").read_text())
    assert summary["rows_in"] == len(ids) + 1000 and summary["errors"] == 1000
    assert [(Path(u["uri"]).name, u["rows"]) for u in summary["unreadable_files"]] == [("lost.parquet", 1000)]
    assert "unreadable input file" in render(done)


def test_a_file_that_could_not_be_fetched_is_never_committed_even_under_quarantine(ray_session, tiny_models, tmp_path):
    """Quarantine is for a file whose bytes don't parse. A file whose bytes could not be fetched (a storage or
    network error; here, gone between the listing and its read) may read fine on the next run: committing it
    would leave its rows out of every later run."""
    ids = many_shards(tmp_path / "in", shards=3)
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   errors={"unreadable_files": "quarantine", "max_rate": 1.0})
    listed = list_shards(spec.input.paths, spec.input.format, exclude=[spec.output.path])
    away = tmp_path / "away.jsonl"
    Path(listed[1].path).rename(away)  # keeps its bytes and modification time: the same shard when it is back
    with pytest.raises(PipelineError, match=r"could not be fetched: .*part-1\.jsonl.*run again") as failed:
        run_job(spec, shards=listed)
    assert "unreadable_files" not in str(failed.value)  # quarantine can't help: nothing is wrong with the file
    out = tmp_path / "out"
    assert sorted(output_ids(out)) == sorted(i for i in ids if not i.startswith("s1-"))
    assert len(OutputDir(str(out)).commits()) == 2

    away.rename(listed[1].path)
    again = run_job(spec)
    assert again.shards_this_run == 1 and not again.unreadable_files
    got = output_ids(out)
    assert sorted(got) == sorted(ids)  # every row, once


def _read(path: Path, keep: tuple[str, ...] = ()) -> list[tuple]:
    """(id, text, error, *kept) of each row of the file, in its order."""
    [shard] = list_shards([str(path)])
    rows = [r for block in read_shard(shard, Columns(text="text", id="id", keep=keep)) for r in block.to_pylist()]
    return [(r["id"], r["text"], r[ERROR], *(r[k] for k in keep)) for r in sorted(rows, key=lambda r: r[ROW])]


def test_number_ids_are_kept_as_written_and_one_value_costs_one_row_at_most(tmp_path):
    """Ids written as JSON numbers: one over 2**63 was read as a float (12345678901234567890 and ...891 both
    became ``1.2345678901234567e+19``, one id for two rows, and ``duplicate_ids: error`` then quarantined a row
    that was no duplicate), and beside a string id or a bad line it made the whole file unreadable ("Python
    int too large to convert to C long")."""
    big = [{"id": 12345678901234567890, "text": "a"}, {"id": 12345678901234567891, "text": "b"}]
    write_jsonl(tmp_path / "big.jsonl", [*big, {"id": 3, "text": "c"}])
    assert _read(tmp_path / "big.jsonl") == [("12345678901234567890", "a", None), ("12345678901234567891", "b", None),
                                             ("3", "c", None)]
    (tmp_path / "mixed.jsonl").write_text(
        '{"id": 18446744073709551616, "text": "a"}\n{"id": "x2", "text": "b"}\n{broken\n{"id": 1.10, "text": "d"}\n'
        '{"id": 2e3, "text": "e"}\n{"id": 7, "text": "f", "n": 99999999999999999999}\n'
    )
    rows = _read(tmp_path / "mixed.jsonl", keep=("n",))
    assert [(i, t) for i, t, _, _ in rows] == [("18446744073709551616", "a"), ("x2", "b"), (None, None), ("1.10", "d"),
                                               ("2e3", "e"), ("7", "f")]
    assert [e is None for _, _, e, _ in rows] == [True, True, False, True, True, True]
    assert rows[-1][3] == "99999999999999999999"  # a kept column of such a number is its text


def test_a_float_id_that_is_nan_is_a_null_id(tmp_path):
    """pandas stores an integer id column with a missing value as float64, the missing one as NaN: it was the id
    ``nan`` (an Arrow-side audit's case), one id shared by every missing one, where a null id is ``id is null`` under
    ``errors.duplicate_ids: error``. A NaN id is null, as pandas means it."""
    pq.write_table(pa.table({"id": pa.array([1.0, float("nan"), 3.0, None]), "text": ["a", "b", "c", "d"]}),
                   tmp_path / "ids.parquet")
    assert [(i, t) for i, t, _ in _read(tmp_path / "ids.parquet")] == [("1", "a"), (None, "b"), ("3", "c"), (None, "d")]


def test_an_id_list_holding_bytes_that_are_no_text_costs_its_row(tmp_path):
    """An id of a list of bytes is its JSON text; one holding bytes that are no UTF-8 ended the read in a
    UnicodeDecodeError traceback (every row of the file lost, the run failed; a reviewer's case, after bytes made
    text became their UTF-8 text): that row is quarantined, naming why."""
    pq.write_table(pa.table({"id": pa.array([[b"\xff"], [b"a"]], pa.list_(pa.binary())), "text": ["t", "u"]}),
                   tmp_path / "ids.parquet")
    rows = _read(tmp_path / "ids.parquet")
    assert rows[1] == ('["a"]', "u", None), rows
    assert rows[0][0] is None and rows[0][2].startswith("id is bytes that are not UTF-8 text"), rows


def test_a_dictionary_encoded_text_column_is_text(tmp_path):
    """Parquet text stored as a dictionary (a pandas category, or a writer's choice) is strings: every row was
    quarantined as ``text is not a string (dictionary<values=string, ...>)``."""
    table = pa.table({"id": pa.array(["a", "b", "c"]).dictionary_encode(),
                      "text": pa.array(["one", None, "one"]).dictionary_encode()})
    pq.write_table(table, tmp_path / "cat.parquet")
    assert _read(tmp_path / "cat.parquet") == [("a", "one", None), ("b", None, None), ("c", "one", None)]


def test_a_byte_order_mark_is_skipped_also_in_a_file_with_a_bad_line(tmp_path):
    """A UTF-8 byte order mark starts many files written on Windows. pyarrow skips it, but a file with one bad
    line is read line by line, where the first (good) row was quarantined as "Unexpected UTF-8 BOM"."""
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"id": "c0", "text": "a"}\r\n{bad\r\n{"id": "c2", "text": "b"}\r\n')
    rows = _read(tmp_path / "bom.jsonl")
    assert [(i, t) for i, t, _ in rows] == [("c0", "a"), (None, None), ("c2", "b")]
    assert [e is None for _, _, e in rows] == [True, False, True]


@pytest.mark.parametrize("bad", [False, True], ids=["all-good", "a-bad-line"])
def test_a_byte_order_mark_at_the_start_of_a_line_is_skipped_as_at_the_start_of_the_file(tmp_path, bad):
    """``cat a.jsonl b.jsonl`` of files saved with a byte order mark (Notepad, PowerShell 5's ``Out-File -Encoding
    utf8``) holds one at the start of b's first line: that row was quarantined as "invalid JSON: Unexpected UTF-8
    BOM" (and, with no bad line in the file, it sent the whole file down the line-by-line path). A file of the mark
    alone (an empty one) leaves a line of marks only: blank, no row, as the plan counts it."""
    bom = codecs.BOM_UTF8
    parts = [bom + b'{"id": "a0", "text": "x"}\r\n{"id": "a1", "text": "y"}\r\n', bom + b"\r\n", bom,
             bom + (b"{bad\r\n" if bad else b"") + b'{"id": "b0", "text": "z"}\r\n']
    (tmp_path / "cat.jsonl").write_bytes(b"".join(parts))
    [shard] = list_shards([str(tmp_path / "cat.jsonl")])
    rows = [r for block in read_shard(shard, Columns(text="text", id="id")) for r in block.to_pylist()]
    got = [(r[ROW], r["id"], r["text"], r[ERROR] is None) for r in sorted(rows, key=lambda r: r[ROW])]
    assert got == [(0, "a0", "x", True), (1, "a1", "y", True), *([(2, None, None, False)] if bad else []),
                   (2 + bad, "b0", "z", True)]
    assert reader_count_rows(shard) == (len(rows), True) and plan_count_rows(shard).rows == len(rows)


def test_an_object_that_names_a_key_twice_is_read_with_its_last_value_as_the_readme_says(tmp_path):
    """pyarrow refuses a file where one object names a key twice ("Column(/text) was specified twice"); it is read
    line by line then, each such object with its last value (as Python's json, pandas and jq read it), every other
    row as written, and the plan counts the rows as the run reads them."""
    (tmp_path / "dup.jsonl").write_bytes(b'{"id": "a", "text": "old", "text": "new"}\n{"id": "b", "text": "y"}\n'
                                         b'{"id": "c", "id": "d", "text": "z"}{"id": "e", "text": "w"}\n')
    assert _read(tmp_path / "dup.jsonl") == [("a", "new", None), ("b", "y", None), ("d", "z", None), ("e", "w", None)]
    [shard] = list_shards([str(tmp_path / "dup.jsonl")])
    assert plan_count_rows(shard).rows == 4


def test_objects_that_share_a_line_are_each_a_row_whatever_else_the_file_holds(tmp_path):
    """JSON objects written one after the other without a newline between them (``f.write(json.dumps(row))`` with no
    ``"\\n"``, two files joined where the first did not end in one, a file saved with old Mac line ends, ``\\r``)
    were each a row where pyarrow read the file, but one row of ``invalid JSON: Extra data`` for the whole line where
    the file was read line by line: a file over pyarrow's 1 MiB block, or one with a float id or one bad line
    anywhere. 20,000 rows written so came out as one quarantined row, under the error budget beside other files,
    and exit 0. Each object is a row either way, in its order; what does not parse costs a row, up to the next line
    end (a ``\\r`` too), and the objects after it are read."""
    rows = [{"id": i, "text": f"row {i} " + "x" * 100} for i in range(20_000)]
    (tmp_path / "glued.jsonl").write_text("".join(json.dumps(r) for r in rows))  # 2.5 MB, no newline at all
    got = _read(tmp_path / "glued.jsonl")
    assert [(i, t) for i, t, _ in got] == [(str(r["id"]), r["text"]) for r in rows]
    assert all(e is None for _, _, e in got)

    two = b'{"id": "a", "text": "x"} {"id": "b", "text": "y"}\n{"id": 1.5, "text": "z"}\n'  # a float id: by line
    (tmp_path / "two.jsonl").write_bytes(two)
    assert _read(tmp_path / "two.jsonl") == [("a", "x", None), ("b", "y", None), ("1.5", "z", None)]
    mac = b'{"id": 1.5, "text": "x"}\r{"id": "b", "text": "y"}\r{bad\r{"id": "c", "text": "z"}\r[1]\r'
    (tmp_path / "mac.jsonl").write_bytes(mac)
    assert _read(tmp_path / "mac.jsonl") == [
        ("1.5", "x", None), ("b", "y", None), (None, None, "invalid JSON: Expecting property name enclosed in double "
                                                     "quotes (line 1, column 52)"),
        ("c", "z", None), (None, None, "a JSON line must be an object, got list (line 1)")]
    # a byte that is no UTF-8 (Windows-1252's \xe9) costs the object that holds it, not the whole line of them
    (tmp_path / "cp1252.jsonl").write_bytes(b'{"id": "a", "text": "x"}\r{"id": "b", "text": "caf\xe9"}\r{"id": "c", '
                                            b'"text": "z"}\r{"id": 1.5, "text": "w"}')
    assert _read(tmp_path / "cp1252.jsonl") == [
        ("a", "x", None), (None, None, "not valid UTF-8 (line 1, byte 49)"), ("c", "z", None), ("1.5", "w", None)]
    # `cat a.jsonl b.jsonl` where a.jsonl has no final newline and b.jsonl was saved with a byte order mark
    (tmp_path / "cat.jsonl").write_bytes(b'{"id": "a", "text": "x"}\xef\xbb\xbf{"id": "b", "text": "y"}\n{"id": 1.5,'
                                         b' "text": "z"}\n')
    assert _read(tmp_path / "cat.jsonl") == [("a", "x", None), ("b", "y", None), ("1.5", "z", None)]
    for name in ("glued.jsonl", "two.jsonl", "mac.jsonl", "cp1252.jsonl", "cat.jsonl"):  # counted as a run reads them
        [shard] = list_shards([str(tmp_path / name)])
        assert plan_count_rows(shard).rows == len(_read(tmp_path / name)), name


def read_and_counted_alike(tmp_path: Path, cases: dict[str, tuple[bytes, list[tuple]]]) -> None:
    """Each file (name: its bytes, the rows a run reads of it) read as expected, and counted as many rows by the plan
    and by the reader's count."""
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert _read(tmp_path / name) == expected, name
        [shard] = list_shards([str(tmp_path / name)])
        assert plan_count_rows(shard).rows == len(expected), name
        assert reader_count_rows(shard) == (len(expected), True), name


def test_a_comma_or_end_of_file_bytes_after_an_object_on_its_line_are_no_row(tmp_path):
    """A JSON array's lines with its brackets stripped (``{…},`` each), objects separated by commas on one line, a
    DOS end-of-file mark (``\\x1a``) or a block of NUL bytes after the last object: each object was a row, but each
    such tail one more quarantined row (``invalid JSON: Expecting value``), so a 20-line file counted 40 rows in
    ``_run.json`` and the plan, and the error budget could fail a run that lost nothing; the second of two objects
    separated by a comma was lost into that row. A comma, ``\\x1a`` or NUL after a value is no value: the objects are
    the rows, each once, and the plan counts them so. What else follows an object still costs a row."""
    cases = {
        "stripped.jsonl": (b"".join(b'{"id": "%d", "text": "t%d"},\n' % (i, i) for i in range(20)),
                           [(str(i), f"t{i}", None) for i in range(20)]),
        "commas.jsonl": (b'{"id": "a", "text": "x"},{"id": "b", "text": "y"}, {"id": 1.5, "text": "z"}\n',
                         [("a", "x", None), ("b", "y", None), ("1.5", "z", None)]),
        "dos.jsonl": (b'{"id": "a", "text": "x"}\r\n{"id": "b", "text": "y"}\x1a',
                      [("a", "x", None), ("b", "y", None)]),
        "dos_line.jsonl": (b'{"id": "a", "text": "x"}\r\n{"id": 1.5, "text": "y"}\r\n\x1a',  # the mark on a line
                           [("a", "x", None), ("1.5", "y", None)]),
        "dos_crlf.jsonl": (b'{"id": "a", "text": "x"}\r\n{"id": 1.5, "text": "y"}\r\n\x1a\r\n',
                           [("a", "x", None), ("1.5", "y", None)]),
        "nuls.jsonl": (b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}' + b"\x00" * 4096,
                       [("a", "x", None), ("b", "y", None)]),
        # a byte that is no UTF-8 (Windows-1252's \xe9) costs the object that holds it, and only where the job reads it
        "cp1252.jsonl": (b'{"id": "a", "text": "caf\xe9"},{"id": "b", "text": "y"},\n'
                         b'{"id": "c", "text": "x", "note": "caf\xe9"},\n{"id": 1.5, "text": "z"},\n',
                         [(None, None, "not valid UTF-8 (line 1, byte 24)"), ("b", "y", None), ("c", "x", None),
                          ("1.5", "z", None)]),
        # after what is no object a comma is no separator: a CSV saved as .jsonl costs the rows it cost before
        "csv.jsonl": (b'"a","b"\n1,2\n', [(None, None, "a JSON line must be an object, got str (line 1)"),
                                          (None, None, "invalid JSON: Expecting value (line 1, column 4)"),
                                          (None, None, "a JSON line must be an object, got int (line 2)"),
                                          (None, None, "invalid JSON: Expecting value (line 2, column 2)")]),
        "other.jsonl": (b'{"id": "a", "text": "x"}; {"id": "b", "text": "y"}\n',
                        [("a", "x", None), (None, None, "invalid JSON: Expecting value (line 1, column 25)")]),
    }
    read_and_counted_alike(tmp_path, cases)


def test_objects_sharing_a_line_keep_a_byte_that_is_no_utf8_in_a_column_not_read_whichever_way_the_file_is_read(
        tmp_path):
    """pyarrow checks only the job's columns for bytes that are no UTF-8: of objects sharing a line, one with such a
    byte in a column the job does not read was a row where pyarrow read the file, and a quarantined row where the file
    was read line by line because some other line needed it (a line of ``[1]`` anywhere), or where the objects were
    separated by a comma: a row's fate hung on another line. Such an object is its row whichever way (as on a line of
    its own); one with the byte in the text column costs its row both ways."""
    unread = b'{"id": "a", "text": "x", "note": "caf\xe9"}{"id": "b", "text": "y"}\n'
    read = b'{"id": "d", "text": "caf\xe9"}{"id": "e", "text": "w"}\n'
    last = b'{"id": "c", "text": "z"}\n'
    refused = (None, None, "not valid UTF-8 (line 2, byte 24)")
    rows = [("a", "x", None), ("b", "y", None), refused, ("e", "w", None), ("c", "z", None)]
    for name, data, expected in (
        ("lines.jsonl", unread + read + last, rows),
        ("slow.jsonl", unread + read + last + b"[1]\n",
         [*rows, (None, None, "a JSON line must be an object, got list (line 4)")]),
        ("comma.jsonl", unread.replace(b"}{", b"},{") + read.replace(b"}{", b"}, {") + last, rows),
    ):
        (tmp_path / name).write_bytes(data)
        assert _read(tmp_path / name) == expected, name
        [shard] = list_shards([str(tmp_path / name)])
        assert plan_count_rows(shard).rows == len(expected), name


def test_nul_bytes_before_an_object_on_its_line_are_one_broken_row_and_the_object_is_read(tmp_path):
    """A file a crash left a block of NUL bytes in (its unwritten end, zeroed), then appended to: the next object
    starts on the NULs' line. The line was one broken row, and that object was lost into it. The NULs are one
    broken row, as on a line of their own (what stood there is unknown), and the object its own row, also where the
    block starts inside a line (the object it cut is that broken row); the plan counts them so."""
    nuls = b"\x00" * 4096
    broken = (None, None, "invalid JSON: Expecting value (line 2, column 1)")
    cases = {
        "appended.jsonl": (b'{"id": "a", "text": "x"}\n' + nuls + b'{"id": "b", "text": "y"}\n',
                           [("a", "x", None), broken, ("b", "y", None)]),
        "two.jsonl": (b'{"id": "a", "text": "x"}\n' + nuls + b'{"id": "b", "text": "y"}{"id": 1.5, "text": "z"}\n',
                      [("a", "x", None), broken, ("b", "y", None), ("1.5", "z", None)]),
        "alone.jsonl": (b'{"id": "a", "text": "x"}\n' + nuls + b'\n{"id": 1.5, "text": "z"}\n',
                        [("a", "x", None), broken, ("1.5", "z", None)]),
        # a byte order mark after them (files joined with cat), white space before them
        "bom.jsonl": (b'{"id": "a", "text": "x"}\n' + nuls + codecs.BOM_UTF8 + b'{"id": "b", "text": "y"}\n',
                      [("a", "x", None), broken, ("b", "y", None)]),
        "indented.jsonl": (b'{"id": "a", "text": "x"}\n  ' + nuls + b'{"id": "b", "text": "y"}\n',
                           [("a", "x", None), (None, None, "invalid JSON: Expecting value (line 2, column 3)"),
                            ("b", "y", None)]),
        # the block starts inside a line: what stood before it is cut, one broken row, and the object after it is read
        "cut.jsonl": (b'{"id": "a", "text": "x"}\n{"id": "q", "text": "hel' + nuls + b'{"id": "b", "text": "y"}\n',
                      [("a", "x", None),
                       (None, None, "invalid JSON: Invalid control character at (line 2, column 25)"),
                       ("b", "y", None)]),
        # between two objects they are no row (as after the last): a byte that is no UTF-8 in the second costs it
        # only where the job reads it, and not the first with it
        "between.jsonl": (b'{"id": "a", "text": "x"}' + nuls + b'{"id": "b", "text": "caf\xe9"}\n'
                          b'{"id": "c", "text": "x"}' + nuls + b'{"id": "d", "text": "y", "note": "caf\xe9"}\n',
                          [("a", "x", None), (None, None, "not valid UTF-8 (line 1, byte 4144)"), ("c", "x", None),
                           ("d", "y", None)]),
    }
    read_and_counted_alike(tmp_path, cases)


def test_a_block_of_nul_bytes_is_read_in_linear_time_and_cuts_no_nested_object_out_of_a_record(tmp_path):
    """A search for NULs before an object from each NUL of a long run took quadratic time: a file whose last 64 KiB a
    crash zeroed took 85 s to read or plan (a 1 MiB block, hours). And a block cut into a record just before an
    object nested in it made that nested object a row of its own, with another row's id: only objects that fill the
    rest of the line are read after a block."""
    good = b"".join(b'{"id": "%d", "text": "t"}\n' % i for i in range(1000))
    zeroed = tmp_path / "zeroed.jsonl"
    zeroed.write_bytes(good + b"\x00" * (1 << 20))
    [shard] = list_shards([str(zeroed)])
    assert len(_read(zeroed)) == 1001 and plan_count_rows(shard).rows == 1001  # in a second, not hours
    nested = {"nested.jsonl": (b'{"id": "a", "text": "first"}\n{"id": "c", "reply_to": ' + b"\x00" * 64
                               + b'{"id": "a", "text": "quoted"}, "text": "child"}\n',
                               [("a", "first", None), (None, None, "invalid JSON: Expecting value (line 2, column 25)")])}
    read_and_counted_alike(tmp_path, nested)


def test_the_plan_counts_nul_bytes_before_an_object_wherever_its_chunks_cut_the_line(tmp_path, monkeypatch):
    """The plan reads a file in chunks and looks for NUL bytes once a chunk, not once a line (a line's own search made
    its count of clean JSON lines ~20% slower): a line whose NULs lie in an earlier chunk than its end is counted
    as the run reads it, wherever the chunks cut it."""
    from pipelines.planning import inputs

    data = (b'{"id": "a", "text": "x"}\n{"id": "q", "text": "hel' + b"\x00" * 8 + b'{"id": "b", "text": "y"}\n'
            + b'{"id": "c", "text": "z"}\n')
    (tmp_path / "cut.jsonl").write_bytes(data)
    assert len(_read(tmp_path / "cut.jsonl")) == 4
    [shard] = list_shards([str(tmp_path / "cut.jsonl")])
    for size in range(1, len(data) + 1):
        monkeypatch.setattr(inputs, "CHUNK", size)
        counted = plan_count_rows(shard)
        assert (counted.rows, counted.count) == (4, "counted"), (size, counted.error)


def test_a_json_array_after_a_dos_end_of_file_mark_is_counted_as_the_run_reads_it(tmp_path):
    """A DOS end-of-file mark (``\\x1a``) on a line of its own before a JSON array (files joined by ``copy /a``): the
    run reads the array's elements (the mark is no row), where ``count_rows`` and ``pipelines plan`` looked for the
    array's ``[`` at the very start and counted the file as lines: 1 row of 2, and 2 of a file the run refuses whole
    (which counts as one without the mark does)."""
    for name, data, rows in (
        ("array.jsonl", b'\x1a\n[{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]\n', 2),
        ("crlf.jsonl", b'\x1a\r\n[{"id": "a", "text": "x"},\r\n {"id": "b", "text": "y"}]\r\n', 2),
    ):
        (tmp_path / name).write_bytes(data)
        assert len(_read(tmp_path / name)) == rows, name
        [shard] = list_shards([str(tmp_path / name)])
        assert plan_count_rows(shard).rows == rows, name
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'\x1a\n[{"id": "a", "text": "x"}]{"id": "b", "text": "y"}\n')  # refused whole by the run
    [shard] = list_shards([str(broken)])
    [(_, _, refused)] = _read(broken)
    assert refused.startswith("unreadable jsonl file: a JSON array followed by more at line 2"), refused
    assert reader_count_rows(shard) == (1, False) and plan_count_rows(shard).rows == 1  # as without the mark: the
    # array's element before what follows it


def test_a_null_after_an_object_with_a_byte_that_is_no_utf8_is_planned_as_the_run_reads_it(tmp_path):
    """pyarrow reads a ``null`` after an object on its line as a row of its own (its text null), and does not check
    the bytes of a column the job does not read: a run read two rows of such a line where that object held a byte
    that is no UTF-8 (Windows-1252's ``\\xe9``) in such a column, and ``pipelines plan`` counted one (the line is no
    UTF-8, and it looked for another object after the first only). Such a line is as many rows in the plan as in the
    run, whichever way the run reads the file (line by line where another line is no object)."""
    line = b'{"id": "a", "text": "x", "note": "caf\xe9"} null\n'
    obj = b'{"id": "b", "text": "y"}\n'
    for name, data in (("alone.jsonl", line + obj), ("mac.jsonl", line.replace(b" null", b"\rnull") + obj),
                       ("slow.jsonl", line + obj + b"[1]\n")):
        path = tmp_path / name
        path.write_bytes(data)
        [shard] = list_shards([str(path)])
        assert plan_count_rows(shard).rows == len(_read(path)), name
    assert len(_read(tmp_path / "alone.jsonl")) == 3


def test_a_json_lines_file_with_a_line_of_null_costs_that_row_not_the_process(tmp_path):
    """pyarrow 26 crashes the process (a segmentation fault) on JSON lines where a block it reads starts with a line
    of ``null``: a file's first line (an export's placeholder row, ``json.dumps(None)``), or any line its 1 MiB blocks
    start at. The Ray worker reading the shard died, and so did the driver sampling the file's types and
    ``pipelines plan`` counting its rows. Such a line is a row of its own error, as any value that is no object is."""
    obj = b'{"id": "b", "text": "y"}\n'
    first = b"null\n" + obj
    blank_first = b"\n \r\n  null \n" + obj
    big = b'{"id": "a", "text": "' + b"x" * ((1 << 20) - 24) + b'"}\n'  # one line of exactly 1 MiB: block 2 starts
    at_block = big + b"null\r" + obj  # ... at the null, ended by an old Mac \r
    assert len(big) == 1 << 20
    def null_row(line: int) -> tuple:
        return None, None, f"a JSON line must be an object, got null (line {line})"

    for name, data, rows in (
        ("first.jsonl", first, [null_row(1), ("b", "y", None)]),
        ("blank_first.jsonl", blank_first, [null_row(3), ("b", "y", None)]),
        ("at_block.jsonl", at_block, [("a", "x" * ((1 << 20) - 24), None), null_row(2), ("b", "y", None)]),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        assert _read(path) == rows, name
        [shard] = list_shards([str(path)])
        reference_types([shard], Columns(text="text", id="id", keep=("id",)))  # the driver's sample of its types
        assert plan_count_rows(shard).rows == len(rows), name


def test_a_line_of_null_after_a_byte_order_mark_costs_that_row_not_the_process(tmp_path):
    """pyarrow skips a byte order mark where a block it reads starts, and then crashes on a ``null`` as without one.
    A file saved with a mark (Notepad) whose first line is ``null`` crashed ``pipelines plan`` where its other lines
    were nested (they are handed to pyarrow together, the marked ``null`` first); a mark after an old Mac ``\\r``
    (``cat`` of such files) where a 1 MiB block starts crashed the Ray worker reading the file. Each file is read and
    counted in a process of its own, so that a crash fails this test instead of ending the test run."""
    bom, nested = codecs.BOM_UTF8, b'{"id": "b", "text": "y", "m": {"k": 1}}\n'
    big = b'{"id": "a", "text": "' + b"x" * ((1 << 20) - 24) + b'"}\r'  # one line of exactly 1 MiB: block 2 starts
    files = {
        "notepad.jsonl": (bom + b"null\n" + nested * 2, 3),
        "cat.jsonl": (b'{"id": "a", "text": "x"}\n' + bom + b"null\n" + nested, 3),
        "mac.jsonl": (big + bom + b"null\r" + nested, 3),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    script = (
        "import json, sys\n"
        "from pipelines.io.reader import Columns, read_shard\n"
        "from pipelines.io.shards import list_shards\n"
        "from pipelines.planning.inputs import count_rows\n"
        "[shard] = list_shards([sys.argv[1]])\n"
        "rows = [r for b in read_shard(shard, Columns(text='text', id='id')) for r in b.to_pylist()]\n"
        "print(json.dumps([count_rows(shard).rows, sorted(str(r['_error']) for r in rows)]))\n"
    )
    for name, (_, rows) in files.items():
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).parents[1])
        assert done.returncode == 0, (name, done.returncode, done.stderr[-500:])
        counted, errors = json.loads(done.stdout)
        assert counted == rows and len(errors) == rows, name
        assert sum(error.startswith("a JSON line must be an object, got null") for error in errors) == 1, name


def test_a_line_nested_past_pyarrows_stack_costs_that_row_not_the_process(tmp_path):
    """pyarrow 26 parses nested values by recursion, and a line nested 20,000 levels deep (40 KB of ``[``) overflows
    its stack: a segmentation fault, in the Ray worker reading the file, the driver sampling its types and
    ``pipelines plan`` counting its nested lines together. Such a file is read line by line, where the line costs its
    row (``nested too deeply``), as one past Python's limit does. Each file is read in a process of its own, so that a
    crash fails this test instead of ending the test run."""
    deep = b'{"id": "d", "text": "z", "m": ' + b"[" * 20_000 + b"]" * 20_000 + b"}\n"
    nested = b'{"id": "b", "text": "y", "n": {"k": 1}}\n'
    for name, data in (("first.jsonl", deep + nested), ("between.jsonl", nested + deep + nested)):
        (tmp_path / name).write_bytes(data)
    script = (
        "import json, sys\n"
        "from pipelines.io.reader import Columns, read_shard, reference_types\n"
        "from pipelines.io.shards import list_shards\n"
        "from pipelines.planning.inputs import count_rows\n"
        "[shard] = list_shards([sys.argv[1]])\n"
        "columns = Columns(text='text', id='id', keep=('id',))\n"
        "reference_types([shard], columns)\n"
        "rows = [r for b in read_shard(shard, columns) for r in b.to_pylist()]\n"
        "print(json.dumps([count_rows(shard).rows, sorted(str(r['_error']) for r in rows)]))\n"
    )
    for name, rows in (("first.jsonl", 2), ("between.jsonl", 3)):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).parents[1])
        assert done.returncode == 0, (name, done.returncode, done.stderr[-500:])
        counted, errors = json.loads(done.stdout)
        assert counted == rows and errors == ["None"] * (rows - 1) + ["invalid JSON: nested too deeply (line 2)"
                                                                      if name == "between.jsonl" else
                                                                      "invalid JSON: nested too deeply (line 1)"], name


def test_an_object_nested_past_pythons_limit_costs_its_row_not_the_objects_after_it_on_its_line(tmp_path):
    """An object nested 1,200 levels deep (past Python's limit, not pyarrow's) with another after it on its line: a
    run that read the file with pyarrow read two rows, one read line by line (another line no object) one, the
    object after it lost, and ``pipelines plan`` counted one. The deep object is a row of its own error on the line
    by line path, and the objects after it are read as the line's other values are."""
    deep = b'{"id": "a", "text": "x", "m": ' + b"[" * 1200 + b"]" * 1200 + b"}"
    glued = deep + b' {"id": "b", "text": "y"}\n'
    for name, data, rows in (("fast.jsonl", glued, 2), ("slow.jsonl", glued + b"[1]\n", 3)):
        path = tmp_path / name
        path.write_bytes(data)
        [shard] = list_shards([str(path)])
        assert len(_read(path)) == rows and plan_count_rows(shard).rows == rows, name
    assert _read(tmp_path / "slow.jsonl") == [
        (None, None, "invalid JSON: nested too deeply (line 1)"), ("b", "y", None),
        (None, None, "a JSON line must be an object, got list (line 2)")]


def test_bytes_that_are_no_utf8_in_a_column_the_job_does_not_read_cost_no_row_whichever_way_the_file_is_read(
        tmp_path):
    """pyarrow checks the job's columns for bytes that are no UTF-8 (a note saved in Windows-1252 beside the text):
    such a row is read where pyarrow reads the file. Where the file is read line by line (a line of ``null``, a float
    id, one broken line anywhere in it) the whole line was refused, ``not valid UTF-8``: the same row lost or kept by
    what else the file held. It is kept now where the bytes lie only in columns the job does not read."""
    note = b'{"id": "a", "text": "x", "note": "caf\xe9"}\n'
    for name, rest, more in (("plain.jsonl", b"", []),
                             ("null.jsonl", b"null\n", [(None, None, "a JSON line must be an object, got null (line 3)")]),
                             ("float.jsonl", b'{"id": 1.5, "text": "z"}\n', [("1.5", "z", None)])):
        (tmp_path / name).write_bytes(note + b'{"id": "b", "text": "y"}\n' + rest)
        assert _read(tmp_path / name) == [("a", "x", None), ("b", "y", None), *more], name
    (tmp_path / "read.jsonl").write_bytes(b'{"id": "a", "text": "caf\xe9"}\nnull\n')  # in the text: its row, as before
    assert _read(tmp_path / "read.jsonl")[0] == (None, None, "not valid UTF-8 (line 1, byte 24)")


def test_a_line_that_is_no_record_is_named_by_its_line_in_the_file(tmp_path):
    """A JSON line that is no record (broken JSON, bytes that are no UTF-8, no object) has neither id nor preview in
    ``_errors/``: its shard and ``row`` were all that placed it, and ``row`` counts the non-blank lines from 0, so past
    a blank line (files joined with one between them, a hand-edited file) row 1 was the file's line 4, and the reason
    said only the column (``invalid JSON: ... (column 2)``): the user opened another line, or none at all."""
    (tmp_path / "gaps.jsonl").write_bytes(b'{"id": "a", "text": "x"}\n\n\n{bad\r\n\r\n{"id": "b", "text": "y"}\n'
                                          b'{"id": "c\xff", "text": "z"}\n  \n[1, 2]\n')
    assert _read(tmp_path / "gaps.jsonl") == [
        ("a", "x", None),
        (None, None, "invalid JSON: Expecting property name enclosed in double quotes (line 4, column 2)"),
        ("b", "y", None),
        (None, None, "not valid UTF-8 (line 7, byte 9)"),
        (None, None, "a JSON line must be an object, got list (line 9)"),
    ]


def test_a_lone_surrogate_costs_its_row_only(tmp_path):
    """JSON may escape half of a surrogate pair (``"\\ud83d"``: JavaScript writes it of a string cut inside an
    emoji); that is no Unicode character, and one such line made the whole file unreadable ("surrogates not
    allowed": every row quarantined with the file, or the job failed)."""
    lines = [
        '{"id": "r0", "text": "fine", "n": 1}',
        '{"id": "r1", "text": "cut emoji \\ud83d", "n": 2}',
        '{"id": "r2\\udc00", "text": "a bad id"}',
        '{"id": "r3", "text": "a whole emoji \\ud83d\\ude00", "other": "\\ud83d"}',  # a column the job doesn't read
        '{"id": "r4", "text": "a bad kept value", "n": {"deep": ["\\udfff"]}}',
        '{"id": "r5", "text": "fine too", "n": 5}',
    ]
    (tmp_path / "cut.jsonl").write_text("\n".join(lines) + "\n")
    rows = _read(tmp_path / "cut.jsonl", keep=("n",))
    assert [(i, t) for i, t, _, _ in rows] == [("r0", "fine"), ("r1", None), (None, "a bad id"),
                                               ("r3", "a whole emoji \U0001f600"), ("r4", "a bad kept value"),
                                               ("r5", "fine too")]
    assert [e for _, _, e, _ in rows] == [None, "text is not valid Unicode: a lone surrogate (\\ud83d)",
                                          "id is not valid Unicode: a lone surrogate (\\udc00)", None,
                                          "n is not valid Unicode: a lone surrogate (\\udfff)", None]


def test_a_bad_line_leaves_a_kept_columns_type_as_the_other_lines_give_it(tmp_path):
    """One line with a lone surrogate or broken JSON made the types sample of its file fail, so the file's kept
    columns were not sampled: where it was the only shard, the number column ``n`` became text in every row."""
    good = [json.dumps({"id": f"r{i}", "text": "t", "n": i}) for i in range(4)]
    for name, bad in (("surrogate", '{"id": "x", "text": "cut \\ud83d", "n": 9}'), ("broken", '{"id": "x", "te')):
        (tmp_path / f"{name}.jsonl").write_bytes(codecs.BOM_UTF8 + "\n".join([*good[:2], bad, *good[2:]]).encode() + b"\n")
        [shard] = list_shards([str(tmp_path / f"{name}.jsonl")])
        columns = Columns(text="text", id="id", keep=("n",))
        types = reference_types([shard], columns)
        assert types == {"n": pa.int64()}, name
        typed = dataclasses.replace(columns, keep_types=tuple(types.items()))
        rows = [r for block in read_shard(shard, typed) for r in block.to_pylist()]
        assert sorted(r["n"] for r in rows if r[ERROR] is None) == [0, 1, 2, 3], name


def test_ids_of_any_type_are_text_or_cost_their_row(tmp_path):
    """Ids that are JSON objects (mongoexport's ``{"$oid": ...}``), UUIDs (DuckDB's ``gen_random_uuid()``), bytes,
    lists or structs in Parquet ended the job in a traceback ("Unsupported cast from struct", "Invalid UTF8")."""
    import uuid

    write_jsonl(tmp_path / "oid.jsonl", [{"id": {"$oid": f"65a{i}"}, "text": "t"} for i in range(2)])
    assert [i for i, _, _ in _read(tmp_path / "oid.jsonl")] == ['{"$oid": "65a0"}', '{"$oid": "65a1"}']
    ids = [uuid.UUID(int=7), uuid.UUID(int=8)]
    uuids = pa.ExtensionArray.from_storage(pa.uuid(), pa.array([u.bytes for u in ids], pa.binary(16)))
    pq.write_table(pa.table({"id": uuids, "text": ["a", "b"]}), tmp_path / "uuid.parquet")
    assert [i for i, _, _ in _read(tmp_path / "uuid.parquet")] == [str(u) for u in ids]
    pq.write_table(pa.table({"id": pa.array([b"ok", b"\xff\x00"]), "text": ["a", "b"]}), tmp_path / "bytes.parquet")
    assert _read(tmp_path / "bytes.parquet") == [("ok", "a", None),
                                                  (None, "b", "id is bytes that are not UTF-8 text (binary)")]
    pq.write_table(pa.table({"id": [[1, 2], [3]], "text": ["a", "b"]}), tmp_path / "list.parquet")
    assert [i for i, _, _ in _read(tmp_path / "list.parquet")] == ["[1, 2]", "[3]"]
    pq.write_table(pa.table({"id": [{"k": 1}, {"k": 2}], "text": ["a", "b"]}), tmp_path / "struct.parquet")
    assert [i for i, _, _ in _read(tmp_path / "struct.parquet")] == ['{"k": 1}', '{"k": 2}']


def test_whole_number_ids_stored_as_floats_are_written_as_their_digits(tmp_path):
    """pandas stores an integer column that has a missing value as float64, so of two shards of one table one may
    hold the ids as int64 and the other as doubles. The doubles were written as Arrow prints them, in exponent form
    from 10**10 up: order 1733100000003 became the id ``1.733100000003e+12`` beside ``1733100000001`` of the int64
    shard, one column in two spellings (a join of the output with its input on the id lost those rows, and
    ``errors.duplicate_ids: error`` did not see an id that came in both). A kept column typed text did the same."""
    import pandas as pd

    pd.DataFrame({"id": [1733100000001, 20], "text": ["a", "b"], "ref": [1733100000001, 7]}).to_parquet(
        tmp_path / "monday.parquet")
    pd.DataFrame({"id": [1733100000003, None, 0.5, 2.0**53 - 1, 2.0**63], "text": ["c", "d", "e", "f", "h"],
                  "ref": [1733100000003, None, 2.5, -12.0, 1e21]}).to_parquet(tmp_path / "tuesday.parquet")
    assert pq.read_schema(tmp_path / "tuesday.parquet").field("id").type == pa.float64()  # the habit itself
    write_jsonl(tmp_path / "wednesday.jsonl", [{"id": 30, "text": "g", "ref": "x-9"}])  # ref: text in this job

    types, rows = _kept([tmp_path / name for name in ("monday.parquet", "tuesday.parquet", "wednesday.jsonl")],
                        ("ref",))
    assert types == {"ref": pa.string()}
    assert rows == {
        "1733100000001": (None, "1733100000001"), "20": (None, "7"),
        "1733100000003": (None, "1733100000003"), None: (None, None), "0.5": (None, "2.5"),
        "9007199254740991": (None, "-12"),
        "9.223372036854776e+18": (None, "1e+21"),  # past 2**53 a float holds no integer exactly: as Arrow writes it
        "30": (None, "x-9"),
    }


def test_a_kept_uuid_column_typed_text_is_the_uuids_canonical_text(tmp_path):
    """A kept column of UUIDs (DuckDB writes its UUID type as Parquet's, which pyarrow reads as ``arrow.uuid``) in a
    job whose type of the column is text (other shards hold it as strings, or an earlier run fixed text) was
    written as garbage: the UUID's 16 bytes as text where they happened to be UTF-8 (``\\x00…\\x07``), else each
    value as its JSON text, quotes and all (``"c3077019-…"``), so a join with the strings of the other shards
    found nothing. It is the UUID's canonical form, as an id of that type is."""
    import uuid

    def uuids(*values: uuid.UUID) -> pa.Array:
        return pa.ExtensionArray.from_storage(pa.uuid(), pa.array([u.bytes for u in values], pa.binary(16)))

    small, random = uuid.UUID(int=7), uuid.UUID("c3077019-6a8d-46c0-91c6-994a1c730be8")  # bytes UTF-8, and not
    pq.write_table(pa.table({"id": ["p0"], "text": ["t"], "ref": uuids(small)}), tmp_path / "small.parquet")
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["t", "t"], "ref": uuids(random, small)}),
                   tmp_path / "random.parquet")
    write_jsonl(tmp_path / "strings.jsonl", [{"id": "j0", "text": "t", "ref": str(random)}])

    types, rows = _kept([tmp_path / n for n in ("small.parquet", "random.parquet", "strings.jsonl")], ("ref",))
    assert types == {"ref": pa.string()}
    assert rows == {"p0": (None, str(small)), "p1": (None, str(random)), "p2": (None, str(small)),
                    "j0": (None, str(random))}
    _, fixed = _kept([tmp_path / "random.parquet"], ("ref",), types={"ref": pa.string()})  # text fixed by a first run
    assert fixed == {"p1": (None, str(random)), "p2": (None, str(small))}

    # the other way round: a job whose type is the UUID's (its first run read DuckDB's files) and a later file of
    # strings; each string that is a UUID is that UUID (every row was quarantined, `schema differs: … string here`)
    write_jsonl(tmp_path / "later.jsonl", [{"id": "k0", "text": "t", "ref": str(random)},
                                           {"id": "k1", "text": "t", "ref": "n/a"}, {"id": "k2", "text": "t"}])
    _, later = _kept([tmp_path / "later.jsonl"], ("ref",), types={"ref": pa.uuid()})
    assert {i: r for i, r in later.items() if i != "k1"} == {"k0": (None, random), "k2": (None, None)}
    assert later["k1"][0].startswith("schema differs: column 'ref' is string here but extension<arrow.uuid>")


def _kept(paths: list[Path], keep: tuple[str, ...], sample_bytes: int = 1 << 18, types: dict | None = None):
    """(the kept columns' types, {id: (error, *kept)}) of reading the files as a job does: types first."""
    shards = list_shards([str(p) for p in paths])
    columns = Columns(text="text", id="id", keep=keep)
    types = reference_types(shards, columns, sample_bytes) if types is None else types
    typed = dataclasses.replace(columns, keep_types=tuple(types.items()))
    rows = [r for shard in shards for block in read_shard(shard, typed) for r in block.to_pylist()]
    return types, {r["id"]: (r[ERROR], *(r[k] for k in keep)) for r in rows}


def test_a_parquet_file_that_names_a_kept_column_twice_is_quarantined_not_a_crash(tmp_path):
    """A Parquet file with two columns of one name (pyarrow writes it) and that name in input.columns_to_keep: the
    run and the plan died with a traceback (KeyError from the types' sampling, the lock left behind), where the
    same file is quarantined as unreadable when the column is not kept. Now it is quarantined either way."""
    table = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["x", "y"]), pa.array(["n1", "n2"]), pa.array([1, 2])],
                                 names=["id", "text", "note", "note"])
    pq.write_table(table, tmp_path / "twice.parquet")
    write_jsonl(tmp_path / "good.jsonl", [{"id": "g", "text": "t", "note": "k"}])
    types, rows = _kept([tmp_path / "twice.parquet", tmp_path / "good.jsonl"], ("note",))
    assert types == {"note": pa.string()}
    assert rows["g"] == (None, "k")
    assert "exists 2 times" in rows[None][0]


def test_a_kept_value_of_another_type_costs_its_row_alone(tmp_path):
    """Where a shard's own type of a kept column could not be cast to the job's (text to a list or a struct), every
    row of the shard was quarantined, its nulls too (`schema differs … (value 'None')`); and in a JSON lines file
    read line by line (a late value of another type), the column became JSON text for every row, lists too, so no
    row fitted. Only the value that does not fit costs its row."""
    listed = {"tags": pa.list_(pa.string()), "meta": pa.struct([("a", pa.string())])}
    write_jsonl(tmp_path / "new.jsonl", [{"id": "solo", "text": "t", "tags": "solo", "meta": None},
                                         *({"id": f"n{i}", "text": "t"} for i in range(3))])
    _, rows = _kept([tmp_path / "new.jsonl"], ("tags", "meta"), types=listed)
    assert {i: r for i, r in rows.items() if i != "solo"} == {f"n{i}": (None, None, None) for i in range(3)}
    assert rows["solo"][0].startswith("schema differs: column 'tags' is string here but list<item: string> in this")

    late = [{"id": f"r{i}", "text": "t", "tags": ["a", str(i)] if i % 2 else None, "meta": {"a": "x"}} for i in range(6)]
    late[5] = {"id": "r5", "text": "t", "tags": "a", "meta": {"deep": {"b": 1}}}
    write_jsonl(tmp_path / "late.jsonl", late)  # the sample sees lists and one struct only (its first 200 bytes)
    types, rows = _kept([tmp_path / "late.jsonl"], ("tags", "meta"), sample_bytes=200)
    assert types == {"tags": pa.list_(pa.field("element", pa.string())), "meta": pa.struct([("a", pa.string())])}
    assert {i: r for i, r in rows.items() if i != "r5"} == {
        "r0": (None, None, {"a": "x"}), "r1": (None, ["a", "1"], {"a": "x"}), "r2": (None, None, {"a": "x"}),
        "r3": (None, ["a", "3"], {"a": "x"}), "r4": (None, None, {"a": "x"})}
    assert rows["r5"][0].startswith("schema differs: column 'tags' is string here")


def test_a_column_the_job_does_not_read_leaves_the_types_sample_alone(tmp_path):
    """A file whose first lines pyarrow refused, for a column the job does not even read (`extra`: a list, then
    text), was left out of the kept columns' types without a word: `meta`, a struct of text there and of numbers
    elsewhere, took the other file's type, and the file's rows were quarantined (`schema differs`)."""
    write_jsonl(tmp_path / "ja.jsonl", [{"id": f"a{i}", "text": "t", "meta": {"a": i}} for i in range(3)])
    write_jsonl(tmp_path / "jb.jsonl", [{"id": "b0", "text": "t", "meta": {"a": "x"}, "extra": ["l"], "tags": ["p"]},
                                        {"id": "b1", "text": "t", "meta": None, "extra": "s", "tags": "q"}])
    types, rows = _kept([tmp_path / "ja.jsonl", tmp_path / "jb.jsonl"], ("meta", "tags"))
    assert types == {"meta": pa.string(), "tags": pa.string()}  # types that don't agree: text, as the README says
    assert rows == {"a0": (None, '{"a": 0}', None), "a1": (None, '{"a": 1}', None), "a2": (None, '{"a": 2}', None),
                    "b0": (None, '{"a": "x"}', '["p"]'), "b1": (None, None, "q")}


def test_kept_json_strings_stay_the_strings_they_are_written_as(tmp_path):
    """pyarrow's JSON type inference made date- and time-like strings of a kept column timestamps: an offset was
    lost ("2024-01-02T10:00:00+02:00" written as 08:00 without zone), a day became "2024-01-01 00:00:00" beside a
    shard where it was text, a value past the sampled part that was no time ("unknown") and every row of a file
    read line by line (one broken line) were quarantined ("schema differs")."""
    lines = [{"id": f"r{i}", "text": "t", "at": "2024-01-02T10:00:00+02:00", "day": "2024-01-01",
              "meta": {"on": "2024-01-03"}, "days": ["2024-01-04"]} for i in range(8)]
    write_jsonl(tmp_path / "a" / "s1.jsonl", [*lines, {**lines[0], "id": "late", "at": "unknown"}])
    write_parquet(tmp_path / "a" / "s2.parquet", [{"id": "p", "text": "t", "day": "2024-01-01"}])
    keep = ("at", "day", "meta", "days")
    types, rows = _kept([tmp_path / "a"], keep, sample_bytes=400)  # the last line is past the sample
    assert types == {"at": pa.string(), "day": pa.string(), "meta": pa.struct([("on", pa.string())]),
                     "days": pa.list_(pa.string())}
    assert rows["r0"] == (None, "2024-01-02T10:00:00+02:00", "2024-01-01", {"on": "2024-01-03"}, ["2024-01-04"])
    assert rows["late"] == (None, "unknown", "2024-01-01", {"on": "2024-01-03"}, ["2024-01-04"])
    assert rows["p"] == (None, None, "2024-01-01", None, None)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "x", "te\n')
    types, rows = _kept([tmp_path / "b"], keep)
    assert rows.pop(None)[0].startswith("invalid JSON") and [e for e, *_ in rows.values()] == [None] * 8
    assert rows["r7"] == (None, "2024-01-02T10:00:00+02:00", "2024-01-01", {"on": "2024-01-03"}, ["2024-01-04"])


def test_kept_json_integers_past_64_bits_keep_their_digits_or_cost_their_row(tmp_path):
    """pyarrow reads a JSON integer past 2**63 as a float: a kept column of 20 distinct such integers was written
    as one 1.8446744073709552e+19, and one found past the sampled part made every integer of its file a float
    (2**62 + 1 written as 2**62), with no row error."""
    big = [{"id": f"b{i}", "text": "t", "n": 2**64 - 1 - i} for i in range(20)]
    write_jsonl(tmp_path / "a" / "big.jsonl", [*big, {"id": "small", "text": "t", "n": 7},
                                               {"id": "low", "text": "t", "n": -(2**63) - 1}])
    types, rows = _kept([tmp_path / "a"], ("n",))
    assert types == {"n": pa.string()}
    assert rows == {**{f"b{i}": (None, str(2**64 - 1 - i)) for i in range(20)}, "small": (None, "7"),
                    "low": (None, str(-(2**63) - 1))}
    head = [{"id": f"r{i}", "text": "t", "n": 2**62 + i, "x": 0.5} for i in range(8)]
    write_jsonl(tmp_path / "b" / "late.jsonl", [*head, {"id": "late", "text": "t", "n": 2**64, "x": 0.5},
                                                {"id": "x", "text": "t", "n": 1, "x": 2**64 + 1}])
    types, rows = _kept([tmp_path / "b"], ("n", "x"), sample_bytes=400)  # the last two lines are past the sample
    assert types == {"n": pa.int64(), "x": pa.float64()}
    assert {k: v for k, v in rows.items() if k.startswith("r")} == {f"r{i}": (None, 2**62 + i, 0.5) for i in range(8)}
    assert rows["late"] == (f"n holds an integer past 64 bits ({2**64}), which its type in this job's output (int64)"
                            " can't hold exactly", None, 0.5)
    assert rows["x"][1:] == (1, None) and rows["x"][0].startswith(f"x holds an integer past 64 bits ({2**64 + 1})")


def test_a_kept_unsigned_64_bit_column_beside_a_signed_one_keeps_every_value(tmp_path):
    """A kept column stored as uint64 in one file (Polars' ``hash()``, DuckDB's UBIGINT) and as a signed integer in
    another (int64 from pandas or JSON lines) was typed int64: every value from 2**63 up, half of a column of
    hashes, cost its row (``schema differs: column 'h' is uint64 here but int64``)."""
    pq.write_table(pa.table({"id": ["u0", "u1"], "text": ["a", "b"],
                             "h": pa.array([2**64 - 1, 7], pa.uint64())}), tmp_path / "hashes.parquet")
    write_jsonl(tmp_path / "more.jsonl", [{"id": "s0", "text": "c", "h": -3}])
    pq.write_table(pa.table({"id": ["w0"], "text": ["d"], "h": pa.array([9], pa.uint32())}), tmp_path / "w.parquet")
    types, rows = _kept([tmp_path / "hashes.parquet", tmp_path / "more.jsonl", tmp_path / "w.parquet"], ("h",))
    assert types == {"h": pa.string()}
    assert rows == {"u0": (None, str(2**64 - 1)), "u1": (None, "7"), "s0": (None, "-3"), "w0": (None, "9")}
    types, rows = _kept([tmp_path / "hashes.parquet", tmp_path / "w.parquet"], ("h",))  # unsigned only: one type
    assert types == {"h": pa.uint64()} and rows == {"u0": (None, 2**64 - 1), "u1": (None, 7), "w0": (None, 9)}


def test_kept_bytes_and_durations_from_other_writers_keep_their_values(tmp_path):
    """A kept bytes column stored as ``binary`` by pyarrow and as ``large_binary`` by Polars (or ``binary_view``,
    ``fixed_size_binary``) had no common type: it became text, each value Python's repr in JSON (``"b'\\x00'"``), and
    a value that is no UTF-8 reached the output so. Durations in two units became their bare numbers as text (2 s
    and 2 ms both ``"2"``). Bytes of any of these types are one ``binary`` now, and durations one duration in the
    finest unit; bytes beside another type become their UTF-8 text, a value that is none costing its row."""
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["t", "t"], "sig": pa.array([b"\x00\x01", b"\xff\x00"]),
                             "wait": pa.array([2, None], pa.duration("s"))}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["c"], "text": ["t"], "sig": pa.array([b"ab"], pa.large_binary()),
                             "wait": pa.array([2], pa.duration("ms"))}), tmp_path / "c.parquet")
    pq.write_table(pa.table({"id": ["d"], "text": ["t"], "sig": pa.array([b"\xfe\xff"], pa.binary(2)),
                             "wait": pa.array([3], pa.duration("us"))}), tmp_path / "d.parquet")
    files = [tmp_path / "a.parquet", tmp_path / "c.parquet", tmp_path / "d.parquet"]
    types, rows = _kept(files, ("sig", "wait"))
    assert types == {"sig": pa.binary(), "wait": pa.duration("us")}
    second = datetime.timedelta(seconds=2)
    assert rows == {"a": (None, b"\x00\x01", second), "b": (None, b"\xff\x00", None),
                    "c": (None, b"ab", datetime.timedelta(milliseconds=2)),
                    "d": (None, b"\xfe\xff", datetime.timedelta(microseconds=3))}
    write_jsonl(tmp_path / "e.jsonl", [{"id": "e", "text": "t", "sig": 5}])  # bytes beside a number: text
    types, rows = _kept([tmp_path / "a.parquet", tmp_path / "c.parquet", tmp_path / "e.jsonl"], ("sig",))
    assert types == {"sig": pa.string()}
    assert rows["a"] == (None, "\x00\x01") and rows["c"] == (None, "ab") and rows["e"] == (None, "5"), rows
    assert rows["b"][1] is None and rows["b"][0].startswith("sig is bytes that are not UTF-8 text"), rows["b"]


def test_a_kept_int96_timestamp_past_the_nanosecond_range_keeps_its_date(tmp_path):
    """Spark (``spark.sql.parquet.outputTimestampType``'s default), Hive and Impala store timestamps as INT96, which
    pyarrow reads as nanoseconds: a date past 2262 or before 1677, such as the ``9999-12-31`` that marks a row still
    valid in a slowly changing dimension, overflowed and was written as another date (1816-03-29 05:56:08),
    with no row error."""
    valid = [datetime.datetime(9999, 12, 31), datetime.datetime(2024, 1, 1, 10, 0, 0, 123456),
             datetime.datetime(1500, 1, 1), None]
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": ["t"] * 4, "valid_to": pa.array(valid, pa.timestamp("us"))}),
                   tmp_path / "spark.parquet", use_deprecated_int96_timestamps=True)
    types, rows = _kept([tmp_path / "spark.parquet"], ("valid_to",))
    assert types == {"valid_to": pa.timestamp("us")}
    assert rows == {i: (None, v) for i, v in zip("abcd", valid)}


def test_kept_json_integers_past_2_53_beside_floats_in_one_file_are_not_rounded(tmp_path):
    """pyarrow reads a JSON column of integers and floats as floats: an integer past 2**53 in a file whose column also
    held a float (9007199254740993 beside 0.5) was written as 9007199254740992.0 (typed double), or as the text
    9007199254740992 (typed text), with no row error, where the same integer in a file of its own costs its row."""
    mixed = [{"id": "big", "text": "t", "n": 2**53 + 1, "m": {"x": 2**60 + 1}}, {"id": "half", "text": "t", "n": 0.5,
                                                                                "m": {"x": 0.5}}]
    write_jsonl(tmp_path / "a" / "mixed.jsonl", mixed)
    write_jsonl(tmp_path / "b" / "alone.jsonl", [{"id": "alone", "text": "t", "n": 2**53 + 3, "m": {"x": 1}}])
    types, rows = _kept([tmp_path / "a", tmp_path / "b"], ("n", "m"))
    assert types == {"n": pa.float64(), "m": pa.struct([("x", pa.float64())])}
    assert rows["half"] == (None, 0.5, {"x": 0.5})
    for name, value in (("big", 2**53 + 1), ("alone", 2**53 + 3)):
        assert rows[name][0] == (f"schema differs: column 'n' is int64 here but double in this job's output "
                                 f"(value '{value}')"), rows[name]
    write_jsonl(tmp_path / "c" / "words.jsonl", [{"id": "w", "text": "t", "n": "n/a", "m": "none"}])
    types, rows = _kept([tmp_path / "a", tmp_path / "c"], ("n", "m"))
    assert types == {"n": pa.string(), "m": pa.string()}
    assert rows["big"] == (None, str(2**53 + 1), json.dumps({"x": 2**60 + 1}))
    assert rows["half"] == (None, "0.5", json.dumps({"x": 0.5}))
    write_jsonl(tmp_path / "d" / "flat.jsonl", [{"id": "flat", "text": "t", "n": 2**53 + 1}, {"id": "f", "text": "t",
                                                                                              "n": 1.5}])
    assert _kept([tmp_path / "d", tmp_path / "c"], ("n",))[1]["flat"] == (None, str(2**53 + 1))  # rounds to 2**53


def test_kept_json_integers_past_64_bits_in_structs_and_lists_are_not_rounded_either(tmp_path):
    """pyarrow read them as floats in their struct or list: {"x": 18446744073709551615} was written as 1.8e19."""
    rows = [{"id": f"r{i}", "text": "t", "m": {"x": 2**64 - 1 - i}, "l": [i]} for i in range(8)]
    write_jsonl(tmp_path / "a" / "s.jsonl", [*rows, {"id": "late", "text": "t", "m": {"x": 1}, "l": [2**64]}])
    types, got = _kept([tmp_path / "a"], ("m", "l"), sample_bytes=500)  # the last line is past the sample
    assert types == {"m": pa.string(), "l": pa.list_(pa.int64())}
    assert got["r1"] == (None, json.dumps({"x": 2**64 - 2}), [1])
    assert got["late"][1:] == ('{"x": 1}', None) and got["late"][0].startswith(f"l holds an integer past 64 bits ({2**64})")


def test_a_struct_value_with_a_field_the_kept_type_has_not_costs_its_row(tmp_path):
    """pyarrow's cast of a struct drops the fields the type has not, even a safe one: a kept ``meta`` that gained a
    key past the sampled part of a JSON lines file, or in a Parquet file added before a resume, was written
    without it ({'src': 'web', 'user': 'u1'} as {'src': 'web'}), and nothing was quarantined."""
    head = [{"id": f"r{i}", "text": "t", "meta": {"src": "web"}, "hits": [{"n": i}]} for i in range(8)]
    write_jsonl(tmp_path / "a" / "s.jsonl", [*head, {"id": "user", "text": "t", "meta": {"src": "web", "user": "u1"}},
                                             {"id": "deep", "text": "t", "meta": {"src": "app"}, "hits": [{"n": 1, "m": 2}]},
                                             {"id": "none", "text": "t", "meta": {"src": "web", "user": None}}])
    types, rows = _kept([tmp_path / "a"], ("meta", "hits"), sample_bytes=500)  # the last three lines are past it
    assert types == {"meta": pa.struct([("src", pa.string())]), "hits": pa.list_(pa.struct([("n", pa.int64())]))}
    assert rows["r1"] == (None, {"src": "web"}, [{"n": 1}])
    assert rows["none"] == (None, {"src": "web"}, None)  # a field that is null in the value loses nothing
    assert rows["user"][1:] == (None, None) and "'user'" in rows["user"][0]
    assert rows["deep"][1:] == ({"src": "app"}, None) and "'m'" in rows["deep"][0]
    assert [k for k, (e, *_) in rows.items() if e] == ["user", "deep"]
    write_parquet(tmp_path / "b" / "day1.parquet", [{"id": "d1", "text": "t", "meta": {"src": "web"}}])
    types, _ = _kept([tmp_path / "b" / "day1.parquet"], ("meta",))  # the job's first run: its types are kept
    write_parquet(tmp_path / "b" / "day2.parquet", [{"id": "u1", "text": "t", "meta": {"src": "web", "user": "u1"}},
                                                    {"id": "u0", "text": "t", "meta": {"src": "app", "user": None}}])
    _, rows = _kept([tmp_path / "b" / "day2.parquet"], ("meta",), types=types)  # the resumed run
    assert rows["u0"] == (None, {"src": "app"})
    assert rows["u1"][1] is None and "'user'" in rows["u1"][0]


def test_a_kept_column_in_no_input_file_is_said(tmp_path, caplog):
    """A kept column that no file holds (a typo, or a Hive folder's ``date=`` taken for a column) gave every row a
    null without a word."""
    write_jsonl(tmp_path / "date=2024-01-01" / "a.jsonl", [{"id": "1", "text": "x", "topic": "t"}])
    shards = list_shards([str(tmp_path)])
    with caplog.at_level("WARNING", logger="pipelines.io.reader"):
        types = reference_types(shards, Columns(text="text", id="id", keep=("topic", "date", "Topic")))
    assert types == {"topic": pa.string(), "date": pa.string(), "Topic": pa.string()}
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith("kept column(s) 'date', 'Topic': in none of the 1 input file(s) sampled")


def test_a_first_json_line_longer_than_the_sample_still_gives_the_kept_columns_types(tmp_path, caplog):
    """The types sample was the first 256 KiB of a file, cut at its last newline: a first record longer than that
    left nothing, so kept columns that every row holds were said to be in no file, and a number column was text."""
    big = {"id": "big0", "text": "paris " * 200_000, "lab": "L0", "n": 7}
    write_jsonl(tmp_path / "a.jsonl", [big, *({"id": f"r{i}", "text": "t", "lab": f"L{i}", "n": i} for i in range(4))])
    with caplog.at_level("WARNING", logger="pipelines.io.reader"):
        types, rows = _kept([tmp_path / "a.jsonl"], ("lab", "n"))
    assert [r.getMessage() for r in caplog.records] == []
    assert types == {"lab": pa.string(), "n": pa.int64()}
    assert rows["big0"] == (None, "L0", 7) and rows["r3"] == (None, "L3", 3)


def test_an_output_that_recorded_a_timestamp_for_kept_json_text_resumes_as_before(tmp_path):
    """Before kept JSON strings stayed text, pyarrow made ``"2024-01-02T10:00:00Z"`` a ``timestamp[s]`` (in UTC), and
    a job's first run recorded that type; read as text now, every such value of a resumed run was a row error."""
    write_jsonl(tmp_path / "a.jsonl", [{"id": "z", "text": "t", "at": "2024-01-02T10:00:00Z"},
                                       {"id": "o", "text": "t", "at": "2024-01-02T10:00:00+02:00"},
                                       {"id": "n", "text": "t", "at": "2024-01-02"},
                                       {"id": "x", "text": "t", "at": "soon"}])
    _, rows = _kept([tmp_path / "a.jsonl"], ("at",), types={"at": pa.timestamp("s")})
    assert {i: v for i, (e, v) in rows.items() if e is None} == {
        "z": datetime.datetime(2024, 1, 2, 10), "o": datetime.datetime(2024, 1, 2, 8),
        "n": datetime.datetime(2024, 1, 2)}
    assert rows["x"][0].startswith("schema differs: column 'at'")


def test_the_reader_takes_json_values_as_written_on_either_path(tmp_path):
    """An object id took pyarrow's struct on the fast path (every key seen in the file, in the order first seen:
    ``{"a": 5, "b": null}``), its text as written on the slow one; a number in a text column was said to be
    a ``WrittenFloat``."""
    lines = [{"id": {"b": 3, "a": 4}, "text": "t"}, {"id": {"a": 5}, "text": "t"}]
    write_jsonl(tmp_path / "clean.jsonl", lines)
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "{broken\n")
    for name in ("clean.jsonl", "bad.jsonl"):
        assert [i for i, _, _ in _read(tmp_path / name)][:2] == ['{"b": 3, "a": 4}', '{"a": 5}'], name
    (tmp_path / "number.jsonl").write_text('{"id": "1", "text": 1.5}\n{"id": "2", "text": "ok"}\n')
    assert _read(tmp_path / "number.jsonl")[0] == ("1", None, "text is not a string (float)")
    (tmp_path / "array.jsonl").write_text(json.dumps(lines) + "\n" + json.dumps({"id": "3", "text": "t"}) + "\n")
    [(_, _, said), last] = _read(tmp_path / "array.jsonl")  # an array on one line of JSON lines
    assert said.startswith("a JSON line must be an object, got list (line 1, an array of 2 objects: a JSON array file")
    assert last == ("3", "t", None)


def test_a_file_that_is_one_json_array_is_read_as_its_rows(tmp_path):
    """A .json file holding one JSON array of objects (pandas' ``to_json(orient="records")``, ``json.dump(rows, f)``)
    was one quarantined row on one line, or a bad row per line written with an indent: every record in it lost,
    and on one line they cost one row of the error budget. Each element is now a row, as a JSON line would be."""
    from pipelines.planning.inputs import count_rows as plan_count

    rows = [{"id": "a", "text": "first", "n": 1.10}, {"id": "b", "text": "second"}, {"id": 3, "text": "third"}]
    (tmp_path / "pandas.json").write_text(json.dumps(rows))
    (tmp_path / "indented.json").write_text("\ufeff" + json.dumps(rows, indent=2) + "\n")
    with gzip.open(tmp_path / "packed.json.gz", "wt") as handle:
        handle.write(json.dumps(rows))
    for name in ("pandas.json", "indented.json", "packed.json.gz"):
        assert _read(tmp_path / name, keep=("n",)) == [
            ("a", "first", None, 1.1), ("b", "second", None, None), ("3", "third", None, None)], name
        [shard] = list_shards([str(tmp_path / name)])
        assert (plan_count(shard).rows, plan_count(shard).count) == (3, "counted"), name
    (tmp_path / "mixed.json").write_bytes(b'[{"id": "a", "text": "caf\xe9"}, 7, {"id": "c", "text": "ok"}]')
    assert _read(tmp_path / "mixed.json") == [
        ("a", None, "text is not valid UTF-8"), (None, None, "an element of a JSON array must be an object, got int"),
        ("c", "ok", None)]

    # the kept columns' types come from its elements too (they were text, "in none of the files sampled")
    types, kept = _kept([tmp_path / "pandas.json"], ("n",))
    assert types == {"n": pa.float64()} and kept["a"] == (None, 1.1)
    big = [{"id": f"r{i}", "text": "t" * 40} for i in range(20_000)]
    (tmp_path / "big.json").write_text(json.dumps(big))  # past the count's limit: estimated from the first elements
    [shard] = list_shards([str(tmp_path / "big.json")])
    counted = plan_count(shard, count_limit=1 << 16)
    assert counted.count == "estimated" and 19_000 < counted.rows < 21_000
    (tmp_path / "arrays.jsonl").write_text("".join(json.dumps([f"id{i}", "t"]) + "\n" for i in range(20_000)))
    [shard] = list_shards([str(tmp_path / "arrays.jsonl")])  # JSON lines of arrays: lines, counted as lines
    assert (plan_count(shard).rows, plan_count(shard).count) == (20_000, "counted")
    assert plan_count(shard, count_limit=1 << 16).count == "estimated"
    [shard] = list_shards([str(tmp_path / "pandas.json")], "openai-batch")  # a run refuses it whole, its requests
    counted = plan_count(shard)
    assert (counted.rows, counted.count) == (reader_count_rows(shard)[0], "unreadable") == (3, "unreadable")


def test_json_objects_written_over_several_lines_each_are_read_as_their_rows(tmp_path):
    """``jq . data.json > data.jsonl`` (no ``-c``), or ``json.dump(row, f, indent=2)`` for each row, writes one JSON
    object over several lines. pyarrow read such a file's objects within its 1 MiB blocks: a small file was read as
    its rows, while the plan counted its lines (400 rows for 100); a larger one was read line by line, each of its
    lines a row error (``invalid JSON: Expecting property name ...``), 80,000 of them for 20,000 rows, none read.
    Each object is now a row, as the objects of one JSON array are, whatever the file's size, and so it is counted."""
    from pipelines.planning.inputs import count_rows as plan_count

    for rows in (20_000, 100):
        path = tmp_path / f"pretty{rows}.jsonl"
        path.write_text("".join(json.dumps({"id": f"r{i}", "text": f"row {i}", "n": i}, indent=2) + "\n"
                                for i in range(rows)))
        read = _read(path, keep=("n",))
        assert read == [(f"r{i}", f"row {i}", None, i) for i in range(rows)], (rows, len(read), read[:1])
        [shard] = list_shards([str(path)])
        assert (plan_count(shard).rows, plan_count(shard).count) == (rows, "counted")
    [shard] = list_shards([str(tmp_path / "pretty20000.jsonl")])
    counted = plan_count(shard, count_limit=1 << 16)  # past the count's limit: estimated from the first objects
    assert counted.count == "estimated" and 18_000 < counted.rows < 22_000, counted
    types, kept = _kept([tmp_path / "pretty100.jsonl"], ("n",))  # the kept columns' types from its first objects
    assert types == {"n": pa.int64()} and kept["r7"] == (None, 7)
    (tmp_path / "mixed.jsonl").write_text('{\n  "id": "a",\n  "text": "x"\n}\n{"id": "b", "text": "y"}\n7\n'
                                          '{"id": "c",\n "text": "z"}')
    assert _read(tmp_path / "mixed.jsonl") == [
        ("a", "x", None), ("b", "y", None), (None, None, "a JSON value of the file must be an object, got int"),
        ("c", "z", None)]
    (tmp_path / "cut.jsonl").write_text('{\n  "id": "a",\n  "text": "x"\n}\n{\n  "id": "b",\n  "te')
    [block] = list(read_shard(list_shards([str(tmp_path / "cut.jsonl")])[0], Columns(text="text", id="id")))
    assert block.column(ROW).to_pylist() == [-1] and "jq -c" in block.column(ERROR)[0].as_py()
    assert reader_count_rows(list_shards([str(tmp_path / "cut.jsonl")])[0]) == (1, False)  # the objects before


def test_objects_over_several_lines_after_json_lines_are_each_one_row_read_and_counted(tmp_path, monkeypatch):
    """``cat compact.jsonl pretty.json > all.jsonl``: JSON lines, then objects written over several lines (``jq .``
    without ``-c``). Only a file whose first object spans lines was read as objects: a small one was read as its
    rows (pyarrow takes such objects within its 1 MiB blocks) while the plan and a refused shard's count counted
    their lines (21 rows for 6); a larger one, where an object straddles a block's end, was read line by line, each
    line of each object a broken row (``invalid JSON: Expecting property name ...``): 85,000 rows of which 80,000
    quarantined, for 25,000 objects. Where a line opens an object that ends on a later line, that object is one row,
    read and counted so, wherever the plan's chunks cut it; a line cut short stays one broken row."""
    from pipelines.planning import inputs

    def pretty(i: int) -> bytes:
        return json.dumps({"id": f"p{i}", "text": f"pretty {i}"}, indent=2).encode() + b"\n"

    compact = b"".join(b'{"id": "c%d", "text": "compact %d"}\n' % (i, i) for i in range(3))
    rows = [(f"c{i}", f"compact {i}", None) for i in range(3)] + [(f"p{i}", f"pretty {i}", None) for i in range(3)]
    cases = {
        "small.jsonl": (compact + b"".join(pretty(i) for i in range(3)), rows),
        "crlf.jsonl": ((compact + b"".join(pretty(i) for i in range(3))).replace(b"\n", b"\r\n"), rows),
        "float_id.jsonl": (b'{"id": 1.5, "text": "a"}\n' + pretty(0), [("1.5", "a", None), ("p0", "pretty 0", None)]),
        "cut_line.jsonl": (b'{"id": "x", "text": "cut", \n' + compact + pretty(0),
                           [(None, None, "invalid JSON: Expecting property name enclosed in double quotes (line 1, "
                                         "column 28)"), *rows[:4]]),
        "tail.jsonl": (compact + pretty(0)[:-1] + b', {"id": "t", "text": "after"}\n' + pretty(1),
                       [*rows[:4], ("t", "after", None), ("p1", "pretty 1", None)]),
        # a line whose only } closes an inner object, before a comma or at the line's end: the object goes on
        "inner_comma.jsonl": (compact + b'{"id": "p0", "meta": {"b": 1},\n "text": "pretty 0"}\n', rows[:4]),
        "inner_end.jsonl": (compact + b'{"id": "p0", "text": "pretty 0", "meta": {"a": 1}\n}\n', rows[:4]),
        "braces_in_strings.jsonl": (compact + b'{"id": "p0", "text": "pretty 0", "m": "}", "n": {"a": 1}\n}\n'
                                    + b'{"id": "p1", "text": "pretty 1", "m": "{"}\n', [*rows[:4], rows[4]]),
    }
    read_and_counted_alike(tmp_path, cases)
    for name in ("inner_comma.jsonl", "inner_end.jsonl", "braces_in_strings.jsonl", "tail.jsonl"):  # wherever chunks cut
        [shard] = list_shards([str(tmp_path / name)])
        for size in (1, 7, 64):
            monkeypatch.setattr(inputs, "CHUNK", size)
            assert plan_count_rows(shard).rows == len(cases[name][1]), (name, size)
    monkeypatch.undo()

    path = tmp_path / "big.jsonl"  # past pyarrow's 1 MiB block, an object straddling its end
    path.write_bytes(b"".join(b'{"id": "c%d", "text": "compact %d"}\n' % (i, i) for i in range(5_000))
                     + b"".join(pretty(i) for i in range(10_000))
                     + b"".join(b'{"id": "p%d", "meta": {"b": 1},\n "text": "pretty %d"}\n' % (i, i)
                                for i in range(10_000, 20_000)))
    assert path.stat().st_size > 1 << 20
    read = _read(path)
    assert len(read) == 25_000 and not [row for row in read if row[2] is not None], (len(read), read[-1])
    [shard] = list_shards([str(path)])
    for size in (4096, 1 << 22):  # chunks that cut objects, and one chunk
        monkeypatch.setattr(inputs, "CHUNK", size)
        counted = plan_count_rows(shard)
        assert (counted.rows, counted.count) == (25_000, "counted"), (size, counted)
    assert plan_count_rows(shard, count_limit=1 << 16).count == "estimated"  # from the compact lines' density
    assert reader_count_rows(shard) == (25_000, True)


def test_dos_end_of_file_marks_around_a_carriage_return_are_left_out_at_once(tmp_path, monkeypatch):
    """``\\x1a\\r\\x1a`` at a line's end: the marks were left out one pass at a time (the one before the ``\\r\\n``,
    then on a second pass the other), and the run strips them once, while the plan strips the lines of an object
    over several lines again where its chunks cut the object (so it counted the object as one row where the run read
    each of its lines as a broken row). All are left out at once: the object is one row in both."""
    from pipelines.io.reader import without_marks
    from pipelines.planning import inputs

    assert without_marks(b'{"a": 1}\x1a\r\x1a\n') == without_marks(without_marks(b'{"a": 1}\x1a\r\x1a\n'))
    data = b'{"id": "a", "text": "x"}\n{\n  "id": "b",\x1a\r\x1a\n  "text": "y"\n}\n'
    read_and_counted_alike(tmp_path, {"marks.jsonl": (data, [("a", "x", None), ("b", "y", None)])})
    [shard] = list_shards([str(tmp_path / "marks.jsonl")])
    for size in range(1, len(data) + 1):
        monkeypatch.setattr(inputs, "CHUNK", size)
        assert plan_count_rows(shard).rows == 2, size


def test_a_file_whose_first_object_over_several_lines_outgrows_the_plans_chunk_is_counted_as_the_run_reads_it(
        tmp_path, monkeypatch):
    """The plan told a file of objects written over several lines (``jq .``) from its first chunk (4 MiB): where the
    first object went on past it, the file was counted as lines, and one that stops parsing further on, which a run
    refuses whole (an unreadable file), was counted as its rows. The plan reads on to the first object's end."""
    from pipelines.planning import inputs

    objects = [json.dumps({"id": f"r{i}", "text": f"row {i}", "tags": list(range(40))}, indent=2) for i in range(3)]
    (tmp_path / "broken.jsonl").write_text("\n".join(objects) + '\n{\n  "id": "r3",\n  "text": \n}\n')
    (tmp_path / "clean.jsonl").write_text("\n".join(objects) + "\n")
    [broken, clean] = list_shards([str(tmp_path / "broken.jsonl"), str(tmp_path / "clean.jsonl")])
    [block] = list(read_shard(broken, Columns(text="text", id="id")))
    assert block.column(ROW).to_pylist() == [-1]  # the run refuses it whole
    monkeypatch.setattr(inputs, "CHUNK", 64)  # the first object is ~500 bytes
    counted = plan_count_rows(broken)
    assert (counted.count, counted.rows) == ("unreadable", 3), counted
    assert (plan_count_rows(clean).count, plan_count_rows(clean).rows) == ("counted", 3)


def test_objects_over_several_lines_after_a_dos_end_of_file_mark_are_counted_as_read(tmp_path):
    """A DOS end-of-file mark (``\\x1a``) on a line of its own before objects written over several lines (``copy /a``
    of an empty file and a ``jq .`` export): the run read the objects, each a row, while the plan and a refused
    shard's count counted the file's lines (36 rows for 6), as only byte order marks and blank lines were skipped
    before the first object; so too a mark inside the first object (at a line's end, or a byte order mark at a
    line's start), which the run strips. The marks a run strips are skipped: 6 rows read, 6 counted."""
    objects = b"".join(json.dumps({"id": str(i), "text": f"t{i}"}, indent=2).encode() + b"\n" for i in range(6))
    rows = [(str(i), f"t{i}", None) for i in range(6)]
    heads = {"mark": b"\x1a\n", "mark_crlf": b"\x1a\r\n", "blank_then_marks": b"\n\x1a\x1a\n\n",
             "bom_mark": codecs.BOM_UTF8 + b"\x1a\n"}
    cases = {f"{name}.jsonl": (head + objects, rows) for name, head in heads.items()}
    cases["inside.jsonl"] = (b"\x0c\n" + objects.replace(b'"id": "0",\n', b'"id": "0",\x1a\n', 1), rows)
    cases["bom_inside.jsonl"] = (b"\x1a\n" + objects.replace(b'\n  "text": "t0"', b'\n' + codecs.BOM_UTF8 + b'  "text": "t0"'),
                                 rows)
    read_and_counted_alike(tmp_path, cases)


def test_a_json_lines_file_whose_first_line_nests_deeply_is_read_as_its_lines(tmp_path):
    """The check for objects written over several lines parses a file's first line with Python's json, which gives
    up past about 1,000 levels of nesting (RecursionError, no ValueError): a JSON lines file whose first row held
    such a value (a parse tree, a deeply nested thread) was refused whole, its every row quarantined or the job
    failed, where it had been read line by line as JSON lines."""
    path = tmp_path / "deep.jsonl"
    deep = '{"id": "0", "text": "deep", "meta": ' + "[" * 3000 + "]" * 3000 + "}"
    path.write_text(deep + "\n" + "".join(json.dumps({"id": str(i), "text": f"row {i}"}) + "\n"
                                                   for i in range(1, 5)))
    assert _read(path) == [("0", "deep", None), *((str(i), f"row {i}", None) for i in range(1, 5))]
    [shard] = list_shards([str(path)])
    counted = plan_count_rows(shard)
    assert reader_count_rows(shard) == (5, True) and (counted.rows, counted.count) == (5, "counted"), counted


def test_parquet_text_stored_as_bytes_is_text(tmp_path):
    """Hive and Impala write strings as bytes without Parquet's UTF8 mark: every row was quarantined as "text is
    not a string (binary)"."""
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": pa.array([b"caf\xc3\xa9", None, b"\xff"], pa.binary())}),
                   tmp_path / "hive.parquet")
    assert _read(tmp_path / "hive.parquet") == [("a", "café", None), ("b", None, None),  # null: the predictor says
                                                ("c", None, "text is bytes that are not UTF-8 text (binary)")]


def test_parquet_view_types_are_read_as_their_plain_types(tmp_path):
    """Arrow's view types (``string_view``, ``binary_view``; DataFusion and pyarrow write them in a Parquet file's
    Arrow schema) have no ``take`` in pyarrow 26: a kept column, or a list of them, that every file held as a view
    ended the job in a traceback (``Function 'array_take' has no kernel matching input types (string_view,
    int64)``), nothing committed; text stored as ``binary_view`` was quarantined as "text is not a string", where
    text stored as ``binary`` is text."""
    pq.write_table(pa.table({
        "id": pa.array([b"a", b"b", b"c"], pa.binary_view()),
        "text": pa.array([b"caf\xc3\xa9 au lait", b"\xff", b"tea"], pa.binary_view()),
        "src": pa.array(["web", None, "app"], pa.string_view()),
        "raw": pa.array([b"x", b"y", None], pa.binary_view()),
        "tags": pa.array([["p", "q"], [], None], pa.list_(pa.string_view())),
    }), tmp_path / "views.parquet")
    [shard] = list_shards([str(tmp_path / "views.parquet")])
    columns = Columns(text="text", id="id", keep=("src", "raw", "tags"))
    types = reference_types([shard], columns)
    assert types == {"src": pa.string(), "raw": pa.binary(), "tags": pa.list_(pa.field("element", pa.string()))}
    typed = dataclasses.replace(columns, keep_types=tuple(types.items()))
    rows = sorted((r for block in read_shard(shard, typed) for r in block.to_pylist()), key=lambda r: r[ROW])
    assert [(r["id"], r["text"], r[ERROR], r["src"], r["raw"], r["tags"]) for r in rows] == [
        ("a", "café au lait", None, "web", b"x", ["p", "q"]),
        ("b", None, "text is bytes that are not UTF-8 text (binary_view)", None, b"y", []),
        ("c", "tea", None, "app", None, None),
    ]


def test_bytes_that_are_no_utf8_cost_their_row_in_every_column_the_job_reads(tmp_path):
    """Only the text column was checked: an id, a kept column (a label) or a key that is no UTF-8 crashed the actor
    (a traceback, nothing committed, again on every retry) or went into the output, which pandas and DuckDB then
    refused; a Parquet text column was not checked at all; a JSON key that is no UTF-8 made the whole file
    unreadable."""
    (tmp_path / "ids.jsonl").write_bytes(b'{"id": "a\xff", "text": "x"}\n{"id": "b", "text": "y"}\n')
    assert _read(tmp_path / "ids.jsonl") == [(None, None, "not valid UTF-8 (line 1, byte 9)"), ("b", "y", None)]
    (tmp_path / "keys.jsonl").write_bytes(b'{"id": "a", "text": "x", "\xff": 1}\n{"id": "b", "text": "y"}\n')
    assert _read(tmp_path / "keys.jsonl") == [(None, None, "not valid UTF-8 (line 1, byte 26)"), ("b", "y", None)]
    (tmp_path / "kept.jsonl").write_bytes(b'{"id": "a", "text": "x", "src": "caf\xe9"}\n{"id": "b", "text": "y"}\n')
    assert _read(tmp_path / "kept.jsonl", keep=("src",)) == [
        (None, None, "not valid UTF-8 (line 1, byte 36)", None), ("b", "y", None, None)]
    pq.write_table(pa.table({
        "id": unchecked_strings([b"a", b"b\xfe", b"c", b"d"]),
        "text": unchecked_strings([b"fine", b"words", b"caf\xe9", b"more"]),
        "src": unchecked_strings([b"web", b"web", b"web", b"\xffweb"]),
        "tags": pa.array([["x"], ["y"], ["z"], [b"\xfe".decode("latin-1")]]),
    }), tmp_path / "unchecked.parquet")
    table = pq.read_table(tmp_path / "unchecked.parquet")
    table = table.set_column(3, "tags", pa.ListArray.from_arrays(  # a list of text that holds such bytes
        pa.array([0, 1, 2, 3, 4], pa.int32()), unchecked_strings([b"x", b"y", b"z", b"\xfe"])))
    pq.write_table(table, tmp_path / "unchecked.parquet")
    assert _read(tmp_path / "unchecked.parquet", keep=("src", "tags")) == [
        ("a", "fine", None, "web", ["x"]),
        (None, "words", "id is not valid UTF-8 (byte 1)", "web", ["y"]),
        ("c", None, "text is not valid UTF-8 (byte 3)", "web", ["z"]),
        ("d", "more", "src is not valid UTF-8 (byte 0)", None, None),  # the first reason; both values left out
    ]
    for name in ("ids.jsonl", "keys.jsonl", "unchecked.parquet"):
        [shard] = list_shards([str(tmp_path / name)])
        for block in read_shard(shard, Columns(text="text", id="id", keep=("src", "tags"))):
            block.validate(full=True)  # what goes on to the model and the output is UTF-8 throughout


def test_a_file_name_that_is_no_utf8_is_one_line(tmp_path):
    """A Latin-1 name (as old zip files leave) gave a traceback from pyarrow's listing."""
    write_jsonl(tmp_path / "in" / "good.jsonl", [{"id": "y", "text": "hello"}])
    with open(bytes(tmp_path / "in") + b"/caf\xe9.jsonl", "wb") as handle:
        handle.write(b'{"id": "x", "text": "hello"}\n')
    with pytest.raises(PipelineError, match=r"whose name is not UTF-8 text .*caf\\xe9\.jsonl.*; rename it"):
        list_shards([str(tmp_path / "in")])


def test_input_files_that_are_not_read_are_said_not_dropped_without_a_word(tmp_path, caplog):
    """A folder's files whose names are no Parquet or JSON lines file's (``.jsonl.zst``, ``.GZ``, Hive's files without
    an extension) were left out in silence beside the ones read: their rows were in no output, and nothing said so."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "1", "text": "x"}])
    for name in ("b.jsonl.zst", "000000_0", "_SUCCESS", ".a.jsonl.crc"):
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "in" / "c.jsonl.GZ").write_bytes(gzip.compress(b'{"id": "2", "text": "y"}\n'))  # read: gzip
    with caplog.at_level("WARNING", logger="pipelines.io.shards"):
        shards = list_shards([str(tmp_path / "in")])
    assert [(s.name, s.compressed) for s in shards] == [("a.jsonl", False), ("c.jsonl.GZ", True)]
    [said] = [r.getMessage() for r in caplog.records]
    assert "holds 2 file(s) that are not read" in said and "000000_0, b.jsonl.zst" in said
    assert "_SUCCESS" not in said and ".crc" not in said  # a writer's bookkeeping is no input


def test_the_reader_tells_a_file_it_could_not_fetch_from_one_whose_bytes_do_not_parse(tmp_path):
    """Only the second may be quarantined: a gzip file cut short is read whole and fails to decompress."""
    whole = gzip.compress(b"".join(json.dumps({"id": str(i), "text": "t"}).encode() + b"\n" for i in range(50)))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "gone.jsonl").write_text('{"id": "1", "text": "t"}\n')
    shards = {Path(s.path).name: s for s in list_shards([str(tmp_path)])}
    (tmp_path / "gone.jsonl").unlink()
    columns = Columns(text="text", id="id")
    reasons = {name: [b.column(ERROR)[0].as_py() for b in read_shard(shard, columns)] for name, shard in shards.items()}
    assert [r.split(":")[0] for r in reasons["gone.jsonl"]] == [f"{NOT_FETCHED} jsonl file"]
    assert [r.split(":")[0] for r in reasons["cut.jsonl.gz"]] == ["unreadable jsonl file"]


def test_a_git_lfs_or_annex_pointer_in_place_of_a_file_is_a_file_not_fetched_failing_the_run(tmp_path):
    """A clone without `git lfs pull` (or a git-annex one without `git annex get`, unlocked) holds small pointer files
    where the data should be: each read as its bytes, a JSON lines one made 3 quarantined rows of `invalid JSON`, a
    Parquet one an unreadable file of unknown rows; the real rows were in no output, under the error budget without a
    word of why. Each is a file not fetched now (the run fails on it, as on one it could not read), saying how to
    fetch it, in the run and in the plan."""
    lfs = (b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345678\n")
    (tmp_path / "train.jsonl").write_bytes(lfs)
    (tmp_path / "train.parquet").write_bytes(lfs)
    (tmp_path / "test.jsonl.gz").write_bytes(lfs)
    (tmp_path / "annex.jsonl").write_bytes(b"/annex/objects/SHA256E-s4096--0f343b0931126a20f133d67c2b018a3b.jsonl\n")
    write_jsonl(tmp_path / "ok.jsonl", [{"id": "1", "text": "t"}])
    shards = {Path(s.path).name: s for s in list_shards([str(tmp_path)])}
    columns = Columns(text="text", id="id")
    for name, how in (("train.jsonl", "git lfs pull"), ("train.parquet", "git lfs pull"),
                      ("test.jsonl.gz", "git lfs pull"), ("annex.jsonl", "git annex get")):
        [block] = list(read_shard(shards[name], columns))
        assert block.column(ROW).to_pylist() == [-1], name
        reason = block.column(ERROR)[0].as_py()
        assert reason.startswith(f"{NOT_FETCHED} ") and "pointer" in reason and how in reason, reason
        assert reader_count_rows(shards[name]) == (None, False), name
        counted = plan_count_rows(shards[name])
        assert counted.error is not None and counted.error.startswith(f"{NOT_FETCHED} "), counted
        assert how in counted.error and "rows unknown" in counted.error, counted
    assert "a file of 12,345,678 bytes" in plan_count_rows(shards["train.jsonl"]).error
    [block] = list(read_shard(shards["ok.jsonl"], columns))
    assert block.column("id").to_pylist() == ["1"]


def _compressed(codec: str, data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()


def test_a_json_lines_file_compressed_other_than_gzip_is_refused_whole_with_how_to_read_it(tmp_path):
    """``.jsonl.zst`` or ``.bz2`` files, or gzip ones named ``.gzip``, read with ``input.format: jsonl`` (what the
    message for a folder of them said to set): the compressed bytes were read as text, 2,000 rows as 4 (zstd), 14
    (bz2) or 2 (gzip) rows of ``not valid UTF-8 (byte 1)``, counted so by the plan and quarantined one by one."""
    import lzma

    text = b"".join(json.dumps({"id": str(i), "text": f"row {i}"}).encode() + b"\n" for i in range(2000))
    files = {"a.jsonl.zst": (_compressed("zstd", text), "zstd-compressed", "zstd -dc FILE > NAME.jsonl"),
             "b.jsonl.bz2": (_compressed("bz2", text), "bzip2-compressed", "bzip2 -dc FILE > NAME.jsonl"),
             "c.jsonl.xz": (lzma.compress(text), "xz-compressed", "xz -dc FILE > NAME.jsonl"),
             "d.jsonl.gzip": (gzip.compress(text), "gzip-compressed", "rename it to end in .gz")}
    for name, (data, _, _) in files.items():
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    shards = {s.name: s for s in list_shards([str(tmp_path / "in")], "jsonl")}
    assert sorted(shards) == sorted(files)
    for name, (_, kind, fix) in files.items():
        [block] = list(read_shard(shards[name], Columns(text="text", id="id")))
        assert block.column(ROW).to_pylist() == [-1], (name, block.num_rows)  # the file's one record
        reason = block.column(ERROR)[0].as_py()
        assert reason.startswith(f"unreadable jsonl file: the file is {kind}") and fix in reason, reason
        assert reader_count_rows(shards[name]) == (2000, True)  # the rows its one record stands for
        counted = plan_count_rows(shards[name])
        assert (counted.count, counted.rows, counted.records) == ("unreadable", 2000, 1), counted
        assert counted.error is not None and kind in counted.error


def test_plain_json_lines_under_a_gz_name_is_refused_whole_with_how_to_read_it(tmp_path):
    """A ``.jsonl.gz`` whose bytes are plain JSON lines (a browser decompressed the download and kept the name): it
    was ``unreadable jsonl file: Not a gzipped file (b'{"')``, rows unknown, where the reverse (gzip bytes without
    the ``.gz``) says to rename it and counts its rows."""
    text = b"".join(json.dumps({"id": str(i), "text": f"row {i}"}).encode() + b"\n" for i in range(40))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "export.jsonl.gz").write_bytes(text)
    [shard] = list_shards([str(tmp_path / "in")])
    [block] = list(read_shard(shard, Columns(text="text", id="id")))
    assert block.column(ROW).to_pylist() == [-1]
    reason = block.column(ERROR)[0].as_py()
    assert reason.startswith("unreadable jsonl file: the file is named .gz but is not gzip-compressed") , reason
    assert "export.jsonl" in reason or "NAME.jsonl" in reason
    assert reader_count_rows(shard) == (40, True)
    counted = plan_count_rows(shard)
    assert (counted.count, counted.rows, counted.records) == ("unreadable", 40, 1), counted


def test_a_parquet_file_under_a_json_lines_name_is_refused_whole_with_how_to_read_it(tmp_path):
    """A Parquet file named ``.jsonl`` (an export step that kept the old name, ``df.to_parquet("part.jsonl")``): its
    bytes were read as text, 300 rows as 17 rows of ``not valid UTF-8 (line 1, byte 7)`` and such, counted so by the
    plan and quarantined one by one, the rows themselves unread. It is one unreadable record now, whose reason says
    how to name it, standing for the rows of its footer."""
    rows = [{"id": str(i), "text": f"row {i} " + "word " * (i % 13)} for i in range(300)]
    write_parquet(tmp_path / "p.parquet", rows)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.jsonl").write_bytes((tmp_path / "p.parquet").read_bytes())
    (tmp_path / "in" / "part2.jsonl.gz").write_bytes(gzip.compress((tmp_path / "p.parquet").read_bytes()))
    for shard in list_shards([str(tmp_path / "in")]):
        [block] = list(read_shard(shard, Columns(text="text", id="id")))
        assert block.column(ROW).to_pylist() == [-1], (shard.name, block.num_rows)
        reason = block.column(ERROR)[0].as_py()
        assert reason.startswith("unreadable jsonl file: the file is Parquet (its bytes start with PAR1), not JSON "
                                 "lines: give it a .parquet name"), reason
        assert reader_count_rows(shard) == (300, True)
        counted = plan_count_rows(shard)
        assert (counted.count, counted.rows, counted.records) == ("unreadable", 300, 1), counted


def test_json_lines_under_a_parquet_name_are_refused_whole_with_how_to_read_them(tmp_path):
    """JSON lines saved as ``part.parquet`` (an export step that kept the old name): one unreadable record whose reason
    was pyarrow's ``Parquet magic bytes not found in footer``, ``rows unknown``. It says the file is JSON and how to
    name it now, in the run and the plan, and stands for its lines' rows."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.parquet").write_text("".join(json.dumps({"id": str(i), "text": "t"}) + "\n"
                                                          for i in range(40)))
    [shard] = list_shards([str(tmp_path / "in")])
    [block] = list(read_shard(shard, Columns(text="text", id="id")))
    said = ("unreadable parquet file: the file is JSON (its bytes start with { or [), not Parquet: give it a .jsonl "
            "name (NAME.jsonl) to be read as JSON lines")
    assert block.column(ERROR).to_pylist() == [said]
    assert reader_count_rows(shard) == (40, True)
    counted = plan_count_rows(shard)
    assert (counted.count, counted.rows, counted.error) == ("unreadable", 40, f"{said}; 40 rows")


def test_rows_wrapped_in_one_json_object_are_refused_whole_with_how_to_write_them_as_lines(tmp_path):
    """An API's or a dataset viewer's export, ``{"data": [{"id": …, "text": …}, …], "total": 50}``, on one line or
    indented: it was read as one row of ``missing column 'text'``, its 50 rows unread, one quarantined row under the
    error budget beside other files. It is refused whole now, saying where its rows are and how to write them one a
    line, and a failed run counts its 50 rows; a file of one row that holds a list of objects is read as that row."""
    rows = [{"id": str(i), "text": f"row {i}"} for i in range(50)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "export.json").write_text(json.dumps({"data": rows, "total": 50}))
    (tmp_path / "in" / "pretty.json").write_text(json.dumps({"data": rows, "total": 50}, indent=2))
    for shard in list_shards([str(tmp_path / "in")]):
        [block] = list(read_shard(shard, Columns(text="text", id="id")))
        assert block.column(ROW).to_pylist() == [-1], shard.name
        assert block.column(ERROR)[0].as_py() == (
            'unreadable jsonl file: the file is one JSON object holding 50 rows as a list under "data", not JSON '
            "lines: `jq -c '.[\"data\"][]' FILE > NAME.jsonl` writes them one a line")
        assert reader_count_rows(shard) == (50, True)
    one = {"id": "a", "text": "a row", "entities": [{"start": 0, "end": 1}]}  # one real row with a list of objects
    (tmp_path / "one.jsonl").write_text(json.dumps(one) + "\n")
    assert _read(tmp_path / "one.jsonl") == [("a", "a row", None)]


def test_a_json_array_file_cut_short_is_refused_whole_not_read_as_lines(tmp_path):
    """`json.dump(rows, f)` cut short (a download that stopped): the file is one JSON array that does not parse, so it
    was read as JSON lines, its one line one quarantined row (`invalid JSON: …`) for 200 rows, and written with indent
    each of its lines a row of its own; under the error budget beside other files the run succeeded without those
    rows. It is refused whole now, saying where it stops parsing, standing for the elements before the cut (a lower
    bound); JSON lines whose lines are arrays are still read as lines."""
    rows = [{"id": str(i), "text": f"row {i} " + "word " * (i % 7)} for i in range(200)]
    (tmp_path / "in").mkdir()
    flat = json.dumps(rows)
    (tmp_path / "in" / "cut.json").write_text(flat[: len(flat) * 2 // 3])  # cut inside an element
    pretty = json.dumps(rows, indent=2)
    (tmp_path / "in" / "cut_pretty.json").write_text(pretty[: pretty.index('"row 4')])
    whole = {s.name: s for s in list_shards([str(tmp_path / "in")])}
    cut = flat[: len(flat) * 2 // 3]
    for name, before in (("cut.json", len(json.loads(cut[: cut.rindex("}, {") + 1] + "]"))), ("cut_pretty.json", 4)):
        [block] = list(read_shard(whole[name], Columns(text="text", id="id")))
        assert block.column(ROW).to_pylist() == [-1], (name, block.num_rows)  # the file's one record
        reason = block.column(ERROR)[0].as_py()
        assert reason.startswith("unreadable jsonl file: a JSON array that stops parsing at line "), reason
        assert reader_count_rows(whole[name]) == (before, False), name  # the elements before the cut, at least
        counted = plan_count_rows(whole[name])  # the plan tells it as the run does
        assert (counted.count, counted.rows, counted.records) == ("unreadable", before, 1), counted
    more = tmp_path / "more.json"  # a whole array and more after it (two dumps appended to one file)
    more.write_text(json.dumps(rows[:3], indent=2) + "\n" + json.dumps(rows[3:5], indent=2) + "\n")
    [shard] = list_shards([str(more)])
    [block] = list(read_shard(shard, Columns(text="text", id="id")))
    assert block.column(ROW).to_pylist() == [-1], block.num_rows
    assert block.column(ERROR)[0].as_py().startswith(
        f"unreadable jsonl file: a JSON array followed by more at line {json.dumps(rows[:3], indent=2).count(chr(10)) + 2}; ")
    # It stands for the elements before what follows it, the whole first array's (it counted 0: no row anywhere)
    for after in ("\n" + json.dumps(rows[3:5], indent=2) + "\n", "\n]\n", "\x00" * 64, "\n" + json.dumps(rows[3]) + "\n",
                  "\n// end\n", json.dumps(rows[3:5])):
        more.write_text(json.dumps(rows[:3], indent=2) + after)
        [shard] = list_shards([str(more)])
        assert reader_count_rows(shard) == (3, False), repr(after)
        counted = plan_count_rows(shard)
        assert (counted.count, counted.rows, counted.records) == ("unreadable", 3, 1), (repr(after), counted)
    lines = tmp_path / "arrays.jsonl"  # JSON lines of arrays: each line a row (refused as no object), as before
    lines.write_text("[1, 2]\n" + json.dumps({"id": "a", "text": "a row"}) + "\n")
    assert [r[0] for r in _read(lines)] == [None, "a"]
    lines.write_text("[2024-06-01 export] start\n" + json.dumps({"id": "a", "text": "a row"}) + "\n")  # broken line 1
    assert [r[0] for r in _read(lines)] == [None, "a"]  # costs its row alone, the file is read


def test_rows_wrapped_in_one_object_beside_another_list_or_in_pandas_columns_are_refused_whole(tmp_path):
    """`{"data": [...rows], "errors": [{...}]}` (an API's export with a second list of objects) and pandas' default
    `DataFrame.to_json()` (`{"id": {"0": …}, "text": {"0": …}}`, a column per key, its values keyed by row number):
    each was read as one quarantined row (`missing column 'text'`, `text is not a string (dict)`), its rows unread;
    under the error budget the run succeeded without them. Refused whole now, saying how to write them as lines, and
    standing for their rows."""
    rows = [{"id": f"W{i}", "text": f"row {i}"} for i in range(50)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wrapped.json").write_text(json.dumps({"data": rows, "errors": [{"id": "W50", "message": "x"}]}))
    columns = {"id": {str(i): f"P{i}" for i in range(40)}, "text": {str(i): f"text {i}" for i in range(40)}}
    (tmp_path / "in" / "pandas.json").write_text(json.dumps(columns))
    whole = {s.name: s for s in list_shards([str(tmp_path / "in")])}
    [block] = list(read_shard(whole["wrapped.json"], Columns(text="text", id="id")))
    assert block.column(ROW).to_pylist() == [-1]
    assert block.column(ERROR)[0].as_py().startswith(
        'unreadable jsonl file: the file is one JSON object holding 50 rows as a list under "data"')
    assert reader_count_rows(whole["wrapped.json"]) == (50, True)
    [block] = list(read_shard(whole["pandas.json"], Columns(text="text", id="id")))
    assert block.column(ROW).to_pylist() == [-1]
    reason = block.column(ERROR)[0].as_py()
    assert reason.startswith("unreadable jsonl file: the file is one JSON object holding 40 rows as columns"), reason
    assert 'orient="records", lines=True' in reason, reason
    assert reader_count_rows(whole["pandas.json"]) == (40, True)


def test_rows_wrapped_beside_a_longer_list_or_as_columns_are_counted_as_the_run_reads_them(tmp_path):
    """A file of rows under `data` beside a longer list of `errors` is refused whole by a run as the 3 rows under
    `data` (the list whose objects hold the text column); its record and the plan counted the longest list (10). The
    plan counted pandas' column layout, and rows wrapped in one object, as 1 row a run reads; a run refuses them."""
    (tmp_path / "in").mkdir()
    wrapped = {"data": [{"id": f"W{i}", "text": f"row {i}"} for i in range(3)],
               "errors": [{"id": f"E{i}", "message": "x"} for i in range(10)]}
    (tmp_path / "in" / "wrapped.json").write_text(json.dumps(wrapped))
    columns = {"id": {str(i): f"P{i}" for i in range(40)}, "text": {str(i): f"text {i}" for i in range(40)}}
    (tmp_path / "in" / "pandas.json").write_text(json.dumps(columns))
    whole = {s.name: s for s in list_shards([str(tmp_path / "in")])}
    [block] = list(read_shard(whole["wrapped.json"], Columns(text="text", id="id")))
    assert "holding 3 rows as a list under \"data\"" in block.column(ERROR)[0].as_py()
    assert reader_count_rows(whole["wrapped.json"], "text") == (3, True)
    for name, rows, said in (("wrapped.json", 3, 'as a list under "data"'), ("pandas.json", 40, "as columns")):
        counted = plan_count_rows(whole[name], text="text")  # the plan tells it as the run does
        assert (counted.count, counted.rows, counted.records) == ("unreadable", rows, 1), counted
        assert said in (counted.error or ""), counted.error
    (tmp_path / "in" / "one.json").write_text(json.dumps({"id": "a", "text": "one row"}))  # one row: still a row
    counted = plan_count_rows(list_shards([str(tmp_path / "in" / "one.json")])[0], text="text")
    assert (counted.count, counted.rows) == ("counted", 1), counted


def test_rows_in_one_object_as_splits_or_as_one_pandas_column_are_refused_whole_standing_for_them(tmp_path):
    """A dataset exported with its splits in one object (`{"train": [...], "test": [...]}`, each list's objects holding
    the text column), and pandas' column layout of a frame of the text column alone (`{"text": {"0": …}}`): each was
    one quarantined row (`missing column 'text'`, `text is not a string (dict)`) standing for all of them; under the
    error budget beside other files the run succeeded without them. Refused whole now, standing for their rows."""
    (tmp_path / "in").mkdir()
    splits = {"train": [{"id": f"T{i}", "text": f"train {i}"} for i in range(7)],
              "test": [{"id": f"S{i}", "text": f"test {i}"} for i in range(3)]}
    (tmp_path / "in" / "splits.json").write_text(json.dumps(splits))
    (tmp_path / "in" / "alone.json").write_text(json.dumps({"text": {str(i): f"text {i}" for i in range(12)}}))
    whole = {s.name: s for s in list_shards([str(tmp_path / "in")])}
    for name, rows, said in (("splits.json", 10, 'as lists under "train" (7) and "test" (3)'),
                             ("alone.json", 12, "12 rows as columns")):
        [block] = list(read_shard(whole[name], Columns(text="text", id="id")))
        assert block.column(ROW).to_pylist() == [-1], (name, block.column(ERROR).to_pylist())
        assert said in block.column(ERROR)[0].as_py(), block.column(ERROR)[0].as_py()
        assert reader_count_rows(whole[name], "text") == (rows, True)
        counted = plan_count_rows(whole[name], text="text")
        assert (counted.count, counted.rows, counted.records) == ("unreadable", rows, 1), counted
    assert "jq -c '.[\"train\"][], .[\"test\"][]'" in list(read_shard(whole["splits.json"], Columns(
        text="text", id="id")))[0].column(ERROR)[0].as_py()
    (tmp_path / "one.json").write_text(json.dumps({"text": {"a": "an object, not a column"}}))  # one row: a row
    [block] = list(read_shard(list_shards([str(tmp_path / "one.json")])[0], Columns(text="text", id="id")))
    assert block.column(ROW).to_pylist() == [0], block.column(ERROR).to_pylist()


def test_a_folder_of_files_compressed_other_than_gzip_says_so_not_to_set_the_format(tmp_path):
    """A folder of ``.jsonl.zst`` files (or ``.bz2``, ``.xz``) was refused with ``set input.format for files without
    those extensions``: set, the format reads them (each refused whole, as compressed, by the reader), which was
    never the fix; the message says what they are and how to make them readable."""
    for name in ("a.jsonl.zst", "b.jsonl.zst", "c.jsonl.bz2"):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    with pytest.raises(PipelineError) as caught:
        list_shards([str(tmp_path / "in")])
    said = str(caught.value)
    assert "3 file(s) compressed as bzip2 or zstd (a.jsonl.zst, b.jsonl.zst, c.jsonl.bz2)" in said, said
    assert "decompress them" in said and "input.format" not in said, said


def test_a_landing_folder_of_files_that_are_not_read_is_said_at_each_tick_not_taken_for_no_input(tmp_path, caplog):
    """A scheduled tick takes a folder with no file in it yet for no input; one that holds only files it does not
    read (CSV exports, .jsonl.zst) was taken so too, without a word, night after night: their rows were never
    scored. The tick still scores nothing, and says which files are not read and why."""
    (tmp_path / "in").mkdir()
    for name in ("a.csv", "b.jsonl.zst"):
        (tmp_path / "in" / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="pipelines.io.shards"):
        assert list_shards([str(tmp_path / "in")], empty_is_no_input=True) == []
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "a.csv" in said and "b.jsonl.zst" in said and "not read" in said, said
    assert "zstd" in said, said
    caplog.clear()
    (tmp_path / "in" / "a.csv").unlink()
    (tmp_path / "in" / "b.jsonl.zst").unlink()
    with caplog.at_level(logging.WARNING, logger="pipelines.io.shards"):
        assert list_shards([str(tmp_path / "in")], empty_is_no_input=True) == []  # an empty folder: no input yet
    assert not caplog.records


def test_a_failed_run_names_both_a_file_it_could_not_fetch_and_one_that_does_not_parse():
    said = unreadable_violation([
        Unreadable(uri="data/a.jsonl", reason=f"{NOT_FETCHED} jsonl file: OSError: reset by peer"),
        Unreadable(uri="data/b.parquet", reason="unreadable parquet file: bad footer", rows=3, exact=True),
    ])
    assert "1 input file(s) could not be fetched: data/a.jsonl" in said and "the next run reads them" in said
    assert "1 input file(s) could not be read: data/b.parquet (unreadable parquet file: bad footer; 3 rows)" in said
    cut = unreadable_violation([Unreadable(uri="c.jsonl.gz", reason="unreadable jsonl file: cut", rows=68, exact=False)])
    assert cut is not None and "(unreadable jsonl file: cut; 68 rows before the damage)" in cut  # a lower bound


def test_a_resubmission_from_another_directory_resumes_without_duplicates(ray_session, tiny_models, tmp_path):
    """`pipelines submit` runs the job in a new working directory each time: same shards, new paths and times."""
    ids = many_shards(tmp_path / "first" / "data", shards=4)
    (tmp_path / "first" / "data" / "empty.jsonl").write_text("\n")  # no rows, so no row reports its digest
    corrupt_parquet(tmp_path / "first" / "data" / "cut.parquet", 20)  # nor does a file that can't be read
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "first" / "data"),
                   errors={"unreadable_files": "quarantine", "max_rate": 1.0})
    run_job(spec, shards=None)
    (tmp_path / "out" / "_SUCCESS").unlink()  # as if the job had been stopped before its end
    moved = tmp_path / "second" / "data"
    moved.mkdir(parents=True)
    for path in sorted((tmp_path / "first" / "data").iterdir()):
        shutil.copyfile(path, moved / path.name)  # new paths, new modification times, same bytes
    again = run_job(spec.model_copy(update={"input": spec.input.model_copy(update={"paths": [str(moved)]})}))
    assert again.shards_this_run == 0
    got = output_ids(tmp_path / "out")
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))


def test_a_model_saved_again_in_its_folder_is_not_resumed_into_the_output_the_earlier_files_started(
    ray_session, tiny_models, tmp_path
):
    """A labeling user retrains and saves the model into the same folder, then resumes (or extends) the output:
    the shards committed were scored by the earlier files, so the run is refused before any work rather than
    putting two models' predictions in one output. The same bytes with new times (a copy) resume."""
    from safetensors.numpy import load_file, save_file

    from pipelines.inference.identity import directory_hash

    model = tmp_path / "model"
    shutil.copytree(tiny_models("classifier"), model)
    many_shards(tmp_path / "in", shards=2)
    spec = spec_of(write_job(tmp_path, str(model), tmp_path / "in"))
    run_job(spec)
    earlier = directory_hash(model)
    many_shards(tmp_path / "more", shards=3)
    (tmp_path / "more" / "part-2.jsonl").rename(tmp_path / "in" / "part-2.jsonl")  # new input to score
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    save_file({**tensors, name: tensors[name] + 0.5}, weights)  # retrained: other weights, same names and shapes
    with pytest.raises(PipelineError, match=rf"model.name {model}: its files changed since this output's committed "
                                            rf"shards were scored \(content {earlier}, now \w+; every file of the "
                                            r"folder counts, a README.md .*\); resuming could put two models' "
                                            r"predictions in one output. Use "
                                            r"--overwrite"):
        run_job(spec)
    assert (tmp_path / "out" / "_SUCCESS").exists() and len(list((tmp_path / "out" / "_commits").iterdir())) == 2
    weights.write_bytes(original)  # the earlier bytes, written again: new times, same content
    resumed = run_job(spec)
    assert resumed.status == "succeeded" and resumed.shards_this_run == 1
    assert json.loads((tmp_path / "out" / "_job.json").read_text())["model_files"]["content"] == earlier


def test_a_model_folders_content_is_read_once_per_process_while_its_files_stay_the_same(tmp_path, monkeypatch):
    """A run's record, the scheduler's lineage and quantization: auto's kept decision each ask which files the
    model is: a model of many GB is read once, and again only once a file was written."""
    from pipelines.inference import identity
    from pipelines.schedule.lineage import model_lineage

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")
    reads = []
    content = identity._content_hash
    monkeypatch.setattr(identity, "_content_hash", lambda folder: reads.append(folder) or content(folder))
    spec = spec_of(write_job(tmp_path, str(tmp_path / "model"), tmp_path / "in"))
    first = identity.model_files(spec.model)
    assert model_lineage(spec.model)["content_hash"] == first["content"] == identity.model_files(spec.model)["content"]
    assert len(reads) == 1
    (tmp_path / "model" / "model.safetensors").write_bytes(b"trained")
    assert identity.model_files(spec.model)["content"] != first["content"] and len(reads) == 2


def test_a_model_folder_that_cant_be_read_is_said_as_the_models_not_the_outputs(tmp_path, monkeypatch):
    """The model's files are read on the driver to tell which model scores the output; a refusal there is the
    model folder's (a run said `output.path …: cannot write or delete there`, its OSError met under the output's
    error handling)."""
    from pipelines.inference import identity

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")

    def refused(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(identity, "directory_hash", refused)
    spec = spec_of(write_job(tmp_path, str(tmp_path / "model"), tmp_path / "in"))
    with pytest.raises(PipelineError, match=rf"model.name {tmp_path / 'model'}: cannot read the files of .*"
                                            r"\(Permission denied\)"):
        identity.model_files(spec.model)


@pytest.fixture(scope="module")
def overwritten(ray_session, tiny_models, tmp_path_factory):
    """A finished output, with entries of its users' beside the project's own, run again with overwrite while a
    second run tries to start: the tests below read what that run left (one run and one --overwrite run for
    all; none writes to it). Returns the output folder, what each second run met, and whether ``_SUCCESS`` or
    ``_run.json`` was there after each shard's files were deleted."""
    root = tmp_path_factory.mktemp("overwritten")
    many_shards(root / "in", shards=2)
    write_parquet(root / "in" / "part-4.parquet", [{"id": "p4", "text": "a parquet shard"}])
    spec = spec_of(write_job(root, tiny_models("classifier"), root / "in"))
    run_job(spec)
    out = root / "out"
    write_parquet(out / "part-notes-00000.parquet", [{"x": 1}])  # named like ours, written by someone else
    (out / "_errors_backup").mkdir()
    (out / "_errors_backup" / "notes.txt").write_text("mine")
    (out / "_job.json.bak").write_text("{}")
    second_runs = []

    def another_run_starts(shard):  # while the --overwrite run writes
        try:
            JobLock(out / "_run.lock", "the output").acquire().release()
            second_runs.append("started")
        except LockHeld:
            second_runs.append("refused")

    success_at_deletes = []
    forget = OutputDir.forget

    def forget_and_look(self, record):  # what a reader that waits for _SUCCESS finds after each shard's delete
        forget(self, record)
        success_at_deletes.append((out / "_SUCCESS").exists() or (out / "_run.json").exists())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OutputDir, "forget", forget_and_look)
        run_job(spec, overwrite=True, before_visible=another_run_starts)
    return out, second_runs, success_at_deletes


def test_overwrite_never_deletes_what_this_project_did_not_write(ray_session, tiny_models, tmp_path, overwritten):
    many_shards(tmp_path / "in", shards=2)
    write_parquet(tmp_path / "in" / "part-4.parquet", [{"id": "p4", "text": "a parquet shard"}])
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"))
    same = spec.model_copy(update={"output": spec.output.model_copy(update={"path": str(tmp_path / "in")})})
    with pytest.raises(PipelineError, match="is, or holds, the input"):
        run_job(same, overwrite=True)
    assert (tmp_path / "in" / "part-4.parquet").exists()

    out, *_ = overwritten  # run, then a file named like ours written by someone else, then run with overwrite
    assert (out / "part-notes-00000.parquet").exists()


def test_an_output_inside_another_jobs_output_is_refused(ray_session, tiny_models, tmp_path):
    """An output.path inside a finished job's output (`out/v2` beside `out`'s own files) was written: a reader of
    `out` then read both jobs' rows as one table, each row twice, and `out` still said it was up to date."""
    from pipelines.schedule.executor import run_due

    ids = many_shards(tmp_path / "in", shards=2)
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"))
    run_job(spec)
    inner = spec.model_copy(update={"output": spec.output.model_copy(update={"path": str(tmp_path / "out" / "v2")})})
    refusal = ""
    try:
        run_job(inner)
    except PipelineError as exc:
        refusal = str(exc)
    assert sorted(output_ids(tmp_path / "out")) == sorted(ids)  # each row twice: out/v2's files are under out
    assert f"lies inside another job's output, {tmp_path / 'out'} (it holds _job.json)" in refusal
    assert not (tmp_path / "out" / "v2").exists()
    with pytest.raises(PipelineError, match="lies inside another job's output"):  # what `pipelines plan` says
        resume_state(inner, list_shards([str(tmp_path / "in")]))
    scheduled = inner.model_copy(update={"schedule": spec_from_dict(
        {**json.loads(inner.model_dump_json()), "schedule": {"cron": "0 2 * * *"}}).schedule})
    with pytest.raises(PipelineError, match="lies inside another job's output"):
        run_due(scheduled)  # a scheduled job's root too (its own partitions lie inside it by design)

    (tmp_path / "out" / "v2").mkdir()  # a link elsewhere to a folder inside it is that folder
    (tmp_path / "v2link").symlink_to(tmp_path / "out" / "v2")
    linked = inner.model_copy(update={"output": inner.output.model_copy(update={"path": str(tmp_path / "v2link")})})
    with pytest.raises(PipelineError, match=f"lies inside another job's output, {tmp_path / 'out'} "):
        run_job(linked)
    assert sorted(output_ids(tmp_path / "out")) == sorted(ids)


def test_overwrite_takes_success_away_before_it_deletes_a_shard(overwritten):
    """A reader that waits for _SUCCESS, as the README says to, never finds it beside a half-deleted output: the
    --overwrite run deleted it before the first shard's files (it was there until the last, and _run.json too)."""
    out, _, success_at_deletes = overwritten
    assert len(success_at_deletes) == 3 and not any(success_at_deletes)
    assert (out / "_SUCCESS").exists()  # written again when the run finished


def test_a_symbolic_link_hides_neither_the_input_from_the_output_check_nor_the_output_from_the_listing(tmp_path):
    """An output.path that is a link to the input folder is the input folder (refused: --overwrite there could
    delete input files); an output folder reached through a link inside the input is not input (a listing
    follows links: its part files would be scored again as new shards)."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "x"}])
    (tmp_path / "link").symlink_to(tmp_path / "in")
    raw = {"input": {"paths": [str(tmp_path / "in")]}, "model": {"name": "m"},
           "task": {"type": "text-classification"}, "output": {"path": str(tmp_path / "link")}}
    with pytest.raises(PipelineError, match="is, or holds, the input"):
        check_paths(spec_from_dict(raw))

    write_jsonl(tmp_path / "out" / "part-00000.jsonl", [{"id": "b", "text": "y"}])
    (tmp_path / "in" / "results").symlink_to(tmp_path / "out")
    assert [s.name for s in list_shards([str(tmp_path / "in")], exclude=[str(tmp_path / "out")])] == ["a.jsonl"]
    assert [s.name for s in list_shards([str(tmp_path / "link")], exclude=[str(tmp_path / "in" / "results")])] == [
        "a.jsonl"
    ]


def test_a_file_reached_through_a_symbolic_link_and_by_its_own_name_is_read_once(tmp_path, caplog):
    """A listing follows links, so a file found under two names was two shards, its rows written twice: a
    ``latest -> 2024-06-01`` link beside the folder it names doubled that day's rows, as did a link to a file; and a
    link to a folder above (``up -> ..``) had every file read once per level pyarrow went down before the system's
    limit on links (40 times), two such links making 2**40 paths: the listing never ended. Each file is read once,
    under the name that goes through no link, and a warning says which names were not read."""
    write_jsonl(tmp_path / "in" / "2024-06-01" / "a.jsonl", [{"id": "a", "text": "x"}])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "b", "text": "y"}])
    (tmp_path / "in" / "latest").symlink_to("2024-06-01")
    (tmp_path / "in" / "2024-06-01" / "up").symlink_to("..")
    (tmp_path / "in" / "copy.jsonl").symlink_to("2024-06-01/a.jsonl")
    (tmp_path / "in" / "c.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")  # only a link: read under its name
    write_jsonl(tmp_path / "elsewhere.jsonl", [{"id": "c", "text": "z"}])
    with caplog.at_level("WARNING", logger="pipelines.io.shards"):
        shards = list_shards([str(tmp_path / "in")])
    assert [s.name for s in shards] == ["2024-06-01/a.jsonl", "b.jsonl", "c.jsonl"], [s.name for s in shards][:5]
    [folders, files] = [r.getMessage() for r in caplog.records]
    assert "2 symbolic link(s) under" in folders and "lead to a folder they are in (2024-06-01/up, latest/up)" in folders
    assert "2 file(s) found under two names" in files and "copy.jsonl (read as 2024-06-01/a.jsonl)" in files
    assert "latest/a.jsonl (read as 2024-06-01/a.jsonl)" in files
    named = list_shards([str(tmp_path / "in" / "copy.jsonl"), str(tmp_path / "in" / "2024-06-01" / "a.jsonl")])
    assert [s.path for s in named] == [str(tmp_path / "in" / "2024-06-01" / "a.jsonl")]  # named twice: read once


def test_a_symbolic_link_to_nothing_where_a_file_or_folder_would_be_read_is_refused_not_left_out(tmp_path):
    """A listing leaves out a link whose target is missing (a share not mounted, a git-annex or DataLad file not
    fetched, a link loop): the run read the other files, wrote _SUCCESS and said nothing, the rows behind the link in
    no output. Such a link where a file of the input would be read, or a folder (a name without an extension), is
    refused, by a folder's listing and by a glob; one that is hidden (an editor's ``.#a.jsonl`` lock) or named as no
    input file (``notes.txt``) is no input, as a file of that name is none."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "x"}])
    (tmp_path / "in" / ".#a.jsonl").symlink_to("user@host.1234")  # emacs's lock: a link to nothing, hidden
    (tmp_path / "in" / "notes.txt").symlink_to(tmp_path / "gone.txt")
    assert [s.name for s in list_shards([str(tmp_path / "in")])] == ["a.jsonl"]
    assert [s.name for s in list_shards([str(tmp_path / "in" / "*.jsonl")])] == ["a.jsonl"]
    (tmp_path / "in" / "b.jsonl").symlink_to(tmp_path / "mnt" / "b.jsonl")  # the share is not mounted
    for location in ("in", "in/", "in/*.jsonl", "in/*", "in/**/*.jsonl"):
        with pytest.raises(PipelineError, match=r"lead to nothing \(b\.jsonl -> .*the rows behind them can't be read"):
            list_shards([str(tmp_path / location)])
    (tmp_path / "in" / "b.jsonl").unlink()
    (tmp_path / "in" / "sub").mkdir()
    (tmp_path / "in" / "sub" / "2024").symlink_to(tmp_path / "nas" / "2024")  # a folder of a share not mounted
    for location in ("in", "in/sub/*/*.jsonl", "in/**/*.jsonl"):
        with pytest.raises(PipelineError, match=r"(sub/)?2024 -> "):
            list_shards([str(tmp_path / location)])
    (tmp_path / "in" / "sub" / "2024").unlink()
    (tmp_path / "in" / "sub" / "loop.jsonl").symlink_to("loop.jsonl")  # a link to itself
    with pytest.raises(PipelineError, match=r"lead to nothing \(sub/loop\.jsonl -> loop\.jsonl\)"):
        list_shards([str(tmp_path / "in")])
    assert [s.name for s in list_shards([str(tmp_path / "in" / "a.jsonl")])] == ["a.jsonl"]  # not listed: not read
    (tmp_path / "in" / "sub" / "loop.jsonl").unlink()
    (tmp_path / "in" / "results").symlink_to(tmp_path / "out")  # to the job's output, not made before its first run
    assert [s.name for s in list_shards([str(tmp_path / "in")], exclude=[str(tmp_path / "out")])] == ["a.jsonl"]
    with pytest.raises(PipelineError, match=r"lead to nothing \(results -> "):  # another folder's: refused
        list_shards([str(tmp_path / "in")], exclude=[str(tmp_path / "elsewhere")])


def test_a_folder_reached_first_by_a_name_not_read_is_read_under_the_link_to_it(tmp_path, caplog):
    """A local folder was walked once, under the name it was reached by first: a folder the listing skips
    (``.snapshots/2024-06-01``, ``_archive/v3``) reached before the link that names it (``latest ->
    .snapshots/2024-06-01``), or one a glob does not match (``data/**/latest/*.jsonl`` with ``latest -> v2`` beside
    ``v1`` and ``v2``), had the files under the link never listed: their rows in no output, a warning saying they were
    read under another name, and a resumed output's shards under the link taken for gone input. Each name a folder is
    reached by is listed; a file found under two is read once (the name without a link, among those read)."""
    write_jsonl(tmp_path / "in" / ".snapshots" / "2024-06-01" / "a.jsonl", [{"id": "a", "text": "x"}])
    write_jsonl(tmp_path / "in" / "_archive" / "v3" / "b.jsonl", [{"id": "b", "text": "y"}])
    write_jsonl(tmp_path / "in" / "c.jsonl", [{"id": "c", "text": "z"}])
    (tmp_path / "in" / "latest").symlink_to(".snapshots/2024-06-01")
    (tmp_path / "in" / "current").symlink_to("_archive/v3")
    assert [s.name for s in list_shards([str(tmp_path / "in")])] == ["c.jsonl", "current/b.jsonl", "latest/a.jsonl"]
    for version in ("v1", "v2"):
        write_jsonl(tmp_path / "sets" / "news" / version / "n.jsonl", [{"id": version, "text": "x"}])
    (tmp_path / "sets" / "news" / "latest").symlink_to("v2")
    for glob in ("sets/**/latest/*.jsonl", "sets/*/latest/*.jsonl"):
        shards = list_shards([str(tmp_path / glob)])
        assert [(s.name, s.path) for s in shards] == [
            ("news/latest/n.jsonl", str(tmp_path / "sets" / "news" / "latest" / "n.jsonl"))], (glob, shards)
    with caplog.at_level("WARNING", logger="pipelines.io.shards"):  # the names without a link are still the ones read
        assert [s.name for s in list_shards([str(tmp_path / "sets")])] == ["news/v1/n.jsonl", "news/v2/n.jsonl"]
    assert "news/latest/n.jsonl (read as news/v2/n.jsonl)" in caplog.text, caplog.text


@pytest.fixture()
def bind_mount():
    """``bind(source, target)``: mounts source's folder at target too (root only), unmounted after the test."""
    mounted: list[Path] = []

    def bind(source: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"no bind mount here: {done.stderr.strip()}")
        mounted.append(target)

    yield bind
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False)


def test_an_output_folder_that_is_an_input_folder_by_another_path_is_seen_for_what_it_is(tmp_path, bind_mount):
    """A bind mount is a second path to one folder that neither the paths nor their links resolved tell apart: an
    output bound inside the input folder had its part files read back as new input by the next run (which then
    quarantined them all as rows without text, and failed), and an output bound onto the input folder itself was not
    refused (--overwrite there deletes input files)."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": "x"}])
    (tmp_path / "in" / "out").mkdir()
    bind_mount(tmp_path / "in" / "out", tmp_path / "bound")  # output.path: bound, the same folder as in/out
    write_jsonl(tmp_path / "bound" / "part-a-00000.jsonl", [{"id": "a", "p_label": "x"}])  # a committed part
    assert [s.name for s in list_shards([str(tmp_path / "in")], exclude=[str(tmp_path / "bound")])] == ["a.jsonl"]

    bind_mount(tmp_path / "in", tmp_path / "alias")
    raw = {"input": {"paths": [str(tmp_path / "in")]}, "model": {"name": "m"},
           "task": {"type": "text-classification"}, "output": {"path": str(tmp_path / "alias")}}
    with pytest.raises(PipelineError, match="is, or holds, the input"):
        check_paths(spec_from_dict(raw))


def test_a_file_with_two_hard_links_or_under_a_bind_mount_is_read_once(ray_session, tiny_models, tmp_path, bind_mount):
    """A snapshot made with hard links (`cp -al 2024-06-01 latest`, rsnapshot, `rsync --link-dest`) gives each file a
    second name that goes through no symbolic link, so the two names were two shards: `pipelines run` wrote each of
    the file's rows twice, and the file named twice in input.paths under its two names was refused as two files
    with one name. So was a folder bound at a second place inside the input. Each file is read once, under the
    first of its names, and a warning names the others."""
    ids = many_shards(tmp_path / "in" / "2024-06-01", shards=2)
    shutil.copytree(tmp_path / "in" / "2024-06-01", tmp_path / "in" / "latest", copy_function=os.link)  # cp -al
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    done = cli("run", str(job), *joining(ray_session))  # the session's Ray: none started and stopped for it
    assert done.returncode == 0, done.stderr[-3000:]
    got = output_ids(tmp_path / "out")
    assert sorted(got) == sorted(ids), f"{len(got)} rows out of {len(ids)}"
    assert "2 file(s) found under two names" in done.stderr, done.stderr[-3000:]
    assert "latest/part-0.jsonl (read as 2024-06-01/part-0.jsonl)" in done.stderr, done.stderr[-3000:]

    named = [str(tmp_path / "in" / "2024-06-01" / "part-0.jsonl"), str(tmp_path / "in" / "latest" / "part-0.jsonl")]
    assert [s.path for s in list_shards(named)] == named[:1]

    write_jsonl(tmp_path / "mounted" / "current" / "a.jsonl", [{"id": "a", "text": "x"}])
    bind_mount(tmp_path / "mounted" / "current", tmp_path / "mounted" / "v3")  # the same folder at a second place
    assert [s.name for s in list_shards([str(tmp_path / "mounted")])] == ["current/a.jsonl"]


def test_a_hard_link_in_a_folder_below_keeps_the_first_name_not_the_longer_one(tmp_path):
    """A scored file given a second hard link in a folder below it, under its own name (`ln data/x.jsonl
    data/backup/`, `cp -al` of a day's files into `archive/`), was read as `backup/x.jsonl`, taken for another
    spelling of an outer input location: a new name, so the next scheduled tick scored its rows again while
    `x.jsonl`'s output stayed (gone), and a resume of `pipelines run` was refused as for gone input. One location's
    hard links keep the first name the listing finds, as the README says."""
    write_jsonl(tmp_path / "data" / "x.jsonl", [{"id": "a", "text": "x"}])
    before = [s.name for s in list_shards([str(tmp_path / "data")])]
    (tmp_path / "data" / "backup").mkdir()
    os.link(tmp_path / "data" / "x.jsonl", tmp_path / "data" / "backup" / "x.jsonl")
    assert before == ["x.jsonl"]
    assert [s.name for s in list_shards([str(tmp_path / "data")])] == before
    # the folder below named again in another spelling: the name under the outer location, as before
    again = [str(tmp_path / "data"), f"file://{tmp_path}/data/backup"]
    assert [s.name for s in list_shards(again)] == before


def test_overwrite_keeps_its_own_lock_and_names_that_only_start_like_ours(overwritten):
    # --overwrite used to delete every top-level entry whose name *starts with* a bookkeeping name: the
    # run's own _run.lock (so a second run got the lock and wrote the same output at once) and a
    # user's _errors_backup/ or _job.json.bak. The run, the user's entries and the overwrite run with a second
    # run trying to start at each shard: the fixture `overwritten`.
    out, second_runs, _ = overwritten
    assert second_runs and set(second_runs) == {"refused"}
    assert (out / "_errors_backup" / "notes.txt").read_text() == "mine"
    assert (out / "_job.json.bak").exists()


def test_an_output_inside_the_input_folder_is_not_read_as_input(ray_session, tiny_models, tmp_path):
    ids = many_shards(tmp_path / "in", shards=2)
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   output={"path": str(tmp_path / "in" / "scored")})
    run_job(spec)
    again = run_job(spec)
    assert again.status == "up to date"
    assert sorted(output_ids(tmp_path / "in" / "scored")) == sorted(ids)


def test_a_second_run_on_the_same_output_is_refused(ray_session, tiny_models, tmp_path):
    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    (tmp_path / "out").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.read()", str(tmp_path / "out" / "_run.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = cli("run", str(job))
        assert busy.returncode == 75, busy.stderr[-2000:]
        assert "another run" in busy.stderr
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_run.lock"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    run_job(spec_of(job))  # once the lock is free the run goes ahead (in this process: a failure raises)


def test_a_busy_output_is_refused_before_ray_starts(tiny_models, tmp_path, monkeypatch):
    """Another run's lock is contended for first: the second run is refused at once, not after starting a Ray."""
    import pipelines.cluster.connect

    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")

    def connect(address, spec):
        raise AssertionError("connected to Ray before taking the lock")

    monkeypatch.setattr(pipelines.cluster.connect, "connect", connect)
    with JobLock(tmp_path / "out" / "_run.lock", "another run"):
        with pytest.raises(LockHeld, match="another run of the output .* is in progress"):
            run_job(spec_of(job))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_run.lock"]


def test_two_new_outputs_one_inside_the_other_started_together_are_refused_not_both_written(tiny_models, tmp_path,
                                                                                               monkeypatch):
    """An output inside another's is refused by what the outer one holds, its _job.json; but a new output writes that
    only once its run has started Ray and taken its lock, and an outer output was looked at before the inner one
    existed: two runs started together on `out` and `out/v2` (a DAG's parallel tasks) both succeeded, and a reader of
    `out` got every row twice. The inner run now takes a lock held above it for an output; the outer one looks at its
    folder again once it holds its lock, and finds the inner output there."""
    import pipelines.cluster.connect

    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    inner = spec_of(job, output={"path": str(tmp_path / "out" / "v2")})
    with JobLock(tmp_path / "out" / "_run.lock", "the output"):  # the outer run, before its first record
        with pytest.raises(PipelineError, match=r"lies inside another job's output, .*/out \(it holds _run\.lock, "
                                                r"held by another run\)"):
            run_job(inner)
    assert not (tmp_path / "out" / "v2").exists()
    (tmp_path / "out" / "_run.lock").unlink()

    holders = []

    def connect(address, spec):  # the inner run starts while the outer one starts Ray: its folder and lock appear
        holders.append(JobLock(tmp_path / "out" / "v2" / "_run.lock", "the output").__enter__())

    monkeypatch.setattr(pipelines.cluster.connect, "connect", connect)
    try:
        with pytest.raises(PipelineError, match=r"output.path .*/out holds another job's output, .*/out/v2 "):
            run_job(spec_of(job))
    finally:
        for holder in holders:
            holder.__exit__(None, None, None)
    assert not (tmp_path / "out" / "_job.json").exists()


def test_a_run_that_meets_another_runs_overwrite_half_done_is_refused_as_busy(tiny_models, tmp_path):
    """An --overwrite run deletes the records first and this project's bookkeeping last: met half-way, the output
    holds its user's files and no results of this project. A second run read that before it came to the lock and
    said to choose an empty or new output.path; the other run's lock is the answer. Without a holder, the refusal
    stands (nothing is taken or written to find out)."""
    many_shards(tmp_path / "in", shards=1)
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("the user's")  # --overwrite never deletes it
    with JobLock(tmp_path / "out" / "_run.lock", "the output"):  # the --overwrite run, half done
        with pytest.raises(LockHeld, match="another run of the output .* is in progress") as busy:
            run_job(spec)
        # what the read met comes after: it may stand once the other run has ended
        assert str(busy.value).endswith("Meanwhile, reading the output met: output.path "
                                        f"{tmp_path / 'out'} is not empty and holds no results of this project; "
                                        "choose an empty or new output.path")
        holder = (tmp_path / "out" / "_run.lock").read_text()
        assert json.loads(holder)["pid"] == os.getpid()  # the second run wrote nothing into it
    with pytest.raises(PipelineError, match="holds no results of this project") as refused:
        run_job(spec)
    assert not isinstance(refused.value, LockHeld)
    assert (tmp_path / "out" / "_run.lock").read_text() == ""  # as the holder's release left it


def test_a_shard_scored_at_another_precision_than_the_outputs_is_never_committed(tmp_path):
    """One output, one precision under quantization auto: each staged block says the precision its actor's model
    loaded at, and a shard's commit records it. A block at another than the output holds (auto's decision in
    _job.json: an actor that took another decision than the board's) is refused before anything of the shard is
    written or recorded; outside auto, blocks at two precisions (dtype auto on mixed GPUs) are recorded as both."""
    from pipelines.output.commit import scored_precision
    from pipelines.output.staging import StagingReport

    shard = Shard(uri=str(tmp_path / "a.jsonl"), path=str(tmp_path / "a.jsonl"), format="jsonl", compressed=False,
                  size=1, mtime_ns=1, name="a.jsonl")
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="auto", device="cpu",
                    task="text-classification")

    def reports(*precisions):
        return [StagingReport(shard="a", shard_rows=2, rows=1, errors=0, precision=p) for p in precisions]

    assert scored_precision(shard, reports("bfloat16", "bfloat16"), job) == "bfloat16"
    assert scored_precision(shard, reports(""), job) is None  # no actor scored it (an unreadable file)
    # outside auto, where the spec lets each node choose (dtype auto on GPUs with and without bf16): both, said
    assert scored_precision(shard, reports("float16", "bfloat16"), job) == "bfloat16 and float16"
    job.precision = {"quantization": "none", "dtype": "bfloat16", "fidelity": None}
    assert scored_precision(shard, reports("bfloat16"), job) == "bfloat16"
    with pytest.raises(PipelineError, match=r"scored at per-token-int8, where this output holds bfloat16 "
                                            r"\(quantization auto's decision, in _job.json\)"):
        scored_precision(shard, reports("per-token-int8"), job)
    with pytest.raises(PipelineError, match=r"scored at bfloat16 and float16, where this output holds bfloat16"):
        scored_precision(shard, reports("bfloat16", "float16"), job)


def test_a_finished_output_another_run_holds_is_busy_not_up_to_date(tiny_models, tmp_path):
    """A finished output is answered up to date without the lock; but where another run holds it, that run may be
    deleting it (an --overwrite clears it once Ray has started, seconds after it took the lock): a script told up to
    date (status 0) read files as they went. The answer is that run's busy line (status 75); released, up to date."""
    many_shards(tmp_path / "in", shards=2)
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"))
    assert run_job(spec).status == "succeeded"
    with JobLock(tmp_path / "out" / "_run.lock", "the output"):  # the --overwrite run, before it clears the output
        with pytest.raises(LockHeld, match=r"another run of the output .* is in progress \(pid \d+ .*\. The output "
                                           r"was finished when this run read it; that run may be changing it") as busy:
            run_job(spec)
        assert "Meanwhile" not in str(busy.value)
    assert run_job(spec).status == "up to date"


def test_a_run_is_not_refused_as_busy_by_another_runs_instant_look_at_the_lock(tmp_path, monkeypatch):
    """A run that finds the output being written asks whether another run holds the lock, taking a shared lock for an
    instant; a run taking the lock at that instant was refused as busy (LockHeld, with no holder to name)."""
    import fcntl

    import pipelines.output.lock as lock_module

    path = tmp_path / "out" / "_run.lock"
    JobLock(path, "an earlier run").acquire().release()  # the file stays, as after a run
    looking = open(path)  # noqa: SIM115 - the other run's look, held for its instant
    fcntl.flock(looking.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    waits = []

    def look_ends(seconds):  # the instant passes while the run waits
        waits.append(seconds)
        looking.close()

    monkeypatch.setattr(lock_module.time, "sleep", look_ends)
    JobLock(path, "the output").acquire().release()
    assert len(waits) == 1 and waits[0] < 0.1
    with JobLock(path, "a run in progress"):  # a holder that stays is still refused, after a few tries
        monkeypatch.setattr(lock_module.time, "sleep", lambda seconds: waits.append(seconds))
        with pytest.raises(LockHeld, match="a run in progress|another run"):
            JobLock(path, "the output").acquire()
    assert sum(waits[1:]) < 1  # short tries: no wait a user would notice


@pytest.mark.parametrize("replaced", [False, True], ids=["deleted", "deleted-and-taken"])
def test_a_run_whose_lock_file_was_deleted_stops_before_its_next_write(tmp_path, replaced):
    """The kernel lock is on the open file: a ``_run.lock`` deleted by hand while a run held it (its path is in the
    busy message) let a second run take a new file of that name, delete the first's ``_staging/`` and write beside
    it, while the first went on committing (its check found nothing, \"a kernel lock cannot be taken away\"). The
    check at each commit now finds the lock's file gone or another file in its place and stops the run, naming it;
    the busy message says not to delete the file."""
    path = tmp_path / "out" / "_run.lock"
    first = JobLock(path, "the output").acquire()
    first.check()  # held, in place: nothing to say
    with pytest.raises(LockHeld, match="do not delete it"):
        JobLock(path, "the output").acquire()
    path.unlink()
    second = JobLock(path, "the output").acquire() if replaced else None
    with pytest.raises(PipelineError, match=rf"the lock {re.escape(str(path))} of the output was deleted .*"
                                            "this run stops before it writes more"):
        first.check()
    first.release()
    if second is not None:
        second.check()  # the run that took the new file holds it
        second.release()


def test_a_lock_let_go_on_the_way_out_stays_held_until_the_process_exits(tmp_path, caplog):
    """On SIGTERM the CLI lets go of its locks from a thread of its own (release_held) while its main thread may
    still be in the middle of a commit; the lock must not be free for another run until the process has exited."""
    from pipelines.output.lock import release_held

    path = tmp_path / "out" / "_run.lock"
    held = JobLock(path, "a run being terminated").acquire()
    release_held()
    assert JobLock(path, "the output").held_elsewhere() is not None, (
        "the lock was let go while the process that held it was still running: a second run could take the output "
        "while the first one's main thread still writes"
    )
    assert path.read_text() == ""  # a clean end: the next run finds no record of a run that ended without letting go
    assert held._file is not None
    held._file.close()  # the process exits: the kernel drops the lock
    with caplog.at_level(logging.WARNING, logger="pipelines.output.lock"):
        JobLock(path, "the next run").acquire().release()
    assert "recovered the lock" not in caplog.text


def test_an_output_on_a_fuse_mount_of_a_bucket_warns_that_its_lock_keeps_apart_only_this_machine(
        tmp_path, monkeypatch, caplog):
    """A bucket mounted as a folder (gcsfuse, s3fs; Kubernetes' CSI drivers mount one in every pod) passes no flock
    to other machines: two pods whose output.path is the same folder there both took its lock, and wrote the output
    at once, with no word. The run's lock now says so; the mount is told from /proc/self/mountinfo (here one written
    for the test: a FUSE mount can't be made in the test's container)."""
    from pipelines.output import lock as locks

    bucket = tmp_path / "mnt" / "my bucket"
    (bucket / "results").mkdir(parents=True)
    escaped = str(bucket).replace(" ", "\\040")
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"98 22 0:52 / {escaped} rw,nosuid,nodev,relatime shared:40 - fuse.gcsfuse my-bucket rw,user_id=0\n"
    )
    monkeypatch.setattr(locks, "MOUNTINFO", str(table))
    assert locks.fuse_mount(str(bucket / "results" / "run-7")) == "fuse.gcsfuse"  # not made yet: its folder's mount
    assert locks.fuse_mount(str(tmp_path / "mnt")) is None and locks.fuse_mount(f"{bucket}-2") is None
    with caplog.at_level(logging.WARNING, logger="pipelines.output.lock"):
        lock = locks.output_lock(str(bucket / "results"), "_run.lock", "the output")
    assert isinstance(lock, JobLock)
    assert "is on a FUSE mount (fuse.gcsfuse" in caplog.text and "only the runs of this machine" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.output.lock"):
        locks.output_lock(str(tmp_path / "local"), "_run.lock", "the output")
    assert "FUSE" not in caplog.text


def test_a_lock_taken_before_ray_starts_is_released_when_the_start_fails(tiny_models, tmp_path, monkeypatch):
    """An earlier run's (free) lock file is taken before Ray starts; a start that fails gives it back."""
    import pipelines.cluster.connect

    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    JobLock(tmp_path / "out" / "_run.lock", "an earlier run").acquire().release()  # the file stays, as after a run
    held = []

    def connect(address, spec):
        try:  # the run holds the lock by now ...
            JobLock(tmp_path / "out" / "_run.lock", "a probe").acquire().release()
        except LockHeld:
            held.append(True)
        raise PipelineError("Cannot start a local Ray (the node timed out during startup)")

    monkeypatch.setattr(pipelines.cluster.connect, "connect", connect)
    with pytest.raises(PipelineError, match="Cannot start a local Ray"):
        run_job(spec_of(job))
    assert held == [True]
    JobLock(tmp_path / "out" / "_run.lock", "the next run").acquire().release()  # ... and gave it back


def test_output_of_deleted_input_is_reported_and_pruned_on_request(ray_session, tiny_models, tmp_path):
    ids = many_shards(tmp_path / "in", shards=3)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in")
    run_job(spec_of(job))  # the first run, in this process (a failure raises); the refusal and --prune: the CLI
    (tmp_path / "in" / "part-1.jsonl").unlink()
    refused = cli("run", str(job))
    assert refused.returncode == 2
    assert "1 committed shard(s) that are not in the input" in refused.stderr and "--prune" in refused.stderr
    assert re.search(r"part-1.jsonl; \d+ rows written\)", refused.stderr)  # not "in all": quarantined rows go too
    pruned = cli("run", str(job), "--prune")
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    kept = [i for i in ids if not i.startswith("s1-")]
    assert sorted(output_ids(tmp_path / "out")) == sorted(kept)
    assert json.loads((tmp_path / "out" / "_run.json").read_text())["rows_in"] == len(kept)


def test_kept_columns_take_their_types_from_every_shard(ray_session, tiny_models, tmp_path):
    """A kept column missing from the first shard, and an unreadable shard after it, don't break the job.

    One run over all three shards (a.jsonl without the column, b.jsonl with it, c.parquet unreadable): the types
    are sampled afresh from every shard, as they were by the --overwrite run this test used to make after a run
    over a and b alone, so that first run proved nothing this one does not."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": SENTENCES[0]}])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "b", "text": SENTENCES[1], "score": 7}])
    corrupt_parquet(tmp_path / "in" / "c.parquet", 50)
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   input={"columns_to_keep": ["score"]}, output={"prediction_prefix": "p_"},
                   errors={"unreadable_files": "quarantine", "max_rate": 1.0})
    summary = run_job(spec)
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("score").type == pa.int64()
    assert dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist())) == {"a": None, "b": 7}
    assert summary.rows_in == 52 and summary.errors == 50


def test_a_kept_column_named_row_leaves_the_rows_in_input_order(ray_session, tiny_models, tmp_path):
    """A shard's rows were put in order by its ``_row``, then by a column ``row`` where there was one: a kept
    column of that name reordered the output file (and a list-typed one failed the commit)."""
    order = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"r{i}", "text": SENTENCES[i % 4], "row": n}
                                               for i, n in enumerate(order)])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "l0", "text": SENTENCES[0], "row": [2, 1]}])
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   input={"columns_to_keep": ["row"]}, output={"prediction_prefix": "p_"})
    run_job(spec)
    [part] = [p for p in (tmp_path / "out").glob("part-*.parquet") if "r0" in pq.read_table(p).column("id").to_pylist()]
    table = pq.read_table(part)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(10)]
    assert table.column("row").to_pylist() == [str(n) for n in order]  # text: b holds a list in it


def test_kept_types_are_fixed_by_the_first_run_that_commits(ray_session, tiny_models, tmp_path):
    """A first run that committed nothing (its one file could not be read) fixed the kept column's type all the
    same (text, as nothing could be sampled), and every later run wrote the numbers as text."""
    rows = [{"id": f"r{i}", "text": SENTENCES[i % 4], "n": i} for i in range(6)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # an upload cut short
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   input={"columns_to_keep": ["n"]}, output={"prediction_prefix": "p_"})
    with pytest.raises(PipelineError, match="could not be read"):
        run_job(spec)
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(whole)  # uploaded again, whole
    run_job(spec)
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("n").type == pa.int64() and sorted(table.column("n").to_pylist()) == list(range(6))


def test_a_kept_value_that_cant_be_cast_costs_its_row_only(ray_session, tiny_models, tmp_path):
    """One "n/a" in a column that is an integer in this job used to send the whole shard to _errors/;
    a list in a column that is text elsewhere is kept as its JSON text."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a1", "text": SENTENCES[0], "n": 1, "tags": "x"}])
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   input={"columns_to_keep": ["n", "tags"]}, output={"prediction_prefix": "p_"},
                   errors={"max_rate": 1.0})
    run_job(spec)  # the job's types are now fixed: n int64, tags string
    write_jsonl(tmp_path / "in" / "b.jsonl", [
        {"id": "b1", "text": SENTENCES[1], "n": 3, "tags": ["red", "blue"]},
        {"id": "b2", "text": SENTENCES[2], "n": "n/a", "tags": "y"},
        {"id": "b3", "text": SENTENCES[3], "n": 5, "tags": {"k": 1}},
    ])
    summary = run_job(spec)
    assert summary.rows_in == 4 and summary.errors == 1
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("n").type == pa.int64()
    rows = {r["id"]: (r["n"], r["tags"]) for r in table.to_pylist()}
    assert rows == {"a1": (1, "x"), "b1": (3, '["red", "blue"]'), "b3": (5, '{"k": 1}')}
    errors = pq.read_table(tmp_path / "out" / "_errors").to_pylist()
    assert [e["id"] for e in errors] == ["b2"] and errors[0]["reason"].startswith("schema differs: column 'n'")


def test_text_and_ids_are_read_as_written(ray_session, tiny_models, tmp_path):
    write_jsonl(tmp_path / "in" / "dates.jsonl", [
        {"id": "2024-01-02", "text": "2024-01-02 10:00"},
        {"id": "2024-01-03", "text": "2024-01-03"},
    ])
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"))
    summary = run_job(spec)
    assert summary.errors == 0
    assert sorted(output_ids(tmp_path / "out")) == ["2024-01-02", "2024-01-03"]


def test_a_reader_sees_whole_shards_only_while_a_commit_is_cut_short(ray_session, tiny_models, tmp_path):
    """Each shard is several staged blocks; killed between its commit record and its rename, and killed
    mid-run, a reader sees only shards that are committed, each whole."""
    ids = many_shards(tmp_path / "in", shards=3, rows=20)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", batching={"batch_size": 4})
    out = tmp_path / "out"
    # joins the session's Ray (the crash point is the driver's): no local Ray started for it
    crashed = cli("run", str(job), *joining(ray_session), env={"PIPELINES_CRASH_AT": "mid_commit:2"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")]
    committed = {Path(r["input"]["uri"]).name for r in records}
    visible = set(output_ids(out))
    by_shard = {f"part-{k}.jsonl": set(ids[k * 20 : (k + 1) * 20]) for k in range(3)}
    for name, shard_ids in by_shard.items():
        assert not (shard_ids & visible) or (shard_ids <= visible and name in committed), name
    assert [p.name for p in out.glob("*.parquet")] != [] and len(list(out.glob("*.parquet"))) == 1
    run_job(spec_of(job))  # the resuming run, in this process: a failure raises (the crash above needs the CLI)
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    assert len(list(out.glob("*.parquet"))) == 3  # one file per shard


def test_an_output_path_that_refuses_writes_is_one_line(tiny_models, tmp_path):
    """/sys refuses new folders even to root: a stand-in for a read-only or foreign output location."""
    many_shards(tmp_path / "in", shards=1)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", output={"path": "/sys/pipelines-test-out"})
    done = cli("run", str(job))
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "/sys/pipelines-test-out: cannot write or delete there" in line
    assert "Traceback" not in done.stderr


def test_a_local_input_folder_that_may_not_be_listed_is_said_to_need_permissions(tiny_models, tmp_path, monkeypatch):
    """A local folder this process may not list (``chmod 000``, for a user who is not root) was said as an object
    store that "cannot be used", with advice on endpoints and the network. The listing is made to fail as it does
    there (root may list any folder)."""
    import errno

    import pyarrow.fs as pafs

    from pipelines.io import shards

    many_shards(tmp_path / "in", shards=1)
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"))
    sub = tmp_path / "in" / "sub"

    class Unlistable:  # the local disk, whose listing of in/ meets in/sub, which it may not open
        def __init__(self, fs: pafs.FileSystem) -> None:
            self.fs = fs

        def get_file_info(self, what):
            if isinstance(what, pafs.FileSelector):
                raise PermissionError(
                    errno.EACCES, f"Cannot list directory '{sub}'. Detail: [errno 13] Permission denied"
                )
            return self.fs.get_file_info(what)

    resolve = shards.resolve
    monkeypatch.setattr(shards, "resolve", lambda location: (Unlistable(resolve(location)[0]), resolve(location)[1]))
    with pytest.raises(PipelineError) as refused:
        run_job(spec)
    said = str(refused.value)
    assert said.startswith(f"input.paths: {tmp_path / 'in'}: ") and "Permission denied" in said, said
    assert "permissions" in said and "store" not in said and "AWS_ENDPOINT_URL" not in said, said


def test_two_input_files_known_by_the_same_name_are_refused(tmp_path):
    """A shard is known by its name under its input path: two folders listed apart, each with a part-0.jsonl,
    would be one shard to the commits (one committed, the other skipped as done)."""
    from pipelines.io.shards import list_shards

    for folder in ("monday", "tuesday"):
        write_jsonl(tmp_path / folder / "part-0.jsonl", [{"id": folder, "text": "words"}])
    with pytest.raises(PipelineError, match="have the same name 'part-0.jsonl'.*common parent folder"):
        list_shards([str(tmp_path / "monday"), str(tmp_path / "tuesday")])
    assert len(list_shards([str(tmp_path)])) == 2  # their common parent: monday/part-0.jsonl, tuesday/part-0.jsonl


def test_the_same_name_refusal_does_not_advise_a_parent_folder_whose_listing_skips_one_of_the_files(tmp_path):
    """`input.paths: [data, data/_late/x.jsonl]` beside `data/x.jsonl`: refused as two files of one name, advising to
    list their common parent folder, `data`; done so, the run succeeded without `_late/x.jsonl`'s rows (a listing
    skips names starting with `_` or `.`), not a word said. The refusal says that folder would not read it now."""
    from pipelines.io.shards import list_shards

    write_jsonl(tmp_path / "data" / "x.jsonl", [{"id": "top", "text": "words"}])
    write_jsonl(tmp_path / "data" / "_late" / "x.jsonl", [{"id": "late", "text": "words"}])
    with pytest.raises(PipelineError) as refused:
        list_shards([str(tmp_path / "data"), str(tmp_path / "data" / "_late" / "x.jsonl")])
    said = str(refused.value)
    assert "have the same name 'x.jsonl'" in said, said
    assert f"their common parent folder, {tmp_path / 'data'}, would not read {tmp_path / 'data' / '_late' / 'x.jsonl'}" \
        in said, said
    assert "list their common parent folder" not in said, said
    assert [s.name for s in list_shards([str(tmp_path / "data")])] == ["x.jsonl"]  # what that advice read


def test_a_glob_takes_what_a_shell_would_and_not_the_folders_below(tmp_path):
    """``data/*.jsonl`` used to match every .jsonl file anywhere under data/ (``*`` crossed folders): a
    backup copy in data/archive/ doubled its rows, and a nightly ``incoming/*.parquet`` scored the files
    already moved to incoming/done/ again. ``*``, ``?`` and ``[...]`` stay within one name, ``**`` spans
    folders, a matched folder gives every file under it (a glob ending in ``/`` matches folders only), and
    names starting with ``.`` or ``_`` (a writer's temporary files) are skipped as in a folder's listing,
    unless the glob spells them out where they stand."""
    for name in ("a.jsonl", "archive/a.jsonl", "2024/b.jsonl", "2024/deep/c.jsonl", "_temporary/0/d.jsonl",
                 ".e.jsonl", "_own/f.jsonl", "_own/_temporary/0/g.jsonl"):
        write_jsonl(tmp_path / "data" / name, [{"id": name, "text": "words"}])
    data = tmp_path / "data"

    def names(*patterns: str) -> list[str]:
        return [s.name for s in list_shards([f"{data}/{p}" for p in patterns])]

    assert names("*.jsonl") == ["a.jsonl"]
    assert names("**/*.jsonl") == ["2024/b.jsonl", "2024/deep/c.jsonl", "a.jsonl", "archive/a.jsonl"]
    assert names("*") == ["2024/b.jsonl", "2024/deep/c.jsonl", "a.jsonl", "archive/a.jsonl"]
    assert names("*/") == ["2024/b.jsonl", "2024/deep/c.jsonl", "archive/a.jsonl"]  # folders only
    assert names("20[0-9][0-9]/*.jsonl") == ["2024/b.jsonl"]
    assert names("?024/*/*.jsonl") == ["2024/deep/c.jsonl"]
    assert names("_own/*.jsonl") == ["f.jsonl"]  # in the fixed part; its _temporary/ is still skipped
    assert names("**/_own/*.jsonl") == ["_own/f.jsonl"]
    assert names("_*/**/*.jsonl") == ["_own/f.jsonl", "_temporary/0/d.jsonl"]  # not _own/_temporary/
    assert names(".*.jsonl") == [".e.jsonl"]
    with pytest.raises(PipelineError, match=r"a glob's \* stays within one folder: .*/data/\*\*/\*\.parquet takes"):
        names("*.parquet")  # Hive-style folders (data/date=.../part-0.parquet) were matched by it before

    write_jsonl(tmp_path / "back\\slash" / "z.jsonl", [{"id": "z", "text": "words"}])  # a name, not an escape
    assert [s.name for s in list_shards([f"{tmp_path}/back\\slash/*.jsonl"])] == ["z.jsonl"]
    with pytest.raises(PipelineError, match="a glob needs a folder before its first wildcard"):
        list_shards(["/*.jsonl"])  # not a listing of the whole machine


def test_a_delta_lake_table_folder_is_refused_not_read_with_its_earlier_versions_files(tmp_path):
    """A Delta Lake table (Databricks, delta-rs) keeps the Parquet files of its earlier versions beside the current
    ones until VACUUM, and only ``_delta_log/`` says which are live. Named as input, its folder was read as plain
    Parquet: every version's rows were scored, an overwritten row twice (under its id, with its old text too), a
    deleted one still there, and the run said nothing. This is the layout deltalake 1.6.6 left for a table written,
    appended to and overwritten: 3 rows in the table, 6 in its folder. Refused before any work, naming the table and
    how to read its current version; its current files named one by one are read, as any files."""
    table = tmp_path / "data" / "events"
    write_parquet(table / "part-00000-2dc9-c000.snappy.parquet", [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}])
    write_parquet(table / "part-00000-3809-c000.snappy.parquet", [{"id": 3, "text": "c"}])
    write_parquet(table / "part-00000-2638-c000.snappy.parquet", [{"id": i, "text": t} for i, t in [(1, "A"), (2, "B")]])
    write_parquet(table / "date=2024-06-01" / "part-00001-77aa-c000.snappy.parquet", [{"id": 4, "text": "d"}])
    (table / "_delta_log").mkdir()
    for version in range(3):
        (table / "_delta_log" / f"{version:020d}.json").write_text('{"commitInfo": {}}\n')

    for location in (table, f"{table}/", f"{table}/*.parquet", f"{table}/**/*.parquet", tmp_path / "data",
                     f"{tmp_path}/data/*/", f"{tmp_path}/data/**/*.parquet", table / "date=2024-06-01"):
        with pytest.raises(PipelineError, match=r"input\.paths: .*/data/events is a Delta Lake table \(it holds "
                                                r"_delta_log/\).*earlier versions.*file_uris\(\)") as refused:
            list_shards([str(location)])
        assert "\n" not in str(refused.value)

    live = table / "part-00000-2638-c000.snappy.parquet"  # what DeltaTable(...).file_uris() names
    assert [s.name for s in list_shards([str(live)])] == [live.name]
    write_parquet(tmp_path / "plain" / "part-00000-c000.snappy.parquet", [{"id": 1, "text": "a"}])
    (tmp_path / "plain" / "_SUCCESS").write_text("")  # Spark's own output: no log, read as it is
    assert [s.name for s in list_shards([str(tmp_path / "plain")])] == ["part-00000-c000.snappy.parquet"]


def test_an_iceberg_or_hudi_table_folder_is_refused_as_a_delta_table_is(tmp_path):
    """Apache Iceberg and Apache Hudi tables keep their earlier versions' data files too (Iceberg until its snapshots
    expire and orphans are removed, Hudi's copy-on-write file slices until its cleaner runs), and only their metadata
    says which are live. This is the layout pyiceberg 0.x left for a table appended to, then overwritten: 2 rows in the
    table, 4 in data/, and each metadata/*.metadata.json read as a JSON row (`missing column 'text'`); named as
    ``table/data/``, the 4 rows and not a word. Refused before any work, as a Delta Lake table is."""
    iceberg = tmp_path / "warehouse" / "events"
    write_parquet(iceberg / "data" / "00000-0-10eda6e1.parquet", [{"id": 1, "text": "A"}, {"id": 2, "text": "B"}])
    write_parquet(iceberg / "data" / "00000-0-823534fe.parquet", [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}])
    for version in range(3):
        name = f"{version:05d}-1672245a-1dff-4693-8d03-8fa910e80f1e.metadata.json"
        (iceberg / "metadata").mkdir(exist_ok=True)
        (iceberg / "metadata" / name).write_text('{"format-version": 2, "location": "file:///warehouse/events"}')
    (iceberg / "metadata" / "snap-1106015562751952668-0-10eda6e1.avro").write_bytes(b"Obj\x01")
    for location in (iceberg, iceberg / "data", f"{iceberg}/data/*.parquet", f"{tmp_path}/warehouse/**/*.parquet"):
        with pytest.raises(PipelineError, match=r"/warehouse/events is an Apache Iceberg table \(it holds "
                                                r"metadata/\*\.metadata\.json\).*earlier versions"):
            list_shards([str(location)])

    hudi = tmp_path / "lake" / "trips"
    for instant in ("20240601101500", "20240601121500"):  # one file group, rewritten by an upsert
        write_parquet(hudi / "date=2024-06-01" / f"5f3c-0_0-21-33_{instant}.parquet", [{"id": 1, "text": instant}])
    (hudi / ".hoodie").mkdir()
    (hudi / ".hoodie" / "20240601121500.commit").write_text("{}")
    (hudi / "date=2024-06-01" / ".hoodie_partition_metadata").write_text("commitTime=20240601101500")
    for location in (hudi, hudi / "date=2024-06-01", tmp_path / "lake"):
        with pytest.raises(PipelineError, match=r"/lake/trips is an Apache Hudi table \(it holds \.hoodie/\)"):
            list_shards([str(location)])

    plain = tmp_path / "plain"  # a folder named metadata, of JSON files of no table, is read as any folder
    write_jsonl(plain / "metadata" / "run.metadata.json", [{"id": "m", "text": "notes"}])
    write_parquet(plain / "data" / "part-0.parquet", [{"id": 1, "text": "a"}])
    assert [s.name for s in list_shards([str(plain)])] == ["data/part-0.parquet", "metadata/run.metadata.json"]


def test_a_table_beside_a_globs_files_or_in_a_skipped_folder_refuses_nothing(tmp_path):
    """A folder or glob is refused where a file it would read lies in a Delta Lake, Iceberg or Hudi table. Any table
    its listing held refused it: ``landing/**/*.jsonl`` beside a Delta table's folder (whose log is JSON, its data
    Parquet: nothing of it matched), and a landing folder whose old table was moved to ``_archive/`` (a folder every
    listing skips): the user's own files could not be read at all, and no spelling of the location helped."""
    write_jsonl(tmp_path / "landing" / "day1.jsonl", [{"id": "a", "text": "x"}])
    write_jsonl(tmp_path / "landing" / "late" / "day2.jsonl", [{"id": "b", "text": "y"}])
    table = tmp_path / "landing" / "events"  # a Delta table beside them
    write_parquet(table / "part-00000-2dc9-c000.snappy.parquet", [{"id": 1, "text": "a"}])
    (table / "_delta_log").mkdir()
    (table / "_delta_log" / f"{0:020d}.json").write_text('{"commitInfo": {}}\n')
    iceberg = tmp_path / "landing" / "_archive" / "old"  # an Iceberg table archived in a skipped folder
    write_parquet(iceberg / "data" / "00000-0-10eda6e1.parquet", [{"id": 1, "text": "a"}])
    write_jsonl(iceberg / "metadata" / "v1.metadata.json", [{"format-version": 2}])
    assert sorted(s.name for s in list_shards([f"{tmp_path}/landing/**/*.jsonl"])) == [
        "day1.jsonl", "late/day2.jsonl"]
    with pytest.raises(PipelineError, match=r"/landing/events is a Delta Lake table"):
        list_shards([f"{tmp_path}/landing/**/*.parquet"])  # a glob that matches the table's files: refused, as before
    with pytest.raises(PipelineError, match=r"/landing/_archive/old is an Apache Iceberg table"):
        list_shards([str(iceberg / "data")])  # ... and the archived table named
    shutil.rmtree(table)  # the Delta table moved away: the folder holds the user's files and the archived table
    assert sorted(s.name for s in list_shards([str(tmp_path / "landing")])) == ["day1.jsonl", "late/day2.jsonl"]


def test_a_table_whose_files_the_input_format_does_not_read_refuses_nothing(tmp_path):
    """A folder is refused where a file it would read lies in a Delta Lake table, but under ``input.format: jsonl``
    (or ``openai-batch``) a landing folder of JSON lines beside a Delta table's folder was refused too, though the
    table's Parquet files are not read under that format (they are warned of as files not read): the user's own files
    could not be read, by folder or by ``landing/*``. Under ``auto``, which reads the Parquet, it is still refused."""
    write_jsonl(tmp_path / "landing" / "day1.jsonl", [{"id": "a", "text": "x"}])
    table = tmp_path / "landing" / "events"
    write_parquet(table / "part-00000-2dc9-c000.snappy.parquet", [{"id": 1, "text": "a"}])
    (table / "_delta_log").mkdir()
    (table / "_delta_log" / f"{0:020d}.json").write_text('{"commitInfo": {}}\n')
    for wanted in ("jsonl", "openai-batch"):
        for location in (tmp_path / "landing", f"{tmp_path}/landing/*"):
            assert [s.name for s in list_shards([str(location)], wanted)] == ["day1.jsonl"], (wanted, location)
    with pytest.raises(PipelineError, match=r"/landing/events is a Delta Lake table"):
        list_shards([str(tmp_path / "landing")])


def test_a_partition_folder_whose_key_starts_with_an_underscore_is_read_as_spark_reads_it(tmp_path):
    """Names starting with ``_`` are skipped as a writer's bookkeeping (``_temporary/``, ``_SUCCESS``), but a Hive
    partition folder's name holds a ``=``, and its key may start with one (``_ingest_date=2024-06-01``, an ingest
    tool's or BigQuery's ``_PARTITIONDATE``): Spark reads those (it skips a ``_`` name only without a ``=``), and here
    their files were left out without a word beside any other file of the folder. They are read as Spark reads them;
    a writer's ``_temporary/`` inside or above one is still skipped."""
    for name in ("_ingest_date=2024-06-01/part-0.jsonl", "_ingest_date=2024-06-02/part-0.jsonl", "date=x/part-0.jsonl",
                 "_ingest_date=2024-06-03/_temporary/0/part-0.jsonl", "_temporary/0/_k=v/part-0.jsonl"):
        write_jsonl(tmp_path / "data" / name, [{"id": name, "text": "words"}])
    want = ["_ingest_date=2024-06-01/part-0.jsonl", "_ingest_date=2024-06-02/part-0.jsonl", "date=x/part-0.jsonl"]
    assert [s.name for s in list_shards([str(tmp_path / "data")])] == want
    assert [s.name for s in list_shards([f"{tmp_path}/data/*/"])] == want
    assert [s.name for s in list_shards([f"{tmp_path}/data/**/*.jsonl"])] == want


def test_every_input_location_must_give_a_file(tmp_path):
    """A location in ``input.paths`` that gives no file was dropped without a word when another gave some: a
    ``data/b/*.jsonl`` over b's dated folders (``*`` stays within one folder) ran the job without b's rows. It
    is an error, as a path that does not exist is. A scheduled tick takes a glob or folder with nothing in it
    yet as no input, and still scores what the others give."""
    from pipelines.schedule.executor import current_shards

    write_jsonl(tmp_path / "a" / "x.jsonl", [{"id": "x", "text": "words"}])
    write_jsonl(tmp_path / "b" / "2024-01" / "y.jsonl", [{"id": "y", "text": "words"}])
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an input")
    paths = [f"{tmp_path}/a/*.jsonl", f"{tmp_path}/b/*.jsonl"]

    with pytest.raises(PipelineError, match=r"no .* files found under .*/b/\*\.jsonl; .* .*/b/\*\*/\*\.jsonl takes"):
        list_shards(paths)
    with pytest.raises(PipelineError, match=r"no .* files found under .*/empty;"):
        list_shards([f"{tmp_path}/a", f"{tmp_path}/empty"])
    assert [s.name for s in list_shards([f"{tmp_path}/a/*.jsonl", f"{tmp_path}/b/**/*.jsonl"])] == [
        "x.jsonl", "2024-01/y.jsonl"
    ]
    # the glob's only file is under output.path, which is never input: said so (it said "no files found")
    with pytest.raises(PipelineError, match=r"\*/x\.jsonl gives no file outside output\.path \(1 there"):
        list_shards([f"{tmp_path}/*/x.jsonl"], exclude=[str(tmp_path / "a")])

    def scheduled(*locations: str) -> list[str]:
        spec = spec_from_dict({"input": {"paths": list(locations)}, "model": {"name": "m"},
                               "task": {"type": "text-classification"}, "output": {"path": str(tmp_path / "out")}})
        return [s.name for s in current_shards(spec)]

    assert scheduled(*paths, f"{tmp_path}/empty") == ["x.jsonl"]
    with pytest.raises(PipelineError, match="notes.txt"):
        scheduled(*paths, f"{tmp_path}/notes.txt")  # a file it names must still be one to read


def test_a_question_mark_in_a_file_uri_is_a_wildcard(tmp_path):
    """``file:///data/part-?.jsonl`` is a glob, as the plain path is: pyarrow parsed a ``file://`` URI's ``?`` as
    the start of a query, so the glob looked for a file named ``part-`` and the run failed on a path that was
    never written."""
    for name in ("part-1.jsonl", "part-2.jsonl", "part-10.jsonl"):
        write_jsonl(tmp_path / "data" / name, [{"id": name, "text": "words"}])

    assert [s.name for s in list_shards([f"file://{tmp_path}/data/part-?.jsonl"])] == ["part-1.jsonl", "part-2.jsonl"]
    assert [s.name for s in list_shards([f"{tmp_path}/data/part-?.jsonl"])] == ["part-1.jsonl", "part-2.jsonl"]


def test_a_path_whose_name_holds_brackets_is_read_as_written_where_no_name_matches_it_as_a_glob(tmp_path):
    """``landing [team-a]/`` is a folder's name, but ``[team-a]`` is also a glob's set of characters, which matches
    only a one-letter name. It matched nothing, so a run refused the folder as holding no files (and offered a
    ``**`` glob, which matched nothing either), and a scheduled tick took it for a landing folder with nothing in it
    yet, every tick: its rows were never scored. As a shell does, a glob that matches nothing is the path as
    written, where that exists; an escaped glob (``[[]``) keeps its meaning, and a glob that matches nothing says how
    to write a ``[`` of a name."""
    write_jsonl(tmp_path / "in" / "landing [team-a]" / "a.jsonl", [{"id": "a", "text": "words"}])
    write_jsonl(tmp_path / "in" / "report [final].jsonl", [{"id": "r", "text": "words"}])
    folder = f"{tmp_path}/in/landing [team-a]"

    assert [s.name for s in list_shards([folder])] == ["a.jsonl"]
    assert [s.name for s in list_shards([folder], empty_is_no_input=True)] == ["a.jsonl"]  # a scheduled tick
    assert [s.name for s in list_shards([f"file://{folder}/"])] == ["a.jsonl"]
    assert [s.name for s in list_shards([f"{tmp_path}/in/report [final].jsonl"])] == ["report [final].jsonl"]
    assert [s.name for s in list_shards([f"{tmp_path}/in/landing [[]team-a]"])] == ["landing [team-a]/a.jsonl"]
    with pytest.raises(PipelineError, match=r"write \[\[\] for a \[ of a name"):
        list_shards([f"{tmp_path}/in/landing [team-b]"])


def test_made_ids_differ_for_files_of_one_name_in_two_folders(tmp_path):
    """With ``id_column: null`` ids are made from the file and the row: ``2024-01/part-0.jsonl`` and
    ``2024-02/part-0.jsonl`` are two shards, so their rows must not get the same ids (with
    ``errors.duplicate_ids: error`` the second shard's rows would all be quarantined as duplicates)."""
    from pipelines.io.reader import Columns, read_shard
    from pipelines.io.shards import list_shards

    for month in ("2024-01", "2024-02"):
        write_jsonl(tmp_path / "in" / month / "part-0.jsonl", [{"text": "a"}, {"text": "b"}])
    ids = [i for shard in list_shards([str(tmp_path / "in")])
           for block in read_shard(shard, Columns(text="text", id=None)) for i in block.column("id").to_pylist()]
    assert ids == ["2024-01/part-0.jsonl:0", "2024-01/part-0.jsonl:1", "2024-02/part-0.jsonl:0", "2024-02/part-0.jsonl:1"]


def test_a_commit_merges_only_the_staged_files_its_reports_name(tmp_path):
    # A failed run's actor may still stage a call's rows after the run has stopped (README, Resume): a
    # later commit of that shard must not take them in.
    output = OutputDir(str(tmp_path / "out"))
    shard = Shard(str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl"), "jsonl", False, 1, 1, "a.jsonl")
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    folder = tmp_path / "out" / "_staging" / shard.key
    folder.mkdir(parents=True)
    ours, stray = folder / "ours-data.parquet", folder / "stray-data.parquet"
    pq.write_table(pa.table({"id": ["r0", "r1"], "_row": [0, 1]}), ours)
    pq.write_table(pa.table({"id": ["r0", "r1"], "_row": [0, 1]}), stray)
    report = StagingReport(shard=shard.key, shard_rows=2, rows=2, errors=0, files=[str(ours)], row_ranges=[(0, 2)])
    output.commit(shard, [report], job)
    [part] = (tmp_path / "out").glob("part-*.parquet")
    assert pq.read_table(part).column("id").to_pylist() == ["r0", "r1"]
    assert not folder.exists()


def test_every_reader_sees_each_shard_whole_or_not_at_all_at_every_step_of_the_writer(tmp_path):
    """README (Guarantees: a shard appears whole or not at all; what --overwrite deletes): pyarrow, pandas, Polars and
    DuckDB, read as the README says, after each rename, copy and delete of a commit, of a crash's roll-forward, of
    _SUCCESS, of --prune and of --overwrite: each shard's rows all or none, none twice, never a staged block (of a
    shard not committed) or a quarantined row taken as data. A reader holding a listing across a delete fails on it."""
    import duckdb
    import polars
    import pyarrow.dataset as ds
    from helpers import Watched, readers_see, staged_shard

    out = tmp_path / "out"
    output = OutputDir(str(out))
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    output.start(job)
    shards = {"a": ["a0", "a1"], "b": ["b0", "b1", "b2"], "c": ["c0", "c1"], "d": ["d0"]}
    looks: list[dict[str, list]] = []

    def look() -> None:
        seen = readers_see(out)
        looks.append(seen)
        assert len({tuple(ids) for ids in seen.values()}) == 1, seen  # every reader reads the same rows
        ids = next(iter(seen.values()))
        whole = sorted(i for rows in shards.values() if set(rows) & set(ids) for i in rows)
        assert ids == whole, seen  # whole shards, each once: no staged block, no quarantined row

    a, report = staged_shard(output, tmp_path, "a", shards["a"])
    output.commit(a, [report], job)
    watched = Watched()
    watched.look = look
    output.fs = watched
    staged_shard(output, tmp_path, "c", shards["c"][:1])  # half of c staged, never committed
    b, report = staged_shard(output, tmp_path, "b", shards["b"], bad="bad-b")
    output.commit(b, [report], job)
    d, report = staged_shard(output, tmp_path, "d", shards["d"], bad="bad-d")

    def killed(shard: Shard) -> None:
        raise KeyboardInterrupt  # stands for the driver killed between the commit record and the renames

    with pytest.raises(KeyboardInterrupt):
        output.commit(d, [report], job, before_visible=killed)
    assert readers_see(out)["pandas"] == ["a0", "a1", "b0", "b1", "b2"]
    # README (the output): the glob for Polars and DuckDB, not the folder, which Polars refuses and DuckDB reads whole
    with pytest.raises(polars.exceptions.InvalidOperationError, match="glob"):
        polars.read_parquet(out)
    assert {"c0", "bad-b", "d0"} <= {row[0] for row in duckdb.sql(f"select id from read_parquet('{out}')").fetchall()}
    output.start(job)  # the resume: rolls d forward, deletes c's staged block
    output.finish()
    assert readers_see(out)["duckdb"] == ["a0", "a1", "b0", "b1", "b2", "d0"]
    listed = ds.dataset(str(out), format="parquet")
    output.unfinish()
    output.forget(output.commits()[a.key])  # --prune of a
    assert readers_see(out)["polars"] == ["b0", "b1", "b2", "d0"]
    output.clear()  # --overwrite
    assert readers_see(out)["pyarrow.parquet"] == []
    assert len(looks) > 20
    with pytest.raises(FileNotFoundError):  # a listing made before the deletes: an error, not part of the rows
        listed.to_table()


def test_prune_takes_success_away_before_it_deletes_a_shard(tmp_path, monkeypatch):
    """--prune deletes the output of shards whose input is gone, and a run's start the commit of a shard whose
    files are gone: a reader that waits for _SUCCESS must not find it while that happens (it is written again
    when the run finishes)."""
    from pipelines.runner import _handle_stale

    output = OutputDir(str(tmp_path / "out"))
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    for name in ("a", "b"):
        shard = Shard(str(tmp_path / f"{name}.jsonl"), str(tmp_path / f"{name}.jsonl"), "jsonl", False, 1, 1,
                      f"{name}.jsonl")
        staged = tmp_path / "out" / "_staging" / shard.key / "data.parquet"
        staged.parent.mkdir(parents=True)
        pq.write_table(pa.table({"id": [f"{name}0"], "_row": [0]}), staged)
        output.commit(shard, [StagingReport(shard=shard.key, shard_rows=1, rows=1, errors=0, files=[str(staged)],
                                            row_ranges=[(0, 1)])], job)
    output.finish()
    committed = output.committed()
    stale = [r for r in committed.values() if r.input.name == "b.jsonl"]
    forget, seen = OutputDir.forget, []

    def forget_and_look(self, record):
        forget(self, record)
        seen.append((tmp_path / "out" / "_SUCCESS").exists())

    monkeypatch.setattr(OutputDir, "forget", forget_and_look)
    _handle_stale(output, stale, committed, prune=True, dry=True)  # the look before the lock: changes nothing
    assert (tmp_path / "out" / "_SUCCESS").exists() and seen == []
    left = _handle_stale(output, stale, committed, prune=True, dry=False)
    assert [r.input.name for r in left.values()] == ["a.jsonl"]
    assert seen == [False]

    # a run's start drops the commit of a shard whose file is gone (deleted by hand): _SUCCESS went first
    output.finish()
    [part] = (tmp_path / "out").glob("part-*.parquet")
    part.unlink()
    output.start(job)
    assert seen == [False, False] and not output.commits()


def test_a_dropped_commit_leaves_no_empty_errors_folder(tmp_path):
    """README: there is no _errors/ where nothing was quarantined. A run's start drops the commit of a shard whose
    part file is gone (deleted by hand), with its quarantined rows: the emptied _errors/ folder stayed, and pandas and
    pyarrow read it as a table of no columns (`df["reason"]`: KeyError)."""
    from helpers import staged_shard

    output = OutputDir(str(tmp_path / "out"))
    job = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")
    shard, report = staged_shard(output, tmp_path, "a", ["a0"], bad="a1")
    output.commit(shard, [report], job)
    assert len(list((tmp_path / "out" / "_errors").iterdir())) == 1
    [part] = (tmp_path / "out").glob("part-*.parquet")
    part.unlink()
    output.start(job)
    assert not output.commits() and not (tmp_path / "out" / "_errors").exists()


def test_a_kept_category_column_reads_as_one_table_after_a_resume(ray_session, tiny_models, tmp_path):
    """A pandas category is a dictionary with the narrowest indices its values need: int8 for 3 values, int16
    for 200. The first run fixed the column's type as dictionary<int8>; the resume's shard could not be cast to
    it and was written as dictionary<int16>, and pyarrow and pandas then failed to read the output folder
    ("Integer value 128 not in range: -128 to 127")."""
    import duckdb
    import pandas as pd
    import polars as pl

    def write(name: str, prefix: str, values: list[str]) -> None:
        frame = pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(values))],
                              "text": [SENTENCES[i % len(SENTENCES)] for i in range(len(values))],
                              "country": pd.Categorical(values)})
        frame.to_parquet(tmp_path / "in" / name, index=False)

    (tmp_path / "in").mkdir()
    write("day1.parquet", "a", ["de", "fr", "de"])
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   input={"columns_to_keep": ["country"]}, output={"prediction_prefix": "p_"})
    run_job(spec)
    write("day3.parquet", "b", [f"c{i}" for i in range(200)])
    run_job(spec)

    out = tmp_path / "out"
    expected = {"a0": "de", "a1": "fr", "a2": "de", **{f"b{i}": f"c{i}" for i in range(200)}}
    [recorded] = {pq.read_schema(part).field("country").type for part in sorted(out.glob("*.parquet"))}
    assert recorded == pa.string()
    table = pq.read_table(out)
    assert dict(zip(table.column("id").to_pylist(), table.column("country").to_pylist())) == expected
    frame = pd.read_parquet(out)
    assert dict(zip(frame["id"], frame["country"])) == expected
    assert dict(pl.read_parquet(str(out / "*.parquet")).select("id", "country").iter_rows()) == expected
    assert dict(duckdb.sql(f"select id, country from read_parquet('{out}/*.parquet')").fetchall()) == expected



def test_an_output_that_recorded_a_dictionary_keeps_it_exactly(tmp_path):
    """An output begun before a dictionary was recorded as its values' type may hold dictionary<int8>: a shard
    with more distinct values than int8 indices point at was written with int16 ones. Now each file has the
    recorded type, and the values past its room are row errors."""
    table = pa.table({"id": [f"b{i}" for i in range(200)], "text": ["t"] * 200,
                      "country": pa.array([f"c{i}" for i in range(200)]).dictionary_encode()})
    pq.write_table(table, tmp_path / "day3.parquet")
    [shard] = list_shards([str(tmp_path / "day3.parquet")])
    recorded = pa.dictionary(pa.int8(), pa.string())
    columns = Columns(text="text", id="id", keep=("country",), keep_types=(("country", recorded),))
    blocks = list(read_shard(shard, columns))
    assert {block.schema.field("country").type for block in blocks} == {recorded}
    rows = sorted((r for block in blocks for r in block.to_pylist()), key=lambda r: r[ROW])
    assert [r["country"] for r in rows[:128]] == [f"c{i}" for i in range(128)]
    assert all(r[ERROR] is None for r in rows[:128])
    assert all(r["country"] is None and r[ERROR].startswith("schema differs: column 'country'") for r in rows[128:])


def test_a_kept_list_column_stays_a_list_whatever_wrote_its_shards(tmp_path):
    """Parquet writers name and size a list's items differently: pyarrow's legacy layout ``list<item>``, the
    compliant ``list<element>``, a required ``element not null``, Polars' ``large_list<large_string>``. Their
    types were compared exactly, so the same lists of numbers or strings became their JSON text."""
    numbers = pa.array([[1, 2], None, [3]], pa.list_(pa.int64()))
    strict = pa.list_(pa.field("element", pa.int64(), nullable=False))
    files = {
        "legacy": (numbers, ["x"], {"use_compliant_nested_type": False}),
        "modern": (numbers, ["y"], {}),
        "required": (pa.array([[4], [5, 6], []], strict), ["z"], {}),
        "large": (pa.array([[7], None, [8, 9]], pa.large_list(pa.int64())), ["w"], {}),
    }
    for name, (lists, word, options) in files.items():
        words = pa.array([word, None, [*word, "v"]], pa.large_list(pa.large_string()) if name == "large" else None)
        table = pa.table({"id": [f"{name}{i}" for i in range(3)], "text": ["t"] * 3, "lst": lists, "tags": words})
        pq.write_table(table, tmp_path / f"{name}.parquet", **options)
    shards = list_shards([str(tmp_path)])
    columns = Columns(text="text", id="id", keep=("lst", "tags"))
    types = reference_types(shards, columns)
    assert types == {"lst": pa.list_(pa.field("element", pa.int64())), "tags": pa.list_(pa.field("element", pa.string()))}
    typed = dataclasses.replace(columns, keep_types=tuple(types.items()))
    got = {}
    for shard in shards:
        for block in read_shard(shard, typed):
            assert block.schema.field("lst").type == types["lst"], shard.path
            assert block.schema.field("tags").type == types["tags"], shard.path
            got.update((r["id"], (r["lst"], r["tags"])) for r in block.to_pylist() if r[ERROR] is None)
    for name, (lists, word, _) in files.items():
        expected = list(zip(lists.to_pylist(), [word, None, [*word, "v"]]))
        assert [got[f"{name}{i}"] for i in range(3)] == expected, name
    strict_struct = pa.struct([pa.field("a", pa.int64(), nullable=False), pa.field("b", pa.large_string())])
    assert unify_types([strict_struct, pa.struct([("a", pa.int32()), ("b", pa.string())])]) == pa.struct(
        [("a", pa.int64()), ("b", pa.string())])
    assert unify_types([pa.struct([("a", pa.int64())]), pa.struct([("b", pa.int64())])]) == pa.string()
    assert unify_types([pa.list_(pa.int64()), pa.list_(pa.struct([("a", pa.int64())]))]) == pa.string()


def test_a_kept_time_column_stays_a_time_whatever_unit_or_zone_its_writers_used(tmp_path):
    """pandas writes timestamps in nanoseconds, Spark and pyarrow in microseconds, and a shard may carry the writer's
    time zone: such types were compared exactly, so the column became text, formatted per file
    (`10:00:00.000000000Z` beside `11:00:00.000000+0100` for the same instant), and sorted or compared wrong."""
    at = datetime.datetime(2024, 1, 1, 10, tzinfo=datetime.UTC)
    files = {"pandas": pa.timestamp("ns", "UTC"), "spark": pa.timestamp("us", "UTC"),
             "berlin": pa.timestamp("us", "Europe/Berlin")}
    for name, type_ in files.items():
        table = pa.table({"id": [name], "text": ["t"], "at": pa.array([at], type_)})
        pq.write_table(table, tmp_path / f"{name}.parquet")
    types, rows = _kept([tmp_path / f"{name}.parquet" for name in files], ("at",))
    assert types == {"at": pa.timestamp("ns", "UTC")}
    assert {i: r for i, r in rows.items()} == {name: (None, at) for name in files}
    assert unify_types([pa.timestamp("us"), pa.timestamp("us", "UTC")]) == pa.string()  # a local time: no instant
    assert unify_types([pa.timestamp("s"), pa.timestamp("ms")]) == pa.timestamp("ms")


def test_the_rows_of_a_damaged_gzip_file_are_counted_across_its_members(tmp_path):
    """A .jsonl.gz may be several gzip members one after the other (appended with ``cat``, or written in parts).
    The count of a file cut in its third member stopped at the end of the first: 5 rows, marked exact, where
    zcat reads 11 lines before the damage."""
    from pipelines.io.reader import count_rows

    def member(prefix: str, rows: int) -> bytes:
        return gzip.compress(b"".join(json.dumps({"id": f"{prefix}{i}", "text": "t"}).encode() + b"\n"
                                      for i in range(rows)))

    def head(data: bytes) -> bytes:
        return zlib.decompressobj(wbits=31).decompress(data)

    third = member("c", 3)  # cut through its first line and into the second
    cut = next(third[:n] for n in range(len(third)) if re.fullmatch(rb"[^\n]+\n[^\n]+", head(third[:n])))
    (tmp_path / "cut.jsonl.gz").write_bytes(member("a", 5) + member("b", 5) + cut)
    (tmp_path / "whole.jsonl.gz").write_bytes(member("a", 5) + member("b", 5) + member("c", 3))
    counted = {s.path.rsplit("/", 1)[-1]: count_rows(s) for s in list_shards([str(tmp_path)])}
    assert counted == {"cut.jsonl.gz": (11, False), "whole.jsonl.gz": (13, True)}

    # Damage the check finds only at a member's end (its CRC wrong: zcat gives every line, then fails) left out the
    # lines of the piece that ran into it: all of a small file's (rows unknown), where zcat reads 50
    whole = member("d", 50)
    (tmp_path / "crc.jsonl.gz").write_bytes(whole[:-8] + b"\0\0\0\0" + whole[-4:])
    [shard] = list_shards([str(tmp_path / "crc.jsonl.gz")])
    assert count_rows(shard) == (50, False)
    counted = plan_count_rows(shard)
    assert (counted.count, counted.rows) == ("unreadable", 50), counted


def test_a_damaged_gzip_file_cut_inside_an_object_over_several_lines_counts_the_rows_before_it(tmp_path):
    """The rows told of a damaged .jsonl.gz are a lower bound: the whole rows before the damage. An object written
    over several lines after JSON lines is one row of them where it ends before the damage, and none where the damage
    cuts it (its lines, each counted as a row, made the bound too high)."""
    from pipelines.io.reader import count_rows

    body = b'{"id": "a", "text": "x"}\n' + b"".join(
        json.dumps({"id": f"p{i}", "text": f"t{i}", "tags": list(range(20))}, indent=2).encode() + b"\n"
        for i in range(3))
    third = body.rindex(b"{\n")
    before = body[: body.index(b"\n", body.index(b"\n", third) + 1) + 5]  # into the third object's third line
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(before) + gzip.compress(body[len(before):])[:12])
    [shard] = list_shards([str(tmp_path / "cut.jsonl.gz")])
    assert count_rows(shard) == (3, False)


def test_an_empty_gz_file_is_unreadable_as_a_truncated_one_is_not_a_shard_of_no_rows(tmp_path):
    """A 0-byte ``x.jsonl.gz`` (an upload that failed) is no gzip stream, as ``gzip -t`` says, but it was read as a
    shard of no rows and committed so: the real file uploaded later under its name was then refused as changed input
    (``pipelines run``), where a truncated one fails the run, is not committed, and its real upload is scored. It is
    now an unreadable file, rows unknown, as a truncated one is (and ``pipelines plan`` says so); a 0-byte ``.jsonl``
    is still an empty file of no rows."""
    from pipelines.planning.inputs import count_rows as plan_count

    (tmp_path / "upload.jsonl.gz").write_bytes(b"")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"id": "z", "text": "t"}\n')[:15])
    (tmp_path / "empty.jsonl").write_bytes(b"")
    shards = {s.name: s for s in list_shards([str(tmp_path)])}
    for name in ("upload.jsonl.gz", "cut.jsonl.gz"):
        [record] = [r for block in read_shard(shards[name], Columns(text="text", id="id")) for r in block.to_pylist()]
        assert record[ROW] == -1 and record[ERROR].startswith("unreadable jsonl file: "), (name, record)
        assert reader_count_rows(shards[name]) == (None, False)
        planned = plan_count(shards[name])
        assert planned.count == "unreadable" and planned.error.endswith("rows unknown"), (name, planned)
    assert "empty (0 bytes)" in plan_count(shards["upload.jsonl.gz"]).error
    assert [b.num_rows for b in read_shard(shards["empty.jsonl"], Columns(text="text", id="id"))] in ([], [0])
    assert reader_count_rows(shards["empty.jsonl"]) == (0, True)


A_JOB = JobRecord(spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu", task="t")


def budget_spec(errors: dict) -> JobSpec:
    """A job whose error budget is ``errors``, for error_policy_violation (nothing is read or run)."""
    return spec_from_dict({"input": {"paths": ["in"]}, "model": {"name": "m"}, "task": {"type": "text-classification"},
                           "output": {"path": "out"}, "errors": errors})


# README, Files that cannot be read: "The job fails ... when the quarantined share passes errors.max_rate (default
# 10%) or the count passes errors.max_count". No test set max_count; this one holds.
def test_the_error_count_budget_fails_past_max_count_and_not_at_it():
    from pipelines.runner import error_policy_violation

    spec = budget_spec({"max_rate": 1.0, "max_count": 2})
    base = summaries.build(A_JOB, [], [], 0.0, "succeeded")
    at = base.model_copy(update={"rows_in": 100, "errors": 2, "error_rate": 0.02, "error_reasons": {"text is null": 2}})
    past = at.model_copy(update={"errors": 3, "error_rate": 0.03, "error_reasons": {"text is null": 3}})
    assert error_policy_violation(spec, at) is None
    problem = error_policy_violation(spec, past)
    assert problem and "3 of 100 rows were quarantined" in problem and "errors.max_count=2" in problem
    assert "text is null: 3" in problem
    unknown = past.model_copy(update={"error_reasons": {"text is null": 3, "unreadable jsonl file": 0}})
    problem = error_policy_violation(spec, unknown)  # a file quarantined whole whose rows nobody can count
    assert problem and "(text is null: 3, unreadable jsonl file: rows unknown)" in problem, problem  # it said 0



# README, What is retried: "The job fails ... when the quarantined share passes errors.max_rate". The share compared
# was _run.json's error_rate, rounded to 6 places: with max_rate 0 (no bad row allowed), 1 quarantined row among
# 2,000,001 rounded to 0.0 and the job succeeded; so too any share up to 5e-7 past another limit.
def test_the_error_rate_budget_fails_past_max_rate_even_where_the_rounded_share_does_not_show_it():
    from pipelines.runner import error_policy_violation

    spec = budget_spec({"max_rate": 0.0})
    one = summaries.build(A_JOB, [], [], 0.0, "succeeded").model_copy(update={
        "rows_in": 2_000_001, "errors": 1, "error_rate": round(1 / 2_000_001, 6), "error_reasons": {"text is null": 1}})
    assert one.error_rate == 0.0  # what _run.json records
    problem = error_policy_violation(spec, one)
    assert problem and "1 of 2000001 rows were quarantined" in problem and "errors.max_rate=0.0" in problem
    tenth = spec.model_copy(update={"errors": spec.errors.model_copy(update={"max_rate": 0.1})})
    over = one.model_copy(update={"rows_in": 10_000_000, "errors": 1_000_004, "error_rate": 0.1})  # 10.00004%
    assert error_policy_violation(tenth, over)
    at = over.model_copy(update={"errors": 1_000_000})
    assert error_policy_violation(tenth, at) is None
    # at the limit exactly, where max_rate * rows_in rounds below the count (0.29 * 100 is 28.999999999999996)
    limit = spec.model_copy(update={"errors": spec.errors.model_copy(update={"max_rate": 0.29})})
    assert error_policy_violation(limit, one.model_copy(update={"rows_in": 100, "errors": 29})) is None
    assert error_policy_violation(limit, one.model_copy(update={"rows_in": 100, "errors": 30}))


# README, Re-running: "Re-running a finished job writes nothing and says `up to date`"; One run at a time: "A finished
# job's `up to date` answer takes no lock, but where another run holds it the answer is that run's busy line". The
# tests that re-run a finished job check its status only; this one checks that no file under the output is written,
# created or deleted, by the answer, or by the busy one while another process holds the output's lock.
def test_a_finished_job_is_up_to_date_without_writing_or_locking(tmp_path, monkeypatch):
    import pipelines.runner
    from pipelines.io.shards import list_shards
    from pipelines.output.layout import RUN
    from pipelines.output.lock import JobLock

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a0", "text": SENTENCES[0]}, {"id": "a1", "text": SENTENCES[1]}])
    (tmp_path / "model").mkdir()
    spec = spec_from_dict({
        "input": {"paths": [str(tmp_path / "in")]}, "model": {"name": str(tmp_path / "model")},
        "task": {"type": "text-classification"}, "output": {"path": str(tmp_path / "out")},
    })
    monkeypatch.setattr(pipelines.runner, "preflight", lambda spec: None)  # no model is loaded to answer
    job = pipelines.runner.job_record(spec)
    [shard] = list_shards(spec.input.paths)
    output = OutputDir(spec.output.path)
    output.start(job)
    staged = tmp_path / "out" / "_staging" / shard.key / "block-data.parquet"
    staged.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a0", "a1"], "_row": [0, 1]}), staged)
    record = output.commit(shard, [StagingReport(shard=shard.key, shard_rows=2, rows=2, errors=0, files=[str(staged)],
                                                 row_ranges=[(0, 2)])], job)
    output.write_json(RUN, summaries.build(job, [record], [record], 1.0, "succeeded").to_json())
    output.finish()
    before = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    with JobLock(tmp_path / "out" / "_run.lock", "the output"):  # another run holds the lock meanwhile
        with pytest.raises(LockHeld):  # it may be deleting the output (--overwrite): busy, not up to date
            pipelines.runner.run_job(spec)
    assert pipelines.runner.run_job(spec).status == "up to date"
    before.pop(str(tmp_path / "out" / "_run.lock"), None)  # the other run's own lock file
    after = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.name != "_run.lock"}
    assert after == before


def test_a_resume_refused_for_another_spec_names_the_settings_that_changed_the_results(tmp_path, monkeypatch):
    """`--set batching.max_length=256` changes results (it is in the spec hash), `batching.batch_size` does not; a
    model folder written relative to another working directory is another model.name. The refusal names what
    changed, and what it was, so the user can put it back and resume instead of scoring everything again."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a0", "text": SENTENCES[0]}])
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    raw = {"input": {"paths": [str(tmp_path / "in")]}, "model": {"name": "model"},
           "task": {"type": "text-classification"}, "output": {"path": str(tmp_path / "out")}}
    spec = spec_from_dict(raw)
    [shard] = list_shards(spec.input.paths)
    commit_by_hand(spec, shard, ["a0"])

    changed = spec_from_dict({**raw, "batching": {"batch_size": 8, "max_length": 256}})
    with pytest.raises(PipelineError) as refused:
        resume_state(changed, [shard])
    said = str(refused.value)
    assert "different job spec" in said and "batching.max_length is 256 here, 512 in the output" in said, said
    assert "batch_size" not in said and "set it back to resume" in said

    moved = spec_from_dict({**raw, "model": {"name": str(tmp_path / "model")}})
    with pytest.raises(PipelineError, match=f'model.name is "{tmp_path / "model"}" here, "model" in the output'):
        resume_state(moved, [shard])
    assert resume_state(spec_from_dict({**raw, "batching": {"batch_size": 8}}), [shard])[0] == []


def commit_by_hand(spec, shard: Shard, ids: list[str], **kept: list) -> None:
    """A shard of ``spec`` committed as a run commits it (its rows staged by hand: no model, no Ray)."""
    from pipelines.runner import job_record

    output, job = OutputDir(spec.output.path), job_record(spec)
    output.start(job)
    staged = Path(output.root) / "_staging" / shard.key / "block-data.parquet"
    staged.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, **kept, "label": ["pos"] * len(ids), "_row": range(len(ids))}), staged)
    output.commit(shard, [StagingReport(shard=shard.key, shard_rows=len(ids), rows=len(ids), errors=0,
                                        files=[str(staged)], row_ranges=[(0, len(ids))])], job)
    output.finish()


def test_each_file_a_run_writes_is_flushed_to_the_disk_before_it_is_named_and_its_folder_after(tmp_path, monkeypatch):
    """Files were written to a temporary name and renamed into place, but never flushed (``fsync``): after a power
    cut or a kernel crash (the README's "the machine rebooted"), ext4 and XFS may bring a renamed file back empty,
    a commit record or a part file among them, a shard committed with no rows. Each file (the staged blocks, the
    merged part files, the commit records, ``_job.json``, ``_run.json``, ``_SUCCESS``) is now flushed under its
    temporary name before the rename, and its folder after it."""
    from pipelines.output import layout

    events: list[tuple[str, str]] = []
    fsync, move = os.fsync, pa.fs.LocalFileSystem.move

    def flushing(handle: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{handle}")))
        fsync(handle)

    class Recording(pa.fs.LocalFileSystem):
        def move(self, src: str, dest: str) -> None:
            events.append(("move", dest))
            move(self, src, dest)

    monkeypatch.setattr(os, "fsync", flushing)
    monkeypatch.setattr(pa.fs, "LocalFileSystem", Recording)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a0", "text": "x"}])
    spec = spec_from_dict({"input": {"paths": [str(tmp_path / "in")]}, "model": {"name": str(tmp_path / "model")},
                           "task": {"type": "text-classification"}, "output": {"path": str(tmp_path / "out")}})
    [shard] = list_shards(spec.input.paths)
    from pipelines.runner import job_record

    output, job = OutputDir(spec.output.path), job_record(spec)
    output.start(job)
    staged = f"{output.root}/_staging/{shard.key}/block-data.parquet"
    output.fs.create_dir(staged.rsplit("/", 1)[0])
    layout.write_parquet(output.fs, staged, pa.table({"id": ["a0"], "label": ["pos"], "_row": [0]}), "zstd")
    output.commit(shard, [StagingReport(shard=shard.key, shard_rows=1, rows=1, errors=0, files=[staged],
                                        row_ranges=[(0, 1)])], job)
    output.write_json(layout.RUN, {"status": "succeeded"})
    output.finish()
    written = [dest for kind, dest in events if kind == "move" and dest.startswith(output.root)]
    assert {Path(p).name for p in written} >= {"block-data.parquet", f"{shard.key}.json", "_job.json", "_run.json",
                                               "_SUCCESS"} and any(Path(p).name.startswith("part-") for p in written)
    for dest in written:
        moved = events.index(("move", dest))
        staged_as = [p for kind, p in events[:moved] if kind == "fsync" and p.startswith(f"{dest}.")] or [
            p for kind, p in events[:moved] if kind == "fsync" and "/_staging/" in p]  # a part file: merged there
        assert staged_as, f"{dest} renamed into place before its bytes were flushed"
        if Path(dest).name.startswith("part-"):
            continue  # moved from _staging/: made durable by the folder flush of the next file written (journal)
        assert ("fsync", str(Path(dest).parent)) in events[moved:], f"{dest}'s folder not flushed after its rename"


def test_another_jobs_output_inside_the_input_folder_is_refused_not_read_as_input(tmp_path):
    """Outputs kept beside the input (data/scored, then data/scored_v2 for another model): the first job's output
    is left out of its own input, but a job with another output.path would read data/scored's part files as input
    files, and score their rows (the text kept) a second time into its output, or quarantine each of them. It is
    refused before any work, naming the folder; an output named as the input, by its folder or a glob, is read."""
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"id": "a0", "text": SENTENCES[0]}, {"id": "a1", "text": SENTENCES[1]}])
    (tmp_path / "model").mkdir()
    raw = {"input": {"paths": [str(tmp_path / "data")], "columns_to_keep": ["text"]},
           "model": {"name": str(tmp_path / "model")}, "task": {"type": "text-classification"},
           "output": {"path": str(tmp_path / "data" / "scored")}}
    first = spec_from_dict(raw)
    [shard] = list_shards(first.input.paths, exclude=[first.output.path])
    commit_by_hand(first, shard, ["a0", "a1"], text=SENTENCES[:2])
    assert [s.name for s in resume_state(first, [shard])[0]] == []  # its own output is no input of its own

    second = spec_from_dict({**raw, "output": {"path": str(tmp_path / "data" / "scored_v2")}})
    shards = list_shards(second.input.paths, exclude=[second.output.path])
    with pytest.raises(PipelineError) as refused:
        resume_state(second, shards)
    said = str(refused.value)
    assert f"{tmp_path / 'data' / 'scored'} is another job's output" in said and "move it out" in said, said

    for named in (str(tmp_path / "data" / "scored"), f"{tmp_path / 'data' / 'scored'}/*.parquet"):
        chained = spec_from_dict({**raw, "input": {"paths": [named], "columns_to_keep": ["text"]},
                                  "output": {"path": str(tmp_path / "chained")}})
        [part] = list_shards(chained.input.paths, exclude=[chained.output.path])
        assert resume_state(chained, [part])[0] == [part]


def test_a_scheduled_root_read_as_input_is_looked_at_once_not_once_per_partition(tmp_path, monkeypatch):
    """The check for another job's output in an input folder looked, for each folder holding part files, at the
    folder's _job.json and at the input location's _job.json and _runs.jsonl again: a scheduled job's root read as
    a later job's input (which is read) cost three requests per partition on a store, at every run and every tick
    (3,000 HEAD requests for a thousand partitions). The location is looked at once, and only where it is no output
    are its folders; another job's outputs in a plain folder are still each found."""
    import pyarrow.fs as pafs

    from pipelines.output.layout import outputs_in_input

    looked: list[str] = []
    local = pafs.LocalFileSystem()

    class Counting:
        def get_file_info(self, paths):
            looked.extend(paths)
            return local.get_file_info(paths)

    def layout_of(root: Path, partitions: int, marks: tuple[str, ...]) -> None:
        for mark in marks:
            (root / mark).parent.mkdir(parents=True, exist_ok=True)
            (root / mark).write_text("{}")
        for n in range(partitions):
            (root / f"p{n:03d}").mkdir(parents=True)
            (root / f"p{n:03d}" / "_job.json").write_text("{}")
            (root / f"p{n:03d}" / "part-0123456789ab-00000.parquet").write_bytes(b"x")

    layout_of(tmp_path / "nightly", 40, ("_runs.jsonl",))
    layout_of(tmp_path / "data", 3, ())
    monkeypatch.setattr(Shard, "filesystem", lambda self: Counting())
    assert outputs_in_input(list_shards([str(tmp_path / "nightly")])) == []
    assert len(looked) == 2, len(looked)
    looked.clear()
    found = outputs_in_input(list_shards([str(tmp_path / "data")]))
    assert [s.name for s in found] == [f"p{n:03d}/part-0123456789ab-00000.parquet" for n in range(3)]
    assert len(looked) == 2 + 3, looked


def test_a_path_that_starts_with_a_tilde_is_in_the_home_directory_for_the_driver_and_the_workers(tmp_path, monkeypatch):
    """`output.path: ~/scored/news` in a spec (where no shell expands the ~) wrote to a folder named ~ in the working
    directory, another one from each directory the job was run from (each scoring everything again), while the
    user looked in their home; `input.paths: [~/data]` was said not to exist. Both are in the home directory, as
    model.name and model.cache_dir are, for the driver and for the pool's actors alike."""
    from pipelines.cluster.connect import worker_spec

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    write_jsonl(home / "data" / "a.jsonl", [{"id": "a0", "text": SENTENCES[0]}])
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    spec = spec_from_dict({"input": {"paths": ["~/data"]}, "model": {"name": "m"},
                           "task": {"type": "text-classification"}, "output": {"path": "~/scored/news"}})
    check_paths(spec)
    assert [s.path for s in list_shards(spec.input.paths, exclude=[spec.output.path])] == [
        str(home / "data" / "a.jsonl")]
    assert OutputDir(spec.output.path).root == str(home / "scored" / "news")
    assert worker_spec(spec)["output"]["path"] == str(home / "scored" / "news")
    assert not (elsewhere / "~").exists()


def test_a_model_folder_that_starts_with_a_tilde_is_in_the_home_directory(tiny_models, tmp_path, monkeypatch):
    """`model.name: ~/models/classifier` was taken for a hub id by the driver (a folder named ~ here does not exist),
    and the pool's actors were given it as written (an absolute path once ~ is expanded, so left alone): the folder in
    the home, as `output.path: ~/…` is, for the driver's checks, the model's load and the actors alike."""
    from pipelines.cluster.connect import worker_spec
    from pipelines.inference.aliases import resolve_name
    from pipelines.inference.checks import check_model_files

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "models").mkdir(parents=True)
    shutil.copytree(tiny_models("classifier"), home / "models" / "classifier")
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    spec = spec_from_dict({"input": {"paths": ["data"]}, "model": {"name": "~/models/classifier"},
                           "task": {"type": "text-classification"}, "output": {"path": "out"}})
    folder = str(home / "models" / "classifier")
    assert resolve_name(spec.model) == folder
    check_model_files(spec.model, resolve_name(spec.model))
    assert worker_spec(spec)["model"]["name"] == folder
    assert spec.model.name == "~/models/classifier"  # the spec keeps it as written (its hash too)


def test_a_folder_gone_while_the_input_is_listed_gives_no_files_not_an_error(tmp_path):
    """A landing folder's sub-folder removed by its cleanup while a tick lists it (between the walk finding it and
    listing it) was skipped by pyarrow's listing; the walk that follows links raised FileNotFoundError for it, failing
    the tick. It is a folder with no files."""
    import pyarrow.fs as pafs

    from pipelines.io.shards import _files_under

    assert _files_under(pafs.LocalFileSystem(), str(tmp_path / "gone")) == []


def test_a_sampling_option_left_to_the_model_and_the_same_option_written_out_are_not_resumed_as_one_job(
    ray_session, tiny_models, tmp_path
):
    """``temperature`` left out means the model's generation config's value (0.7 here), but hashes as 1.0 (what it
    meant before, so that outputs written then keep their hash). So an output sampled at the model's 0.7 was resumed,
    as the same job, by a spec that writes ``temperature: 1.0``, and an output an earlier version sampled at 1.0 by a
    spec that leaves it out: two temperatures in one output, without a word. Both are refused before any work; the
    spec as it was resumes."""
    model = tmp_path / "model"
    shutil.copytree(tiny_models("causal"), model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.7}))
    many_shards(tmp_path / "in", shards=2, rows=3)
    task = {"type": "text-generation", "do_sample": True, "max_new_tokens": 4}
    spec = spec_of(write_job(tmp_path, str(model), tmp_path / "in", task=task))
    run_job(spec)
    many_shards(tmp_path / "more", shards=3, rows=3)
    (tmp_path / "more" / "part-2.jsonl").rename(tmp_path / "in" / "part-2.jsonl")  # new input to score
    written = spec_of(write_job(tmp_path, str(model), tmp_path / "in", task={**task, "temperature": 1.0}))
    refused = r"task.temperature is 1.0 here and the model's 0.7 in the output \(left out there\)"
    with pytest.raises(PipelineError, match=refused):
        run_job(written)
    recorded = json.loads((tmp_path / "out" / "_job.json").read_text())
    as_before = {**recorded, "spec": {**recorded["spec"], "task": {**recorded["spec"]["task"], "temperature": 1.0}}}
    (tmp_path / "out" / "_job.json").write_text(json.dumps(as_before))  # as an earlier version recorded the job
    with pytest.raises(PipelineError, match=r"task.temperature is the model's 0.7 here \(left out\) and 1.0 in the "
                                            r"output; set task.temperature: 1.0 to resume"):
        run_job(spec)
    resumed = run_job(written)  # written out as the output was scored: resumed
    assert resumed.status == "succeeded" and resumed.shards_this_run == 1
    assert len(list((tmp_path / "out" / "_commits").glob("*.json"))) == 3


def test_an_unreadable_files_commit_record_names_no_precision(ray_session, tiny_models, tmp_path):
    """README: a shard's commit record names the precision its rows were scored at, "null for a shard no actor scored,
    an empty or unreadable file". An unreadable file's one error record passes through a pool actor, which stamped
    its own precision on it: the record of a file no model read a row of said `float32` (under quantization auto,
    the precision chosen: `bfloat16`), as if its rows had been scored."""
    many_shards(tmp_path / "in", shards=2)
    (tmp_path / "in" / "bad.parquet").write_bytes(b"PAR1 not a parquet file at all, no footer")
    (tmp_path / "in" / "empty.jsonl").write_text("")
    spec = spec_of(write_job(tmp_path, tiny_models("classifier"), tmp_path / "in"),
                   errors={"unreadable_files": "quarantine", "max_rate": 1.0})
    assert run_job(spec).status == "succeeded"
    records = {json.loads(p.read_text())["input"]["name"]: json.loads(p.read_text())
               for p in (tmp_path / "out" / "_commits").glob("*.json")}
    assert records["bad.parquet"]["unreadable"] is not None
    assert records["bad.parquet"]["precision"] is None, records["bad.parquet"]["precision"]
    assert records["empty.jsonl"]["precision"] is None
    assert records["part-0.jsonl"]["precision"] == "float32"
