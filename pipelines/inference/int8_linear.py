"""Int8 Linear layers for the CPU whose int8 products for a row do not depend on the rows beside it.

``model.quantization: per-token-int8``: each Linear layer's weight is stored in int8 with a scale per output
channel, and each forward quantizes its input with a scale per token (the token's largest absolute value over
127), so the int8 product (``torch._int_mm``, exact int32 sums) of a token depends on that token alone. torch's
dynamic int8 (``dynamic-int8``) instead takes one scale for the whole input, every row and its padding together:
a row's result then changes with the batch it is in. (The float parts around the int8 products still round with
the batch's shape, and such a change can move a value across an int8 step: see README, Reproducibility.) May import
torch only.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

#: The smallest largest value of a token: 127 over it is still a finite float32.
SMALLEST = 1e-30
#: Tokens per pass: each pass's temporaries (the int8 input, the int32 product) stay small enough to be reused from
#: the heap, where one pass over a micro-batch of thousands of tokens allocated (and faulted in) tens of MB per layer
#: and took twice as long (a 384 -> 1,536 layer on 2,560 tokens, one thread: 18 ms against 9; packed float32: 18-22).
CHUNK_ROWS = 512


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


def quantize_per_token(model: torch.nn.Module) -> torch.nn.Module:
    """Every plain float32 ``torch.nn.Linear`` of ``model`` replaced by a :class:`PerTokenInt8Linear`, in place,
    one layer at a time (loading never holds more than one layer's weights twice). A layer shared by two parents
    or held under two names (a tied output layer, an alias) is converted once and shared as before."""
    targets, seen, shared = [], set(), {}
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for name, child in parent._modules.items():  # every name: named_children names an aliased layer once
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32:
                targets.append((parent_name, name))  # names: the layers themselves would stay alive to the end
                if id(child) in seen:
                    shared[id(child)] = child  # held, so that its id names no other layer meanwhile
                seen.add(id(child))
    converted: dict[int, PerTokenInt8Linear] = {}
    for parent_name, name in targets:
        parent = model.get_submodule(parent_name)
        child = getattr(parent, name)
        if isinstance(child, PerTokenInt8Linear):  # the same parent reached twice
            continue
        layer = converted.get(id(child)) if id(child) in shared else None
        if layer is None:
            layer = PerTokenInt8Linear(child)
            if id(child) in shared:
                converted[id(child)] = layer
        setattr(parent, name, layer)
        del child
    log.info("per-token int8: %d Linear layers converted", len(targets))
    return model
