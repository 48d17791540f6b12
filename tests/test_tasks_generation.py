"""text-generation, summarization, translation with tiny models: right text, padding-proof, reproducible sampling."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import SENTENCES, batch_of, make_spec
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from pipelines.errors import PipelineError
from pipelines.inference import kv_cache
from pipelines.inference.predictor import ERROR, Predictor
from pipelines.spec import spec_from_dict
from pipelines.tasks import generation
from pipelines.tasks.generation import GumbelSampler, row_seeds, seed_keys, split_generated
from pipelines.tasks.options import GenerationOptions

SHORT = "great"
LONG = SENTENCES[4]  # the longest: forces left padding of SHORT when batched together
TEXT_COLUMNS = ("generated_text", "prompt_tokens", "generated_tokens", "finish_reason")


def spec_with_seed(model_dir, task, seed: int = 0, **sections):
    spec = make_spec(model_dir, task, **sections)
    spec.seed = seed
    return spec


def predict(model_dir, task, texts, ids=None, seed: int = 0, **sections) -> list[dict]:
    return Predictor(spec_with_seed(model_dir, task, seed, **sections))(batch_of(texts, ids)).to_pylist()


def reference_generate(model_dir: str, prompt_ids: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """Greedy generation of one unpadded prompt straight through transformers."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
            **kwargs,
        )
    return out[0, len(prompt_ids) :].tolist()


def whole_prompt(predictor: Predictor, features, i: int) -> list[int]:
    """Feature ``i``'s prompt tokens, the shared prefix included where the feature continues it."""
    own = features.tokens["input_ids"].row(i).tolist()
    prefix = predictor.task.kv_prefix
    return (prefix.ids if prefix is not None and features.extra["prefixed"][i] else []) + own


# greedy and beams ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["causal", "gpt2"])  # Llama (rotary) and GPT-2 (absolute positions)
def test_greedy_output_is_the_same_alone_and_left_padded(tiny_models, kind, monkeypatch):
    """Prompts of different lengths run in groups, then decode in one batch whose cache pads the shorter rows."""
    model_dir = tiny_models(kind)
    task = {"type": "text-generation", "max_new_tokens": 12}
    predictor = Predictor(make_spec(model_dir, task))
    assert predictor.task.padding_side == "left"
    assert predictor.task.kv_prefix is not None  # this project's own decoding loop, not model.generate
    widths: list[list[int]] = []

    def merge(parts, after):
        widths.append([int(part.mask.shape[1]) for part in parts])
        return kv_cache.merge(parts, after)

    monkeypatch.setattr(generation, "merge", merge)
    batched = predictor(batch_of([LONG, SHORT, "ok"])).to_pylist()
    assert len(widths) == 1 and len(set(widths[0])) > 1  # one batch made of caches of different widths
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for row in batched[1:]:
        alone = predictor(batch_of([row["text"]])).to_pylist()[0]
        assert {k: row[k] for k in TEXT_COLUMNS} == {k: alone[k] for k in TEXT_COLUMNS}

        prompt = tokenizer(row["text"])["input_ids"]
        expected = reference_generate(model_dir, prompt, 12)  # ends with eos where the model stopped
        stopped = expected[-1] == tokenizer.eos_token_id
        assert alone["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert alone["prompt_tokens"] == len(prompt)
        assert alone["generated_tokens"] == len(expected)
        assert alone["finish_reason"] == ("stop" if stopped else "length")
    if kind == "causal":  # the tiny Llama ends "great" after two tokens while "ok" runs to the limit
        assert [r["finish_reason"] for r in batched[1:]] == ["stop", "length"]


def test_columns_are_plain_arrow_types_in_input_order(tiny_models):
    out = Predictor(make_spec(tiny_models("causal"), {"type": "text-generation", "max_new_tokens": 4}))(
        batch_of(SENTENCES)
    )
    assert out.schema.field("generated_text").type == pa.string()
    assert out.schema.field("prompt_tokens").type == pa.int32()
    assert out.schema.field("generated_tokens").type == pa.int32()
    assert out.schema.field("finish_reason").type == pa.string()
    assert out.column("id").to_pylist() == [f"r{i}" for i in range(len(SENTENCES))]
    tokenizer = AutoTokenizer.from_pretrained(tiny_models("causal"))
    assert out.column("prompt_tokens").to_pylist() == [len(tokenizer(t)["input_ids"]) for t in SENTENCES]


def test_generation_stops_at_eos(tiny_models, tmp_path):
    """Make a token the greedy output produces an eos token: generation must end there, 'stop'."""
    source = tiny_models("causal")
    task = {"type": "text-generation", "max_new_tokens": 10}
    tokenizer = AutoTokenizer.from_pretrained(source)
    generated = reference_generate(source, tokenizer("ok")["input_ids"], 10)
    stop_token = generated[3]
    model_dir = tmp_path / "stops"
    shutil.copytree(source, model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [tokenizer.eos_token_id, stop_token]
    (model_dir / "generation_config.json").write_text(json.dumps(config))

    rows = predict(str(model_dir), task, ["ok", LONG])
    cut = generated.index(stop_token)
    assert rows[0]["finish_reason"] == "stop"
    assert rows[0]["generated_tokens"] == cut + 1  # the eos token counts as generated
    assert rows[0]["generated_text"] == tokenizer.decode(generated[:cut], skip_special_tokens=True)


def test_beam_search_returns_the_best_beams(tiny_models):
    model_dir = tiny_models("gpt2")
    task = {"type": "text-generation", "max_new_tokens": 6, "num_beams": 3, "num_return_sequences": 2}
    predictor = Predictor(make_spec(model_dir, task))
    out = predictor(batch_of([SHORT, LONG]))
    assert out.schema.field("generated_text").type == pa.list_(pa.string())
    assert out.schema.field("finish_reason").type == pa.list_(pa.string())
    row = out.to_pylist()[0]
    assert len(row["generated_text"]) == 2 and len(row["generated_tokens"]) == 2
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    best = reference_generate(model_dir, tokenizer(SHORT)["input_ids"], 6, num_beams=3)
    assert row["generated_text"][0] == tokenizer.decode(best, skip_special_tokens=True)


# reproducible sampling -----------------------------------------------------------------


def test_sampling_is_reproducible_per_row_whatever_the_batch(tiny_models):
    model_dir = tiny_models("causal")
    task = {"type": "text-generation", "max_new_tokens": 10, "do_sample": True, "top_p": 0.95, "temperature": 1.5}
    ids = [f"row-{i}" for i in range(len(SENTENCES))]
    first = Predictor(spec_with_seed(model_dir, task, 7))
    everything = first(batch_of(SENTENCES, ids)).to_pylist()
    texts = {r["id"]: r["generated_text"] for r in everything}
    assert len(set(texts.values())) > 1

    # the same rows in another order, split into other micro-batches, by a fresh predictor (a re-run)
    again = Predictor(spec_with_seed(model_dir, task, 7, batching={"max_rows": 3}))
    shuffled = again(batch_of(SENTENCES[::-1], ids[::-1])).to_pylist()
    assert {r["id"]: r["generated_text"] for r in shuffled} == texts
    alone = again(batch_of([SENTENCES[2]], [ids[2]])).to_pylist()[0]
    assert alone["generated_text"] == texts[ids[2]]

    other_seed = Predictor(spec_with_seed(model_dir, task, 8))(batch_of(SENTENCES, ids)).to_pylist()
    assert sum(r["generated_text"] != texts[r["id"]] for r in other_seed) >= len(SENTENCES) // 2


def test_rows_with_a_null_id_draw_apart_from_each_other_and_from_the_id_none(tiny_models):
    """A row's draw comes from the job's seed and its id as text: a null id was the text "None", so every row with a
    null id and the row whose id is "None" drew the same noise (the same prompt, the same sample). A row without an id
    draws by its prompt now, marked as such; it still draws the same in any batch."""
    model_dir = tiny_models("causal")
    task = {"type": "text-generation", "max_new_tokens": 10, "do_sample": True, "temperature": 1.5}
    rows = predict(model_dir, task, [SENTENCES[0], SENTENCES[0], SENTENCES[1]], [None, "None", None], seed=7)
    assert rows[0]["generated_text"] != rows[1]["generated_text"]
    alone = predict(model_dir, task, [SENTENCES[0]], [None], seed=7)[0]
    assert alone["generated_text"] == rows[0]["generated_text"]


def test_several_samples_per_row_differ_and_top_k_1_is_greedy(tiny_models):
    model_dir = tiny_models("causal")
    sampled = predict(
        model_dir,
        {"type": "text-generation", "max_new_tokens": 8, "do_sample": True, "num_return_sequences": 3},
        SENTENCES[:3],
    )
    assert all(len(set(r["generated_text"])) > 1 for r in sampled)
    greedy = predict(model_dir, {"type": "text-generation", "max_new_tokens": 8}, SENTENCES[:3])
    top1 = predict(
        model_dir, {"type": "text-generation", "max_new_tokens": 8, "do_sample": True, "top_k": 1}, SENTENCES[:3]
    )
    assert [r["generated_text"] for r in top1] == [r["generated_text"] for r in greedy]


def test_gumbel_sampler_draws_from_the_warped_distribution():
    """Gumbel-max over hashed noise: frequencies match softmax(logits / T), top-k cuts the tail."""
    n = 40_000
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).repeat(n, 1)
    keys = seed_keys(torch.from_numpy(row_seeds(3, list(range(n)))))
    prompt = torch.zeros(n, 5, dtype=torch.long)

    def frequencies(**options) -> np.ndarray:
        sampler = GumbelSampler(keys, start=5, options=GenerationOptions(type="x", do_sample=True, **options))
        picks = sampler(prompt, logits.clone()).argmax(dim=1)
        return np.bincount(picks.numpy(), minlength=4) / n

    np.testing.assert_allclose(frequencies(), torch.softmax(logits[0], 0).numpy(), atol=0.01)
    np.testing.assert_allclose(frequencies(temperature=2.0), torch.softmax(logits[0] / 2, 0).numpy(), atol=0.01)
    top2 = frequencies(top_k=2)
    assert top2[2:].sum() == 0
    np.testing.assert_allclose(top2[:2], torch.softmax(logits[0, :2], 0).numpy(), atol=0.01)
    # a new step draws new noise
    step0 = GumbelSampler(keys, 5, GenerationOptions(type="x", do_sample=True))(prompt, logits.clone()).argmax(1)
    step1 = GumbelSampler(keys, 4, GenerationOptions(type="x", do_sample=True))(prompt, logits.clone()).argmax(1)
    assert (step0 == step1).float().mean() < 0.6


def test_split_generated_cuts_at_the_first_eos():
    generated = np.array([[5, 6, 2, 9], [5, 6, 7, 8], [2, 2, 2, 2], [7, 3, 2, 2]])
    tokens, stopped = split_generated(generated, eos=[2, 3], count=2)
    assert [t.tolist() for t in tokens[0]] == [[5, 6], [5, 6, 7, 8]]
    assert [t.tolist() for t in tokens[1]] == [[], [7]]
    assert stopped == [[True, False], [True, True]]


# prompts ---------------------------------------------------------------------------------


def test_prompt_template_reads_other_columns_and_null_is_a_row_error(tiny_models):
    model_dir = tiny_models("causal")
    task = {"type": "text-generation", "max_new_tokens": 3, "prompt_template": "Title: {title}\nSummarize: {text}"}
    spec = make_spec(model_dir, task)
    assert spec.task.input_columns() == ["title"]
    batch = batch_of(SENTENCES[:3]).append_column("title", pa.array(["One", None, "Three"]))
    out = Predictor(spec)(batch).to_pylist()
    assert out[1][ERROR] == "prompt column 'title' is null" and out[1]["generated_text"] is None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = tokenizer(f"Title: Three\nSummarize: {SENTENCES[2]}")["input_ids"]
    assert out[2]["prompt_tokens"] == len(expected) and out[2][ERROR] is None


def test_chat_uses_the_chat_template_with_a_system_prompt(tiny_models):
    model_dir = tiny_models("causal")
    task = {"type": "text-generation", "max_new_tokens": 3, "chat": True, "system_prompt": "Be brief."}
    out = predict(model_dir, task, [SHORT])[0]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SHORT}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert out["prompt_tokens"] == len(expected)
    with pytest.raises(PipelineError, match="no chat template"):
        Predictor(make_spec(tiny_models("gpt2"), task))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"do_sample": True, "num_beams": 2}, "not supported"),
        ({"num_return_sequences": 2}, "needs do_sample"),
        ({"prompt_template": "{0} and {text}"}, "plain column names"),
        ({"prompt_template": "{text"}, "not a valid template"),
    ],
)
def test_invalid_generation_options_are_spec_errors(options, message):
    raw = {
        "input": {"paths": ["x"]},
        "model": {"name": "m"},
        "output": {"path": "o"},
        "task": {"type": "text-generation", **options},
    }
    with pytest.raises(PipelineError, match=message):
        spec_from_dict(raw)


def spec_of(task: dict):
    return spec_from_dict({"input": {"paths": ["x"]}, "model": {"name": "m"}, "output": {"path": "o"}, "task": task})


@pytest.mark.parametrize(
    ("template", "hint"),
    [
        ("Summarize: {{text}}", r"\{\{text\}\} is the literal text \{text\}"),  # a Jinja or Mustache habit
        ("Summarize: %s", r"%s is no field"),
        ("Write a haiku.", r"write \{text\} where the text column goes"),
    ],
)
def test_a_greedy_prompt_template_that_reads_no_column_is_a_spec_error(template, hint):
    """A template without a {field} gave every row the same prompt: run and plan went ahead and wrote the same
    text for every row, the rows' own text read but never seen by the model."""
    task = {"type": "text-generation", "prompt_template": template}
    with pytest.raises(PipelineError, match="reads no input column, so every row would get the same prompt") as err:
        spec_of(task)
    assert re.search(hint, str(err.value))
    # sampling a fixed prompt gives each row its own draw: a use of its own (rows as seeds), but never {{text}}
    if "{{" in template:
        with pytest.raises(PipelineError, match="literal text"):
            spec_of({**task, "do_sample": True})
    else:
        spec_of({**task, "do_sample": True})
    # literal braces beside a field are the user's own text
    spec_of({**task, "prompt_template": 'Answer as {{"summary": ...}}: {text}'})


@pytest.mark.parametrize(
    "task",
    [{"type": "text-generation"}, {"type": "llm-label", "candidate_labels": ["positive", "negative"]}],
    ids=["text-generation", "llm-label"],
)
def test_a_system_prompt_without_chat_is_a_spec_error(task):
    """The system turn exists only in the chat template: without chat: true the system prompt was dropped without
    a word, and the run wrote answers (or labels) of a model that never read its instructions."""
    task = {**task, "system_prompt": "Answer with one word."}
    with pytest.raises(PipelineError, match=r"task.system_prompt is given but task.chat is false"):
        spec_of(task)
    assert spec_of({**task, "chat": True}).task.system_prompt == "Answer with one word."


# encoder-decoder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t5_with_prefixes(tiny_models, tmp_path_factory):
    """The tiny T5 with task prefixes in its config, as real T5 checkpoints have."""
    model_dir = tmp_path_factory.mktemp("t5") / "model"
    shutil.copytree(tiny_models("seq2seq"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["task_specific_params"] = {
        "summarization": {"prefix": "summarize: "},
        "translation_en_to_de": {"prefix": "translate English to German: "},
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    return str(model_dir)


@pytest.mark.parametrize(
    ("task", "prefix", "column"),
    [
        ({"type": "summarization"}, "summarize: ", "summary_text"),
        (
            {"type": "translation", "source_lang": "en", "target_lang": "de"},
            "translate English to German: ",
            "translation_text",
        ),
        ({"type": "translation", "prefix": "to French: "}, "to French: ", "translation_text"),
        ({"type": "translation"}, "", "translation_text"),
    ],
)
def test_seq2seq_prefix_and_output_match_transformers(t5_with_prefixes, task, prefix, column):
    model_dir = t5_with_prefixes
    rows = predict(model_dir, {**task, "max_new_tokens": 6}, [LONG, SHORT])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    inputs = tokenizer(prefix + SHORT, return_tensors="pt")
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, 1:]
    expected = expected[expected != tokenizer.eos_token_id]  # cut at eos (and its padding)
    assert rows[1]["prompt_tokens"] == inputs["input_ids"].shape[1]
    assert rows[1][column] == tokenizer.decode(expected, skip_special_tokens=True)
    assert set(rows[1]) >= {column, "prompt_tokens", "generated_tokens", "finish_reason"}


@pytest.mark.parametrize(
    ("langs", "named"),
    [
        ({"source_lang": "en", "target_lang": "es"}, "translation_en_to_de"),  # a pair T5's config doesn't hold
        ({"source_lang": "English", "target_lang": "German"}, "translation_en_to_de"),
        ({"source_lang": "en"}, "translation_en_to_de"),  # half a pair
        ({"target_lang": "de"}, "translation_en_to_de"),
    ],
)
def test_translation_languages_that_pick_no_prefix_of_the_config_are_refused(t5_with_prefixes, tiny_models, langs,
                                                                             named):
    """source_lang/target_lang pick the config's task prefix: a pair the config doesn't name (en to es on T5,
    languages spelled out, one of the two left out) picked none, and every row was rewritten with no prefix,
    without a word (T5 then doesn't translate). Refused at start (plan and the actors), naming the pairs the config
    has; task.prefix given, the languages pick nothing and are let through, and a model whose config names no
    translation prefix is told so."""
    from pipelines.runner import preflight

    for check in (Predictor, preflight):  # the actors, and a run's check before any work
        with pytest.raises(PipelineError, match=rf"task.source_lang and target_lang .*{named}.*task.prefix"):
            check(make_spec(t5_with_prefixes, {"type": "translation", **langs}))
    spec = make_spec(t5_with_prefixes, {"type": "translation", "prefix": "to Spanish: ", **langs})
    assert Predictor(spec).task.prefix == "to Spanish: "
    with pytest.raises(PipelineError, match="names no translation prefix"):
        Predictor(make_spec(tiny_models("seq2seq"), {"type": "translation", "source_lang": "en", "target_lang": "de"}))


def test_seq2seq_sampling_is_reproducible(tiny_models):
    task = {"type": "summarization", "max_new_tokens": 6, "do_sample": True}
    first = predict(tiny_models("seq2seq"), task, SENTENCES, seed=3)
    second = predict(tiny_models("seq2seq"), task, SENTENCES[::-1], [f"r{i}" for i in range(8)][::-1], seed=3)
    assert [r["summary_text"] for r in first] == [r["summary_text"] for r in second[::-1]]


def test_long_prompts_lose_their_beginning_not_their_end(tiny_models):
    model_dir = tiny_models("causal")
    task = {"type": "text-generation", "max_new_tokens": 2, "prompt_template": "{text}\nSummary:"}
    predictor = Predictor(make_spec(model_dir, task, batching={"max_length": 16}))
    features = predictor.task.encode(["word " * 50, "short"], {})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = whole_prompt(predictor, features, 0)
    assert len(ids) == 16 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids).endswith("word \nSummary:")
    assert features.truncated.tolist() == [True, False]


# this project's decoding loop: a shared prefix, rows leaving the batch ------------------------------


def chat_prompt(tokenizer, system: str, user: str) -> list[int]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_shared_system_prompt_is_computed_once_and_answers_match_transformers(tiny_models, penalty):
    """Rows batched after a cached system turn, the short ones finishing early: each answer is what
    ``model.generate`` gives that row alone (the repetition penalty sees the whole prompt either way)."""
    model_dir = tiny_models("causal")
    system = "You answer in one short sentence about the news."
    task = {
        "type": "text-generation",
        "chat": True,
        "system_prompt": system,
        "max_new_tokens": 10,
        "repetition_penalty": penalty,
    }
    predictor = Predictor(make_spec(model_dir, task, batching={"min_fill": 0}))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first = chat_prompt(tokenizer, system, SENTENCES[0])
    assert predictor.task.kv_prefix.ids == first[: len(predictor.task.kv_prefix)]
    assert len(predictor.task.kv_prefix) > len(tokenizer(system)["input_ids"])  # the system turn is in it
    rows = predictor(batch_of(SENTENCES)).to_pylist()
    for text, row in zip(SENTENCES, rows):
        prompt = chat_prompt(tokenizer, system, text)
        expected = reference_generate(model_dir, prompt, 10, repetition_penalty=penalty)
        assert row["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True), text
        assert row["prompt_tokens"] == len(prompt)
        assert row["generated_tokens"] == len(expected) == row["_generated"]


def test_generated_tokens_are_counted_for_the_run(tiny_models):
    task = {"type": "text-generation", "max_new_tokens": 4, "do_sample": True, "num_return_sequences": 2}
    rows = predict(tiny_models("causal"), task, SENTENCES[:3])
    assert [r["_generated"] for r in rows] == [sum(r["generated_tokens"]) for r in rows]
    assert all(r["_tokens"] > 0 for r in rows)
    labels = Predictor(make_spec(tiny_models("causal"), {"type": "llm-label", "candidate_labels": ["a", "b"]}))
    assert labels(batch_of(SENTENCES[:2])).column("_generated").to_pylist() == [0, 0]


# stop strings -------------------------------------------------------------------------------------


def stop_inside(text: str) -> str:
    """Two characters from the middle of ``text`` (not blank), to stop at."""
    for start in range(len(text) // 2, len(text) - 1):
        if text[start : start + 2].strip():
            return text[start : start + 2]
    raise AssertionError(f"no stop string to pick in {text!r}")


def spanning_stop(tokenizer, tokens: list[int]) -> str:
    """A stop string made of one token's last character and the next token's first (it spans their boundary)."""
    pieces = [tokenizer.decode([t]) for t in tokens]
    for left, right in zip(pieces[1:], pieces[2:]):
        stop = left[-1:] + right[:1]
        if len(stop) == 2 and stop.strip() and "\ufffd" not in stop:
            return stop
    raise AssertionError(f"no stop string to pick in {pieces!r}")


@pytest.mark.parametrize("kind", ["causal", "gpt2"])
def test_stop_string_ends_one_row_and_leaves_the_others(tiny_models, kind):
    model_dir = tiny_models(kind)
    task = {"type": "text-generation", "max_new_tokens": 12}
    plain = predict(model_dir, task, SENTENCES)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    full = reference_generate(model_dir, tokenizer(SENTENCES[2])["input_ids"], 12)
    stop = spanning_stop(tokenizer, full)
    stopped = predict(model_dir, {**task, "stop": [stop, "never seen"]}, SENTENCES)
    kept = next(n for n in range(1, len(full) + 1) if stop in tokenizer.decode(full[:n], skip_special_tokens=True))
    row = stopped[2]
    assert row["generated_text"] == plain[2]["generated_text"][: plain[2]["generated_text"].index(stop)]
    assert row["finish_reason"] == "stop"
    assert row["generated_tokens"] == kept == row["_generated"]  # up to the token that completed the stop string
    for before, after in zip(plain, stopped):
        if stop not in before["generated_text"]:
            assert after == {**before, "_padded": after["_padded"]}  # untouched (the batch may have shrunk)


def test_stop_strings_keep_sampling_reproducible(tiny_models):
    """A stop string only ends a sequence: the tokens before it are those drawn without it, in any batch."""
    model_dir = tiny_models("causal")
    task = {"type": "text-generation", "max_new_tokens": 10, "do_sample": True, "num_return_sequences": 2}
    ids = [f"row-{i}" for i in range(len(SENTENCES))]
    free = predict(model_dir, task, SENTENCES, ids, seed=5)
    stop = stop_inside(free[1]["generated_text"][0])
    stopped = predict(model_dir, {**task, "stop": [stop]}, SENTENCES, ids, seed=5)
    alone = predict(model_dir, {**task, "stop": [stop]}, [SENTENCES[1]], [ids[1]], seed=5)[0]
    assert alone["generated_text"] == stopped[1]["generated_text"]
    for before, after in zip(free, stopped):
        for text, cut, reason in zip(before["generated_text"], after["generated_text"], after["finish_reason"]):
            assert cut == (text[: text.index(stop)] if stop in text else text)
            assert (reason == "stop") >= (stop in text)
    assert stopped[1]["finish_reason"][0] == "stop"


@pytest.mark.parametrize("task", [{"type": "summarization"}, {"type": "text-generation", "num_beams": 2}])
def test_stop_strings_through_model_generate(tiny_models, task):
    """Encoder-decoder models and beam search run model.generate: the text is cut at the stop string too."""
    kind = "seq2seq" if task["type"] == "summarization" else "gpt2"
    column = "summary_text" if kind == "seq2seq" else "generated_text"
    model_dir = tiny_models(kind)
    plain = predict(model_dir, {**task, "max_new_tokens": 10}, SENTENCES[:4])
    stop = stop_inside(plain[0][column])
    stopped = predict(model_dir, {**task, "max_new_tokens": 10, "stop": [stop]}, SENTENCES[:4])
    assert stopped[0][column] == plain[0][column][: plain[0][column].index(stop)]
    assert stopped[0]["finish_reason"] == "stop"
    assert stopped[0]["generated_tokens"] < plain[0]["generated_tokens"]


def test_an_empty_stop_string_is_a_spec_error():
    raw = {
        "input": {"paths": ["x"]},
        "model": {"name": "m"},
        "output": {"path": "o"},
        "task": {"type": "text-generation", "stop": ["\n", ""]},
    }
    with pytest.raises(PipelineError, match="stop strings must not be empty"):
        spec_from_dict(raw)


def test_extra_logits_processing_in_the_generation_config_goes_through_model_generate(tiny_models, tmp_path):
    """A model whose generation config asks for processing the own loop lacks keeps model.generate's answers."""
    model_dir = tmp_path / "no-repeat"
    shutil.copytree(tiny_models("causal"), model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["no_repeat_ngram_size"] = 2
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    predictor = Predictor(make_spec(str(model_dir), {"type": "text-generation", "max_new_tokens": 8}))
    assert predictor.task.kv_prefix is None
    row = predictor(batch_of([SENTENCES[1]])).to_pylist()[0]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = reference_generate(str(model_dir), tokenizer(SENTENCES[1])["input_ids"], 8)
    assert row["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("beams", [1, 2])
def test_a_min_length_in_the_generation_config_counts_each_rows_own_prompt_not_its_padding(tiny_models, tmp_path, beams):
    """A decoder's min_length counts the prompt and the generated tokens, and Transformers counts a left-padded row's
    padding as prompt: beside a longer prompt, "great" could end after 3 tokens where alone it may not end before
    its 30th, so its text depended on the rows batched with it."""
    model_dir = tmp_path / "min-length"
    shutil.copytree(tiny_models("causal"), model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["min_length"] = 30
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    task = {"type": "text-generation", "max_new_tokens": 12, "num_beams": beams}
    predictor = Predictor(make_spec(str(model_dir), task, batching={"min_fill": 0}))
    assert predictor.task.kv_prefix is None  # min_length: model.generate
    texts = [SHORT, "ok", LONG]
    batched = predictor(batch_of(texts)).to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for text, row in zip(texts, batched):
        alone = predictor(batch_of([text])).to_pylist()[0]
        assert {k: row[k] for k in TEXT_COLUMNS} == {k: alone[k] for k in TEXT_COLUMNS}, text
        expected = reference_generate(str(model_dir), tokenizer(text)["input_ids"], 12, num_beams=beams)
        assert row["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True), text


def test_max_new_tokens_past_the_models_positions_is_one_line_before_any_row(tiny_models):
    """Prompt and generated tokens must fit the model's positions (256 for the tiny Llama)."""
    with pytest.raises(PipelineError, match=r"max_new_tokens \(256\) leaves no room for a prompt in this model's 256"):
        Predictor(make_spec(tiny_models("causal"), {"type": "text-generation", "max_new_tokens": 256}))
    budget = Predictor(make_spec(tiny_models("causal"), {"type": "text-generation", "max_new_tokens": 200}))
    assert budget.task.prompt_budget == 56  # min(max_length, 256 - 200)


def model_with_generation_config(tiny_models, tmp_path, **settings) -> str:
    """A copy of the tiny Llama whose generation_config.json also holds ``settings`` (as a model's authors set)."""
    model_dir = tmp_path / "configured"
    shutil.copytree(tiny_models("causal"), model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config.update(settings)
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    return str(model_dir)


@pytest.mark.parametrize("cutoff", [{"min_p": 1.0}, {"epsilon_cutoff": 0.9}])
@pytest.mark.parametrize("path", [{}, {"no_repeat_ngram_size": 3}])  # the own loop, model.generate
def test_sampling_cutoffs_in_the_generation_config_are_applied(tiny_models, tmp_path, cutoff, path):
    """min_p 1.0 (or an epsilon cutoff above every token's probability) leaves only the most likely token to draw:
    model.generate and transformers.pipeline then sample the greedy text, at any temperature. Both were dropped
    (sampling is this project's own, and model.generate ran with do_sample=False), so such a model sampled from
    the whole vocabulary, without a word."""
    model_dir = model_with_generation_config(tiny_models, tmp_path, **cutoff, **path)
    task = {"type": "text-generation", "max_new_tokens": 8, "do_sample": True, "temperature": 3.0,
            "prompt_template": "Continue this: {text}"}
    predictor = Predictor(make_spec(model_dir, task))
    assert (predictor.task.kv_prefix is None) == bool(path)
    rows = predictor(batch_of(SENTENCES[:3], ["a", "b", "c"])).to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for text, row in zip(SENTENCES[:3], rows):
        prompt = tokenizer(f"Continue this: {text}")["input_ids"]
        greedy = reference_generate(model_dir, prompt, 8)
        with torch.inference_mode():
            sampled = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=True, temperature=3.0,
                                     pad_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
        assert sampled == greedy  # what Transformers does with this model
        assert row["generated_text"] == tokenizer.decode(greedy, skip_special_tokens=True), text


@pytest.mark.parametrize(
    "settings", [{"typical_p": 0.5}, {"eta_cutoff": 0.05}, {"top_h": 0.5}, {"min_p": 0.2, "epsilon_cutoff": 0.05}]
)
def test_the_sampler_keeps_the_tokens_model_generate_keeps(settings):
    """Each cutoff of a generation config leaves the tokens Transformers' sampling leaves (after the spec's
    temperature and top-p, in Transformers' order), row by row."""
    from transformers import (
        EpsilonLogitsWarper,
        EtaLogitsWarper,
        GenerationConfig,
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopHLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    warpers = {"top_h": TopHLogitsWarper, "min_p": MinPLogitsWarper, "typical_p": TypicalLogitsWarper,
               "epsilon_cutoff": EpsilonLogitsWarper, "eta_cutoff": EtaLogitsWarper}
    order = ["top_h", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"]  # model.generate's
    chain = [TemperatureLogitsWarper(0.7)] + [
        TopPLogitsWarper(0.95) if name == "top_p" else warpers[name](settings[name])
        for name in order if name in settings or name == "top_p"
    ]
    scores = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    prompt = torch.zeros(6, 1, dtype=torch.long)
    kept = LogitsProcessorList(chain)(prompt, scores.clone()).isfinite()

    options = GenerationOptions(type="x", do_sample=True, temperature=0.7, top_p=0.95)
    keys = seed_keys(torch.from_numpy(row_seeds(1, list(range(6)))))
    sampler = GumbelSampler(keys, 0, options, GenerationConfig(**settings))
    assert torch.equal(sampler(prompt, scores.clone()).isfinite(), kept)
    without = GumbelSampler(keys, 0, options)(prompt, scores.clone()).isfinite()
    assert without.sum() > kept.sum()  # the cutoff removed tokens top-p kept


@pytest.mark.parametrize("path", [{}, {"no_repeat_ngram_size": 3}])  # the own loop, model.generate
def test_the_generation_configs_sampling_defaults_apply_where_the_spec_sets_none(tiny_models, tmp_path, path):
    """A model's authors' top_k, temperature, top_p and repetition_penalty (Qwen2.5-Instruct: 20, 0.7, 0.8, 1.05) are
    what model.generate and transformers.pipeline use unless told otherwise; the spec's defaults (none, 1.0, 1.0,
    1.0) replaced them, without a word. Here top_k 1 leaves one token to draw, so the sample is the greedy text with
    the config's penalty; a spec value still wins (top_k: 0 is no top-k, as in Transformers)."""
    model_dir = model_with_generation_config(
        tiny_models, tmp_path, top_k=1, temperature=0.7, top_p=0.8, repetition_penalty=1.5, **path
    )
    task = {"type": "text-generation", "max_new_tokens": 8, "do_sample": True, "prompt_template": "Say: {text}"}
    predictor = Predictor(make_spec(model_dir, task))
    assert (predictor.task.kv_prefix is None) == bool(path)
    rows = predictor(batch_of(SENTENCES[:3], ["a", "b", "c"])).to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for text, row in zip(SENTENCES[:3], rows):
        greedy = reference_generate(model_dir, tokenizer(f"Say: {text}")["input_ids"], 8)  # the config's penalty
        assert row["generated_text"] == tokenizer.decode(greedy, skip_special_tokens=True), text
    unpenalised = predict(model_dir, {**task, "repetition_penalty": 1.0}, SENTENCES[:3], ids=["a", "b", "c"])
    assert [r["generated_text"] for r in unpenalised] != [r["generated_text"] for r in rows]  # the penalty counts
    spec_wins = predict(model_dir, {**task, "top_k": 0, "repetition_penalty": 1.0}, SENTENCES[:3], ids=["a", "b", "c"])
    assert [r["generated_text"] for r in spec_wins] != [r["generated_text"] for r in rows]


@pytest.mark.parametrize("path", [{}, {"no_repeat_ngram_size": 5}])  # the own loop, model.generate
def test_an_encoder_repetition_penalty_in_the_generation_config_favours_each_rows_own_prompt(tiny_models, tmp_path,
                                                                                              path):
    """encoder_repetition_penalty favours the tokens of the prompt. The own loop dropped it; model.generate counted a
    left-padded row's padding token (the eos here) as in its prompt, so "ok" beside a longer prompt ended at once,
    with an empty text."""
    model_dir = model_with_generation_config(tiny_models, tmp_path, encoder_repetition_penalty=3.0, **path)
    task = {"type": "text-generation", "max_new_tokens": 8, "prompt_template": "Say: {text}"}
    predictor = Predictor(make_spec(model_dir, task, batching={"min_fill": 0}))
    assert (predictor.task.kv_prefix is None) == bool(path)
    texts = ["ok", LONG, SENTENCES[1]]
    batched = predictor(batch_of(texts)).to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for text, row in zip(texts, batched):
        expected = reference_generate(model_dir, tokenizer(f"Say: {text}")["input_ids"], 8)
        assert row["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True), text
        assert predictor(batch_of([text])).to_pylist()[0]["generated_text"] == row["generated_text"], text


def test_an_encoder_repetition_penalty_favours_each_rows_own_input_in_summarization(tiny_models, tmp_path):
    """The same for an encoder-decoder: a right-padded input's padding (T5's pad, its decoder start too) was
    favoured, so a short row beside a longer one wrote padding: an empty summary."""
    model_dir = tmp_path / "t5"
    shutil.copytree(tiny_models("seq2seq"), model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["encoder_repetition_penalty"] = 3.0
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    texts = ["ok", LONG, SENTENCES[1]]
    rows = predict(str(model_dir), {"type": "summarization", "max_new_tokens": 8, "prefix": ""}, texts,
                   batching={"min_fill": 0})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    for text, row in zip(texts, rows):
        with torch.inference_mode():
            alone = model.generate(**tokenizer([text], return_tensors="pt"), max_new_tokens=8, do_sample=False)
        assert row["summary_text"] == tokenizer.decode(alone[0], skip_special_tokens=True), text


@pytest.mark.parametrize("beams", [1, 2])  # the own loop, model.generate
def test_stop_strings_in_the_generation_config_end_each_sequence_as_the_specs_stop_would(tiny_models, tmp_path, beams):
    """The own loop ignored a generation config's stop_strings; model.generate refused every row (it needs the
    tokenizer, which this project doesn't give it): each row failed with "you must pass the model's tokenizer". They
    now act as the spec's stop where it sets none."""
    model_dir = model_with_generation_config(tiny_models, tmp_path, stop_strings=["o"])
    task = {"type": "text-generation", "max_new_tokens": 8, "num_beams": beams, "prompt_template": "Say: {text}"}
    rows = predict(model_dir, task, SENTENCES[:2], ids=["a", "b"])
    plain = predict(tiny_models("causal"), {**task, "stop": ["o"]}, SENTENCES[:2], ids=["a", "b"])
    assert [r["_error"] for r in rows] == [None, None]
    assert {k: rows[0][k] for k in TEXT_COLUMNS} == {k: plain[0][k] for k in TEXT_COLUMNS}
    assert {k: rows[1][k] for k in TEXT_COLUMNS} == {k: plain[1][k] for k in TEXT_COLUMNS}
    assert "stop" in [r["finish_reason"] for r in rows]
    kept = predict(model_dir, {**task, "stop": ["\n\n"]}, SENTENCES[:2], ids=["a", "b"])  # the spec's replace them
    assert [r["finish_reason"] for r in kept] == ["length", "length"]


def test_a_prompt_cut_to_leave_room_for_max_new_tokens_is_quarantined_with_the_limit_it_was_cut_at(tiny_models):
    """The tiny Llama has 256 positions: with max_new_tokens 200 a prompt keeps at most 56 tokens, under max_length
    128. A prompt of about 60 tokens was cut there and, with errors.too_long: error, quarantined as "text longer
    than max_length (max_length is 128 tokens)": a row shorter than the limit its reason named."""
    task = {"type": "text-generation", "max_new_tokens": 200}
    out = Predictor(make_spec(tiny_models("causal"), task, errors={"too_long": "error"}))(batch_of(["word " * 40, "hi"]))
    reason = out.column(ERROR).to_pylist()[0]
    assert reason == ("text longer than max_length (the prompt's room is 56 tokens: the model's 256 positions less "
                      "task.max_new_tokens 200)"), reason
    assert out.column(ERROR).to_pylist()[1] is None
