"""llm-label with a tiny causal LM: exact label log-likelihoods, right tokens at the boundary, batch-proof."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import SENTENCES, batch_of, make_spec
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.errors import PipelineError
from pipelines.inference.predictor import ERROR, Predictor

LABELS = ["positive", "negative", "not sure at all"]
TEMPLATE = "Review: {text}\nSentiment:"


def label_loglik(model, tokenizer, prompt: str, continuation: str) -> tuple[float, int]:
    """Sum of log p(continuation tokens | prompt), the prompt and prompt+continuation each run alone."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + continuation)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids
    with torch.inference_mode():
        logp = model(torch.tensor([full])).logits[0].log_softmax(-1)
    total = sum(float(logp[t - 1, full[t]]) for t in range(len(prompt_ids), len(full)))
    return total, len(full) - len(prompt_ids)


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_scores_are_softmaxed_label_log_likelihoods(tiny_models, normalize):
    model_dir = tiny_models("causal")
    task = {"type": "llm-label", "candidate_labels": LABELS, "prompt_template": TEMPLATE, "normalize": normalize}
    predictor = Predictor(make_spec(model_dir, task, batching={"min_fill": 0}))
    assert predictor.task.padding_side == "right"
    out = predictor(batch_of(SENTENCES))
    assert out.schema.field("label").type == pa.string() and out.schema.field("score").type == pa.float32()
    assert out.schema.field("scores").type == pa.struct([(label, pa.float32()) for label in LABELS])

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for text, row in zip(SENTENCES, out.to_pylist()):
        values = [label_loglik(model, tokenizer, TEMPLATE.format(text=text), " " + label) for label in LABELS]
        ranked = np.array([total / (count if normalize == "mean" else 1) for total, count in values])
        expected = np.exp(ranked - ranked.max()) / np.exp(ranked - ranked.max()).sum()
        assert [row["scores"][label] for label in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)
        assert row["label"] == LABELS[int(expected.argmax())]
        assert row["score"] == pytest.approx(expected.max(), abs=1e-6)


def test_label_tokens_are_the_ones_the_model_would_write(tiny_models):
    """A trailing space in the template moves into the label: ' positive' is scored, not ' ' + 'positive'."""
    model_dir = tiny_models("causal")
    task = {"type": "llm-label", "candidate_labels": LABELS, "prompt_template": "Review: {text}\nSentiment: "}
    predictor = Predictor(make_spec(model_dir, task))
    features = predictor.task.encode(["great"], {})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for i, label in enumerate(LABELS):
        ids = features.tokens["input_ids"].row(i).tolist()
        assert ids == tokenizer(f"Review: great\nSentiment: {label}")["input_ids"]
        assert features.extra["label_start"][i] == len(tokenizer("Review: great\nSentiment:")["input_ids"])
    assert features.row.tolist() == [0, 0, 0]


def test_labels_do_not_depend_on_the_batch(tiny_models):
    task = {"type": "llm-label", "candidate_labels": LABELS, "prompt_template": TEMPLATE}
    predictor = Predictor(make_spec(tiny_models("causal"), task))
    together = predictor(batch_of(SENTENCES)).to_pylist()
    for i in (3, 4):
        alone = predictor(batch_of([SENTENCES[i]], [f"r{i}"])).to_pylist()[0]
        assert alone["scores"] == pytest.approx(together[i]["scores"], abs=1e-5)


def test_chat_prompts_and_row_errors(tiny_models):
    model_dir = tiny_models("causal")
    task = {
        "type": "llm-label",
        "candidate_labels": ["yes", "no"],
        "chat": True,
        "system_prompt": "Answer yes or no.",
        "prompt_template": "Is this about {topic}? {text}",
    }
    predictor = Predictor(make_spec(model_dir, task))
    batch = batch_of(SENTENCES[:3]).append_column("topic", pa.array(["sports", None, "science"]))
    rows = predictor(batch).to_pylist()
    assert rows[1][ERROR] == "prompt column 'topic' is null" and rows[1]["label"] is None
    assert rows[0]["label"] in {"yes", "no"} and rows[2][ERROR] is None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "Answer yes or no."},
        {"role": "user", "content": f"Is this about sports? {SENTENCES[0]}"},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    features = predictor.task.encode([SENTENCES[0]], {"topic": ["sports"]})
    assert features.tokens["input_ids"].row(0).tolist()[: len(prompt)] == prompt
    # with chat the label follows the assistant header directly, without a space
    assert (
        features.tokens["input_ids"].row(0).tolist()[len(prompt) :]
        == tokenizer("yes", add_special_tokens=False)["input_ids"]
    )


def test_long_prompts_keep_their_end(tiny_models):
    task = {"type": "llm-label", "candidate_labels": ["positive", "negative"], "prompt_template": TEMPLATE}
    predictor = Predictor(make_spec(tiny_models("causal"), task, batching={"max_length": 24}))
    features = predictor.task.encode(["word " * 100], {})
    tokenizer = AutoTokenizer.from_pretrained(tiny_models("causal"))
    ids = features.tokens["input_ids"].row(0).tolist()
    assert len(ids) <= 24 and features.truncated.tolist() == [True]
    assert ids[0] == tokenizer.bos_token_id  # the special prefix survives
    assert tokenizer.decode(ids).endswith("\nSentiment: positive")


def test_llm_label_needs_a_chat_template_for_chat(tiny_models):
    task = {"type": "llm-label", "candidate_labels": ["a", "b"], "chat": True}
    with pytest.raises(PipelineError, match="no chat template"):
        Predictor(make_spec(tiny_models("gpt2"), task))
