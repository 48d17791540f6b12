"""The job spec: good specs load, each kind of bad spec fails naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import PipelineError
from pipelines.spec import changed_settings, load_spec, parse_override, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]


def minimal(**changes) -> dict:
    spec = {
        "input": {"paths": ["data"]},
        "model": {"name": "minilm"},
        "task": {"type": "feature-extraction"},
        "output": {"path": "out"},
    }
    for dotted, value in changes.items():
        node = spec
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return spec


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_spec_is_valid(path):
    spec = load_spec(path)
    assert spec.output.path
    assert spec.input.paths


def test_defaults_and_types():
    spec = spec_from_dict(minimal(input__paths="one/dir"))
    assert spec.input.paths == ["one/dir"]
    assert spec.model.quantization == "none"
    assert spec.compute.pool_bounds() == (1, 1)
    assert spec.output_columns() == ["id", "embedding"]


@pytest.mark.parametrize(
    ("changes", "field", "hint"),
    [
        ({"input__colour": "red"}, "input.colour", "unknown key"),
        ({"batching__batch_size": "many"}, "batching.batch_size", "integer"),
        ({"batching__max_tokens": 0}, "batching.max_tokens", "greater than 0"),
        ({"model__quantization": "int4"}, "model.quantization",
         "'none', 'int8', 'nf4', 'fp4', 'dynamic-int8', 'per-token-int8', 'smooth-int8' or 'auto'"),
        ({"task": {"type": "mind-reading"}}, "task", "allowed: feature-extraction"),
        ({"task": {"type": "zero-shot-classification"}}, "task.candidate_labels", "Field required"),
        ({"compute__min": 3, "compute__max": 2}, "compute", "min (3) is larger than max (2)"),
        ({"output": {}}, "output.path", "Field required"),
        # Ray's own resources named in compute.resources: Ray's ValueError (a traceback) when the pool starts, and
        # the model was placed on the CPU (model.device auto reads gpus_per_actor); a negative amount: the same
        ({"compute__resources": {"GPU": 1}}, "compute.resources", "compute.gpus_per_actor: 1"),
        ({"compute__resources": {"CPU": 2}}, "compute.resources", "compute.cpus_per_actor"),
        ({"compute__resources": {"x": -1}}, "compute.resources", "0 or more"),
        # a task section without its type, and a task named as transformers.pipeline("text-classification") names it:
        # pydantic's words ("Unable to extract tag using discriminator", "a valid dictionary") named no fix
        ({"task": {"candidate_labels": ["a"]}}, "task", "task.type is missing"),
        ({"task": "text-classification"}, "task", "write task: {type: text-classification}"),
        # a section given one value: pydantic said "a valid dictionary or instance of ModelSpec"
        ({"model": "minilm"}, "model", 'write model: {name: "minilm"}'),
        ({"model": {"name": "minilm", "fidelity": 0.99}}, "model.fidelity", "write model.fidelity: {min_agreement: "),
        # "List should have at least 2 items" / "1 item": why, and what to write
        ({"task": {"type": "llm-label", "candidate_labels": ["yes"]}}, "task.candidate_labels", "e.g. [yes, no]"),
        ({"task": {"type": "fill-mask", "targets": []}}, "task.targets", "leave task.targets out"),
        # empty texts: a zero-shot label "" (hypothesis 'This example is .', a scores field without a name) and a
        # fill-mask placeholder "" (every row quarantined: no mask token) passed the spec
        ({"task": {"type": "zero-shot-classification", "candidate_labels": ["World", " "]}}, "task.candidate_labels",
         "must not be empty"),
        ({"task": {"type": "fill-mask", "mask_placeholder": ""}}, "task.mask_placeholder", "leave it out"),
        # temperature 0 is greedy in OpenAI's API: said so, not only "greater than 0"
        ({"task": {"type": "text-generation", "temperature": 0}}, "task.temperature", "greedy decoding is the default"),
    ],
)
def test_bad_specs_name_the_field(changes, field, hint):
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(**changes))
    message = str(caught.value)
    assert f"  {field}:" in message
    assert hint in message


def test_one_stop_string_is_a_list_of_one():
    """`stop: "\\n"` (as OpenAI's API and this project's Batch requests take it) was refused: a valid list needed."""
    task = {"type": "text-generation", "stop": "\n\n"}
    assert spec_from_dict(minimal(task=task)).task.stop == ["\n\n"]


def test_prediction_columns_may_not_clash_with_kept_columns():
    raw = minimal(task={"type": "text-classification"}, input__label_column="label")
    with pytest.raises(PipelineError, match="prediction_prefix"):
        spec_from_dict(raw)
    raw["output"]["prediction_prefix"] = "predicted_"
    assert spec_from_dict(raw).output_columns() == ["id", "label", "predicted_label", "predicted_score"]


def test_input_columns_that_the_output_would_lose_or_garble_are_refused_before_any_work():
    """Kept columns named like the job's own bookkeeping (``_error``, ``_row``, ``_tokens``) ended the run in a
    traceback; a kept ``id`` with ``id_column: null`` was silently replaced by the rows' places; a kept ``run`` in a
    scheduled job could not be read beside the ``run=`` partitions (or took their values)."""
    for names in (["_error"], ["_row", "_shard"], ["_tokens"]):
        with pytest.raises(PipelineError, match="bookkeeping"):
            spec_from_dict(minimal(input__columns_to_keep=names))
    with pytest.raises(PipelineError, match="bookkeeping"):
        spec_from_dict(minimal(input__text_column="_error"))
    with pytest.raises(PipelineError, match="id_column is null"):
        spec_from_dict(minimal(input__id_column=None, input__columns_to_keep=["id"]))
    assert spec_from_dict(minimal(input__id_column="id", input__columns_to_keep=["id"])).output_columns()[0] == "id"
    scheduled = minimal(input__columns_to_keep=["run"])
    scheduled["schedule"] = {"cron": "0 2 * * *"}
    with pytest.raises(PipelineError, match="run=<tick>"):
        spec_from_dict(scheduled)
    scheduled["input"]["columns_to_keep"] = ["Run"]  # DuckDB matches names in any case: it took the tick for it
    with pytest.raises(PipelineError, match="run=<tick>"):
        spec_from_dict(scheduled)
    assert spec_from_dict(minimal(input__columns_to_keep=["run"])).output_columns()[1] == "run"  # a batch job keeps it


def test_a_job_without_a_schedule_section_run_by_the_scheduler_may_not_write_a_run_column(tmp_path):
    """`pipelines schedule JOB --once` takes a spec without a schedule section too (it runs now), and the spec's check
    for a 'run' column looked only at specs with one: the column went into run=... partitions, and pandas refused
    the output."""
    from pipelines.schedule.executor import run_due

    raw = minimal(input__columns_to_keep=["run"])
    raw["input"]["paths"] = [str(tmp_path / "in")]
    raw["output"]["path"] = str(tmp_path / "out")
    (tmp_path / "in").mkdir()
    with pytest.raises(PipelineError, match="run=<tick>"):
        run_due(spec_from_dict(raw), runner=lambda *args, **kwargs: pytest.fail("nothing is scored"))
    assert not (tmp_path / "out").exists()


def test_overrides_set_nested_fields_with_yaml_values(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text((ROOT / "jobs" / "label_news.yaml").read_text())
    spec = load_spec(path, ["batching.batch_size=32", "model.quantization=nf4", "input.columns_to_keep=[text]"])
    assert spec.batching.batch_size == 32
    assert spec.model.quantization == "nf4"
    assert spec.input.columns_to_keep == ["text"]


@pytest.mark.parametrize("cron", ["* * * * *", "*/5 * * * *", "0 3 * * *", '"*/5 * * * *"'])
def test_a_cron_expression_given_by_set_is_taken_as_written(cron):
    """``--set 'schedule.cron=*/5 * * * *'`` was refused as not YAML (a ``*`` opens a YAML alias), so a cron
    expression that starts with one had to be quoted twice; such a setting's value is text, taken as written where
    YAML can't read it (a quoted one is still read as YAML reads it)."""
    assert parse_override(f"schedule.cron={cron}") == (["schedule", "cron"], cron.strip('"'))
    with pytest.raises(PipelineError, match="not valid YAML"):  # elsewhere a YAML error is still one
        parse_override("model.name=*/5 * * * *")


@pytest.mark.parametrize("raw", ["output.path=w/team #2", "input.paths=in dir #1", "input.paths=[a, b] #c"])
def test_a_set_value_that_yaml_would_cut_at_a_comment_is_refused(raw):
    """``--set 'output.path=w/team #2'`` wrote into ``w/team``: YAML reads `` #`` as a comment's start, so the value
    lost its end without a word, and two commands meant for two folders shared one (an environment audit's case). A
    value that YAML would cut at a comment is refused, saying how to quote it; a ``#`` that YAML keeps is kept."""
    with pytest.raises(PipelineError, match="start of a comment.*quote the value as YAML text"):
        parse_override(raw)
    assert parse_override("output.path=w/team#2") == (["output", "path"], "w/team#2")
    assert parse_override('output.path="w/team #2"') == (["output", "path"], "w/team #2")
    assert parse_override("input.paths=['a #1', b]") == (["input", "paths"], ["a #1", "b"])


def test_an_override_is_validated_like_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text((ROOT / "jobs" / "label_news.yaml").read_text())
    with pytest.raises(PipelineError, match="compute.gpus_per_actor"):
        load_spec(path, ["compute.gpus_per_actor=-1"])
    with pytest.raises(PipelineError, match="key.sub=value"):
        load_spec(path, ["nonsense"])


def test_spec_hash_ignores_sizes_but_not_the_model():
    base = spec_from_dict(minimal())
    resized = spec_from_dict(minimal(batching__batch_size=8, compute__size=2))
    other_model = spec_from_dict(minimal(model__name="other"))
    assert base.fingerprint() == resized.fingerprint()
    assert base.fingerprint() != other_model.fingerprint()


def test_spec_hash_covers_row_policies_but_not_the_device_or_cache():
    base = spec_from_dict(minimal()).fingerprint()
    for where in ({"model__device": "auto"}, {"model__device": "cuda"}, {"model__cache_dir": "/shared/cache"},
                  {"errors__max_rate": 0.5}, {"compute__cpu_matmul": "torch"}):
        assert spec_from_dict(minimal(**where)).fingerprint() == base, where
    for policy in ({"errors__too_long": "error"}, {"errors__duplicate_ids": "error"}):
        assert spec_from_dict(minimal(**policy)).fingerprint() != base, policy


def test_spec_hash_covers_the_prediction_columns_names():
    """A resume with another output.prediction_prefix wrote its shards under other column names: a reader of the
    folder got the earlier shards' predictions as nulls in the new columns."""
    base = spec_from_dict(minimal())
    assert spec_from_dict(minimal(output__prediction_prefix="other_")).fingerprint() != base.fingerprint()
    assert spec_from_dict(minimal(output__prediction_prefix="")).fingerprint() == base.fingerprint()
    for layout in ({"output__compression": "snappy"}, {"output__row_group_rows": 10}):  # the same columns and values
        assert spec_from_dict(minimal(**layout)).fingerprint() == base.fingerprint(), layout


def test_generation_options_left_to_the_model_keep_the_hash_outputs_were_written_with():
    """temperature, top_p and repetition_penalty left out now mean the model's generation config's value (they were
    1.0): outputs written before keep their spec hash, so they resume as the same job (hashes of the old code)."""
    plain = minimal(task={"type": "text-generation"}, model__name="smollm2")
    sampled = minimal(task={"type": "summarization", "do_sample": True, "top_k": 5}, model__name="smollm2")
    assert spec_from_dict(plain).fingerprint() == "91dfc980990c5401"
    assert spec_from_dict(sampled).fingerprint() == "03623983088d1f65"
    hotter = minimal(task={"type": "text-generation", "temperature": 0.7}, model__name="smollm2")
    assert spec_from_dict(hotter).fingerprint() != "91dfc980990c5401"


def test_a_left_out_option_differs_from_the_same_option_written_out_only_where_the_model_sets_another(tmp_path):
    """What a resume compares beside the hash (the run refuses on any difference; tests/test_guarantees.py): the model's
    settings as Transformers reads them (generation_config.json, else an older model's config.json), and only the
    options the decoding uses."""
    import json

    from pipelines.inference.identity import generation_settings
    from pipelines.spec import ModelSpec
    from pipelines.tasks.options import left_out_differences

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"repetition_penalty": 1.3, "decoder": {"temperature": 0.6}}))
    assert generation_settings(ModelSpec(name=str(model))) == {"repetition_penalty": 1.3, "temperature": 0.6,
                                                               "decoder": {"temperature": 0.6}}
    (model / "generation_config.json").write_text(json.dumps({"top_p": 0.9}))  # then config.json's are not read
    assert generation_settings(ModelSpec(name=str(model))) == {"top_p": 0.9}
    assert generation_settings(ModelSpec(name=str(tmp_path / "elsewhere"))) is None  # not here: nothing compared

    sampled, greedy = {"type": "text-generation", "do_sample": True}, {"type": "text-generation"}
    configured = {"temperature": 0.7, "repetition_penalty": 1.0}
    assert left_out_differences({**sampled, "temperature": 1.0}, sampled, configured) == [
        "task.temperature is the model's 0.7 here (left out) and 1.0 in the output; set task.temperature: 1.0 to resume"
    ]
    assert left_out_differences({**greedy, "temperature": 1.0}, greedy, configured) == []  # greedy: not used
    assert left_out_differences({**sampled, "top_p": 1.0}, sampled, configured) == []  # the model sets none
    assert left_out_differences({**sampled, "repetition_penalty": 1.0}, sampled, configured) == []  # the same value
    assert left_out_differences(greedy, {**greedy, "repetition_penalty": 1.0}, {"repetition_penalty": 1.2}) == [
        "task.repetition_penalty is 1.0 here and the model's 1.2 in the output (left out there); leave "
        "task.repetition_penalty out to resume"
    ]


def test_an_output_recorded_before_the_hash_covered_the_prefix_keeps_its_spec():
    """Six of the shipped jobs set a prefix: their outputs, recorded with the hash that did not cover it, must
    resume under the same spec (not be refused as another job's) and be refused under another prefix."""
    from pipelines.output.records import JobRecord
    from pipelines.runner import job_record

    spec = spec_from_dict(minimal(output__prediction_prefix="predicted_"))
    written_before = job_record(spec).to_json()
    written_before.pop("hash_version")
    written_before["spec_hash"] = spec_from_dict(minimal()).fingerprint()  # what the hash was: without the prefix
    recorded = JobRecord.parse(written_before)
    assert recorded is not None and recorded.spec_hash == spec.fingerprint()
    other = spec_from_dict(minimal(output__prediction_prefix="other_"))
    assert recorded.spec_hash != other.fingerprint()
    assert JobRecord.parse(job_record(spec).to_json()).spec_hash == spec.fingerprint()  # new records as written


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_spec(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("input: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_spec(broken)


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    """YAML keeps the last of two equal keys: a job that set ``errors: {max_rate: 0.0}`` and had the README's
    ``errors: {duplicate_ids: error}`` pasted below it validated and ran with the default budget of 10% quarantined
    rows; a second ``model:`` section dropped the first's quantization and pinned revision, with no word."""
    job = (ROOT / "jobs" / "label_news.yaml").read_text()
    path = tmp_path / "job.yaml"
    path.write_text(job + "errors:\n  max_rate: 0.0\n" + "errors: {duplicate_ids: error}\n")
    lines = len(job.splitlines())
    with pytest.raises(PipelineError) as caught:
        load_spec(path)
    assert str(caught.value) == (
        f"{path}: errors is written twice (lines {lines + 1} and {lines + 3}); YAML would keep only the second "
        "and drop the first's settings without a word: write it once, with every setting of both"
    )
    path.write_text(job.replace("  quantization: auto", "  quantization: int8\n  quantization: none"))
    with pytest.raises(PipelineError, match=r"model\.quantization is written twice \(lines \d+ and \d+\)"):
        load_spec(path)
    path.write_text(job.replace("    World: ", "    Sports: x\n    World: "))  # in a nested mapping too
    with pytest.raises(PipelineError, match="task.label_descriptions.Sports is written twice"):
        load_spec(path)
    path.write_text(job + "errors: {max_rate: 0.0}\n")  # each once: as before
    assert load_spec(path).errors.max_rate == 0.0


def test_a_key_written_twice_in_a_set_value_is_refused():
    """The same in a --set value written as a mapping: the first of two equal keys was dropped without a word."""
    job = ROOT / "jobs" / "label_news.yaml"
    with pytest.raises(PipelineError, match=r"--set 'task.label_descriptions=\{World: a, World: b\}': "
                                            r"World is written twice"):
        load_spec(job, ["task.label_descriptions={World: a, World: b}"])
    assert load_spec(job, ["task.label_descriptions={World: a}"]).task.label_descriptions == {"World": "a"}


@pytest.mark.parametrize("task", ["zero-shot-classification", "llm-label"])
def test_candidate_labels_are_distinct_in_any_case(task):
    """zero-shot-classification took a label twice: `scores` became a struct with two fields of one name, which
    Polars refuses, pandas reads as one and DuckDB renames (`World_1`), and the softmax ran over three labels. DuckDB
    also renames a field that differs from another in case only (`world` beside `World`)."""
    for labels in (["World", "World", "Sports"], ["World", "world"]):
        with pytest.raises(PipelineError, match="candidate_labels"):
            spec_from_dict(minimal(task__type=task, task__candidate_labels=labels))
    assert spec_from_dict(minimal(task__type=task, task__candidate_labels=["World", "Sports"])).task.candidate_labels
    assert spec_from_dict(minimal(task__type=task, task__candidate_labels=["É", "é"])).task  # DuckDB keeps both



def test_a_label_map_reads_its_keys_as_the_agreement_reads_truth_values_and_counts_in_the_hash(tmp_path):
    """input.label_map: YAML's ``0:`` and ``2.0:`` keys are the texts a class-number truth column reads as (Arrow's
    cast), not a validation error; an unquoted ``yes`` (a YAML boolean) is refused, not read as ``true``; a map needs
    the column it maps; an unset map leaves every output's hash as it was, and a set one changes it (the agreement is
    a result), named among the changed settings."""
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("input: {paths: [data], label_column: label, label_map: {0: NEGATIVE, 1: POSITIVE, 2.0: "
                         "OTHER}}\nmodel: {name: minilm}\ntask: {type: text-classification}\n"
                         "output: {path: out, prediction_prefix: predicted_}\n")
    spec = load_spec(spec_file)
    assert spec.input.label_map == {"0": "NEGATIVE", "1": "POSITIVE", "2": "OTHER"}
    assert load_spec(spec_file, ["input.label_map={'true': 'yes', 'false': 'no'}"]).input.label_map == {
        "true": "yes", "false": "no"}
    with pytest.raises(PipelineError, match=r"true is a YAML boolean .* quote it \('yes'"):
        load_spec(spec_file, ["input.label_map={1: yes}"])
    with pytest.raises(PipelineError, match="label_map maps the values of input.label_column, which is not set"):
        spec_from_dict(minimal(input__label_map={"0": "a"}))
    plain = minimal(task={"type": "text-generation"}, model__name="smollm2")
    assert spec_from_dict({**plain, "input": {"paths": ["data"], "label_map": None}}).fingerprint() == "91dfc980990c5401"
    labeled = minimal(task={"type": "text-classification"}, input__label_column="truth")
    mapped = minimal(task={"type": "text-classification"}, input__label_column="truth", input__label_map={"0": "a"})
    assert spec_from_dict(labeled).fingerprint() != spec_from_dict(mapped).fingerprint()
    changed = changed_settings(spec_from_dict(labeled).model_dump(mode="json"), spec_from_dict(mapped).model_dump(mode="json"))
    assert any("input.label_map" in said for said in changed), changed


def test_a_mapping_set_where_the_output_has_none_is_named_by_its_keys_not_said_to_be_unset_here():
    """`--set 'task.label_descriptions={World: w}'` on an output whose spec had none: the refusal said
    `task.label_descriptions is not set here, {} in the output` beside `…World is "w" here` (an empty mapping was a
    setting of its own, a set one its keys)."""
    plain = minimal(task={"type": "zero-shot-classification", "candidate_labels": ["World", "Sports"]})
    described = minimal(task={"type": "zero-shot-classification", "candidate_labels": ["World", "Sports"],
                              "label_descriptions": {"World": "w"}})
    changed = changed_settings(spec_from_dict(plain).model_dump(mode="json"),
                               spec_from_dict(described).model_dump(mode="json"))
    assert changed == ['task.label_descriptions.World is "w" here, not set in the output'], changed


@pytest.mark.parametrize("template", ["It is {} or {}.", "Topic: {} (one of {labels}).", "{0}: {}", "It is {{}}.",
                                      "It is {!r}.", "It is {} {"])
def test_a_hypothesis_template_that_does_not_put_one_label_in_place_is_refused_with_the_spec(template):
    """zero-shot-classification checked only that the template held `{}`: a second field (`{} or {}`, `{labels}`)
    passed, and `plan` and every actor then stopped on a bare IndexError or KeyError from str.format; `{{}}` (a
    literal `{}`) put no label in any hypothesis. Refused with the spec, saying how to write it."""
    refused = r"task.hypothesis_template .*\{\} once, where the label goes.*\{\{ and \}\}"
    with pytest.raises(PipelineError, match=refused):
        spec_from_dict(minimal(task={"type": "zero-shot-classification", "candidate_labels": ["a", "b"],
                                     "hypothesis_template": template}))
    for fine in ("This example is {}.", "{}", "Label {{ {} }}"):
        spec_from_dict(minimal(task={"type": "zero-shot-classification", "candidate_labels": ["a", "b"],
                                     "hypothesis_template": fine}))


def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path):
    """`--set input.paths=$IN` with IN unset or empty gave the path '': it resolved to the folder the command ran in,
    and a run scored every Parquet and JSON lines file below it (a project's sample data, other jobs' inputs);
    `output.path` '' wrote the results there. Refused, as a shell refuses `ls ""`, saying how to name that folder."""
    job = tmp_path / "job.yaml"
    job.write_text("input: {paths: [data]}\nmodel: {name: minilm}\ntask: {type: feature-extraction}\n"
                   "output: {path: out}\n")
    for override, field in (("input.paths=", "input.paths"), ("input.paths=['']", "input.paths"),
                             ("output.path=", "output.path")):
        with pytest.raises(PipelineError, match=rf"{field}.*an empty path.*'\.' for the folder the command runs in"):
            load_spec(job, [override])
    assert load_spec(job, ["input.paths=.", "output.path=./out"]).input.paths == ["."]


def test_a_tilde_alone_in_a_set_is_refused_as_yamls_null_not_taken_for_the_home_folder(tmp_path):
    """`--set output.path=~` (the shell expands ~ only at a word's start, so it arrives as written) was YAML's null:
    "output.path: Input should be a valid string (got None)", which says nothing of the ~. Refused naming it, and
    how to write the home folder; `null` still means no value, and ~ inside a path is kept as written."""
    job = tmp_path / "job.yaml"
    job.write_text("input: {paths: [data]}\nmodel: {name: minilm}\ntask: {type: feature-extraction}\n"
                   "output: {path: out}\n")
    with pytest.raises(PipelineError, match=r"--set 'output.path=~': ~ alone is YAML's null, not the home folder.*"
                                            r"--set output.path=\$HOME/NAME"):
        load_spec(job, ["output.path=~"])
    assert load_spec(job, ["model.fidelity=null"]).model.fidelity is None
    assert load_spec(job, ["output.path=~/out"]).output.path == "~/out"


@pytest.mark.parametrize("changes", [{"compute__cpus_per_actor": 0.00001}, {"compute__gpus_per_actor": 0.00005},
                                     {"compute__resources": {"accel": 0.00001}}])
def test_a_resource_amount_finer_than_ray_takes_is_refused_in_the_spec(changes):
    """Ray takes resource amounts in units of 0.0001: a nonzero amount below one unit (``cpus_per_actor: 0.00001``, a
    custom resource at 1e-05) passed validation and ended in Ray's ValueError and traceback as the pool started. The
    spec refuses it, naming the smallest amount Ray accepts; 0.0001 itself, and 0, are accepted, as Ray takes them."""
    import ray._raylet

    assert ray._raylet.RESOURCE_UNIT_SCALING == 10_000  # the unit the spec's check assumes: 1 / 10,000
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(**changes))
    assert "the smallest amount Ray accepts is 0.0001" in str(caught.value)
    (dotted, value), = changes.items()
    smallest = {k: 0.0001 for k in value} if isinstance(value, dict) else 0.0001
    spec_from_dict(minimal(**{dotted: smallest}))


def test_an_actor_takes_one_batch_at_a_time_by_default_on_a_gpu_as_on_a_cpu():
    """A second batch's tokenizing and postprocessing on threads beside the forwards made a GPU job 3.0-5.7x slower on
    an H200 (the threads hold Python's interpreter lock that the thread launching the kernels waits for;
    benchmarks/gpu_check.py's overlap part, README "Running on GPUs"): two at a time is a choice, not the default."""
    raw = {"input": {"paths": ["in"]}, "model": {"name": "m"}, "task": {"type": "text-classification"},
           "output": {"path": "out"}}
    gpu = spec_from_dict({**raw, "compute": {"gpus_per_actor": 1}})
    assert gpu.actor_device() == "cuda"
    assert gpu.calls_per_actor() == spec_from_dict(raw).calls_per_actor() == 1
    assert spec_from_dict({**raw, "compute": {"gpus_per_actor": 1, "calls_per_actor": 2}}).calls_per_actor() == 2


@pytest.mark.parametrize("dotted", ["input__id_column", "input__label_column", "input__text_column", "model__revision",
                                    "model__cache_dir", "model__name", "output__prediction_prefix"])
def test_an_empty_value_is_refused_not_taken_for_none(dotted):
    """`--set input.id_column=$IDCOL` with IDCOL unset gave '': the run took it for no id column (the checks and the
    reader ask `if id_column`) and wrote `<file>:<row>` ids in place of the input's own, a kept `id` column
    included; an empty label column dropped the agreement without a word. Refused, naming the setting and what to
    write; the prediction prefix, whose default is empty, is the one text setting that takes ''."""
    if dotted == "output__prediction_prefix":
        assert spec_from_dict(minimal(**{dotted: ""})).output.prediction_prefix == ""
        return
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(**{dotted: ""}))
    field = dotted.replace("__", ".")
    assert f"  {field}: " in str(caught.value) and "an empty value" in str(caught.value), str(caught.value)
    assert "shell variable" in str(caught.value)


@pytest.mark.parametrize("quantization", ["dynamic-int8", "per-token-int8", "smooth-int8"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_cpu_int8_quantization_in_a_reduced_dtype_is_refused_with_the_spec(quantization, dtype):
    """The README says these need dtype float32 or auto: the spec passed `validate` and `plan`, and the run failed
    only once its actor loaded the model (Ray's traceback, after the output was claimed)."""
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(model={"name": "minilm", "quantization": quantization, "dtype": dtype}))
    assert "  model: " in str(caught.value) and "float32 or auto" in str(caught.value), str(caught.value)


@pytest.mark.parametrize(("dotted", "value"), [("errors__max_count", False), ("batching__max_length", True),
                                               ("errors__max_rate", True), ("batching__min_fill", False),
                                               ("compute__size", True), ("compute__resources", {"slot": True}),
                                               ("model__fidelity", {"rows": True})])
def test_a_yaml_boolean_is_refused_where_a_number_is_wanted(dotted, value):
    """YAML reads `no`, `yes`, `on`, `off` unquoted as booleans, and pydantic took them for 0 and 1: `max_count: no`
    (meant: no limit) failed a run at its first quarantined row, `max_rate: true` lifted the error budget."""
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(**{dotted: value}))
    assert "YAML boolean" in str(caught.value) and "a number" in str(caught.value), str(caught.value)


@pytest.mark.parametrize(("dotted", "value"), [("compute__cpus_per_actor", float("inf")),
                                               ("compute__resources", {"slot": float("nan")}),
                                               ("errors__max_rate", float("nan")),
                                               ("batching__min_fill", float("inf"))])
def test_a_number_that_is_not_finite_is_refused(dotted, value):
    """`.inf` (YAML's infinity) ended in a traceback (`OverflowError` in the resource check), `.nan` in "cannot
    convert float NaN to integer"."""
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(**{dotted: value}))
    assert "not a finite number" in str(caught.value), str(caught.value)


def test_a_value_yaml_reads_as_a_boolean_or_number_where_text_is_wanted_is_told_to_be_quoted():
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(task={"type": "zero-shot-classification", "candidate_labels": [True, False]}))
    assert "task.candidate_labels.0: " in str(caught.value) and "quote it" in str(caught.value), str(caught.value)
    with pytest.raises(PipelineError, match=r"model.revision: .*quote it"):
        spec_from_dict(minimal(model={"name": "minilm", "revision": 83}))


def test_a_text_yaml_reads_as_a_mapping_is_told_to_be_quoted(tmp_path):
    """`--set 'name=my job: 1'`: YAML reads a value with ': ' in it as a mapping, and the message named neither the
    value nor the fix."""
    job = tmp_path / "job.yaml"
    job.write_text("input: {paths: [data]}\nmodel: {name: minilm}\ntask: {type: feature-extraction}\n"
                   "output: {path: out}\n")
    with pytest.raises(PipelineError, match=r"name: .*YAML read 'my job: 1' as a mapping.*--set 'name=\"my job: 1\"'"):
        load_spec(job, ["name=my job: 1"])


def test_an_unknown_key_names_the_nearest_setting():
    with pytest.raises(PipelineError, match=r"batching.batchsize: unknown key .*did you mean batch_size\?"):
        spec_from_dict(minimal(batching={"batchsize": 32}))


def test_a_section_with_every_setting_commented_out_takes_the_defaults(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("input: {paths: [data]}\nmodel: {name: minilm}\ntask: {type: feature-extraction}\n"
                   "output: {path: out}\nbatching:\n  # batch_size: 64\ncompute:\n")
    spec = load_spec(job)
    assert spec.batching.batch_size == 256 and spec.compute.size is None


def test_a_tab_in_the_indentation_is_told_to_be_spaces(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("input:\n\tpaths: [data]\n")
    with pytest.raises(PipelineError, match=r"line 2.*indent with spaces"):
        load_spec(job)


def test_a_tilde_alone_is_null_in_a_setting_that_names_no_path(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("input: {paths: [data]}\nmodel: {name: minilm}\ntask: {type: feature-extraction}\n"
                   "output: {path: out}\n")
    assert load_spec(job, ["input.id_column=~"]).input.id_column is None


def test_an_empty_label_description_is_refused_not_taken_for_none():
    """`label_descriptions: {Sports: ""}` was read as no description: the label's filled template stood in for the
    text the user wrote for it, unsaid."""
    task = {"type": "zero-shot-classification", "candidate_labels": ["Sports", "World"]}
    with pytest.raises(PipelineError, match=r"label_descriptions of \['Sports'\] are empty: give each its text"):
        spec_from_dict({"input": {"paths": ["in"]}, "model": {"name": "minilm"}, "output": {"path": "out"},
                        "task": {**task, "label_descriptions": {"Sports": " ", "World": "world politics"}}})
    spec_from_dict({"input": {"paths": ["in"]}, "model": {"name": "minilm"}, "output": {"path": "out"},
                    "task": {**task, "label_descriptions": {"World": "world politics"}}})


def test_a_question_answering_job_whose_questions_leave_no_room_for_a_context_is_refused_with_the_spec():
    """A window of batching.max_length tokens must hold the longest question and some context: where it can't,
    whatever the tokenizer adds, the job failed only once Ray had started and the pool's actor loaded its tokenizer
    (tens of seconds on a 2-core machine). It is refused with the spec now, before any work."""
    task = {"type": "question-answering", "max_question_length": 300}
    with pytest.raises(PipelineError) as caught:
        spec_from_dict(minimal(task=task, batching__max_length=256))
    message = str(caught.value)
    assert "batching.max_length 256" in message and "task.max_question_length 300" in message
    assert "raise batching.max_length or lower task.max_question_length" in message
    with pytest.raises(PipelineError, match="batching.max_length 301 leaves no room"):  # 1 token of context
        spec_from_dict(minimal(task=task, batching__max_length=301))
    assert spec_from_dict(minimal(task=task, batching__max_length=302)).task.max_question_length == 300
