"""What the README shows a user to copy works as written: its job specs validate, its `pipelines` commands parse,
its `--set` examples apply, and its tables of spec settings and task options name the fields the code has, with
the code's defaults. Reads the repository only (no Ray, no model)."""

from __future__ import annotations

import copy
import re
import shlex

import pytest
import yaml
from helpers import ROOT
from pydantic import BaseModel

from pipelines.cli.main import _parser
from pipelines.errors import PipelineError
from pipelines.spec import (
    BatchingSpec,
    ComputeSpec,
    ErrorPolicy,
    InputSpec,
    JobSpec,
    ModelSpec,
    OutputSpec,
    load_spec,
    spec_from_dict,
)
from pipelines.tasks.options import TASK_OPTIONS

README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
#: The job a partial snippet (a `task:` or `model:` section alone) is shown against: the README's main job.
BASE_JOB = ROOT / "jobs" / "label_news.yaml"
SECTIONS: dict[str, type[BaseModel]] = {
    "input": InputSpec, "model": ModelSpec, "batching": BatchingSpec, "compute": ComputeSpec, "output": OutputSpec,
    "errors": ErrorPolicy, "(top)": JobSpec,
}


def line_of(offset: int) -> int:
    return README.count("\n", 0, offset) + 1


def fenced(*languages: str) -> list[tuple[int, str]]:
    """(line, body) of every fenced block in one of ``languages`` ("" for a block that names none)."""
    return [(line_of(m.start()), m.group(2)) for m in FENCE.finditer(README) if m.group(1).strip() in languages]


def spec_snippets() -> list[tuple[int, dict]]:
    """Every YAML block that is (part of) a job spec: its keys are spec sections (not a Kubernetes manifest)."""
    found = []
    for line, body in fenced("yaml", "yml"):
        raw = yaml.safe_load(body)
        if isinstance(raw, dict) and set(raw) <= set(JobSpec.model_fields):
            found.append((line, raw))
    return found


def as_job(raw: dict) -> dict:
    """A whole spec as shown, else the main job with the sections the snippet shows put in place of its own."""
    if {"input", "model", "task", "output"} <= set(raw):
        return raw
    job = yaml.safe_load(BASE_JOB.read_text())
    job.update(copy.deepcopy(raw))
    return job


@pytest.mark.parametrize(("line", "raw"), spec_snippets(), ids=lambda value: f"L{value}" if isinstance(value, int) else "")
def test_every_job_spec_snippet_validates(line, raw):
    spec = spec_from_dict(as_job(raw), f"README.md line {line}")
    for path in raw.get("input", {}).get("paths", []):  # the sample data a snippet reads is in the repository
        if "://" not in path and not any(c in path for c in "*?["):
            assert (ROOT / path).exists(), f"README.md line {line}: input path {path} is not in the repository"
    assert spec.output.path


def test_the_readme_shows_whole_specs_and_each_task():
    snippets = [raw for _, raw in spec_snippets()]
    assert any({"input", "model", "task", "output"} <= set(raw) for raw in snippets)
    shown = {raw["task"]["type"] for raw in snippets if "task" in raw}
    assert shown >= set(TASK_OPTIONS) - {"summarization"}, set(TASK_OPTIONS) - shown  # summarization: as translation


def commands() -> list[tuple[int, str]]:
    """(line, arguments) of each `pipelines …` command written out in a code block or a code span; a synopsis
    (`[--set ...]`), a command cut short (`…`) or one with placeholders (JOB.yaml) is left out."""
    found = []
    spans = [(line_of(m.start()), m.group(1)) for m in re.finditer(r"`([^`\n]+)`", README)]
    for line, body in [*fenced("", "bash"), *spans]:
        for offset, text in enumerate(body.replace("\\\n", " ").splitlines()):
            command = re.search(r"(?:^|[\s;&])(?:\S*/)?pipelines ((?:run|validate|submit|schedule|runs|plan|fidelity)"
                                r" jobs/\S+\.yaml.*)", text)
            if command and "…" not in text and "..." not in text:
                found.append((line + offset, command.group(1).split(" #")[0].split(" >")[0].strip()))
    return found


@pytest.mark.parametrize(("line", "command"), commands(), ids=lambda value: f"L{value}" if isinstance(value, int) else "")
def test_every_command_shown_parses_and_its_sets_apply(line, command):
    args = _parser().parse_args(shlex.split(command))  # an unknown flag or subcommand exits here
    try:
        load_spec(ROOT / args.job, args.overrides)
    except PipelineError as exc:
        pytest.fail(f"README.md line {line}: pipelines {command}: {exc}")


def test_commands_with_sets_are_found():
    assert sum("--set" in command for _, command in commands()) >= 5


def written(cell: str) -> str | None:
    """A default as a table writes it (`null`, `true`, `[O]`, 0.8, none), or None where it is prose (required,
    the model's, ...)."""
    cell = cell.strip()
    if cell == "none":
        return "null"
    return cell.strip("`") if re.fullmatch(r"`[^`]*`|-?[\d.]+", cell) else None


def same_default(model: type[BaseModel], name: str, text: str) -> bool:
    """Whether ``text``, as a table writes it, is the field's default: a text as written (a newline as \\n), else
    the value YAML reads."""
    field = model.model_fields[name]
    default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    if isinstance(default, str):
        quoted = text[:1] in "\"'" and yaml.safe_load(text) == default  # `""`
        return quoted or text == default.replace("\n", "\\n")
    return yaml.safe_load(text) == default


def table_after(heading: str, header: str) -> list[list[str]]:
    """The cells of the first table with ``header`` after ``heading`` (its last column may hold a ` | `)."""
    columns = header.count(" | ") + 1
    start = README.index(header, README.index(heading))
    rows = []
    for row in README[start:].splitlines()[2:]:
        if not row.startswith("|"):
            break
        rows.append([cell.strip() for cell in row.strip("|").split(" | ", columns - 1)])
    return rows


def test_the_spec_reference_table_names_every_setting_with_its_default():
    listed: dict[str, set[str]] = {section: set() for section in SECTIONS}
    for section, fields, default, _ in table_after("## Job spec reference", "| section | field | default | meaning |"):
        names = re.findall(r"`(\w+)`", fields)
        listed[section].update(names)
        defaults = [written(value) for value in re.split(r",\s*", default)]
        if len(defaults) != len(names) or None in defaults:
            continue  # prose (`required`, the node's cores ÷ ...) or one default for several fields
        for name, value in zip(names, defaults, strict=True):
            assert same_default(SECTIONS[section], name, value), f"{section}.{name}: the table says {default}"
    for section, model in SECTIONS.items():
        fields = set(model.model_fields) - ({"input", "model", "task", "batching", "compute", "output", "errors",
                                             "schedule"} if model is JobSpec else set())
        assert fields == listed[section], f"{section}: in the code, not the table: {fields - listed[section]}; " \
                                          f"in the table, not the code: {listed[section] - fields}"


@pytest.mark.parametrize("task", [name for name in TASK_OPTIONS if name != "summarization"])
def test_each_task_table_names_its_options_with_their_defaults(task):
    heading = "### summarization and translation" if task == "translation" else f"### {task}\n"
    options = TASK_OPTIONS[task]
    listed = set()
    for names, default, _ in table_after(heading, "| option | default | meaning |"):
        for name in re.findall(r"`(\w+)`", names):
            assert name in options.model_fields, f"{task}: the README's option {name} is not one"
            listed.add(name)
            field = options.model_fields[name]
            if default.startswith("required"):
                assert field.is_required(), f"{task}.{name}: the README says required"
            elif (value := written(default)) is not None:
                assert same_default(options, name, value), f"{task}.{name}: the README says {default}"
    if task != "translation":  # its table lists only its own options; the generation ones are text-generation's
        assert listed == set(options.model_fields) - {"type"}, f"{task}: options not in its table"


def test_the_module_map_names_every_module():
    """The Development section's map of the package lists each module under its folder (a new one goes in it)."""
    tree = next(body for _, body in fenced("") if body.startswith("pipelines/"))
    named = set(re.findall(r"\w+\.py", tree))
    modules = {path.name for path in (ROOT / "pipelines").rglob("*.py") if path.stem not in ("__init__", "__main__")}
    assert modules <= named, f"modules the README's Development map does not name: {sorted(modules - named)}"
