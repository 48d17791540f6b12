"""Loading a tokenizer and a (quantized) model once per actor.

Picks device and dtype, builds the ``BitsAndBytesConfig`` for int8 / nf4 / fp4,
and loads the model through the ``transformers`` Auto class a task names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, BitsAndBytesConfig

from pipelines.errors import PipelineError
from pipelines.inference.aliases import resolve_name
from pipelines.inference.checks import config_error
from pipelines.inference.gguf import model_cache
from pipelines.inference.int8_linear import quantize_per_token, quantize_smoothed
from pipelines.inference.packed_linear import pack_linears
from pipelines.spec import CPU_QUANTIZATIONS, ModelSpec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def select_device(spec: ModelSpec, wanted: str) -> torch.device:
    """The device a model is loaded on. ``wanted`` is the job's :meth:`~pipelines.spec.JobSpec.actor_device`;
    ``device: auto`` falls back to the CPU where no GPU is visible (e.g. ``pipelines plan --measure`` on a
    laptop for a GPU job)."""
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "model.device is cuda but no CUDA GPU is visible here: give each actor a GPU (compute.gpus_per_actor: 1, "
            "or a share such as 0.25; Ray then places the actors on nodes with one), or use device: auto or cpu"
        )
    return torch.device("cuda" if wanted == "cuda" and torch.cuda.is_available() else "cpu")


def select_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    if spec.dtype != "auto":
        return DTYPES[spec.dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(spec: ModelSpec, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes' config for int8 / nf4 / fp4; None for the others (``dynamic-int8`` is applied after loading)."""
    if spec.quantization not in ("int8", "nf4", "fp4"):
        return None
    if spec.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=spec.quantization, bnb_4bit_compute_dtype=dtype
    )


def load_config(spec: ModelSpec) -> Any:
    name = resolve_name(spec)
    try:
        return AutoConfig.from_pretrained(name, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise config_error(spec, exc) from None


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    config: Any
    device: torch.device
    dtype: torch.dtype
    max_length: int


def load_tokenizer(spec: ModelSpec, padding_side: str) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_name(spec), revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        # Decoder-only models often ship without a pad token; padding is masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(
    spec: ModelSpec,
    model_class: str,
    config: Any,
    max_length: int,
    padding_side: str,
    wanted: str = "cpu",
    cpu_matmul: str = "onednn",
) -> LoadedModel:
    """Tokenizer and model, on their device, in eval mode, quantized as the spec says.

    ``model_class`` names a ``transformers`` Auto class, e.g. ``AutoModelForSequenceClassification``;
    ``wanted`` is the device the job's actors load on (see :func:`select_device`); ``cpu_matmul``
    (``compute.cpu_matmul``) ``onednn`` packs a CPU model's Linear layers (:mod:`.packed_linear`).
    """
    auto_class = getattr(transformers, model_class)
    device = select_device(spec, wanted)
    dtype = select_dtype(spec, device)
    quant = quantization_config(spec, dtype)
    kwargs: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code, "dtype": dtype}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": str(device)})
    model = auto_class.from_pretrained(resolve_name(spec), config=config, **kwargs)
    if quant is None:
        model.to(device)
    model.eval()
    tokenizer = load_tokenizer(spec, padding_side)
    share_pad_token(tokenizer, model.config, config)
    if spec.quantization in CPU_QUANTIZATIONS:
        model = cpu_int8(model, device, spec.quantization, tokenizer, calibration_cache(spec))
    elif spec.quantization == "auto":
        raise PipelineError("model.quantization auto is decided before a job starts; load a concrete quantization")
    if device.type == "cpu" and cpu_matmul == "onednn":
        pack_linears(model)
    log.info("loaded %s (%s, %s, quantization=%s)", spec.name, device, dtype, spec.quantization)
    return LoadedModel(model, tokenizer, config, device, dtype, effective_max_length(tokenizer, config, max_length))


def cpu_int8(
    model: torch.nn.Module, device: torch.device, quantization: str, tokenizer: Any = None, cache: Path | None = None
) -> torch.nn.Module:
    """A float32 model's Linear layers in int8 on the CPU. ``dynamic-int8``: torch's dynamic quantization (int8
    weights with a scale per output channel, each forward's activations with one scale for the whole tensor;
    fbgemm/oneDNN kernels, VNNI where the CPU has it). ``per-token-int8``: the same weights, activations with a
    scale per token (:mod:`.int8_linear`), so a row's int8 products don't depend on its batch. ``smooth-int8``:
    per-token int8 after SmoothQuant's migration, calibrated with ``tokenizer`` on fixed texts (kept in the folder
    ``cache`` for the next load, where given)."""
    if device.type != "cpu":
        raise PipelineError(
            f"model.quantization {quantization} is a CPU quantization (int8 kernels for the CPU); on a GPU use int8 "
            "or nf4 (bitsandbytes), or auto"
        )
    if next(model.parameters()).dtype != torch.float32:
        raise PipelineError(
            f"model.quantization {quantization} quantizes a float32 model: set model.dtype to float32 or auto"
        )
    if quantization == "per-token-int8":
        return quantize_per_token(model)
    if quantization == "smooth-int8":
        return quantize_smoothed(model, tokenizer, cache=cache)
    return dynamic_int8(model)


def calibration_cache(spec: ModelSpec) -> Path:
    """Where ``smooth-int8`` keeps its calibrations: ``calibration/`` in the model cache (``model.cache_dir``, else
    ``$PIPELINES_CACHE``, else ``~/.cache/pipelines``)."""
    return model_cache(spec.cache_dir) / "calibration"


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """torch's dynamic int8 quantization of every Linear layer (see :func:`cpu_int8`)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


#: Set on a config whose pad token is not one to tell a row's padding by: one it had none of and got the tokenizer's
#: (often the end-of-sequence token, see :func:`load_tokenizer`), which a text may hold; or one the tokenizer doesn't
#: pad with (a LLaMA-1 conversion's 0, a fine-tune's config saved apart from its tokenizer), which the padding
#: doesn't hold. A decoder classifier so marked is scored at each row's last token the attention mask keeps.
SCORE_BY_MASK = "pipelines_score_by_mask"


def share_pad_token(tokenizer: Any, *configs: Any) -> None:
    """Give a config without a pad token the tokenizer's. Decoder-based sequence classifiers (Llama, GPT-2, ...)
    find each row's last real token by it, and refuse batches of more than one row without it; the config is
    marked (:data:`SCORE_BY_MASK`), since a text that ends in that token's text would lose its last token to it.
    A config whose pad token is another than the tokenizer's (which pads the rows) is marked too: its own would
    find no padding, and a padded row would be scored at its last padding token."""
    if tokenizer.pad_token_id is None:
        return
    for config in configs:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for target in {id(config): config, id(text_config): text_config}.values():  # what the classifier reads
            if getattr(target, "pad_token_id", None) is None:
                target.pad_token_id = tokenizer.pad_token_id
                setattr(target, SCORE_BY_MASK, True)
            elif target.pad_token_id != tokenizer.pad_token_id:
                setattr(target, SCORE_BY_MASK, True)


#: Model types whose positions start after the padding index (RoBERTa's: a text's first token is at
#: ``pad_token_id + 1``), so that ``max_position_embeddings`` holds ``pad_token_id + 1`` more than a text can use: 514
#: for RoBERTa's 512 tokens. (Others that number positions so, M2M100's and its kin, add the offset to their table.)
PADDED_POSITIONS = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text", "longformer",
    "luke", "mpnet", "ibert", "xmod", "markuplm", "esm", "lilt", "layoutlmv3",
})


def position_limit(config: Any) -> int | None:
    """How many tokens the model's positions take (``max_position_embeddings``, less RoBERTa's offset where the model
    numbers them so: :data:`PADDED_POSITIONS`); None where its config says none."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "model_type", None) in PADDED_POSITIONS:
        pad = getattr(config, "pad_token_id", None)
        positions -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
    return positions if positions > 0 else None


def effective_max_length(tokenizer: Any, config: Any, requested: int) -> int:
    """The spec's max_length, capped by what the tokenizer and the model's positions allow."""
    limits = [requested]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    positions = position_limit(config)
    if positions is not None:
        limits.append(positions)
    found = min(limits)
    specials = tokenizer.num_special_tokens_to_add(pair=False) if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    if found <= specials:  # 1 with two special tokens: the tokenizer cut nothing (it said so in a log line), and every
        # text was read whole; 2: every text read as its special tokens alone
        what = (f"batching.max_length {found}" if found == requested else
                f"the model's {'tokenizer (model_max_length)' if found == limits[1] else 'max_position_embeddings'}, "
                f"{found} tokens,")
        fix = (f"set batching.max_length above {specials}" if found == requested else
               "fix the model's files: no max_length setting can give more room")
        raise PipelineError(
            f"{what} leaves no room for a text's tokens: this model's tokenizer adds {specials} special token(s) to "
            f"each text; {fix}"
        )
    return found
