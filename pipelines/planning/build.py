"""A job's plan, section by section: input, tokens, model and fits, and (``measure``) timings.

Reads the input and loads the tokenizer and the model's config; loads weights
only to measure. Raises PipelineError for what would stop a run before it
starts (no input files, a model without a config); what a run would survive
(unreadable files, bad rows, actors that don't fit) is listed in ``problems``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.io.reader import group_shards
from pipelines.io.shards import list_shards
from pipelines.output.duplicates import repeated_custom_ids
from pipelines.output.staging import has_truth, mapped, truth_texts
from pipelines.output.summary import some_of
from pipelines.planning.hardware import Cluster, read_cluster, this_machine_cpus
from pipelines.planning.inputs import (
    COUNT_LIMIT,
    actor_batches,
    found_unreadable,
    pick_batches,
    read_batches,
    read_blocks,
    survey,
    unreadable_records,
)
from pipelines.planning.progress import kept_precision_refusal, output_plan, recorded_precision
from pipelines.planning.records import InputPlan, ModelPlan, OutputPlan, Plan, TokenPlan
from pipelines.runner import check_input_columns, columns_of
from pipelines.spec import CPU_QUANTIZATIONS, JobSpec

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 1000


def build_plan(
    spec: JobSpec,
    job: str,
    *,
    sample: int = DEFAULT_SAMPLE,
    measure: bool = False,
    cluster: str | Path | None = None,
    cpus: int | None = None,
    count_limit: int = COUNT_LIMIT,
) -> Plan:
    """Plan ``spec`` (read from ``job``) on ``sample`` rows spread over the input (all of a smaller input); see the
    module's docstring.

    ``cpus``: the CPUs of the Ray cluster the job runs on (default: this machine's, as a local run has);
    Ray Data cuts the input into more blocks the more CPUs it has, which changes the batches.
    """
    from pipelines.planning.memory import model_plan
    from pipelines.planning.tokens import load_task, token_plan

    nodes = read_cluster(cluster) if cluster else None
    context = load_task(spec)  # a model without a config stops the plan before the input is read
    # as a run lists them: for a scheduled job, as a tick does (an empty landing location is no input yet)
    shards = list_shards(spec.input.paths, spec.input.format, exclude=[spec.output.path],
                         empty_is_no_input=spec.schedule is not None)
    check_input_columns(spec, shards)  # as a run refuses a column no input file holds
    inputs = survey(shards, count_limit, spec.input.text_column)
    groups = group_shards([c.bytes for c in inputs.shards])  # the read tasks, as a run reads the shards
    rows = [sum(inputs.shards[i].read_rows() for i in group) for group in groups]  # an unreadable file: 1 record
    task_bytes = [sum(inputs.shards[i].bytes for i in group) for group in groups]
    blocks = read_blocks(rows, task_bytes, cpus or this_machine_cpus())
    batches = list(actor_batches(blocks, spec.batching.batch_size))
    picked = pick_batches(batches, rows, sample, spec.batching.batch_size)
    covers = sum(rows) <= sample and inputs.rows_exact
    columns = columns_of(spec, shards)
    tables = read_batches([[shards[i] for i in group] for group in groups], columns, picked)
    # a Parquet footer that reads over data that does not
    inputs = found_unreadable(inputs, shards, tables, spec.input.text_column)
    told = {s.key: c.rows for s, c in zip(shards, inputs.shards) if c.records is not None}
    partial = sum(rows) > sample  # a sample of part of the input: its unreadable files are counted, not scaled
    apart = unreadable_records(shards, inputs.shards, columns) if partial else None
    tokens = token_plan(context, spec, tables, inputs.rows, covers, told, apart)
    model = model_plan(spec, context, nodes)
    plan = Plan(
        job=job, name=spec.name, spec_hash=spec.fingerprint(), task=spec.task.type,
        input=inputs, tokens=tokens, model=model, output=output_plan(spec, shards, inputs),
    )
    recorded = recorded_precision(spec)  # what quantization auto keeps for the next run (None: not auto)
    if measure and inputs.rows:  # an input of no rows: nothing to time (the plan says there is nothing to run)
        from pipelines.planning.measure import estimates
        from pipelines.planning.measure import measure as run_sample

        plan.measurement = run_sample(spec, tables, shards, recorded)
        todo = plan.output.rows_todo if plan.output and plan.output.state in ("resume", "scheduled") else 0
        plan.estimates = estimates(spec, todo or inputs.rows, plan.measurement, model.fits, nodes)
    plan.problems = problems(spec, inputs, tokens, model, nodes, plan.output)
    unmatched = unmatched_truth(spec, tables, context.task, "input" if covers else f"sample of {sample:,} rows")
    if unmatched:
        plan.problems.append(unmatched)
    refused = kept_precision_refusal(spec, recorded, plan.output)
    if refused:  # a kept precision below a raised bar: the run stops before any work (fidelity.hold_bar)
        plan.problems.insert(0, f"a run now is refused: {refused}")
    return plan


def unmatched_truth(spec: JobSpec, tables: list[pa.Table], task: Any, where: str) -> str | None:
    """Where the job names a ground-truth column and no truth value in the sample (read as the run's agreement reads
    them, through ``input.label_map``) is a label the model gives: the run's agreement would be 0%, which says
    nothing of the model (class numbers against label names, names in another case). None where any one matches."""
    column = spec.input.label_column
    labels = getattr(task, "labels", None)
    if not column or not isinstance(labels, list) or spec.output.prediction_prefix + "label" not in (
            spec.prediction_columns()):
        return None
    present = [t.column(column) for t in tables if column in t.column_names and t.num_rows]
    truth = {value for array in present for value in mapped(truth_texts(array.filter(has_truth(array))),
                                                            spec.input.label_map) if value is not None}
    if not truth or truth & {str(label) for label in labels}:
        return None
    return (f"input.label_column {column!r}: no truth value in the {where} ({some_of(truth)}) is a label the model "
            f"gives ({some_of(str(label) for label in labels)}): a run's agreement would be 0%; where they name the "
            "same classes otherwise, map them to the model's labels with input.label_map")


def problems(
    spec: JobSpec, inputs: InputPlan, tokens: TokenPlan, model: ModelPlan, cluster: Cluster | None,
    output: OutputPlan | None = None,
) -> list[str]:
    """What would go wrong or be quarantined in a run, one line each."""
    outcome = {
        "fail": "a run fails on it and commits the other shards (errors.unreadable_files: fail)",
        "quarantine": "a run quarantines it, its rows as one record (errors.unreadable_files: quarantine), where it "
        "was read and does not parse, and fails on it where it could not be fetched",
    }[spec.errors.unreadable_files]
    found = [f"{c.uri}: {c.error} ({outcome})" for c in inputs.shards if c.error]
    if output is not None and output.state == "refused":
        found.insert(0, f"a run now is refused: {output.note}")
    if not inputs.shards:  # only a scheduled job's input may be empty: its landing locations have no file yet
        found.append("no input file yet in input.paths: a tick now would find nothing to score")
    where = "in the input" if tokens.covers_input else f"in the sample of {tokens.sample_rows:,} rows"
    for reason, count in tokens.quarantined.items():
        found.append(f"{count:,} row(s) {where} would be quarantined: {reason}")
    for reason, count in tokens.unreadable_quarantined.items():
        found.append(f"{count:,} row(s) of unreadable files in the input would be quarantined: {reason}")
    if tokens.repeated_ids:
        found.append(repeated_custom_ids(tokens.repeated_ids, f"{where} are asked more than once, and a run answers "
                                                              "each time"))
    if tokens.truncated_rows and spec.errors.too_long == "truncate":
        found.append(f"{tokens.truncated_rows:,} row(s) {where} are cut at max_length {tokens.max_length}")
    error_rate = sum(tokens.quarantined.values()) / tokens.sample_rows if tokens.sample_rows else 0.0
    if tokens.unreadable_quarantined and inputs.rows:  # the sample's rate over the readable rows, and the files'
        unreadable = sum(tokens.unreadable_quarantined.values())
        error_rate = (error_rate * (inputs.rows - unreadable) + unreadable) / inputs.rows
    if error_rate > spec.errors.max_rate:
        found.append(
            f"{error_rate:.1%} of rows {where} are quarantined, over errors.max_rate={spec.errors.max_rate}: "
            "the run would fail"
        )
    limit = spec.errors.max_count
    bad = sum(tokens.quarantined.values()) if tokens.covers_input else round(error_rate * inputs.rows)
    if limit is not None and bad > limit:  # the run counts its bad rows over the whole input (or its partition)
        counted = ("in the input are" if tokens.covers_input
                   else f"of the input are estimated from the sample of {tokens.sample_rows:,} rows to be")
        found.append(f"{bad:,} row(s) {counted} quarantined, over errors.max_count={limit}: the run would fail")
    low, _ = spec.compute.pool_bounds()
    local = model.fits[0]
    if spec.compute.gpus_per_actor == 0 and (local.actors or 0) < low:
        by = "resources" if spec.compute.resources or spec.compute.accelerator_type else "CPUs"
        found.append(
            f"this machine holds {local.actors} actor(s) of this job (by memory {local.by_memory}, by {by} "
            f"{local.by_resources}); the pool needs {low}: a local run would not start"
        )
    if spec.model.quantization in CPU_QUANTIZATIONS and model.fits[1:] and spec.model.device != "cpu":
        found.append(f"model.quantization {spec.model.quantization} is a CPU quantization: an actor on a GPU node type "
                     "refuses it (the GPU rows above size the model as if it ran there)")
    for fit in model.fits[1:]:
        if fit.actors == 0:
            found.append(f"node type {fit.target}: no actor of this job fits ({fit.basis})")
    if cluster is not None and not cluster.node_types:
        found.append(f"{cluster.path}: no node type with GPUs")
    return found
