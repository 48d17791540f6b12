"""The quantization fidelity check of a job: which rows, where the models run, and the bar.

``pipelines fidelity JOB.yaml`` runs :func:`check` in its own process (two
predictors, one after the other; no Ray). A spec with ``model.fidelity`` runs
:func:`gate` from :func:`pipelines.runner.run_job` before any work: the same
measure, in a Ray task that asks for the resources of one of the job's actors
(so on a cluster it runs on the kind of node, GPU included, that the job runs
on), and a PipelineError when the headline agreement is below
``model.fidelity.min_agreement``. The sample is the same every run
(:mod:`pipelines.io.sample`). Light: the models are loaded in the measuring
process only (:mod:`pipelines.inference.fidelity`).
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from pipelines.errors import PipelineError
from pipelines.io.sample import sample_rows
from pipelines.io.shards import Shard
from pipelines.output.records import Fidelity
from pipelines.spec import JobSpec

log = logging.getLogger(__name__)

DEFAULT_ROWS = 256


def is_quantized(spec: JobSpec) -> bool:
    return spec.model.quantization != "none"


def sample(spec: JobSpec, shards: list[Shard], rows: int) -> pa.Table:
    """The job's deterministic sample of usable rows (lowest id hashes)."""
    from pipelines.runner import columns_of

    table = sample_rows(shards, columns_of(spec, shards), rows)
    if not table.num_rows:
        raise PipelineError(
            f"{spec.name or spec.output.path}: no usable input row to check fidelity on; check input.paths and "
            "input.text_column"
        )
    return table


def check(spec: JobSpec, shards: list[Shard], rows: int | None = None) -> Fidelity:
    """Measure fidelity in this process; raises PipelineError for a model that is not quantized."""
    if not is_quantized(spec):
        raise PipelineError(
            "model.quantization is none: there is nothing to compare; check a quantized model, "
            "e.g. --set model.quantization=int8"
        )
    from pipelines.inference.fidelity import measure

    return judge(spec, measure(spec, sample(spec, shards, rows or _rows(spec))))


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
    if not result.passed:
        raise PipelineError(below_bar(spec, result))
    log.info("fidelity: %s %.4f >= %s", result.measure, result.agreement, result.min_agreement)
    return result


def judge(spec: JobSpec, result: Fidelity) -> Fidelity:
    """The result with the spec's bar applied (``passed`` stays None without a bar)."""
    if spec.model.fidelity is None:
        return result
    bar = spec.model.fidelity.min_agreement
    return result.model_copy(update={"min_agreement": bar, "passed": result.agreement >= bar})


def below_bar(spec: JobSpec, result: Fidelity) -> str:
    return (
        f"quantization fidelity below the bar: {result.measure} {result.agreement:.2%} on {result.rows} sampled "
        f"rows, {spec.model.quantization} vs unquantized, under model.fidelity.min_agreement="
        f"{result.min_agreement}; nothing was written. Use a lighter quantization (int8, or none), or lower "
        "the bar if the difference is acceptable (`pipelines fidelity JOB.yaml` shows what changed)"
    )


def _rows(spec: JobSpec) -> int:
    return spec.model.fidelity.rows if spec.model.fidelity else DEFAULT_ROWS


def _measure_on_ray(spec: JobSpec, picked: pa.Table) -> Fidelity:
    import ray

    compute = spec.compute
    options: dict[str, Any] = {"num_cpus": compute.cpus_per_actor, "num_gpus": compute.gpus_per_actor}
    if compute.accelerator_type:
        options["accelerator_type"] = compute.accelerator_type
    if compute.resources:
        options["resources"] = dict(compute.resources)
    task = ray.remote(_measure_remote).options(max_retries=0, **options)
    return Fidelity.model_validate(ray.get(task.remote(spec.model_dump(mode="json"), picked)))


def _measure_remote(spec: dict[str, Any], picked: pa.Table) -> dict[str, Any]:
    from pipelines.inference.fidelity import measure

    return measure(JobSpec.model_validate(spec), picked).to_json()
