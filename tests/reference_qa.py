"""The Transformers 4.57 question-answering pipeline's rule, re-implemented for the parity tests.

Transformers 5 no longer ships the question-answering pipeline. This module
redoes, step by step and one window at a time (no padding, no batching), what
``QuestionAnsweringPipeline`` of transformers 4.57 does with a fast tokenizer
whose padding side is right (question first), so that the project's task can be
compared with it row by row. ``test_parity.py`` checks this module against the
real 4.57 pipeline where one can be installed.

The steps (``preprocess``, ``select_starts_ends``, ``decode_spans``,
``postprocess``, ``get_indices`` and ``get_answer`` in 4.57):

1. tokenize (question, context): ``only_second`` truncation to ``max_seq_len``
   with ``doc_stride`` overlap; every window is one model call;
2. mask every token that is not context, except tokens equal to [CLS], with
   -10000 and softmax start and end logits separately over the window;
3. the no-answer score is p_start[0] × p_end[0] (the lowest over windows);
   then p_start[0] and p_end[0] are set to 0;
4. the candidate spans are the upper band of the outer product p_start ⊗ p_end
   (end ≥ start, end - start < max_answer_len); the best ``2·top_k + 10`` of them
   (``top_k`` without align_to_words) by argmax (one) or argpartition + argsort
   (several), kept if their start and end are context or [CLS] tokens;
5. each span becomes characters: the start word's first character to the end
   word's last (``align_to_words``; the token offsets where a token has no word),
   or the tokens' offsets; an answer whose text equals (ignoring case) one found
   before adds its score to that one; otherwise it is a new answer;
6. with handle_impossible_answer the empty answer (start 0, end 0) is added;
   answers are sorted by score (stable) and the first ``top_k`` kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum()


def _best_spans(start: np.ndarray, end: np.ndarray, wanted: int, longest: int, allowed: np.ndarray):
    """Step 4: (starts, ends, scores) of the best ``wanted`` spans among allowed tokens."""
    outer = np.matmul(start[None, :, None], end[None, None, :])
    band = np.tril(np.triu(outer), longest - 1)
    flat = band.flatten()
    if wanted == 1:
        picked = [np.argmax(flat)]
    elif len(flat) < wanted:
        picked = np.argsort(-flat)
    else:
        part = np.argpartition(-flat, wanted)[0:wanted]
        picked = part[np.argsort(-flat[part])]
    starts, ends = np.unravel_index(picked, band.shape)[1:]
    keep = np.isin(starts, allowed.nonzero()) & np.isin(ends, allowed.nonzero())
    starts, ends = starts[keep], ends[keep]
    return starts, ends, band[0, starts, ends]


def _characters(encoding: Any, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Step 5: the character span of tokens s..e of the context."""
    if align_to_words:
        try:
            first = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)
            last = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)
            return first[0], last[1]
        except Exception:  # a token without a word: its own offsets, as 4.57 falls back
            pass
    return encoding.offsets[s][0], encoding.offsets[e][1]


def reference_answers(
    model: Any,
    tokenizer: Any,
    question: str,
    context: str,
    *,
    max_seq_len: int,
    doc_stride: int,
    top_k: int = 1,
    max_answer_len: int = 15,
    handle_impossible_answer: bool = False,
    align_to_words: bool = True,
) -> list[dict]:
    """The 4.57 pipeline's answers for one (question, context), best first: answer, score, start, end."""
    encoded = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_token_type_ids=True,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    wanted = top_k * 2 + 10 if align_to_words else top_k
    null_score = 1000000.0
    answers: list[dict] = []
    for window in range(len(encoded["input_ids"])):
        ids = np.array(encoded["input_ids"][window])
        allowed = np.array([s == 1 for s in encoded.sequence_ids(window)], dtype=np.int64)
        allowed[ids == tokenizer.cls_token_id] = 1
        inputs = {k: torch.tensor([encoded[k][window]]) for k in tokenizer.model_input_names if k in encoded}
        with torch.inference_mode():
            output = model(**inputs)
        start = np.where(allowed == 0, -10000.0, output.start_logits[0].float().numpy())
        end = np.where(allowed == 0, -10000.0, output.end_logits[0].float().numpy())
        start, end = _softmax(start), _softmax(end)
        if handle_impossible_answer:
            null_score = min(null_score, float(start[0] * end[0]))
        start[0] = end[0] = 0.0
        encoding = encoded.encodings[window]
        for s, e, score in zip(*_best_spans(start, end, wanted, max_answer_len, allowed)):
            first, last = _characters(encoding, int(s), int(e), align_to_words)
            text = context[first:last]
            same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += float(score)
            else:
                answers.append({"score": float(score), "start": first, "end": last, "answer": text})
    if handle_impossible_answer:
        answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def run_real_pipeline() -> None:
    """Run as a script where ``transformers`` is 4.57: read a JSON list of {"model", "cases"} on stdin and print
    the real pipeline's answers (per model, a list per case). A tokenizer saved by Transformers 5 is loaded from
    its tokenizer.json."""
    import json
    import sys

    import transformers
    from transformers import AutoModelForQuestionAnswering, PreTrainedTokenizerFast, pipeline

    torch.set_num_threads(1)
    names = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token")
    results = []
    for request in json.load(sys.stdin):
        directory = request["model"]
        with open(f"{directory}/tokenizer_config.json") as f:
            config = json.load(f)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=f"{directory}/tokenizer.json",
            model_max_length=config.get("model_max_length"),
            **{name: config[name] for name in names if config.get(name)},
        )
        model = AutoModelForQuestionAnswering.from_pretrained(directory)
        answer = pipeline("question-answering", model=model, tokenizer=tokenizer)
        answers = []
        for case in request["cases"]:
            found = answer(question=case["question"], context=case["context"], **case["options"])
            answers.append(found if isinstance(found, list) else [found])
        results.append(answers)
    print(json.dumps({"transformers": transformers.__version__, "answers": results}))


if __name__ == "__main__":
    run_real_pipeline()
