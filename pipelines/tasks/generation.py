"""What text-generation, summarization and translation share: options, decoding, reproducible sampling.

Sampling is reproducible per row: each row draws its noise from a counter-based
hash of (row seed, step, vocabulary index), where the row seed comes from the
job's seed and the row's id. A row's sampled text therefore depends on neither
the other rows in its batch nor the padding, and a re-run gives the same text.

The trick is the Gumbel-max identity: ``argmax(logits / T + g)`` with ``g``
standard Gumbel noise is a sample from ``softmax(logits / T)``. So generation
runs as greedy decoding (``do_sample=False``) with one extra logits processor
that applies temperature, top-k and top-p, and the cutoffs of the model's generation
config (min_p, typical_p, ...), then adds the row's Gumbel noise — vectorized over
the micro-batch and the vocabulary, no loop over rows.

The model's generation config holds what the spec leaves out (temperature, top-k, top-p,
repetition penalty, stop strings: :func:`with_model_defaults`, at setup); its processing
that depends on a row's prompt (``min_length``, ``encoder_repetition_penalty``) counts the
row's own prompt, never its padding, as alone.

Decoder-only models with one beam decode in this project's own loop
(:mod:`pipelines.inference.decoding`): the prompt part every row shares (chat
opening, system prompt, the template's head) is computed once per actor and its
KV cache reused, and a row leaves the batch as soon as it ends. Beam search,
encoder-decoder models and models whose generation config asks for more logits
processing go through ``model.generate``. Both give the same greedy text.

Stop strings end a sequence where its text first contains one of them; the text
is cut before it (``finish_reason`` "stop"), and the row's other sequences and
the other rows go on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from transformers import (
    EncoderRepetitionPenaltyLogitsProcessor,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from pipelines.inference.batching import Ragged, plan_microbatches
from pipelines.inference.decoding import Process, decode
from pipelines.inference.kv_cache import Prefix, PrefixTokens, Rows, merge, shared_prefix, supports_reuse
from pipelines.tasks.base import ROW_ID, Features, Outputs, Task
from pipelines.tasks.options import CONFIG_DEFAULTS, GenerationOptions

log = logging.getLogger(__name__)

MASK32 = 0xFFFFFFFF

# Own loop: the prompts of a micro-batch run in groups whose shortest is at least this share of the longest
# (little padding), then decode together in one batch (the more rows per step, the cheaper each row's step).
PREFILL_FILL = 0.9


# reproducible noise ----------------------------------------------------------------


#: What a row with a null id is known by for its seed, before its prompt: no id's text starts so.
NO_ID = "\x00no id\x1f"


def row_seeds(seed: int, keys: list[Any]) -> np.ndarray:
    """One 63-bit seed per row from the job seed and the row's id (stable across runs and machines)."""
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") >> 1
    return out


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Mueller's), on int64 tensors holding values in [0, 2**32); never overflows int64."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & MASK32
    return (x >> 16) ^ x


def seed_keys(seeds: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """32-bit keys from 63-bit seeds, one independent stream per ``stream`` (e.g. the sample index)."""
    high, low = (seeds >> 32) & MASK32, seeds & MASK32
    return mix32(mix32(mix32(high) ^ low) ^ mix32(torch.full_like(seeds, stream + 0x9E37)))


def uniform_noise(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), float64, ``[rows, vocab]``: a pure function of (key, step, vocabulary index)."""
    index = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    step_keys = mix32(keys ^ mix32(torch.full_like(keys, step & MASK32)))
    bits = mix32(mix32(step_keys[:, None] ^ index[None, :]) ^ (index[None, :] * 2 + 1))
    return (bits.to(torch.float64) + 0.5) / 2.0**32


def sampling_warpers(
    config: GenerationConfig | None,
    device: torch.device,
    temperature: LogitsProcessor | None = None,
    top_k: LogitsProcessor | None = None,
    top_p: LogitsProcessor | None = None,
) -> list[LogitsProcessor]:
    """What ``model.generate`` does to the scores before it samples (one beam), in its order: the given temperature,
    top-k and top-p (the spec's or the request's), with the cutoffs of the model's generation ``config`` that no
    option sets (``top_h``, ``min_p``, ``typical_p``, ``epsilon_cutoff``, ``eta_cutoff``) where Transformers puts
    them. Each works on each row's scores alone."""
    top_h, min_p, typical, epsilon, eta = (
        getattr(config, name, None) for name in ("top_h", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
    )
    chain: list[LogitsProcessor | None] = [temperature]
    if top_h is not None:
        chain.append(TopHLogitsWarper(top_h=top_h))
    chain += [top_k, top_p]
    if min_p is not None:
        chain.append(MinPLogitsWarper(min_p=min_p))
    if typical is not None and typical < 1.0:
        chain.append(TypicalLogitsWarper(mass=typical))
    if epsilon is not None and 0.0 < epsilon < 1.0:
        chain.append(EpsilonLogitsWarper(epsilon=epsilon))
    if eta is not None and 0.0 < eta < 1.0:
        chain.append(EtaLogitsWarper(epsilon=eta, device=device))
    return [warper for warper in chain if warper is not None]


class GumbelSampler(LogitsProcessor):
    """The spec's temperature, top-k and top-p and the model's generation config's cutoffs (``sampling_warpers``),
    then per-row Gumbel noise: greedy decoding then samples reproducibly."""

    def __init__(
        self,
        keys: torch.Tensor,
        start: int,
        options: GenerationOptions,
        config: GenerationConfig | None = None,
    ) -> None:
        self.keys = keys
        self.start = start
        self.warpers = sampling_warpers(
            config,
            keys.device,
            TemperatureLogitsWarper(options.temperature) if options.temperature not in (None, 1.0) else None,
            TopKLogitsWarper(options.top_k) if options.top_k else None,
            TopPLogitsWarper(options.top_p) if options.top_p is not None and options.top_p < 1.0 else None,
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.draw(input_ids, scores, self.keys, input_ids.shape[1] - self.start)

    def draw(self, input_ids: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, step: int) -> torch.Tensor:
        """The warped scores plus the Gumbel noise of the rows with these ``keys`` at generation ``step``."""
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        uniform = uniform_noise(keys, step, scores.shape[1])
        gumbel = -torch.log(-torch.log(uniform))
        return scores + gumbel.to(scores.dtype)


class RowMinLength(LogitsProcessor):
    """A decoder's ``min_length`` (prompt and generated tokens together) for each sequence as it would be alone: no
    end-of-sequence token until its own prompt and what it generated reach it. Transformers' processor counts a
    left-padded row's padding as prompt, so that a row beside a longer prompt could end sooner than alone."""

    def __init__(self, min_length: int, eos: list[int], prompt_lengths: torch.Tensor, start: int) -> None:
        self.min_length = min_length
        self.eos = eos
        self.prompt_lengths = prompt_lengths
        self.start = start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        short = self.prompt_lengths + (input_ids.shape[1] - self.start) < self.min_length
        ban = torch.zeros_like(scores, dtype=torch.bool)
        ban[:, self.eos] = short[:, None]
        return scores.masked_fill(ban, float("-inf"))


class RowEncoderPenalty(LogitsProcessor):
    """A generation config's ``encoder_repetition_penalty`` (favouring the prompt's tokens, the encoder's input for an
    encoder-decoder) on each sequence's own prompt: Transformers' counts a padded row's padding token as in its prompt,
    so that beside a longer prompt a row could favour it (and end at once where it is the eos)."""

    def __init__(self, penalty: float, prompts: torch.Tensor) -> None:
        self.penalty = penalty
        self.prompts = prompts  # [sequences, width]: each one's prompt, its padding as a token of its own (own_prompt)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.apply(scores, self.prompts)

    def apply(self, scores: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """The scores of the sequences whose prompts these are, penalised."""
        return EncoderRepetitionPenaltyLogitsProcessor(self.penalty, prompts)(prompts, scores)


def own_prompt(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's tokens, its padding (left or right) replaced by its first token: the row's own set of tokens."""
    first = ids.gather(1, mask.argmax(dim=1, keepdim=True))
    return torch.where(mask.bool(), ids, first)


def encoder_penalty(model: torch.nn.Module) -> float | None:
    """The generation config's ``encoder_repetition_penalty`` where it changes anything."""
    penalty = getattr(model.generation_config, "encoder_repetition_penalty", None)
    return None if penalty is None or penalty == 1.0 else float(penalty)


def sampling_keys(seeds: np.ndarray, count: int, device: torch.device) -> torch.Tensor:
    """One noise key per sequence, ``count`` sequences per row, row by row (as ``repeat_interleave`` lays rows)."""
    seeds_ = torch.from_numpy(np.asarray(seeds, dtype=np.int64)).to(device)
    return torch.stack([seed_keys(seeds_, stream) for stream in range(count)], dim=1).reshape(len(seeds) * count)


# stop strings --------------------------------------------------------------------


def contains_stop(tokenizer: Any, sequences: list[list[int]], stops: Sequence[Sequence[str]]) -> list[bool]:
    """Whether each sequence's text (special tokens skipped) contains one of its own stop strings."""
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return [any(stop in text for stop in row) for text, row in zip(texts, stops, strict=True)]


def generated_stops(
    tokenizer: Any, input_ids: torch.Tensor, start: int, stops: Sequence[Sequence[str]]
) -> torch.Tensor:
    """Whether each row's generated text (its tokens from column ``start`` on: the prompt never counts, as in the
    OpenAI API) contains one of that row's ``stops``; a row with none is not decoded."""
    hits = torch.zeros(len(stops), dtype=torch.bool, device=input_ids.device)
    asked = [i for i, row in enumerate(stops) if row]
    if asked:
        rows = torch.tensor(asked, device=input_ids.device)
        found = contains_stop(tokenizer, input_ids[rows, start:].tolist(), [stops[i] for i in asked])
        hits[rows] = torch.tensor(found, device=input_ids.device)
    return hits


class StopStrings(StoppingCriteria):
    """``model.generate``'s stopping rule for stop strings, on the generated text as this project decodes it
    (Transformers' own ``stop_strings`` match token strings, which differ from the text where a token carries a
    leading space, and the prompt's too)."""

    def __init__(self, tokenizer: Any, stops: list[str], start: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return generated_stops(self.tokenizer, input_ids, self.start, [self.stops] * len(input_ids))


def stop_length(tokenizer: Any, tokens: list[int], stops: list[str]) -> int | None:
    """How many tokens a sequence keeps when its text contains a stop string: up to the one completing the first
    occurrence; None when it contains none."""
    if not any(stop in tokenizer.decode(tokens, skip_special_tokens=True) for stop in stops):
        return None
    n = len(tokens)
    while n > 1 and any(stop in tokenizer.decode(tokens[: n - 1], skip_special_tokens=True) for stop in stops):
        n -= 1
    return n


# decoding ------------------------------------------------------------------------


def eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Every token that ends generation: the model's generation config, else the tokenizer's eos."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return []
    return [int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured])]


# Generation-config settings that add logits processing ``model.generate`` does and this project's own loop doesn't.
EXTRA_PROCESSING = (
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "min_length",
    "min_new_tokens",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "exponential_decay_length_penalty",
    "renormalize_logits",
    "guidance_scale",
    "watermarking_config",
)


def with_model_defaults(options: GenerationOptions, config: GenerationConfig | None) -> GenerationOptions:
    """The options with each one the spec leaves out (``CONFIG_DEFAULTS``) set as ``model.generate`` sets it: the
    model's generation config's value, else no change; ``top_k`` 0 is none, as in Transformers. The config's
    ``stop_strings`` are the spec's ``stop`` where it has none."""
    update: dict[str, Any] = {}
    for name, default in CONFIG_DEFAULTS.items():
        if getattr(options, name) is None:
            configured = getattr(config, name, None)
            update[name] = configured if configured is not None else default
    if update.get("top_k", options.top_k) == 0:
        update["top_k"] = None
    configured_stops = getattr(config, "stop_strings", None)
    if not options.stop and configured_stops:  # as the spec's stop (model.generate would need the tokenizer)
        update["stop"] = [configured_stops] if isinstance(configured_stops, str) else list(configured_stops)
    return options.model_copy(update=update)


def decodes_in_own_loop(model: torch.nn.Module, options: GenerationOptions) -> bool:
    """Whether this project's decoding loop can run this model and these options (else ``model.generate``)."""
    if options.num_beams > 1 or not supports_reuse(model):
        return False
    configured, default = model.generation_config, GenerationConfig()
    return all(getattr(configured, name, None) == getattr(default, name, None) for name in EXTRA_PROCESSING)


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    inputs: dict[str, torch.Tensor],
    seeds: np.ndarray | None,
    options: GenerationOptions,
) -> tuple[list[list[np.ndarray]], list[list[bool]]]:
    """Generated token ids (prompt and eos excluded) per feature and sequence, and whether each stopped at eos,
    through ``model.generate``."""
    count = options.num_return_sequences
    eos = eos_ids(model, tokenizer)
    kwargs: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "do_sample": False,
        "num_beams": options.num_beams,
        "num_return_sequences": 1 if options.do_sample else count,
        "repetition_penalty": options.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos or None,
        # neutralise sampling defaults a model's generation_config may carry: sampling is ours
        "temperature": None,
        "top_k": None,
        "top_p": None,
        "stop_strings": None,  # the config's are options.stop (with_model_defaults)
    }
    start = 1 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    if options.stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([StopStrings(tokenizer, list(options.stop), start)])
    processors: list[LogitsProcessor] = []
    if options.do_sample:
        inputs = {name: value.repeat_interleave(count, dim=0) for name, value in inputs.items()}
    penalty = encoder_penalty(model)
    if penalty is not None and "attention_mask" in inputs:
        own_ids = own_prompt(inputs["input_ids"], inputs["attention_mask"]).repeat_interleave(options.num_beams, 0)
        processors.append(RowEncoderPenalty(penalty, own_ids))
        kwargs["encoder_repetition_penalty"] = 1.0
    min_length = getattr(model.generation_config, "min_length", None) or 0
    if min_length > 0 and eos and not model.config.is_encoder_decoder and "attention_mask" in inputs:
        # each sequence's own prompt counts, not its padding (beam search holds num_beams sequences per row)
        own = inputs["attention_mask"].sum(dim=1).repeat_interleave(options.num_beams)
        processors.append(RowMinLength(min_length, eos, own, start))
        kwargs["min_length"] = 0
    if options.do_sample:
        keys = sampling_keys(np.asarray(seeds), count, inputs["input_ids"].device)
        processors.append(GumbelSampler(keys, start, options, model.generation_config))
    if processors:
        kwargs["logits_processor"] = LogitsProcessorList(processors)
    sequences = model.generate(**inputs, **kwargs)
    return split_generated(sequences[:, start:].cpu().numpy(), eos, count)


def split_generated(
    generated: np.ndarray, eos: list[int], count: int
) -> tuple[list[list[np.ndarray]], list[list[bool]]]:
    """Cut each generated row at its first eos (kept out); group ``count`` sequences per feature."""
    ended = np.isin(generated, eos) if eos else np.zeros(generated.shape, dtype=bool)
    stopped = np.asarray(ended.any(axis=1))
    length = np.where(stopped, ended.argmax(axis=1), generated.shape[1])
    tokens = [generated[i, : length[i]] for i in range(len(generated))]
    grouped = [tokens[i : i + count] for i in range(0, len(tokens), count)]
    flags = [stopped[i : i + count].tolist() for i in range(0, len(tokens), count)]
    return grouped, flags


def scatter(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-feature flags onto rows (False for rows without a feature)."""
    out = np.zeros(n_rows, dtype=bool)
    out[rows] = values
    return out


def prefill_groups(lengths: np.ndarray) -> list[np.ndarray]:
    """The prompts of a micro-batch in groups of similar length (indices), longest first."""
    return plan_microbatches(lengths, max_tokens=2**62, max_rows=max(len(lengths), 1), min_fill=PREFILL_FILL)


class GenerationTask(Task):
    """A task whose forward generates text; subclasses tokenize prompts in ``encode``.

    Output columns: the text (``text_output``), ``prompt_tokens``, ``generated_tokens``
    (the eos token included) and ``finish_reason`` ("stop" at eos or a stop string, "length" at
    max_new_tokens); text, token counts and finish reasons are lists when ``num_return_sequences`` > 1.
    """

    options: GenerationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kv_prefix: Prefix | None = None  # set in setup where this project's own loop decodes
        self.shared: PrefixTokens | None = None  # its tokens: what encode needs (setup, or plan_setup)
        self.eos: list[int] = []
        self.generation_config: GenerationConfig | None = None  # the model's (setup): its sampling cutoffs

    # setup: own loop or model.generate ---------------------------------------------

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        self.eos = eos_ids(model, self.tokenizer)
        self.generation_config = model.generation_config
        self.options = with_model_defaults(self.options, model.generation_config)
        if getattr(model.generation_config, "do_sample", False) and not self.options.do_sample:
            log.warning(
                "%s: the model's generation config samples (do_sample: true); this job decodes greedily, as the "
                "spec says: set task.do_sample: true to sample (with the model's temperature, top_k and top_p "
                "where the spec sets none)",
                self.name,
            )
        if decodes_in_own_loop(model, self.options):
            start, probe = self.shared_start()
            self.kv_prefix = shared_prefix(model, start, probe, device) if probe else None
        self.shared = self.kv_prefix
        if self.shared is not None:
            self.padding_side = "left"  # every row's prompt ends in the last column, where decoding starts

    def plan_setup(self) -> None:
        # Assuming this project's loop decodes (one beam, a decoder-only model with a plain cache and no extra
        # logits processing in its generation config: setup checks those on the model).
        if self.options.num_beams == 1 and not getattr(self.config, "is_encoder_decoder", False):
            start, probe = self.shared_start()
            self.shared = PrefixTokens(start) if probe else None
        if self.shared is not None:
            self.padding_side = "left"

    def shared_start(self) -> tuple[list[int], list[int]]:
        """The token ids every prompt starts with, and a probe row's tokens after them (none: no own loop)."""
        return [], []

    def footprint(self, width: int) -> int:
        shared = len(self.shared) if self.shared is not None else 0
        copies = max(self.options.num_return_sequences, self.options.num_beams)
        return (width + shared + self.options.max_new_tokens) * copies

    def micro_batch_fill(self, configured: float) -> float:
        return 0.0 if self.shared is not None else configured  # the own loop groups prompts by length itself

    def padded_widths(self, lengths: np.ndarray) -> np.ndarray:
        if self.shared is None:
            return super().padded_widths(lengths)
        widths = np.zeros(len(lengths), dtype=np.int64)
        for group in prefill_groups(lengths):
            widths[group] = lengths[group].max()
        return widths

    # encode helpers ------------------------------------------------------------------

    def seeds_for(self, texts: list[str], columns: dict[str, list[Any]]) -> np.ndarray:
        """Per-row seeds from the job seed and the row ids (the prompt text when there are no ids, and for a row whose
        id is null: its text, marked so, not the text "None", which every such row and a row of id "None" shared)."""
        ids = columns.get(ROW_ID)
        if not ids:
            return row_seeds(self.seed, texts)
        keys = [f"{NO_ID}{text}" if key is None else key for key, text in zip(ids, texts, strict=True)]
        return row_seeds(self.seed, keys)

    def features_from(self, encoding: dict[str, Any], seeds: np.ndarray, keep: np.ndarray | None = None) -> Features:
        """One feature per row that has a prompt (``keep``), carrying the row's seed; with a shared prefix, the
        feature is the prompt after it (the whole prompt where a row doesn't start with it)."""
        truncated = encoding.get("truncated")
        features = Features.one_per_row({"input_ids": encoding["input_ids"]})
        if keep is not None:
            features.row = np.flatnonzero(keep)
            if truncated is not None:
                truncated = scatter(truncated, features.row, len(keep))
        features.truncated = truncated
        features.extra["seed"] = seeds[features.row]
        features.extra["prompt_tokens"] = features.lengths
        if self.shared is not None:
            prefixed = np.asarray([self.shared.starts(list(ids)) for ids in encoding["input_ids"]], dtype=bool)
            shared = len(self.shared)
            own = [ids[shared:] if p else ids for ids, p in zip(encoding["input_ids"], prefixed)]
            features.tokens = {"input_ids": Ragged.from_lists(own)}
            features.extra["prefixed"] = prefixed
        return features

    # forward ---------------------------------------------------------------------------

    def forward(self, model, inputs, extra):
        if self.kv_prefix is None:
            tokens, stopped = generate(model, self.tokenizer, inputs, extra.get("seed"), self.options)
            return {"tokens": tokens, "stopped": stopped}
        return self._decode(model, self.kv_prefix, inputs, extra)

    def _decode(self, model, prefix: Prefix, inputs, extra) -> dict[str, Any]:
        """Each row's prompt after the cached prefix (in groups of similar length), then all rows together, token
        by token, until each ends."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        prefixed = torch.from_numpy(extra["prefixed"]).to(ids.device)
        groups = prefill_groups(mask.sum(dim=1).cpu().numpy())
        order = np.concatenate(groups)
        parts: list[Rows] = []
        last: list[torch.Tensor] = []
        for group in groups:
            index = torch.from_numpy(group).to(ids.device)
            width = int(mask[index].sum(dim=1).max())
            parts.append(prefix.rows(prefixed[index]))
            last.append(parts[-1].extend(model, ids[index, -width:], mask[index, -width:], last_only=True))
        rows, logits = merge(parts, len(prefix)), torch.cat(last)
        at = torch.from_numpy(order).to(ids.device)
        history = self._history(prefix, ids[at], mask[at], prefixed[at])
        seeds = extra.get("seed")
        count = self.options.num_return_sequences if self.options.do_sample else 1
        if count > 1:
            rows.repeat(count)
            logits, history = logits.repeat_interleave(count, dim=0), history.repeat_interleave(count, dim=0)
        sequences = decode(
            model,
            rows,
            logits,
            history,
            self.options.max_new_tokens,
            self.eos,
            self._processing(seeds[order] if seeds is not None else None, count, ids.device, history),
            self._stops if self.options.stop else None,
        )
        back = np.argsort(order)  # sequences are in group order; the outputs in the micro-batch's
        sequences = [sequences[int(i) * count + j] for i in back for j in range(count)]
        tokens = [np.asarray(s.tokens, dtype=np.int64) for s in sequences]
        stopped = [s.reason == "eos" for s in sequences]
        return {
            "tokens": [tokens[i : i + count] for i in range(0, len(tokens), count)],
            "stopped": [stopped[i : i + count] for i in range(0, len(tokens), count)],
        }

    @staticmethod
    def _history(prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor, prefixed: torch.Tensor) -> torch.Tensor:
        """Each row's prompt tokens for the repetition penalty, ``[rows, prefix + width]``: padding, and the prefix
        of rows that don't start with it, hold the row's first token (already in its prompt, so no new token)."""
        first = ids.gather(1, (mask.shape[1] - mask.sum(dim=1))[:, None])
        own = torch.where(mask.bool(), ids, first)
        head = torch.tensor([prefix.ids], dtype=ids.dtype, device=ids.device).expand(len(ids), len(prefix))
        return torch.cat([torch.where(prefixed[:, None], head, first), own], dim=1)

    def _processing(
        self, seeds: np.ndarray | None, count: int, device: torch.device, prompts: torch.Tensor
    ) -> Process | None:
        """The model's encoder repetition penalty on each sequence's ``prompts``, the repetition penalty, then
        (sampling) the warpers (the model's cutoffs too) and each sequence's Gumbel noise."""
        options = self.options
        favour = None
        if self.generation_config is not None and self.generation_config.encoder_repetition_penalty not in (None, 1):
            favour = RowEncoderPenalty(float(self.generation_config.encoder_repetition_penalty), prompts)
        penalty = None
        if options.repetition_penalty not in (None, 1):
            penalty = RepetitionPenaltyLogitsProcessor(options.repetition_penalty)
        sampler = keys = None
        if options.do_sample:
            keys = sampling_keys(np.asarray(seeds), count, device)
            sampler = GumbelSampler(keys[:0], 0, options, self.generation_config)
        if favour is None and penalty is None and sampler is None:
            return None

        def process(history: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
            if favour is not None:
                scores = favour.apply(scores, prompts[rows])
            if penalty is not None:
                scores = penalty(history, scores)
            if sampler is not None and keys is not None:
                scores = sampler.draw(history, scores, keys[rows], step)
            return scores

        return process

    def _stops(self, sequences: list[list[int]]) -> list[bool]:
        return contains_stop(self.tokenizer, sequences, [self.options.stop] * len(sequences))

    # postprocess -----------------------------------------------------------------------

    def new_tokens(self, outputs: Outputs) -> np.ndarray:
        counts = self._counts(outputs)
        return np.asarray([sum(n for n, _ in per_feature) for per_feature in counts], dtype=np.int64)

    def _counts(self, outputs: Outputs) -> list[list[tuple[int, str]]]:
        """Per feature and sequence: tokens generated (eos or the stop string's last token included), and the
        finish reason."""
        stops = list(self.options.stop)
        result = []
        for sequences, ended in zip(outputs.listed("tokens"), outputs.listed("stopped")):
            per_feature = []
            for tokens, at_eos in zip(sequences, ended):
                kept = stop_length(self.tokenizer, tokens.tolist(), stops) if stops else None
                if kept is not None:
                    per_feature.append((kept, "stop"))
                else:
                    per_feature.append((len(tokens) + int(at_eos), "stop" if at_eos else "length"))
            result.append(per_feature)
        return result

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        tokens = outputs.listed("tokens")  # per feature: a list of count arrays
        count = self.options.num_return_sequences
        texts = self.tokenizer.batch_decode([t.tolist() for seqs in tokens for t in seqs], skip_special_tokens=True)
        if self.options.stop:
            texts = [self._cut(text) for text in texts]
        counts = self._counts(outputs)
        per_row: dict[str, list[Any]] = {name: [None] * n_rows for name in ("text", "generated", "finish")}
        for i, row in enumerate(features.row):
            per_row["text"][row] = texts[i * count : (i + 1) * count]
            per_row["generated"][row] = [n for n, _ in counts[i]]
            per_row["finish"][row] = [reason for _, reason in counts[i]]
        prompt = np.zeros(n_rows, dtype=np.int32)
        prompt[features.row] = features.extra["prompt_tokens"]
        single = count == 1

        def column(values: list, type_: pa.DataType) -> pa.Array:
            if single:
                return pa.array([v[0] if v is not None else None for v in values], type_)
            return pa.array(values, pa.list_(type_))

        return {
            self.options.text_output: column(per_row["text"], pa.string()),
            "prompt_tokens": pa.array(prompt, pa.int32()),
            "generated_tokens": column(per_row["generated"], pa.int32()),
            "finish_reason": column(per_row["finish"], pa.string()),
        }

    def _cut(self, text: str) -> str:
        """The text before its first stop string."""
        found = [text.find(stop) for stop in self.options.stop if stop in text]
        return text[: min(found)] if found else text

    def output_schema(self) -> pa.Schema:
        def maybe_list(type_: pa.DataType) -> pa.DataType:
            return type_ if self.options.num_return_sequences == 1 else pa.list_(type_)

        return pa.schema(
            [
                pa.field(self.options.text_output, maybe_list(pa.string())),
                pa.field("prompt_tokens", pa.int32()),
                pa.field("generated_tokens", maybe_list(pa.int32())),
                pa.field("finish_reason", maybe_list(pa.string())),
            ]
        )
