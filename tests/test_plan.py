"""`pipelines plan` against what runs then report: rows, tokens, quarantined rows, padding; model bytes as loaded."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
from helpers import ROOT, SENTENCES, make_spec, write_jsonl, write_parquet

from pipelines.errors import PipelineError
from pipelines.io.reader import Columns, read_shard
from pipelines.io.reader import count_rows as reader_count_rows
from pipelines.io.shards import list_shards
from pipelines.output.commit import OutputDir
from pipelines.output.lock import JobLock
from pipelines.output.summary import render as render_summary
from pipelines.planning.build import build_plan
from pipelines.planning.inputs import actor_batches, count_rows, read_blocks
from pipelines.planning.measure import KNOWN_IMPORT_S
from pipelines.planning.records import Plan
from pipelines.planning.render import render
from pipelines.runner import run_job
from pipelines.spec import load_spec

LONG = " ".join(SENTENCES * 4)  # past max_length below: truncated, or several QA windows


def test_rows_are_counted_as_a_run_reads_them(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"id": "1", "text": "x"}\n\n   \n{not json}\n[1, 2]\n{"id": "4", "text": "y"}')
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"id": str(i), "text": "z"}) + "\n" for i in range(7)))
    write_parquet(folder / "c.parquet", [{"id": str(i), "text": "w"} for i in range(5)])
    whole = gzip.compress("".join(json.dumps({"id": str(i), "text": str(i * i)}) + "\n" for i in range(500)).encode())
    (folder / "d.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # a truncated gzip file
    (folder / "e.parquet").write_bytes(b"PAR1 not really")
    write_jsonl(folder / "f.jsonl", [{"id": str(i), "text": "v" * (i % 7)} for i in range(3000)])
    (folder / "g.jsonl.gz").write_bytes(gzip.compress((folder / "f.jsonl").read_bytes()))
    # a byte order mark is no row: alone on its line (it was counted as one), or all of a file
    (folder / "h.jsonl").write_bytes(b'\xef\xbb\xbf\r\n{"id": "1", "text": "x"}\n{"id": "2", "text": "y"}\n')
    (folder / "i.jsonl").write_bytes(b"\xef\xbb\xbf")
    (folder / "j.jsonl.gz").write_bytes(gzip.compress((folder / "h.jsonl").read_bytes()))
    # a lone surrogate costs its row (the file was one unreadable record in a run, 3 rows in the plan)
    (folder / "k.jsonl").write_text('{"id": "1", "text": "x"}\n{"id": "2", "text": "cut \\ud83d"}\n{"id": "3"}\n')
    # objects that share a line (no newline between them, old Mac \r line ends) are a row each (the plan said 1)
    (folder / "l.jsonl").write_text("".join(json.dumps({"id": str(i), "text": "u"}) for i in range(40)))
    (folder / "m.jsonl").write_bytes(b'{"id": "1", "text": "x"}\r{"id": 2.5, "text": "y"}\r{bad\r{"id": "3"} junk\n')
    # what follows an object on its line that is no JSON white space (a comma, a byte order mark, a stray }, a form
    # feed) is a row of its own error in a run: the plan counted such a line as 1 where it ends in a }
    (folder / "n.jsonl").write_bytes(b'{"id": "1", "text": "x"},{"id": "2", "text": "y"}\n{"id": "3", "text": "x"}'
                                     b'\xef\xbb\xbf{"id": "4", "text": "y"}\n{"id": "5", "text": "x"}}\n{"id": "6"}\x0c\n')
    nested = [json.dumps({"id": str(i), "text": "t", "meta": {"n": i}}) for i in range(300)]  # counted by pyarrow
    (folder / "o.jsonl").write_text("\n".join([*nested, nested[0] + "," + nested[1], nested[2] + nested[3], ""]))
    # a line nested past Python's limit was the whole file's one unreadable row in a run, and a plan's traceback
    (folder / "p.jsonl").write_text("[" * 5000 + '\n{"id": "1", "text": "x"}\n' + '{"a": ' * 5000 + "\n")
    shards = list_shards([str(folder)])
    columns = Columns(text="text", id="id")
    counts = {s.path.rsplit("/", 1)[-1]: count_rows(s) for s in shards}
    for shard in shards:
        read = sum(block.num_rows for block in read_shard(shard, columns))
        count = counts[shard.path.rsplit("/", 1)[-1]]
        assert count.read_rows() == read, shard.path  # an unreadable file is one record, as the reader yields it
        if count.count == "unreadable":  # its rows, as a run tells them (0: unknown)
            assert count.rows == (reader_count_rows(shard)[0] or 0) and not count.rows_exact, shard.path
        else:
            assert count.rows == read, shard.path
        if shard.format == "jsonl" and not shard.path.endswith("d.jsonl.gz"):  # as a failed run counts a file
            assert reader_count_rows(shard) == (read, True), shard.path
    assert {name: c.count for name, c in counts.items()} == {
        "a.jsonl": "counted", "b.jsonl.gz": "counted", "c.parquet": "footer",
        "d.jsonl.gz": "unreadable", "e.parquet": "unreadable", "f.jsonl": "counted", "g.jsonl.gz": "counted",
        "h.jsonl": "counted", "i.jsonl": "counted", "j.jsonl.gz": "counted", "k.jsonl": "counted",
        "l.jsonl": "counted", "m.jsonl": "counted", "n.jsonl": "counted", "o.jsonl": "counted", "p.jsonl": "counted",
    }
    named = ("h.jsonl", "i.jsonl", "j.jsonl.gz", "k.jsonl", "l.jsonl", "m.jsonl", "n.jsonl", "o.jsonl", "p.jsonl")
    assert [counts[name].rows for name in named] == [2, 0, 2, 3, 40, 5, 8, 304, 3]
    estimated = count_rows(next(s for s in shards if s.path.endswith("f.jsonl")), count_limit=8192)
    assert estimated.count == "estimated" and abs(estimated.rows - 3000) < 150  # lines past 8 KiB: from the size
    # a file of objects with no newline between them past the limit: its objects so far, scaled (it was 0 rows)
    glued = next(s for s in shards if s.path.endswith("l.jsonl"))
    assert count_rows(glued, count_limit=400).count == "estimated"
    assert abs(count_rows(glued, count_limit=400).rows - 40) <= 4


def test_plan_leaves_out_an_output_inside_the_input_folder(tiny_models, tmp_path):
    """A run leaves its own output out of its input (the README); the plan counts the rows that run reads."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(5)])
    write_parquet(tmp_path / "in" / "scores" / "part-0a1b2c3d4e5f-00000.parquet", [{"id": "x", "text": "y"}] * 40)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "in" / "scores",
                     input={"paths": [str(tmp_path / "in")]})
    plan = build_plan(spec, "job", sample=100, cpus=2)
    assert ([s.uri.rsplit("/", 1)[-1] for s in plan.input.shards], plan.input.rows) == (["a.jsonl"], 5)


def test_a_scheduled_jobs_empty_landing_location_is_planned_as_a_tick_reads_it(tiny_models, tmp_path):
    """A tick takes an empty landing folder for no input yet; the plan of that job failed on it ("no files")."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(5)])
    (tmp_path / "landing").mkdir()
    paths = [str(tmp_path / "in"), str(tmp_path / "landing")]
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": paths}, schedule={"cron": "0 2 * * *"})
    plan = build_plan(spec, "job", sample=100, cpus=2)
    assert ([s.uri.rsplit("/", 1)[-1] for s in plan.input.shards], plan.input.rows) == (["a.jsonl"], 5)
    batch = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                      input={"paths": paths})
    with pytest.raises(PipelineError, match="landing"):  # a batch run fails on it, and so does its plan
        build_plan(batch, "job", sample=100, cpus=2)
    (tmp_path / "in" / "a.jsonl").unlink()
    empty = build_plan(spec, "job", sample=100, cpus=2)
    assert (empty.input.rows, empty.problems) == (0, ["no input file yet in input.paths: a tick now would find "
                                                      "nothing to score"])


def test_plan_says_what_a_run_would_do_with_the_output_as_it_is(ray_session, tiny_models, tmp_path):
    """The plan of a job whose output was half done, or finished, said a run would score every row; the run
    resumes (or answers up to date), and a run with another spec is refused."""
    for n in range(3):
        write_jsonl(tmp_path / "in" / f"{n}.jsonl", [{"id": f"{n}-{i}", "text": SENTENCES[i % 4]} for i in range(n + 2)])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]})
    fresh = build_plan(spec, "job", sample=100, cpus=2).output
    assert fresh is not None and (fresh.state, fresh.shards_todo, fresh.rows_todo) == ("new", 3, 9)
    shards = list_shards(spec.input.paths, spec.input.format)
    run_job(spec, shards=shards[:1])  # 2 rows committed; as a run cut short leaves it
    half = build_plan(spec, "job", sample=100, cpus=2)
    assert half.output is not None and half.output.state == "resume"
    assert (half.output.shards_done, half.output.rows_done, half.output.shards_todo, half.output.rows_todo) == (1, 2, 2, 7)
    assert "1 of 3 shard(s) committed (2 rows): a run resumes with the other 2 shard(s), 7 rows" in render(half)
    with JobLock(tmp_path / "out" / "_run.lock", "the output"):  # another run is at work (an --overwrite, say)
        busy = build_plan(spec, "job", sample=100, cpus=2).output
    assert busy is not None and busy.state == "refused" and "in progress" in busy.note, busy
    assert "as it is now: 1 of 3 shard(s) committed" in busy.note
    assert run_job(spec).shards_this_run == 2  # what the plan said
    done = build_plan(spec, "job", sample=100, cpus=2)
    assert done.output is not None and (done.output.state, done.output.rows_todo) == ("up to date", 0)
    assert run_job(spec).status == "up to date"
    other = spec.model_copy(update={"batching": spec.batching.model_copy(update={"max_length": 64})})
    refused = build_plan(other, "job", sample=100, cpus=2)
    assert refused.output is not None and refused.output.state == "refused"
    assert refused.problems[0].startswith("a run now is refused: output.path") and "different job spec" in refused.problems[0]
    with JobLock(tmp_path / "out" / "_run.lock", "the output"):  # what is read may be that run's work in progress
        both = build_plan(other, "job", sample=100, cpus=2).output
    assert both is not None and both.note.startswith("another run of the output ") and "in progress" in both.note
    assert "Meanwhile, reading the output met: output.path" in both.note and "different job spec" in both.note


def test_plan_says_what_a_run_does_with_a_file_it_cannot_read_under_the_specs_policy(tiny_models, tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(5)])
    (tmp_path / "in" / "e.parquet").write_bytes(b"PAR1 not really")
    said, quarantined = {}, {}
    for policy in ("fail", "quarantine"):
        spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                         input={"paths": [str(tmp_path / "in")]}, errors={"unreadable_files": policy})
        plan = build_plan(spec, "job", sample=100, cpus=2)
        [said[policy]] = [line for line in plan.problems if "e.parquet" in line]
        quarantined[policy] = [line for line in plan.problems if "would be quarantined" in line]
    assert "a run fails on it" in said["fail"] and "quarantines" not in said["fail"]
    assert "a run quarantines it, its rows as one record" in said["quarantine"]
    # the file's one record is quarantined only where the policy quarantines it; under fail no row is
    assert quarantined["fail"] == []
    # a Parquet file without a footer has no rows a run can tell: its record counts as no row, as in _run.json
    assert quarantined["quarantine"] == [] and "rows unknown" in said["quarantine"]


def test_an_unreadable_files_rows_are_planned_as_the_run_counts_them(ray_session, tiny_models, tmp_path):
    """A gzip file cut short: the plan counted it as one row (21 rows in all, 1 quarantined), the run counted the
    lines before the cut (88 rows, 68 quarantined) and failed over errors.max_rate, which the plan did not say."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(20)])
    lines = b"".join(json.dumps({"id": f"b{i}", "text": SENTENCES[i % 4]}).encode() + b"\n" for i in range(400))
    packed = gzip.compress(lines)
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]}, errors={"unreadable_files": "quarantine"})
    plan = build_plan(spec, "job", sample=1000, cpus=2)
    with pytest.raises(PipelineError, match="max_rate"):
        run_job(spec)
    summary = OutputDir(str(tmp_path / "out")).summary()
    assert summary is not None and summary.status == "failed"
    assert 20 < plan.input.rows == summary.rows_in and not plan.input.rows_exact  # lines before the cut
    assert sum(plan.tokens.quarantined.values()) == summary.errors == summary.rows_in - 20
    assert plan.tokens.rows_out == 20
    assert any("over errors.max_rate" in line for line in plan.problems)
    # a plan of a sample of the input counts the unreadable file apart, exactly: scaled with the sample, its rows
    # were taken for a rate of bad rows over the whole input (or, out of the sample, left out)
    sampled = build_plan(spec, "job", sample=10, cpus=2)
    assert not sampled.tokens.covers_input and sampled.tokens.rows_out == 20
    assert sum(sampled.tokens.unreadable_quarantined.values()) == summary.errors
    assert any("over errors.max_rate" in line for line in sampled.problems)


def test_batches_are_formed_as_ray_data_forms_them():
    """Ray 2.60 splits each read task's output into k blocks (2 × CPUs blocks at least), bundles whole blocks
    up to batch_size rows and cuts each bundle into batches."""
    sizes = [[s.stop - s.start for s in read_blocks([16, 16, 32], [1000] * 3, cpus)] for cpus in (2, 8)]
    assert sizes == [[8, 8, 8, 8, 16, 16], [3, 3, 3, 3, 2, 2] * 2 + [6, 6, 5, 5, 5, 5]]
    blocks = read_blocks([100, 100, 0, 100, 100, 100, 100], [10_000] * 7, cpus=2)
    batches = list(actor_batches(blocks, 256))
    assert [sum(s.stop - s.start for s in b) for b in batches] == [256, 44, 256, 44]
    covered = sorted((s.task, r) for b in batches for s in b for r in range(s.start, s.stop))
    assert covered == sorted((shard, r) for shard in (0, 1, 3, 4, 5, 6) for r in range(100))


def fan_out_shards(folder, text="text"):
    """Shards of 16, 16 and 32 rows, with a null text, an empty one and long ones. Small shards are one read task;
    on 2 CPUs Ray splits its 64 rows into 4 blocks of 16, a multiple of the batch size (8), so batches don't
    depend on the order blocks arrive in."""
    rows = [
        {"id": f"r{i:02d}", text: LONG if i % 5 == 0 else SENTENCES[i % len(SENTENCES)],
         "question": "Where is the Eiffel Tower located?"}
        for i in range(64)
    ]
    rows[3][text] = None
    rows[20][text] = "   "
    write_jsonl(folder / "a.jsonl", rows[:16])
    write_parquet(folder / "b.parquet", rows[16:32])
    with gzip.open(folder / "c.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows[32:]))
    return folder


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("nli", {"type": "zero-shot-classification", "candidate_labels": ["sports", "business", "politics"]}),
        ("qa", {"type": "question-answering", "doc_stride": 8, "max_question_length": 16}),
        ("causal", {"type": "llm-label", "candidate_labels": ["yes", "no"], "prompt_template": "{text}\nAnswer:"}),
    ],
)
def test_plan_predicts_what_the_run_reports(ray_session, tiny_models, tmp_path, kind, task):
    """Fan-out tasks (a feature per label, per context window): the plan counts what the job computes.

    Rows over max_length are refused (errors.too_long: error), so the run's quarantine checks the plan's
    truncation count too.
    """
    text = "context" if kind == "qa" else "text"
    spec = make_spec(
        tiny_models(kind), task, tmp_path / "out",
        input={"paths": [str(fan_out_shards(tmp_path / "in", text))], "text_column": text},
        batching={"batch_size": 8, "max_tokens": 256, "max_rows": 8, "max_length": 48},
        errors={"too_long": "error", "max_rate": 1.0},
    )
    plan = build_plan(spec, "job", sample=10_000, cpus=2)  # the CPUs of the session's Ray
    summary = run_job(spec)
    tokens = plan.tokens
    assert tokens.covers_input and plan.input.rows == summary.rows_in == 64
    assert tokens.tokens_total == summary.tokens
    assert tokens.padded == summary.padded  # whole-shard batches: the same micro-batches as the run
    assert tokens.rows_out == summary.rows_out
    assert tokens.quarantined == summary.error_reasons
    if kind == "causal":  # a row's prompt runs once for all its labels, after the prefix the rows share
        assert tokens.features_per_row == 1.0
    else:
        assert tokens.features_per_row > (1.5 if kind == "nli" else 1.0)  # labels, or windows of the long contexts
    if kind == "qa":
        assert tokens.truncated_rows is None and summary.errors == 2
    else:
        assert tokens.truncated_rows >= 12  # the long texts at least (one of the 13 is emptied)
        assert summary.error_reasons["text longer than max_length"] == tokens.truncated_rows


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        ("classifier", {"type": "text-classification"}),
        ("causal", {"type": "llm-label", "candidate_labels": ["yes", "no"], "prompt_template": "{text}\nAnswer:"}),
    ],
)
def test_a_run_counts_the_rows_it_cut_at_max_length_as_the_plan_does(ray_session, tiny_models, tmp_path, kind, task):
    """Under errors.too_long: truncate a row longer than max_length is scored on what is kept: the plan said how many
    (``cut at max_length``), the run said nothing (no count in _run.json, the summary or the page), so a labeling
    user could not tell that some labels were read from part of a text. The run counts them now, per row (llm-label
    reads a prompt once per label), as the plan does."""
    spec = make_spec(
        tiny_models(kind), task, tmp_path / "out", input={"paths": [str(fan_out_shards(tmp_path / "in"))]},
        batching={"batch_size": 8, "max_tokens": 256, "max_rows": 8, "max_length": 48}, errors={"max_rate": 1.0},
    )
    plan = build_plan(spec, "job", sample=10_000, cpus=2)
    summary = run_job(spec)
    assert plan.tokens.covers_input and plan.tokens.truncated_rows >= 12  # the long texts at least
    assert summary.rows_cut == plan.tokens.truncated_rows and summary.cut_uncounted_shards == 0
    said = f"cut to fit max_length: {summary.rows_cut:,} of the {summary.rows_out:,} rows written"
    assert said in render_summary(summary)
    written = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert written["rows_cut"] == summary.rows_cut
    assert said.split(": ", 1)[1] in (tmp_path / "out" / "_report.html").read_text()


def test_the_plans_cut_rows_are_those_the_run_writes_not_rows_it_quarantines(tiny_models, tmp_path):
    """The plan counted as cut at max_length every long row it encoded, also those the run quarantines (a repeated id
    under errors.duplicate_ids: error, a fill-mask row whose mask is past max_length), so it said more than the run's
    rows_cut (a reviewer's case: 43 against 32). It counts the rows the output would hold, as the run does."""
    long = " ".join(["word"] * 60)
    write_jsonl(tmp_path / "dup" / "a.jsonl", [{"id": "r0", "text": long}, {"id": "r1", "text": "short"},
                                                {"id": "r0", "text": long}, {"id": "r2", "text": long}])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out1",
                     input={"paths": [str(tmp_path / "dup")]}, batching={"max_length": 32},
                     errors={"duplicate_ids": "error", "max_rate": 1.0})
    tokens = build_plan(spec, "job", sample=10_000, cpus=2).tokens
    assert tokens.quarantined == {"duplicate id": 1} and tokens.truncated_rows == 2, tokens
    write_jsonl(tmp_path / "mask" / "a.jsonl", [{"id": "m0", "text": "[MASK] " + long}, {"id": "m1", "text": long + " [MASK]"},
                                                 {"id": "m2", "text": "[MASK] a"}])
    spec = make_spec(tiny_models("mlm"), {"type": "fill-mask"}, tmp_path / "out2",
                     input={"paths": [str(tmp_path / "mask")]}, batching={"max_length": 32}, errors={"max_rate": 1.0})
    tokens = build_plan(spec, "job", sample=10_000, cpus=2).tokens
    assert sum(tokens.quarantined.values()) == 1 and tokens.truncated_rows == 1, tokens


def test_the_plans_features_are_those_the_model_sees_not_rows_quarantined_as_too_long(tiny_models, tmp_path):
    """Under errors.too_long: error a row over max_length is quarantined, not cut: the plan counted its feature among
    the features and their lengths ("what the model sees": a max of max_length that the model never saw) and said it
    was "cut at max_length". Its features are left out now, and the line says the rows are quarantined, not cut."""
    short = [{"id": f"s{i}", "text": SENTENCES[i % len(SENTENCES)][:10]} for i in range(6)]
    long = [{"id": f"l{i}", "text": " ".join(SENTENCES) * 4} for i in range(2)]
    write_jsonl(tmp_path / "in" / "a.jsonl", short + long)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]}, batching={"max_length": 24},
                     errors={"too_long": "error", "max_rate": 1.0})
    plan = build_plan(spec, "job", sample=10_000, cpus=2)
    tokens = plan.tokens
    assert tokens.rows_out == 6 and tokens.quarantined == {"text longer than max_length": 2}
    assert tokens.features == 6 and tokens.feature_tokens.max < 24, (tokens.features, tokens.feature_tokens)
    assert tokens.truncated_rows == 2
    said = render(plan)
    assert "2 row(s) in the sample over it: quarantined, not cut (errors.too_long: error)" in said, said


def test_the_survey_counts_a_file_a_run_refuses_whole_as_one_unreadable_file(tmp_path):
    """A run refuses a UTF-16 file, and an OpenAI Batch file that is one JSON array, whole (one unreadable file, its
    rows counted as the run counts them); the plan's survey counted their lines as readable rows (the UTF-16 one a row
    too many: the zero byte after its last newline), so a plan that did not sample them named no problem."""
    lines = "".join(json.dumps({"id": f"r{i}", "text": "hello"}) + "\n" for i in range(3))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wide.jsonl").write_bytes(b"\xff\xfe" + lines.encode("utf-16-le"))
    requests = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}
                for i in range(2)]
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "asked.jsonl").write_text(json.dumps(requests, indent=2))
    for folder, kind, rows in (("in", "jsonl", 3), ("batch", "openai-batch", 2)):
        [shard] = list_shards([str(tmp_path / folder)], kind)
        counted = count_rows(shard)
        assert (counted.count, counted.rows, counted.records) == ("unreadable", rows, 1), counted
        assert reader_count_rows(shard) == (rows, True)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_refused_whole_as_with_one(tmp_path, encoding):
    """UTF-16 written without a byte order mark (Python's ``encoding="utf-16-le"``, .NET's ``Encoding.Unicode`` with
    ``new UnicodeEncoding(false, false)``, iconv's ``-t UTF-16LE``) was read as UTF-8: each line a broken row
    (``not valid UTF-8``, ``invalid JSON``), and the little-endian file one row more (the zero byte after its last
    newline). JSON text starts with ASCII, so its first characters in UTF-16 are a zero byte every other byte, which
    no UTF-8 JSON holds: such a file is refused whole, saying which UTF-16 and how to convert it, its rows counted as
    its lines, by the run and the plan alike."""
    lines = "".join(json.dumps({"id": f"r{i}", "text": f"café {i}"}, ensure_ascii=False) + "\r\n" for i in range(3))
    (tmp_path / "wide.jsonl").write_bytes(lines.encode(encoding))
    [shard] = list_shards([str(tmp_path / "wide.jsonl")])
    said = encoding.upper().replace("UTF-16-", "UTF-16")  # as iconv names it
    [record] = [r for block in read_shard(shard, Columns(text="text", id="id")) for r in block.to_pylist()]
    assert record["_error"].startswith(f"unreadable jsonl file: the file is {said} text without a byte order mark, "
                                       f"not UTF-8: convert it (iconv -f {said} -t UTF-8"), record
    assert reader_count_rows(shard) == (3, True)
    counted = count_rows(shard)
    assert (counted.count, counted.rows, counted.records) == ("unreadable", 3, 1), counted


def test_plan_counts_duplicate_ids_and_a_parquet_file_whose_rows_do_not_read(ray_session, tiny_models, tmp_path):
    """The plan left out `errors.duplicate_ids: error` (it said 19 rows out where the run wrote 16 and failed over
    its budget), and took a Parquet file whose footer reads but whose data does not (the README's own example,
    `Corrupt snappy compressed data`) for a readable one: one quarantined record instead of its rows, and no word
    of it among the problems (a run under `unreadable_files: fail` fails on it)."""
    rows = [{"id": f"r{i}", "text": SENTENCES[i % len(SENTENCES)]} for i in range(12)]
    rows[5]["id"] = "r1"  # a repeat in its own shard, one of another shard, and none
    rows[9]["id"] = None
    rows[3]["text"] = None  # refused by the task: its id is no one's, so its repeat below is written
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[:8])
    # and a repeat after its first copy, shorter: a run keeps the first in the file, the plan kept the one its
    # length-sorted batch met first (the tokens it called exact were the short copy's)
    write_jsonl(tmp_path / "in" / "b.jsonl", [*rows[8:], {"id": "r2", "text": "again"}, {"id": "r3", "text": "ok"},
                                              {"id": "r8", "text": "x"}])
    write_parquet(tmp_path / "in" / "c.parquet", [{"id": f"c{i}", "text": "x" * 40} for i in range(50)])
    data = bytearray((tmp_path / "in" / "c.parquet").read_bytes())
    data[10:200] = b"\xab" * 190  # the data pages, not the footer
    (tmp_path / "in" / "c.parquet").write_bytes(bytes(data))
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]},
                     errors={"duplicate_ids": "error", "unreadable_files": "quarantine", "max_rate": 0.9})
    plan = build_plan(spec, "job", sample=10_000, cpus=2)
    summary = run_job(spec)
    assert plan.tokens.covers_input and plan.input.rows == summary.rows_in == 65
    assert plan.tokens.rows_out == summary.rows_out == 10
    assert plan.tokens.quarantined == summary.error_reasons
    assert (plan.tokens.tokens_total, plan.tokens.padded) == (summary.tokens, summary.padded)
    failing = spec.model_copy(update={"errors": spec.errors.model_copy(update={"unreadable_files": "fail"})})
    [problem] = [p for p in build_plan(failing, "job", sample=10_000, cpus=2).problems if "c.parquet" in p]
    assert "unreadable parquet file" in problem and "50 rows" in problem and "a run fails on it" in problem


def test_a_damaged_file_found_by_reading_it_counts_its_rows_as_the_run_does(tmp_path):
    """A gzip file damaged past the count's limit reads as counted (an estimate) and is found damaged only when its
    rows are read: the plan then took the estimate for its rows, exact, where a run counts the lines before the
    damage, a lower bound."""
    import random

    from pipelines.io.reader import read_group
    from pipelines.planning.inputs import found_unreadable, survey

    random.seed(0)
    lines = "".join(json.dumps({"id": str(i), "text": "".join(random.choice("abcdefghij ") for _ in range(60))})
                    + "\n" for i in range(3000)).encode()
    data = bytearray(gzip.compress(lines))
    data[int(len(data) * 0.8):int(len(data) * 0.8) + 50] = b"\0" * 50
    (tmp_path / "x.jsonl.gz").write_bytes(bytes(data))
    shards = list_shards([str(tmp_path)])
    surveyed = survey(shards, count_limit=20_000)
    assert surveyed.shards[0].count == "estimated"
    tables = [pa.concat_tables(list(read_group(shards, Columns(text="text", id="id"))), promote_options="permissive")]
    [found] = found_unreadable(surveyed, shards, tables).shards
    rows, exact = reader_count_rows(shards[0])
    assert (found.count, found.rows, found.rows_exact) == ("unreadable", rows, exact) and not exact
    assert found.error.endswith(f"{rows:,} rows before the damage")


def test_plan_cli_on_the_news_shards_matches_the_run(ray_session, tiny_models, tmp_path):
    """The main job's input and settings with a tiny encoder: `pipelines plan --measure --json` as a user runs it."""
    job = ROOT / "jobs" / "label_news.yaml"
    overrides = [
        f"model.name={tiny_models('encoder')}", "model.quantization=none", f"output.path={tmp_path / 'out'}",
        "compute.cpus_per_actor=0.5",
    ]
    # --cpus 2: the session's Ray has 2 CPUs (Ray Data cuts the input into blocks by CPUs)
    args = [arg for o in overrides for arg in ("--set", o)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "plan", str(job), *args, "--cpus", "2", "--measure", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan = Plan.model_validate(json.loads(done.stdout))
    summary = run_job(load_spec(job, overrides))
    assert plan.input.rows == summary.rows_in == 600 and plan.input.rows_exact
    assert plan.tokens.tokens_total == summary.tokens
    assert summary.padding_efficiency is not None and plan.tokens.padding_efficiency is not None
    assert abs(plan.tokens.padding_efficiency - summary.padding_efficiency) < 0.03  # batches may pair other shards
    assert plan.measurement is not None and plan.measurement.rows == 600
    assert plan.measurement.padding_efficiency == plan.tokens.padding_efficiency  # the predictor plans the same
    assert [f.target for f in plan.model.fits] == ["this machine", "gpu_a10g", "gpu_l4"]  # from ./cluster.yaml
    assert {e.actors for e in plan.estimates if e.where == "gpu_l4"} == {1, 2, 4, 8}
    text = render(plan)
    assert "600 rows (exact)" in text and "MEASURED here" in text and "gpu_a10g (A10G)" in text


def wide_tied_gpt2(tiny_models, folder) -> str:
    """The tiny GPT-2 with its embeddings wide enough that the tied output layer is packed on a CPU."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(tiny_models("gpt2"))
    config.n_embd = 128
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tiny_models("gpt2")).save_pretrained(folder)
    return str(folder)


def loaded_bytes(model) -> int:
    """What a loaded model holds: its parameters and buffers, bitsandbytes' scales, oneDNN's packed layers and
    torch's dynamic int8 layers (neither of which is a parameter)."""
    import bitsandbytes as bnb
    import torch

    from pipelines.inference.packed_linear import PackedLinear

    held = model.get_memory_footprint()
    for module in {id(m): m for m in model.modules()}.values():
        if isinstance(module, bnb.nn.Linear8bitLt):
            held += module.weight.SCB.numel() * 4
        elif isinstance(module, bnb.nn.Linear4bit):
            held += module.weight.quant_state.absmax.numel() * 4
        elif isinstance(module, PackedLinear):
            held += module.in_features * module.out_features * module.packed.element_size()
        elif isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._packed_params._weight_bias()
            held += weight.numel() + weight.q_per_channel_scales().numel() * 16 + (0 if bias is None else bias.numel() * 4)
    return held


@pytest.mark.parametrize(
    ("kind", "model_class", "quantization"),
    [
        ("encoder", "AutoModel", "none"),
        ("encoder", "AutoModel", "int8"),
        ("encoder", "AutoModel", "nf4"),
        ("gpt2", "AutoModelForCausalLM", "int8"),  # tied embeddings, Conv1D layers
        ("minilm", "AutoModel", "none"),  # its Linear layers packed for oneDNN on a CPU
        ("minilm", "AutoModel", "dynamic-int8"),  # torch's int8 layers: a scale and zero point per output row
        ("minilm", "AutoModel", "auto"),  # sized as unquantized, the largest it may take
        ("wide-gpt2", "AutoModelForCausalLM", "none"),  # the tied output layer's packed copy beside the embeddings
        ("wide-gpt2", "AutoModelForCausalLM", "dynamic-int8"),  # its int8 copy beside the embeddings
        ("minilm", "AutoModel", "per-token-int8"),  # int8 weights, a float32 scale per output row
        ("wide-gpt2", "AutoModelForCausalLM", "per-token-int8"),  # its int8 copy beside the embeddings
        ("minilm", "AutoModel", "smooth-int8"),  # and each layer's input factors and float32 outlier columns
        ("wide-gpt2", "AutoModelForCausalLM", "smooth-int8"),  # its head, not calibrated, as per-token-int8
    ],
)
def test_weight_bytes_match_the_loaded_model(tiny_models, tmp_path, kind, model_class, quantization):
    """The count on an empty model equals what from_pretrained and the predictor's loading allocate on this CPU,
    quantization scales, packed layers and the copies of tied layers included."""
    from pipelines.inference.loading import load_config, load_model
    from pipelines.planning.memory import count_weights

    if kind == "minilm":
        name = "minilm"  # the packaged all-MiniLM-L6-v2
    elif kind == "wide-gpt2":
        name = wide_tied_gpt2(tiny_models, tmp_path / "wide")
    else:
        name = tiny_models(kind)
    spec = make_spec(name, {"type": "feature-extraction"})
    spec.model.quantization = quantization
    config = load_config(spec.model)
    loaded = "none" if quantization == "auto" else quantization  # auto loads a concrete one; float32 is the largest
    spec.model.quantization = loaded
    model = load_model(spec.model, model_class, config, 128, "right").model
    counted = count_weights(config, model_class, quantization)
    assert counted.weight_bytes("float32", quantization, cpu_packed=True) == loaded_bytes(model)


def test_default_batching_pads_the_benchmark_corpus_little():
    """The benchmark corpus (AG News and SST-2 test rows, MiniLM's tokenizer), as a user plans it: the default
    batching computes at least 95% real tokens (the rows of each shard read in length order, the cuts between
    micro-batches where padding plus a forward's own cost is least)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "plan", "benchmarks/embed_corpus.yaml", "--sample", "8472", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan = Plan.model_validate(json.loads(done.stdout))
    assert plan.input.rows == plan.tokens.sample_rows == 8472
    assert plan.tokens.padding_efficiency is not None and plan.tokens.padding_efficiency >= 0.95


def test_the_memory_plan_counts_every_micro_batch_the_lanes_hold_at_once():
    from pipelines.planning.memory import Dims, WeightCount, activation_bytes, local_fit

    size = Dims(hidden=384, intermediate=1536, heads=12, layers=6, kv_heads=12, head_dim=32, vocab=30522)
    weights = WeightCount(
        parameters=22_000_000, quantized=0, quantized_rows=0, kept_fp32=0, buffers={}, float_buffers=0
    )
    compute = {"size": 1, "threads_per_actor": 2}
    lanes = make_spec("minilm", {"type": "feature-extraction"}, compute=compute)
    one = make_spec("minilm", {"type": "feature-extraction"}, compute={**compute, "cpu_lanes": False})
    single = activation_bytes(one, size, 256, 4)
    assert local_fit(one, weights, size, 256).activations_bytes == single
    fit = local_fit(lanes, weights, size, 256)
    assert fit.activations_bytes == 2 * single and "2 micro-batches at once" in fit.basis
    # under quantization auto the DTYPE column reads float32 whatever auto keeps: the basis says why (a tester read
    # float32 beside an output that keeps bfloat16)
    assert "quantization auto" not in fit.basis
    lanes.model.quantization = "auto"
    auto = local_fit(lanes, weights, size, 256)
    assert auto.dtype == "float32" and "quantization auto: sized in float32, the largest it may take" in auto.basis


@pytest.mark.parametrize("quantization", ["dynamic-int8", "per-token-int8", "smooth-int8"])
def test_a_cpu_quantization_is_said_to_be_refused_on_gpu_node_types(tmp_path, quantization):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(5)])
    spec = make_spec("minilm", {"type": "feature-extraction"}, tmp_path / "out", input={"paths": [str(tmp_path / "in")]})
    spec.model.quantization = quantization
    plan = build_plan(spec, "job", sample=100, cpus=2, cluster=ROOT / "cluster.yaml")
    assert plan.model.quantized_parameters == 10_764_288  # every Linear layer of MiniLM's encoder
    assert any(f"{quantization} is a CPU quantization" in line for line in plan.problems)


def test_measure_runs_quantization_auto_at_what_a_run_here_would_take(tiny_models, tmp_path):
    """`pipelines plan --measure` on the main job (quantization: auto, as the README runs it) failed: 'auto is
    decided before a job starts'. It measures the precision the output keeps, else the decision kept here for the
    job's sample, else float32, and says which. (It took the kept decision over what a resumed output recorded.)"""
    import json

    from pipelines.fidelity import AUTO_MIN_AGREEMENT, _decision_path, _node_bf16, sample
    from pipelines.io.shards import list_shards
    from pipelines.planning.measure import measure

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(4)])
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]})
    spec.model.quantization = "auto"
    spec.model.cache_dir = str(tmp_path / "cache")
    shards = list_shards(spec.input.paths)
    batch = pa.table({"id": ["a", "b"], "text": SENTENCES[:2]})
    first = measure(spec, [batch], shards)
    assert first.rows == 2 and first.precision == "quantization auto, not decided here yet: float32, the slowest it may take"
    decision = _decision_path(spec, AUTO_MIN_AGREEMENT, sample(spec, shards, 256), _node_bf16(spec))
    decision.parent.mkdir(parents=True)
    decision.write_text(json.dumps({"quantization": "dynamic-int8", "dtype": "float32"}))
    assert measure(spec, [batch], shards).precision == ("quantization auto: dynamic-int8, as decided here before on "
                                                        "this job's sample")
    kept = measure(spec, [batch], shards, {"quantization": "none", "dtype": "float32"})  # a resumed output's
    assert kept.precision == "quantization auto: float32, as the output's earlier runs chose (a run keeps it)"


def test_a_cluster_yaml_of_another_tool_in_the_working_directory_is_passed_over(tiny_models, tmp_path):
    """`./cluster.yaml` is read when --cluster is not given; one that is no Ray launcher config stopped the plan."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(5)])
    (tmp_path / "cluster.yaml").write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes: []\n")
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"input": {"paths": ["in"]}, "model": {"name": tiny_models("classifier")},
                               "task": {"type": "text-classification"}, "output": {"path": "out"}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipelines", "plan", "job.yaml", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: ./cluster.yaml passed over, no GPU node types sized" in done.stderr
    assert [f["target"] for f in json.loads(done.stdout)["model"]["fits"]] == ["this machine"]


def test_a_sampled_plan_is_a_fair_spread_of_the_input(tiny_models, tmp_path):
    """A read task's rows are sorted by length, so its batches are length bands: a sample of whole batches was one
    band (no long row in it, 'none found', tokens far too few) where a tenth of the rows are too long."""
    rows = [{"id": f"r{i:03d}", "text": LONG if i % 10 == 3 else SENTENCES[i % len(SENTENCES)]} for i in range(200)]
    write_parquet(tmp_path / "in" / "a.parquet", rows[:100])
    write_parquet(tmp_path / "in" / "b.parquet", rows[100:])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]}, batching={"batch_size": 32, "max_length": 48},
                     errors={"too_long": "error", "max_rate": 0.05})
    truth = build_plan(spec, "job", sample=1000, cpus=2).tokens
    assert truth.covers_input and truth.quarantined == {"text longer than max_length": 20}
    for sample in (32, 64, 100):
        plan = build_plan(spec, "job", sample=sample, cpus=2)
        tokens = plan.tokens
        assert not tokens.covers_input and tokens.sample_rows == sample
        too_long = tokens.quarantined.get("text longer than max_length", 0)
        assert abs(too_long - sample / 10) <= 1, (sample, tokens.quarantined)  # a tenth, to a row
        assert abs(tokens.tokens_total - truth.tokens_total) <= 0.05 * truth.tokens_total, (sample, tokens)
        assert any("over errors.max_rate" in line for line in plan.problems), (sample, plan.problems)


def test_a_sampled_plan_of_many_small_files_tokenizes_the_rows_asked_for_reading_part_of_the_input(
    tiny_models, tmp_path
):
    """--sample 200 over 2,000 files of 1-5 rows tokenized 43 rows (whole batches of small read tasks); the sample
    is the rows asked for, and is taken from a part of the input, not read whole."""
    for i in range(300):
        write_jsonl(tmp_path / "in" / f"f{i:03d}.jsonl", [{"id": f"{i}-{j}", "text": SENTENCES[j]} for j in range(i % 3 + 1)])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]}, batching={"batch_size": 32})
    assert build_plan(spec, "job", sample=100, cpus=2).tokens.sample_rows == 100

    from pipelines.planning.inputs import SPREAD, spread_rows

    # 1,000 files of 1,000 rows: a sample of 1,000 rows reads the few files, spread over the input, that hold
    # SPREAD x 1,000 rows, not every file for one row each
    batches = spread_rows([1000] * 1000, 1000, 256)
    assert sum(s.stop - s.start for batch in batches for s in batch) == 1000
    tasks = sorted({s.task for batch in batches for s in batch})
    assert len(tasks) == SPREAD and tasks[0] < 250 and tasks[-1] >= 750


def test_plan_says_a_run_over_errors_max_count_would_fail(ray_session, tiny_models, tmp_path):
    """The plan measured the error budget against errors.max_rate only: under ``max_count: 0`` one bad row of 20
    failed the run, and the plan listed the row with no word that the run would fail."""
    rows = [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(20)]
    rows[3]["text"] = None
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]}, errors={"max_count": 0})
    plan = build_plan(spec, "job", sample=1000, cpus=2)
    with pytest.raises(PipelineError, match="errors.max_count=0"):
        run_job(spec)
    said = [line for line in plan.problems if "errors.max_count" in line]
    assert said == ["1 row(s) in the input are quarantined, over errors.max_count=0: the run would fail"], plan.problems
    # a sample of half the input: its count scaled to the input, and said so
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": None if i % 2 else "x"} for i in range(20)])
    spec.errors.max_rate, spec.errors.max_count = 1.0, 5
    sampled = build_plan(spec, "job", sample=10, cpus=2)
    assert "10 row(s) of the input are estimated from the sample of 10 rows to be quarantined, over errors.max_count=5: " \
           "the run would fail" in sampled.problems, sampled.problems


def test_a_gpu_job_measured_on_a_gpu_here_gets_a_wall_time_here(tiny_models):
    """This machine's fit counts no GPU, so a GPU job always fits 0 actors by it: a GPU job measured on a GPU here
    was told a local run would not start, though the plan had just timed it on that GPU."""
    from pipelines.planning.measure import _here
    from pipelines.planning.records import Fit, Measurement

    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, compute={"gpus_per_actor": 1})
    none_fit = Fit(target="this machine", accelerator=None, device="cpu", dtype="float32", memory_bytes=None,
                   weights_bytes=0, activations_bytes=0, overhead_bytes=0, per_actor_bytes=0, by_memory=4,
                   by_resources=0, actors=0, basis="the job asks for GPUs, none here")
    for device, possible in (("cuda", True), ("cpu", False)):
        measured = Measurement(device=device, threads=1, load_s=1.0, rows=8, predict_s=0.1, rows_per_s=80.0,
                               tokens_per_s=800.0, padding_efficiency=1.0, peak_rss_bytes=0)
        here = _here(spec, 80, measured, none_fit)
        assert here.possible is possible and (here.wall_s is not None) is possible, (device, here)


def test_measure_gives_no_wall_time_here_where_no_actor_of_the_job_fits_here(tiny_models, tmp_path):
    """A job whose actors ask for a GPU fits no actor on this machine's CPUs (the plan's own fit says 0), yet
    `--measure` estimated a wall time for its pool here, as if a local run would start."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(8)])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]}, compute={"gpus_per_actor": 1})
    spec.model.device = "cpu"  # measured here, on the CPU: what the job asks of Ray is what the fit counts
    plan = build_plan(spec, "job", sample=8, measure=True, cpus=2)
    assert plan.model.fits[0].actors == 0
    here = plan.estimates[0]
    assert here.where == "this machine" and not here.possible and here.wall_s is None, here
    said = render(plan)
    assert "  this machine       1      -  a local run would not start" in said
    assert "basis: 0 actor(s) of this job fit here, the pool needs 1 (memory available now;" in said


def test_plan_names_the_custom_ids_an_openai_batch_run_would_answer_twice(tiny_models, tmp_path):
    """Under the default ``errors.duplicate_ids: keep`` the plan of an OpenAI Batch input said nothing of custom_ids
    that repeat, which a run answers twice (OpenAI's Batch API refuses such a file): it names them among its
    problems, with the setting that answers each once, as the run warns."""
    from test_openai_batch import embedding_line

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps(embedding_line(i, "The cat sat.")) + "\n"
                                                     for i in ("q1", "q2", "q1")))
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps(embedding_line(i, "A dog ran.")) + "\n"
                                                     for i in ("q2", "q3")))
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")], "format": "openai-batch"},
                     output={"format": "openai-batch"})
    plan = build_plan(spec, "job", sample=10_000, cpus=2)
    assert plan.tokens.covers_input and plan.tokens.rows_out == 5 and not plan.tokens.quarantined
    said = [p for p in plan.problems if "custom_id" in p]
    assert said == [
        "2 custom_id(s) in the input are asked more than once, and a run answers each time (errors.duplicate_ids: "
        "keep): 'q1', 'q2'; OpenAI's Batch API refuses such a file, and answers matched by custom_id lose all but "
        "one: set errors.duplicate_ids: error to answer each custom_id once (the spec hash changes: a new "
        "output.path, or --overwrite)"], plan.problems


def test_measure_estimates_a_run_as_a_user_times_it_rows_and_fixed_cost_in_parts(tiny_models, tmp_path):
    """`--measure` estimated the rows' time plus one in-process model load (5.9 s for the main job) where a run took
    12-20 s, most of it before its first block (Ray's start, the actor's start): its figure could not be compared
    with a run's. It gives the run's fixed cost too, in parts that add up, each measured here or a known cost."""
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(8)])
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]})
    plan = build_plan(spec, "job", sample=8, measure=True, cpus=2, cluster=ROOT / "cluster.yaml")
    here = plan.estimates[0]
    assert here.where == "this machine" and here.wall_s is not None
    names = [p.name for p in here.parts]
    assert {p.how for p in here.parts} == {"measured", "known"}, here.parts
    assert any(n.startswith("Ray start") for n in names) and any(n.startswith("rows") for n in names), names
    assert here.wall_s == round(sum(p.seconds for p in here.parts), 1)
    assert here.run_wall_s == round(sum(p.seconds for p in here.parts if p.in_run_wall), 1) < here.wall_s
    gpu = [e for e in plan.estimates[1:] if e.possible]
    assert gpu and all(not any(p.name.startswith("Ray start") for p in e.parts) for e in gpu)  # a cluster's Ray is up
    said = render(plan)
    assert "fixed cost" in said and "Ray start" in said and "_run.json wall_s" in said
    assert plan.measurement is not None and plan.measurement.import_s is not None
    scale = plan.measurement.import_s / KNOWN_IMPORT_S  # the imports timed here: the known parts go with them
    assert all(p.scaled_by == round(scale, 2) for p in here.parts if p.how == "known"), here.parts
    assert f"× {round(scale, 2):g} for this machine's speed by its actor imports" in said


def test_the_known_parts_of_this_machines_estimate_go_with_its_speed_by_the_actor_imports():
    """The known parts (Ray's start, the actor's, the summary ...) were one machine's figures whatever machine the
    plan ran on: where they had been measured on a 2-core AVX2-only CPU, the plan said 18.9 s for the main job on an
    AVX-512 one whose runs took 12.9-13.8 s. This machine's are scaled as its actor imports, timed here, compare
    with those of the machine they were measured on; a GPU node type's (another machine) are not."""
    from pipelines.planning.measure import KNOWN, wall_time
    from pipelines.planning.records import Measurement

    def measured(import_s):
        return Measurement(device="cpu", threads=2, load_s=1.0, rows=100, predict_s=1.0, rows_per_s=100.0,
                           tokens_per_s=1000.0, padding_efficiency=0.9, peak_rss_bytes=1, import_s=import_s)

    def known(estimate):
        return {p.name: p.seconds for p in estimate["parts"] if p.how == "known"}

    slower = wall_time(100, measured(2 * KNOWN_IMPORT_S), 1)
    assert known(slower) == {name: round(2 * seconds, 2) for name, (seconds, _, _) in KNOWN.items()}
    assert all(p.scaled_by == 2.0 and "× 2 here" in p.basis for p in slower["parts"] if p.how == "known")
    same = {name: seconds for name, (seconds, _, _) in KNOWN.items()}
    assert known(wall_time(100, measured(None), 1)) == same  # imports not timed: as measured
    node = wall_time(100, measured(2 * KNOWN_IMPORT_S), 1, own_ray=False)
    assert known(node) == {name: s for name, s in same.items() if name != "Ray start"}
    assert all(p.scaled_by is None for p in node["parts"])
    # a timing far off (a fraction of a second, or zero: nothing timed) is not taken as the machine's speed
    assert {p.scaled_by for p in wall_time(100, measured(0.01), 1)["parts"] if p.how == "known"} == {0.25}
    assert {p.scaled_by for p in wall_time(100, measured(0.0), 1)["parts"] if p.how == "known"} == {None}


def test_measure_on_an_empty_input_says_there_is_nothing_to_run(tiny_models, tmp_path):
    """`--measure` on an input of one empty file loaded the model, timed no rows and printed a wall time of `?`
    at "0 rows/s", as if the predictor could not be timed. It says there is nothing to run and measures nothing."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("")
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]})
    plan = build_plan(spec, "job", sample=8, measure=True, cpus=2)
    assert plan.input.rows == 0
    assert plan.measurement is None and plan.estimates == [], plan.measurement
    said = render(plan)
    assert "TIME  nothing to run: the input holds no rows" in said and "0 rows/s" not in said, said


def test_features_per_row_counts_the_rows_that_are_scored(tiny_models, tmp_path):
    """OpenAI batch embeddings with a bad request line: the plan said "features 4 (0.8 per row)", averaging over
    the quarantined request, which has no feature and is written to no output. It averages over the rows scored."""
    lines = [{"custom_id": f"r-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "m", "input": SENTENCES[i]}} for i in range(4)]
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}})
    write_jsonl(tmp_path / "in" / "requests.jsonl", lines)
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")], "format": "openai-batch"},
                     output={"format": "openai-batch"}, errors={"max_rate": 1.0})
    tokens = build_plan(spec, "job", sample=8, cpus=2).tokens
    assert tokens.sample_rows == 5 and sum(tokens.quarantined.values()) == 1 and tokens.features == 4, tokens
    assert tokens.features_per_row == 1.0, tokens.features_per_row


def test_plan_says_a_run_is_refused_where_the_kept_precision_is_below_a_raised_bar(tiny_models, tmp_path):
    """`quantization: auto` keeps an output's first precision, and a run refuses to keep one whose recorded
    agreement is below a raised model.fidelity.min_agreement (fidelity.hold_bar); the plan read the same record
    and said nothing: no problem found, as if the run would go ahead. It says the run is refused, and why."""
    from pipelines.runner import job_record
    from pipelines.spec import FidelitySpec

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(8)])
    spec = make_spec(tiny_models("encoder"), {"type": "feature-extraction"}, tmp_path / "out",
                     input={"paths": [str(tmp_path / "in")]})
    spec.model.quantization = "auto"
    job = job_record(spec)
    job.precision = {"quantization": "none", "dtype": "bfloat16", "measure": "cosine_mean", "agreement": 0.996,
                     "rows": 8, "bar": 0.99}
    OutputDir(str(tmp_path / "out")).start(job)  # as the first run left it (its shards not committed yet)
    assert build_plan(spec, "job", sample=8, cpus=2).problems == []  # the bar it was chosen under: kept
    spec.model.fidelity = FidelitySpec(rows=8, min_agreement=0.999)
    found = build_plan(spec, "job", sample=8, cpus=2).problems
    assert any(p.startswith("a run now is refused: ") and "cosine_mean 0.9960 on 8 sampled rows" in p
               and "min_agreement=0.999" in p for p in found), found


def test_a_truth_column_that_names_no_label_of_the_model_is_a_problem_before_the_run(tiny_models, tmp_path):
    """Class numbers (0, 1) in input.label_column against a classifier's label names: every row would disagree and
    the run's agreement read 0%. The plan says so among its problems, naming both and input.label_map; with the map,
    or with truth values that are labels of the model, it says nothing."""
    rows = [{"id": str(i), "text": SENTENCES[i % 4], "stars": i % 3} for i in range(12)]
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    task = {"type": "text-classification"}
    numbered = make_spec(tiny_models("classifier"), task, tmp_path / "out", input={
        "paths": [str(tmp_path / "in")], "label_column": "stars"}, output={"prediction_prefix": "predicted_"})
    [said] = [p for p in build_plan(numbered, "job", sample=100, cpus=2).problems if "label_column" in p]
    assert said.startswith("input.label_column 'stars': no truth value in the input (0, 1, 2) is a label the model "
                           "gives (negative, neutral, positive)") and "input.label_map" in said
    numbered.input.label_map = {"0": "negative", "1": "neutral", "2": "positive"}
    assert not [p for p in build_plan(numbered, "job", sample=100, cpus=2).problems if "label_column" in p]


def test_a_job_pinned_to_the_cpu_is_not_told_a_gpu_share_would_place_its_actors_on_the_gpu():
    """The main job pins model.device: cpu. The plan sized the GPU node types as if its actors ran there and advised
    'gpus_per_actor 0.25 would place 4 per node', which with model.device cpu gives four actors that each hold a
    GPU share and compute on the CPU. The rows now say the actors would run on the node's CPUs, and the advice names
    model.device too."""
    from pipelines.planning.build import problems
    from pipelines.planning.hardware import read_cluster
    from pipelines.planning.memory import Dims, WeightCount, node_fits

    size = Dims(hidden=384, intermediate=1536, heads=12, layers=6, kv_heads=12, head_dim=32, vocab=30522)
    weights = WeightCount(
        parameters=22_000_000, quantized=0, quantized_rows=0, kept_fp32=0, buffers={}, float_buffers=0
    )
    cluster = read_cluster(ROOT / "cluster.yaml")
    compute = {"size": 1, "cpus_per_actor": 1}
    pinned = make_spec("minilm", {"type": "feature-extraction"}, compute=compute)
    pinned.model.device = "cpu"
    for fit in node_fits(pinned, cluster, weights, size, 256):
        assert "model.device cpu: its actors would run on this node type's CPUs, not its GPU" in fit.basis, fit.basis
        assert "model.device auto and gpus_per_actor 0.25 would place 4 per node" in fit.basis, fit.basis
    free = make_spec("minilm", {"type": "feature-extraction"}, compute=compute)  # device auto: a GPU share uses it
    for fit in node_fits(free, cluster, weights, size, 256):
        assert "model.device" not in fit.basis and "; gpus_per_actor 0.25 would place 4 per node" in fit.basis
    # dynamic-int8 on a job pinned to the CPU is not refused on a GPU node: its actors never load it on the GPU
    pinned.model.quantization = "dynamic-int8"
    from types import SimpleNamespace as Fake

    here = Fake(actors=1, by_memory=1, by_resources=1)
    model = Fake(fits=[here, *node_fits(pinned, cluster, weights, size, 256)])
    tokens = Fake(quarantined={}, unreadable_quarantined={}, repeated_ids={}, truncated_rows=0, covers_input=True,
                  sample_rows=1)
    inputs = Fake(shards=[], rows=1)
    found = problems(pinned, inputs, tokens, model, cluster)
    assert not any("dynamic-int8 is a CPU quantization" in line for line in found), found


def test_a_file_of_objects_over_several_lines_is_counted_up_to_64_mib_then_estimated(tmp_path, monkeypatch):
    """The README said only past 1 GiB of one file is the rest estimated; a file that starts with an object written
    over several lines (`jq .`), or is one JSON array, is parsed whole to count it, up to 64 MiB
    (ARRAY_COUNT_LIMIT), and estimated past that (a 70 MiB one: 372,504 rows, estimated, for 372,486). JSON lines
    of the same size are counted exactly. The limit is made small here (the count reads 4 MiB before it looks): the
    README now says 64 MiB."""
    from pipelines.planning import inputs

    assert inputs.ARRAY_COUNT_LIMIT == 64 << 20 and inputs.COUNT_LIMIT == 1 << 30
    monkeypatch.setattr(inputs, "ARRAY_COUNT_LIMIT", 4096)
    rows = [{"id": str(i), "text": "word " * (10 + i % 20)} for i in range(40_000)]  # past the first 4 MiB read
    (tmp_path / "pretty.jsonl").write_text("".join(json.dumps(r, indent=2) + "\n" for r in rows))
    (tmp_path / "array.jsonl").write_text(json.dumps(rows, indent=2))
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = {s.path.rsplit("/", 1)[-1]: count_rows(s) for s in list_shards([str(tmp_path)])}
    assert (counts["lines.jsonl"].count, counts["lines.jsonl"].rows) == ("counted", 40_000)
    for name in ("pretty.jsonl", "array.jsonl"):
        assert counts[name].count == "estimated" and abs(counts[name].rows - 40_000) < 4_000, counts[name]


@pytest.mark.parametrize(("compute", "asked"), [
    ({"resources": {"spot": 1}}, "spot"),
    ({"accelerator_type": "L4"}, "accelerator_type:L4"),  # with gpus_per_actor 0: an actor asks Ray for it all the same
])
def test_a_job_asking_for_a_custom_resource_fits_no_actor_on_this_machine(tiny_models, tmp_path, compute, asked):
    """A local run starts a Ray of its own, which has no custom resource (nor, on this machine without a GPU, an
    accelerator type), and refuses a pool whose actors ask for one (`compute.resources`, `compute.accelerator_type`)
    before any work; the plan said this machine fits 1 actor by resources and found no problem."""
    from test_faults import cli as run_cli
    from test_faults import write_job

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": str(i), "text": SENTENCES[i % 4]} for i in range(8)])
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", compute=compute)
    done = run_cli("plan", str(job), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    plan = Plan.model_validate(json.loads(done.stdout))
    here = plan.model.fits[0]
    assert (here.target, here.by_resources, here.actors) == ("this machine", 0, 0), here
    assert f"its actors ask Ray for {asked}, which a local Ray has none of" in here.basis, here.basis
    assert any(p.startswith("this machine holds 0 actor(s) of this job") and "a local run would not start" in p
               for p in plan.problems), plan.problems
    ran = run_cli("run", str(job))  # as the plan says: refused before any work
    assert ran.returncode == 2 and f"no node has {asked}" in ran.stderr, ran.stderr[-3000:]
    assert not (tmp_path / "out").exists()
