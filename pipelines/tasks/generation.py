"""What text-generation, summarization and translation share: options, decoding, reproducible sampling.

Sampling is reproducible per row: each row draws its noise from a counter-based
hash of (row seed, step, vocabulary index), where the row seed comes from the
job's seed and the row's id. A row's sampled text therefore depends on neither
the other rows in its batch nor the padding, and a re-run gives the same text.

The trick is the Gumbel-max identity: ``argmax(logits / T + g)`` with ``g``
standard Gumbel noise is a sample from ``softmax(logits / T)``. So generation
runs as greedy decoding (``do_sample=False``) with one extra logits processor
that applies temperature, top-k and top-p, then adds the row's Gumbel noise —
vectorized over the micro-batch and the vocabulary, no loop over rows.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pipelines.tasks.base import ROW_ID, Features, Outputs, Task
from pipelines.tasks.options import GenerationOptions

MASK32 = 0xFFFFFFFF


# reproducible noise ----------------------------------------------------------------


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


class GumbelSampler(LogitsProcessor):
    """Temperature, top-k and top-p, then per-row Gumbel noise: greedy decoding then samples reproducibly."""

    def __init__(self, keys: torch.Tensor, start: int, options: GenerationOptions) -> None:
        self.keys = keys
        self.start = start
        self.warpers = []
        if options.temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(options.temperature))
        if options.top_k is not None:
            self.warpers.append(TopKLogitsWarper(options.top_k))
        if options.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(options.top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        step = input_ids.shape[1] - self.start
        uniform = uniform_noise(self.keys, step, scores.shape[1])
        gumbel = -torch.log(-torch.log(uniform))
        return scores + gumbel.to(scores.dtype)


# decoding ------------------------------------------------------------------------


def eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Every token that ends generation: the model's generation config, else the tokenizer's eos."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return []
    return [int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured])]


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    inputs: dict[str, torch.Tensor],
    seeds: np.ndarray | None,
    options: GenerationOptions,
) -> tuple[list[list[np.ndarray]], list[list[bool]]]:
    """Generated token ids (prompt and eos excluded) per feature and sequence, and whether each stopped at eos."""
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
    }
    if options.do_sample:
        batch = inputs["input_ids"].shape[0]
        inputs = {name: value.repeat_interleave(count, dim=0) for name, value in inputs.items()}
        seeds_ = torch.from_numpy(np.asarray(seeds, dtype=np.int64)).to(inputs["input_ids"].device)
        keys = torch.stack([seed_keys(seeds_, stream) for stream in range(count)], dim=1).reshape(batch * count)
        start = 1 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
        kwargs["logits_processor"] = LogitsProcessorList([GumbelSampler(keys, start, options)])
    sequences = model.generate(**inputs, **kwargs)
    skip = 1 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    return split_generated(sequences[:, skip:].cpu().numpy(), eos, count)


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


class GenerationTask(Task):
    """A task whose forward is ``model.generate``; subclasses tokenize prompts in ``encode``.

    Output columns: the text (``text_output``), ``prompt_tokens``, ``generated_tokens``
    (the eos token included) and ``finish_reason`` ("stop" at eos, "length" at max_new_tokens); text, token
    counts and finish reasons are lists when ``num_return_sequences`` > 1.
    """

    options: GenerationOptions

    def seeds_for(self, texts: list[str], columns: dict[str, list[Any]]) -> np.ndarray:
        """Per-row seeds from the job seed and the row ids (the prompt text when there are no ids)."""
        return row_seeds(self.seed, columns.get(ROW_ID) or texts)

    def features_from(self, encoding: dict[str, Any], seeds: np.ndarray, keep: np.ndarray | None = None) -> Features:
        """One feature per row that has a prompt (``keep``), carrying the row's seed."""
        truncated = encoding.get("truncated")
        features = Features.one_per_row({"input_ids": encoding["input_ids"]})
        if keep is not None:
            features.row = np.flatnonzero(keep)
            if truncated is not None:
                truncated = scatter(truncated, features.row, len(keep))
        features.truncated = truncated
        features.extra["seed"] = seeds[features.row]
        return features

    def forward(self, model, inputs, extra):
        tokens, stopped = generate(model, self.tokenizer, inputs, extra.get("seed"), self.options)
        return {"tokens": tokens, "stopped": stopped}

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        tokens = outputs.listed("tokens")  # per feature: a list of count arrays
        stopped = outputs.listed("stopped")
        count = self.options.num_return_sequences
        texts = self.tokenizer.batch_decode([t.tolist() for seqs in tokens for t in seqs], skip_special_tokens=True)
        per_row: dict[str, list[Any]] = {name: [None] * n_rows for name in ("text", "generated", "finish")}
        for i, row in enumerate(features.row):
            per_row["text"][row] = texts[i * count : (i + 1) * count]
            per_row["generated"][row] = [len(t) + s for t, s in zip(tokens[i], stopped[i])]  # eos included
            per_row["finish"][row] = ["stop" if s else "length" for s in stopped[i]]
        prompt = np.zeros(n_rows, dtype=np.int32)
        prompt[features.row] = features.lengths
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
