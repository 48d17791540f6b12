"""question-answering (extractive): the span of the context that best answers the question.

The rule is the Transformers question-answering pipeline's (4.x; Transformers 5
no longer ships it):

- a context longer than the model's window is cut into overlapping windows
  (``doc_stride`` tokens of overlap), each window one feature of its row;
- in each window, p(start) and p(end) are softmaxes over the context tokens and
  the first token ([CLS]: "no answer in this window" for SQuAD2-style models);
  a span's score is p(start) × p(end), spans are at most ``max_answer_length``
  tokens and never start or end at [CLS];
- each window's best spans (``top_k``, or ``2 × top_k + 10`` with
  ``align_to_words``, since widened spans may coincide) are widened to whole
  words (``align_to_words``) and turned into text; answers with the same text
  (ignoring case), from one window or several, are one answer whose score is
  the sum of theirs, at the place it was first found;
- with ``handle_impossible_answer``, the empty answer competes too, scored
  p(start = [CLS]) × p(end = [CLS]) in the window where that is lowest.

``start``/``end`` are character offsets into the context (Python string indices: code points):
``context[start:end] == answer``; an end stays past the combining marks of its last letter where the
tokenizer drops them (``DroppedMarks``), where the pipeline's would cut that letter in two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipelines.errors import PipelineError
from pipelines.tasks.base import DroppedMarks, Features, Outputs, Task
from pipelines.tasks.options import QuestionAnsweringOptions

ANSWER = pa.struct(
    [
        pa.field("answer", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("start", pa.int32()),
        pa.field("end", pa.int32()),
    ]
)


@dataclass
class Answer:
    answer: str
    score: float
    start: int
    end: int


def word_spans(words: list[int | None], in_context: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[tokens, 2]``: the characters of each context token's whole word within this window (-1 elsewhere).

    A word is the tokenizer's (its pre-tokenizer's) word; a word cut by the
    window's edge covers only its tokens inside the window.
    """
    spans = np.full((len(words), 2), -1, dtype=np.int64)
    positions = np.array([t for t in np.flatnonzero(in_context) if words[t] is not None], dtype=np.int64)
    if not len(positions):
        return spans
    word = np.array([words[t] for t in positions], dtype=np.int64)
    _, first, which = np.unique(word, return_index=True, return_inverse=True)  # each word's first token
    last = len(word) - 1 - np.unique(word[::-1], return_index=True)[1]  # and its last
    spans[positions, 0] = offsets[positions[first[which]], 0]
    spans[positions, 1] = offsets[positions[last[which]], 1]
    return spans


#: What each window (feature) carries to ``forward`` and ``postprocess`` (:meth:`QuestionAnswering._windows`).
_EXTRA = ("in_softmax", "in_context", "offsets", "words", "context")


def _objects(values: list[Any]) -> np.ndarray:
    """``values`` (arrays of several lengths, strings) as a 1-d object array, one per feature."""
    array = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: arrays of one shape would be broadcast into a 2-d array
        array[i] = value
    return array


class QuestionAnswering(Task):
    name = "question-answering"
    options_model = QuestionAnsweringOptions
    model_class = "AutoModelForQuestionAnswering"
    tokenizer_in_forward = False
    options: QuestionAnsweringOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        if problem := self.options.no_room(self.max_length, self.specials, self.cap_note()):
            raise PipelineError(problem)
        top_k = self.options.top_k
        self.candidates = 2 * top_k + 10 if self.options.align_to_words else top_k
        self.marks = DroppedMarks(self.tokenizer)

    def stride(self, question_tokens: int) -> int:
        """The overlap between the windows of a row whose question is ``question_tokens`` long: ``doc_stride`` as
        given where the window has room for more context than that (as the Transformers pipeline takes it), else
        half that room (where the pipeline's tokenizer fails)."""
        room = self.max_length - self.specials - question_tokens
        return self.options.doc_stride if self.options.doc_stride < room else room // 2

    def token_inputs(self) -> dict[str, str | None]:
        question, context = self.options.question_column, self.options.context_column
        return {question: question, context: context}

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        questions = columns[self.options.question_column]
        contexts = columns[self.options.context_column]
        errors, strides = self._refused(questions, contexts)
        if not strides:
            return Features(tokens={}, row=np.zeros(0, np.int64), errors=errors)
        tokens: dict[str, list[list[int]]] = {}
        owners: list[np.ndarray] = []
        extra: dict[str, list[Any]] = {name: [] for name in _EXTRA}
        for stride in sorted(set(strides.values())):  # one tokenizer call for the rows of each overlap: mostly one
            rows = [i for i, s in strides.items() if s == stride]
            encoding = self.tokenizer(
                [questions[i] for i in rows],
                [contexts[i] for i in rows],
                truncation="only_second",
                max_length=self.max_length,
                stride=stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                padding=False,
            )
            for name in ("input_ids", "token_type_ids"):
                if name in encoding:
                    tokens.setdefault(name, []).extend(encoding[name])
            owner = np.asarray(rows, dtype=np.int64)[np.asarray(encoding["overflow_to_sample_mapping"], dtype=np.int64)]
            owners.append(owner)
            for name, values in self._windows(encoding, owner, contexts).items():
                extra[name].extend(values)
        owner = np.concatenate(owners)
        order = np.argsort(owner, kind="stable")  # features in row order, each row's windows in text order
        features = Features.one_per_row({name: [ids[i] for i in order] for name, ids in tokens.items()})
        features.row = owner[order]
        features.errors = errors
        features.extra = {name: _objects([values[i] for i in order]) for name, values in extra.items()}
        return features

    def _windows(self, encoding: Any, owner: np.ndarray, contexts: list[Any]) -> dict[str, list[Any]]:
        """What ``forward`` and ``postprocess`` need of each window (feature) of ``encoding``."""
        cls = self.tokenizer.cls_token_id
        windows: dict[str, list[Any]] = {name: [] for name in _EXTRA}
        for f in range(len(owner)):
            context = contexts[owner[f]]
            in_context = np.array([s == 1 for s in encoding.sequence_ids(f)], dtype=bool)
            # [CLS] stays in the softmax: the "no answer here" of SQuAD2-style models
            in_softmax = in_context | (np.asarray(encoding["input_ids"][f]) == cls)
            offsets = np.asarray(encoding["offset_mapping"][f], dtype=np.int64).reshape(-1, 2)
            offsets = self.marks.extend(context, offsets, in_context)
            windows["in_softmax"].append(in_softmax)
            windows["in_context"].append(in_context)
            windows["offsets"].append(offsets)
            windows["words"].append(word_spans(encoding.word_ids(f), in_context, offsets))
            windows["context"].append(context)
        return windows

    def _refused(self, questions: list[Any], contexts: list[Any]) -> tuple[dict[int, str], dict[int, int]]:
        """Rows that can't be answered, with the reason; and the overlap (:meth:`stride`) of each of the others."""
        errors: dict[int, str] = {}
        for i, (question, context) in enumerate(zip(questions, contexts)):
            if not question or not question.strip():
                errors[i] = f"{self.options.question_column} is null or empty"
            elif not context or not context.strip():
                errors[i] = f"{self.options.context_column} is null or empty"
        rows = [i for i in range(len(questions)) if i not in errors]
        strides: dict[int, int] = {}
        if rows:
            lengths = self.tokenizer([questions[i] for i in rows], add_special_tokens=False)["input_ids"]
            limit = self.options.max_question_length
            for i, ids in zip(rows, lengths):
                if len(ids) > limit:
                    errors[i] = f"question longer than max_question_length ({len(ids)} > {limit} tokens)"
                else:
                    strides[i] = self.stride(len(ids))
        return errors, strides

    def forward(self, model, inputs, extra):
        output = model(**inputs)
        start, end = output.start_logits.float(), output.end_logits.float()
        batch, width = start.shape
        in_softmax = self._mask(extra["in_softmax"], batch, width, start.device)
        in_context = self._mask(extra["in_context"], batch, width, start.device)
        log_start = start.masked_fill(~in_softmax, float("-inf")).log_softmax(-1)
        log_end = end.masked_fill(~in_softmax, float("-inf")).log_softmax(-1)
        null = (log_start[:, 0] + log_end[:, 0]).exp()
        # spans start and end on context tokens only
        log_start = log_start.masked_fill(~in_context, float("-inf"))
        log_end = log_end.masked_fill(~in_context, float("-inf"))
        longest = self.options.max_answer_length
        # spans[b, i, k]: start at token i, end at token i + k (k < max_answer_length)
        ends = F.pad(log_end, (0, longest - 1), value=float("-inf")).unfold(1, longest, 1)
        spans = (log_start[:, :, None] + ends).reshape(batch, -1)
        top = spans.topk(min(self.candidates, spans.shape[1]), dim=1)
        first = top.indices // longest
        return {
            "start_token": list(first.cpu().numpy()),
            "end_token": list((first + top.indices % longest).cpu().numpy()),
            "score": list(top.values.exp().cpu().numpy()),
            "null": null.cpu().numpy(),
        }

    @staticmethod
    def _mask(flags: np.ndarray, batch: int, width: int, device: torch.device) -> torch.Tensor:
        """Per-token flags of right-padded features as a ``[batch, width]`` mask (padding: False)."""
        mask = torch.zeros(batch, width, dtype=torch.bool, device=device)
        for i, row in enumerate(flags):
            mask[i, : len(row)] = torch.from_numpy(row)
        return mask

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        first, last, score = outputs.listed("start_token"), outputs.listed("end_token"), outputs.listed("score")
        null = outputs.stacked("null")
        found: list[dict[str, Answer]] = [{} for _ in range(n_rows)]
        no_answer = np.full(n_rows, np.inf)
        for f, row in enumerate(features.row):  # a row's windows in order, as the pipeline reads them
            no_answer[row] = min(no_answer[row], float(null[f]))
            for s, e, p in zip(first[f], last[f], score[f]):
                if p > 0:
                    self._add(found[row], features, f, int(s), int(e), float(p))
        ranked: list[list[Answer] | None] = [None] * n_rows
        for row in np.unique(features.row):
            answers = list(found[row].values())
            if self.options.handle_impossible_answer:
                answers.append(Answer("", float(no_answer[row]), 0, 0))
            ranked[row] = sorted(answers, key=lambda a: a.score, reverse=True)[: self.options.top_k]
        return self._columns(ranked)

    def _add(self, found: dict[str, Answer], features: Features, f: int, s: int, e: int, score: float) -> None:
        """Count one span: a new answer, or more score for an answer of the same text."""
        offsets, words = features.extra["offsets"][f], features.extra["words"][f]
        if self.options.align_to_words and words[s, 0] >= 0 and words[e, 1] >= 0:
            start, end = int(words[s, 0]), int(words[e, 1])
        else:
            start, end = int(offsets[s, 0]), int(offsets[e, 1])
        text = features.extra["context"][f][start:end]
        key = text.lower()
        if key in found:
            found[key].score += score
        else:
            found[key] = Answer(text, score, start, end)

    def _columns(self, ranked: list[list[Answer] | None]) -> dict[str, pa.Array]:
        best = [answers[0] if answers else None for answers in ranked]
        columns = {
            "answer": pa.array([b.answer if b else None for b in best], pa.string()),
            "score": pa.array([b.score if b else 0.0 for b in best], pa.float32()),
            "start": pa.array([b.start if b else 0 for b in best], pa.int32()),
            "end": pa.array([b.end if b else 0 for b in best], pa.int32()),
        }
        if self.options.top_k > 1:
            listed = [[vars(a) for a in answers] if answers is not None else None for answers in ranked]
            columns["answers"] = pa.array(listed, pa.list_(ANSWER))
        return columns

    def output_schema(self) -> pa.Schema:
        fields = [
            pa.field("answer", pa.string()),
            pa.field("score", pa.float32()),
            pa.field("start", pa.int32()),
            pa.field("end", pa.int32()),
        ]
        if self.options.top_k > 1:
            fields.append(pa.field("answers", pa.list_(ANSWER)))
        return pa.schema(fields)
