"""The predictor without Ray: right answers in input order, bad rows marked, padding never leaks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import ROOT, SENTENCES, batch_of, make_spec
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from pipelines.errors import PipelineError
from pipelines.inference.predictor import ERROR, PADDED, TOKENS, Predictor


def reference_embeddings(model_dir: str, texts: list[str]) -> np.ndarray:
    """Each text alone through the model (no padding at all), mean-pooled and normalised."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    vectors = []
    with torch.inference_mode():
        for text in texts:
            inputs = tokenizer(text, return_tensors="pt")
            hidden = model(**inputs).last_hidden_state[0]
            vectors.append(torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy())
    return np.stack(vectors)


def test_embeddings_match_unpadded_single_rows(tiny_models):
    model_dir = tiny_models("encoder")
    spec = make_spec(model_dir, {"type": "feature-extraction"}, batching={"max_tokens": 40, "max_rows": 3})
    out = Predictor(spec)(batch_of(SENTENCES))
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    got = np.array(out.column("embedding").to_pylist())
    np.testing.assert_allclose(got, reference_embeddings(model_dir, SENTENCES), atol=1e-5)
    assert out.column("id").to_pylist() == [f"r{i}" for i in range(len(SENTENCES))]


def test_a_fill_mask_top_k_above_the_vocabulary_lists_every_token_and_says_so(tiny_models, caplog):
    """top_k above the tokens there are to rank (the tiny model's 400; or the targets') was cut to that number with
    no word: each list holds every token, ranked (asking for more than there are gets all of them, as the targets'
    "at most top_k" already did), and loading the task says so once, so that a list shorter than top_k is no
    surprise. The vocabulary is not known to the spec (its tokenizer is loaded with the model), so it is not refused
    there."""
    spec = make_spec(tiny_models("mlm"), {"type": "fill-mask", "top_k": 100_000, "mask_placeholder": "<mask>"})
    with caplog.at_level("WARNING", logger="pipelines.tasks.fill_mask"):
        predictor = Predictor(spec)
    [said] = [r.getMessage() for r in caplog.records if r.name == "pipelines.tasks.fill_mask"]
    assert "top_k 100000 is more than the 400 tokens" in said and "every one" in said
    [lists] = predictor(batch_of(["the <mask> is good"])).column("predictions").to_pylist()
    assert [len(candidates) for candidates in lists] == [400]
    assert len({c["token_id"] for c in lists[0]}) == 400


def test_classification_is_independent_of_batch_composition(tiny_models):
    model_dir = tiny_models("classifier")
    spec = make_spec(model_dir, {"type": "text-classification", "return_all_scores": True})
    predictor = Predictor(spec)
    forward = predictor(batch_of(SENTENCES)).to_pylist()
    backward = predictor(batch_of(SENTENCES[::-1])).to_pylist()[::-1]
    for a, b in zip(forward, backward):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert set(forward[0]["scores"]) == {"negative", "neutral", "positive"}
    assert sum(forward[0]["scores"].values()) == pytest.approx(1.0, abs=1e-5)

    reference = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        logits = reference(**tokenizer(SENTENCES[4], return_tensors="pt")).logits[0]
    assert forward[4]["label"] == reference.config.id2label[int(logits.argmax())]


def test_a_classifier_whose_config_names_two_classes_alike_is_refused_where_every_score_is_written(tiny_models,
                                                                                                  tmp_path):
    """A config whose id2label names two classes the same, or the same but for case ({0: same, 1: same, 2: Same}),
    made a scores struct with two fields of one name: written as it was, a file that pyarrow's to_pylist, pandas and
    DuckDB (which matches names in any case) can't read by name. Refused, naming them; the label alone is written."""
    model = tmp_path / "model"
    shutil.copytree(tiny_models("classifier"), model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {"0": "same", "1": "other", "2": "Same"}
    config["label2id"] = {"same": 0, "other": 1, "Same": 2}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineError, match="'same' and 'Same'"):
        Predictor(make_spec(str(model), {"type": "text-classification", "return_all_scores": True}))
    out = Predictor(make_spec(str(model), {"type": "text-classification"}))(batch_of(["fine text"]))
    assert out.column("label").to_pylist()[0] in {"same", "other", "Same"}


def test_bad_rows_are_marked_not_dropped(tiny_models):
    spec = make_spec(tiny_models("classifier"), {"type": "text-classification"})
    batch = batch_of(["fine text", None, "   ", "more text"])
    out = Predictor(spec)(batch)
    assert out.num_rows == 4
    assert out.column(ERROR).to_pylist() == [None, "text is null", "text is empty", None]
    assert out.column("label").to_pylist()[1:3] == [None, None]
    assert all(label is not None for label in out.column("label").to_pylist()[::3])
    assert out.column(TOKENS).to_pylist()[1:3] == [0, 0]
    assert all(p >= t for p, t in zip(out.column(PADDED).to_pylist(), out.column(TOKENS).to_pylist()))


def test_texts_whose_every_character_the_tokenizer_drops_are_quarantined(tiny_models):
    """Zero-width, control and bidi characters or a lone byte order mark, which a WordPiece tokenizer drops, left
    [CLS] [SEP] alone: text-classification labelled that empty input, token-classification wrote [] for it."""
    dropped = ["\u200b\u200b\u200b", "\x01\x02\x03", "\ufeff", "\u202e\u202d", "\ufffd a"]
    reason = "text has no tokens (only characters the tokenizer drops)"
    for kind, task in (("classifier", "text-classification"), ("token-classifier", "token-classification")):
        out = Predictor(make_spec(tiny_models(kind), {"type": task}))(batch_of(["fine text", *dropped, "\u3000"]))
        assert out.column(ERROR).to_pylist() == [None, *[reason] * 4, None, "text is empty"], task
        written = out.column("label" if task == "text-classification" else "entities").to_pylist()
        assert written[1:5] == [None] * 4 and written[0] is not None, task


def test_too_long_rows_follow_the_policy(tiny_models):
    long_text = "word " * 400
    truncate = make_spec(tiny_models("classifier"), {"type": "text-classification"}, batching={"max_length": 16})
    out = Predictor(truncate)(batch_of([long_text, "short"]))
    assert out.column(ERROR).to_pylist() == [None, None]
    assert out.column(TOKENS).to_pylist()[0] == 16
    refuse = make_spec(
        tiny_models("classifier"), {"type": "text-classification"}, batching={"max_length": 16},
        errors={"too_long": "error"},
    )
    out = Predictor(refuse)(batch_of([long_text, "short"]))
    # 16 is max_length, not the row's length (400 words): "(16 tokens)" read as the row's own count
    assert out.column(ERROR).to_pylist()[0] == "text longer than max_length (max_length is 16 tokens)"
    assert out.column("label").to_pylist()[0] is None
    assert out.column(ERROR).to_pylist()[1] is None


def test_a_too_long_reason_says_where_max_length_is_the_models_own_cap(tiny_models, tmp_path):
    """A row refused under errors.too_long: error said "max_length is 128 tokens" where 128 was the tokenizer's
    model_max_length, below batching.max_length: raising batching.max_length, the setting the words pointed at, changed
    nothing. The reason says which cap it is; where it is batching.max_length's own, the number alone."""
    long_text = "word " * 400
    for max_length, note in ((16, ""), (512, ": the tokenizer's model_max_length, which a larger batching.max_length "
                                             "does not raise")):
        spec = make_spec(tiny_models("classifier"), {"type": "text-classification"},
                         batching={"max_length": max_length}, errors={"too_long": "error"})
        limit = min(max_length, 128)  # the tiny tokenizer's model_max_length
        assert Predictor(spec)(batch_of([long_text])).column(ERROR).to_pylist() == [
            f"text longer than max_length (max_length is {limit} tokens){note}"]
    folder = tmp_path / "no-tokenizer-cap"
    shutil.copytree(tiny_models("classifier"), folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["model_max_length"] = int(1e30)  # as some fine-tunes ship: the positions are the cap
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    spec = make_spec(str(folder), {"type": "text-classification"}, batching={"max_length": 4096},
                     errors={"too_long": "error"})
    assert Predictor(spec)(batch_of(["word " * 600])).column(ERROR).to_pylist() == [
        "text longer than max_length (max_length is 512 tokens): all the model's positions (max_position_embeddings), "
        "which no setting raises"]


@pytest.mark.parametrize(("kind", "task"), [("classifier", {"type": "text-classification"}),
                                          ("causal", {"type": "text-generation", "max_new_tokens": 2})])
def test_a_slow_tokenizer_flags_the_rows_it_cuts_as_a_fast_one_does(tiny_models, tmp_path, kind, task):
    """Only a fast tokenizer says which rows it cut: with a slow one (MarianTokenizer, the opus-mt translation
    models', has no fast version) no row was flagged, so errors.too_long: error refused none and a run counted no cut
    row, and the plan said this task "cuts no input". The rows cut are told by their untruncated length there."""
    from transformers import CTRLTokenizer

    from pipelines.io.block import CUT

    pieces = ["<unk>", "word", "short", "w@@", "o@@", "r@@", "d", "s@@", "h@@", "t"]
    (tmp_path / "vocab.json").write_text(json.dumps({piece: i for i, piece in enumerate(pieces)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    slow = CTRLTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))  # a python tokenizer: no Rust
    assert not slow.is_fast
    long_text = "word " * 400
    for policy in ("truncate", "error"):
        spec = make_spec(tiny_models(kind), task, batching={"max_length": 16}, errors={"too_long": policy})
        predictor = Predictor(spec)
        predictor.task.tokenizer = slow
        out = predictor(batch_of([long_text, "short"]))
        if policy == "truncate":
            assert out.column(ERROR).to_pylist() == [None, None] and out.column(CUT).to_pylist() == [1, 0]
        else:
            assert out.column(ERROR).to_pylist()[0].startswith("text longer than max_length"), out.column(ERROR)
            assert out.column(ERROR).to_pylist()[1] is None


def test_zero_shot_nli_ranks_every_candidate(tiny_models):
    labels = ["sports", "business", "science"]
    spec = make_spec(tiny_models("nli"), {"type": "zero-shot-classification", "candidate_labels": labels})
    predictor = Predictor(spec)
    assert predictor.task.method == "nli"
    out = predictor(batch_of(SENTENCES)).to_pylist()
    for row in out:
        assert row["label"] in labels
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["score"] == pytest.approx(max(row["scores"].values()), abs=1e-6)
    # pairs of (text, hypothesis) per row: tokens counted per row over all its candidates
    single = predictor(batch_of(SENTENCES[:1])).to_pylist()[0]
    assert single["scores"] == pytest.approx(out[0]["scores"], abs=1e-5)


def test_zero_shot_by_embedding_uses_label_descriptions(tiny_models):
    spec = make_spec(
        tiny_models("encoder"),
        {
            "type": "zero-shot-classification",
            "candidate_labels": ["a", "b"],
            "label_descriptions": {"a": "The team won the championship game last night."},
        },
    )
    predictor = Predictor(spec)
    assert predictor.task.method == "embedding"
    out = predictor(batch_of([SENTENCES[0]])).to_pylist()[0]
    assert out["label"] == "a"  # the text is its own description: cosine similarity 1


def test_one_candidate_label_by_embedding_is_scored_on_its_own_as_nli_scores_it(tiny_models):
    """A single candidate label with method embedding went through a softmax over that one label: score 1.0 on every
    row, whatever the text (and the fidelity check, which compares a lone label's scores, compared ones). nli scores
    a single label on its own (entailment against contradiction, as the pipeline does); so now does embedding, as
    multi_label does: (cosine + 1) / 2."""
    task = {"type": "zero-shot-classification", "candidate_labels": ["Sports"], "method": "embedding"}
    alone = Predictor(make_spec(tiny_models("encoder"), task))(batch_of(SENTENCES[:4])).column("score").to_pylist()
    multi = Predictor(make_spec(tiny_models("encoder"), {**task, "multi_label": True}))(batch_of(SENTENCES[:4]))
    assert alone == pytest.approx(multi.column("score").to_pylist(), abs=1e-6)
    assert len({round(score, 6) for score in alone}) == 4 and max(alone) < 1.0


def test_a_label_description_is_the_whole_hypothesis_of_nli_too(tiny_models):
    """The README said label_descriptions were for the embedding method; nli reads them too, each as the whole
    hypothesis in place of the filled template (the README now says so)."""
    task = {"type": "zero-shot-classification", "candidate_labels": ["World", "Sports"],
            "label_descriptions": {"World": "It is about politics."}}
    predictor = Predictor(make_spec(tiny_models("nli"), task))
    assert predictor.task.method == "nli"
    assert predictor.task.hypotheses == ["It is about politics.", "This example is Sports."]


@pytest.mark.parametrize(
    ("kind", "labels", "same"),
    [
        ("nli", ["résumé", "resume", "letter"], ("résumé", "resume")),  # an uncased tokenizer strips accents
        ("encoder", ["good", "👍", "👎"], ("👍", "👎")),  # characters it lacks: [UNK] both
    ],
)
def test_zero_shot_labels_the_tokenizer_makes_the_same_hypothesis_are_refused(tiny_models, kind, labels, same):
    """Two labels whose hypotheses are the same tokens always tied: the first named won every row, and the other
    never, without a word."""
    spec = make_spec(tiny_models(kind), {"type": "zero-shot-classification", "candidate_labels": labels})
    first, second = same
    with pytest.raises(PipelineError, match=f"candidate labels '{first}' and '{second}' are the same tokens"):
        Predictor(spec)


def test_a_decoder_classifier_scores_a_text_that_ends_in_its_end_of_sequence_text_as_the_pipeline_does(tiny_models):
    """A decoder classifier without a pad token got the end-of-sequence token as its pad, and Transformers pools
    each row's last token that is not the pad: a text that ends in that token's text (`</s>`) was scored at the
    token before it, another label than `transformers.pipeline` gives (which pools the last token of one row)."""
    from transformers import pipeline

    model_dir = tiny_models("llama-classifier")
    rows = ["</s>", "great movie </s>", "great movie", *SENTENCES[:3]]
    spec = make_spec(model_dir, {"type": "text-classification", "return_all_scores": True}, batching={"min_fill": 0})
    got = Predictor(spec)(batch_of(rows)).to_pylist()
    classify = pipeline("text-classification", model=model_dir, top_k=None)
    for row, text in zip(got, rows):
        expected = {e["label"]: e["score"] for e in classify([text])[0]}
        assert row["label"] == max(expected, key=expected.get), text
        np.testing.assert_allclose([row["scores"][k] for k in expected], list(expected.values()), atol=1e-4)


def test_a_decoder_nli_model_scores_a_pair_that_ends_in_its_end_of_sequence_text_as_the_pipeline_does(
    tiny_models, tmp_path
):
    """zero-shot-classification with a decoder NLI model pooled as text-classification did: a hypothesis that ends in
    the end-of-sequence text was scored a token early."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models("llama-classifier"))
    model.config.id2label = {0: "contradiction", 1: "neutral", 2: "entailment"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(tmp_path / "nli")
    AutoTokenizer.from_pretrained(tiny_models("llama-classifier")).save_pretrained(tmp_path / "nli")
    labels = ["sports", "politics", "music"]
    task = {"type": "zero-shot-classification", "candidate_labels": labels, "method": "nli",
            "hypothesis_template": "This is about {} </s>"}
    got = Predictor(make_spec(str(tmp_path / "nli"), task))(batch_of(SENTENCES[:3])).to_pylist()
    classify = pipeline("zero-shot-classification", model=str(tmp_path / "nli"))
    for row, text in zip(got, SENTENCES[:3]):
        expected = classify(text, candidate_labels=labels, hypothesis_template=task["hypothesis_template"])
        np.testing.assert_allclose([row["scores"][k] for k in expected["labels"]], expected["scores"], atol=1e-4)


def test_a_decoder_classifier_whose_config_names_another_pad_token_scores_each_row_as_alone(tiny_models, tmp_path):
    """A config's pad_token_id that the tokenizer doesn't pad with (LLaMA-1 conversions say 0 while their tokenizer has
    no pad token; a fine-tune may save the one and not the other): Transformers' classifier takes the last token that
    is not the config's pad for each row's last, so a row padded with the tokenizer's pad (here the end-of-sequence
    token) was scored at its padding, and its label depended on the longer rows of its micro-batch."""
    from transformers import pipeline

    model_dir = tmp_path / "pad-zero"
    shutil.copytree(tiny_models("llama-classifier"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert config.get("pad_token_id") is None and config["bos_token_id"] == 0
    (model_dir / "config.json").write_text(json.dumps({**config, "pad_token_id": 0}))
    spec = make_spec(str(model_dir), {"type": "text-classification", "return_all_scores": True}, batching={"min_fill": 0})
    got = Predictor(spec)(batch_of(SENTENCES)).to_pylist()
    classify = pipeline("text-classification", model=str(model_dir), top_k=None)
    for row, text in zip(got, SENTENCES):
        expected = {e["label"]: e["score"] for e in classify([text])[0]}  # one text: no padding
        np.testing.assert_allclose([row["scores"][k] for k in expected], list(expected.values()), atol=1e-4, err_msg=text)
        assert row["label"] == max(expected, key=expected.get), text


def test_a_decoder_classifier_without_a_pad_token_runs_a_batch_in_one_forward(tiny_models):
    """Llama/GPT-2 classifiers ship without pad_token_id: the tokenizer's pad token must reach the model's config,
    or every micro-batch is refused ("no padding token") and bisected down to single rows."""
    model_dir = tiny_models("llama-classifier")
    assert AutoModelForSequenceClassification.from_pretrained(model_dir).config.pad_token_id is None
    spec = make_spec(model_dir, {"type": "text-classification", "return_all_scores": True}, batching={"min_fill": 0})
    predictor = Predictor(spec)
    calls: list[int] = []
    model = predictor.loaded.model
    base = getattr(model, model.base_model_prefix)  # what the classifier's rows go through, whoever pools them
    forward = base.forward

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    base.forward = counted
    batched = predictor(batch_of(SENTENCES))
    assert calls == [len(SENTENCES)]
    assert batched.column(ERROR).to_pylist() == [None] * len(SENTENCES)
    alone = [predictor(batch_of([text])) for text in SENTENCES]
    assert batched.column("label").to_pylist() == [row.column("label")[0].as_py() for row in alone]
    scores = [list(s.values()) for s in batched.column("scores").to_pylist()]
    np.testing.assert_allclose(scores, [list(row.column("scores")[0].as_py().values()) for row in alone], atol=1e-5)


def test_a_prediction_that_is_not_a_number_is_quarantined_not_written(tiny_models, tmp_path):
    """A model whose float16 activations overflow (past 65504) computes NaN logits; their argmax is label 0, so every
    row was written with label 0 and NaN scores, as if predicted, and counted in no error budget. Such a row is
    quarantined with a reason that says what happened and what to use; the same model in float32 predicts them all."""
    from test_fidelity import build_overflowing_classifier

    model = build_overflowing_classifier(tiny_models("classifier"), tmp_path / "overflowing")
    half = make_spec(model, {"type": "text-classification"})
    half.model.dtype = "float16"
    out = Predictor(half)(batch_of(SENTENCES[:6]))
    reasons = out.column(ERROR).to_pylist()
    assert all(r is not None and r.startswith("prediction is not a number") and "float16" in r for r in reasons), reasons
    assert out.column("label").null_count == 6 and out.column("score").null_count == 6
    full = Predictor(make_spec(model, {"type": "text-classification"}))(batch_of(SENTENCES[:6]))
    assert full.column(ERROR).null_count == 6 and full.column("label").null_count == 0


def test_rows_holding_a_nan_anywhere_in_their_prediction_are_found():
    from pipelines.inference.predictor import not_finite_rows

    nan, inf = float("nan"), float("inf")
    assert not_finite_rows(pa.array([1.0, nan, None, inf])).tolist() == [False, True, False, True]
    vectors = pa.array([[1.0, 2.0], [nan, 0.0], [0.0, 0.0]], pa.list_(pa.float32(), 2))
    assert not_finite_rows(vectors.slice(1)).tolist() == [True, False]
    entities = pa.array([[{"word": "a", "score": 0.5}], [], [{"word": "b", "score": 0.1}, {"word": "c", "score": nan}]])
    assert not_finite_rows(entities).tolist() == [False, False, True]
    assert not_finite_rows(pa.array(["x", None])).tolist() == [False, False]


def test_a_text_cut_to_leave_room_for_a_hypothesis_is_quarantined_naming_that_room(tiny_models):
    """NLI reads each text with each label's hypothesis within max_length: a text of 26 tokens, under max_length 32,
    was cut to leave the hypothesis room and, with errors.too_long: error, quarantined as "text longer than
    max_length (max_length is 32 tokens)", a limit the text was under."""
    task = {"type": "zero-shot-classification", "candidate_labels": ["World", "Sports"]}
    spec = make_spec(tiny_models("nli"), task, errors={"too_long": "error"}, batching={"max_length": 32})
    out = Predictor(spec)(batch_of(["word " * 6, "word"]))
    assert out.column(ERROR).to_pylist() == [
        "text longer than max_length (max_length is 32 tokens, the text and a label's hypothesis together)", None]


def test_a_roberta_models_positions_leave_out_its_padding_offset(tiny_models, tmp_path):
    """RoBERTa numbers a text's positions from pad_token_id + 1, so its max_position_embeddings (514 in the real ones)
    is pad_token_id + 1 more than a text can use. Taken whole as the cap, where the tokenizer states no
    model_max_length (1e30, as some fine-tunes ship it), every row longer than the real limit failed its forward
    (`forward failed: IndexError: index out of range in self`) and was quarantined. Such rows are cut to fit, and
    scored as Transformers scores them cut so."""
    from transformers import RobertaConfig, RobertaForSequenceClassification, pipeline

    tokenizer = AutoTokenizer.from_pretrained(tiny_models("classifier"))
    tokenizer.model_max_length = int(1e30)
    torch.manual_seed(0)
    config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                           vocab_size=len(tokenizer), max_position_embeddings=34, pad_token_id=tokenizer.pad_token_id,
                           id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    folder = tmp_path / "roberta"
    RobertaForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    texts = [" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(4)] + [SENTENCES[0]]  # 4 past 34 tokens
    out = Predictor(make_spec(str(folder), {"type": "text-classification"}, batching={"max_length": 256}))(
        batch_of(texts)).to_pylist()
    assert [row[ERROR] for row in out] == [None] * len(texts), out
    limit = 34 - tokenizer.pad_token_id - 1
    reference = pipeline("text-classification", model=str(folder), device="cpu")(texts, truncation=True,
                                                                                  max_length=limit)
    assert [row["label"] for row in out] == [r["label"] for r in reference]
    np.testing.assert_allclose([row["score"] for row in out], [r["score"] for r in reference], atol=1e-5)
    assert sum(row["_cut"] for row in out) == 4


def test_an_nli_model_whose_config_names_its_labels_in_id2label_alone_is_scored_by_nli(tiny_models, tmp_path):
    """A config.json with id2label and no label2id (Transformers then leaves label2id None): zero-shot's method auto
    found no entailment label and scored the NLI model by embedding, its head dropped, without a word (method nli
    refused it). Its labels are read from id2label: scored by NLI, as the same model with both."""
    folder = tmp_path / "nli"
    shutil.copytree(tiny_models("nli"), folder)
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("label2id") and config["id2label"]
    (folder / "config.json").write_text(json.dumps(config))
    options = {"type": "zero-shot-classification", "candidate_labels": ["sports", "business", "science"]}
    got = Predictor(make_spec(str(folder), options))(batch_of(SENTENCES)).to_pylist()
    want = Predictor(make_spec(tiny_models("nli"), options))(batch_of(SENTENCES)).to_pylist()
    assert [row["label"] for row in got] == [row["label"] for row in want]
    np.testing.assert_allclose([row["score"] for row in got], [row["score"] for row in want], atol=1e-6)


def test_the_actors_imports_set_off_no_full_collection_and_are_set_aside_after():
    """A pool actor imports torch, Transformers and the predictor before its model loads. Each full collection of
    cyclic garbage that Python set off meanwhile walked every object made so far: four during those imports and two
    more during the model code's, 0.6 s of 3.5 s on a 2-core Zen 4. They are now held off while it imports, and what
    it made is set aside after, so that later collections walk only what comes after; collection is left on. Once
    per process: a second call sets nothing more aside (a model's garbage made since stays collectable)."""
    code = (
        "import gc, json\n"
        "from pipelines.inference.heavy_imports import import_predictor\n"
        "full = gc.get_stats()[2]['collections']\n"
        "Predictor = import_predictor()\n"
        "import transformers.modeling_utils\n"
        "set_aside = gc.get_freeze_count()\n"
        "made_since = [[] for _ in range(1000)]\n"
        "again = import_predictor() is Predictor and gc.get_freeze_count() == set_aside\n"
        "print(json.dumps([gc.get_stats()[2]['collections'] - full, set_aside, gc.isenabled(), "
        "Predictor.__module__, again]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    collections, set_aside, enabled, module, again = json.loads(done.stdout.strip().splitlines()[-1])
    assert collections == 0 and enabled and module == "pipelines.inference.predictor" and again
    assert set_aside > 100_000  # torch's and Transformers' objects: hundreds of thousands
