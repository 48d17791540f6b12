"""``--measure``: the sample through one predictor here (no Ray), and wall times extrapolated from it.

The predictor is the job's own (:class:`~pipelines.inference.predictor.Predictor`),
called once per sampled batch as an actor is; only its device is set to the CPU
when this machine has no GPU. The estimates scale the measured rows/s linearly
with the number of actors and add a run's fixed cost, in parts: what can be
measured here (the actor's imports, in a fresh interpreter; the model load) and
the known costs of a run that can't be without Ray (:data:`KNOWN`).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from pipelines.io.block import ERROR
from pipelines.io.shards import Shard
from pipelines.output.staging import spent
from pipelines.planning.hardware import Cluster, this_machine_cpus
from pipelines.planning.records import Estimate, Fit, Measurement, Part
from pipelines.spec import JobSpec

log = logging.getLogger(__name__)

ACTOR_COUNTS = (1, 2, 4, 8)

#: The parts of a run's fixed cost a plan can't measure without starting Ray, in seconds, from the main job's runs
#: (`pipelines run jobs/label_news.yaml`, its decision kept) on a 2-core AMD EPYC with AVX-512 (Zen 4), nothing else
#: running, 2026-12-07 20:48-20:50, the medians of seven runs' ``_run.json`` ``timeline`` and the command's exit; the
#: actor's start is a trivial actor's under Ray Data on the same machine (from the execution's start to its
#: constructor, the median of five, right after). Name: (seconds, in a run's ``wall_s``, how it was got). On another
#: machine they are scaled by :data:`KNOWN_IMPORT_S` (see :func:`known_scale`).
KNOWN: dict[str, tuple[float, bool, str]] = {
    "driver start": (1.0, False, "imports, spec, the output's records and kept precision: timeline process_start to "
                     "run_start, plus ray_ready to execution_start (0.9-1.2 s in seven runs)"),
    "Ray start": (2.5, False, "a local Ray of the run's own: timeline connect_start to ray_ready (1.9-3.2 s in "
                  "seven runs; none where the run joins a Ray already running)"),
    "actor start": (2.1, True, "Ray Data's start until the pool's actor constructor runs (a trivial actor's: "
                    "1.9-2.3 s in five runs)"),
    "first block back": (0.5, True, "the first batch staged in the actor to its block at the driver: timeline "
                         "first_staged to first_block (0.5-0.6 s in seven runs)"),
    "summary and shut-down": (1.3, False, "the summary, the report page and Ray's stop: timeline summary to the "
                              "command's exit (1.3-1.4 s in seven runs)"),
}
#: The actor imports (:func:`import_time`) on the machine where :data:`KNOWN` was measured, right after: the median
#: of five (3.00-3.56 s, 20:50; at 12:40 the same day, the host faster, 2.91-3.00 s; the same imports without
#: :func:`~pipelines.inference.heavy_imports.import_predictor` took 4.0-4.3 s at 10:50 and 4.4-4.6 s at 12:41). Each
#: of those parts is Python and process start-up on the CPU, as the imports are.
KNOWN_IMPORT_S = 3.13
#: The factor :func:`known_scale` keeps to.
KNOWN_SCALE_RANGE = (0.25, 4.0)


def known_scale(import_s: float | None) -> float | None:
    """How much slower (above 1) or faster this machine runs what :data:`KNOWN` measured, by the actor imports timed
    here against :data:`KNOWN_IMPORT_S`; None where they were not timed (the parts are then taken as measured). On
    the 2-core AVX2-only AMD EPYC of the same week four of the known parts took 1.8x these (10.2 s against 5.6),
    where its imports had taken about 1.5x (6.3-6.8 s in a plain process, 2026-11-30, the README's, with collections,
    as the 4.23 s then taken for the reference here): scaled, they come out about a sixth short there, not nearly
    half. Kept within :data:`KNOWN_SCALE_RANGE`: a figure far outside says more about the timing than the machine."""
    if not import_s or import_s <= 0:
        return None
    low, high = KNOWN_SCALE_RANGE
    return round(min(max(import_s / KNOWN_IMPORT_S, low), high), 2)


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
        measured = _measure(here, batches)
    return measured.model_copy(update={"precision": precision, "import_s": import_time()})


#: What a run's actor imports before its model is loaded, as it imports them (:func:`~pipelines.inference.heavy_imports.
#: import_predictor`): the predictor (torch, Transformers) and Transformers' modeling_utils, which loading any model
#: imports (2.3 s of a fresh interpreter's 5.8 s on the 2-core AVX2 machine, with collections; this process imported
#: it already, so its model load here does not count it)
IMPORTS = "from pipelines.inference.heavy_imports import import_predictor; import_predictor()"


def import_time() -> float | None:
    """Seconds a fresh interpreter takes for :data:`IMPORTS`, as a run's actor imports them; None where it fails
    (the estimate then goes without that part)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("the predictor's import could not be timed in a fresh interpreter: %s", exc)
        return None
    return round(time.perf_counter() - start, 3)


def _measure(spec: JobSpec, batches: list[pa.Table]) -> Measurement:
    from pipelines.inference.heavy_imports import import_predictor

    Predictor = import_predictor()  # noqa: N806 - as a run's actor imports it, so that the load times as there
    import torch

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
        real, computed, _, _ = spent(out.filter(out.column(ERROR).is_null()))  # as a run counts: the answered rows
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


def parts(rows: int, measured: Measurement, actors: int, own_ray: bool) -> list[Part]:
    """A run's time as its command takes it: the rows at the measured pace, and the run's fixed cost (``own_ray``:
    the run starts a local Ray of its own, on this machine, so the known parts are scaled by its speed,
    :func:`known_scale`; a node type's are not: another machine). Empty where nothing was measured."""
    if measured.rows_per_s <= 0:
        return []

    scale = known_scale(measured.import_s) if own_ray else None

    def known(name: str) -> Part:
        seconds, in_wall, basis = KNOWN[name]
        if scale is not None:
            seconds = round(seconds * scale, 2)
            basis += f"; × {scale:g} here: the actor imports took {measured.import_s:.1f} s, there {KNOWN_IMPORT_S} s"
        return Part(name=name, seconds=seconds, how="known", in_run_wall=in_wall, basis=basis, scaled_by=scale)

    found = [known("driver start")] + ([known("Ray start")] if own_ray else []) + [known("actor start")]
    if measured.import_s is not None:
        found.append(Part(name="actor imports", seconds=measured.import_s, how="measured", in_run_wall=True,
                          basis="the predictor, torch and Transformers' modeling_utils, imported in a fresh "
                          "interpreter here"))
    found += [
        Part(name="model load", seconds=measured.load_s, how="measured", in_run_wall=True,
             basis="the predictor built here, in this process"),
        Part(name="rows", seconds=round(rows / (measured.rows_per_s * actors), 3), how="measured", in_run_wall=True,
             basis=f"{rows:,} rows at {measured.rows_per_s:g} rows/s of one actor here × {actors}"),
        known("first block back"),
        known("summary and shut-down"),
    ]
    return found


def wall_time(rows: int, measured: Measurement, actors: int, own_ray: bool = True) -> dict[str, Any]:
    """``wall_s`` (the command's whole time), ``run_wall_s`` (as a run's ``_run.json`` counts) and their ``parts``;
    the times None where nothing was measured."""
    found = parts(rows, measured, actors, own_ray)
    if not found:
        return {"wall_s": None, "run_wall_s": None, "parts": []}
    return {
        "wall_s": round(sum(p.seconds for p in found), 1),
        "run_wall_s": round(sum(p.seconds for p in found if p.in_run_wall), 1),
        "parts": found,
    }


def estimates(
    spec: JobSpec, rows: int, measured: Measurement, fits: list[Fit], cluster: Cluster | None
) -> list[Estimate]:
    """Wall time at the configured pool size here, and at 1, 2, 4, 8 actors on each GPU node type."""
    out = [_here(spec, rows, measured, fits[0] if fits else None)]
    basis = (
        f"{measured.rows_per_s:g} rows/s of one actor measured here ({measured.device}, {measured.threads} threads) "
        "× actors + a run's fixed cost (its Ray already running); the GPU was not measured"
    )
    limit = cluster.max_workers if cluster else None
    for fit in fits[1:]:
        for actors in ACTOR_COUNTS:
            nodes = math.ceil(actors / fit.actors) if fit.actors else None
            caps = [c for c in (fit.max_nodes, limit) if c is not None]
            possible = nodes is not None and all(nodes <= c for c in caps)
            out.append(
                Estimate(
                    where=fit.target, rows=rows, actors=actors, nodes=nodes, possible=possible, basis=basis,
                    **(wall_time(rows, measured, actors, own_ray=False) if possible else {"wall_s": None}),
                )
            )
    return out


def _here(spec: JobSpec, rows: int, measured: Measurement, fit: Fit | None = None) -> Estimate:
    """The configured pool on this machine; actors beyond its cores are not counted as faster. No wall time where
    fewer actors fit here (``fit``: this machine's, which counts no GPU) than the pool needs: a local run would not
    start; a GPU job measured on a GPU here is not judged by it."""
    low, pool = spec.compute.pool_bounds()
    gpu_here = spec.compute.gpus_per_actor > 0 and measured.device.startswith("cuda")
    if fit is not None and not gpu_here and (fit.actors or 0) < low:
        return Estimate(where="this machine", rows=rows, actors=pool, nodes=None, possible=False, wall_s=None,
                        basis=f"{fit.actors} actor(s) of this job fit here, the pool needs {low} ({fit.basis})")
    cpus = this_machine_cpus()
    useful = min(pool, max(1, cpus // max(1, measured.threads)))
    basis = f"{measured.rows_per_s:g} rows/s of one actor measured here × {useful} actor(s) + a run's fixed cost"
    if useful < pool:
        basis += f" (a pool of {pool} × {measured.threads} threads exceeds this machine's {cpus} CPUs)"
    return Estimate(
        where="this machine", rows=rows, actors=pool, nodes=None, possible=True,
        basis=basis + " (a local Ray of its own included)", **wall_time(rows, measured, useful),
    )
