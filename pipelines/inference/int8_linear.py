"""Int8 Linear layers for the CPU whose int8 products for a row do not depend on the rows beside it.

``model.quantization: per-token-int8``: each Linear layer's weight is stored in int8 with a scale per output
channel, and each forward quantizes its input with a scale per token (the token's largest absolute value over
127), so the int8 product (``torch._int_mm``, exact int32 sums) of a token depends on that token alone. torch's
dynamic int8 (``dynamic-int8``) instead takes one scale for the whole input, every row and its padding together:
a row's result then changes with the batch it is in. (The float parts around the int8 products still round with
the batch's shape, and such a change can move a value across an int8 step: see README, Reproducibility.)

``model.quantization: smooth-int8``: the same, after SmoothQuant's migration (each input channel divided by a
factor its weight column is multiplied by, so that the inputs' outlying channels don't coarsen every other channel's
int8 step) and with each layer's most outlying input channels (one in :data:`OUTLIER_SHARE`) computed in float32.
The factors and channels come from the inputs each layer sees on fixed calibration texts
(:mod:`.calibration_texts`), not from a job's rows: every actor and every resume of an output gets the same ones
from the same model. What the calibration measured is kept in a folder of the model cache, by a hash of the model's
weights, its config, the texts' tokens and torch's version (:func:`calibration_key`), so that later loads of the same
model read it instead of running the texts again. May import torch and :mod:`.calibration_texts` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from pipelines.inference.calibration_texts import TEXTS

log = logging.getLogger(__name__)

#: The smallest largest value of a token: 127 over it is still a finite float32.
SMALLEST = 1e-30
#: Tokens per pass: each pass's temporaries (the int8 input, the int32 product) stay small enough to be reused from
#: the heap, where one pass over a micro-batch of thousands of tokens allocated (and faulted in) tens of MB per layer
#: and took twice as long (a 384 -> 1,536 layer on 2,560 tokens, one thread: 18 ms against 9; packed float32: 18-22).
CHUNK_ROWS = 512
#: SmoothQuant's migration strength: each factor is (input channel's largest)^ALPHA / (weight column's)^(1 - ALPHA).
ALPHA = 0.5
#: One input channel in this many (at least one) is computed in float32: those whose inputs stay largest after the
#: migration (12 of MiniLM's 384, 48 of its 1,536).
OUTLIER_SHARE = 32
#: The migration's factors are rounded to 1/16 of an octave, so that calibration inputs that round differently (other
#: thread counts, other kernels) move a factor only where it sits at a step's edge.
FACTOR_STEPS_PER_OCTAVE = 16
#: Calibration: rows per forward, and tokens kept of each text (on the main job 32, 64 and 128 tokens kept the same
#: labels, 16 one fewer; 32 took 0.7 s here against 1.2 s at 128).
CALIBRATION_ROWS, CALIBRATION_TOKENS = 32, 32
#: Bump when what the calibration computes changes (how its texts are run, what it records), so that kept results are
#: computed again.
CALIBRATION_VERSION = 1


class PerTokenInt8Linear(torch.nn.Module):
    """``y = x Wᵀ + b`` in int8: W rounded per output channel once, x rounded per token at each call.

    ``weight`` is the int8 weight (out × in), as bitsandbytes' int8 layers hold theirs, so model code that checks
    a layer's weight dtype (T5's) sees int8; ``weight_scale`` its float32 scale per output channel."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = weight.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("weight_t", quantized.t().contiguous())  # in × out: what torch._int_mm takes
        self.register_buffer("weight_scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.empty(flat.shape[0], self.out_features, dtype=torch.float32, device=flat.device)
        for start in range(0, flat.shape[0], CHUNK_ROWS):
            self._rows(flat[start:start + CHUNK_ROWS], out[start:start + CHUNK_ROWS])
        return out.reshape(*x.shape[:-1], self.out_features)

    def _rows(self, flat: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` = the layer of these tokens' inputs; a token's result depends on its own input alone."""
        largest = flat.abs().amax(1, keepdim=True).clamp_min_(SMALLEST)  # a row of zeros: zeros, not 0 × inf
        quantized = torch.mul(flat, 127 / largest).round_().to(torch.int8)
        out.copy_(torch._int_mm(quantized, self.weight_t)).mul_(largest.div_(127)).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class SmoothedInt8Linear(PerTokenInt8Linear):
    """:class:`PerTokenInt8Linear` after SmoothQuant's migration, its most outlying input channels in float32.

    ``input_max``: the layer's largest absolute input per channel on the calibration texts. Each input channel is
    divided by ``smooth`` (the weight's column multiplied by it) before the per-token int8 product; the ``outliers``
    channels whose inputs stay largest after that are left out of it and computed from the float32 input and weight.
    """

    def __init__(self, linear: torch.nn.Linear, input_max: torch.Tensor) -> None:
        weight = linear.weight.detach().float()
        smooth = migration(input_max, weight)
        outliers = torch.topk(input_max / smooth, outlier_count(linear.in_features)).indices.sort().values
        keep = torch.ones(linear.in_features)
        keep[outliers] = 0
        scaled = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            scaled.weight.copy_(weight * smooth * keep)
            if linear.bias is not None:
                scaled.bias.copy_(linear.bias.detach())
        super().__init__(scaled)
        self.register_buffer("input_factor", keep / smooth)  # the migration, the outlying channels zeroed
        self.register_buffer("outliers", outliers)
        self.register_buffer("outlier_weight_t", weight[:, outliers].t().contiguous())

    def _rows(self, flat: torch.Tensor, out: torch.Tensor) -> None:
        super()._rows(flat * self.input_factor, out)  # a pass of at most CHUNK_ROWS tokens: temporaries stay small
        out.addmm_(flat.index_select(1, self.outliers), self.outlier_weight_t)


def outlier_count(in_features: int) -> int:
    return max(1, in_features // OUTLIER_SHARE)


def smooth_extra_bytes(out_features: int, in_features: int) -> int:
    """What a :class:`SmoothedInt8Linear` holds beyond a :class:`PerTokenInt8Linear` of the same shape: its float32
    input factors, int64 outlier channels and their float32 weight columns."""
    outliers = outlier_count(in_features)
    return in_features * 4 + outliers * 8 + outliers * out_features * 4


def migration(input_max: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SmoothQuant's factor per input channel, rounded to :data:`FACTOR_STEPS_PER_OCTAVE`."""
    weight_max = weight.abs().amax(0).clamp_min(1e-5)
    factor = input_max.float().clamp_min(1e-5) ** ALPHA / weight_max ** (1 - ALPHA)
    steps = torch.round(torch.log2(factor.clamp_min(1e-5)) * FACTOR_STEPS_PER_OCTAVE)
    return torch.exp2(steps / FACTOR_STEPS_PER_OCTAVE)


#: The product :func:`int8_product_ratio` times (rows x width by width x width), and how many times slower than
#: float32's it may be before a CPU int8 job is warned of it (:func:`slow_int8_warning`) and ``quantization: auto``
#: passes the int8 candidates over. On a 2-core AMD EPYC with AVX2 and no AVX-512 (Zen 3) this function gave 28.8 to
#: 33.1 (2 threads, three calls of 0.06-0.1 s; 18-31 in a job's actor); with AVX-512 VNNI (Zen 4) per-token-int8 ran
#: faster than float32. An int8 layer runs that product and more (each token's scale, the rescaling), so past 4x it
#: can't win.
PROBE_ROWS, PROBE_WIDTH, SLOW_INT8_RATIO = 128, 384, 4.0


def int8_product_ratio(rows: int = PROBE_ROWS, width: int = PROBE_WIDTH, tries: int = 3) -> float:
    """How many times float32's time torch's int8 matrix product (``torch._int_mm``, which the int8 layers here run)
    takes on this CPU, with this process's threads: the fastest of ``tries`` calls of each, after one untimed."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (rows, width), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (width, width), dtype=torch.int8, generator=generator)
    a_float, b_float = a.float(), b.float()
    with torch.inference_mode():
        return fastest(lambda: torch._int_mm(a, b), tries) / max(fastest(lambda: a_float @ b_float, tries), 1e-9)


def fastest(call: Callable[[], object], tries: int, untimed: int = 1) -> float:
    """The fewest seconds ``call`` took in ``tries`` calls, after ``untimed`` calls that warm it up."""
    import time

    for _ in range(untimed):
        call()
    best = float("inf")
    for _ in range(tries):
        begun = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - begun)
    return best


def slow_int8_ratio() -> float | None:
    """:func:`int8_product_ratio` measured here where it is over :data:`SLOW_INT8_RATIO`, else None, as where the
    product can't be timed (no reason to fail a run, nor to pass int8 over)."""
    try:
        ratio = int8_product_ratio()
    except Exception as exc:  # noqa: BLE001
        log.debug("the int8 product could not be timed: %s", exc)
        return None
    return ratio if ratio > SLOW_INT8_RATIO else None


def slow_int8_warning(quantization: str, ratio: float) -> str | None:
    """What to tell a job that runs ``quantization`` (``per-token-int8``, ``smooth-int8``) on a CPU whose int8
    product takes ``ratio`` times float32's, where that is over :data:`SLOW_INT8_RATIO`, else None: one that set it
    itself, or keeps an int8 precision ``auto`` chose earlier on another CPU (its output's ``_job.json``, a scheduled
    job's partitions). An actor that decides ``auto`` passes such candidates over (``pipelines.fidelity``)."""
    if ratio <= SLOW_INT8_RATIO:
        return None
    return (
        f"model.quantization {quantization}: torch's int8 matrix product took {ratio:.0f}x float32's time on this CPU "
        f"({PROBE_ROWS} x {PROBE_WIDTH} by {PROBE_WIDTH} x {PROBE_WIDTH}; 18-33x on an AVX2-only AMD EPYC, Zen 3), "
        "so this job will likely run slower than in float32; set model.quantization none, or auto (which passes int8 "
        "over on such a CPU), or time it first with benchmarks/cpu_int8.py; where quantization auto keeps this "
        "precision from a decision made on another CPU (the output's _job.json, a scheduled job's earlier "
        "partitions), decide again here: pipelines run --overwrite, or pipelines schedule --once --rescore"
    )


def quantize_per_token(model: torch.nn.Module) -> torch.nn.Module:
    """Every plain float32 ``torch.nn.Linear`` of ``model`` replaced by a :class:`PerTokenInt8Linear`, in place,
    one layer at a time (loading never holds more than one layer's weights twice). A layer shared by two parents
    or held under two names (a tied output layer, an alias) is converted once and shared as before."""
    log.info("per-token int8: %d Linear layers converted", convert_linears(model, PerTokenInt8Linear))
    return model


def quantize_smoothed(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str] = TEXTS, cache: Path | None = None
) -> torch.nn.Module:
    """:func:`quantize_per_token` with :class:`SmoothedInt8Linear` layers calibrated on ``texts`` (default: the
    fixed :data:`.calibration_texts.TEXTS`) through the model's base model, or with what an earlier load of the same
    model kept in the folder ``cache`` (:func:`calibration`). A layer the calibration didn't reach (a head, which the
    base model doesn't run) becomes a plain :class:`PerTokenInt8Linear`."""
    maxima = calibration(model, tokenizer, texts, cache)

    def layer(linear: torch.nn.Linear) -> PerTokenInt8Linear:
        found = maxima.get(id(linear))
        return PerTokenInt8Linear(linear) if found is None else SmoothedInt8Linear(linear, found)

    converted = convert_linears(model, layer)
    log.info("smooth int8: %d Linear layers converted, %d calibrated on %d texts", converted, len(maxima), len(texts))
    return model


def calibration(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], cache: Path | None
) -> dict[int, torch.Tensor]:
    """:func:`input_maxima`, kept in the folder ``cache`` under :func:`calibration_key` (where ``cache`` is given):
    read from there where an earlier load kept it (MiniLM's calibration took 1.2 s of its 1.4 s load, SmolLM2-135M's
    11 s; the key's hash of the weights 0.06 and 0.3 s), else computed and kept. A kept file that can't be read or
    doesn't fit the model's layers is computed again; one that can't be written costs the next load a calibration."""
    if cache is None:
        return input_maxima(model, tokenizer, texts)
    path = cache / f"{calibration_key(model, tokenizer, texts)}.pt"
    kept = _read_maxima(model, path)
    if kept is not None:
        log.info("smooth int8: calibration read from %s", path)
        return kept
    maxima = input_maxima(model, tokenizer, texts)
    names = {id(module): name for name, module in model.named_modules()}
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({names[key]: value for key, value in maxima.items()}, tmp)
        tmp.replace(path)  # whole or not at all, for another actor reading it meanwhile
    except OSError as exc:
        with suppress(OSError):  # a part written before a full disk failed it: not left taking room there
            tmp.unlink(missing_ok=True)
        log.warning("smooth int8: could not keep the calibration in %s (%s); the next load computes it again", path,
                    exc)
    return maxima


def calibration_key(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str]) -> str:
    """What the calibration's result depends on: every weight and buffer of the model, its class and config (not
    where it was loaded from), the texts' tokens as the tokenizer cuts them and its padding side (which moves a
    padded row's positions), the calibration's settings and torch's version."""
    config = getattr(model, "config", None)
    settings = config.to_dict() if config is not None else {}
    settings.pop("_name_or_path", None)
    digest = hashlib.sha256(json.dumps({
        "version": CALIBRATION_VERSION, "rows": CALIBRATION_ROWS, "tokens": CALIBRATION_TOKENS,
        "torch": torch.__version__, "model": type(model).__name__, "config": settings,
        "padding_side": getattr(tokenizer, "padding_side", None),
        "texts": tokenizer(list(texts), truncation=True, max_length=CALIBRATION_TOKENS)["input_ids"],
    }, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()[:24]


def _read_maxima(model: torch.nn.Module, path: Path) -> dict[int, torch.Tensor] | None:
    """The maxima kept in ``path`` by layer id, where each names a float32 Linear layer of ``model`` with as many
    input channels; else None."""
    try:
        if not path.is_file():  # in the try: a folder that can't be searched raises (EACCES), as one can't be read
            return None
        kept = torch.load(path, weights_only=True)
        maxima = {}
        for name, values in kept.items():
            layer = model.get_submodule(name)
            fits = type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32
            if not fits or values.dtype != torch.float32 or tuple(values.shape) != (layer.in_features,):
                raise ValueError(f"{name} is not a float32 Linear layer with {tuple(values.shape)} inputs")
            maxima[id(layer)] = values
    except Exception as exc:  # noqa: BLE001 - any unreadable or unfitting file: calibrate again, and keep that
        log.warning("smooth int8: the kept calibration %s is not usable (%s); computing it again", path, exc)
        return None
    return maxima


def float_linears(model: torch.nn.Module) -> Iterator[torch.nn.Linear]:
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            yield module


def input_maxima(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str]) -> dict[int, torch.Tensor]:
    """Each plain float32 Linear layer's largest absolute input per channel over ``texts``' tokens (their padding
    left out), by the layer's id. The texts are run in order of length, :data:`CALIBRATION_ROWS` at a time."""
    maxima: dict[int, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach()
        x = x[mask[0]] if mask and x.shape[:-1] == mask[0].shape else x.reshape(-1, x.shape[-1])
        values = x.float().abs().amax(0)
        known = maxima.get(id(module))
        maxima[id(module)] = values if known is None else torch.maximum(known, values)

    ordered = sorted(texts, key=len)
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    body = getattr(model, "base_model", model)  # without its head: a language model's scores every token's vocabulary
    with _hooks(float_linears(model), record), torch.inference_mode():
        for start in range(0, len(ordered), CALIBRATION_ROWS):
            encoded = tokenizer(list(ordered[start:start + CALIBRATION_ROWS]), padding=True, truncation=True,
                                max_length=CALIBRATION_TOKENS, return_tensors="pt")
            mask[:] = [encoded["attention_mask"].bool()]
            if encoder_decoder:
                encoded["decoder_input_ids"] = encoded["input_ids"]
                encoded["decoder_attention_mask"] = encoded["attention_mask"]
            body(**encoded)
    return maxima


@contextmanager
def _hooks(layers: Iterator[torch.nn.Module], record: Callable[..., None]) -> Iterator[None]:
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def convert_linears(model: torch.nn.Module, make: Callable[[torch.nn.Linear], torch.nn.Module]) -> int:
    """Every plain float32 ``torch.nn.Linear`` of ``model`` replaced by ``make(layer)``, in place, one layer at a time
    (see :func:`quantize_per_token`); how many names were replaced."""
    targets, seen, shared = [], set(), {}
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for name, child in parent._modules.items():  # every name: named_children names an aliased layer once
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32:
                targets.append((parent_name, name))  # names: the layers themselves would stay alive to the end
                if id(child) in seen:
                    shared[id(child)] = child  # held, so that its id names no other layer meanwhile
                seen.add(id(child))
    converted: dict[int, torch.nn.Module] = {}
    for parent_name, name in targets:
        parent = model.get_submodule(parent_name)
        child = getattr(parent, name)
        if type(child) is not torch.nn.Linear:  # the same parent reached twice
            continue
        layer = converted.get(id(child)) if id(child) in shared else None
        if layer is None:
            layer = make(child)
            if id(child) in shared:
                converted[id(child)] = layer
        setattr(parent, name, layer)
        del child
    return len(targets)
