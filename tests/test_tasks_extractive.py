"""question-answering, token-classification, fill-mask and decoder embeddings with tiny models.

Where Transformers still has the pipeline (token-classification, fill-mask) the
results are compared with it; question answering with the 4.57 pipeline's rule
(``reference_qa``). ``test_parity.py`` holds the full comparison.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import SENTENCES, batch_of, make_spec
from reference_qa import reference_answers
from transformers import AutoModel, AutoModelForQuestionAnswering, AutoTokenizer, pipeline

from pipelines.inference.predictor import ERROR, Predictor
from pipelines.tasks.feature_extraction import pool

# question answering --------------------------------------------------------------------------

CONTEXT = (
    "Paris is the capital of France and one of the most visited cities in Europe. "
    "The Eiffel Tower is located in Paris. London is the capital of the United Kingdom. "
    "Obama visited Paris and London during his trip to Europe. Tokyo will host an international "
    "conference on climate change. Scientists discovered a new species of frog in the Amazon rainforest. "
    "The museum in Rome welcomed thousands of visitors yesterday."
)
QA = {"type": "question-answering", "doc_stride": 8, "max_question_length": 16, "max_answer_length": 6}
QA_MAX_LENGTH = 48


def test_question_answering_finds_the_best_span_over_all_windows(tiny_models):
    model_dir = tiny_models("qa")
    spec = make_spec(model_dir, QA, batching={"max_length": QA_MAX_LENGTH})
    batch = pa.table(
        {
            "id": ["long", "short", "no-question", "long-question"],
            "text": ["x"] * 4,
            "question": ["Where is the Eiffel Tower located?", "Who visited Paris?", None, "why " * 40],
            "context": [CONTEXT, "Obama visited Paris.", CONTEXT, CONTEXT],
        }
    )
    predictor = Predictor(spec)
    out = predictor(batch)
    assert [out.schema.field(n).type for n in ("answer", "score", "start", "end")] == [
        pa.string(),
        pa.float32(),
        pa.int32(),
        pa.int32(),
    ]
    rows = out.to_pylist()
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for row in rows[:2]:
        expected = reference_answers(
            model, tokenizer, row["question"], row["context"], max_seq_len=QA_MAX_LENGTH,
            doc_stride=QA["doc_stride"], max_answer_len=QA["max_answer_length"],
        )[0]
        assert (row["start"], row["end"], row["answer"]) == (expected["start"], expected["end"], expected["answer"])
        assert row["score"] == pytest.approx(expected["score"], rel=1e-4)
        assert row["context"][row["start"] : row["end"]] == row["answer"]
    windows = tokenizer(rows[0]["question"], CONTEXT, truncation="only_second", max_length=QA_MAX_LENGTH,
                        stride=QA["doc_stride"], return_overflowing_tokens=True)["input_ids"]
    assert len(windows) >= 3
    assert rows[0]["_tokens"] > QA_MAX_LENGTH  # several windows were run for the long context
    assert rows[2][ERROR] == "question is null or empty" and rows[2]["answer"] is None
    assert rows[3][ERROR].startswith("question longer than max_question_length")
    # the same row alone gives the same answer
    alone = predictor(batch.slice(1, 1)).to_pylist()[0]
    assert (alone["answer"], alone["start"]) == (rows[1]["answer"], rows[1]["start"])


def test_a_question_or_context_of_characters_the_tokenizer_drops_is_quarantined(tiny_models):
    """A context of zero-width spaces left the model no context token: the row was written with answer null, score
    0 and start = end = 0; a question of them was answered as if no question had been asked."""
    spec = make_spec(tiny_models("qa"), QA, batching={"max_length": QA_MAX_LENGTH})
    batch = pa.table({"id": ["ok", "context", "question"], "text": ["x"] * 3,
                      "question": ["Who visited Paris?", "Who visited Paris?", "\u200b\ufeff"],
                      "context": ["Obama visited Paris.", "\u200b\u200b", "Obama visited Paris."]})
    out = Predictor(spec)(batch).to_pylist()
    assert [row[ERROR] for row in out] == [None, "context has no tokens (only characters the tokenizer drops)",
                                           "question has no tokens (only characters the tokenizer drops)"]
    assert isinstance(out[0]["answer"], str) and out[1]["answer"] is None


# token classification ------------------------------------------------------------------------

NER_TEXTS = [
    "Barack Obama visited Paris and London during his trip to Europe.",
    "Angela Merkel met the French president in Berlin.",
    "Microsoft and Google compete in the cloud computing market.",
    "unbelievably",
]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_the_transformers_pipeline(tiny_models, strategy):
    model_dir = tiny_models("token-classifier")
    spec = make_spec(model_dir, {"type": "token-classification", "aggregation_strategy": strategy})
    out = Predictor(spec)(batch_of(NER_TEXTS))
    assert out.schema.field("entities").type == pa.list_(
        pa.struct(
            [
                ("entity_group", pa.string()),
                ("score", pa.float32()),
                ("word", pa.string()),
                ("start", pa.int32()),
                ("end", pa.int32()),
            ]
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pipeline("token-classification", model=model_dir, aggregation_strategy=strategy)
        expected = reference(NER_TEXTS)
    for text, row, wanted in zip(NER_TEXTS, out.to_pylist(), expected):
        got = [(e["entity_group"], e["start"], e["end"]) for e in row["entities"]]
        assert got == [(w.get("entity_group", w.get("entity")), w["start"], w["end"]) for w in wanted]
        assert [e["score"] for e in row["entities"]] == pytest.approx([float(w["score"]) for w in wanted], abs=1e-5)
        assert all(e["word"] == text[e["start"] : e["end"]] for e in row["entities"])
    assert len(out.to_pylist()[0]["entities"]) > 0


# fill-mask -----------------------------------------------------------------------------------


def test_fill_mask_matches_the_transformers_pipeline_and_flags_rows_without_mask(tiny_models):
    model_dir = tiny_models("mlm")
    spec = make_spec(model_dir, {"type": "fill-mask", "top_k": 3, "mask_placeholder": "<mask>"})
    texts = ["Paris is the <mask> of France.", "no mask here", "The <mask> won the <mask> game."]
    out = Predictor(spec)(batch_of(texts))
    assert out.schema.field("predictions").type == pa.list_(
        pa.list_(pa.struct([("token", pa.string()), ("token_id", pa.int32()), ("score", pa.float32())]))
    )
    rows = out.to_pylist()
    assert rows[1][ERROR] == "no mask token (<mask>) in the text" and rows[1]["predictions"] is None
    assert [len(r["predictions"]) for r in (rows[0], rows[2])] == [1, 2]
    only_bad = Predictor(spec)(batch_of(["no mask at all"])).to_pylist()[0]  # no feature at all in the batch
    assert only_bad[ERROR].startswith("no mask token") and only_bad["predictions"] is None
    short = make_spec(model_dir, {"type": "fill-mask", "mask_placeholder": "<mask>"}, batching={"max_length": 8})
    long = ["word " * 20 + "<mask>.", "word " * 20]  # a mask past max_length; no mask at all (in a long text)
    assert [r[ERROR] for r in Predictor(short)(batch_of(long)).to_pylist()] == [
        "no mask token (<mask>) in the text within max_length", "no mask token (<mask>) in the text"]
    # two masks, the second past max_length: one list came back for two placeholders, without a word
    [both] = Predictor(short)(batch_of(["<mask> " + "word " * 20 + "<mask>."])).to_pylist()
    assert both[ERROR] == "1 of the text's 2 mask tokens (<mask>) past max_length" and both["predictions"] is None

    fill = pipeline("fill-mask", model=model_dir, top_k=3)
    single = fill(texts[0].replace("<mask>", "[MASK]"))
    double = fill(texts[2].replace("<mask>", "[MASK]"))
    for got, wanted in [(rows[0]["predictions"][0], single), *zip(rows[2]["predictions"], double)]:
        assert [c["token_id"] for c in got] == [w["token"] for w in wanted]
        assert [c["token"] for c in got] == [w["token_str"] for w in wanted]
        assert [c["score"] for c in got] == pytest.approx([w["score"] for w in wanted], abs=1e-6)


# feature extraction with a decoder -------------------------------------------------------------


def test_last_token_pooling_of_a_decoder_ignores_padding(tiny_models):
    model_dir = tiny_models("causal")
    spec = make_spec(model_dir, {"type": "feature-extraction", "pooling": "last"}, batching={"min_fill": 0})
    out = Predictor(spec)(batch_of(SENTENCES))
    assert out.column("_padded").to_pylist() != out.column("_tokens").to_pylist()  # rows were padded
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        expected = [
            torch.nn.functional.normalize(model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0, -1], dim=0)
            for t in SENTENCES
        ]
    np.testing.assert_allclose(np.array(out.column("embedding").to_pylist()), torch.stack(expected).numpy(), atol=1e-5)


def test_last_pooling_picks_the_last_real_token_for_either_padding_side():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last")[:, 0].tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last")[:, 0].tolist() == [3.0, 7.0]


# a text far longer than max_length ---------------------------------------------------------------------------

LONG_TEXTS = [
    " ".join(SENTENCES * 40),  # words: cut to a head at a word's end
    "Opening words here." + " " * 6000 + " ".join(SENTENCES * 10),  # few tokens in the head: tokenized whole
    "  ".join(SENTENCES * 30).replace(". ", ".\n\n \t"),  # runs of spaces, newlines and tabs between words
    "東京都の天気は晴れです" * 600,  # no space to cut at: whole
    "x" * 9000 + " and then words",  # one word longer than the head
    " ".join(SENTENCES * 5) + " " + "y" * 6000 + " " + " ".join(SENTENCES * 5),  # a long word across the cut
    "Cafe\u0301 cre\u0300me bru\u0302le\u0301e " * 700,  # combining marks (decomposed accents)
    "🙂 émoji ünïcödé  text\u00a0with\u3000odd spaces " * 400,
    "short text",
]


def lengths_given(tokenizer, monkeypatch) -> list[int]:
    """The lengths of the texts ``tokenizer`` is called on from now on (the list fills as it is called)."""
    seen: list[int] = []
    called = type(tokenizer).__call__

    def recording(self, text=None, *args, **kwargs):
        seen.extend(len(t) for t in (text if isinstance(text, list) else [text]) if isinstance(t, str))
        return called(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", recording)
    return seen


@pytest.mark.parametrize(("kind", "task"), [("encoder", {"type": "feature-extraction"}),
                                            ("llama-classifier", {"type": "text-classification"}),
                                            ("seq2seq", {"type": "summarization"}),
                                            ("minilm", {"type": "feature-extraction"})])
def test_a_long_text_is_tokenized_from_its_head_as_transformers_tokenizes_it_whole(tiny_models, kind, task,
                                                                                   monkeypatch):
    """A 5 MB text cut to 128 tokens took 7.5 s and 1.3 GB in the tokenizer, which tokenizes a text whole before it
    cuts it: an actor's memory grew with the bytes of a batch's texts, not its rows (10 texts of 1 MB: 2.3x the
    memory of 1). A text far longer than max_length is handed to it as its head, cut at a word's end, where that
    head already holds more tokens than fit; the tokens, offsets and cut flags are those of the whole text."""
    from pipelines.planning.tokens import load_task

    spec = make_spec("minilm" if kind == "minilm" else tiny_models(kind), task, batching={"max_length": 32})
    context = load_task(spec)
    texts = [(task.get("prefix", "") + t) for t in LONG_TEXTS]
    whole = context.tokenizer(texts, truncation=True, max_length=context.max_length, padding=False,
                              return_offsets_mapping=True)
    seen = lengths_given(context.tokenizer, monkeypatch)
    got = context.task.tokenize(texts, return_offsets_mapping=True)
    assert got["input_ids"] == whole["input_ids"]
    assert got["offset_mapping"] == whole["offset_mapping"]
    assert list(got["truncated"]) == [bool(e.overflowing) for e in whole.encodings]
    assert len(texts[0]) not in seen and max(seen) < len(texts[2]), seen  # the word texts went as heads


@pytest.mark.parametrize("max_length", [1, 2])
def test_a_max_length_with_no_room_beside_the_special_tokens_is_refused(tiny_models, max_length):
    """`batching.max_length: 1` (`yes`, as YAML read it): the tokenizer cut nothing, since it can't keep its two
    special tokens, and every row was read whole under a hash that says 1; at 2 every row was its [CLS] [SEP] alone.
    Refused where the tokenizer is loaded (the plan, an actor), naming how many it adds; 3 leaves one token."""
    from pipelines.errors import PipelineError
    from pipelines.planning.tokens import load_task

    with pytest.raises(PipelineError, match=rf"batching.max_length {max_length} leaves no room .* adds 2 special"):
        load_task(make_spec(tiny_models("encoder"), {"type": "feature-extraction"}, batching={"max_length": max_length}))
    context = load_task(make_spec(tiny_models("encoder"), {"type": "feature-extraction"}, batching={"max_length": 3}))
    assert [len(ids) for ids in context.task.tokenize(["many words in this text"])["input_ids"]] == [3]


def test_a_long_premise_of_zero_shot_nli_is_tokenized_from_its_head_with_the_same_pairs(tiny_models, monkeypatch):
    """Zero-shot NLI tokenizes each text once and joins it to every hypothesis: a long text's head gives the same
    pairs, and cut flags, as the whole text."""
    from pipelines.planning.tokens import load_task
    from pipelines.tasks.base import Task

    task = {"type": "zero-shot-classification", "candidate_labels": ["sports", "politics", "a much longer label"]}
    context = load_task(make_spec(tiny_models("nli"), task, batching={"max_length": 32}))
    seen = lengths_given(context.tokenizer, monkeypatch)
    got = context.task.encode(LONG_TEXTS, {})
    assert len(LONG_TEXTS[0]) not in seen
    monkeypatch.setattr(Task, "heads", lambda self, texts: texts)
    whole = context.task.encode(LONG_TEXTS, {})
    rows = [ragged.tokens["input_ids"] for ragged in (got, whole)]
    assert len(rows[0]) == len(rows[1]) == 3 * len(LONG_TEXTS)
    assert all(rows[0].row(i).tolist() == rows[1].row(i).tolist() for i in range(len(rows[0])))
    assert list(got.truncated) == list(whole.truncated)


#: Llama 3's and Qwen2's pre-tokenizer pattern: a run of punctuation keeps the newlines after it (``});\n``).
PUNCTUATION_KEEPS_NEWLINES = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def test_a_head_is_not_cut_where_a_pre_tokenizer_joins_punctuation_to_the_newline_after_it(tiny_models, tmp_path):
    """A head cut before a newline split Llama 3's `});\\n` piece: where that piece's tokens were among the kept
    ones, the head gave ` }` where the whole text gives ` });\\n` (a label flipped; a second reviewer's case)."""
    import shutil

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from pipelines.planning.tokens import load_task

    folder = tmp_path / "llama3-like"
    shutil.copytree(tiny_models("llama-classifier"), folder)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PUNCTUATION_KEEPS_NEWLINES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    corpus = ["foo(bar));\n", "});\n", "if (a) {\n  b();\n}\n", "supercalifragilistic " * 3, "the cat sat. "] * 100
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                            model_max_length=4096).save_pretrained(folder)
    context = load_task(make_spec(str(folder), {"type": "text-classification"}, batching={"max_length": 10}))
    text = " supercalifragilistic" * 7 + " });\n" + "z" * 160 + " tail words here});\n"
    got = context.task.tokenize([text], return_offsets_mapping=True)
    whole = context.tokenizer([text], truncation=True, max_length=10, padding=False, return_offsets_mapping=True)
    assert got["input_ids"] == whole["input_ids"] and got["offset_mapping"] == whole["offset_mapping"]
    assert list(got["truncated"]) == [True]


def test_a_tokenizer_limit_with_no_room_is_named_as_the_models_not_the_specs(tiny_models, tmp_path):
    import json
    import shutil

    from pipelines.errors import PipelineError
    from pipelines.planning.tokens import load_task

    folder = tmp_path / "tiny-limit"
    shutil.copytree(tiny_models("encoder"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 2}))
    with pytest.raises(PipelineError, match=r"the model's tokenizer \(model_max_length\), 2 tokens, leaves no room.*"
                                            r"no max_length setting can give more room"):
        load_task(make_spec(str(folder), {"type": "feature-extraction"}))


# a prompt far longer than max_length ---------------------------------------------------------------------------

LLM_LABEL = {"type": "llm-label", "candidate_labels": ["positive", "negative"],
             "prompt_template": "Review: a dull mess.\nSentiment: negative\n\nReview: {text}\nSentiment:"}


@pytest.mark.parametrize(("kind", "task"), [
    ("causal", {"type": "text-generation", "prompt_template": "Summarize:\n\n{text}\n\nSummary:"}),
    ("gpt2", {"type": "text-generation"}),
    ("smollm2", {"type": "text-generation", "chat": True, "system_prompt": "Answer in one sentence.",
                 "prompt_template": "Summarize this news article in one sentence:\n\n{text}"}),
    ("causal", LLM_LABEL),
    ("smollm2", LLM_LABEL),
])
def test_a_long_prompt_is_tokenized_from_its_tail_with_the_whole_prompts_tokens(tiny_models, kind, task, monkeypatch):
    """A long text in a prompt template was tokenized whole (llm-label: once for the prompt and once per label),
    though a prompt keeps only its last tokens: its tail goes to the tokenizer, with the same kept tokens and flags."""
    from pipelines.planning.tokens import load_task
    from pipelines.tasks import llm_label, prompts

    model = "smollm2" if kind == "smollm2" else tiny_models(kind)
    context = load_task(make_spec(model, task, batching={"max_length": 48}))
    seen = lengths_given(context.tokenizer, monkeypatch)
    got = context.task.encode(LONG_TEXTS, {})
    assert max(seen) < len(LONG_TEXTS[0]), seen  # no long text went whole
    for module in (prompts, llm_label):
        monkeypatch.setattr(module, "tails", lambda tokenizer, texts, special, keep: texts, raising=False)
    whole = context.task.encode(LONG_TEXTS, {})
    ids = [features.tokens["input_ids"] for features in (got, whole)]
    assert len(ids[0]) == len(ids[1]) and list(got.row) == list(whole.row)
    assert all(ids[0].row(i).tolist() == ids[1].row(i).tolist() for i in range(len(ids[0])))
    assert list(got.truncated) == list(whole.truncated) and got.truncated[0]


def test_aggregation_none_over_windows_keeps_every_token_of_a_byte_level_tokenizer_once(tiny_models, tmp_path):
    """With aggregation none a long row's windows were merged by span: two tokens sharing a character (an emoji's
    byte tokens in a byte-level BPE, all at the emoji's one character) were taken for one token seen in two
    windows, and all but one dropped, in any window; a token with an empty span in an overlap was written twice (a
    Unicode audit's case). Tokens are matched across windows by their place in the row's tokens now: every token
    once, as a row within one window gets them."""
    from tiny_models import NER_LABELS
    from transformers import AutoConfig, GPT2ForTokenClassification

    source = tiny_models("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = AutoConfig.from_pretrained(source, id2label=dict(enumerate(NER_LABELS)),
                                        label2id={name: i for i, name in enumerate(NER_LABELS)},
                                        pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2ForTokenClassification(config).save_pretrained(tmp_path / "ner")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path / "ner")
    short = "Obama 😀 went to Paris"
    long = short + " and more words here" * 12
    spec = make_spec(str(tmp_path / "ner"), {"type": "token-classification", "aggregation_strategy": "none",
                                             "ignore_labels": []}, batching={"max_length": 48})
    predictor = Predictor(spec)
    rows = predictor(pa.table({"id": ["s", "l"], "text": [short, long]})).to_pylist()
    predictor.task.tokenizer.truncation_side = "left"  # a model's tokenizer_config may say so: windows from the end
    assert predictor(pa.table({"id": ["s", "l"], "text": [short, long]})).to_pylist() == rows  # the reviewer's case
    for text, row in zip((short, long), rows, strict=True):
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert tokens > 48 or text is short
        assert len(row["entities"]) == tokens, (len(row["entities"]), tokens)
        on_emoji = [e for e in row["entities"] if (e["start"], e["end"]) == (6, 7)]
        emoji_bytes = tokenizer(short, return_offsets_mapping=True)["offset_mapping"].count((6, 7))
        assert emoji_bytes > 1 and len(on_emoji) == emoji_bytes, on_emoji  # its byte tokens, each once
        assert [e["start"] for e in row["entities"]] == sorted(e["start"] for e in row["entities"])


def test_a_question_answering_window_the_tokenizers_special_tokens_fill_is_refused_where_it_is_loaded(tiny_models):
    """The spec refuses a batching.max_length that can't hold the longest question and 2 tokens of context; the
    special tokens the tokenizer adds to a question and its context (3 for BERT's) are counted where the tokenizer is
    loaded (the plan, the pool's actor), and the message says so."""
    from pipelines.errors import PipelineError
    from pipelines.planning.tokens import load_task

    task = {"type": "question-answering", "max_question_length": 40}
    with pytest.raises(PipelineError, match=r"batching.max_length 44 leaves no room .* up to task.max_question_length "
                                            r"40 tokens and the 3 special tokens the tokenizer adds; raise"):
        load_task(make_spec(tiny_models("qa"), task, batching={"max_length": 44}))
    assert load_task(make_spec(tiny_models("qa"), task, batching={"max_length": 45})).task.specials == 3
