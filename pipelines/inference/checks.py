"""Checks on the driver that a model can be loaded at all, before anything is written. Light: files only.

A model directory without weights (a half-copied checkpoint, a directory holding only a config) would
otherwise be found out by every actor of the pool, after the output has been claimed. Here the files
``from_pretrained`` needs are looked for: the config, the weights (one file, or a sharded index and every
shard it names) and the tokenizer's files. A local directory (or an alias, which resolves to one) is
checked on disk; a Hugging Face id only when the hub is offline and the id is in the local cache, since
online the missing files are downloaded, and by its config.json (:func:`check_hub_config`) in either case.
No torch, no transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.errors import PipelineError, first_line
from pipelines.spec import ModelSpec

CONFIG = "config.json"
#: Weight files ``from_pretrained`` reads: one file, or an index naming the shards.
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: Any one of these (or a sentencepiece / tiktoken model file) lets ``AutoTokenizer`` load a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt")
TOKENIZER_SUFFIXES = (".model", ".spm", ".tiktoken")


def check_model_files(spec: ModelSpec, resolved: str) -> None:
    """Raise PipelineError when the model ``resolved`` (a directory or a hub id) misses files it needs."""
    if os.path.isdir(resolved):
        check_model_directory(Path(resolved), spec.name)
        return
    snapshot = cached_snapshot(resolved, spec.revision)
    if snapshot is not None:
        check_model_directory(snapshot, spec.name, cached=True)


def check_hub_config(spec: ModelSpec, repo_id: str) -> dict:
    """A hub id's ``config.json`` can be had (downloaded, or from the local cache) and is a JSON object: the id,
    the revision and the access are right; returns it. The files only, as for a local directory (whether its
    architecture fits the task is :func:`check_task_head`'s)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if os.path.exists(repo_id):  # a path to a file (a directory was checked on disk)
        raise config_error(spec, f"{repo_id} is a file; give the directory that holds the model's {CONFIG}")
    try:
        found = hf_hub_download(repo_id, CONFIG, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - the hub client raises its own, httpx's and OS errors alike
        try:  # the Hub could not be asked (a proxy, the network): a cached config still does, as it does to load
            cached = try_to_load_from_cache(repo_id, CONFIG, revision=spec.revision)
        except Exception:  # noqa: BLE001 - not a valid id: said by hub_reason
            cached = None
        if not isinstance(cached, str):
            raise config_error(spec, hub_reason(exc, spec.revision)) from None
        found = cached
    try:
        config = json.loads(Path(found).read_text())
    except (OSError, ValueError) as exc:
        raise config_error(spec, f"its {CONFIG} does not read as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise config_error(spec, f"its {CONFIG} holds no JSON object")
    return config


#: The head each task's model class loads, as the checkpoint's config names it (``architectures``), and the Auto
#: class a model with its own code (``auto_map``) would load it with. The tasks left out load what they need by
#: other means: the generating ones are checked by the kind of model (``GENERATION_HEADS``), feature-extraction
#: reads any model's hidden states, zero-shot-classification picks its method by the model.
TASK_HEADS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "text-classification": ("a sequence-classification head", ("ForSequenceClassification",),
                            "AutoModelForSequenceClassification"),
    "token-classification": ("a token-classification head", ("ForTokenClassification",),
                             "AutoModelForTokenClassification"),
    "question-answering": ("a question-answering head", ("ForQuestionAnswering",), "AutoModelForQuestionAnswering"),
    "fill-mask": ("a masked-language-model head", ("ForMaskedLM", "ForPreTraining"), "AutoModelForMaskedLM"),
}
#: The heads of encoders (BERT's family) and of classifiers: no checkpoint with one of them alone is a language model
#: that writes left to right, nor an encoder-decoder.
ENCODER_HEADS = ("ForMaskedLM", "ForPreTraining", "ForSequenceClassification", "ForTokenClassification",
                 "ForQuestionAnswering", "ForMultipleChoice", "ForNextSentencePrediction")
#: The heads of decoder-only language models.
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")
#: The generating tasks by the kind of model each loads: (what it needs, the architectures that are surely another
#: kind). Transformers' Auto class would load an encoder as a causal LM (BERT as BertLMHeadModel: noise), an
#: encoder-decoder's decoder alone (BartForCausalLM: noise) or fail on a bare ValueError (T5).
GENERATION_HEADS: dict[str, tuple[str, tuple[str, ...]]] = {
    "text-generation": ("a decoder-only language model (*ForCausalLM, *LMHeadModel)", ENCODER_HEADS),
    "llm-label": ("a decoder-only language model (*ForCausalLM, *LMHeadModel)", ENCODER_HEADS),
    "summarization": ("an encoder-decoder model (T5, BART, Marian, ...)", ENCODER_HEADS + CAUSAL_HEADS),
    "translation": ("an encoder-decoder model (T5, BART, Marian, ...)", ENCODER_HEADS + CAUSAL_HEADS),
}
#: The tasks a checkpoint of an architecture (by the end of its name) was trained for, for the error's fix.
FITTING_TASKS: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "text-classification (or zero-shot-classification for an NLI model)"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask or feature-extraction"),
    ("ForPreTraining", "fill-mask or feature-extraction"),
    ("ForCausalLM", "text-generation or llm-label"),
    ("LMHeadModel", "text-generation or llm-label"),
    ("ForConditionalGeneration", "summarization, translation or text-generation"),
)


def generation_head_problem(task: str, architectures: list[str], config: dict) -> tuple[str, str] | None:
    """(what ``task`` needs, the tasks the checkpoint fits) where a generating task's model is surely of another kind:
    an encoder-decoder for a decoder-only task, a checkpoint whose every architecture has another kind's head."""
    needs, other = GENERATION_HEADS[task]
    encoder_decoder = config.get("is_encoder_decoder") is True
    causal = any(a.endswith(CAUSAL_HEADS) for a in architectures)  # BartForCausalLM: its config says encoder-decoder
    if task in ("text-generation", "llm-label") and encoder_decoder and not causal:
        return needs, ("summarization or translation (either rewrites each row with the model as it is; task.prefix "
                       "puts an instruction before the row)")
    if architectures and all(a.endswith(other) for a in architectures):
        fits = [tasks for suffix, tasks in FITTING_TASKS if any(a.endswith(suffix) for a in architectures)]
        return needs, fits[0] if fits else "feature-extraction"
    if architectures and all(a.endswith("Model") and not a.endswith("LMHeadModel") for a in architectures) and (
            task in ("text-generation", "llm-label") or not encoder_decoder):
        # a base model without a language-model head (BertModel: minilm): Transformers would add a random one, or
        # fail to load it as an encoder-decoder (an encoder-decoder's base class, MarianMTModel, says it is one)
        return needs, "feature-extraction, or zero-shot-classification by embedding similarity"
    if task in ("summarization", "translation") and config.get("is_encoder_decoder") is False and not any(
            a.endswith("ForConditionalGeneration") for a in architectures):
        return needs, "text-generation or llm-label" if causal or not architectures else "feature-extraction"
    return None


def check_task_head(task: str, name: str, config: dict, method: str | None = None) -> None:
    """Refuse a model whose checkpoint has no head for ``task``, as its config's ``architectures`` say: Transformers
    would fill the missing head with random weights (an embedding model for text-classification: one label, a
    score of 0.50, every row) or load another task's head of the same shape as this one's (a sequence classifier
    for token-classification), warn in a log line, and the run would write noise as results. A config that names
    no architectures, or a model with its own code for this task (``auto_map``), is let through. ``method``:
    zero-shot-classification's ``task.method`` (:func:`check_zero_shot_method`)."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        architectures = []
    if task == "zero-shot-classification":
        check_zero_shot_method(name, config, architectures, method)
    if task not in TASK_HEADS and task not in GENERATION_HEADS:
        return
    if task in GENERATION_HEADS:
        auto_map = config.get("auto_map")
        if isinstance(auto_map, dict) and any(key in auto_map for key in ("AutoModelForCausalLM",
                                                                          "AutoModelForSeq2SeqLM")):
            return  # the model's own code
        problem = generation_head_problem(task, architectures, config)
        if problem is not None:
            needs, fit = problem
            kind = f"a {', '.join(architectures)}" if architectures else (
                "an encoder-decoder model" if task in ("text-generation", "llm-label") else
                "no encoder-decoder model (its config says is_encoder_decoder: false)")
            raise PipelineError(
                f"model {name!r}: task.type {task} needs {needs}, but this checkpoint is {kind}: Transformers "
                f"would load it as another kind of model (or fail), and every row's output would be noise; give "
                f"a model of that kind, or set task.type to what this model was trained for: {fit}"
            )
        return
    head, suffixes, auto_class = TASK_HEADS[task]
    if not architectures:
        return
    auto_map = config.get("auto_map")
    if any(a.endswith(suffixes) for a in architectures) or (isinstance(auto_map, dict) and auto_class in auto_map):
        return
    fits = [tasks for suffix, tasks in FITTING_TASKS if any(a.endswith(suffix) for a in architectures)]
    fit = fits[0] if fits else "feature-extraction, or zero-shot-classification by embedding similarity"
    raise PipelineError(
        f"model {name!r}: task.type {task} needs {head} ({', '.join(f'*{s}' for s in suffixes)} in {CONFIG}'s "
        f"architectures), but this checkpoint is a {', '.join(architectures)}: Transformers would put random "
        f"weights (or another task's head) in its place, and every prediction would be noise; give a model "
        f"fine-tuned for {task}, or set task.type to what this model was trained for: {fit}"
    )


def nli_label_id(config: Any, prefix: str) -> int | None:
    """The class whose label starts with ``prefix`` (``entail``, ``contra``) in a model config (its object, or
    ``config.json`` as a dict): by ``label2id``, else by ``id2label``, which a config.json may give alone
    (Transformers then leaves ``label2id`` None: an NLI model so was scored by embedding under ``method: auto``)."""
    def field(name: str) -> Any:
        found = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        return found if isinstance(found, dict) else {}

    for label, index in field("label2id").items():
        if str(label).lower().startswith(prefix):
            return int(index)
    for index, label in field("id2label").items():
        if str(label).lower().startswith(prefix):
            return int(index)
    return None


def check_zero_shot_method(name: str, config: dict, architectures: list[str], method: str | None) -> None:
    """Refuse zero-shot-classification under ``method: auto`` where the checkpoint is a sequence classifier whose
    labels name no entailment: auto then scores by embedding similarity, loading the model without its head, and a
    classifier's encoder was not trained to give embeddings (an NLI model whose labels are ``LABEL_0``… scored 20% on
    four topics so, without a word but Transformers' load report). ``task.method: embedding`` says it is meant."""
    if method != "auto" or not architectures or not all(a.endswith("ForSequenceClassification") for a in architectures):
        return
    if nli_label_id(config, "entail") is not None:
        return
    named, numbered = config.get("label2id"), config.get("id2label")
    labels = ([str(label) for label in named] if isinstance(named, dict) else []) or (
        [str(label) for label in numbered.values()] if isinstance(numbered, dict) else [])
    shown = ", ".join(labels[:4]) + (", …" if len(labels) > 4 else "") if labels else "none"
    raise PipelineError(
        f"model {name!r}: zero-shot-classification with task.method auto scores by NLI where the model names an "
        f"entailment label, else by embedding similarity, but this checkpoint is a {', '.join(architectures)} (a "
        f"classifier) whose labels ({shown}) name none: by embedding its head would be dropped and the candidate "
        "labels scored by its encoder, which was trained to classify, not to embed; for an NLI model, name its "
        f"labels in {CONFIG}'s id2label and label2id (entailment, neutral, contradiction), or set task.method: "
        "embedding to score by its encoder anyway (or task.type text-classification for its own labels)"
    )


def check_translation_languages(options: Any, task_specific_params: Any) -> None:
    """Refuse translation's source_lang/target_lang where they pick no prefix of the model config's
    ``task_specific_params`` (they exist to pick one): every row would be rewritten with no prefix, without a word
    (T5 then doesn't translate). Let through with ``task.prefix`` given, or with neither language given."""
    source, target = getattr(options, "source_lang", None), getattr(options, "target_lang", None)
    if getattr(options, "prefix", None) is not None or (source is None and target is None):
        return
    params = task_specific_params if isinstance(task_specific_params, dict) else {}
    if f"translation_{source}_to_{target}" in params:
        return
    pairs = sorted(key for key in params if key.startswith("translation_"))
    given = f"task.source_lang and target_lang ({source} and {target})"
    if pairs:
        raise PipelineError(
            f"translation: {given} pick no prefix of the model config's task_specific_params, which names "
            f"{', '.join(pairs)}: set them to one of those pairs (e.g. source_lang: {pairs[0].split('_')[1]}, "
            f"target_lang: {pairs[0].split('_to_')[-1]}), or write the prefix the model needs as task.prefix"
        )
    raise PipelineError(
        f"translation: {given}: the model config names no translation prefix for them to pick (they only pick "
        "one; they don't set a multilingual tokenizer's languages); remove them for a model that translates one "
        "pair without a prefix (Marian opus-mt), or write the prefix the model needs as task.prefix"
    )


def hub_reason(exc: BaseException, revision: str | None) -> str:
    """Why a hub id's config could not be had, in words (the hub client's own first line is an HTTP status)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return "the repository is gated: accept its terms on the Hub, and give a token that may read it (HF_TOKEN)"
    if isinstance(exc, RepositoryNotFoundError):
        return ("no such directory here, and no such repository on the Hub (or it is private and no token here "
                "may read it: HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return f"the repository has no revision {revision!r}"
    if isinstance(exc, RemoteEntryNotFoundError):
        return f"the repository has no {CONFIG}"
    if isinstance(exc, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return "no such directory here, and it is not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
        return "no such directory here, and the Hub could not be reached, nor is it in the local cache"
    if isinstance(exc, ValueError):  # the hub client's validation: not an id at all
        return f"no such directory here, and not a Hugging Face id ({first_line(exc)})"
    return first_line(exc)


def config_error(spec: ModelSpec, reason: BaseException | str) -> PipelineError:
    """The one line for a model whose config can't be loaded: the reason, and what to give instead."""
    from pipelines.inference.aliases import ALIASES

    said = reason if isinstance(reason, str) else first_line(reason)
    if "custom code" in said and not spec.trust_remote_code:  # Transformers' advice to trust it is past its first line
        return PipelineError(
            f"model {spec.name!r}: cannot load its config ({said}); the model comes with code of its own, which "
            "runs only with model.trust_remote_code: true (read it first: it runs in every actor)"
        )
    return PipelineError(
        f"model {spec.name!r}: cannot load its config ({said}); give a local model directory, "
        f"a Hugging Face id reachable from here, or an alias: {', '.join(ALIASES)}"
    )


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local cache's snapshot of a hub id, when the hub is offline and the id is cached; else None."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return None
    try:
        found = try_to_load_from_cache(repo_id, CONFIG, revision=revision)
    except Exception:  # noqa: BLE001 - not a valid repo id: loading the config says so in its own words
        return None
    return Path(found).parent if isinstance(found, str) else None


def check_model_directory(folder: Path, name: str, cached: bool = False) -> None:
    shown = f" (cached at {folder})" if cached else f" ({folder})" if str(folder) != name else ""
    where = f"model {name!r}{shown}"
    fix = (
        "download it again while online (unset HF_HUB_OFFLINE)"
        if cached
        else "copy the model's files there, or write them with save_pretrained()"
    )
    if not (folder / CONFIG).is_file():
        if (folder / "adapter_config.json").is_file():
            raise PipelineError(
                f"{where}: the directory is an adapter (adapter_config.json: PEFT's LoRA or another), not a whole "
                f"model, and has no {CONFIG}; merge it into its base model (peft: "
                "PeftModel.from_pretrained(base, folder).merge_and_unload(), then save_pretrained()) and give "
                "that folder"
            )
        snapshots = sorted(p for p in (folder / "snapshots").glob("*/") if (p / CONFIG).exists())
        main = folder / "snapshots" / read_text_or_empty(folder / "refs" / "main")
        snapshots.sort(key=lambda p: p == main)  # the one refs/main names last, to name it
        if folder.name.startswith("models--") and snapshots:
            raise PipelineError(
                f"{where}: the directory is a Hugging Face cache's folder of a repository, not a model (it has no "
                f"{CONFIG}); give one of its snapshots, e.g. {snapshots[-1]}, or the repository's id "
                f"({folder.name[len('models--'):].replace('--', '/')}) with HF_HUB_CACHE naming the cache "
                "(HF_HUB_OFFLINE=1 to read it without the Hub)"
            )
        raise PipelineError(f"{where}: the directory has no {CONFIG}; {fix}")
    missing = missing_weights(folder)
    if missing:
        raise PipelineError(f"{where}: {missing}; {fix}")
    if not any((folder / n).is_file() for n in TOKENIZER_FILES) and not any(
        p.suffix in TOKENIZER_SUFFIXES for p in folder.iterdir()
    ):
        raise PipelineError(
            f"{where}: the directory has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); {fix}, "
            "the tokenizer's too (tokenizer.save_pretrained())"
        )


def read_text_or_empty(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def missing_weights(folder: Path) -> str | None:
    """What is missing of the weights, in words; None when they are all there."""
    if any((folder / n).is_file() for n in WEIGHTS):
        return None
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                return f"its weight index {index} is unreadable ({type(exc).__name__}: {exc})"
            absent = [shard for shard in shards if not (folder / shard).is_file()]
            if absent:
                return f"{len(absent)} of the {len(shards)} weight files named in {index} are missing, e.g. {absent[0]}"
            return None
    return f"the directory has no weights ({', '.join(WEIGHTS)} or a sharded {WEIGHT_INDEXES[0]})"
