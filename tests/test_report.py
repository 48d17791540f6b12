"""The run report opened as a person opens it: a real headless Chromium, offline, every chart drawn.

Chromium comes from Debian (`make test` installs it where missing; see the Makefile). Screenshots are
kept as test artifacts: under the test's tmp dir and in ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import ROOT, SENTENCES, write_jsonl, write_parquet
from test_cli import cli
from test_fidelity import TOPICS, build_wide_encoder, topic_spec

from pipelines.runner import run_job
from pipelines.schedule.executor import run_due
from pipelines.spec import spec_from_dict

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts"
RUN_CHARTS = {"throughput", "padding", "rows", "shards", "labels", "scores", "confusion", "fidelity"}
LEDGER_CHARTS = {"runs", "errors", "wall"}

# For every chart on the page: is it a drawn Plotly figure with data, and how big is it?
DRAWN = """() => [...document.querySelectorAll('div.chart')].map(chart => {
  const plot = chart.querySelector('.js-plotly-plot');
  const svg = plot && plot.querySelector('svg.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const marks = plot ? plot.querySelectorAll('g.trace, g.hm, image').length : 0;
  return {chart: chart.dataset.chart, traces: plot && plot._fullData ? plot._fullData.length : 0,
          points: plot && plot._fullData ? plot._fullData.reduce((n, t) => n + ((t.x || t.z || []).length), 0) : 0,
          marks, width: box.width, height: box.height};
})"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium for the module, with a new empty profile, driven by Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=FLAGS, viewport={"width": 1200, "height": 900},
        )
        yield context
        context.close()


def open_page(context, path: Path, screenshot: Path) -> tuple[list[dict], list[str], list[str]]:
    """Open a page from disk; its charts as drawn, its console errors, and every request that left the disk."""
    page = context.new_page()
    errors: list[str] = []
    remote: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: remote.append(request.url) if not request.url.startswith("file:") else None)
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_function("() => [...document.querySelectorAll('div.chart')]"
                           ".every(chart => chart.querySelector('.js-plotly-plot svg.main-svg'))")
    charts = page.evaluate(DRAWN)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / screenshot.name)
    page.close()
    return charts, errors, remote


def assert_drawn(charts: list[dict], expected: set[str]) -> None:
    assert {c["chart"] for c in charts} == expected
    for chart in charts:
        assert chart["traces"] > 0 and chart["points"] > 0 and chart["marks"] > 0, chart
        assert chart["width"] > 300 and chart["height"] > 200, chart


def test_run_report_and_ledger_report_in_a_browser(ray_session, tiny_models, browser, tmp_path):
    model = build_wide_encoder(tiny_models("encoder"), tmp_path / "model")
    from tiny_models import CORPUS

    rows = [{"id": f"n{i:03d}", "text": text, "topic": TOPICS[i % 4]} for i, text in enumerate(CORPUS * 2)]
    rows[5]["text"] = None  # one quarantined row: the errors chart has a reason
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[:40])
    write_parquet(tmp_path / "in" / "b.parquet", rows[40:])
    out = tmp_path / "out"
    spec = topic_spec(model, tmp_path / "in", out, "int8", fidelity={"rows": 32, "min_agreement": 0.5})
    spec.batching.batch_size = 16
    summary = run_job(spec)
    assert summary.fidelity is not None and summary.errors == 1

    page = out / "_report.html"
    html = page.read_text()
    assert "label_agreement" in html and "text is null" in html
    charts, errors, remote = open_page(browser, page, tmp_path / "run-report.png")
    assert errors == [] and remote == []
    assert_drawn(charts, RUN_CHARTS)
    confusion = next(c for c in charts if c["chart"] == "confusion")
    assert confusion["points"] == 4  # four ground-truth topics
    shards = next(c for c in charts if c["chart"] == "shards")
    assert shards["points"] == 2

    # a scheduled job: two runs, the second with another quantization and new input
    raw = {
        "name": "nightly", "input": {"paths": [str(tmp_path / "landing")]}, "model": {"name": model, "device": "cpu",
        "quantization": "int8"}, "task": {"type": "feature-extraction"}, "batching": {"batch_size": 8},
        "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1}, "output": {"path": str(tmp_path / "nightly")},
        "schedule": {"cron": "0 2 * * *"},
    }
    tick = datetime(2026, 11, 28, 2, 0, 30, tzinfo=UTC)
    write_jsonl(tmp_path / "landing" / "a.jsonl", [{"id": f"a{i}", "text": s} for i, s in enumerate(SENTENCES)])
    run_due(spec_from_dict(raw), now=tick)
    write_jsonl(tmp_path / "landing" / "b.jsonl", [{"id": f"b{i}", "text": s} for i, s in enumerate(SENTENCES)])
    raw["model"]["quantization"] = "none"
    run_due(spec_from_dict(raw), now=tick + timedelta(days=1))

    root = tmp_path / "nightly" / "_report.html"
    text = root.read_text()
    assert "run=2026-11-28T02:00:00Z/_report.html" in text and "(int8)" in text and "(none)" in text
    charts, errors, remote = open_page(browser, root, tmp_path / "ledger-report.png")
    assert errors == [] and remote == []
    assert_drawn(charts, LEDGER_CHARTS)
    runs_chart = next(c for c in charts if c["chart"] == "errors")
    assert runs_chart["points"] == 4  # two runs × (rows, quarantined)
    partition = tmp_path / "nightly" / "run=2026-11-29T02:00:00Z" / "_report.html"
    charts, errors, remote = open_page(browser, partition, tmp_path / "partition-report.png")
    assert errors == [] and remote == []
    assert {"throughput", "padding", "rows", "shards"} <= {c["chart"] for c in charts}

    # `pipelines report` rebuilds them all, from the files alone
    page.unlink()
    root.unlink()
    done = cli("report", str(tmp_path / "nightly"))
    assert done.returncode == 0, done.stderr
    assert f"report: {tmp_path / 'nightly'}/_report.html" in done.stdout
    assert root.exists() and partition.exists()
    done = cli("report", str(out))
    assert done.returncode == 0 and page.exists()
    assert json.loads((out / "_run.json").read_text())["fidelity"]["passed"] is True
    assert cli("report", str(tmp_path / "in")).returncode == 2


def test_a_page_that_cannot_be_written_says_to_check_write_access_not_the_outputs_files(ray_session, tiny_models,
                                                                                         tmp_path):
    """`pipelines report OUT` by a user who may read the output but not write it failed saying to check the output's
    files (_run.json, _commits/, the part files), which were fine (an environment audit's case). Where the page is
    what could not be written, it says so. As root no mode stops a write, so the page's name is a folder here."""
    from helpers import make_spec

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"a{i}", "text": s} for i, s in enumerate(SENTENCES)])
    out = tmp_path / "_reports" / "out"  # a folder named like the page: not the page
    run_job(make_spec(tiny_models("classifier"), {"type": "text-classification"}, out,
                      input={"paths": [str(tmp_path / "in")]}))
    (out / "_report.html").unlink()
    (out / "_report.html").mkdir()
    (out / "_report.html" / "x").write_text("")
    done = cli("report", str(out))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "could not write the page" in line and "write access" in line and "part files" not in line, line
    shutil.rmtree(out / "_report.html")
    (out / "_run.json").unlink()
    (out / "_run.json").mkdir()  # what can't be read is no page to write: the output's files are named
    line = cli("report", str(out)).stderr.strip().splitlines()[-1]
    assert "the report could not be built" in line and "write access" not in line, line


def test_a_damaged_part_file_is_named_on_the_page_and_a_page_not_rebuilt_is_not_left_stale(
    ray_session, tiny_models, tmp_path, monkeypatch
):
    """A part file damaged after its commit made `pipelines report` end in a traceback, and every later run's page
    fail, leaving the first run's page in place as if it were the last run's."""
    from helpers import make_spec

    from pipelines.output import report

    for name in ("a", "b"):
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", [{"id": f"{name}{i}", "text": s} for i, s in enumerate(SENTENCES)])
    out = tmp_path / "out"
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, out,
                     input={"paths": [str(tmp_path / "in")]})
    assert run_job(spec).report is not None
    part = sorted(out.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:64])
    done = cli("report", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    page = (out / "_report.html").read_text()
    assert "1 part file(s) could not be read" in page and part.name in page

    write_jsonl(tmp_path / "in" / "c.jsonl", [{"id": f"c{i}", "text": s} for i, s in enumerate(SENTENCES)])

    def fails(data):
        raise RuntimeError("no page")

    monkeypatch.setattr(report, "run_page", fails)
    summary = run_job(spec)
    assert summary.shards_this_run == 1 and summary.report is None
    assert not (out / "_report.html").exists()  # not the first run's page, shown as the last run's


def test_labels_from_the_data_are_drawn_as_text_not_as_markup(browser, tmp_path):
    """Plotly reads ``<a href>``, ``<b>`` and entities in a label as markup: a label (or a file name, a reason) of
    the user's data became a link on the page."""
    from collections import Counter

    from pipelines.output import report

    link, bold = '<a href="https://example.com/x">click</a>', "<b>bold</b> &amp; more"
    page = tmp_path / "_report.html"
    page.write_text(report.run_page(report.RunData(str(tmp_path), None, None, [], labels=Counter({link: 3, bold: 2}))))
    tab = browser.new_page()
    tab.goto(page.as_uri(), wait_until="load")
    tab.wait_for_function("() => document.querySelector('div.chart[data-chart=labels] svg.main-svg')")
    links = tab.evaluate("() => document.querySelectorAll('.js-plotly-plot a').length")
    ticks = tab.evaluate("() => [...document.querySelectorAll('div.chart[data-chart=labels] .xtick text')]"
                         ".map(t => t.textContent)")
    tab.close()
    assert links == 0 and sorted(ticks) == sorted([link, bold])


def test_shards_with_the_same_file_name_in_different_folders_are_each_drawn(ray_session, tiny_models, browser,
                                                                             tmp_path):
    """A shard was named on the charts by its file name alone: the shards of a Hive-style input (``day=1/part-0``,
    ``day=2/part-0``) were drawn as one bar of the padding chart and one row of the per-shard timings."""
    from helpers import make_spec

    for day in ("day=1", "day=2", "day=3"):
        write_jsonl(tmp_path / "in" / day / "part-0.jsonl", [{"id": f"{day}-{i}", "text": s}
                                                            for i, s in enumerate(SENTENCES)])
    out = tmp_path / "out"
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, out,
                     input={"paths": [str(tmp_path / "in")]})
    assert run_job(spec).shards == 3
    tab = browser.new_page()
    tab.goto((out / "_report.html").as_uri(), wait_until="load")
    tab.wait_for_function("() => document.querySelector('div.chart[data-chart=shards] svg.main-svg')")
    ticks = {key: tab.evaluate(f"() => [...document.querySelectorAll('div.chart[data-chart={key}] .{axis}tick text')]"
                               ".map(t => t.textContent)")
             for key, axis in (("padding", "x"), ("shards", "y"))}
    tab.close()
    names = {"day=1/part-0.jsonl", "day=2/part-0.jsonl", "day=3/part-0.jsonl"}
    assert set(ticks["padding"]) == names and set(ticks["shards"]) == names, ticks



def test_a_run_that_stops_before_its_summary_leaves_no_page_of_the_run_before(ray_session, tiny_models, tmp_path,
                                                                               monkeypatch):
    """A run that started and then failed, or was killed, before its summary left the earlier run's page in place:
    it said ``succeeded`` with that run's rows and shards beside an output that no longer had ``_run.json``."""
    from helpers import make_spec

    from pipelines import faults
    from pipelines.errors import PipelineError

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"a{i}", "text": s} for i, s in enumerate(SENTENCES)])
    out = tmp_path / "out"
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, out,
                     input={"paths": [str(tmp_path / "in")]})
    assert run_job(spec).report is not None
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": f"b{i}", "text": s} for i, s in enumerate(SENTENCES)])

    def stops(point):
        if point == "before_summary":
            raise PipelineError("stopped")

    monkeypatch.setattr(faults, "checkpoint", stops)
    with pytest.raises(PipelineError, match="stopped"):
        run_job(spec)
    assert not (out / "_run.json").exists()
    assert not (out / "_report.html").exists()  # not the first run's page, passing for the state of the output
    monkeypatch.undo()
    done = cli("report", str(out))  # a page of what is committed, saying that the run has not finished
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the run has not finished" in (out / "_report.html").read_text()



def test_a_failed_run_says_why_on_its_page(ray_session, tiny_models, tmp_path):
    """A run over its error budget wrote ``status failed`` in ``_run.json`` and on its page, and the reason only on
    the terminal: a reader of the page (or of ``_run.json``) could not tell why it failed."""
    from helpers import make_spec

    rows = [{"id": f"a{i}", "text": s} for i, s in enumerate(SENTENCES)]
    rows[0]["text"] = None
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    out = tmp_path / "out"
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"}, out,
                     input={"paths": [str(tmp_path / "in")]}, errors={"max_rate": 0.0})
    from pipelines.errors import PipelineError

    with pytest.raises(PipelineError, match="over errors.max_rate") as raised:
        run_job(spec)
    summary = json.loads((out / "_run.json").read_text())
    assert summary["status"] == "failed" and summary["failure"] == str(raised.value)
    page = (out / "_report.html").read_text()
    assert "over errors.max_rate=0.0 (" in page



def test_throughput_buckets_cover_the_run_and_no_more():
    """The buckets were cut at fixed steps from 0 to past the last block: for about one run in four, float rounding
    gave a 31st bucket holding only the last block, drawn as a near-zero rows/s at the end of a steady run."""
    from pipelines.output import report
    from pipelines.output.records import CommitRecord, ModelRef, ShardInput, StagedBlock

    blocks = [StagedBlock(at=1000.0 + t, rows=1, errors=0) for t in range(3507)]  # 1 row/s for 3,506 s
    record = CommitRecord(shard="s", input=ShardInput(uri="/in/a.jsonl", size=1), spec_hash="h",
                          model=ModelRef(name="m"), rows_in=len(blocks), rows=len(blocks), errors=0, blocks=blocks,
                          committed_at=1000.0 + 3507)
    figure = report.throughput_chart(report.RunData("/out", None, None, [record]))
    assert figure is not None
    bars = figure.data[0]
    assert len(bars.y) == report.TIME_BUCKETS
    assert min(bars.y) > 0.95 and max(bars.y) < 1.05, list(bars.y)
    assert sum(bars.y) * bars.width / 0.9 == pytest.approx(len(blocks))  # every row in a bucket


def test_the_ledger_page_says_why_a_run_failed_and_draws_each_attempt():
    """The root page of a scheduled job listed a failed run as ``failed`` without its error (the ledger line has it),
    and drew a run's attempts (a failed one, then its resume) as one bar of the charts per run, one over the other."""
    from pipelines.output import report

    run = "2026-11-28T02:00:00Z"
    common = {"tick": run, "run": run, "kind": "tick", "model": {"name": "m", "quantization": "none"}}
    entries = [
        {**common, "attempt": 1, "status": "running", "started_at": "2026-11-28T02:00:31Z"},
        {**common, "attempt": 1, "status": "failed", "error": "2 of 9 rows were quarantined <b>(22.2%)</b>",
         "rows_out": 7, "errors": 2, "wall_s": 40.0, "finished_at": "2026-11-28T02:01:11Z"},
        {**common, "attempt": 2, "status": "running", "started_at": "2026-11-29T02:00:31Z"},
        {**common, "attempt": 2, "status": "succeeded", "rows_out": 9, "errors": 0, "wall_s": 12.0,
         "finished_at": "2026-11-29T02:00:43Z"},
    ]
    page = report.ledger_page("/out", entries)
    assert "2 of 9 rows were quarantined &lt;b&gt;(22.2%)&lt;/b&gt;" in page
    runs = [e for e in entries if e["status"] != "running"]
    for chart in (report.ledger_errors_chart(runs), report.ledger_wall_chart(runs)):
        assert chart is not None
        names = list(chart.data[0].x)
        assert len(set(names)) == len(names) == 2, names


def test_a_run_that_scored_nothing_says_so_on_its_page(tmp_path):
    """A run that only finished what an earlier one had committed (a resume after a crash before the summary) showed
    ``speed 0.0 rows/s``, ``padding efficiency None`` and three charts' headings over nothing."""
    from pipelines.output import report
    from pipelines.output.records import CommitRecord, ModelRef, RunSummary, ShardInput, StagedBlock

    record = CommitRecord(shard="s", input=ShardInput(uri="/in/a.jsonl", size=1), spec_hash="h",
                          model=ModelRef(name="m"), rows_in=5, rows=5, errors=0, tokens=50, padded=60,
                          blocks=[StagedBlock(at=100.0, rows=5, errors=0, tokens=50, padded=60)], committed_at=101.0)
    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="none",
                         device="cpu", task="text-classification", shards=1, shards_this_run=0, rows_in=5, rows_out=5,
                         errors=0, error_rate=0.0, tokens=50, padded=60, started_at=200.0, wall_s=0.01,
                         rows_per_s=0.0, tokens_per_s=0.0)
    page = report.run_page(report.RunData(str(tmp_path), summary, None, [record]))
    assert "<td>None</td>" not in page and "0.0 rows/s" not in page
    said = "No shard was scored by this run: the 1 committed shard(s) were committed by earlier runs"
    assert page.count(said) == 3  # throughput, padding, per-shard timings


def test_a_run_whose_every_row_was_quarantined_prints_no_padding_efficiency_of_none():
    """Every row of the run quarantined (a fill-mask row without a mask, under errors.max_rate 1): the terminal's
    summary said ``padding efficiency None``."""
    from pipelines.output.records import ModelRef, RunSummary
    from pipelines.output.summary import render

    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="none",
                         device="cpu", task="fill-mask", shards=1, shards_this_run=1, rows_in=1, rows_out=0,
                         errors=1, error_rate=1.0, tokens=0, padded=0, started_at=200.0, wall_s=6.9,
                         rows_per_s=0.1, tokens_per_s=0.0, rows_this_run=1, padding_efficiency=None)
    said = render(summary)
    assert "None" not in said, said
    assert "6.9 s, 0.1 rows/s, 0 tokens/s, no token computed (every row of this run quarantined)" in said, said


def test_the_charts_of_hundreds_of_shards_draw_each_shard(browser, tmp_path):
    """With 300 shards the per-shard timings were 300 bars in 380 pixels (under 1 pixel each: a faint line, no bar
    to see or point at), and the padding chart's bars, drawn thinner than their white outline, hardly showed."""
    from pipelines.output import report
    from pipelines.output.records import CommitRecord, ModelRef, ShardInput, StagedBlock

    records = [
        CommitRecord(shard=f"s{i}", input=ShardInput(uri=f"/in/part-{i:04d}.jsonl", size=1), spec_hash="h",
                     model=ModelRef(name="m"), rows_in=10, rows=10, errors=0, tokens=90, padded=100,
                     blocks=[StagedBlock(at=100.0 + 3 * i, rows=10, errors=0, tokens=90, padded=100)],
                     committed_at=102.0 + 3 * i)
        for i in range(300)
    ]
    page = tmp_path / "_report.html"
    page.write_text(report.run_page(report.RunData(str(tmp_path), None, None, records)))
    tab = browser.new_page()
    tab.goto(page.as_uri(), wait_until="load")
    tab.wait_for_function("() => document.querySelector('div.chart[data-chart=shards] svg.main-svg')")
    drawn = {key: tab.evaluate(f"""() => [...document.querySelectorAll('div.chart[data-chart={key}] g.point path')]
        .map(p => {{ const box = p.getBoundingClientRect(); const style = getComputedStyle(p);
                    return [box.width, box.height, parseFloat(style.strokeWidth || '0')]; }})""")
             for key in ("shards", "padding")}
    tab.close()
    assert len(drawn["shards"]) == len(drawn["padding"]) == 300
    assert min(height for _, height, _ in drawn["shards"]) >= 4, sorted(drawn["shards"])[:3]  # a bar per shard
    assert all(outline == 0 for _, _, outline in drawn["padding"])  # no outline over bars 2 pixels wide


def test_the_page_names_the_unreadable_input_files_as_the_summary_does(tmp_path):
    """An input file quarantined whole (errors.unreadable_files: quarantine) was on the terminal's summary with its
    name, rows and reason, and on the page only as a bar of its reason: of 0 rows where its rows are unknown."""
    from pipelines.output import report
    from pipelines.output.records import ModelRef, RunSummary, Unreadable

    found = [Unreadable(uri="/in/<b>e</b>.parquet", reason="unreadable parquet file: no footer"),
             Unreadable(uri="/in/d.jsonl.gz", reason="unreadable jsonl file: cut short", rows=68)]
    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="none",
                         device="cpu", task="text-classification", shards=3, shards_this_run=3, rows_in=88,
                         rows_out=20, errors=68, error_rate=0.77, unreadable_files=found, files_with_unknown_rows=1)
    page = report.run_page(report.RunData(str(tmp_path), summary, None, []))
    assert "/in/&lt;b&gt;e&lt;/b&gt;.parquet (rows unknown): unreadable parquet file: no footer" in page
    assert "/in/d.jsonl.gz (68 rows before the damage): unreadable jsonl file: cut short" in page


def nightly_job(tiny_models, tmp_path) -> dict:
    """A scheduled job of a classifier over one landing file (written here), nightly at 02:00."""
    write_jsonl(tmp_path / "landing" / "a.jsonl", [{"id": f"a{i}", "text": s} for i, s in enumerate(SENTENCES)])
    return {
        "name": "nightly", "input": {"paths": [str(tmp_path / "landing")]},
        "model": {"name": tiny_models("classifier"), "device": "cpu"}, "task": {"type": "text-classification"},
        "batching": {"batch_size": 8}, "compute": {"cpus_per_actor": 0.5, "threads_per_actor": 1},
        "output": {"path": str(tmp_path / "nightly")}, "schedule": {"cron": "0 2 * * *"},
    }


def test_the_ledger_page_links_every_run_to_a_page_that_is_there(ray_session, tiny_models, tmp_path):
    """A rescore moves the partitions before it to ``_superseded/``, their pages with them: the root page went on
    linking each of those runs to ``run=<run>/_report.html``, a page no longer there."""
    import re

    raw = nightly_job(tiny_models, tmp_path)
    tick = datetime(2026, 11, 28, 2, 0, 30, tzinfo=UTC)
    run_due(spec_from_dict(raw), now=tick)
    assert not run_due(spec_from_dict(raw), now=tick + timedelta(hours=3), rescore=True).failures
    root = tmp_path / "nightly"
    links = re.findall(r"<a href='([^']+/_report.html)'>", (root / "_report.html").read_text())
    assert len(links) == 2, links
    assert all((root / link).is_file() for link in links), [link for link in links if not (root / link).is_file()]
    assert "_superseded/run=2026-11-28T02:00:00Z/_report.html" in links
    assert "superseded by rescore 2026-11-28T05:00:30Z" in (root / "_report.html").read_text()


def test_a_report_rebuilt_while_a_rescore_moves_a_partition_away_makes_no_empty_partition(tmp_path, monkeypatch):
    """`pipelines report ROOT` listed the partitions, a rescore then moved one to ``_superseded/``, and writing its
    page made ``run=<run>/`` again, holding only a page of nothing ("No shard is committed yet."); the next tick
    moved that folder to ``_superseded/`` too, over the moved run's own page."""
    from test_schedule import Committing, add_shard, day, fake_model, make_job, rows

    from pipelines.output import report

    runner, spec = Committing(), make_job(tmp_path, fake_model(tmp_path))
    add_shard(tmp_path, "a.jsonl", rows("a", 2))
    run_due(spec, now=day(1, hours=0.01), runner=runner)
    root, first = tmp_path / "out", "run=2026-11-28T02:00:00Z"
    report.rebuild(str(root))
    read = report.read_run

    def rescored_meanwhile(location: str) -> report.RunData:  # the listing is done: the rescore moves it now
        monkeypatch.setattr(report, "read_run", read)
        assert not run_due(spec, now=day(1, hours=3), rescore=True, runner=runner).failures
        return read(location)

    monkeypatch.setattr(report, "read_run", rescored_meanwhile)
    pages = report.rebuild(str(root))
    assert not (root / first).exists(), sorted(p.name for p in (root / first).iterdir())
    assert str(root / first / "_report.html") not in pages
    run_due(spec, now=day(2, hours=0.01), runner=runner)
    assert "No shard is committed yet." not in (root / "_superseded" / first / "_report.html").read_text()


def test_a_resumed_auto_run_says_its_precision_was_checked_by_an_earlier_run(tmp_path):
    """A resumed run under ``quantization: auto`` keeps the precision its output's first run chose by a check, and
    has no check of its own: its page said ``Not checked: set model.fidelity in the spec``."""
    import html

    from pipelines.output import report
    from pipelines.output.records import ModelRef, RunSummary

    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="auto",
                         device="cpu", task="zero-shot-classification", shards=6, shards_this_run=1, rows_in=600,
                         rows_out=600, errors=0, error_rate=0.0, precision={"quantization": "none", "dtype": "bfloat16"})
    page = html.unescape(report.run_page(report.RunData(str(tmp_path), summary, None, [])))
    assert "Not checked: set model.fidelity" not in page
    assert ("Not checked in this run: it kept bfloat16, as an earlier run of this output (or of this scheduled "
            "job) chose under quantization auto; `pipelines fidelity JOB.yaml` measures it again.") in page



def test_the_ledger_page_links_a_failed_run_to_its_page_or_says_it_has_none(ray_session, tiny_models, tmp_path,
                                                                            monkeypatch):
    """A scheduled run that failed before its summary has no page of its own (a resume that fails deletes the one
    before, with its _run.json): the root page linked it to ``run=<run>/_report.html`` all the same."""
    import re

    from pipelines import faults
    from pipelines.errors import PipelineError

    raw = nightly_job(tiny_models, tmp_path)
    tick = datetime(2026, 11, 28, 2, 0, 30, tzinfo=UTC)

    def stops(point):
        if point == "before_summary":
            raise PipelineError("stopped")

    monkeypatch.setattr(faults, "checkpoint", stops)
    assert run_due(spec_from_dict(raw), now=tick).failures
    root = tmp_path / "nightly"
    partition = root / "run=2026-11-28T02:00:00Z"
    assert (partition / "_commits").is_dir() and not (partition / "_run.json").exists()
    page = (root / "_report.html").read_text()
    links = re.findall(r"<a href='([^']+/_report.html)'>", page)
    assert links == ["run=2026-11-28T02:00:00Z/_report.html"] and (root / links[0]).is_file()
    assert "the run has not finished, or it failed" in (partition / "_report.html").read_text()

    (partition / "_report.html").unlink()  # as a page that could not be written leaves it
    from pipelines.output import report

    report.write_ledger_report(str(root), report.ledger_entries(str(root)))
    page = (root / "_report.html").read_text()
    assert not re.findall(r"<a href='([^']+/_report.html)'>", page)
    assert "no page: `pipelines report" in page


class SlowDisk:
    """A local disk whose every open waits ``delay`` seconds, as an object store's request does; it counts the
    opens in flight at once."""

    def __init__(self, delay: float) -> None:
        import threading

        import pyarrow.fs as pafs

        self.local, self.delay, self.lock = pafs.LocalFileSystem(), delay, threading.Lock()
        self.now = self.most = 0

    def filesystem(self):
        import pyarrow.fs as pafs

        disk = self

        class Handler(pafs.FileSystemHandler):
            def __eq__(self, other):
                return self is other

            def __ne__(self, other):
                return self is not other

            def get_type_name(self):
                return "slow"

            def normalize_path(self, path):
                return path

            def get_file_info(self, paths):
                return disk.local.get_file_info(paths)

            def get_file_info_selector(self, selector):
                return disk.local.get_file_info(selector)

            def open_input_stream(self, path):
                disk.wait()
                return disk.local.open_input_stream(path)

            def open_input_file(self, path):
                disk.wait()
                return disk.local.open_input_file(path)

            def create_dir(self, path, recursive):
                disk.local.create_dir(path, recursive=recursive)

            def delete_dir(self, path):
                disk.local.delete_dir(path)

            def delete_dir_contents(self, path, missing_dir_ok=False):
                disk.local.delete_dir_contents(path)

            def delete_root_dir_contents(self):
                raise NotImplementedError

            def delete_file(self, path):
                disk.local.delete_file(path)

            def move(self, src, dest):
                disk.local.move(src, dest)

            def copy_file(self, src, dest):
                disk.local.copy_file(src, dest)

            def open_output_stream(self, path, metadata):
                return disk.local.open_output_stream(path)

            def open_append_stream(self, path, metadata):
                return disk.local.open_append_stream(path)

        return pafs.PyFileSystem(Handler())

    def wait(self) -> None:
        import time

        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.delay)
        with self.lock:
            self.now -= 1


def test_a_page_of_many_shards_on_an_object_store_reads_its_files_at_once(tmp_path, monkeypatch):
    """The page read each commit record, then each part file (twice: its schema, then its columns), one request after
    the other: on an object store, where a request takes tens of milliseconds, a job of thousands of shards waited
    minutes at its end for its page. 64 shards on a disk whose every open takes 50 ms: 9.7 s one at a time."""
    import time

    from pipelines.output import report
    from pipelines.output.records import CommitRecord, ModelRef, ShardInput

    (tmp_path / "_commits").mkdir()
    for i in range(64):
        part = f"part-s{i:03d}-00000.parquet"
        write_parquet(tmp_path / part, [{"id": "a", "label": "x", "score": 0.5}, {"id": "b", "label": "y", "score": 0.7}])
        record = CommitRecord(shard=f"s{i:03d}", input=ShardInput(uri=f"/in/{i}.jsonl", size=1), spec_hash="h",
                              model=ModelRef(name="m"), rows_in=2, rows=2, errors=0, files=[part], committed_at=i)
        (tmp_path / "_commits" / f"s{i:03d}.json").write_text(json.dumps(record.to_json()))
    disk = SlowDisk(0.05)
    slow = disk.filesystem()
    monkeypatch.setattr(report, "resolve", lambda location: (slow, str(tmp_path)))
    start = time.monotonic()
    data = report.read_run(str(tmp_path))
    took = time.monotonic() - start
    assert len(data.commits) == 64 and data.labels == {"x": 64, "y": 64} and len(data.scores) == 128
    assert disk.most >= 8, disk.most  # files read at once, not one after the other
    assert took < 4, took


def test_the_error_budget_message_names_the_limit_that_was_passed():
    """A run over errors.max_rate failed with 'over the limit of errors.max_rate=0.01 / errors.max_count=None': a
    limit that is not set named as one passed (the page shows this line as the run's failure)."""
    from pipelines.output import summary as summaries
    from pipelines.output.records import JobRecord, ModelRef
    from pipelines.runner import error_policy_violation

    job = JobRecord(name="j", spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu",
                    task="text-classification", spec={})
    base = summaries.build(job, [], [], 0.0, "succeeded")
    past = base.model_copy(update={"rows_in": 101, "errors": 2, "error_rate": 0.0198, "error_reasons": {"x": 2}})
    by_rate = spec_from_dict({"input": {"paths": ["in"]}, "model": {"name": "m"}, "task": {"type": "text-classification"},
                              "output": {"path": "out"}, "errors": {"max_rate": 0.01}})
    said = error_policy_violation(by_rate, past)
    assert said is not None and "over errors.max_rate=0.01 (" in said and "max_count" not in said, said
    by_count = by_rate.model_copy(deep=True)
    by_count.errors.max_rate, by_count.errors.max_count = 1.0, 1
    said = error_policy_violation(by_count, past)
    assert said is not None and "over errors.max_count=1 (" in said and "max_rate" not in said, said


def test_the_page_footer_says_when_it_was_written_in_utc(tmp_path, monkeypatch):
    """The footer's ``Written 2026-12-02 08:43:33`` was the writing machine's local time with no zone: a page built
    on a cluster node in another zone than its reader's said a time an hour or more off, with nothing to tell."""
    import re
    import time

    from pipelines.output import report

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: local time is never UTC's
    time.tzset()
    try:
        page = report.run_page(report.RunData(str(tmp_path), None, None, []))
    finally:
        monkeypatch.undo()
        time.tzset()
    written = re.search(r"Written (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC by", page)
    assert written, page[-300:]
    at = datetime.strptime(written.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60


def test_a_failed_run_says_where_its_page_is_or_how_to_build_one(ray_session, tiny_models, tmp_path, monkeypatch,
                                                                  capsys):
    """A run over its error budget wrote its page (status failed, and why), yet the command printed only
    ``error: …``: a succeeded run's last line names its page, a failed one's did not, though the page says why. It
    says where, in a line before its error (which stays the last line). A run that stops before its summary writes
    none: the command says how to build one of what is committed."""
    from test_faults import write_job

    from pipelines import faults
    from pipelines.cli.main import main
    from pipelines.errors import PipelineError

    rows = [{"id": f"a{i}", "text": s} for i, s in enumerate(SENTENCES)]
    rows[0]["text"] = None
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    job = write_job(tmp_path, tiny_models("classifier"), tmp_path / "in", errors={"max_rate": 0.0001})
    out = tmp_path / "out"
    assert main(["run", str(job)]) == 2
    said = last_lines(capsys.readouterr().err)
    assert said[0] == f"report: {out}/_report.html (the failed run's page)", said
    assert said[1].startswith("error: ") and "over errors.max_rate" in said[1] and len(said) == 2, said
    assert (out / "_report.html").exists()

    def stops(point):
        if point == "before_summary":
            raise PipelineError("stopped")

    monkeypatch.setattr(faults, "checkpoint", stops)
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": f"b{i}", "text": s} for i, s in enumerate(SENTENCES)])
    assert main(["run", str(job)]) == 2
    assert last_lines(capsys.readouterr().err) == [
        f"report: none written for this run; build one of what is committed with `pipelines report {out}`",
        "error: stopped"]
    assert not (out / "_report.html").exists()

    # a run that fails before its first commit: `pipelines report` would only say there is nothing to draw
    def before_any_commit(point):
        if point == "before_commit":
            raise PipelineError("stopped")

    monkeypatch.setattr(faults, "checkpoint", before_any_commit)
    new = tmp_path / "new.yaml"
    new.write_text(job.read_text().replace(str(out), str(tmp_path / "new")))
    assert main(["run", str(new)]) == 2
    assert last_lines(capsys.readouterr().err) == [
        f"report: none, as no shard of {tmp_path / 'new'} is committed yet", "error: stopped"]


def last_lines(printed: str) -> list[str]:
    """The command's last two lines (the log's lines come before): its ``report:`` line, then its error."""
    return printed.strip().splitlines()[-2:]


def test_columns_the_job_keeps_are_not_drawn_as_its_predictions(tmp_path):
    """The page read the columns ``label`` and ``score`` of the part files whatever the task: an embedding job that
    keeps its dataset's ``label`` and ``score`` (columns_to_keep) had its input's labels drawn as the model's label
    distribution, and a kept ``score`` of text (``4/5``) made `pipelines report` end in a traceback and every run's
    page go unwritten."""
    from helpers import make_spec

    from pipelines.output import report
    from pipelines.output.records import CommitRecord, JobRecord, ModelRef, ShardInput

    spec = make_spec("m", {"type": "feature-extraction"}, tmp_path, input={"columns_to_keep": ["label", "score"]})
    job = JobRecord(name=None, spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu",
                    task="feature-extraction", spec=spec.model_dump(mode="json"))
    (tmp_path / "_job.json").write_text(json.dumps(job.to_json()))
    write_parquet(tmp_path / "part-s0-00000.parquet",
                  [{"id": "a", "label": "World", "score": "4/5", "embedding": [0.1, 0.2]},
                   {"id": "b", "label": "Sports", "score": "1/5", "embedding": [0.3, 0.4]}])
    record = CommitRecord(shard="s0", input=ShardInput(uri="/in/a.jsonl", size=1), spec_hash="h",
                          model=ModelRef(name="m"), rows_in=2, rows=2, errors=0, files=["part-s0-00000.parquet"],
                          committed_at=1.0)
    (tmp_path / "_commits").mkdir()
    (tmp_path / "_commits" / "s0.json").write_text(json.dumps(record.to_json()))

    done = cli("report", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    page = (tmp_path / "_report.html").read_text()
    assert "data-chart='labels'" not in page and "data-chart='scores'" not in page
    assert "No label column in this task&#x27;s output." in page and "No score column" in page
    data = report.read_run(str(tmp_path))
    assert not data.labels and not len(data.scores) and not data.unread


def test_an_output_of_no_rows_says_why_each_chart_is_empty(tmp_path):
    """An output whose input files hold no rows (or a run with nothing committed) showed the headings "Throughput over
    time", "Padding efficiency" and "Rows and errors by reason" over an empty paragraph: no chart and no word why."""
    from pipelines.output import report
    from pipelines.output.records import CommitRecord, ModelRef, RunSummary, ShardInput

    empty = CommitRecord(shard="s", input=ShardInput(uri="/in/empty.jsonl", size=0), spec_hash="h",
                         model=ModelRef(name="m"), rows_in=0, rows=0, errors=0, committed_at=101.0)
    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="none",
                         device="cpu", task="text-classification", shards=1, shards_this_run=1, rows_in=0, rows_out=0,
                         errors=0, error_rate=0.0, tokens=0, padded=0, started_at=100.0, wall_s=1.0)
    for commits in ([empty], []):
        page = report.run_page(report.RunData(str(tmp_path), summary, None, commits))
        assert "<p class='none'></p>" not in page, commits
    page = report.run_page(report.RunData(str(tmp_path), summary, None, [empty]))
    assert page.count("the 1 shard(s) committed hold no rows") == 3  # throughput, padding, rows and errors
    quarantined = empty.model_copy(update={"rows_in": 3, "errors": 3, "reasons": {"text is empty": 3}})
    page = report.run_page(report.RunData(str(tmp_path), summary, None, [quarantined]))
    assert "No rows tokenized: every row of the 1 shard(s) committed was quarantined." in page  # padding
    assert "<p class='none'></p>" not in page


def test_a_run_summary_that_does_not_read_is_not_said_to_be_missing(tmp_path):
    """A ``_run.json`` that is there but does not read as a summary (another version's, a tool's) gave a page saying
    "No run summary (_run.json) here yet: the run has not finished", beside that file and its ``_SUCCESS``."""
    from pipelines.output import report

    (tmp_path / "_commits").mkdir()
    (tmp_path / "_run.json").write_text(json.dumps({"status": "succeeded", "rows": 5}))
    page = report.run_page(report.read_run(str(tmp_path)))
    assert "No run summary" not in page
    assert "The run summary (_run.json) is here but does not read as one" in page
    (tmp_path / "_run.json").unlink()
    assert "No run summary (_run.json) here yet" in report.run_page(report.read_run(str(tmp_path)))


def test_the_run_start_on_the_page_is_in_utc_as_the_footer(tmp_path, monkeypatch):
    """The facts' ``started`` was the building machine's local time with its zone's abbreviation (``IST``: India's,
    Ireland's or Israel's), beside a footer in UTC: the run seemed to start hours after its page was written."""
    import time

    from pipelines.output import report
    from pipelines.output.records import ModelRef, RunSummary

    started = datetime(2026, 12, 2, 7, 43, 33, tzinfo=UTC).timestamp()
    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="none",
                         device="cpu", task="text-classification", shards=0, shards_this_run=0, rows_in=0, rows_out=0,
                         errors=0, error_rate=0.0, started_at=started, wall_s=1.0)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        page = report.run_page(report.RunData(str(tmp_path), summary, None, []))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "<td>started</td><td>2026-12-02 07:43:33 UTC</td>" in page


def test_two_writers_of_a_page_at_once_each_write_a_whole_page(tmp_path, monkeypatch):
    """``pipelines report OUT`` run while the run (or the scheduler, or another ``pipelines report``) writes the same
    page: both wrote through one temporary name, ``_report.html.tmp``, so the second truncated and renamed the first's
    file, whose rename then failed (``No such file or directory``): the run's page was deleted as not written, or
    ``pipelines report`` exited 2."""
    from pipelines import faults
    from pipelines.output import report

    monkeypatch.setattr(report, "read_run", lambda location: report.RunData(location, None, None, []))
    real = faults.write_fails
    nested: list[str] = []

    def other_writer(point: str) -> None:  # the first writer's bytes are in its temporary file: now the other writes
        if point == "_report.html" and not nested:
            nested.append("writing")
            nested[0] = report.write_run_report(str(tmp_path))
        real(point)

    monkeypatch.setattr(faults, "write_fails", other_writer)
    assert report.write_run_report(str(tmp_path)) == nested[0]
    page = (tmp_path / "_report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>"), page[-200:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_report.html"]


def test_the_throughput_chart_counts_an_unreadable_files_rows_as_the_summary_does():
    """An unreadable input file (errors.unreadable_files: quarantine) is one record standing for its rows, staged as
    one block of one error: a Parquet file whose footer says 100 rows, beside 30 good rows, was 31 rows done on the
    throughput chart where the summary, the rows chart and the per-shard timings said 130."""
    from pipelines.output import report
    from pipelines.output.records import CommitRecord, ModelRef, ShardInput, StagedBlock, Unreadable

    def record(name: str, block: StagedBlock, rows_in: int, unreadable: Unreadable | None = None) -> CommitRecord:
        return CommitRecord(shard=name, input=ShardInput(uri=f"/in/{name}", size=1), spec_hash="h",
                            model=ModelRef(name="m"), rows_in=rows_in, rows=block.rows,
                            errors=rows_in - block.rows, blocks=[block], committed_at=block.at + 0.1,
                            unreadable=unreadable)

    # as a run commits them (checked on a real run: the damaged file's block holds errors 1, its record rows_in 100)
    damaged = Unreadable(uri="/in/dmg.parquet", reason="unreadable parquet file: bad thrift", rows=100, exact=True)
    unknown = Unreadable(uri="/in/bad.jsonl.gz", reason="unreadable jsonl file: not gzip")
    records = [record("dmg.parquet", StagedBlock(at=100.0, rows=0, errors=1), 100, damaged),
               record("bad.jsonl.gz", StagedBlock(at=100.5, rows=0, errors=1), 0, unknown),
               record("good.jsonl", StagedBlock(at=101.0, rows=30, errors=0, tokens=90, padded=100), 30)]
    figure = report.throughput_chart(report.RunData("/out", None, None, records))
    assert figure is not None
    bars, done = figure.data
    assert list(done.y)[-1] == 130 == sum(r.rows_in for r in records)
    assert sum(bars.y) * bars.width / 0.9 == pytest.approx(130)


def test_labels_that_look_like_dates_are_drawn_as_labels(browser, tmp_path):
    """Plotly takes text that reads as a date for a date: labels such as '2024-01' made the label chart's axis a
    time line, where the label 'other' beside them had no bar (0 pixels wide) and no label was named, and the
    confusion matrix's axes ran from 'Jan 2000' with no cell of a label named."""
    from collections import Counter

    from pipelines.output import report
    from pipelines.output.records import Agreement, ModelRef, RunSummary

    names = ["2024-01", "2024-02", "other"]
    confusion = {"2024-01": {"2024-01": 3, "other": 1}, "2024-02": {"2024-02": 2}, "other": {"other": 2}}
    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="none",
                         device="cpu", task="text-classification", shards=1, shards_this_run=1, rows_in=8, rows_out=8,
                         errors=0, error_rate=0.0, agreement=Agreement(accuracy=0.875, rows=8, confusion=confusion))
    page = tmp_path / "_report.html"
    page.write_text(report.run_page(report.RunData(str(tmp_path), summary, None, [],
                                                   labels=Counter({"2024-01": 4, "other": 2, "2024-02": 2}))))
    tab = browser.new_page()
    tab.goto(page.as_uri(), wait_until="load")
    tab.wait_for_function("() => document.querySelector('div.chart[data-chart=confusion] svg.main-svg')")
    ticks = {f"{key} {axis}": tab.evaluate(f"() => [...document.querySelectorAll("
                                           f"'div.chart[data-chart={key}] .{axis}tick text')].map(t => t.textContent)")
             for key, axis in (("labels", "x"), ("confusion", "x"), ("confusion", "y"))}
    widths = tab.evaluate("() => [...document.querySelectorAll('div.chart[data-chart=labels] g.point path')]"
                          ".map(p => p.getBoundingClientRect().width)")
    tab.close()
    assert {key: sorted(found) for key, found in ticks.items()} == dict.fromkeys(ticks, names), ticks
    assert len(widths) == 3 and min(widths) > 10, widths


def test_a_job_that_wrote_no_rows_says_so_not_that_its_task_has_no_label_column(tmp_path):
    """A zero-shot job with a ground-truth column whose input files held no rows (or whose every row was quarantined)
    got a page saying "No label column in this task's output.", "No score column ..." and "No ground truth
    (input.label_column) in this job.": three false reasons, where the task writes both columns and the job names
    its truth column; none was drawn because no row was written."""
    from helpers import make_spec

    from pipelines.output import report
    from pipelines.output.records import CommitRecord, JobRecord, ModelRef, RunSummary, ShardInput

    spec = make_spec("m", {"type": "zero-shot-classification", "candidate_labels": ["World", "Sports"]}, tmp_path,
                     input={"label_column": "label"}, output={"prediction_prefix": "predicted_"})
    job = JobRecord(name=None, spec_hash="h", model=ModelRef(name="m"), quantization="none", device="cpu",
                    task="zero-shot-classification", spec=spec.model_dump(mode="json"))
    empty = CommitRecord(shard="s", input=ShardInput(uri="/in/empty.jsonl", size=0), spec_hash="h",
                         model=ModelRef(name="m"), rows_in=0, rows=0, errors=0, committed_at=101.0)
    quarantined = empty.model_copy(update={"rows_in": 3, "errors": 3, "reasons": {"text is null": 3}})
    summary = RunSummary(status="succeeded", spec_hash="h", model=ModelRef(name="m"), quantization="none",
                         device="cpu", task="zero-shot-classification", shards=1, shards_this_run=1, rows_in=0,
                         rows_out=0, errors=0, error_rate=0.0, tokens=0, padded=0, started_at=100.0, wall_s=1.0)
    for record, why in ((empty, "No rows written: the 1 shard(s) committed hold no rows"),
                        (quarantined, "No rows written: every row of the 1 shard(s) committed was quarantined.")):
        page = report.run_page(report.RunData(str(tmp_path), summary, job, [record]))
        assert "No label column" not in page and "No score column" not in page and "No ground truth" not in page
        assert page.count(why) == 3  # labels, scores, confusion matrix
    page = report.run_page(report.RunData(str(tmp_path), summary, job, []))
    assert page.count("No shard is committed yet.") == 7  # every chart but the fidelity check's


def test_report_on_an_output_with_nothing_committed_yet_says_so_not_that_no_job_is_there(tmp_path):
    """`pipelines report OUT` while a run (an --overwrite one, or a new output's first) had committed no shard yet
    said "no job output here" of a folder whose _job.json names the job; it now says the job has committed nothing
    yet, and to ask again once a shard is committed. A folder with no job still gets the first answer."""
    from helpers import make_spec

    from pipelines.output.commit import OutputDir
    from pipelines.runner import job_record

    out = tmp_path / "out"
    out.mkdir()
    empty = cli("report", str(out))
    assert empty.returncode == 2 and "no job output here" in empty.stderr, empty.stderr
    OutputDir(str(out)).write_json("_job.json", job_record(make_spec("m", {"type": "text-classification"}, out)).to_json())
    started = cli("report", str(out))
    assert started.returncode == 2, started.stderr
    assert f"{out}: a job's output with no shard committed yet" in started.stderr, started.stderr
    assert not (out / "_report.html").exists()


def test_throughput_buckets_are_a_second_at_least_on_a_short_run():
    """README: rows per second in time buckets "(up to 30 of them, of a second at least, ...)". A run whose last block
    came 7.15 s after its start (a resumed main job) was cut into ceil(7.15) = 8 buckets of 0.89 s."""
    from pipelines.output import report
    from pipelines.output.records import CommitRecord, ModelRef, ShardInput, StagedBlock

    blocks = [StagedBlock(at=1000.0 + t, rows=10, errors=0) for t in (6.51, 6.52, 7.15)]
    record = CommitRecord(shard="s", input=ShardInput(uri="/in/a.jsonl", size=1), spec_hash="h",
                          model=ModelRef(name="m"), rows_in=30, rows=30, errors=0, blocks=blocks,
                          committed_at=1000.0 + 7.2)
    data = report.RunData("/out", None, None, [record])
    data.t0 = lambda: 1000.0  # the run's start
    bars = report.throughput_chart(data).data[0]
    width = bars.width / 0.9
    assert width >= 1.0, f"{len(bars.y)} buckets of {width:.2f} s"
    assert sum(bars.y) * width == pytest.approx(30)  # every row in a bucket
    assert max(bars.x) + width / 2 == pytest.approx(7.15)  # to the last block, no further
