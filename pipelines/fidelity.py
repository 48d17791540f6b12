"""The quantization fidelity check of a job: which rows, where the models run, and the bar.

``pipelines fidelity JOB.yaml`` runs :func:`check` in its own process (two
predictors, one after the other; no Ray). A spec with ``model.fidelity`` runs
:func:`gate` from :func:`pipelines.runner.run_job` before any work: the same
measure, in a Ray task that asks for the resources of one of the job's actors
(so on a cluster it runs on the kind of node, GPU included, that the job runs
on), and a PipelineError when the headline agreement is below
``model.fidelity.min_agreement``. ``quantization: auto`` is decided where it was
not before (:func:`auto_precision`) by the run's pool: its actors meet on a
:class:`PrecisionBoard` (:func:`run_precision`). The sample is the same every run
(:mod:`pipelines.io.sample`). Light: the models are loaded in the measuring
process only (:mod:`pipelines.inference.fidelity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.errors import ANSI, LOADING, PipelineError, first_line
from pipelines.io.sample import sample_rows
from pipelines.io.shards import Shard
from pipelines.output.layout import write_bytes
from pipelines.output.records import Fidelity, cut, precision_label
from pipelines.spec import CPU_QUANTIZATIONS, JobSpec

log = logging.getLogger(__name__)

DEFAULT_ROWS = 256


def is_quantized(spec: JobSpec) -> bool:
    """Quantized, or computing in a reduced precision: something to compare with float32 (``dtype: auto`` is bfloat16
    or float16 where the actors get a GPU)."""
    dtype = spec.model.dtype
    reduced = dtype in ("bfloat16", "float16") or (dtype == "auto" and spec.actor_device() == "cuda")
    return spec.model.quantization != "none" or reduced


def sample(spec: JobSpec, shards: list[Shard], rows: int) -> pa.Table:
    """The job's deterministic sample of usable rows (lowest id hashes)."""
    from pipelines.runner import columns_of

    filled = spec.task.type == "question-answering"  # its question and context are refused blank, not only null
    table = sample_rows(shards, columns_of(spec, shards), rows, filled)
    if not table.num_rows:
        raise PipelineError(
            f"{spec.name or spec.output.path}: no usable input row to check fidelity on; check input.paths and "
            "input.text_column"
        )
    return table


def check(spec: JobSpec, shards: list[Shard], rows: int | None = None) -> Fidelity:
    """Measure fidelity in this process; raises PipelineError for a model that is not quantized.

    The result's ``wall_s`` is the whole check's: the sample read and every model loaded and scored on it (under
    ``quantization: auto``, float32 and each candidate, not the chosen one's alone), after the imports."""
    if spec.input.format == "openai-batch":
        raise PipelineError(
            "pipelines fidelity does not measure the answers to OpenAI Batch requests (input.format openai-batch); "
            "to see what a quantization changes, run it on a job that reads the same texts as plain rows"
        )
    if not is_quantized(spec):
        raise PipelineError(
            "model.quantization is none: there is nothing to compare; check a quantized model, "
            "e.g. --set model.quantization=int8"
        )
    from pipelines.inference.heavy_imports import import_predictor

    import_predictor()  # as a run's actor imports (the models' loads and the check's collections are the cheaper)
    from pipelines.inference.fidelity import measure

    start = time.monotonic()
    picked = sample(spec, shards, rows or _rows(spec))
    result = _check_auto(spec, picked) if spec.model.quantization == "auto" else judge(spec, measure(spec, picked))
    warn_if_coarse(result.rows, _auto_bar(spec) if result.min_agreement is None else result.min_agreement,
                   bar_source(spec))
    return result.model_copy(update={"wall_s": round(time.monotonic() - start, 3)})


def _check_auto(spec: JobSpec, picked: pa.Table) -> Fidelity:
    """``quantization: auto``: the precision a run of this job takes, against float32. That is the one its output
    keeps (measured here), else the decision kept on this machine for this sample (its figures), else one made now,
    every candidate for this machine against float32 (and kept, so that the job's next run takes the same: timed
    afresh, two candidates about as fast could go either way)."""
    from pipelines.inference.fidelity import measure
    from pipelines.planning.progress import recorded_precision

    bar = _auto_bar(spec)
    recorded = recorded_precision(spec)
    if recorded:
        chosen = Precision(recorded["quantization"], recorded["dtype"])
        if chosen == Precision("none", "float32"):
            found = _read_decision(_decision_path(spec, bar, picked, _node_bf16(spec)))  # its reason, where kept here
            why = (f" ({found['why']})" if found and found.get("why")
                   and Precision(found["quantization"], found["dtype"]) == chosen else "")
            raise PipelineError(f"quantization auto runs {spec.output.path} in float32, as its earlier runs "
                                f"chose{why}: there is nothing to compare")
        log.info("quantization auto: %s, as the output's earlier runs chose (a run keeps it)", chosen.label)
        result = measure(concrete(spec, chosen), picked)
    else:
        decided: list[bool] = []  # whether the decision is made now, or read as kept

        def decide() -> dict[str, Any]:
            decided.append(True)
            return choose_here(spec.model_dump(mode="json"), picked, bar)

        found = kept_or_decided(_decision_path(spec, bar, picked, _node_bf16(spec)), picked, decide)
        log.info("quantization auto would take %s: %s", Precision(found["quantization"], found["dtype"]).label,
                 found["why"])
        if found.get("fidelity") is None:
            raise PipelineError(f"quantization auto would run in float32 here: {found['why']}")
        result = Fidelity.model_validate(found["fidelity"])
        if not decided:
            result = result.model_copy(update={"kept_at": found.get("decided_at") or 0.0})
    return result.model_copy(update={"min_agreement": bar, "passed": result.agreement >= bar})


def gate(spec: JobSpec, shards: list[Shard]) -> Fidelity | None:
    """For a run: measure where an actor would run; PipelineError when below the bar; None when not asked for."""
    if spec.model.fidelity is None:
        return None
    if not is_quantized(spec):
        log.info("model.fidelity: the model is not quantized; nothing to check")
        return None
    picked = sample(spec, shards, spec.model.fidelity.rows)
    log.info("fidelity: scoring %d sampled rows with %s and unquantized", picked.num_rows, spec.model.quantization)
    result = judge(spec, _measure_on_ray(spec, picked))
    warn_if_coarse(result.rows, spec.model.fidelity.min_agreement, bar_source(spec))
    if not result.passed:
        raise PipelineError(below_bar(spec, result))
    log.info("fidelity: %s %.4f >= %s", result.measure, result.agreement, result.min_agreement)
    return result


def warn_if_coarse(rows: int, bar: float, source: str = "model.fidelity.min_agreement") -> None:
    """Say when ``rows`` sampled rows are too few to measure agreement to ``bar`` (``source``: where it comes from,
    :func:`bar_source`): under 1 / (1 - bar) rows a single changed row already falls below it, so passing says only
    that no sampled row changed."""
    if bar >= 1 or rows * (1 - bar) >= 1 - 1e-9:
        return
    log.warning(
        "quantization fidelity on only %d sampled rows: one changed row moves the agreement by %.2f%%, so the bar %s "
        "(%s) passes only where none of them changed, which says little about the rest of the input; sample at "
        "least %d rows (model.fidelity.rows, or --rows) to measure it", rows, 100 / max(rows, 1), bar, source,
        math.ceil(1 / (1 - bar) - 1e-9),
    )


def bar_source(spec: JobSpec) -> str:
    """Where the job's fidelity bar comes from, for a message: the spec's ``model.fidelity.min_agreement``, or its
    default where the job sets no ``model.fidelity`` (which ``quantization: auto`` chooses by, and which nothing
    else judges against)."""
    if spec.model.fidelity is not None:
        return "model.fidelity.min_agreement"
    if spec.model.quantization == "auto":
        return "the default of model.fidelity.min_agreement, which quantization auto chooses by; this job sets none"
    return ("the default of model.fidelity.min_agreement; this job sets no model.fidelity, so nothing is judged "
            "against it")


def judge(spec: JobSpec, result: Fidelity) -> Fidelity:
    """The result with the spec's bar applied (``passed`` stays None without a bar)."""
    if spec.model.fidelity is None:
        return result
    bar = spec.model.fidelity.min_agreement
    return result.model_copy(update={"min_agreement": bar, "passed": result.agreement >= bar})


def below_bar(spec: JobSpec, result: Fidelity, run: bool = True) -> str:
    """Why the check stops a run (``run``), or fails ``pipelines fidelity``, which writes nothing and is the command
    that shows what changed."""
    lighter = {
        "none": "model.dtype float32",  # a reduced dtype alone
        "int8": "no quantization (model.quantization none)",
        "dynamic-int8": "no quantization (model.quantization none)",
        "per-token-int8": "smooth-int8, or no quantization (model.quantization none)",
        "smooth-int8": "no quantization (model.quantization none)",
    }.get(spec.model.quantization, "a lighter quantization (int8, or none)")
    return (
        f"quantization fidelity below the bar: {result.measure} {cut(result.agreement, 2, percent=True)} on "
        f"{result.rows} sampled rows, {result.quantization} vs unquantized, under model.fidelity.min_agreement="
        f"{result.min_agreement}{'; nothing was written' if run else ''}. Use {lighter}, or lower the bar if the "
        "difference is acceptable" + (" (`pipelines fidelity JOB.yaml` shows what changed)" if run else "")
    )


def _rows(spec: JobSpec) -> int:
    return spec.model.fidelity.rows if spec.model.fidelity else DEFAULT_ROWS


def _measure_on_ray(spec: JobSpec, picked: pa.Table) -> Fidelity:
    return Fidelity.model_validate(_on_ray(spec, _measure_remote, picked))


def _on_ray(spec: JobSpec, function: Any, picked: pa.Table, *args: Any) -> Any:
    """Run ``function(spec, picked, *args)`` in a Ray task with the resources of one of the job's actors."""
    import ray

    compute = spec.compute
    options: dict[str, Any] = {"num_cpus": compute.cpus_per_actor, "num_gpus": compute.gpus_per_actor}
    if compute.accelerator_type:
        options["accelerator_type"] = compute.accelerator_type
    if compute.resources:
        options["resources"] = dict(compute.resources)
    task = ray.remote(function).options(max_retries=0, **options)
    from pipelines.cluster.connect import worker_spec

    try:
        return ray.get(task.remote(worker_spec(spec), picked, *args))
    except ray.exceptions.RayTaskError as exc:  # the model, loaded there: weights the checks don't read, say
        loading = LOADING.search(ANSI.sub("", str(exc))) is not None  # raised as the predictor loaded the model
        if isinstance(exc.cause, PipelineError):
            failed = exc.cause
        else:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            said = str(cause).strip().splitlines()
            what = "could not be loaded in" if loading else "failed in"
            failed = PipelineError(
                f"model {spec.model.name!r} {what} the Ray task that measures its precisions (model.fidelity): "
                f"{type(cause).__name__}: {said[0] if said else 'no reason given'}; fix the model's files or the "
                "spec, then run again"
            )
        failed.unloadable_model = loading
        raise failed from None


def _measure_remote(spec: dict[str, Any], picked: pa.Table) -> dict[str, Any]:
    from pipelines.inference.heavy_imports import import_predictor

    import_predictor()  # as a run's actor imports: the gate comes before a first run's pool
    from pipelines.inference.fidelity import measure

    return measure(JobSpec.model_validate(spec), picked).to_json()


# quantization: auto ---------------------------------------------------------------------------------

#: The bar of quantization: auto when the spec sets no model.fidelity.
AUTO_MIN_AGREEMENT = 0.99
#: Bump when the candidates or their measures change, so that kept decisions are made again (2: a one-output model
#: judged by its scores, not its one label; a NaN prediction a failure; 3: so is a model whose every label's score is
#: its own, a multi-label one's, not by its top label; 4: scores that all tie judged against their size, not a
#: spread of 0; 5: per-token-int8 instead of dynamic-int8 on a CPU; 6: smooth-int8 too on a CPU).
CANDIDATES_VERSION = 6


@dataclass(frozen=True)
class Precision:
    """A concrete way to run the model: a quantization and a dtype (what ``quantization: auto`` resolves to)."""

    quantization: str
    dtype: str

    @property
    def label(self) -> str:
        return precision_label({"quantization": self.quantization, "dtype": self.dtype})


def auto_precision(
    spec: JobSpec, shards: list[Shard], recorded: dict[str, Any] | None
) -> tuple[JobSpec, Fidelity | None] | PoolChoice:
    """The spec with ``quantization: auto`` made concrete and the check that chose it, where that is known without
    measuring; else what measuring it takes (a :class:`PoolChoice`, which the run's pool makes).

    ``recorded``: the precision this output's first run chose (a scheduled job's: its earlier runs'), which is
    kept (one output, one precision). Otherwise the candidates for the device an actor runs on are scored and
    timed on this job's fidelity sample against float32, where an actor runs, and the fastest within the bar
    wins, float32 included (:func:`fastest_within`); a decision made before on the very same sample rows (same
    model, task and kind of device) is taken instead of measuring again.
    """
    if recorded:
        chosen = Precision(recorded["quantization"], recorded["dtype"])
        if chosen.quantization in CPU_QUANTIZATIONS and spec.actor_device() == "cuda":
            raise PipelineError(
                f"output {spec.output.path}: its first run chose {chosen.quantization} (quantization auto on a CPU), "
                "which runs only on a CPU, and this run's actors get a GPU (one output keeps one precision); resume it "
                "on the CPU (compute.gpus_per_actor: 0), or start it again on the GPU with --overwrite"
            )
        hold_bar(spec, chosen, recorded)
        log.info("quantization auto: %s, as decided by this output's first run (a scheduled job's earlier runs)",
                 chosen.label)
        return concrete(spec, chosen), None
    bar = _auto_bar(spec)
    picked = sample(spec, shards, _rows(spec))
    warn_if_coarse(picked.num_rows, bar, bar_source(spec))
    cache = _decision_path(spec, bar, picked, *_decider_node(spec, picked))
    found = _read_decision(cache)
    if found is None:
        log.info("quantization auto: scoring %d sampled rows at each candidate precision against float32 (kept "
                 "in %s for this sample, model, task, kind of device and versions of torch and transformers)",
                 picked.num_rows, cache)
        return PoolChoice(picked, bar, cache)
    log.info("quantization auto: the decision of %s on these same %d sampled rows, model, task, kind of "
             "device and versions of torch and transformers (%s)",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(found.get("decided_at", 0))), picked.num_rows, cache)
    return taken(spec, found, bar)


def taken(spec: JobSpec, found: dict[str, Any], bar: float) -> tuple[JobSpec, Fidelity | None]:
    """The spec at the precision of the decision ``found`` (:func:`fastest_within`'s), and its check's figures
    judged against ``bar`` (None for float32: nothing to compare)."""
    chosen = Precision(found["quantization"], found["dtype"])
    result = Fidelity.model_validate(found["fidelity"]) if found.get("fidelity") else None
    if result is not None:
        result = result.model_copy(update={"min_agreement": bar, "passed": True})
    log.info("quantization auto: %s (%s)", chosen.label, found.get("why", ""))
    return concrete(spec, chosen), result


@dataclass(frozen=True)
class PoolChoice:
    """``quantization: auto``'s decision still to be made, on the job's fidelity sample ``picked`` against ``bar``:
    by the run's pool, in the first actor that loads the model (whose imports of torch, Transformers and the model's
    code then serve the run as well; :class:`PrecisionBoard` gives every actor the first one posted). :meth:`keep`
    keeps it in ``cache``, the decisions of this machine."""

    picked: pa.Table
    bar: float
    cache: Path

    def keep(self, spec: JobSpec, decided: dict[str, Any]) -> tuple[JobSpec, Fidelity | None]:
        """``decided`` (:func:`choose_here`'s) stamped and kept in the cache; the spec at its precision and its
        check, as :func:`taken`."""
        found = {**decided, "decided_at": time.time(), "rows": self.picked.num_rows}
        _write_decision(self.cache, found)
        return taken(spec, found, self.bar)


def hold_bar(spec: JobSpec, chosen: Precision, recorded: dict[str, Any]) -> None:
    """A kept precision against this run's bar (``model.fidelity`` is not in the spec's hash, so it can be raised
    after the precision was chosen): PipelineError where the agreement its check recorded is below the bar; a
    warning where none was recorded (a run before the figures were kept). float32 is the reference: any bar holds."""
    bar = _auto_bar(spec)
    agreement = recorded.get("agreement")
    if chosen == Precision("none", "float32") or (agreement is not None and agreement >= bar):
        return
    again = ("decide again at the new bar: a scheduled job with `pipelines schedule JOB.yaml --once --rescore` (a new "
             "partition of every current shard), one output with `pipelines run JOB.yaml --overwrite`")
    if agreement is None:
        log.warning("quantization auto keeps %s for %s without a check against model.fidelity.min_agreement=%s: "
                    "its agreement was not recorded (chosen by a run before it was); to hold the bar, %s",
                    chosen.label, spec.output.path, bar, again)
        return
    raise PipelineError(
        f"output {spec.output.path}: quantization auto keeps {chosen.label} (one output, and a scheduled job's "
        f"partitions, keep one precision), which was chosen with {recorded.get('measure', 'agreement')} "
        f"{cut(agreement)} on {recorded.get('rows')} sampled rows under the bar {recorded.get('bar')}, below this "
        f"run's model.fidelity.min_agreement={bar}; nothing was written. To hold the new bar, {again}; or keep "
        f"min_agreement at or below {cut(agreement)}"
    )


def precision_record(spec: JobSpec, checked: Fidelity | None, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """What an output keeps of ``quantization: auto``'s decision (``precision`` in ``_job.json``): the precision
    ``spec`` runs at and the figures of the check that chose it (now: ``checked``; earlier: ``recorded``'s), which a
    later run holds against its bar (:func:`hold_bar`). float32 has none (the reference agrees with itself)."""
    chosen: dict[str, Any] = {"quantization": spec.model.quantization, "dtype": spec.model.dtype}
    if checked is not None:
        return {**chosen, "measure": checked.measure, "agreement": checked.agreement, "rows": checked.rows,
                "bar": checked.min_agreement}
    if recorded and (recorded["quantization"], recorded["dtype"]) == (chosen["quantization"], chosen["dtype"]):
        return {**recorded, **chosen}
    return chosen


def planned_precision(spec: JobSpec, shards: list[Shard], recorded: dict[str, Any] | None) -> tuple[Precision, str]:
    """What ``quantization: auto`` would run at here without measuring anything: the precision the output
    recorded (``recorded``, kept by a run), else the decision kept here for this job's sample, model, task and
    kind of device, else float32 (the fallback, the slowest it may take); and which of the three."""
    if recorded:
        chosen = Precision(recorded["quantization"], recorded["dtype"])
        return chosen, f"quantization auto: {chosen.label}, as the output's earlier runs chose (a run keeps it)"
    try:
        picked = sample(spec, shards, _rows(spec))
    except PipelineError:
        picked = None
    found = None
    if picked is not None:  # no Ray here: the decision made for a node like this machine (a run asks the actors')
        found = _read_decision(_decision_path(spec, _auto_bar(spec), picked, _node_bf16(spec)))
    if found is not None:
        chosen = Precision(found["quantization"], found["dtype"])
        return chosen, f"quantization auto: {chosen.label}, as decided here before on this job's sample"
    return Precision("none", "float32"), "quantization auto, not decided here yet: float32, the slowest it may take"


def _auto_bar(spec: JobSpec) -> float:
    return spec.model.fidelity.min_agreement if spec.model.fidelity else AUTO_MIN_AGREEMENT


def sample_digest(spec: JobSpec, picked: pa.Table) -> str:
    """What identifies a fidelity sample: its rows' ids and model inputs, in the sample's order (by id hash), so
    the same rows give the same digest whatever files or order they were read from."""
    from pipelines.runner import columns_of

    columns = columns_of(spec)
    truth = [spec.input.label_column] if spec.input.label_column else []  # the check's accuracies are against it
    names = [n for n in dict.fromkeys([columns.id_name, *columns.strings, *truth]) if n in picked.column_names]
    rows: list[Any] = picked.select(names).to_pylist()
    if truth and spec.input.label_map:  # the check's accuracies read the truth through it (unset: digests as before)
        rows.append({"label_map": spec.input.label_map})
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _decision_path(
    spec: JobSpec, bar: float, picked: pa.Table, bf16: bool, libraries: dict[str, str | None] | None = None,
    cpu: list[str] | None = None,
) -> Path:
    """Where the decision for this sample of the input (its ground truth included), this model (its exact weights),
    task options, row policy, kind of device, CPU matmul and lanes is kept; ``bf16``: whether the node that decides
    (:func:`_node_bf16`, asked there) computes bfloat16 natively, which decides whether bfloat16 is a candidate;
    ``libraries``: the versions of the libraries whose kernels the candidates run there (:func:`library_versions`;
    None: this process's); ``cpu``: the flags of its CPU that decide the kernels of a CPU job's candidates
    (:func:`cpu_kernels`; None: this machine's)."""
    from pipelines.inference.gguf import model_cache
    from pipelines.schedule.lineage import model_lineage

    lineage = model_lineage(spec.model)
    key = {
        "model": {k: lineage.get(k) for k in ("name", "revision", "commit", "content_hash")},
        "task": spec.task.model_dump(mode="json"),
        "max_length": spec.batching.max_length,
        "device": [spec.model.device, spec.compute.gpus_per_actor > 0, spec.compute.accelerator_type, bf16],
        "too_long": spec.errors.too_long,  # truncated, or quarantined and left out of the check: other rows judged
        "cpu_matmul": spec.compute.cpu_matmul,  # the candidates' speeds depend on it
        "cpu_lanes": spec.compute.cpu_lanes if spec.actor_device() == "cpu" else None,  # and on this, on a CPU
        "bar": bar,
        "candidates": CANDIDATES_VERSION,
        "libraries": library_versions() if libraries is None else libraries,  # other kernels: other figures
        "cpu": (cpu_kernels() if cpu is None else cpu) if spec.actor_device() == "cpu" else None,  # and so here
        "sample": sample_digest(spec, picked),  # the agreement is measured on these rows: another input, another
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return model_cache(spec.model.cache_dir) / "precision" / f"{digest}.json"


def kept_or_decided(cache: Path, picked: pa.Table, decide: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The decision kept in ``cache`` for the sample ``picked``, else ``decide()``'s, stamped and kept there (for a
    run, and ``pipelines fidelity``, to take the same)."""
    found = _read_decision(cache)
    if found is not None:
        log.info("quantization auto: the decision of %s on these same %d sampled rows, model, task, kind of "
                 "device and versions of torch and transformers (%s)",
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(found.get("decided_at", 0))), picked.num_rows, cache)
        return found
    log.info("quantization auto: scoring %d sampled rows at each candidate precision against float32 (kept "
             "in %s for this sample, model, task, kind of device and versions of torch and transformers)",
             picked.num_rows, cache)
    found = {**decide(), "decided_at": time.time(), "rows": picked.num_rows}
    _write_decision(cache, found)
    return found


def _read_decision(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and {"quantization", "dtype"} <= set(found) else None


def _write_decision(path: Path, found: dict[str, Any]) -> None:
    """Kept whole or not at all (write-then-rename, this writer's own temporary file, removed where the write fails),
    for another run reading or writing it at the same time."""
    try:
        write_bytes(pafs.LocalFileSystem(), str(path), json.dumps(found, indent=1, default=str).encode(), shared=True)
    except OSError as exc:  # a cache that can't be written costs a check next time, nothing else
        log.warning("quantization auto: could not keep the decision in %s (%s)", path, exc)


def concrete(spec: JobSpec, chosen: Precision) -> JobSpec:
    copy = spec.model_copy(deep=True)
    copy.model.quantization = chosen.quantization  # type: ignore[assignment]
    copy.model.dtype = chosen.dtype  # type: ignore[assignment]
    return copy


#: The candidates whose Linear layers run torch's int8 matrix product (:mod:`~pipelines.inference.int8_linear`).
INT8_CANDIDATES = frozenset({"per-token-int8", "smooth-int8"})


def candidates(device: str, bf16: bool) -> list[Precision]:
    """What may be faster than float32. On a CPU: int8 with a scale per token (``per-token-int8``: not torch's
    ``dynamic-int8``, whose labels change with the rows batched together and which keeps fewer of them), the same
    after SmoothQuant's migration (``smooth-int8``: slower than it, closer to float32), and bfloat16 where the CPU
    computes it natively; on a GPU: bfloat16, or float16 on GPUs without bf16 (T4, V100), where bf16 is emulated
    (bitsandbytes' int8 and nf4 save memory there, not time). Each is timed on the sample against float32."""
    if device == "cuda":
        return [Precision("none", "bfloat16" if bf16 else "float16")]
    found = [Precision("per-token-int8", "float32")]
    if bf16:  # timed before smooth-int8: where per-token-int8 took no less time, smooth-int8 is not tried (outrun)
        found.append(Precision("none", "bfloat16"))
    return [*found, Precision("smooth-int8", "float32")]


def choose_here(spec_json: dict[str, Any], picked: pa.Table, bar: float) -> dict[str, Any]:
    """Decide ``quantization: auto`` in this process: float32 and each candidate for this device scored and timed
    on ``picked`` (:func:`fastest_within`'s decision), but for the int8 candidates where this CPU's int8 product is
    far slower than float32's (:func:`_without_slow_int8`; float32 then taken unscored where none is left): in a
    run's pool actor (:func:`run_precision`), or in ``pipelines fidelity``'s process."""
    import torch

    from pipelines.inference.fidelity import measure_against

    spec = JobSpec.model_validate(spec_json)
    cuda = torch.cuda.is_available() and spec.actor_device() == "cuda"
    reference = concrete(spec, Precision("none", "float32"))
    options, passed_over = _without_slow_int8([concrete(spec, c) for c in candidates("cuda" if cuda else "cpu",
                                                                                      _node_bf16(spec))])
    if not options:  # nothing can be faster than float32 here: no pass of either is made
        return fastest_within([], bar, passed_over)
    skipped: dict[int, str] = {}  # why each candidate not tried can't win, as said when it was passed over

    def needless(candidate: JobSpec, done: list[tuple[JobSpec, Fidelity]], stopped: list[tuple[JobSpec, Any]],
                 reference_s: float) -> bool:
        why = outrun(candidate, done, bar, stopped, reference_s)
        if why is not None:
            skipped[id(candidate)] = why
        return why is not None

    results, stopped = measure_against(reference, options, picked, bar, needless)
    tried = {id(c) for c, _ in results} | {id(c) for c, _ in stopped}  # needless is also asked ahead (see there)
    left = [f"{_precision_of(c).label} not tried ({skipped[id(c)]})" for c in options
            if id(c) in skipped and id(c) not in tried]
    return fastest_within(results, bar, passed_over + left, stopped)


def _without_slow_int8(options: list[JobSpec]) -> tuple[list[JobSpec], list[str]]:
    """``options`` less the CPU int8 candidates where torch's int8 matrix product on this CPU takes over
    :data:`~pipelines.inference.int8_linear.SLOW_INT8_RATIO` times float32's (measured here, in a fraction of a
    second: :func:`~pipelines.inference.int8_linear.int8_product_ratio`), and what is said of those left out. Their
    Linear layers run that product and more, so they can't be faster than float32: on an AVX2-only CPU (Zen 3, ~30x)
    each was loaded, warmed up and timed until :data:`~pipelines.inference.fidelity.SLOWER` stopped it."""
    int8 = [c for c in options if c.model.quantization in INT8_CANDIDATES]
    if not int8:
        return options, []
    import torch

    from pipelines.inference.int8_linear import slow_int8_ratio
    from pipelines.inference.predictor import usable_cpus

    torch.set_num_threads(int8[0].compute.torch_threads(usable_cpus()))  # the threads its Predictor will take
    ratio = slow_int8_ratio()
    if ratio is None:  # not far slower, or not measured: the candidates are timed
        return options, []
    said = [f"{_precision_of(c).label} not tried (torch's int8 matrix product took {ratio:.0f}x float32's time on "
            "this CPU)" for c in int8]
    return [c for c in options if c.model.quantization not in INT8_CANDIDATES], said


#: How long an actor measuring ``quantization: auto``'s candidates holds the board's claim before another actor
#: waiting on it measures instead (one that died without Ray restarting it); the first decision posted still wins.
CLAIM_S = 900.0
#: How long one call waiting on the board's decision lasts before the actor asks again.
WAIT_S = 30.0
#: How many times one actor may begin measuring in a run (Ray restarts an actor that died, without end): past this
#: the check fails the run, where a check that kills its process (memory) would be begun again for ever.
CHECK_TRIES = 3


class PrecisionBoard:
    """Where a run's pool actors meet on ``quantization: auto``'s decision (:class:`PoolChoice`), as a Ray actor of
    the driver's node. One actor at a time measures (:meth:`take` gives it the claim, and gives it again to the same
    actor restarted by Ray) while the others wait (:meth:`wait`): actors sharing a node would otherwise time the
    candidates while slowing each other down. The first decision posted is kept, and every actor takes that one
    (one that measured after a claim ran out, one the pool adds later, one Ray restarts), so that the output holds
    one precision."""

    def __init__(self, claim_s: float = CLAIM_S) -> None:
        self.found: dict[str, Any] | None = None
        self.claim: tuple[str, float] | None = None  # the actor measuring, and since when
        self.claim_s = claim_s
        self.begun: dict[str, int] = {}  # how many times each actor began measuring
        self.posted: asyncio.Event | None = None

    async def decided(self) -> dict[str, Any] | None:
        return self.found

    async def take(self, actor: str) -> dict[str, Any]:
        """``{"found": decision}``; else ``{"measure": True}`` for the actor that is to measure (the first to ask,
        the same one restarted, or any once the claim is older than ``claim_s``), or ``{"failed": n}`` where that
        actor has begun it :data:`CHECK_TRIES` times already (it died each time); else ``{"wait": True}``."""
        if self.found is not None:
            return {"found": self.found}
        now = time.monotonic()
        if self.claim is None or self.claim[0] == actor or now - self.claim[1] > self.claim_s:
            if self.begun.get(actor, 0) >= CHECK_TRIES:
                return {"failed": self.begun[actor]}
            self.begun[actor] = self.begun.get(actor, 0) + 1
            self.claim = (actor, now)
            return {"measure": True}
        return {"wait": True}

    async def wait(self, seconds: float) -> dict[str, Any] | None:
        """The decision once posted, within ``seconds``; else None."""
        if self.found is None:
            self.posted = self.posted or asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.posted.wait(), seconds)
        return self.found

    async def post(self, found: dict[str, Any]) -> dict[str, Any]:
        if self.found is None:
            self.found = found
            if self.posted is not None:
                self.posted.set()
        return self.found


def open_board(claim_s: float = CLAIM_S) -> Any:
    """A :class:`PrecisionBoard` for a run, on the driver's node where it can be placed there (it needs no CPU), so
    that it lives as long as the run does."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(PrecisionBoard).options(num_cpus=0, max_restarts=0, scheduling_strategy=here).remote(claim_s)


def board_said(board: Any, method: str, *args: Any) -> Any:
    """``board.<method>(*args)``'s answer; a board that is gone (its process or node lost) is a PipelineError: the
    run can't tell its actors the precision it holds, and a resume reads it from ``_job.json`` or decides anew."""
    import ray

    try:
        return ray.get(getattr(board, method).remote(*args))
    except ray.exceptions.RayActorError as exc:
        raise PipelineError(
            f"quantization auto: the run's board of its precision (a Ray actor on the driver's node) is gone ("
            f"Ray: {first_line(exc)}), so the run's actors can't be told the precision it holds; run the same "
            "command again to resume (shards committed keep their precision)"
        ) from None


def run_precision(spec_json: dict[str, Any], board: Any, picked: pa.Table, bar: float) -> dict[str, Any]:
    """The worker spec at the run's precision, in a pool actor of a run under ``quantization: auto`` whose
    decision is the pool's: the one ``board`` holds, else one made here (:func:`choose_here`) and posted, the board
    keeping the first posted; while another actor measures, this one waits for its decision."""
    import ray

    from pipelines import faults

    actor = ray.get_runtime_context().get_actor_id() or f"pid {os.getpid()}"  # an actor's id outlives a restart
    found = None
    while found is None:
        said = board_said(board, "take", actor)
        if "found" in said:
            found = said["found"]
        elif "failed" in said:
            raise PipelineError(
                f"quantization auto: the check was begun {said['failed']} times in this run by a pool actor that died "
                "each time before it decided (most often killed for memory: it loads float32, then each candidate); "
                "give the actors more memory, or set model.quantization yourself (none, or a precision that fits), "
                "then run again (committed shards are kept)"
            )
        elif "measure" in said:
            start = time.monotonic()
            decided = {**choose_here(spec_json, picked, bar), "check_s": round(time.monotonic() - start, 3)}
            faults.checkpoint("decided")  # a test's: the actor killed between its decision and posting it
            found = board_said(board, "post", decided)
        else:
            found = board_said(board, "wait", WAIT_S)
    return {**spec_json, "model": {**spec_json["model"], "quantization": found["quantization"],
                                   "dtype": found["dtype"]}}


#: A candidate that computes all that another does and more (smooth-int8: per-token-int8's int8 products, and its
#: outlying channels in float32 beside them), so it is never the faster of the two: not tried where that one is
#: within the bar.
DOES_MORE_THAN = {Precision("smooth-int8", "float32"): Precision("per-token-int8", "float32")}


def outrun(
    candidate: JobSpec, done: list[tuple[JobSpec, Fidelity]], bar: float, stopped: Sequence[tuple[JobSpec, Any]] = (),
    reference_s: float | None = None,
) -> str | None:
    """Why ``candidate`` can't be the fastest within ``bar`` given the candidates ``done``, those ``stopped`` before
    the end of their first pass (each with its :class:`~pipelines.inference.fidelity.Stopped`) and float32's time on
    the sample ``reference_s`` (None: it can): one it does more than (:data:`DOES_MORE_THAN`) is within the bar, was
    slower than float32, or took no less time than float32 or a candidate within the bar (stopped below the bar: its
    whole pass at the pace of float32's over the same calls). The last is a judgement: the lighter one's single pass,
    in parts, is set against the others' fastest pass, mostly one call of the whole sample, so it leans towards
    leaving the candidate out where they were close. smooth-int8 computes all that per-token-int8 does and more, and
    its first load calibrates: on the main job's first run on a 2-core Zen 4 CPU, per-token-int8 below the bar took
    0.96-1.05 s over the sample, bfloat16 0.84-0.86 and smooth-int8 0.94-1.04 (three runs), so measuring it took 4 s
    of the check and changed no decision (the README has the runs where it did win, by 1%)."""
    lighter = DOES_MORE_THAN.get(_precision_of(candidate))
    if lighter is None:
        return None
    how = next((how for spec, how in stopped if _precision_of(spec) == lighter), None)
    if how is not None and how.slower:
        return f"{lighter.label} was slower than float32 and computes less"
    if how is not None and how.estimate_s is None:  # below the bar, its pace not known: it is tried
        return None
    light = next((result for spec, result in done if _precision_of(spec) == lighter), None)
    if light is not None and light.agreement >= bar:
        return f"{lighter.label} is within the bar and computes less"
    if how is not None:
        light_s, light_said = how.estimate_s, (f"{lighter.label}, stopped below the bar after {how.rows} of "
                                               f"{how.of} rows, would have taken {how.estimate_s:.2f} s at its pace")
    elif light is not None and light.predict_s is not None:
        light_s, light_said = light.predict_s, f"{lighter.label} took {light.predict_s:.2f} s"
    else:
        return None
    times = [(f"{_precision_of(spec).label}'s {result.predict_s:.2f} s within the bar", result.predict_s)
             for spec, result in done if result.agreement >= bar and result.predict_s is not None]
    if reference_s is not None:
        times.append((f"float32's {reference_s:.2f} s", reference_s))
    if times:
        named, fastest = min(times, key=lambda pair: pair[1])
        if light_s >= fastest:
            return f"{light_said}, no less than {named}, and computes less"
    return None


def _precision_of(spec: JobSpec) -> Precision:
    return Precision(spec.model.quantization, spec.model.dtype)


def _node_bf16(spec: JobSpec) -> bool:
    """Whether this process computes bfloat16 natively where the job's actors run: the GPU's bf16 support, else the
    CPU's flags (:func:`_cpu_bf16`, no torch). What decides whether bfloat16 is a candidate here, and the decision's
    key: the run, its Ray task and ``pipelines plan`` ask this one function."""
    if spec.actor_device() == "cuda":
        import torch

        if torch.cuda.is_available():
            return bool(torch.cuda.is_bf16_supported())
    return _cpu_bf16()


#: The libraries whose kernels compute the candidates (torch's int8 and bfloat16 ones, transformers' attention): a
#: decision made with other versions of them is made again. bitsandbytes is no candidate of auto.
DECIDING_LIBRARIES = ("torch", "transformers")


def library_versions() -> dict[str, str | None]:
    """The installed versions of :data:`DECIDING_LIBRARIES` in this process's environment (None: not installed),
    read from their metadata: nothing is imported."""
    found: dict[str, str | None] = {}
    for name in DECIDING_LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _decider_node(spec: JobSpec, picked: pa.Table) -> tuple[bool, dict[str, str | None], list[str]]:
    """:func:`_node_bf16`, :func:`library_versions` and :func:`cpu_kernels` where the check would run. A CPU job on a
    Ray of this machine alone (a local Ray) is answered here from the CPU's flags and this environment: asking in a
    task would start a worker and import torch in it before every run of the job, seconds of start-up on a small
    machine; elsewhere a Ray task with an actor's resources asks."""
    import ray

    if spec.actor_device() == "cpu" and ray.is_initialized():
        alive = [node for node in ray.nodes() if node.get("Alive")]
        if len(alive) == 1 and alive[0].get("NodeID") == ray.get_runtime_context().get_node_id():
            return _node_bf16(spec), library_versions(), cpu_kernels()
    bf16, libraries, cpu = _on_ray(spec, _node_remote, picked.slice(0, 0))
    return bool(bf16), dict(libraries), list(cpu)


def _node_remote(spec_json: dict[str, Any], picked: pa.Table) -> tuple[bool, dict[str, str | None], list[str]]:
    """:func:`_node_bf16`, :func:`library_versions` and :func:`cpu_kernels` on the node a Ray task with an actor's
    resources lands on (the decision's node)."""
    return _node_bf16(JobSpec.model_validate(spec_json)), library_versions(), cpu_kernels()


def fastest_within(
    results: list[tuple[JobSpec, Fidelity]], bar: float, left: list[str] | None = None,
    stopped: list[tuple[JobSpec, Any]] | None = None,
) -> dict[str, Any]:
    """The decision: of the candidates whose agreement reaches ``bar``, and float32, the one that took the sample
    in the least time (float32 on a tie), with the reason in words (``left``: candidates not tried, and why;
    ``stopped``: those stopped before the end of their first pass, as slower than float32 or below the bar, each with
    its :class:`~pipelines.inference.fidelity.Stopped`)."""
    stopped = stopped or []
    tried = [f"{_precision_of(c).label} {cut(r.agreement)} in {r.predict_s or 0:.2f} s" for c, r in results]
    tried += [f"{_precision_of(c).label} stopped after {how.seconds:.2f} s on {how.rows} of {how.of} rows "
              f"({how.said()})" for c, how in stopped]
    tried += left or []
    float32_s = next((r.reference_predict_s for _, r in results if r.reference_predict_s is not None),
                     next((how.reference_s for _, how in stopped), None))
    measure = results[0][1].measure if results else next((how.measure for _, how in stopped if how.measure),
                                                         "agreement")
    why = f"{measure} vs float32: {', '.join(tried) or 'no candidate for this device'}"
    if float32_s is not None:
        why += f"; float32 in {float32_s:.2f} s"
    passing = [(c, r) for c, r in results if r.agreement >= bar]
    faster = [(c, r) for c, r in passing if float32_s is None or (r.predict_s or 0) < float32_s]
    if not faster:
        if passing or any(how.slower for _, how in stopped):
            reason = f"float32 the fastest within the bar {bar}"
        elif left and not results and not stopped:
            reason = "float32, as no candidate can be faster here"
        else:
            reason = f"no candidate within the bar {bar}"
        return {"quantization": "none", "dtype": "float32", "fidelity": None, "why": f"{reason}; {why}"}
    candidate, result = min(faster, key=lambda pair: pair[1].predict_s or 0)
    return {"quantization": candidate.model.quantization, "dtype": candidate.model.dtype,
            "fidelity": result.to_json(), "why": f"the fastest within the bar {bar}; {why}"}


def _cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX): otherwise bfloat16 is slower."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


#: The CPU's flags that decide the kernels torch runs the candidates with (its int8 product, bfloat16's): a decision
#: made on a CPU with other ones is made again. On a CPU with AVX2 and no AVX-512 (a 2-core AMD EPYC, Zen 3), torch's
#: int8 product took 60x float32's time, where on one with AVX-512 (Zen 4) per-token-int8 ran faster than float32:
#: a decision kept in a cache shared by both (a home folder on a cluster's file system) would have run the job at it.
CPU_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_kernels() -> list[str]:
    """Which of :data:`CPU_KERNEL_FLAGS` this CPU has (no torch)."""
    flags = _cpu_flags()
    return [flag for flag in CPU_KERNEL_FLAGS if flag in flags]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()
