"""Tests for the tiny model factory in ``tests/tiny_models.py``.

Every kind is built into a temporary directory and reloaded through the public
``AutoTokenizer`` / ``AutoModel*`` ``from_pretrained`` path, then run forward
(and ``generate`` for the generative kinds) on a padded batch of two sentences.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

try:
    from tiny_models import (
        CLASSIFIER_LABELS,
        KINDS,
        MODEL_MAX_LENGTH,
        NER_LABELS,
        NLI_LABELS,
        build_tiny_model,
    )
except ImportError:  # ``tests`` imported as a package
    from tests.tiny_models import (
        CLASSIFIER_LABELS,
        KINDS,
        MODEL_MAX_LENGTH,
        NER_LABELS,
        NLI_LABELS,
        build_tiny_model,
    )

SENTENCES = ["Obama visited Paris and London with friends from Google.", "Great movie!"]
NEW_TOKENS = 3

AUTO_CLASSES = {
    "encoder": AutoModel,
    "classifier": AutoModelForSequenceClassification,
    "nli": AutoModelForSequenceClassification,
    "token-classifier": AutoModelForTokenClassification,
    "qa": AutoModelForQuestionAnswering,
    "mlm": AutoModelForMaskedLM,
    "causal": AutoModelForCausalLM,
    "gpt2": AutoModelForCausalLM,
    "llama-classifier": AutoModelForSequenceClassification,
    "seq2seq": AutoModelForSeq2SeqLM,
    "regression": AutoModelForSequenceClassification,
    "multi-label": AutoModelForSequenceClassification,
    "nli-binary": AutoModelForSequenceClassification,
    "nli-nec": AutoModelForSequenceClassification,
    "qa-squad2": AutoModelForQuestionAnswering,
}
BERT_KINDS = ("encoder", "classifier", "nli", "token-classifier", "qa", "mlm")
DECODER_KINDS = ("causal", "gpt2", "llama-classifier")
LABELS = {
    "classifier": CLASSIFIER_LABELS,
    "nli": NLI_LABELS,
    "token-classifier": NER_LABELS,
    "llama-classifier": CLASSIFIER_LABELS,
}


def _load(kind: str, path: Path):
    directory = build_tiny_model(kind, path / kind)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AUTO_CLASSES[kind].from_pretrained(directory).eval()
    return tokenizer, model


def _padded_batch(tokenizer, kind: str):
    if kind in DECODER_KINDS:
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def _expected_shape(kind: str, model, batch: int, length: int) -> dict[str, tuple[int, ...]]:
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    num_labels = model.config.num_labels
    return {
        "encoder": {"last_hidden_state": (batch, length, hidden)},
        "classifier": {"logits": (batch, num_labels)},
        "nli": {"logits": (batch, num_labels)},
        "token-classifier": {"logits": (batch, length, num_labels)},
        "qa": {"start_logits": (batch, length), "end_logits": (batch, length)},
        "mlm": {"logits": (batch, length, vocab)},
        "causal": {"logits": (batch, length, vocab)},
        "gpt2": {"logits": (batch, length, vocab)},
        "llama-classifier": {"logits": (batch, num_labels)},
        "seq2seq": {"logits": (batch, 1, vocab)},
        "regression": {"logits": (batch, 1)},
        "multi-label": {"logits": (batch, num_labels)},
        "nli-binary": {"logits": (batch, 2)},
        "nli-nec": {"logits": (batch, 3)},
        "qa-squad2": {"start_logits": (batch, length), "end_logits": (batch, length)},
    }[kind]


def _forward(kind: str, model, inputs):
    if kind == "seq2seq":
        start = torch.full((inputs["input_ids"].shape[0], 1), model.config.decoder_start_token_id)
        return model(**inputs, decoder_input_ids=start)
    return model(**inputs)


def test_kinds_match_auto_classes():
    assert set(KINDS) == set(AUTO_CLASSES)


def test_unknown_kind_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model kind"):
        build_tiny_model("nope", tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_build_reload_and_run(kind, tmp_path):
    tokenizer, model = _load(kind, tmp_path)
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH
    assert model.config.vocab_size == len(tokenizer)
    assert sum(f.stat().st_size for f in (tmp_path / kind).iterdir()) < 2 * 1024 * 1024

    inputs = _padded_batch(tokenizer, kind)
    if kind == "llama-classifier":  # a decoder classifier batches only once its config knows the pad token
        assert model.config.pad_token_id is None
        model.config.pad_token_id = tokenizer.pad_token_id
    batch, length = inputs["input_ids"].shape
    assert batch == 2 and bool((inputs["attention_mask"] == 0).any())
    with torch.no_grad():
        outputs = _forward(kind, model, inputs)
    for name, shape in _expected_shape(kind, model, batch, length).items():
        assert tuple(outputs[name].shape) == shape, name


@pytest.mark.parametrize("kind", ["causal", "gpt2", "seq2seq"])
def test_generate(kind, tmp_path):
    tokenizer, model = _load(kind, tmp_path)
    inputs = _padded_batch(tokenizer, kind)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    prefix = 1 if kind == "seq2seq" else inputs["input_ids"].shape[1]
    assert tuple(generated.shape) == (2, prefix + NEW_TOKENS)


@pytest.mark.parametrize("kind", LABELS)
def test_label_maps(kind, tmp_path):
    _, model = _load(kind, tmp_path)
    assert model.config.id2label == dict(enumerate(LABELS[kind]))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS[kind])}


def test_bert_tokenizer_pairs_offsets_and_mask(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("mlm", tmp_path))
    question, context = "Where is Paris?", "Paris is in France."
    encoding = tokenizer(question, context, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert encoding["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    start, end = encoding["offset_mapping"][first_sep + 1]
    assert context[start:end].lower() == tokens[first_sep + 1]
    masked = tokenizer("Paris is the capital of [MASK].")["input_ids"]
    assert tokenizer.mask_token == "[MASK]" and tokenizer.mask_token_id in masked


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_decoder_tokenizers_have_eos_but_no_pad(kind, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(kind, tmp_path))
    assert tokenizer.eos_token is not None
    assert tokenizer.pad_token is None and tokenizer.pad_token_id is None


def test_causal_chat_template(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("causal", tmp_path))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith(tokenizer.bos_token) and text.endswith("<|assistant|>\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_seq2seq_special_tokens(tmp_path):
    directory = build_tiny_model("seq2seq", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = AutoModelForSeq2SeqLM.from_pretrained(directory).config
    assert config.pad_token_id == tokenizer.pad_token_id == config.decoder_start_token_id
    assert config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer("Hello")["input_ids"][-1] == tokenizer.eos_token_id


def test_build_is_deterministic(tmp_path):
    first = Path(build_tiny_model("classifier", tmp_path / "a"))
    second = Path(build_tiny_model("classifier", tmp_path / "b"))
    for name in ("model.safetensors", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
