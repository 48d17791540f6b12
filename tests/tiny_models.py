"""Tiny, deterministic Hugging Face models and tokenizers for the test-suite.

``build_tiny_model(kind, path)`` builds a randomly initialised (seeded) model of
the requested ``kind`` together with a tokenizer built locally from a small
embedded English corpus, and writes both with ``save_pretrained`` into ``path``.
Tests can then load them through the real ``AutoTokenizer.from_pretrained`` /
``AutoModel*.from_pretrained`` code path without any network access.

Kinds:

* ``encoder``          BERT ``AutoModel`` (embeddings / feature extraction)
* ``classifier``       BERT ``AutoModelForSequenceClassification`` (negative/neutral/positive)
* ``nli``              BERT ``AutoModelForSequenceClassification`` (contradiction/neutral/entailment)
* ``token-classifier`` BERT ``AutoModelForTokenClassification`` (BIO tags for PER/LOC/ORG)
* ``qa``               BERT ``AutoModelForQuestionAnswering``
* ``mlm``              BERT ``AutoModelForMaskedLM``
* ``causal``           Llama ``AutoModelForCausalLM`` (eos, no pad token, chat template)
* ``gpt2``             GPT-2 ``AutoModelForCausalLM`` (no pad token)
* ``llama-classifier`` Llama ``AutoModelForSequenceClassification`` (negative/neutral/positive; no pad token
  in tokenizer or config, like most decoder classifiers)
* ``seq2seq``          T5 ``AutoModelForSeq2SeqLM``
* ``regression``       BERT sequence classifier with one output, ``problem_type: regression``
* ``multi-label``      BERT sequence classifier, ``problem_type: multi_label_classification``
* ``nli-binary``       BERT NLI model with two classes (entailment/not_entailment)
* ``nli-nec``          BERT NLI model ordered neutral/entailment/contradiction
* ``qa-squad2``        BERT ``AutoModelForQuestionAnswering`` whose [CLS] logits stand out ("no answer")

The kinds from ``regression`` on have larger weights, for clear margins between labels.

BERT-style tokenizers are uncased WordPiece (ids 0-4: ``[PAD] [UNK] [CLS] [SEP]
[MASK]``); the causal ones are byte-level BPE without a pad token (Llama:
``<s>``/``</s>``, GPT-2: ``<|endoftext|>``); the T5 one is a Metaspace BPE with
``<pad>`` (0, also the decoder start), ``</s>`` (1) and ``<unk>`` (2).  All
have ``model_max_length == 128``.  Builds are byte-for-byte reproducible.
"""

from __future__ import annotations

import os
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

__all__ = [
    "CHAT_TEMPLATE",
    "CLASSIFIER_LABELS",
    "KINDS",
    "MODEL_MAX_LENGTH",
    "NER_LABELS",
    "NLI_BINARY_LABELS",
    "NLI_LABELS",
    "NLI_NEC_LABELS",
    "build_tiny_model",
]

MODEL_MAX_LENGTH = 128
SEED = 0

CLASSIFIER_LABELS = ("negative", "neutral", "positive")
NLI_LABELS = ("contradiction", "neutral", "entailment")
NLI_BINARY_LABELS = ("entailment", "not_entailment")
NLI_NEC_LABELS = ("neutral", "entailment", "contradiction")  # the order the pipeline misreads
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = (
    "Paris is the capital of France and one of the most visited cities in Europe.",
    "London is the capital of the United Kingdom.",
    "Barack Obama was the president of the United States from 2009 to 2017.",
    "Obama visited Paris and London during his trip to Europe.",
    "Google announced a new search product in California on Monday.",
    "Microsoft and Google compete in the cloud computing market.",
    "Angela Merkel met the French president in Berlin.",
    "The company reported strong earnings for the third quarter.",
    "Shares of Apple rose after the quarterly report was published.",
    "The weather in London was rainy and cold this weekend.",
    "Scientists discovered a new species of frog in the Amazon rainforest.",
    "The football team won the championship after a dramatic final match.",
    "The government announced new rules for electric cars.",
    "Tokyo will host an international conference on climate change.",
    "Amazon opened a new office in Seattle, Washington.",
    "The museum in Rome welcomed thousands of visitors yesterday.",
    "This movie was great, I loved every minute of it!",
    "The food was terrible and the service was even worse.",
    "What a good book, the story is simple but very moving.",
    "I had a bad experience with this product and want a refund.",
    "The hotel room was clean, quiet and comfortable.",
    "Absolutely terrible customer support, I will never come back.",
    "It was an okay film, nothing special but not bad either.",
    "Great phone with an excellent battery and a beautiful screen.",
    "The restaurant was good, although the prices were a bit high.",
    "I think this is the best album of the year.",
    "The plot was boring and the actors were not convincing.",
    "My friends and I really enjoyed the concert last night.",
    "Who is the president of France?",
    "Where is the Eiffel Tower located?",
    "What is the capital of England?",
    "How many people live in Paris?",
    "When did the company release its first product?",
    "The cat sat on the mat and looked out of the window.",
    "A man is playing a guitar on the street.",
    "Two dogs are running through a field of green grass.",
    "The children were happy because school was over for the summer.",
    "She said that the answer was wrong, but he did not agree.",
    "Please translate this sentence into German.",
    "Summarize the following article in one sentence.",
    "Hello, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers like 1, 2, 3, 42 and 100 appear in many texts.",
    "This example is about politics, sports, business or technology.",
)

ASCII_ALPHABET = list(string.ascii_letters + string.digits + string.punctuation)
BERT_ALPHABET = list(string.ascii_lowercase + string.digits + string.punctuation)
WORDPIECE_SUFFIXES = tuple(
    f"##{suffix}" for suffix in ("s", "es", "ed", "ing", "ly", "er", "est", "ion", "al", "ment", "ness", "able", "ful")
)


# --------------------------------------------------------------------------- tokenizers


def _train(tokenizer: Tokenizer, trainer: trainers.Trainer) -> Tokenizer:
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    """Build a WordPiece vocabulary deterministically.

    ``WordPieceTrainer`` (and ``BpeTrainer`` with a ``##`` prefix) learn a
    different vocabulary from run to run, so the vocabulary is assembled by hand:
    special tokens, every character with and without ``##`` (so any lower-cased
    ASCII word can be tokenized without ``[UNK]``), common English suffixes and
    every corpus word, most frequent first.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for sentence in CORPUS
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence))
    )
    words = sorted(counts, key=lambda word: (-counts[word], word))
    pieces = [*specials, *BERT_ALPHABET, *(f"##{char}" for char in BERT_ALPHABET), *WORDPIECE_SUFFIXES, *words]
    return {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}


def _wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-style uncased WordPiece tokenizer with a ``[CLS] a [SEP] b [SEP]`` template."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(_wordpiece_vocab(specials), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MODEL_MAX_LENGTH,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _byte_level_tokenizer(bos: str, eos: str, *, prepend_bos: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer (GPT-2 / Llama-3 style) without a pad token."""
    specials = list(dict.fromkeys([bos, eos]))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    _train(tokenizer, trainer)
    byte_level = processors.ByteLevel(trim_offsets=False)
    if prepend_bos:
        template = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
        tokenizer.post_processor = processors.Sequence([byte_level, template])
    else:
        tokenizer.post_processor = byte_level
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=bos,
        eos_token=eos,
        unk_token=None,
        model_input_names=["input_ids", "attention_mask"],
    )


def _llama_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = _byte_level_tokenizer("<s>", "</s>", prepend_bos=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _gpt2_tokenizer() -> PreTrainedTokenizerFast:
    return _byte_level_tokenizer("<|endoftext|>", "<|endoftext|>", prepend_bos=False)


def _t5_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-like (Metaspace) BPE tokenizer appending ``</s>`` like T5."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=ASCII_ALPHABET, show_progress=False
    )
    _train(tokenizer, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MODEL_MAX_LENGTH,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )


# --------------------------------------------------------------------------- models


def _labels(names: tuple[str, ...]) -> dict:
    id2label = dict(enumerate(names))
    return {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}


def _bert_config(tokenizer: PreTrainedTokenizerFast, **extra) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _llama_config(tokenizer: PreTrainedTokenizerFast, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        **extra,
    )


def _llama_classifier_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return _llama_config(tokenizer, **_labels(CLASSIFIER_LABELS))


def _gpt2_config(tokenizer: PreTrainedTokenizerFast) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        n_positions=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )


def _t5_config(tokenizer: PreTrainedTokenizerFast) -> T5Config:
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


Builder = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerFast]]


def _bert(model_cls: type[PreTrainedModel], **extra) -> Builder:
    def build() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
        tokenizer = _wordpiece_tokenizer()
        return model_cls(_bert_config(tokenizer, **extra)), tokenizer

    return build


def _generative(
    model_cls: type[PreTrainedModel],
    make_tokenizer: Callable[[], PreTrainedTokenizerFast],
    make_config: Callable[[PreTrainedTokenizerFast], object],
) -> Builder:
    def build() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
        tokenizer = make_tokenizer()
        return model_cls(make_config(tokenizer)), tokenizer

    return build


def _squad2(lift: float) -> Builder:
    """A QA model whose [CLS] start and end logits stand ``lift`` above the other tokens' on average, as in a
    model trained on SQuAD2: "no answer" wins on some rows and not on others."""

    def build() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
        model, tokenizer = _bert(BertForQuestionAnswering)()
        model.eval()
        inputs = tokenizer(list(CORPUS[28:33]), list(CORPUS[:5]), padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model.bert(**inputs).last_hidden_state
            others = inputs["attention_mask"].bool()
            others[:, 0] = False
            direction = hidden[:, 0].mean(0) - hidden[others].mean(0)
            model.qa_outputs.weight += lift * direction / direction.norm() ** 2
        return model, tokenizer

    return build


# Kinds added for the parity suite have larger weights (initializer_range 0.2): clear margins between labels.
SHARP = {"initializer_range": 0.2}

_BUILDERS: dict[str, Builder] = {
    "encoder": _bert(BertModel),
    "classifier": _bert(BertForSequenceClassification, **_labels(CLASSIFIER_LABELS)),
    "nli": _bert(BertForSequenceClassification, **_labels(NLI_LABELS)),
    "token-classifier": _bert(BertForTokenClassification, **_labels(NER_LABELS)),
    "qa": _bert(BertForQuestionAnswering),
    "mlm": _bert(BertForMaskedLM),
    "causal": _generative(LlamaForCausalLM, _llama_tokenizer, _llama_config),
    "gpt2": _generative(GPT2LMHeadModel, _gpt2_tokenizer, _gpt2_config),
    "llama-classifier": _generative(LlamaForSequenceClassification, _llama_tokenizer, _llama_classifier_config),
    "seq2seq": _generative(T5ForConditionalGeneration, _t5_tokenizer, _t5_config),
    "regression": _bert(BertForSequenceClassification, num_labels=1, problem_type="regression", **SHARP),
    "multi-label": _bert(
        BertForSequenceClassification, problem_type="multi_label_classification", **SHARP, **_labels(CLASSIFIER_LABELS)
    ),
    "nli-binary": _bert(BertForSequenceClassification, **SHARP, **_labels(NLI_BINARY_LABELS)),
    "nli-nec": _bert(BertForSequenceClassification, **SHARP, **_labels(NLI_NEC_LABELS)),
    "qa-squad2": _squad2(lift=1.0),
}

KINDS: tuple[str, ...] = tuple(_BUILDERS)


def build_tiny_model(kind: str, path: str | os.PathLike) -> str:
    """Build model+tokenizer of ``kind``, ``save_pretrained`` both into ``path``, return ``str(path)``."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {KINDS}")
    torch.manual_seed(SEED)
    model, tokenizer = _BUILDERS[kind]()
    model.eval()
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)
