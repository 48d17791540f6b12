"""question-answering (extractive): the span of the context that best answers the question.

As in the Transformers pipeline, a context longer than the model's window is cut
into overlapping windows (``doc_stride`` tokens of overlap), each window is one
feature of its row, and the answer is the best span over all of them. A span's
score is p(start) × p(end), each a softmax over the window's context tokens;
spans are at most ``max_answer_length`` tokens. ``start``/``end`` are character
offsets into the context: ``context[start:end] == answer``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipelines.errors import PipelineError
from pipelines.tasks.base import Features, Outputs, Task
from pipelines.tasks.options import QuestionAnsweringOptions


class QuestionAnswering(Task):
    name = "question-answering"
    options_model = QuestionAnsweringOptions
    model_class = "AutoModelForQuestionAnswering"
    options: QuestionAnsweringOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        room = self.max_length - specials - self.options.max_question_length
        if room < 2:
            raise PipelineError(
                f"question-answering: max_length {self.max_length} leaves no room for the context after a question "
                f"of up to {self.options.max_question_length} tokens; raise batching.max_length or lower "
                "task.max_question_length"
            )
        # The tokenizer needs the overlap to be shorter than the context part of every window.
        self.stride = min(self.options.doc_stride, room // 2)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        questions = columns[self.options.question_column]
        contexts = columns[self.options.context_column]
        errors: dict[int, str] = {}
        for i, (question, context) in enumerate(zip(questions, contexts)):
            if not question or not question.strip():
                errors[i] = f"{self.options.question_column} is null or empty"
            elif not context or not context.strip():
                errors[i] = f"{self.options.context_column} is null or empty"
        rows = [i for i in range(len(texts)) if i not in errors]
        if rows:
            lengths = self.tokenizer([questions[i] for i in rows], add_special_tokens=False)["input_ids"]
            for i, ids in zip(rows, lengths):
                if len(ids) > self.options.max_question_length:
                    limit = self.options.max_question_length
                    errors[i] = f"question longer than max_question_length ({len(ids)} > {limit} tokens)"
            rows = [i for i in rows if i not in errors]
        if not rows:
            return Features(tokens={}, row=np.zeros(0, np.int64), errors=errors)
        encoding = self.tokenizer(
            [questions[i] for i in rows],
            [contexts[i] for i in rows],
            truncation="only_second",
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        owner = np.asarray(rows, dtype=np.int64)[np.asarray(encoding["overflow_to_sample_mapping"], dtype=np.int64)]
        features = Features.one_per_row(encoding)
        features.row = owner
        features.errors = errors
        n = len(owner)
        in_context = np.empty(n, dtype=object)
        offsets = np.empty(n, dtype=object)
        context_text = np.empty(n, dtype=object)
        for f in range(n):
            context_text[f] = contexts[owner[f]]
            sequence = encoding.sequence_ids(f)
            in_context[f] = np.array([s == 1 for s in sequence], dtype=bool)
            offsets[f] = np.asarray(encoding["offset_mapping"][f], dtype=np.int64).reshape(-1, 2)
        features.extra = {"in_context": in_context, "offsets": offsets, "context": context_text}
        return features

    def forward(self, model, inputs, extra):
        output = model(**inputs)
        start, end = output.start_logits.float(), output.end_logits.float()
        batch, width = start.shape
        context = torch.zeros(batch, width, dtype=torch.bool, device=start.device)
        for i, flags in enumerate(extra["in_context"]):  # right-padded: flags cover the first len(flags) positions
            context[i, : len(flags)] = torch.from_numpy(flags)
        log_start = start.masked_fill(~context, float("-inf")).log_softmax(-1)
        log_end = end.masked_fill(~context, float("-inf")).log_softmax(-1)
        longest = self.options.max_answer_length
        # spans[b, i, k]: start at token i, end at token i + k (k < max_answer_length)
        ends = F.pad(log_end, (0, longest - 1), value=float("-inf")).unfold(1, longest, 1)
        spans = (log_start[:, :, None] + ends).reshape(batch, -1)
        best = spans.argmax(dim=1)
        score = spans.gather(1, best[:, None])[:, 0].exp().nan_to_num(0.0)
        first = best // longest
        return {
            "start_token": first.cpu().numpy(),
            "end_token": (first + best % longest).cpu().numpy(),
            "score": score.cpu().numpy(),
        }

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        score = outputs.stacked("score")
        first, last = outputs.stacked("start_token"), outputs.stacked("end_token")
        # the best window of each row: sort by row, then score descending; take each row's first
        order = np.lexsort((-score, features.row))
        rows, at = np.unique(features.row[order], return_index=True)
        chosen = order[at]
        answer = np.full(n_rows, None, dtype=object)
        best_score = np.zeros(n_rows, dtype=np.float32)
        start = np.zeros(n_rows, dtype=np.int32)
        end = np.zeros(n_rows, dtype=np.int32)
        for row, f in zip(rows, chosen):
            offsets = features.extra["offsets"][f]
            start[row], end[row] = offsets[first[f], 0], offsets[last[f], 1]
            answer[row] = features.extra["context"][f][start[row] : end[row]]
            best_score[row] = score[f]
        return {
            "answer": pa.array(answer, pa.string()),
            "score": pa.array(best_score),
            "start": pa.array(start),
            "end": pa.array(end),
        }

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("answer", pa.string()),
                pa.field("score", pa.float32()),
                pa.field("start", pa.int32()),
                pa.field("end", pa.int32()),
            ]
        )
