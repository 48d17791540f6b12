"""Same answers as the Transformers pipelines: every task and every option that changes results.

Each case runs the same rows (short, long, unicode) through this project's
Predictor and through ``transformers.pipeline`` — or, for question answering,
which Transformers 5 no longer ships, through ``reference_qa`` (the 4.57
pipeline's rule, checked against the real 4.57 pipeline in
``test_reference_qa_is_the_4_57_pipeline``) — and compares them row by row:
labels, spans and entities identical, scores within 1e-4, embeddings at cosine
>= 0.9999. A row whose answers differ only where the reference itself has two
candidates within 1e-4 of each other is a near-tie: listed in a warning, not a
failure. Where the project deliberately differs, a test below pins it.

Every reference runs with the project's effective window (``MAX_LENGTH``): a
tokenizer loaded with ``model_max_length=MAX_LENGTH`` and truncation on, since
a pipeline truncates nothing by default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import make_spec, read_output, write_parquet
from reference_qa import reference_answers
from tiny_models import CORPUS, NER_LABELS, NLI_LABELS
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

from pipelines.errors import PipelineError
from pipelines.inference.aliases import minilm_dir
from pipelines.inference.predictor import ERROR, Predictor
from pipelines.runner import run_job
from pipelines.spec import ModelSpec

MAX_LENGTH = 48
SCORE_TOLERANCE = 1e-4
COSINE = 0.9999

LONG = " ".join(CORPUS[:9])  # ~ 130 tokens: three or more windows
LONG_UNICODE = " ".join(f"{s} Genève, Zürich et Kraków." for s in CORPUS[9:14])
# text that is not plain ASCII besides accents: spans are compared as everywhere, and words are the text's
UNICODE = [
    "Great 👍🏽 job by Obama in Paris 👍🏽, and 👨\u200d👩\u200d👧 in London",  # beyond the BMP, a ZWJ sequence
    "東京都に住んでいるオバマ氏はパリへ行った",  # CJK without spaces
    "The ﬁnal ﬁgure was １２３ in Paris",  # a ligature, full-width digits (NFKC would change them)
    "باراك أوباما زار باريس and Obama visited Paris",  # right-to-left
    "Obama visited\r\nParis and\r\nLondon\u200b in\u200dEurope",  # CRLF, zero-width space and joiner
]
ROWS = [
    "Barack Obama visited Paris and London during his trip to Europe.",
    "Genève and Zürich are Swiss cities; Angela Merkel met the president in Berlin.",
    "This movie was great, I loved every minute of it!",
    "The food was terrible and the service was even worse.",
    "naïve café in São Paulo, Ålesund and Kraków",
    "東京 and 北京 are capitals; Microsoft opened an office there 🙂",
    "ok",
    "Shares of Apple rose after the quarterly report was published.",
    LONG,
    LONG_UNICODE,
    "Google announced a new search product in California on Monday.",
    "What a good book, the story is simple but very moving.",
    *UNICODE,
]
CONTEXT = (
    "Paris is the capital of France and one of the most visited cities in Europe. "
    "The Eiffel Tower is located in Paris. London is the capital of the United Kingdom. "
    "Genève and Zürich are Swiss cities. Obama visited Paris and London during his trip to Europe. "
    "Tokyo will host an international conference on climate change. "
    "Scientists discovered a new species of frog in the Amazon rainforest."
)
QA_ROWS = [
    ("Where is the Eiffel Tower located?", CONTEXT),
    ("Who visited Paris?", CONTEXT),
    ("Which cities are Swiss?", CONTEXT),
    ("What did scientists discover?", CONTEXT),
    ("Who visited Genève?", "Obama visited Genève."),
    ("Where is Zürich?", "Genève and Zürich are Swiss cities."),
    ("What will Tokyo host?", CONTEXT[150:]),
    ("Where is the café?", "The naïve café is in São Paulo, not in Kraków or 東京."),
    ("What is the capital?", LONG_UNICODE),
    ("Who won?", LONG),
    *(("Who visited Paris?", text) for text in UNICODE),
]
MASK_ROWS = [
    "Paris is the <mask> of France.",
    "The <mask> won the <mask> game.",
    "Genève and Zürich are Swiss <mask>.",
    "<mask> " + LONG,
    "naïve café in São <mask>, 東京 🙂",
    "Great 👍🏽 <mask> by Obama in\r\nParis, 東京都に<mask>でいる",
]
ZERO_SHOT_LABELS = ["politics", "sports", "Genève travel", "business"]


# comparison --------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """Rows that disagree (failures) and rows that differ only at a near-tie of the reference."""

    case: str
    failures: list[str] = field(default_factory=list)
    near_ties: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.near_ties:
            warnings.warn(f"{self.case}: near-ties (not failures): {self.near_ties}", UserWarning, stacklevel=2)
        assert not self.failures, f"{self.case}: {len(self.failures)} rows differ:\n" + "\n".join(self.failures)


def close(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= SCORE_TOLERANCE


def compare_labels(verdict: Verdict, row: int, got: dict, expected: dict[str, float]) -> None:
    """One label per row: every class's score within tolerance, the same best label unless tied."""
    scores = got["scores"] if got.get("scores") is not None else {got["label"]: got["score"]}
    if set(scores) != set(expected) or not all(close(scores[k], expected[k]) for k in expected):
        verdict.failures.append(f"row {row}: scores {scores} != {expected}")
        return
    best = max(expected, key=expected.get)
    if got["label"] != best or not close(got["score"], expected[best]):
        ranked = sorted(expected.values(), reverse=True)
        tied = len(ranked) > 1 and ranked[0] - ranked[1] < SCORE_TOLERANCE
        (verdict.near_ties if tied else verdict.failures).append(f"row {row}: {got['label']} != {best}")


def compare_ranked(verdict: Verdict, row: int, got: list[tuple], expected: list[tuple], what: str) -> None:
    """Ranked candidates ``(key..., score)``: the same keys in the same order, scores within tolerance; a
    different order counts as a near-tie where the reference's scores at those ranks are within tolerance."""
    if len(got) != len(expected):
        verdict.failures.append(f"row {row}: {len(got)} {what} != {len(expected)}: {got} vs {expected}")
        return
    reference = {item[:-1]: item[-1] for item in expected}
    tie = False
    for rank, (mine, theirs) in enumerate(zip(got, expected)):
        if mine[:-1] == theirs[:-1]:
            if not close(mine[-1], theirs[-1]):
                verdict.failures.append(f"row {row}: {what} {mine} scored {theirs[-1]} by the reference")
                return
        elif mine[:-1] in reference and close(reference[mine[:-1]], theirs[-1]) and close(mine[-1], theirs[-1]):
            tie = True
        else:
            verdict.failures.append(f"row {row}: {what} #{rank} {mine} != {theirs}")
            return
    if tie:
        verdict.near_ties.append(f"row {row}: {what} {got} vs {expected}")


def compare_embeddings(verdict: Verdict, got: list, expected: np.ndarray) -> None:
    got_ = np.asarray(got, dtype=np.float64)
    cosine = (got_ * expected).sum(1) / np.linalg.norm(got_, axis=1) / np.linalg.norm(expected, axis=1)
    for row in np.flatnonzero(cosine < COSINE):
        verdict.failures.append(f"row {row}: cosine {cosine[row]:.6f}")


# the models --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a busy machine slows a thread pool several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> Callable[[str], str]:
    """kind → model directory: the tiny models, ``minilm``, and MiniLM with a seeded random head
    (``minilm-nli``, ``minilm-ner``, ``minilm-qa``): a real tokenizer and real depth."""
    root = tmp_path_factory.mktemp("minilm-heads")
    heads = {
        "minilm-nli": (AutoModelForSequenceClassification, NLI_LABELS),
        "minilm-ner": (AutoModelForTokenClassification, NER_LABELS),
        "minilm-qa": (AutoModelForQuestionAnswering, None),
    }
    built: dict[str, str] = {}

    def get(kind: str) -> str:
        base = minilm_dir(ModelSpec(name="minilm"))
        if kind == "minilm":
            return base
        if kind not in heads:
            return tiny_models(kind)
        if kind not in built:
            auto, labels = heads[kind]
            extra = (
                {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
                if labels
                else {}
            )
            torch.manual_seed(0)
            auto.from_pretrained(base, **extra).save_pretrained(root / kind)
            AutoTokenizer.from_pretrained(base).save_pretrained(root / kind)
            built[kind] = str(root / kind)
        return built[kind]

    return get


def reference_pipeline(task: str, model_dir: str, **kwargs: Any) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(model_dir, model_max_length=MAX_LENGTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline(task, model=model_dir, tokenizer=tokenizer, **kwargs)


def predict(model_dir: str, task: dict, rows: list[str], **columns: list) -> tuple[Predictor, list[dict]]:
    spec = make_spec(model_dir, task, batching={"max_length": MAX_LENGTH}, compute={"threads_per_actor": 1})
    batch = pa.table({"id": [f"r{i}" for i in range(len(rows))], "text": rows, **columns})
    predictor = Predictor(spec)
    return predictor, predictor(batch).to_pylist()


# the cases ---------------------------------------------------------------------------------------


def feature_extraction(verdict: Verdict, model_dir: str, task: dict) -> None:
    _, got = predict(model_dir, task, ROWS)
    extract = reference_pipeline("feature-extraction", model_dir, truncation=True)
    expected = []
    for text in ROWS:
        hidden = np.asarray(extract(text)[0], dtype=np.float64)  # [tokens, hidden], one text: no padding
        vector = {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[task.get("pooling", "mean")]
        expected.append(vector / np.linalg.norm(vector) if task.get("normalize", True) else vector)
    compare_embeddings(verdict, [r["embedding"] for r in got], np.stack(expected))


def text_classification(verdict: Verdict, model_dir: str, task: dict) -> None:
    _, got = predict(model_dir, {**task, "return_all_scores": True}, ROWS)
    function = task.get("function", "auto")
    options = {} if function == "auto" else {"function_to_apply": function}
    classify = reference_pipeline("text-classification", model_dir, top_k=None, truncation=True, **options)
    for i, (row, expected) in enumerate(zip(got, classify(ROWS))):
        compare_labels(verdict, i, row, {e["label"]: e["score"] for e in expected})


def zero_shot_nli(verdict: Verdict, model_dir: str, task: dict) -> None:
    _, got = predict(model_dir, task, ROWS)
    classify = reference_pipeline("zero-shot-classification", model_dir)
    options = {k: task[k] for k in ("multi_label", "hypothesis_template") if k in task}
    for i, (row, expected) in enumerate(zip(got, classify(ROWS, candidate_labels=task["candidate_labels"], **options))):
        compare_labels(verdict, i, row, dict(zip(expected["labels"], expected["scores"])))


def zero_shot_embedding(verdict: Verdict, model_dir: str, task: dict) -> None:
    """No pipeline has this method: the reference is the feature-extraction pipeline, mean-pooled."""
    _, got = predict(model_dir, task, ROWS)
    extract = reference_pipeline("feature-extraction", model_dir, truncation=True)

    def embed(text: str) -> np.ndarray:
        vector = np.asarray(extract(text)[0], dtype=np.float64).mean(0)
        return vector / np.linalg.norm(vector)

    labels = task["candidate_labels"]
    label_vectors = np.stack([embed(task.get("hypothesis_template", "This example is {}.").format(x)) for x in labels])
    for i, (row, text) in enumerate(zip(got, ROWS)):
        similarity = label_vectors @ embed(text)
        if task.get("multi_label") or len(labels) == 1:
            scores = (similarity + 1) / 2
        else:
            exp = np.exp((similarity - similarity.max()) / task.get("temperature", 0.05))
            scores = exp / exp.sum()
        compare_labels(verdict, i, row, dict(zip(labels, scores)))


def question_answering(verdict: Verdict, model_dir: str, task: dict) -> None:
    questions, contexts = [q for q, _ in QA_ROWS], [c for _, c in QA_ROWS]
    predictor, got = predict(model_dir, task, contexts, question=questions, context=contexts)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    options = {
        "top_k": task.get("top_k", 1),
        "max_answer_len": task.get("max_answer_length", 15),
        "handle_impossible_answer": task.get("handle_impossible_answer", False),
        "align_to_words": task.get("align_to_words", True),
    }
    for i, row in enumerate(got):
        expected = reference_answers(
            model,
            tokenizer,
            questions[i],
            contexts[i],
            max_seq_len=MAX_LENGTH,
            doc_stride=task["doc_stride"],
            **options,
        )
        answers = row["answers"] if "answers" in row else [{k: row[k] for k in ("answer", "start", "end", "score")}]
        if any(a["answer"] != contexts[i][a["start"] : a["end"]] for a in answers):
            verdict.failures.append(f"row {i}: an answer is not the context at its span")
        compare_ranked(
            verdict,
            i,
            [(a["answer"], a["start"], a["end"], a["score"]) for a in answers],
            [(a["answer"], a["start"], a["end"], a["score"]) for a in expected if a["score"] > 0],
            "answer",
        )


def token_classification(verdict: Verdict, model_dir: str, task: dict) -> None:
    _, got = predict(model_dir, task, ROWS)
    strategy = task.get("aggregation_strategy", "simple")
    stride = task.get("stride", 32)  # the default, as given: a window of MAX_LENGTH has room for it
    options = {"stride": stride} if stride is not None else {}
    if "ignore_labels" in task:
        options["ignore_labels"] = task["ignore_labels"]
    tag = reference_pipeline("token-classification", model_dir, aggregation_strategy=strategy, **options)
    for i, (row, expected) in enumerate(zip(got, tag(ROWS))):
        mine = [(e["entity_group"], e["start"], e["end"], e["score"]) for e in row["entities"]]
        theirs = [(e.get("entity_group", e.get("entity")), e["start"], e["end"], e["score"]) for e in expected]
        compare_ranked(verdict, i, mine, theirs, "entity")
        if any(e["word"] != ROWS[i][e["start"] : e["end"]] for e in row["entities"]):
            verdict.failures.append(f"row {i}: an entity's word is not the text at its span")


def fill_mask(verdict: Verdict, model_dir: str, task: dict) -> None:
    predictor, got = predict(model_dir, {**task, "mask_placeholder": "<mask>"}, MASK_ROWS)
    options = {k: task[k] for k in ("top_k", "targets") if k in task}
    fill = reference_pipeline("fill-mask", model_dir, tokenizer_kwargs={"truncation": True}, **options)
    for i, (text, row) in enumerate(zip(MASK_ROWS, got)):
        expected = fill(text.replace("<mask>", "[MASK]"))
        expected = [expected] if isinstance(expected[0], dict) else expected  # one mask: not nested
        assert row[ERROR] is None, row[ERROR]
        for mask, (mine, theirs) in enumerate(zip(row["predictions"], expected, strict=True)):
            compare_ranked(
                verdict,
                i,
                [(c["token_id"], c["token"], c["score"]) for c in mine],
                [(c["token"], c["token_str"], c["score"]) for c in theirs],
                f"candidate of mask {mask}",
            )


RUNNERS = {
    "feature-extraction": feature_extraction,
    "text-classification": text_classification,
    "zero-shot-nli": zero_shot_nli,
    "zero-shot-embedding": zero_shot_embedding,
    "question-answering": question_answering,
    "token-classification": token_classification,
    "fill-mask": fill_mask,
}

NLI = {"type": "zero-shot-classification", "candidate_labels": ZERO_SHOT_LABELS}
QA = {"type": "question-answering", "doc_stride": 8, "max_question_length": 16, "max_answer_length": 6}
NER = {"type": "token-classification"}


def case(runner: str, kind: str, task: dict, name: str) -> Any:
    return pytest.param(runner, kind, task, id=name)


CASES = [
    case("feature-extraction", "encoder", {"type": "feature-extraction"}, "embed-mean"),
    case("feature-extraction", "encoder", {"type": "feature-extraction", "pooling": "cls"}, "embed-cls"),
    case("feature-extraction", "causal", {"type": "feature-extraction", "pooling": "last"}, "embed-last-decoder"),
    case("feature-extraction", "encoder", {"type": "feature-extraction", "normalize": False}, "embed-raw"),
    case("feature-extraction", "minilm", {"type": "feature-extraction"}, "embed-minilm"),
    case("text-classification", "classifier", {"type": "text-classification"}, "classify-softmax"),
    case("text-classification", "multi-label", {"type": "text-classification"}, "classify-multi-label"),
    case("text-classification", "regression", {"type": "text-classification"}, "classify-regression"),
    case(
        "text-classification", "classifier", {"type": "text-classification", "function": "sigmoid"}, "classify-sigmoid"
    ),
    case("text-classification", "classifier", {"type": "text-classification", "function": "none"}, "classify-none"),
    case("zero-shot-nli", "nli", NLI, "nli"),
    case("zero-shot-nli", "nli", {**NLI, "multi_label": True}, "nli-multi-label"),
    case("zero-shot-nli", "nli", {**NLI, "candidate_labels": ["politics"]}, "nli-one-label"),
    case("zero-shot-nli", "nli", {**NLI, "hypothesis_template": "Das ist {}."}, "nli-template"),
    case("zero-shot-nli", "nli-binary", NLI, "nli-binary"),
    case("zero-shot-nli", "nli-binary", {**NLI, "multi_label": True}, "nli-binary-multi-label"),
    case("zero-shot-nli", "nli-binary", {**NLI, "candidate_labels": ["sports"]}, "nli-binary-one-label"),
    case("zero-shot-nli", "nli-nec", NLI, "nli-nec"),
    case("zero-shot-nli", "minilm-nli", {**NLI, "multi_label": True}, "nli-minilm"),
    case("zero-shot-embedding", "minilm", {**NLI, "method": "embedding"}, "zero-shot-embedding"),
    case(
        "zero-shot-embedding",
        "minilm",
        {**NLI, "method": "embedding", "multi_label": True},
        "zero-shot-embedding-multi",
    ),
    case("question-answering", "qa", QA, "qa"),
    case("question-answering", "qa", {**QA, "top_k": 3}, "qa-top-k"),
    case("question-answering", "qa", {**QA, "align_to_words": False, "top_k": 2}, "qa-tokens"),
    case("question-answering", "qa", {**QA, "max_answer_length": 2}, "qa-short-answers"),
    case("question-answering", "qa-squad2", {**QA, "handle_impossible_answer": True}, "qa-impossible"),
    case(
        "question-answering", "qa-squad2", {**QA, "handle_impossible_answer": True, "top_k": 2}, "qa-impossible-top-k"
    ),
    case("question-answering", "minilm-qa", {**QA, "top_k": 2}, "qa-minilm"),
    # an overlap past half the room the longest question allowed leaves, which fits beside these questions: as given
    # (it was cut to that half, 14 tokens, and windows other than the pipeline's changed the answers)
    case("question-answering", "qa", {**QA, "doc_stride": 20}, "qa-stride-as-given"),
    case("token-classification", "token-classifier", {**NER, "stride": None}, "ner-truncated"),
    case(
        "token-classification", "token-classifier", {**NER, "aggregation_strategy": "none", "stride": None}, "ner-none"
    ),
    case("token-classification", "token-classifier", NER, "ner-simple-windows"),
    case("token-classification", "token-classifier", {**NER, "aggregation_strategy": "first"}, "ner-first"),
    case("token-classification", "token-classifier", {**NER, "aggregation_strategy": "average"}, "ner-average"),
    case("token-classification", "token-classifier", {**NER, "aggregation_strategy": "max", "stride": 4}, "ner-max"),
    case("token-classification", "token-classifier", {**NER, "ignore_labels": ["O", "PER"]}, "ner-ignore"),
    case("token-classification", "minilm-ner", {**NER, "aggregation_strategy": "first"}, "ner-minilm"),
    case("token-classification", "token-classifier", {**NER, "stride": 40}, "ner-stride-as-given"),  # was cut to 23
    case("fill-mask", "mlm", {"type": "fill-mask"}, "fill-mask"),
    case("fill-mask", "mlm", {"type": "fill-mask", "top_k": 2}, "fill-mask-top-k"),
    case(
        "fill-mask", "mlm", {"type": "fill-mask", "targets": ["paris", "capital", "Cities", "the"]}, "fill-mask-targets"
    ),
]


@pytest.mark.parametrize(("runner", "kind", "task"), CASES)
def test_parity_with_the_transformers_pipeline(models, runner, kind, task, request):
    verdict = Verdict(request.node.callspec.id)
    RUNNERS[runner](verdict, models(kind), task)
    verdict.check()


# where the project deliberately differs ------------------------------------------------------------


def test_nli_scores_entailment_against_the_class_named_contradiction(models):
    """Labels ordered neutral, entailment, contradiction: the pipeline takes index 0 (neutral) as the class to
    score entailment against; the project takes the class named contradiction."""
    model_dir = models("nli-nec")
    task = {**NLI, "multi_label": True}
    _, got = predict(model_dir, task, ROWS)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, model_max_length=MAX_LENGTH)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    hypotheses = [f"This example is {label}." for label in ZERO_SHOT_LABELS]
    classify = reference_pipeline("zero-shot-classification", model_dir)
    differs = 0
    for text, row, theirs in zip(ROWS, got, classify(ROWS, candidate_labels=ZERO_SHOT_LABELS, multi_label=True)):
        inputs = tokenizer(
            [text] * len(hypotheses), hypotheses, truncation="only_first", padding=True, return_tensors="pt"
        )
        with torch.inference_mode():
            logits = model(**inputs).logits  # neutral, entailment, contradiction
        expected = torch.softmax(logits[:, [2, 1]], dim=-1)[:, 1].tolist()
        assert [row["scores"][label] for label in ZERO_SHOT_LABELS] == pytest.approx(expected, abs=1e-5)
        pipeline_scores = dict(zip(theirs["labels"], theirs["scores"]))
        differs += any(abs(row["scores"][k] - pipeline_scores[k]) > 0.01 for k in ZERO_SHOT_LABELS)
    assert differs >= len(ROWS) // 2  # the pipeline's guess is visibly another rule


def test_nli_hypothesis_that_leaves_no_room_for_the_text_is_an_error(models):
    with pytest.raises(PipelineError, match="leaves no room for the text within max_length 48"):
        predict(models("nli"), {**NLI, "hypothesis_template": "{} " + "very " * 60}, ROWS[:1])


def test_question_answering_lists_no_answer_the_model_ruled_out(models):
    """Asked for more answers than a short context has spans, the 4.57 pipeline may pad its list with spans of
    score 0 (and text like "" from end-before-start spans; which of them, if any, depends on how numpy orders
    ties on the CPU at hand); the project lists only spans of positive score."""
    model_dir = models("qa")
    task = {**QA, "top_k": 20}
    question, context = "Who visited Genève?", "Obama visited Genève."
    predictor, got = predict(model_dir, task, [context], question=[question], context=[context])
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = reference_answers(
        model,
        tokenizer,
        question,
        context,
        max_seq_len=MAX_LENGTH,
        doc_stride=task["doc_stride"],
        top_k=20,
        max_answer_len=6,
    )
    positive = [(a["answer"], a["start"], a["end"]) for a in expected if a["score"] > 0]
    assert len(positive) < task["top_k"]  # fewer spans of positive score than asked for
    assert [(a["answer"], a["start"], a["end"]) for a in got[0]["answers"]] == positive
    assert all(a["score"] > 0 for a in got[0]["answers"])


def test_no_answer_wins_on_some_rows_only(models):
    """The SQuAD2-style tiny model exercises both sides of handle_impossible_answer, and without the option the
    empty answer never appears."""
    questions, contexts = [q for q, _ in QA_ROWS], [c for _, c in QA_ROWS]
    task = {**QA, "handle_impossible_answer": True}
    _, got = predict(models("qa-squad2"), task, contexts, question=questions, context=contexts)
    empty = [row["answer"] == "" for row in got]
    assert 0 < sum(empty) < len(got)
    assert all((row["start"], row["end"]) == (0, 0) for row, e in zip(got, empty) if e)
    _, without = predict(models("qa-squad2"), QA, contexts, question=questions, context=contexts)
    assert all(row["answer"] for row in without)


def test_token_classification_windows_long_texts_where_the_pipeline_truncates(models):
    """By default (stride 32) the project reads a long text whole, as the pipeline does only when given a
    stride; the pipeline's default truncates, like ``stride: null``."""
    model_dir = models("token-classifier")
    task = {**NER, "aggregation_strategy": "first"}
    _, windowed = predict(model_dir, task, [LONG])
    _, truncated = predict(model_dir, {**task, "stride": None}, [LONG])
    tagger = reference_pipeline("token-classification", model_dir, aggregation_strategy="first")
    kept = AutoTokenizer.from_pretrained(model_dir)(
        LONG, truncation=True, max_length=MAX_LENGTH, return_offsets_mapping=True
    )
    cut = max(end for _, end in kept["offset_mapping"])  # the last character the truncated text keeps
    assert [(e["start"], e["end"]) for e in truncated[0]["entities"]] == [(e["start"], e["end"]) for e in tagger(LONG)]
    assert all(e["end"] <= cut for e in truncated[0]["entities"])
    assert max(e["end"] for e in windowed[0]["entities"]) > cut + 300  # entities all along the text
    assert windowed[0]["_tokens"] > 2 * MAX_LENGTH and truncated[0]["_tokens"] == MAX_LENGTH


def test_token_classification_none_merges_the_windows_tokens(models):
    """The pipeline refuses a stride with aggregation none; the project keeps each token once (the surer
    of its two windows where windows overlap), in text order."""
    model_dir = models("token-classifier")
    _, got = predict(model_dir, {**NER, "aggregation_strategy": "none", "stride": 8}, [LONG, ROWS[0]])
    _, alone = predict(model_dir, {**NER, "aggregation_strategy": "none", "stride": None}, [ROWS[0]])
    spans = [(e["start"], e["end"]) for e in got[0]["entities"]]
    assert spans == sorted(set(spans)) and spans[-1][1] > len(LONG) - 60
    assert got[1]["entities"] == alone[0]["entities"]  # a text within one window: as without windows


def test_zero_shot_pairs_share_the_rows_tokenization(models):
    """A row is tokenized once and joined to each hypothesis: the pairs are exactly the tokenizer's own
    (text truncated on the tokenizer's side, hypothesis kept); a tokenizer without that template tokenizes
    the pairs whole."""
    for kind, side in (("nli", "right"), ("minilm-nli", "right"), ("minilm-nli", "left")):
        model_dir = models(kind)
        predictor, _ = predict(model_dir, NLI, ROWS[:1])
        task = predictor.task
        assert task.template is not None
        tokenizer = AutoTokenizer.from_pretrained(model_dir, truncation_side=side)
        task.tokenizer.truncation_side = side
        pairs = tokenizer(
            [t for t in ROWS for _ in ZERO_SHOT_LABELS],
            task.hypotheses * len(ROWS),
            truncation="only_first",
            max_length=MAX_LENGTH,
        )
        shared = task.encode(ROWS, {})
        task.template = None
        whole = task.encode(ROWS, {})
        for features in (shared, whole):
            for name in ("input_ids", "token_type_ids"):
                assert [features.tokens[name].row(i).tolist() for i in range(len(features))] == pairs[name]
            cut = [bool(e.overflowing) for e in pairs.encodings]
            assert features.truncated.tolist() == np.reshape(cut, (len(ROWS), -1)).any(axis=1).tolist()
        assert 0 < sum(shared.truncated) < len(ROWS)


def test_fill_mask_target_without_a_token_is_an_error(models):
    """The pipeline drops such a target with a warning; a job spec that asks for it is wrong, so it fails early."""
    with pytest.raises(PipelineError, match="target '' makes no token"):
        predict(models("mlm"), {"type": "fill-mask", "targets": ["paris", ""]}, MASK_ROWS[:1])


# Decomposed text (NFD: macOS file names, some PDF extractions; Arabic vowel marks and Devanagari signs are combining
# marks in any form): an uncased tokenizer (strip_accents: MiniLM, BERT uncased) drops the combining marks.
NFD_ROWS = [
    unicodedata.normalize("NFD", text)
    for text in (
        "Café Genève, Zürich et Kraków: Obama visited Paris.",
        "naïve résumé from São Paulo and Ålesund",
        "محمدٌ visited باريسَ and दिल्ली में with Obama",
        "Zürich",
    )
]
NFD_QUESTIONS = ["Where is the café?", "Who visited?", "Where is it?", "Which is the city?"]


def past_dropped_marks(tokenizer: Any, text: str, start: int, end: int) -> tuple[int, int]:
    """A span's end moved past the combining marks right after it that the tokenizer's normaliser drops."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    while (
        start < end < len(text)
        and unicodedata.category(text[end]).startswith("M")
        and normalizer.normalize_str(text[end]) == ""
    ):
        end += 1
    return start, end


@pytest.mark.parametrize(
    ("kind", "strategy"),
    [("token-classifier", "none"), ("token-classifier", "first"), ("minilm-ner", "simple"), ("minilm-ner", "max")],
)
def test_entities_keep_the_combining_marks_of_their_last_letter(models, kind, strategy):
    """The pipeline ends an entity before the combining marks its tokenizer drops ("Cafe" of "Cafe\u0301", end one
    short: a letter cut in two, a word the text does not hold); the project's end moves past them, the rest as the
    pipeline's."""
    model_dir = models(kind)
    _, got = predict(model_dir, {**NER, "aggregation_strategy": strategy, "stride": None}, NFD_ROWS)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tag = reference_pipeline("token-classification", model_dir, aggregation_strategy=strategy)
    moved = 0
    for text, row, expected in zip(NFD_ROWS, got, tag(NFD_ROWS)):
        theirs = [(e["start"], e["end"]) for e in expected]
        wanted = [past_dropped_marks(tokenizer, text, *span) for span in theirs]
        moved += sum(a != b for a, b in zip(theirs, wanted))
        assert [(e["start"], e["end"]) for e in row["entities"]] == wanted, text
        assert [e["entity_group"] for e in row["entities"]] == [e.get("entity_group", e.get("entity")) for e in expected]
        assert all(e["word"] == text[e["start"] : e["end"]] for e in row["entities"])
    assert moved  # some entity of the reference did end inside a letter


@pytest.mark.parametrize(("kind", "align_to_words"), [("qa", True), ("qa", False), ("minilm-qa", True)])
def test_answers_keep_the_combining_marks_of_their_last_letter(models, kind, align_to_words):
    """As for entities: an answer ends past the combining marks its tokenizer drops ("Gene" of "Gene\u0300ve")."""
    model_dir = models(kind)
    task = {**QA, "top_k": 5, "align_to_words": align_to_words}
    predictor, got = predict(model_dir, task, NFD_ROWS, question=NFD_QUESTIONS, context=NFD_ROWS)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    moved = 0
    for question, context, row in zip(NFD_QUESTIONS, NFD_ROWS, got):
        expected = reference_answers(
            model,
            tokenizer,
            question,
            context,
            max_seq_len=MAX_LENGTH,
            doc_stride=QA["doc_stride"],
            top_k=5,
            max_answer_len=QA["max_answer_length"],
            align_to_words=align_to_words,
        )
        theirs = [(a["start"], a["end"]) for a in expected if a["score"] > 0]
        wanted = [past_dropped_marks(tokenizer, context, *span) for span in theirs]
        moved += sum(a != b for a, b in zip(theirs, wanted))
        assert [(a["start"], a["end"]) for a in row["answers"]] == wanted, context
        assert all(a["answer"] == context[a["start"] : a["end"]] for a in row["answers"])
    assert moved  # some answer of the reference did end inside a letter


# through `pipelines run` on a real Ray ---------------------------------------------------------------


@pytest.mark.slow
def test_parity_through_a_job_on_ray(ray_session, models, tmp_path):
    """Question answering (several windows per row, the fold across features) through the whole job: shards in,
    actors, Parquet out; every row as the 4.57 rule answers it."""
    model_dir = models("qa-squad2")
    rows = [{"id": f"q{i}", "question": q, "context": c} for i, (q, c) in enumerate(QA_ROWS)]
    write_parquet(tmp_path / "in" / "a.parquet", rows[:6])
    write_parquet(tmp_path / "in" / "b.parquet", rows[6:])
    task = {**QA, "top_k": 2, "handle_impossible_answer": True}
    spec = make_spec(
        model_dir,
        task,
        tmp_path / "out",
        batching={"max_length": MAX_LENGTH, "batch_size": 4, "max_rows": 3},
        input={"paths": [str(tmp_path / "in")], "text_column": "context", "columns_to_keep": ["question", "context"]},
    )
    summary = run_job(spec).to_json()
    assert summary["rows_out"] == len(rows) and summary["errors"] == 0
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stride = QA["doc_stride"]
    verdict = Verdict("job on ray")
    for i, row in enumerate(sorted(read_output(spec.output.path).to_pylist(), key=lambda r: int(r["id"][1:]))):
        expected = reference_answers(
            model,
            tokenizer,
            row["question"],
            row["context"],
            max_seq_len=MAX_LENGTH,
            doc_stride=stride,
            top_k=2,
            max_answer_len=QA["max_answer_length"],
            handle_impossible_answer=True,
        )
        compare_ranked(
            verdict,
            i,
            [(a["answer"], a["start"], a["end"], a["score"]) for a in row["answers"]],
            [(a["answer"], a["start"], a["end"], a["score"]) for a in expected],
            "answer",
        )
    verdict.check()


# the re-implemented 4.57 rule against the real 4.57 pipeline -------------------------------------------

TRANSFORMERS_4_57 = ["transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2"]


@pytest.fixture(scope="session")
def transformers_4_57() -> Path:
    """A directory holding transformers 4.57 (the last with the question-answering pipeline), installed from
    PyPI once into the test cache (torch and numpy come from this environment)."""
    cache = Path(os.environ.get("PIPELINES_TEST_CACHE", Path.home() / ".cache" / "pipelines-tests"))
    target = cache / "transformers-4.57.6"
    if not (target / "transformers").is_dir():
        partial = cache / f"transformers-4.57.6.partial-{os.getpid()}"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(partial)]
        done = subprocess.run([*command, *TRANSFORMERS_4_57], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"transformers 4.57 could not be installed from PyPI: {done.stderr.strip()[-300:]}")
        partial.rename(target)
    return target


@pytest.mark.slow
def test_reference_qa_is_the_4_57_pipeline(models, transformers_4_57):
    """``reference_qa`` gives the real 4.57 pipeline's answers, spans and scores, for every option (also where its
    end cuts a letter of decomposed text in two, which the project's does not)."""
    options = [
        {},
        {"top_k": 3},
        {"top_k": 2, "align_to_words": False},
        {"max_answer_len": 2},
        {"top_k": 2, "handle_impossible_answer": True},
        {"top_k": 20},
    ]
    jobs = [
        {
            "model": models(kind),
            "cases": [
                {"question": q, "context": c, "options": {"max_seq_len": MAX_LENGTH, "doc_stride": 8, **o}}
                for o in options_
                for q, c in [*QA_ROWS, *zip(NFD_QUESTIONS, NFD_ROWS)]
            ],
        }
        for kind, options_ in (("qa", options), ("qa-squad2", options), ("minilm-qa", options[:2]))
    ]
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("reference_qa.py"))],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(transformers_4_57), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    real = json.loads(done.stdout.strip().splitlines()[-1])
    assert real["transformers"].startswith("4.57.")
    for job, answers in zip(jobs, real["answers"], strict=True):
        model = AutoModelForQuestionAnswering.from_pretrained(job["model"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(job["model"])
        for case_, theirs in zip(job["cases"], answers, strict=True):
            options_ = dict(case_["options"])
            mine = reference_answers(
                model,
                tokenizer,
                case_["question"],
                case_["context"],
                max_seq_len=options_.pop("max_seq_len"),
                doc_stride=options_.pop("doc_stride"),
                **options_,
            )
            spans = [(a["answer"], a["start"], a["end"]) for a in mine]
            assert spans == [(a["answer"], a["start"], a["end"]) for a in theirs], (job["model"], case_)
            assert [a["score"] for a in mine] == pytest.approx([a["score"] for a in theirs], abs=1e-6)
