"""Linear layers whose weights are laid out once for oneDNN's matmul, for models that run on a CPU.

torch computes a float32 ``nn.Linear`` on a CPU with MKL's ``sgemm`` (bfloat16 with
oneDNN, the weight reordered at every call). oneDNN's matmul on a weight reordered
once at load ("packed", as ``torch.compile``'s CPU freezing does) measured 2.3-2.8x
MKL's float32 speed here (an AMD EPYC with AVX-512, where MKL takes a slower path;
layers of 384-576 inputs, 8-2,000 rows) and 1.2-2.4x in bfloat16. The results are
the same matmul in another summation order: float32 agrees to ~1e-6.

:func:`pack_linears` swaps every plain ``nn.Linear`` of a CPU model for a
:class:`PackedLinear` after checking, layer by layer on a probe input, that it gives
what the layer gave; where any layer differs, or torch lacks the oneDNN ops, the
model is left as it was. Quantized layers (bitsandbytes, torch dynamic int8) are not
plain ``nn.Linear`` and keep their own kernels.
"""

from __future__ import annotations

import logging

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

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
    many. None is swapped where oneDNN is missing or any layer's check fails (logged)."""
    if not available():
        log.info("CPU matmul: torch's (this torch has no oneDNN linear ops)")
        return 0
    swaps: list[tuple[torch.nn.Module, str, PackedLinear]] = []
    packed: dict[int, PackedLinear] = {}  # a layer shared by two parents is packed once
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for parent in model.modules():
            for name, child in parent.named_children():
                if not _packable(child):
                    continue
                assert isinstance(child, torch.nn.Linear)
                if id(child) not in packed:
                    candidate = PackedLinear(child)
                    error = _difference(child, candidate, generator)
                    if error > TOLERANCE[child.weight.dtype]:
                        log.warning(
                            "CPU matmul: torch's (oneDNN's packed matmul differs by %.2g on %s)", error, name
                        )
                        return 0
                    packed[id(child)] = candidate
                swaps.append((parent, name, packed[id(child)]))
    for parent, name, layer in swaps:
        setattr(parent, name, layer)
    log.info("CPU matmul: oneDNN, %d linear layers packed", len(packed))
    return len(packed)


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
