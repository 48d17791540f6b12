"""Quantization fidelity: the same rows through the quantized model and through the same model unquantized.

:func:`measure` runs a sample through two :class:`~pipelines.inference.predictor.Predictor`
objects, one after the other (so only one model is in memory at a time): the job's
spec, and the same spec with ``model.quantization: none``. :func:`compare` then
judges the quantized predictions against the unquantized ones, with the measure that
fits the task:

============================  ==========================================  ==============
task                          measures                                    headline
============================  ==========================================  ==============
label tasks                   label agreement; accuracy of both against   label_agreement
                              ``input.label_column`` when it is set
  with one output (one label) score agreement (every score written       score_agreement
  or each label's own score   within 1% of the score range, or of their
  (multi-label, sigmoid)      size where they all tie; the label the
                              same), rank agreement (pairs ordered
                              alike); label agreement
feature-extraction            cosine of the embeddings: mean, p5, min     cosine_mean
generation tasks              exact match, token agreement                exact_match
question-answering            span agreement, answer agreement            span_agreement
token-classification          entity F1 (precision, recall)               entity_f1
fill-mask                     top-1 agreement per mask                    top1_agreement
============================  ==========================================  ==============

Every measure is in [0, 1]. Rows the unquantized model could not predict are left
out; a row only the quantized model failed on counts against it. A prediction that
holds a NaN or infinite number (float16 overflow) is a failure. Runs in any
process (no Ray here); :mod:`pipelines.fidelity` decides where.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.errors import PipelineError
from pipelines.inference.predictor import Predictor, not_finite_rows
from pipelines.io.block import ERROR
from pipelines.output.records import Fidelity, cut, precision_label
from pipelines.output.staging import has_truth, mapped, truth_text, truth_texts
from pipelines.spec import JobSpec
from pipelines.tasks.base import LabelTask
from pipelines.tasks.options import (
    FeatureExtractionOptions,
    FillMaskOptions,
    GenerationOptions,
    LabelOptions,
    QuestionAnsweringOptions,
    TaskOptions,
    TokenClassificationOptions,
)

log = logging.getLogger(__name__)

EXAMPLES = 5  # disagreements kept in the result, to show what changed
PREVIEW = 120


def reference_spec(spec: JobSpec) -> JobSpec:
    """The same job with the model unquantized, in float32: what reduced precision is judged against."""
    copy = spec.model_copy(deep=True)
    copy.model.quantization = "none"
    copy.model.dtype = "float32"
    return copy


@dataclass
class Predictions:
    """One model's predictions on the sample: the output columns (unprefixed) and which rows it predicted."""

    columns: dict[str, list[Any]]
    ok: np.ndarray
    tokenizer: Any
    seconds: float = 0.0  # the fastest of the sample's timed calls, after an untimed one (warm_up_rows; load left out)
    dtype: str = ""  # what the model computed in (``float32``, ``bfloat16``...)
    labels: int | None = None  # a label task's: how many labels it picks among (one: its scores tell, not its label)
    independent: bool = False  # a label task's scores are each label's own (sigmoid, raw, one output): they tell
    device: str = "cpu"  # where the model computed (``cpu``, ``cuda``)
    passes: int = 1  # timed calls over the sample
    part_seconds: list[float] = field(default_factory=list)  # the first timed pass: its seconds after each call


#: Rows of a first, untimed call before the sample's on a CPU: a predictor's first forwards allocate.
WARM_UP_ROWS = 8
#: Timed passes over the sample of a candidate precision that reaches the bar; the fastest counts. One pass of about a
#: second in a Ray task on 2 cores moved by a third from one decision to the next (the main job: float32 0.81 s,
#: smooth-int8 0.92 s in one; 1.16 s and 0.92 s in another), which a precision 1.15x faster than float32 doesn't
#: outrun. A candidate below the bar is not taken whatever its speed: its one pass (its labels) is enough, and on a
#: CPU it stops where it can no longer reach the bar (:class:`BelowBar`). Nor is one within the bar timed again where
#: a lower time can't change the decision (:func:`measure_against`): on the main job's first run on a 2-core Zen 4,
#: bfloat16's second pass (about 0.8 s of a 5 s check) where its first was 1.5x ahead of float32's or more and
#: smooth-int8 was passed over given it.
TIMED_PASSES = 2
#: On a CPU float32 (the reference, one pass: its labels and a first time) is loaded and timed again only where the
#: fastest candidate within the bar took less than its time and at least 1 / CLOSE of it: elsewhere one slow pass of
#: float32 can't change the decision (the largest move of one pass seen, 0.81 to 1.16 s, is 1.43x), and a pass of a
#: CPU job's model over the sample costs about as much as its load (MiniLM: 1.4 s and 1.5 s) or more. On a GPU, where
#: a pass is a small part of a load (an H200: MiniLM's pass 0.07 s), float32 is timed again while it is loaded.
CLOSE = 1.5
#: A candidate whose first timed pass on a CPU has taken more than this many times float32's first pass is stopped at
#: the end of a part (:func:`parts`), unfinished and not taken: the largest move of one pass seen is 1.43x (see
#: TIMED_PASSES), so it can't be the faster. On a CPU with AVX2
#: and no AVX-512, torch's int8 product (``torch._int_mm``) runs about 60x slower than float32's (a 512 x 384 by
#: 384 x 1,536 product: 277 ms against 4.6 ms on a 2-core AMD EPYC, Zen 3): the main job's check scored
#: per-token-int8 for 109 s and smooth-int8 for 150 s there, where float32 took 7.4 s.
SLOWER = CLOSE
#: A candidate is stopped as below the bar (:class:`BelowBar`) where the most agreement it can still reach is under
#: the bar by more than this: rows predicted exactly as float32 did measure as such to within float64's rounding
#: (the cosine of an embedding with itself), never to more.
BEST_CASE_SLACK = 1e-9
#: A candidate stopped below the bar is read at float32's pace (:attr:`Stopped.estimate_s`) only where its pass got
#: through at least this share of the sample: the first calls, of 8 and 16 rows, take tens of milliseconds each, too
#: few to scale up to the whole pass.
PACED_SHARE = 0.25


def warm_up_rows(device: str, rows: int) -> int:
    """Rows of the untimed call before the sample's timed one, for a model loaded on ``device`` (``cpu``, ``cuda``):
    a few on a CPU; the whole sample on a GPU, whose first pass over new shapes loads kernels and picks matmul
    algorithms. On an H200, after 8 rows, bfloat16's timed pass took 0.87 s and float32's 0.07 s, where bfloat16 runs
    1.5x float32 warm (``benchmarks/gpu_check.py``, parts ``auto`` and ``precisions``): ``quantization: auto`` kept
    float32. By where the model loaded, not the spec's device: a GPU job's candidates load on the CPU where no GPU is
    visible."""
    return rows if device == "cuda" else WARM_UP_ROWS


def predict(
    spec: JobSpec,
    sample: pa.Table,
    timed: bool = True,
    again: Callable[[Predictions], bool] | None = None,
    in_parts: bool = False,
    budget_s: float | None = None,
    best_case: Callable[[Predictions], Fidelity | None] | None = None,
) -> Predictions:
    """The sample through a Predictor built for ``spec``, after an untimed call (``timed``: :func:`warm_up_rows`, so
    that the sample's call times the precision; else a few rows: a comparison of labels alone needs no more), and the
    model released afterwards. The first pass over the sample gives the predictions (and, timed, their seconds);
    where ``again`` says so of them, :data:`TIMED_PASSES` - 1 more passes time it again and the fastest counts.
    ``in_parts``: the first pass on a CPU is made in :func:`parts`; with ``budget_s`` a first pass that takes longer
    is stopped after the part that passed it, and :class:`Slower` raised; with ``best_case``, after each part but the
    last, given the predictions so far: the comparison at its best whatever the rest of the sample, where it is below
    the bar (None: it can reach it), and :class:`BelowBar` raised with it."""
    predictor = Predictor(spec)
    loaded_on = predictor.loaded.device.type
    predictor(sample.slice(0, warm_up_rows(loaded_on, sample.num_rows) if timed else WARM_UP_ROWS))
    # in parts on a CPU, float32's as a candidate's (on a GPU a part's new shapes would be timed with their kernels'
    # load): each part a call, as long as the parts before it together
    first = parts(sample.num_rows) if in_parts and loaded_on == "cpu" else [sample.num_rows]
    stopped: list[Stopped] = []

    def stop(tables: list[pa.Table], seconds: float, predictor: Predictor = predictor) -> bool:
        done = sum(table.num_rows for table in tables)
        if done == sample.num_rows:
            return False
        if budget_s is not None and seconds > budget_s:
            stopped.append(Slower(seconds, done, sample.num_rows))
        elif best_case is not None:
            best = best_case(_predictions(predictor, pa.concat_tables(tables), spec))
            if best is not None:
                stopped.append(BelowBar(seconds, done, sample.num_rows, best.agreement, best.measure))
        return bool(stopped)

    tables, part_seconds = _timed_pass(predictor, sample, first, stop)
    if stopped:
        del predictor, tables, stop  # the model freed before the next loads (stop holds it too)
        _free(loaded_on)
        raise stopped[0]
    predicted = _predictions(predictor, pa.concat_tables(tables), spec)
    predicted.seconds, predicted.part_seconds = part_seconds[-1], part_seconds
    if timed and again is not None and again(predicted):
        for _ in range(TIMED_PASSES - 1):
            predicted.seconds = min(predicted.seconds, _timed_pass(predictor, sample, [sample.num_rows])[1][-1])
            predicted.passes += 1
    del predictor, tables, stop
    _free(loaded_on)
    return predicted


def _predictions(predictor: Predictor, table: pa.Table, spec: JobSpec) -> Predictions:
    """What ``predictor`` predicted in ``table`` (its output for rows of the sample), untimed."""
    prefix = spec.output.prediction_prefix
    columns = {name: table.column(prefix + name).to_pylist() for name in spec.task.output_names()}
    ok = table.column(ERROR).is_null().to_numpy(zero_copy_only=False)
    dtype = str(predictor.loaded.dtype).removeprefix("torch.")
    labels = len(predictor.task.labels) if isinstance(predictor.task, LabelTask) else None
    independent = isinstance(predictor.task, LabelTask) and predictor.task.independent_scores()
    return Predictions(columns, ok, predictor.loaded.tokenizer, 0.0, dtype, labels, independent,
                       predictor.loaded.device.type)


class Stopped(Exception):
    """A first timed pass stopped before the end of the sample, where it had taken ``seconds`` for ``rows`` of the
    sample's ``of``; ``reference_s``: float32's pass (:func:`measure_against` sets it); ``slower``: stopped as slower
    than float32, which it then can't outrun; ``estimate_s``: its whole pass at float32's pace, where known;
    ``measure``: the comparison's headline measure, where its labels were compared."""

    slower = False

    def __init__(self, seconds: float, rows: int, of: int) -> None:
        super().__init__(f"{seconds:.2f} s for {rows} of {of} rows")
        self.seconds, self.rows, self.of = seconds, rows, of
        self.reference_s: float | None = None
        self.estimate_s: float | None = None
        self.measure: str | None = None

    def said(self) -> str:
        """Why it was stopped, in words."""
        raise NotImplementedError


class Slower(Stopped):
    """Stopped over its budget: slower than float32 (:data:`SLOWER`)."""

    slower = True

    def said(self) -> str:
        return "slower than float32"


class BelowBar(Stopped):
    """Stopped where it could no longer reach the bar: ``best``, its headline ``measure`` had every row left been
    predicted as float32 predicted it, is below it; ``estimate_s``, its whole pass at the pace of float32's pass over
    the same calls (:func:`measure_against` sets it where the pass got far enough), for a comparison of its speed."""

    def __init__(self, seconds: float, rows: int, of: int, best: float, measure: str) -> None:
        super().__init__(seconds, rows, of)
        self.best, self.measure = best, measure

    def said(self) -> str:
        return f"below the bar whatever the rest: at most {cut(self.best)}"


def parts(rows: int) -> list[int]:
    """The sizes of a first timed pass's calls over a sample of ``rows`` on a CPU: :data:`WARM_UP_ROWS` rows, then
    each part as many rows as those before it (8, 8, 16, 32, 64, 128 for 256), so that a candidate that is many times
    slower than float32 (:data:`SLOWER`) is stopped, in a few calls, within twice its budget (or at the end of its
    first part, where that one alone takes longer)."""
    sizes: list[int] = []
    while sum(sizes) < rows:
        sizes.append(min(max(sum(sizes), WARM_UP_ROWS), rows - sum(sizes)))
    return sizes or [0]


def _timed_pass(
    predictor: Predictor, sample: pa.Table, sizes: list[int],
    stop: Callable[[list[pa.Table], float], bool] | None = None,
) -> tuple[list[pa.Table], list[float]]:
    """``sample`` through ``predictor`` in calls of ``sizes`` rows, and the seconds they had taken together after each
    call; with ``stop`` (given the tables so far and their seconds), the calls until the one after which it says so."""
    tables: list[pa.Table] = []
    seconds: list[float] = []
    start = 0
    for size in sizes:
        begun = time.perf_counter()
        tables.append(predictor(sample.slice(start, size)))
        seconds.append((seconds[-1] if seconds else 0.0) + time.perf_counter() - begun)
        start += size
        if stop is not None and stop(tables, seconds[-1]):
            break
    return tables, seconds


def _free(device: str) -> None:
    gc.collect()  # a model's reference cycles: within only_new_objects_collected, a collection of what it made
    if device == "cuda":
        torch.cuda.empty_cache()


def _precision(spec: JobSpec, predicted: Predictions) -> str:
    """What was compared with float32, in one word: the quantization, else the dtype the model computed in."""
    return precision_label({"quantization": spec.model.quantization, "dtype": predicted.dtype or spec.model.dtype})


@contextlib.contextmanager
def only_new_objects_collected() -> Iterator[None]:
    """Within it, a collection of cyclic garbage (:func:`_free`'s after each model, Python's own) looks at the objects
    made inside it only: those made before (``gc.freeze``) are set aside until it ends. Once torch and Transformers
    are imported a process holds about 400,000 objects, and each full collection walked them all: 0.22 s, four
    times in the main job's ``quantization: auto`` check on a 2-core Zen 4 (0.9 s of 7.5 s), for no garbage among
    them. Where objects are set aside already (a caller's own freeze), it leaves them so. Not for two threads at once
    (the freeze is the process's): a check runs on one thread, in an actor on its model thread."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@only_new_objects_collected()
def measure(spec: JobSpec, sample: pa.Table) -> Fidelity:
    """Score ``sample`` quantized and unquantized, and compare (see the module's docstring)."""
    start = time.monotonic()
    quantized = predict(spec, sample, timed=False)  # labels compared, no time: see predict
    if spec.model.quantization == "none" and quantized.dtype == "float32":
        raise PipelineError(
            f"model.dtype {spec.model.dtype}: the model loaded in float32 here (no GPU visible), so there is nothing "
            "to compare with float32; check it where the actors get a GPU (model.fidelity in the spec checks it "
            "before a run, on an actor's resources), or set model.dtype bfloat16 or float16"
        )
    reference = predict(reference_spec(spec), sample, timed=False)
    truth = _truth(spec, sample)
    ids = sample.column(spec.input.id_column or "id").to_pylist()
    result = compare(spec.task, quantized, reference, ids, truth)
    result.quantization = _precision(spec, quantized)
    result.wall_s = round(time.monotonic() - start, 3)
    return result


@only_new_objects_collected()
def measure_against(
    reference: JobSpec,
    candidates: list[JobSpec],
    sample: pa.Table,
    bar: float,
    needless: Callable[[JobSpec, list[tuple[JobSpec, Fidelity]], list[tuple[JobSpec, Stopped]], float], bool]
    | None = None,
) -> tuple[list[tuple[JobSpec, Fidelity]], list[tuple[JobSpec, Stopped]]]:
    """Score the sample once with ``reference``, then with each candidate in turn: each candidate's comparison,
    with the seconds it and the reference took on the sample (``predict_s``, ``reference_predict_s``); and the
    candidates stopped before the end of their first pass, with how far they got and why (:class:`Stopped`).

    What the decision needs and no more: a candidate is timed again (:data:`TIMED_PASSES`) only where it reaches
    ``bar`` and a second pass, which can only lower its time, may change the decision: not where its first is ahead
    of the reference's by :data:`CLOSE` or more, faster than every candidate within the bar so far, and every
    candidate after it is ``needless`` given it (asked ahead, with the first pass as the result. The decision is then
    the one a second pass would have given, provided ``needless`` passes over no fewer candidates where a time
    within the bar is lower, as :func:`pipelines.fidelity.outrun` does); the reference, on a GPU timed again while
    loaded, is on a CPU loaded and timed again only where the fastest candidate within the bar is faster than it,
    by less than :data:`CLOSE`; a candidate whose first pass (in :func:`parts` on a CPU, as float32's) takes more
    than :data:`SLOWER` times float32's is stopped (:class:`Slower`), and so is one whose predictions so far leave
    it below ``bar`` whatever it predicts for the rest (:class:`BelowBar`: the rest counted as agreeing with float32
    on every row); a candidate that
    ``needless(candidate, results so far, candidates stopped so far, the reference's seconds)`` says can't win is not
    scored (in neither list). A sample the reference predicts none of is refused after its pass (:func:`judgeable`)."""
    truth = _truth(reference, sample)
    ids = sample.column(reference.input.id_column or "id").to_pylist()
    base = predict(reference, sample, again=lambda predicted: predicted.device == "cuda", in_parts=True)
    judgeable(base)  # refused here, not only by a candidate's comparison: a candidate stopped as slower makes none
    done_rows = list(itertools.accumulate(parts(sample.num_rows)))  # after each call of a first pass in parts
    results: list[tuple[JobSpec, Fidelity]] = []
    stopped: list[tuple[JobSpec, Stopped]] = []

    def one_pass_decides(candidate: JobSpec, first: Fidelity, seconds: float, later: list[JobSpec]) -> bool:
        """Whether ``candidate``, within the bar, is taken whatever a second pass gives (which can only lower its
        time), its first pass (``first``, its comparison) having taken ``seconds``: ahead of float32's by
        :data:`CLOSE` or more (float32 is then not loaded again on a CPU, its two calls on a GPU made already, and
        can't win), faster than every candidate within the bar so far, and every candidate after it (``later``)
        passed over by ``needless`` given it."""
        if CLOSE * seconds > base.seconds:
            return False
        if any(r.agreement >= bar and r.predict_s is not None and r.predict_s <= seconds for _, r in results):
            return False
        done = [*results, (candidate, first)]
        return all(needless is not None and needless(spec, done, stopped, base.seconds) for spec in later)

    for index, candidate in enumerate(candidates):
        if needless is not None and needless(candidate, results, stopped, base.seconds):
            continue
        start = time.monotonic()
        judged: list[Fidelity] = []  # compared after the first pass, which decides whether to time it again

        def within_bar(predicted: Predictions) -> bool:  # called by predict, within this iteration
            judged.append(compare(candidate.task, predicted, base, ids, truth))
            if judged[0].agreement < bar:
                return False
            seconds = round(predicted.seconds, 4)  # as results hold it
            first = judged[0].model_copy(update={"quantization": _precision(candidate, predicted),
                                                 "predict_s": seconds})
            return not one_pass_decides(candidate, first, seconds, candidates[index + 1:])

        def best_case(so_far: Predictions) -> Fidelity | None:  # called by predict, within this iteration
            rows = len(so_far.ok)
            rest = replace(so_far, columns={name: values + base.columns[name][rows:]
                                            for name, values in so_far.columns.items()},
                           ok=np.concatenate([so_far.ok, base.ok[rows:]]))
            best = compare(candidate.task, rest, base, ids, truth)
            return best if best.agreement < bar - BEST_CASE_SLACK else None

        try:
            predicted = predict(candidate, sample, again=within_bar, in_parts=True, budget_s=SLOWER * base.seconds,
                                best_case=best_case)
        except Stopped as how:
            if (isinstance(how, BelowBar) and how.rows >= PACED_SHARE * how.of and how.rows in done_rows
                    and len(base.part_seconds) == len(done_rows)):
                float32_then = base.part_seconds[done_rows.index(how.rows)]
                how.estimate_s = round(how.seconds * base.part_seconds[-1] / float32_then, 4) if float32_then else None
            stopped.append((candidate, how.with_traceback(None)))  # kept without the frames it was raised through
            continue
        result = judged[0]
        result.quantization = _precision(candidate, predicted)
        result.reference = "float32"
        result.wall_s = round(time.monotonic() - start, 3)
        result.predict_s = round(predicted.seconds, 4)
        results.append((candidate, result))
    fastest = min((r.predict_s or 0 for _, r in results if r.agreement >= bar), default=None)
    close = fastest is not None and fastest < base.seconds < CLOSE * fastest  # float32 ahead already: it is taken
    if close and base.passes < TIMED_PASSES:
        base.seconds = min(base.seconds, predict(reference, sample).seconds)  # the fastest of two calls, as the rest
    for _, result in results:
        result.reference_predict_s = round(base.seconds, 4)
    for _, stop in stopped:
        stop.reference_s = round(base.seconds, 4)
    return results, stopped


def compare(
    options: TaskOptions, quantized: Predictions, reference: Predictions, ids: list[Any], truth: list[Any] | None = None
) -> Fidelity:
    """Judge ``quantized`` against ``reference`` with the measures of the task (``options``).

    A row whose prediction holds a NaN or infinite number (a score, an embedding: activations that overflowed float16)
    was predicted by nothing, whatever label the argmax of its NaN logits names: it counts as a row that side failed
    on (the quantized side's: a disagreement; the reference's: left out)."""
    quantized = replace(quantized, ok=quantized.ok & _finite_rows(quantized))
    reference = replace(reference, ok=reference.ok & _finite_rows(reference))
    judged = judgeable(reference)
    view = Pair(quantized, reference, judged, [str(ids[i]) for i in judged])
    name, metrics, examples = _comparer(options)(view, options, truth)
    return Fidelity(
        task=options.type,
        quantization="",
        rows=len(judged),
        measure=name,
        agreement=metrics[name],
        metrics={key: _six(value) for key, value in metrics.items()},
        failed_quantized=int(np.sum(reference.ok & ~quantized.ok)),
        failed_reference=int(np.sum(~reference.ok)),
        examples=examples,
    )


def judgeable(reference: Predictions) -> np.ndarray:
    """The rows the unquantized model predicted (no NaN or infinite number in their prediction), the ones a
    comparison judges; none is refused, as there is nothing to judge a quantized model by."""
    judged = np.flatnonzero(reference.ok & _finite_rows(reference))
    if not len(judged):
        raise PipelineError(
            f"none of the {len(reference.ok)} sampled rows could be predicted by the unquantized model, so there is "
            "nothing to compare the quantized one with; see why they fail (a run quarantines them with their reasons: "
            "e.g. errors.too_long: error with texts over batching.max_length; or the model computed NaN or infinite "
            "scores in float32) and fix the rows or the spec"
        )
    return judged


def _six(value: float) -> float:
    """A measure kept to six decimals, cut rather than rounded (:func:`~pipelines.output.records.cut`): a measure a
    hair under a bar (0.98999996) is never kept, nor shown, as the bar."""
    return float(cut(float(value), 6))


def _finite_rows(predicted: Predictions) -> np.ndarray:
    """Per row: no number of its prediction (scores, embeddings, nested ones included) is NaN or infinite. A run's
    predictor quarantines such rows already (``not_finite_rows``); this holds for predictions given any other way."""
    found = np.zeros(len(predicted.ok), dtype=bool)
    for values in predicted.columns.values():
        found |= not_finite_rows(pa.array(values))
    return ~found


@dataclass
class Pair:
    """The rows both sides are judged on: quantized values (None where it failed) beside reference values."""

    quantized: Predictions
    reference: Predictions
    rows: np.ndarray
    ids: list[str]

    def failed(self) -> list[bool]:
        """Per judged row: only the quantized model failed on it (a disagreement, whatever the reference found)."""
        return [not self.quantized.ok[i] for i in self.rows]

    def values(self, column: str) -> tuple[list[Any], list[Any]]:
        q = [self.quantized.columns[column][i] if self.quantized.ok[i] else None for i in self.rows]
        r = [self.reference.columns[column][i] for i in self.rows]
        return q, r


Comparer = Callable[[Pair, Any, "list[Any] | None"], tuple[str, dict[str, float], list[dict[str, Any]]]]


def _comparer(options: TaskOptions) -> Comparer:
    kinds: list[tuple[type, Comparer]] = [
        (LabelOptions, compare_labels),
        (FeatureExtractionOptions, compare_embeddings),
        (GenerationOptions, compare_generations),
        (QuestionAnsweringOptions, compare_spans),
        (TokenClassificationOptions, compare_entities),
        (FillMaskOptions, compare_masks),
    ]
    for kind, comparer in kinds:
        if isinstance(options, kind):
            return comparer
    raise NotImplementedError(f"no fidelity measure for task {options.type}")


def _mean(values: Sequence[float] | np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


def _truth(spec: JobSpec, sample: pa.Table) -> list[Any] | None:
    """The sample's truth labels as the run's agreement reads them: as text, mapped by ``input.label_map``."""
    column = spec.input.label_column
    if not column or column not in sample.column_names:
        return None
    return mapped(_as_text(sample.column(column).to_pylist()), spec.input.label_map)


def _examples(pair: Pair, q: list[Any], r: list[Any], same: list[bool]) -> list[dict[str, Any]]:
    picked = [i for i, agree in enumerate(same) if not agree][:EXAMPLES]
    return [{"id": pair.ids[i], "quantized": _short(q[i]), "reference": _short(r[i])} for i in picked]


# the measures of each kind of task -------------------------------------------------------------


def _as_text(values: list[Any]) -> list[str | None]:
    """Truth labels as a run's agreement reads them (Arrow's cast to text, :mod:`pipelines.output.staging`): a float
    1.0 is "1", True is "true", not Python's "1.0" and "True"; NaN is no label, as None is."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):  # values of no one Arrow type
        return [truth_text(value) for value in values]
    return [text if known else None for text, known in zip(truth_texts(array), has_truth(array).to_pylist())]


def compare_labels(pair: Pair, options: LabelOptions, truth: list[Any] | None):
    if pair.reference.labels == 1:
        return compare_scores(pair)
    q, r = pair.values("label")
    same = [a == b and not failed for a, b, failed in zip(q, r, pair.failed())]
    metrics = {"label_agreement": _mean(same)}
    gold = _as_text([truth[i] for i in pair.rows]) if truth is not None else []
    known = [i for i, g in enumerate(gold) if g is not None]
    if known:  # none of the sample's rows with a truth label: no accuracy measured (not 0)
        metrics["truth_accuracy_quantized"] = _mean([str(q[i]) == str(gold[i]) for i in known])
        metrics["truth_accuracy_reference"] = _mean([str(r[i]) == str(gold[i]) for i in known])
    if pair.reference.independent:  # each label's score is its own: the user thresholds them, not the top label
        name, scored, examples = compare_scores(pair, same)
        return name, {**scored, **metrics}, examples
    return "label_agreement", metrics, _examples(pair, q, r, same)


#: A row's scores agree when each moved by at most this share of the range of the sample's reference scores.
SCORE_TOLERANCE = 0.01


def compare_scores(pair: Pair, same_label: list[bool] | None = None):
    """A model whose label scores are each the label's own, not shares of one distribution (a regression head, a
    sigmoid per label as a multi-label model's, zero-shot with multi_label or one candidate label), says what it
    says in its scores, which a user thresholds (label by label) or ranks by; with one output its label is the same
    on every row. Judged on the scores the run writes: every label's (``scores``, with return_all_scores), else the
    label's own (``score``). Headline: the share of rows whose label is the same (``same_label``; one output: always)
    and none of whose scores moved by more than 1% of the range of the unquantized scores over the sample (of their
    size where they all tie: :func:`_score_scale`); also the share of pairs of rows the two models order alike, label
    by label (both tied counts as alike). A row only the quantized model failed on agrees in neither. The rows whose
    scores moved most are the examples, each with the label that moved most."""
    column = "scores" if "scores" in pair.reference.columns else "score"
    q, r = pair.values(column)
    failed = np.array(pair.failed(), dtype=bool)
    names = list(r[0]) if column == "scores" and r else []

    def matrix(values: list[Any]) -> np.ndarray:
        width = max(len(names), 1)
        rows = [[np.nan] * width if v is None else [v[n] for n in names] if names else [v] for v in values]
        return np.array(rows, dtype=np.float64).reshape(len(values), width)

    x, y = matrix(q), matrix(r)
    changed = failed if same_label is None else failed | ~np.array(same_label, dtype=bool)
    deltas = np.abs(x - y)
    moved = np.where(changed, np.inf, np.nan_to_num(deltas.max(axis=1), nan=np.inf))
    tolerance = SCORE_TOLERANCE * _score_scale(y)
    n, k = y.shape
    alike = pairs = 0
    for i in range(n - 1):  # one row against the later ones at a time: memory in rows, not in pairs
        same = np.sign(x[i + 1:] - x[i]) == np.sign(y[i + 1:] - y[i])
        alike += int(np.sum(same & ~failed[i + 1:, None] & ~failed[i]))
        pairs += (n - 1 - i) * k
    metrics = {
        "score_agreement": _mean(moved <= tolerance),
        "rank_agreement": alike / pairs if pairs else float(not failed.any()),
    }
    order = [int(i) for i in np.argsort(-moved, kind="stable")[:EXAMPLES] if moved[i] > tolerance]
    examples = [{"id": pair.ids[i], **_moved_most(pair, names, q[i], r[i], i)} for i in order]
    return "score_agreement", metrics, examples


#: Scores whose spread over the sample is under this share of their size all tie (float32's noise between batches).
TIED = 1e-5


def _score_scale(scores: np.ndarray) -> float:
    """What a score's move is measured against: the spread of the unquantized scores over the sample; where they all
    tie (one sampled row, rows of one text: a spread of 0, or float32's noise), their size (the largest absolute
    score), since 1% of no spread would call every move, however small, a change."""
    if not scores.size:
        return 0.0
    spread, size = float(scores.max() - scores.min()), float(np.abs(scores).max())
    return spread if spread > TIED * size else size


def _moved_most(pair: Pair, names: list[str], q: Any, r: Any, row: int) -> dict[str, str]:
    """The example of judged row ``row``: a one-output model's two scores; with every label's scores (``names``),
    the label whose score moved most (the reference's top label where the quantized model failed); with the label's
    own score, each side's label and score."""
    if names:
        name = max(names, key=lambda n: r[n] if q is None else abs(q[n] - r[n]))  # failed: the reference's top
        return {"quantized": "None" if q is None else f"{name} {q[name]:.4f}", "reference": f"{name} {r[name]:.4f}"}
    if pair.reference.labels == 1:
        return {"quantized": _short(q), "reference": _short(r)}
    ql, rl = pair.values("label")
    return {"quantized": "None" if q is None else f"{ql[row]} {q:.4f}", "reference": f"{rl[row]} {r:.4f}"}


def compare_embeddings(pair: Pair, options: FeatureExtractionOptions, truth: list[Any] | None):
    q, r = pair.values("embedding")
    cosines = np.array([_cosine(a, b) for a, b in zip(q, r)], dtype=np.float64)
    metrics = {
        "cosine_mean": _mean(cosines),
        "cosine_p5": float(np.percentile(cosines, 5)) if len(cosines) else 0.0,
        "cosine_min": float(cosines.min()) if len(cosines) else 0.0,
    }
    lowest = np.argsort(cosines, kind="stable")[:EXAMPLES]
    examples = [{"id": pair.ids[i], "cosine": _six(cosines[i])} for i in lowest]
    return "cosine_mean", metrics, examples


def _cosine(a: list[float] | None, b: list[float]) -> float:
    if a is None:
        return 0.0
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm else float(np.array_equal(x, y))


def compare_generations(pair: Pair, options: GenerationOptions, truth: list[Any] | None):
    q, r = pair.values(options.text_output)
    same = [a == b and not failed for a, b, failed in zip(q, r, pair.failed())]
    tokenizer = pair.reference.tokenizer
    shares = [_token_agreement(tokenizer, a, b) for a, b in zip(q, r)]
    metrics = {"exact_match": _mean(same), "token_agreement": _mean(shares)}
    return "exact_match", metrics, _examples(pair, q, r, same)


def _token_agreement(tokenizer: Any, a: str | list[str] | None, b: str | list[str]) -> float:
    """The share of tokens generated alike before the two texts part (mean over sequences of a row)."""
    if a is None:
        return 0.0
    if isinstance(b, list):
        return _mean([_token_agreement(tokenizer, x, y) for x, y in zip(a, b)])
    x = tokenizer(a, add_special_tokens=False)["input_ids"]
    y = tokenizer(b, add_special_tokens=False)["input_ids"]
    longest = max(len(x), len(y))
    if not longest:
        return 1.0
    common = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
    return common / longest


def compare_spans(pair: Pair, options: QuestionAnsweringOptions, truth: list[Any] | None):
    qs, rs = pair.values("start")
    qe, re_ = pair.values("end")
    qa, ra = pair.values("answer")
    failed = pair.failed()
    same = [(a, b) == (c, d) and not f for a, b, c, d, f in zip(qs, qe, rs, re_, failed)]
    answers = [a == b and not f for a, b, f in zip(qa, ra, failed)]
    metrics = {"span_agreement": _mean(same), "answer_agreement": _mean(answers)}
    return "span_agreement", metrics, _examples(pair, qa, ra, same)


def compare_entities(pair: Pair, options: TokenClassificationOptions, truth: list[Any] | None):
    q, r = pair.values("entities")
    found = matched = expected = 0
    same = []
    for a, b, failed in zip(q, r, pair.failed()):
        x, y = _entity_set(a), _entity_set(b)
        # a failed row finds nothing: it misses the row's entities, or, where there were none, counts as one miss
        found, matched, expected = found + len(x), matched + len(x & y), expected + max(len(y), int(failed))
        same.append(x == y and not failed)
    precision = matched / found if found else float(not expected)
    recall = matched / expected if expected else float(not found)
    f1 = 2 * matched / (found + expected) if found + expected else 1.0
    metrics = {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall, "row_agreement": _mean(same)}
    return "entity_f1", metrics, _examples(pair, [_entity_text(a) for a in q], [_entity_text(b) for b in r], same)


def _entity_set(entities: list[dict[str, Any]] | None) -> set[tuple[Any, Any, Any]]:
    return {(e["entity_group"], e["start"], e["end"]) for e in entities or []}


def _entity_text(entities: list[dict[str, Any]] | None) -> str | None:
    if entities is None:
        return None
    return ", ".join(f"{e['word']}/{e['entity_group']}" for e in entities)


def compare_masks(pair: Pair, options: FillMaskOptions, truth: list[Any] | None):
    q, r = pair.values("predictions")
    agree = total = 0
    same = []
    for a, b in zip(q, r):
        x = [mask[0]["token_id"] if mask else None for mask in a] if a is not None else []
        y = [mask[0]["token_id"] if mask else None for mask in b]
        hits = sum(1 for s, t in zip(x, y) if s == t)
        agree, total = agree + hits, total + len(y)
        same.append(hits == len(y) and len(x) == len(y))
    metrics = {"top1_agreement": agree / total if total else 1.0, "row_agreement": _mean(same)}
    return "top1_agreement", metrics, _examples(pair, [_top1(a) for a in q], [_top1(b) for b in r], same)


def _top1(predictions: list[list[dict[str, Any]]] | None) -> str | None:
    if predictions is None:
        return None
    return " | ".join(mask[0]["token"] if mask else "" for mask in predictions)
