"""``--measure``: the sample through one predictor here (no Ray), and wall times extrapolated from it.

The predictor is the job's own (:class:`~pipelines.inference.predictor.Predictor`),
called once per sampled batch as an actor is; only its device is set to the CPU
when this machine has no GPU. The estimates scale the measured rows/s linearly
with the number of actors and add one model load; Ray's start-up and scheduling
are not in them.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyarrow as pa

from pipelines.io.block import ERROR
from pipelines.io.shards import Shard
from pipelines.output.staging import spent
from pipelines.planning.hardware import Cluster, this_machine_cpus
from pipelines.planning.records import Estimate, Fit, Measurement
from pipelines.spec import JobSpec

log = logging.getLogger(__name__)

ACTOR_COUNTS = (1, 2, 4, 8)


def measure(
    spec: JobSpec, batches: list[pa.Table], shards: Sequence[Shard] = (), recorded: dict[str, str] | None = None
) -> Measurement:
    """Load the model once and predict the sampled batches; time both. ``quantization: auto`` is measured at the
    precision a run would take: ``recorded`` (what the output keeps), else the decision kept here for the job's
    fidelity sample of ``shards``, else float32."""
    import torch

    from pipelines.fidelity import concrete, planned_precision

    here = spec.model_copy(deep=True)
    if here.model.device != "cpu" and not torch.cuda.is_available():
        here.model.device = "cpu"
    precision = None
    if here.model.quantization == "auto":  # decided when a run starts: the decision kept here, else float32
        chosen, precision = planned_precision(spec, list(shards), recorded)  # under the spec's own device setting
        here = concrete(here, chosen)
    with quiet("bitsandbytes"):  # on CPU, bitsandbytes logs a warning for every int8 matmul
        return _measure(here, batches).model_copy(update={"precision": precision})


def _measure(spec: JobSpec, batches: list[pa.Table]) -> Measurement:
    import torch

    from pipelines.inference.predictor import Predictor

    start = time.perf_counter()
    predictor = Predictor(spec)
    load_s = time.perf_counter() - start
    rows = tokens = padded = 0
    predict_s = 0.0
    for batch in batches:
        start = time.perf_counter()
        out = predictor(batch)
        predict_s += time.perf_counter() - start
        rows += batch.num_rows
        real, computed, _ = spent(out.filter(out.column(ERROR).is_null()))  # as a run counts: the answered rows
        tokens, padded = tokens + real, padded + computed
    log.info("measured %d rows in %.2f s after a %.2f s model load", rows, predict_s, load_s)
    return Measurement(
        device=str(predictor.loaded.device),
        threads=torch.get_num_threads(),
        load_s=round(load_s, 3),
        rows=rows,
        predict_s=round(predict_s, 3),
        rows_per_s=round(rows / predict_s, 2) if predict_s > 0 else 0.0,
        tokens_per_s=round(tokens / predict_s, 1) if predict_s > 0 else 0.0,
        padding_efficiency=round(tokens / padded, 4) if padded else None,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


@contextmanager
def quiet(name: str) -> Iterator[None]:
    """Only errors from logger ``name`` while inside."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def wall_time(rows: int, measured: Measurement, actors: int) -> float | None:
    if measured.rows_per_s <= 0:
        return None
    return round(measured.load_s + rows / (measured.rows_per_s * actors), 1)


def estimates(
    spec: JobSpec, rows: int, measured: Measurement, fits: list[Fit], cluster: Cluster | None
) -> list[Estimate]:
    """Wall time at the configured pool size here, and at 1, 2, 4, 8 actors on each GPU node type."""
    out = [_here(spec, rows, measured, fits[0] if fits else None)]
    basis = (
        f"{measured.rows_per_s:g} rows/s of one actor measured here ({measured.device}, {measured.threads} threads) "
        "× actors + one model load; the GPU was not measured"
    )
    limit = cluster.max_workers if cluster else None
    for fit in fits[1:]:
        for actors in ACTOR_COUNTS:
            nodes = math.ceil(actors / fit.actors) if fit.actors else None
            caps = [c for c in (fit.max_nodes, limit) if c is not None]
            possible = nodes is not None and all(nodes <= c for c in caps)
            out.append(
                Estimate(
                    where=fit.target, rows=rows, actors=actors, nodes=nodes, possible=possible,
                    wall_s=wall_time(rows, measured, actors) if possible else None, basis=basis,
                )
            )
    return out


def _here(spec: JobSpec, rows: int, measured: Measurement, fit: Fit | None = None) -> Estimate:
    """The configured pool on this machine; actors beyond its cores are not counted as faster. No wall time where
    fewer actors fit here (``fit``: this machine's) than the pool needs: a local run would not start."""
    low, pool = spec.compute.pool_bounds()
    if fit is not None and (fit.actors or 0) < low:
        return Estimate(where="this machine", rows=rows, actors=pool, nodes=None, possible=False, wall_s=None,
                        basis=f"{fit.actors} actor(s) of this job fit here, the pool needs {low} ({fit.basis})")
    cpus = this_machine_cpus()
    useful = min(pool, max(1, cpus // max(1, measured.threads)))
    basis = f"{measured.rows_per_s:g} rows/s of one actor measured here × {useful} actor(s) + one model load"
    if useful < pool:
        basis += f" (a pool of {pool} × {measured.threads} threads exceeds this machine's {cpus} CPUs)"
    return Estimate(
        where="this machine", rows=rows, actors=pool, nodes=None, possible=True,
        wall_s=wall_time(rows, measured, useful), basis=basis + "; Ray start-up not included",
    )
