"""The model's size in memory, and how many actors fit on a GPU or on this machine.

Weights are counted on an empty model (``accelerate.init_empty_weights``: the
shapes, no weights read or allocated), built from the config through the same
Auto class the predictor loads. Under bitsandbytes the Linear layers that
transformers would replace (the same skip list: tied and output embeddings, the
last module) take 1 byte per weight (int8, plus a float32 scale per output row)
or half a byte (nf4, fp4, plus a float32 scale per 64 weights); under torch's
dynamic int8 every plain Linear layer takes 1 byte per weight plus a float64 scale
and an int64 zero point per output row (per-token int8: a float32 scale per row); every
other parameter takes the dtype's bytes (``auto`` is sized unquantized, the largest it may take). On a CPU a Linear
layer that shares its weight with another module (a tied output layer) adds a copy
of its own: oneDNN's packed layout, or torch's int8. Activations are an estimate for the largest
micro-batch the batching settings allow; out of memory at run time splits the
micro-batch and lowers the budget, so an optimistic figure costs a retry.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipelines.cluster.connect import actor_request, actors_that_fit
from pipelines.planning.hardware import (
    GIB,
    MIB,
    NO_BF16,
    Cluster,
    NodeType,
    this_machine_cpus,
    this_machine_memory,
)
from pipelines.planning.records import Fit, ModelPlan
from pipelines.spec import CPU_QUANTIZATIONS, ComputeSpec, JobSpec

PROCESS_OVERHEAD = 768 * MIB  # a Python process with torch, transformers and Ray's worker (assumption)
RAY_NODE_RESOURCES = ("memory", "object_store_memory")  # besides CPU, GPU and node:…: what every Ray node has
CUDA_CONTEXT = GIB // 2  # CUDA context and kernels of one actor on its GPU (assumption)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
PACKED_DTYPES = ("float32", "bfloat16")  # what oneDNN packs (:mod:`pipelines.inference.packed_linear`)
PACKED_MIN_WEIGHTS = 1 << 16  # packed_linear.MIN_WEIGHTS (that module imports torch)
BLOCKSIZE_4BIT = 64  # bitsandbytes' default block size: one float32 absmax per 64 weights


@dataclass(frozen=True)
class WeightCount:
    """Parameters split by how they are stored: quantized Linear weights, and the rest."""

    parameters: int
    quantized: int  # weights of the Linear layers bitsandbytes replaces
    quantized_rows: int  # their output rows (int8 keeps one float32 scale per row)
    kept_fp32: int  # parameters of modules the model keeps in float32 when loaded in float16
    buffers: dict[int, int]  # bytes per element → elements (non-float buffers keep their size)
    float_buffers: int  # float buffers: stored in the load dtype
    linear: int = 0  # weights of every plain Linear layer (what the CPU's int8 quantizations convert)
    linear_rows: int = 0  # their output rows
    tied_linear: int = 0  # weights of plain Linear layers that share them with another module (a tied output layer)
    tied_packable: int = 0  # of those, the weights of layers large enough to be packed for oneDNN on a CPU
    smooth_extra: int = 0  # bytes smooth-int8 adds to each plain Linear: its input factors, float32 outlier channels

    def weight_bytes(self, dtype: str, quantization: str, cpu_packed: bool = False) -> int:
        """Bytes of the loaded weights; ``cpu_packed``: on a CPU with ``compute.cpu_matmul: onednn``."""
        size = DTYPE_BYTES[dtype]
        kept = self.kept_fp32 if dtype == "float16" else 0  # transformers upcasts them under float16 only
        plain = self.parameters - self.quantized - kept
        total = plain * size + kept * 4 + self.float_buffers * size
        total += sum(width * n for width, n in self.buffers.items())
        if quantization in CPU_QUANTIZATIONS:  # every Linear converted; a tied one's int8 copy beside the embeddings
            scales = 16 if quantization == "dynamic-int8" else 4  # float64 scale, int64 zero point; float32 scale
            extra = self.smooth_extra if quantization == "smooth-int8" else 0
            return total - (self.linear - self.tied_linear) * size + self.linear + self.linear_rows * scales + extra
        if cpu_packed and dtype in PACKED_DTYPES:  # a tied layer's packed copy beside the embeddings
            total += self.tied_packable * size
        if quantization in ("none", "auto"):
            return total + self.quantized * size
        if quantization == "int8":
            return total + self.quantized + self.quantized_rows * 4
        return total + math.ceil(self.quantized / 2) + math.ceil(self.quantized / BLOCKSIZE_4BIT) * 4


def count_weights(config: Any, model_class: str, quantization: str, trust_remote_code: bool = False) -> WeightCount:
    """Parameters of the model ``model_class`` builds from ``config``, without allocating them."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    from pipelines.inference.int8_linear import smooth_extra_bytes

    with init_empty_weights():
        model = getattr(transformers, model_class).from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_pretrained ties shared embeddings; from_config leaves them apart
    fp32_modules = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    bitsandbytes = quantization in ("int8", "nf4", "fp4")
    skip = HfQuantizer.get_modules_to_not_convert(model, None, fp32_modules) if bitsandbytes else []
    parameters = quantized = rows = kept = 0
    for name, parameter in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        parameters += parameter.numel()
        if fp32_modules and not should_convert_module(module_name, fp32_modules):
            kept += parameter.numel()
        linear = type(module) is torch.nn.Linear or type(module).__name__ == "Conv1D"
        if bitsandbytes and leaf == "weight" and linear and should_convert_module(module_name, skip):
            quantized += parameter.numel()
            rows += parameter.shape[0] if type(module) is torch.nn.Linear else parameter.shape[-1]
    holders = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    plain = [m.weight for m in {id(m): m for m in model.modules() if type(m) is torch.nn.Linear}.values()]
    tied = [w for w in plain if holders[id(w)] > 1]
    body = getattr(model, "base_model", model)  # smooth-int8 calibrates the layers its base model runs, not the head
    calibrated = {id(m): m for m in body.modules() if type(m) is torch.nn.Linear}.values()
    buffers: dict[int, int] = {}
    float_buffers = 0
    for buffer in model.buffers():
        if buffer.is_floating_point():
            float_buffers += buffer.numel()
        else:
            buffers[buffer.element_size()] = buffers.get(buffer.element_size(), 0) + buffer.numel()
    return WeightCount(
        parameters, quantized, rows, kept, buffers, float_buffers,
        linear=sum(w.numel() for w in plain), linear_rows=sum(w.shape[0] for w in plain),
        tied_linear=sum(w.numel() for w in tied),
        tied_packable=sum(w.numel() for w in tied if w.numel() >= PACKED_MIN_WEIGHTS),
        smooth_extra=sum(smooth_extra_bytes(*m.weight.shape) for m in calibrated),
    )


# activations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    heads: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int


def dims(config: Any) -> Dims:
    """Sizes that set activation memory, under the names the common configs use."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def first(*names: str, default: int = 0) -> int:
        for name in names:
            value = getattr(text, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return default

    hidden = first("hidden_size", "d_model", "n_embd", "dim", default=768)
    heads = first("num_attention_heads", "num_heads", "n_head", "encoder_attention_heads", default=12)
    return Dims(
        hidden=hidden,
        intermediate=first("intermediate_size", "d_ff", "n_inner", "ffn_dim", "encoder_ffn_dim", default=4 * hidden),
        heads=heads,
        layers=first("num_hidden_layers", "num_layers", "n_layer", default=12),
        kv_heads=first("num_key_value_heads", default=heads),
        head_dim=first("head_dim", "d_kv", default=max(1, hidden // heads)),
        vocab=first("vocab_size", default=0),
    )


def activation_bytes(spec: JobSpec, size: Dims, max_length: int, width: int) -> int:
    """The largest micro-batch's working memory, ``width`` bytes per value (an estimate).

    One layer's live tensors (hidden states, projections, the MLP) and attention scores for the
    most tokens a micro-batch holds at ``max_length``, plus what the task adds: logits over the
    vocabulary (generation, llm-label, fill-mask) and the key/value cache (generation).
    """
    batching = spec.batching
    tokens = min(batching.max_tokens, batching.max_rows * max_length)
    rows = batching.max_rows
    total = tokens * (4 * size.hidden + size.intermediate) * width
    total += tokens * min(max_length, tokens) * size.heads * width
    task = spec.task
    kind = task.type
    if kind in ("text-generation", "summarization", "translation"):
        expand = max(getattr(task, "num_beams", 1), getattr(task, "num_return_sequences", 1))
        new = getattr(task, "max_new_tokens", 0)
        cached = tokens * expand + rows * expand * new
        total += cached * size.layers * 2 * size.kv_heads * size.head_dim * width
        total += rows * expand * size.vocab * 4
    elif kind == "llm-label":
        positions = math.ceil((1 - batching.min_fill) * max_length) + 8  # from the earliest label on
        total += min(tokens, rows * positions) * size.vocab * 4
    elif kind == "fill-mask":
        total += rows * size.vocab * 4
    return int(total)


# fits ----------------------------------------------------------------------------------------


def gpu_dtype(spec: JobSpec, accelerator: str | None) -> str:
    if spec.model.quantization == "auto":  # it may fall back to float32: sized at the largest it may take
        return "float32"
    if spec.model.dtype != "auto":
        return spec.model.dtype
    return "float16" if accelerator in NO_BF16 else "bfloat16"


#: Said of a fit under ``quantization: auto``, whose DTYPE column reads float32 whatever auto would take.
AUTO_SIZED = ("; quantization auto: sized in float32, the largest it may take (its check loads float32 first; "
              "the precision it keeps may need less)")


def cpu_dtype(spec: JobSpec) -> str:
    if spec.model.quantization == "auto":
        return "float32"
    return spec.model.dtype if spec.model.dtype != "auto" else "float32"


def local_fit(spec: JobSpec, weights: WeightCount, size: Dims, max_length: int) -> Fit:
    """Actors on this machine's CPUs: memory available now, and the CPUs a local Ray would have."""
    dtype = cpu_dtype(spec)
    weight = weights.weight_bytes(dtype, spec.model.quantization, cpu_packed=spec.compute.cpu_matmul == "onednn")
    memory = this_machine_memory()
    cpus = this_machine_cpus()
    compute = spec.compute
    lanes = spec.lanes("cpu", compute.torch_threads(cpus))  # each forward in flight holds its own activations
    activations = activation_bytes(spec, size, max_length, DTYPE_BYTES[dtype]) * lanes
    per_actor = weight + activations + PROCESS_OVERHEAD
    # a local run refuses a pool whose CPUs leave none for reading and writing
    by_cpus = max(0, math.ceil(cpus / compute.cpus_per_actor) - 1)
    # a local Ray has Ray's own resources only (and no GPU here, so no accelerator type): a run refuses a pool that
    # asks for another (check_pool_fits)
    custom = sorted(name for name, amount in compute.resources.items()
                    if amount > 0 and name not in RAY_NODE_RESOURCES and not name.startswith("node:"))
    if compute.accelerator_type:
        custom.append(f"accelerator_type:{compute.accelerator_type}")
    by_resources = 0 if compute.gpus_per_actor > 0 or custom else by_cpus
    basis = (
        f"memory available now; {PROCESS_OVERHEAD // MIB} MiB per actor process assumed; "
        f"{cpus} CPUs, cpus_per_actor {compute.cpus_per_actor:g}"
        + (f"; {lanes} micro-batches at once per actor (compute.cpu_lanes)" if lanes > 1 else "")
        + ("; the job asks for GPUs, none here" if compute.gpus_per_actor > 0 else "")
        + (f"; its actors ask Ray for {', '.join(custom)}, which a local Ray has none of" if custom else "")
        + (AUTO_SIZED if spec.model.quantization == "auto" else "")
    )
    by_memory = memory // per_actor
    return Fit(
        target="this machine", accelerator=None, device="cpu", dtype=dtype, memory_bytes=memory,
        weights_bytes=weight, activations_bytes=activations, overhead_bytes=PROCESS_OVERHEAD,
        per_actor_bytes=per_actor, by_memory=by_memory, by_resources=by_resources,
        actors=min(by_memory, by_resources), basis=basis,
    )


def node_fits(spec: JobSpec, cluster: Cluster, weights: WeightCount, size: Dims, max_length: int) -> list[Fit]:
    """Actors per node for each GPU node type: by GPU memory, and by what each actor asks Ray for.

    A job that asks for no GPU is sized as if ``compute.gpus_per_actor`` were 1, and one pinned to ``model.device:
    cpu`` (whose actors compute on a GPU node's CPUs) as if its device were ``auto``: the basis says so.
    """
    fits = []
    compute = spec.compute
    as_gpu = compute if compute.gpus_per_actor > 0 else compute.model_copy(update={"gpus_per_actor": 1.0})
    for node in cluster.node_types:
        dtype = gpu_dtype(spec, node.accelerator)
        weight = weights.weight_bytes(dtype, spec.model.quantization)
        activations = activation_bytes(spec, size, max_length, DTYPE_BYTES[dtype])
        per_actor = weight + activations + CUDA_CONTEXT
        memory = node.gpu_memory
        by_memory = memory // per_actor if memory else None
        by_resources = actors_that_fit(actor_request(as_gpu), [node.resources])
        actors = by_resources if by_memory is None else min(by_memory, by_resources)
        basis = f"GPU memory {_gib(memory)}, {CUDA_CONTEXT // MIB} MiB CUDA context per actor assumed"
        pinned = spec.model.device == "cpu"  # its actors compute on the CPU, a GPU share or not
        if pinned:
            basis += ("; model.device cpu: its actors would run on this node type's CPUs, not its GPU; sized as if "
                      f"model.device were auto with compute.gpus_per_actor {as_gpu.gpus_per_actor:g}")
        elif compute.gpus_per_actor == 0:
            basis += "; the job asks for no GPU (compute.gpus_per_actor 0): sized as if it were 1"
        packed = _packed(compute, node, by_memory)
        if packed > by_resources:
            share = math.floor(1000 / packed) / 1000
            setting = f"model.device auto and gpus_per_actor {share:g}" if pinned else f"gpus_per_actor {share:g}"
            basis += f"; {setting} would place {packed} per node (GPU memory allows {by_memory})"
        if spec.model.quantization == "auto":
            basis += AUTO_SIZED
        fits.append(
            Fit(
                target=node.name, accelerator=node.accelerator, instance=node.instance, device="cuda", dtype=dtype,
                memory_bytes=memory, weights_bytes=weight, activations_bytes=activations, overhead_bytes=CUDA_CONTEXT,
                per_actor_bytes=per_actor, by_memory=by_memory, by_resources=by_resources, actors=actors,
                max_nodes=node.max_workers, basis=basis,
            )
        )
    return fits


def _packed(compute: ComputeSpec, node: NodeType, by_memory: int | None) -> int:
    """Actors per node if several shared the GPU: memory permitting, and the node's CPUs (and other resources)."""
    if not by_memory:
        return 0
    without_gpu = actor_request(compute.model_copy(update={"gpus_per_actor": 0.0}))
    return min(by_memory, actors_that_fit(without_gpu, [node.resources]))


def _gib(value: int | None) -> str:
    return "unknown for this accelerator type" if value is None else f"{value / GIB:.1f} GiB"


def model_plan(spec: JobSpec, context: Any, cluster: Cluster | None) -> ModelPlan:
    """Parameters, bytes and fits for the job's model (``context``: a :class:`.tokens.TaskContext`)."""
    weights = count_weights(context.config, context.model_class, spec.model.quantization, spec.model.trust_remote_code)
    size = dims(context.config)
    fits = [local_fit(spec, weights, size, context.max_length)]
    if cluster is not None:
        fits += node_fits(spec, cluster, weights, size, context.max_length)
    return ModelPlan(
        name=spec.model.name, resolved=context.resolved, model_class=context.model_class,
        parameters=weights.parameters, quantization=spec.model.quantization,
        quantized_parameters=weights.linear if spec.model.quantization in CPU_QUANTIZATIONS else weights.quantized,
        fits=fits,
    )
