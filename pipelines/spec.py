"""The job spec: one YAML file validated into typed settings.

Every setting of a job lives here, with its type, default and allowed values.
The CLI only loads a file, applies ``--set key.sub=value`` overrides and hands
the result to :func:`load_spec`. Light: pydantic and YAML, no torch (the task
options come from :mod:`pipelines.tasks.options`, how the hash covers the output's
column names from :mod:`pipelines.output.records`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipelines.errors import PipelineError
from pipelines.io.block import BOOKKEEPING, COUNTS
from pipelines.io.shards import store_path_problem
from pipelines.output.records import prefixed_hash
from pipelines.tasks.openai_requests import OUTPUT_NAMES as OPENAI_OUTPUT_NAMES
from pipelines.tasks.options import (
    CONFIG_DEFAULTS,
    GENERATION_TASKS,
    TASK_OPTIONS,
    AnyTaskOptions,
    QuestionAnsweringOptions,
)
from pipelines.values import empty_text_problem, number_problem

#: Text settings an empty value is refused in elsewhere, with words of their own (paths), or means something in
#: (no prefix before the prediction columns' names, the default).
EMPTY_TAKEN = frozenset({"path", "paths", "prediction_prefix"})


class Strict(BaseModel):
    """Base of every spec section: unknown keys are errors, values are checked on assignment; a YAML boolean or a
    number that is not finite where a number is wanted, and an empty text, are refused (:mod:`pipelines.values`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        problem = number_problem(annotation, value)
        if problem is None and info.field_name not in EMPTY_TAKEN:
            problem = empty_text_problem(annotation, value)
        if problem:
            raise ValueError(problem)
        return value


def truth_key(value: Any) -> Any:
    """A truth value or label of ``input.label_map`` as the run's agreement reads a truth column's values (Arrow's
    cast to text): ``1.0`` as ``1``, ``0`` as ``0``; text as given. A boolean is refused: YAML reads ``yes``, ``no``,
    ``on`` and ``off`` unquoted as ``true`` and ``false``, and which the user meant can't be told."""
    if isinstance(value, bool):
        raise ValueError(
            f"{str(value).lower()} is a YAML boolean (yes, no, on, off, true and false unquoted are): quote it ('yes', "
            "'true') to mean that text; a boolean truth column's values read as 'true' and 'false'"
        )
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return value


def empty_path_problem(location: str) -> str | None:
    """An empty path (``--set input.paths=$IN`` with IN unset) would resolve to the folder the command runs in: every
    file below it read, or the results written there. Refused, as a shell refuses ``ls ""``."""
    if location:
        return None
    return ("an empty path (a --set whose shell variable was empty or unset?): name a file, folder, glob or URI, "
            "'.' for the folder the command runs in")


class InputSpec(Strict):
    paths: list[str] = Field(min_length=1, description="Files, directories or globs; local or any pyarrow URI.")
    format: Literal["auto", "parquet", "jsonl", "openai-batch"] = "auto"
    text_column: str = "text"
    id_column: str | None = "id"
    columns_to_keep: list[str] = Field(default_factory=list)
    label_column: str | None = Field(
        default=None, description="Ground-truth column: the run summary reports agreement with it."
    )
    label_map: dict[str, str] | None = Field(
        default=None,
        description="Truth value (as text) -> the model's label it stands for, where the two name classes otherwise.",
    )

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_as_text(cls, value: Any) -> Any:
        """Keys and values as the agreement reads truth values: YAML's ``0:`` and ``true:`` are the texts "0" and
        "true" (Arrow's cast of an integer or a boolean column), not errors."""
        if not isinstance(value, dict):
            return value
        return {truth_key(k): truth_key(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _label_map_needs_a_column(self) -> InputSpec:
        if self.label_map is not None and self.label_column is None:
            raise ValueError(
                "label_map maps the values of input.label_column, which is not set; name the ground-truth column "
                "(input.label_column) or remove label_map"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("paths"), str):
            data = {**data, "paths": [data["paths"]]}
        return data

    @field_validator("paths")
    @classmethod
    def _store_paths(cls, value: list[str]) -> list[str]:
        for location in value:
            problem = empty_path_problem(location) or store_path_problem(location)
            if problem:
                raise ValueError(problem)
        return value


class FidelitySpec(Strict):
    """Before a run: score a sample quantized and unquantized; fail the job when they agree less than this."""

    rows: int = Field(default=256, gt=0, description="Sampled rows (the same rows every run, chosen by id hash).")
    min_agreement: float = Field(
        default=0.99, ge=0, le=1, description="The job fails when the task's headline agreement is below this."
    )


#: The built-in model names (:mod:`pipelines.inference.aliases` says where each model is): a name before a folder.
MODEL_ALIASES = frozenset({"minilm", "smollm2"})

#: Quantizations computed by this project's or torch's int8 kernels on the CPU only.
CPU_QUANTIZATIONS = frozenset({"dynamic-int8", "per-token-int8", "smooth-int8"})


class ModelSpec(Strict):
    name: str = Field(description="Hugging Face id, local directory, or a built-in alias (minilm, smollm2).")
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: Literal[
        "none", "int8", "nf4", "fp4", "dynamic-int8", "per-token-int8", "smooth-int8", "auto"
    ] = Field(
        default="none",
        description="none; int8, nf4, fp4 (bitsandbytes, CPU or CUDA); dynamic-int8, per-token-int8, smooth-int8 "
        "(CPU); auto: "
        "the fastest precision for the device that keeps model.fidelity's agreement with float32 (decided once per "
        "output).",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: str | None = Field(
        default=None, description="The model cache: converted models, auto's decisions, smooth-int8's calibrations."
    )
    fidelity: FidelitySpec | None = Field(
        default=None, description="Check a quantized model against itself unquantized before the run."
    )

    @model_validator(mode="after")
    def _int8_on_the_cpu_quantizes_float32(self) -> ModelSpec:
        if self.quantization in CPU_QUANTIZATIONS and self.dtype in ("float16", "bfloat16"):
            raise ValueError(
                f"model.quantization {self.quantization} with model.dtype {self.dtype}: a CPU int8 quantization "
                f"quantizes the float32 model (its int8 kernels take float32 activations); set model.dtype float32 "
                f"or auto, or quantization none to run in {self.dtype}"
            )
        return self

    @model_validator(mode="after")
    def _auto_picks_the_dtype(self) -> ModelSpec:
        if self.quantization == "auto" and self.dtype != "auto":
            raise ValueError(
                f"model.dtype {self.dtype} with quantization auto: auto chooses the precision (dtype included) and "
                f"would not run in {self.dtype}; leave model.dtype auto, or set quantization none to run in "
                f"{self.dtype}"
            )
        return self


class BatchingSpec(Strict):
    batch_size: int = Field(default=256, gt=0, description="Rows handed to an actor per call.")
    max_tokens: int = Field(default=8192, gt=0, description="Padded-token budget of one micro-batch.")
    max_length: int = Field(default=512, gt=0, description="Truncation length in tokens.")
    max_rows: int = Field(default=64, gt=0, description="Most rows in one micro-batch.")
    min_fill: float = Field(
        default=0.8, ge=0, le=1, description="A micro-batch's shortest row is at least this share of its longest."
    )


#: Ray counts resource amounts in units of 1 / ``ray._raylet.RESOURCE_UNIT_SCALING`` (10,000): it refuses a nonzero
#: amount below one unit ("The precision of the fractional quantity of resource ... cannot go beyond 0.0001").
RAY_RESOURCE_UNIT = 0.0001


def finer_than_ray(amount: float, name: str = "", zero: bool = True) -> float:
    """``amount``, or ValueError where Ray would refuse it as the pool starts: above 0 and below one of its units
    (Ray's own test, ``int(amount * 10000) == 0``). ``name``: the custom resource's; ``zero``: whether 0 is taken."""
    if amount != 0 and int(amount * round(1 / RAY_RESOURCE_UNIT)) == 0:
        raise ValueError(f"{name + ': ' if name else ''}{amount:g} per actor is too small: the smallest amount Ray "
                         f"accepts is {RAY_RESOURCE_UNIT:g}{' (or 0, for none)' if zero else ''}")
    return amount


class ComputeSpec(Strict):
    size: int | None = Field(default=None, gt=0, description="Fixed number of actors.")
    min: int | None = Field(default=None, gt=0)
    max: int | None = Field(default=None, gt=0)
    gpus_per_actor: float = Field(default=0, ge=0)
    cpus_per_actor: float = Field(default=1, gt=0)
    threads_per_actor: int | None = Field(
        default=None, gt=0,
        description="torch threads per actor; default: the node's cores shared among the actors that fit on it.",
    )
    accelerator_type: str | None = None
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per actor.")
    cpu_matmul: Literal["onednn", "torch"] = Field(
        default="onednn",
        description="Models on a CPU: onednn runs float32/bfloat16 Linear layers through oneDNN with weights laid out "
        "once at load (checked against torch's at load, torch's kept where they differ); torch: torch's own matmul.",
    )
    cpu_lanes: bool = Field(
        default=True,
        description="Models on a CPU with several torch threads, for tasks whose forwards are independent (encoders): "
        "run that many micro-batches at once, one thread each; false: one micro-batch at a time on all the threads.",
    )
    calls_per_actor: int | None = Field(
        default=None, gt=0, le=8,
        description="Batches an actor takes at once: while the model runs one batch's forwards (one batch at a time), "
        "the next is tokenized and the last postprocessed and staged on threads of their own. Default 1: on a CPU "
        "the forwards already keep every core busy; on a GPU those threads held up the one launching its kernels "
        "(measured 3.0-5.7x slower on an H200).",
    )

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        # Ray refuses its own CPU and GPU there (a ValueError as the pool starts), and model.device auto reads
        # gpus_per_actor: a GPU asked for so would have held the model on the CPU
        for name, setting in (("CPU", "cpus_per_actor"), ("GPU", "gpus_per_actor")):
            if name in value:
                raise ValueError(
                    f"{name} is not a custom resource: write compute.{setting}: {value[name]:g} instead (with "
                    f"gpus_per_actor above 0, model.device auto puts the model on the GPU); resources names custom "
                    "Ray resources only"
                )
        negative = sorted(name for name, amount in value.items() if amount < 0)
        if negative:
            raise ValueError(f"{negative[0]}: {value[negative[0]]:g}: a resource's amount per actor is 0 or more")
        for name, amount in sorted(value.items()):
            finer_than_ray(amount, name)
        return value

    @field_validator("cpus_per_actor", "gpus_per_actor")
    @classmethod
    def _ray_amount(cls, value: float, info: ValidationInfo) -> float:
        return finer_than_ray(value, zero=info.field_name == "gpus_per_actor")

    @model_validator(mode="after")
    def _pool_bounds(self) -> ComputeSpec:
        if self.size is not None and (self.min is not None or self.max is not None):
            raise ValueError("give either size, or min/max, not both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self

    def pool_bounds(self) -> tuple[int, int]:
        """The (min, max) actor counts of the pool."""
        if self.size is not None:
            return self.size, self.size
        low = self.min or 1
        return low, max(low, self.max or low)

    def torch_threads(self, node_cpus: int) -> int:
        """The actor's torch threads: the setting, else the node's cores shared evenly among the pool's actors
        that can be on it at once (one actor on a 2-core machine: 2 threads; 4 actors of 1 CPU on 8 cores: 2)."""
        if self.threads_per_actor:
            return self.threads_per_actor
        _, high = self.pool_bounds()
        on_node = max(1, min(high, int(node_cpus // self.cpus_per_actor) or 1))
        return max(1, node_cpus // on_node)


class OutputSpec(Strict):
    path: str
    prediction_prefix: str = Field(default="", description="Prepended to every prediction column's name.")
    row_group_rows: int = Field(default=100_000, gt=0, description="Rows per Parquet row group of a shard's file.")
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = "zstd"
    format: Literal["parquet", "openai-batch"] = Field(
        default="parquet", description="parquet, or openai-batch: the Batch API's output and error files (JSONL)."
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_rows_per_file" in data:
            raise ValueError(
                "max_rows_per_file was removed: each input shard is now written as one file, so that it appears "
                "to readers in one step; remove it (output.row_group_rows sets the rows per row group)"
            )
        return data

    @field_validator("path")
    @classmethod
    def _store_path(cls, value: str) -> str:
        problem = empty_path_problem(value) or store_path_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class ErrorPolicy(Strict):
    max_rate: float = Field(default=0.1, ge=0, le=1, description="Fail the job past this share of bad rows.")
    max_count: int | None = Field(default=None, ge=0, description="Fail the job past this many bad rows.")
    too_long: Literal["truncate", "error"] = "truncate"
    duplicate_ids: Literal["keep", "error"] = "keep"
    unreadable_files: Literal["fail", "quarantine"] = Field(
        default="fail",
        description="An input file that can't be parsed fails the job (fail), or is quarantined whole (quarantine); "
        "one whose bytes can't be fetched always fails the run, uncommitted, and is read again by the next.",
    )


class ScheduleSpec(Strict):
    """When ``pipelines schedule`` runs the job; each run scores only new or changed input shards."""

    cron: str = Field(description="A cron expression: 5 fields (6 with seconds last) or @daily, @hourly, ...")
    timezone: str = Field(default="UTC", description="IANA time zone the cron expression is read in.")
    missed_ticks: Literal["skip", "run_once"] = Field(
        default="run_once",
        description="A tick found more than grace_seconds late: run once now (run_once) or wait for the next (skip).",
    )
    grace_seconds: int = Field(default=300, ge=0, description="How late a tick may start and still count as on time.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError("not a valid cron expression, e.g. '0 2 * * *' (02:00 every day) or '@hourly'")
        if len(value.split()) > 6:  # croniter reads a 7th field as a year: past it, every tick's look-up fails
            raise ValueError(f"has {len(value.split())} fields: give 5 (minute hour day month weekday), or 6 with "
                             "seconds last; a year field is not taken (a job for one year only would fail every "
                             "night after it)")
        from datetime import datetime

        from croniter import CroniterBadDateError

        try:  # valid fields that no date matches (February 30): every tick's look-up would fail
            croniter(value, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError("matches no date (a day that no month has, such as February 30): it would never "
                             "run; e.g. '0 2 * * *' (02:00 every day)") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; give an IANA name such as UTC or Europe/Berlin") from None
        return value


#: Columns the job adds to its blocks (see pipelines.io.block): no input column may be named like them.
RESERVED_COLUMNS = (*BOOKKEEPING, *COUNTS)


#: The sections a spec may leave out for their defaults (so ``batching:`` alone, YAML's null, is those too).
DEFAULT_SECTIONS = ("batching", "compute", "errors")


class JobSpec(Strict):
    name: str | None = None
    input: InputSpec
    model: ModelSpec
    task: AnyTaskOptions
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    output: OutputSpec
    errors: ErrorPolicy = Field(default_factory=ErrorPolicy)
    seed: int = 0
    schedule: ScheduleSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_take_defaults(cls, data: Any) -> Any:
        """``batching:`` with every setting under it commented out is YAML's null: the section's defaults."""
        if isinstance(data, dict):
            data = {**data, **{name: {} for name in DEFAULT_SECTIONS if name in data and data[name] is None}}
        return data

    @model_validator(mode="after")
    def _no_column_clash(self) -> JobSpec:
        clash = set(self.output_columns()[: -len(self.prediction_columns())]) & set(self.prediction_columns())
        if clash:
            raise ValueError(
                f"input column(s) {sorted(clash)} would clash with the prediction columns of the same name; "
                "set output.prediction_prefix (e.g. predicted_) or stop keeping them"
            )
        return self

    @model_validator(mode="after")
    def _no_reserved_columns(self) -> JobSpec:
        named = [self.input.text_column, self.input.id_column, *self.input.columns_to_keep,
                 self.input.label_column, *self.task.input_columns()]
        reserved = sorted({n for n in named if n in RESERVED_COLUMNS})
        if reserved:
            raise ValueError(
                f"input column(s) {reserved}: names the job uses for its own bookkeeping columns "
                f"({', '.join(RESERVED_COLUMNS)}); rename the column(s) in the input"
            )
        if self.input.id_column is None and "id" in [*self.input.columns_to_keep, self.input.label_column]:
            raise ValueError(
                "input.columns_to_keep: 'id' is kept, but input.id_column is null, so the output's id column holds "
                "each row's place (file:row) and would replace it; set input.id_column: id to use it as the id"
            )
        if self.schedule is not None and (problem := self.partition_problem()):
            raise ValueError(problem)
        return self

    def partition_problem(self) -> str | None:
        """Why this job's output can't be a scheduled job's (its partitions are folders run=<tick>), or None."""
        clash = next((name for name in self.output_columns() if name.lower() == "run"), None)
        if clash is None:
            return None
        return (
            f"a column named {clash!r} in the output of a scheduled job: its partitions are folders run=<tick>, and "
            "readers of the output take 'run' from the folder names (pandas and pyarrow refuse the two, DuckDB, "
            "which matches names in any case, and Polars replace the column's values); rename the column, or its "
            "prediction prefix"
        )

    @model_validator(mode="after")
    def _room_for_a_context(self) -> JobSpec:
        """question-answering: a window of ``batching.max_length`` tokens holds the longest question and some context,
        or no row can be answered: said here, before any work, where it holds whatever the tokenizer adds (the task
        checks it again at load, with the tokenizer's special tokens)."""
        if isinstance(self.task, QuestionAnsweringOptions) and (problem := self.task.no_room(self.batching.max_length)):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _openai_batch(self) -> JobSpec:
        problem = openai_batch_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def prediction_columns(self) -> list[str]:
        names = self.task.output_names()
        if self.input.format == "openai-batch":  # the columns an answer to a request is made of
            names = OPENAI_OUTPUT_NAMES.get(self.task.type, names)
        return [self.output.prediction_prefix + name for name in names]

    def output_columns(self) -> list[str]:
        """The columns of the output files, in order: id, kept columns, predictions."""
        keep = [*self.input.columns_to_keep, *([self.input.label_column] if self.input.label_column else [])]
        first = [self.input.id_column or "id", *keep]
        return [*dict.fromkeys(first), *self.prediction_columns()]

    def actor_device(self) -> str:
        """Where the actors load the model: ``cuda`` for ``device: cuda``, or ``auto`` with a GPU per actor
        (``compute.gpus_per_actor`` > 0); else ``cpu``, even on a node with GPUs (Ray doesn't hide them)."""
        if self.model.device == "auto":
            return "cuda" if self.compute.gpus_per_actor > 0 else "cpu"
        return self.model.device

    def lanes(self, device: str, threads: int) -> int:
        """How many micro-batches an actor runs at once on ``device`` (``cpu``, ``cuda``...) with ``threads`` torch
        threads: on a CPU, one per thread, each forward on one thread, for a task whose forwards are independent
        (``compute.cpu_lanes``); else 1. On 2 cores two lanes ran 1.14-1.27x one forward at a time on both threads
        alone, and kept more of it beside Ray's processes: a lane held off its core stops only itself, where a
        forward on two threads waits for the held-off one at every step. Not for bitsandbytes layers, whose
        forward updates state held on the layer."""
        if device.split(":")[0] != "cpu" or not self.compute.cpu_lanes or not self.task.independent_forwards:
            return 1
        if self.model.quantization in ("int8", "nf4", "fp4"):
            return 1
        return max(1, threads)

    def calls_per_actor(self) -> int:
        """How many batches an actor takes at once (``compute.calls_per_actor``; default 1). On a CPU the forwards keep
        the cores busy, and tokenizing beside them measured no gain on 2 cores. On a GPU the host's work on one batch
        could run while the GPU computes another's, but its threads hold Python's interpreter lock, which the thread
        launching the GPU's kernels waits for at each of them: two at once ran a MiniLM job 3.0-5.7x slower than one
        at a time on an H200 (``benchmarks/gpu_check.py``, part ``overlap``)."""
        return self.compute.calls_per_actor or 1

    def fingerprint(self) -> str:
        """A hash of every setting that changes results: what is read, the model, the task, ``max_length``,
        the seed, the row policies ``errors.too_long`` / ``duplicate_ids`` and the output's columns and format
        (``output.prediction_prefix``, ``output.format``). Not where or how fast results are computed (batching
        sizes, compute, ``model.device``, ``model.cache_dir``), nor the error budget or the files' layout
        (compression, row groups)."""
        blob = json.dumps(hashed_settings(self.model_dump(mode="json")), sort_keys=True).encode()
        # other column names: a hash of the one above, so that records written before it counted can be upgraded
        return prefixed_hash(hashlib.sha256(blob).hexdigest()[:16], self.output.prediction_prefix)


def hashed_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """What :meth:`JobSpec.fingerprint` hashes (but the prediction prefix), from a spec as JSON (``_job.json``'s
    ``spec``; one recorded by an older version may lack a setting: it is left out)."""
    relevant: dict[str, Any] = {name: copy.deepcopy(spec[name]) for name in ("input", "model", "task", "seed")
                                if name in spec}
    relevant["max_length"] = (spec.get("batching") or {}).get("max_length")
    errors = spec.get("errors") or {}
    relevant["errors"] = {name: errors[name] for name in ("too_long", "duplicate_ids") if name in errors}
    (relevant.get("input") or {}).pop("paths", None)
    if (relevant.get("input") or {}).get("label_map", 0) is None:  # unset: outputs keep the hash they had before it
        relevant["input"].pop("label_map")
    task = relevant.get("task") or {}
    if task.get("type") in GENERATION_TASKS:  # a left-out option hashes as the value it had before it was optional
        task.update({name: CONFIG_DEFAULTS[name] for name in CONFIG_DEFAULTS if task.get(name, 0) is None})
    for where in ("device", "cache_dir", "fidelity"):  # fidelity: a check before the run, not a setting of results
        (relevant.get("model") or {}).pop(where, None)
    output = spec.get("output") or {}
    if output.get("format", "parquet") != "parquet":  # other files; parquet outputs keep the hash they had before
        relevant["output_format"] = output["format"]
    return relevant


#: The spec's names of the hashed settings that are not named as in the spec.
HASHED_NAMES = {"max_length": "batching.max_length", "output_format": "output.format"}


def changed_settings(recorded: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The settings that change results (those the spec hash covers) whose values differ between a spec an output
    recorded and ``spec`` (both as JSON), each in words: ``batching.max_length is 256 here, 512 in the output``; none
    where none can be told (a record without its spec)."""

    def flat(spec: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def walk(value: Any, name: str) -> None:
            if isinstance(value, dict):  # an empty mapping is no setting of its own: a set one is told by its keys
                for key, item in value.items():
                    walk(item, f"{name}.{key}" if name else key)
            else:
                found[HASHED_NAMES.get(name, name)] = value

        walk(hashed_settings(spec), "")
        found["output.prediction_prefix"] = (spec.get("output") or {}).get("prediction_prefix", "")
        found.setdefault("output.format", "parquet")
        return found

    if not recorded:
        return []
    before, now = flat(recorded), flat(spec)
    missing = object()

    def said(value: Any) -> str:
        if value is missing:
            return "not set"
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 80 else f"{text[:77]}..."

    return [f"{name} is {said(now.get(name, missing))} here, {said(before.get(name, missing))} in the output"
            for name in sorted({*before, *now}) if before.get(name, missing) != now.get(name, missing)]


#: The task options an OpenAI Batch job may set: the requests set the rest, each its own.
OPENAI_TASK_OPTIONS = {
    "text-generation": {"type", "max_new_tokens"},
    "feature-extraction": {"type", "pooling", "normalize"},
}


def openai_batch_problem(spec: JobSpec) -> str | None:
    """What is wrong with a job that reads or writes OpenAI Batch files; None when nothing is."""
    if spec.output.format == "openai-batch" and spec.input.format != "openai-batch":
        return "output.format openai-batch answers the requests of an OpenAI Batch file: set input.format openai-batch"
    if spec.input.format != "openai-batch":
        return None
    allowed = OPENAI_TASK_OPTIONS.get(spec.task.type)
    if allowed is None:
        return (
            f"input.format openai-batch runs task.type text-generation (/v1/chat/completions) or feature-extraction "
            f"(/v1/embeddings), not {spec.task.type}"
        )
    fields = type(spec.task).model_fields
    fixed = [
        name
        for name, info in fields.items()
        if name not in allowed and getattr(spec.task, name) != info.get_default(call_default_factory=True)
    ]
    if fixed:
        return (
            f"task.{fixed[0]}: with input.format openai-batch each request sets its own options; remove it from the "
            "job (task.max_new_tokens is the max_tokens of requests that give none)"
        )
    if spec.input.columns_to_keep or spec.input.label_column:
        return "input.columns_to_keep and label_column: an OpenAI Batch file has no columns to keep; remove them"
    if spec.model.quantization == "auto" or spec.model.fidelity is not None:
        given = "model.quantization auto" if spec.model.quantization == "auto" else "model.fidelity"
        return (
            f"{given}: with input.format openai-batch there is no fidelity check (it measures a task's own labels "
            "and embeddings, not the answers to Batch requests); choose model.quantization yourself (none, int8, "
            "...) and leave model.fidelity out"
        )
    if spec.input.id_column is None:
        return "input.id_column: the custom_id of each request is its id; name its output column (default id)"
    if spec.input.id_column == spec.input.text_column:  # two columns of the read: one would take the other's place
        return (
            f"input.id_column and input.text_column are both {spec.input.id_column!r}: with input.format openai-batch "
            "the id column holds each request's custom_id and the text column (not written) the request itself; "
            "name them differently (leave text_column out, or rename id_column)"
        )
    return None


#: The settings that name a file or folder: ``~`` alone given to one is refused, not read as null.
PATH_SETTINGS = frozenset({"input.paths", "output.path", "model.name", "model.cache_dir"})
#: The settings whose value is text in a syntax of its own, which YAML may not read (a cron expression's ``*`` opens a
#: YAML alias): a ``--set`` value YAML can't read is taken as written.
VERBATIM_SETTINGS = frozenset({"schedule.cron"})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value parsed as a YAML scalar or list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise PipelineError(f"--set {text!r}: expected key.sub=value, e.g. --set batching.batch_size=64")
    if not raw.strip():
        return key.strip().split("."), raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if key.strip() in VERBATIM_SETTINGS:
            return key.strip().split("."), raw.strip()
        raise PipelineError(
            f"--set {text!r}: the value is not valid YAML ({yaml_problem(exc)}); write a list as [a, b], "
            "and quote a value that should stay text, e.g. --set 'model.name=\"my: model\"'"
        ) from None
    if raw.count("#") > _hashes(value):  # YAML took a ` #` for a comment's start: the value lost its end
        raise PipelineError(
            f"--set {text!r}: YAML reads a # at the value's start or after a space as the start of a comment, so "
            f"the value would be {value!r}; quote the value as YAML text inside the shell's quotes, e.g. "
            "--set 'output.path=\"out/team #2\"'"
        )
    twice = written_twice(yaml.compose(raw, Loader=yaml.SafeLoader))
    if twice:
        raise PipelineError(f"--set {text!r}: {twice.split(' (lines')[0]}; write each key once")
    if raw.strip() == "~" and key.strip() in PATH_SETTINGS:  # `--set output.path=~`: the shell leaves it (at a
        # word's start only), and YAML reads it as null; elsewhere (`--set input.id_column=~`) null is meant
        raise PipelineError(
            f"--set {text!r}: ~ alone is YAML's null, not the home folder (a shell expands ~ only at the start of a "
            f"word, not after {key.strip()}=): write the path out, e.g. --set {key.strip()}=$HOME/NAME, or null for "
            "no value"
        )
    return key.strip().split("."), value


def _hashes(value: Any) -> int:
    """How many ``#`` a parsed value holds, in its texts and keys at any depth."""
    if isinstance(value, str):
        return value.count("#")
    if isinstance(value, dict):
        return sum(_hashes(k) + _hashes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_hashes(v) for v in value)
    return 0


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parser error in one line: what is wrong and where (1-based line and column)."""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    said = f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
    return f"{said}: indent with spaces, not tabs (YAML takes no tab there)" if "'\\t'" in problem else said


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    return raw


#: The setting a section given as one value most likely meant (``model: minilm`` for ``model: {name: minilm}``).
SECTION_KEYS = {"input": "paths", "model": "name", "output": "path", "model.fidelity": "min_agreement",
                "schedule": "cron"}


def format_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: the field's path, what is wrong, what was given."""
    lines = [f"{source}: invalid job spec"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not _is_union_tag(p)) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown key ({_nearest_key(item['loc'])}see the README's job spec reference)"
        elif item["type"] == "string_type" and isinstance(item.get("input"), (bool, int, float)):
            kind = "a boolean" if isinstance(item["input"], bool) else "a number"
            message = (f"{message}: YAML read it as {kind}; quote it ('yes', '0123', '2024') to mean the text as "
                       "written")
        elif item["type"] == "string_type" and isinstance(item.get("input"), dict):  # `name=my job: 1`
            pairs = ", ".join(f"{k}: {v}" for k, v in item["input"].items())
            message = (f"{message}: YAML read {pairs!r} as a mapping (a ': ' in a value does that); quote it, "
                       f"e.g. --set '{where}=\"{pairs}\"'")
        elif item["type"] == "union_tag_invalid":
            message = f"unknown task type; allowed: {', '.join(TASK_OPTIONS)}"
        elif item["type"] == "union_tag_not_found":
            message = f"task.type is missing: name the task, one of {', '.join(TASK_OPTIONS)}"
        elif where == "task" and isinstance(item.get("input"), str):
            named = item["input"] if item["input"] in TASK_OPTIONS else "TASK"
            message = (f"a section, not a name: write task: {{type: {named}}}, with the task's options beside type "
                       f"({'TASK ' if named == 'TASK' else ''}one of {', '.join(TASK_OPTIONS)})")
        elif item["type"] == "model_type" and isinstance(item.get("input"), str) and not item["input"].strip():
            message = ("an empty value for a section of settings (a --set whose shell variable was empty or unset?); "
                       "see the README's job spec")
        elif item["type"] == "model_type":  # a section given a value ("model: minilm"): pydantic named its class
            key = SECTION_KEYS.get(where)
            value = json.dumps(item.get("input")) if isinstance(item.get("input"), str) else item.get("input")
            example = f"{{{key}: {value}}}" if key else "{setting: value, …}"
            message = f"a section of settings, not a value: write {where}: {example} (see the README's job spec)"
        given = item.get("input")
        shown = "" if isinstance(given, dict) or item["type"] == "missing" else f" (got {given!r})"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in TASK_OPTIONS


def _nearest_key(loc: Sequence[Any]) -> str:
    """``did you mean batch_size? `` for an unknown key at ``loc`` (a validation error's), where a setting of its
    section is spelled alike; else the section's settings."""
    section: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        if _is_union_tag(part):
            section = TASK_OPTIONS[part]
            continue
        field = section.model_fields.get(part)
        inner = [t for t in typing.get_args(field.annotation) or (field.annotation,)
                 if isinstance(t, type) and issubclass(t, BaseModel)] if field is not None else []
        if not inner:
            return "check the spelling; "
        section = inner[0]
    names = [name for name in section.model_fields if name != "type"]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else f"this section's settings: {', '.join(names)}; "


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read, override and validate a job spec; every failure is a PipelineError."""
    path = Path(path)
    text = read_spec_text(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: a job spec is a YAML mapping (key: value), got {type(raw).__name__}")
    twice = written_twice(yaml.compose(text, Loader=yaml.SafeLoader))
    if twice:
        raise PipelineError(
            f"{path}: {twice}; YAML would keep only the second and drop the first's settings without a word: "
            "write it once, with every setting of both"
        )
    return spec_from_dict(apply_overrides(raw, list(overrides)), source=str(path))


def written_twice(node: yaml.Node | None) -> str | None:
    """The first key a mapping of the composed YAML gives twice, as ``model.quantization is written twice (lines 3
    and 9)``; None when every key is written once. YAML loaders keep the last silently (a section pasted below its
    own, as from the README)."""
    return _written_twice(node, (), set())


def _written_twice(node: yaml.Node | None, where: tuple[str, ...], looked_at: set[int]) -> str | None:
    if id(node) in looked_at:  # an alias of a node looked at already, or of one holding it
        return None
    looked_at.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            inside = (*where[:-1], f"{where[-1]}[{index}]") if where else (f"[{index}]",)
            found = _written_twice(item, inside, looked_at)
            if found:
                return found
    if not isinstance(node, yaml.MappingNode):
        return None
    lines: dict[tuple[str, str], int] = {}
    for key, value in node.value:
        name = (*where, str(key.value)) if isinstance(key, yaml.ScalarNode) else where
        if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":  # `<<: *base` merges
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                return f"{'.'.join(name)} is written twice (lines {lines[key.tag, key.value]} and {line})"
            lines[key.tag, key.value] = line
        found = _written_twice(value, name, looked_at)
        if found:
            return found
    return None


def spec_from_dict(raw: dict, source: str = "job spec") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(format_validation_error(source, exc)) from None


def read_spec_text(path: Path) -> str:
    """The spec file's text (UTF-8); a missing, unreadable or binary file is a PipelineError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path}: job spec not found") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a directory; give a job spec's YAML file, e.g. jobs/label_news.yaml") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the job spec as UTF-8"
        ) from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read the job spec ({exc.strerror or exc})") from None
