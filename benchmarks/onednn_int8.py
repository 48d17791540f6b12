"""Could oneDNN's int8 kernel run per-token-int8's products where ``torch._int_mm`` is slow (CPUs without VNNI)?

    python benchmarks/onednn_int8.py            # MiniLM's layer shapes, 2,560 tokens, this process's threads

For each of MiniLM's Linear shapes, the time of one layer on the same tokens (the fastest of 7 calls after two):

- ``packed fp32``: float32 with the weight packed for oneDNN, as this project runs float32 on a CPU;
- ``_int_mm``: per-token-int8's own layer (``PerTokenInt8Linear``: each token's input rounded with a scale of its
  own, the int8 weight with a scale per output channel, exact int32 sums by ``torch._int_mm``);
- ``onednn 8-bit``: the same int8 values through oneDNN's u8 x s8 kernel (each input + 128, zero point 128), and how far
  its int32 sums are from the exact ones: without VNNI the kernel adds pairs of products in 16 bits, which overflow
  with 8-bit weights;
- ``onednn split``: each int8 weight cut in two parts of at most 64 (``w // 2`` and the rest), both in one oneDNN call
  of twice the outputs, the halves added: no pair can overflow, so the sums are exact; and whether the layer's
  results equal ``_int_mm``'s.

Nothing of this is used by the project: it says what such a kernel would cost (README, Performance, int8 on the CPU).
"""

from __future__ import annotations

import json

import torch

from pipelines.inference.int8_linear import SMALLEST, PerTokenInt8Linear, fastest

TOKENS = 2560
SHAPES = ((384, 384), (384, 1536), (1536, 384))
TRIES, UNTIMED = 7, 2


def per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's input in int8 and its scale, as :meth:`PerTokenInt8Linear._rows` rounds them."""
    largest = x.abs().amax(1, keepdim=True).clamp_min_(SMALLEST)
    return torch.mul(x, 127 / largest).round_().to(torch.int8), largest.div_(127)


def onednn(quantized_u8: torch.Tensor, packed: torch.Tensor, outputs: int) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(
        quantized_u8, 1.0, 128, packed, torch.ones(outputs), torch.zeros(outputs, dtype=torch.long), None, 1.0, 0,
        torch.float32, "none", [], "")


def layer(inputs: int, outputs: int) -> dict[str, float | bool]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, inputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator) * 0.05
    bias = torch.randn(outputs, generator=generator)
    packed_fp32 = torch.ops.mkldnn._reorder_linear_weight(weight)
    linear = torch.nn.Linear(inputs, outputs)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    project = PerTokenInt8Linear(linear)  # per-token-int8's layer: torch._int_mm
    weight_int8, weight_scale = project.weight, project.weight_scale
    low = torch.div(weight_int8, 2, rounding_mode="floor").to(torch.int8)  # both parts within [-64, 64]
    split = torch.ops.onednn.qlinear_prepack(torch.cat([low, weight_int8 - low]), None)
    whole = torch.ops.onednn.qlinear_prepack(weight_int8.contiguous(), None)

    def exact() -> torch.Tensor:
        return project(x)

    def halves() -> torch.Tensor:
        quantized, scale = per_token(x)
        both = onednn((quantized.to(torch.int16) + 128).to(torch.uint8), split, 2 * outputs)
        return (both[:, :outputs] + both[:, outputs:]).mul_(scale).mul_(weight_scale).add_(bias)

    quantized, _ = per_token(x)
    as_u8 = (quantized.to(torch.int16) + 128).to(torch.uint8)
    sums = torch._int_mm(quantized, project.weight_t).float()
    fp32_s = fastest(lambda: torch.ops.mkldnn._linear_pointwise(x, packed_fp32, bias, "none", [], ""), TRIES, UNTIMED)
    return {
        "packed_fp32_ms": fp32_s * 1e3,
        "int_mm_ms": fastest(exact, TRIES, UNTIMED) * 1e3,
        "onednn_8bit_ms": fastest(lambda: onednn(as_u8, whole, outputs), TRIES, UNTIMED) * 1e3,
        "onednn_8bit_largest_sum_error": (onednn(as_u8, whole, outputs) - sums).abs().max().item(),
        "onednn_split_ms": fastest(halves, TRIES, UNTIMED) * 1e3,
        "onednn_split_equals_int_mm": torch.equal(halves(), exact()),
    }


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {TOKENS} tokens")
    results = {}
    for inputs, outputs in SHAPES:
        with torch.inference_mode():
            results[f"{inputs}->{outputs}"] = got = layer(inputs, outputs)
        print(f"{inputs:>5} -> {outputs:<5} packed fp32 {got['packed_fp32_ms']:6.1f} ms | _int_mm "
              f"{got['int_mm_ms']:7.1f} ms | onednn 8-bit {got['onednn_8bit_ms']:5.1f} ms (sums off by up to "
              f"{got['onednn_8bit_largest_sum_error']:,.0f}) | onednn split {got['onednn_split_ms']:5.1f} ms "
              f"({got['onednn_split_ms'] / got['packed_fp32_ms']:.2f}x fp32; equal to _int_mm: "
              f"{got['onednn_split_equals_int_mm']})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
