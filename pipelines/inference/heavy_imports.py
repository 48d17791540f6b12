"""The imports a process pays before its first model, made as a run's pool actor makes them: torch, Transformers
and this package's predictor, with Python's automatic collections of cyclic garbage held off while they run.

Light: it imports nothing heavy until :func:`import_predictor` is called (the driver and the read tasks never call
it; a pool actor, ``pipelines plan``'s timing of the actor's imports and the benchmarks do).
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.inference.predictor import Predictor

#: Whether this process has made the imports and set its objects aside (:func:`import_predictor`, once).
_set_aside = False


def import_predictor() -> type[Predictor]:
    """The :class:`~pipelines.inference.predictor.Predictor` class, its imports (and Transformers' ``modeling_utils``,
    which any model's load imports) made without automatic collections, and every object then in the process set
    aside for good (``gc.freeze``). An import makes thousands of long-lived objects, and each time those made since
    the last full collection came to a quarter of the rest, Python walked them all again: six full collections while
    torch, Transformers and a BERT model's code were imported, 0.6 s of 3.5 s on a 2-core Zen 4 (see the README's
    Performance). Set aside, the modules, classes and functions (never garbage while the process runs) are not walked
    again either by the collections after it, such as ``quantization: auto``'s check makes after each model. What
    it costs: the imports' own cyclic garbage, which no collection freed, is set aside with them (9,492 objects
    there: the process held 399 MiB after the imports against 391 MiB with collections; a collection before the
    freeze would have freed them for 0.35 s). Once per process: a later call imports nothing new, and sets nothing
    more aside (what the process made since, a model's garbage among it, is left to the collector)."""
    global _set_aside
    if _set_aside:
        from pipelines.inference.predictor import Predictor

        return Predictor
    enabled = gc.isenabled()
    gc.disable()
    try:
        import transformers.modeling_utils  # noqa: F401 - every model's load imports it

        from pipelines.inference.predictor import Predictor
    finally:
        gc.freeze()
        _set_aside = True
        if enabled:
            gc.enable()
    return Predictor
