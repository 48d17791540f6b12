"""Linear layers whose weights are laid out once for oneDNN's matmul, for models that run on a CPU.

torch computes a float32 ``nn.Linear`` on a CPU with MKL's ``sgemm`` (bfloat16 with
oneDNN, the weight reordered at every call). oneDNN's matmul on a weight reordered
once at load ("packed", as ``torch.compile``'s CPU freezing does) measured 2.3-3.0x
MKL's float32 speed here (an AMD EPYC with AVX-512, where MKL takes a slower path;
layers of 384-576 inputs, 8-2,000 rows) and 1.2-2.4x in bfloat16. The results are
the same matmul in another summation order: float32 agrees to ~1e-6.

:func:`pack_linears` swaps every plain ``nn.Linear`` of a CPU model for a
:class:`PackedLinear` after checking, layer by layer on a probe input, that it gives
what the layer gave; where any layer differs, oneDNN can't pack one, or torch lacks
the ops, the model is left as it was. A packed layer still answers ``.weight`` (model
code reads it: T5 checks its dtype), unpacked at the first read. Quantized layers
(bitsandbytes, torch dynamic int8) are not plain ``nn.Linear`` and keep their own kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)

#: Layers smaller than this (inputs x outputs) keep torch's matmul: the call costs more than the matmul saves.
MIN_WEIGHTS = 1 << 16

#: The largest difference to the unpacked layer that :func:`pack_linears` accepts, relative to the layer's largest
#: output on the probe: float32 sums differ in order only (~1e-6); bfloat16 rounds each product's sum to 8 bits.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` with its weight in oneDNN's layout (an opaque ``torch._mkldnn`` tensor), bias as it was."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias
        self._dense: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    @property
    def weight(self) -> torch.Tensor:
        """The weight in torch's layout, for model code that reads it (T5 checks its dtype at every forward):
        unpacked at the first read and kept, so a layer that is read holds both copies."""
        if self._dense is None:
            self._dense = self.packed.to_dense()
        return self._dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def available() -> bool:
    """Whether this torch has oneDNN and the ops :class:`PackedLinear` uses."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_reorder_linear_weight", "_linear_pointwise")
    )


def pack_linears(model: torch.nn.Module) -> int:
    """Swap the model's plain float32 / bfloat16 ``nn.Linear`` layers (on a CPU) for :class:`PackedLinear`; how
    many. None is swapped where oneDNN is missing, can't pack a layer (e.g. bfloat16 on a CPU without AVX-512)
    or any layer's check fails (logged).

    Two passes, so that memory never holds more than one layer twice: each layer is packed, checked and
    dropped; then each is packed again and swapped in, its unpacked weight freed (unless another module shares
    it: a tied output layer keeps the embeddings' weight and adds its packed copy).
    """
    if not available():
        log.info("CPU matmul: torch's (this torch has no oneDNN linear ops)")
        return 0
    places = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if _packable(child)
    ]
    problem = _check({id(child): child for _, _, child in places}.values())  # a shared layer checked once
    if problem is not None:
        log.warning("CPU matmul: torch's (%s)", problem)
        return 0
    packed: dict[int, PackedLinear] = {}
    with torch.inference_mode():
        while places:  # popped, so that nothing here holds a swapped-out layer
            parent, name, child = places.pop()
            if id(child) not in packed:
                packed[id(child)] = PackedLinear(child)
            setattr(parent, name, packed[id(child)])
            del child
    log.info("CPU matmul: oneDNN, %d linear layers packed", len(packed))
    return len(packed)


def _check(layers: Iterable[torch.nn.Linear]) -> str | None:
    """Why oneDNN's packed matmul can't stand in for these layers here (each packed, compared, dropped); None."""
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for linear in layers:
            try:
                error = _difference(linear, PackedLinear(linear), generator)
            except RuntimeError as exc:  # e.g. bfloat16 on a CPU without AVX-512
                return f"oneDNN could not pack a {linear.weight.dtype} layer here: {exc}"
            if error > TOLERANCE[linear.weight.dtype]:
                return f"oneDNN's packed matmul differs by {error:.2g} from torch's on a layer"
    return None


def _packable(module: torch.nn.Module) -> bool:
    if type(module) is not torch.nn.Linear:  # subclasses (bitsandbytes' among them) compute their own way
        return False
    weight = module.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype in TOLERANCE
        and weight.numel() >= MIN_WEIGHTS
        and (module.bias is None or module.bias.dtype == weight.dtype)
    )


def _difference(linear: torch.nn.Linear, packed: PackedLinear, generator: torch.Generator) -> float:
    """Largest difference between the two layers' outputs on a probe, relative to the largest output."""
    probe = torch.randn(2, 3, linear.in_features, generator=generator).to(linear.weight.dtype)
    expected, got = linear(probe).float(), packed(probe).float()
    return float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
