"""Which int8 scheme could make a CPU job faster than float32 and keep 99% of its labels? (#11, item 4)

One predictor (no Ray) scores a job's rows in float32 and in int8 schemes built on the same loaded model, and
reports for each: the share of float32's labels it keeps, the labels that change when the rows are scored in calls
of another size (what a resume or other batching sizes can change), and the seconds to score the rows (the second of
two passes; tokenizing and the task's own work included, as in a job). The schemes:

- ``float32``: the job's float32 (Linear layers packed for oneDNN where ``compute.cpu_matmul`` is ``onednn``);
- ``dynamic-int8``: ``model.quantization: dynamic-int8`` as the project loads it (torch's fused dynamic int8:
  weights per output channel, activations with one scale per forward's whole tensor, all rows and padding together);
- ``per-token-int8``: ``model.quantization: per-token-int8`` as the project loads it
  (:mod:`pipelines.inference.int8_linear`: weights per output channel, activations with a scale per token,
  ``torch._int_mm`` in exact int32 sums, in eager torch);
- ``smooth-int8``: ``model.quantization: smooth-int8`` as the project loads it: per-token int8 after SmoothQuant's
  migration, each layer's most outlying input channels in float32, calibrated on the project's fixed texts.

Each is a choice of a job. The seconds mean something only with nothing else running (2 cores: a test-suite
beside it halves them).

    .venv/bin/python benchmarks/cpu_int8.py                          # the main job's 600 rows
    .venv/bin/python benchmarks/cpu_int8.py --set "input.paths=[benchmarks/data/agnews_sst2]" \\
        --set input.label_column=null                                # the 8,472 rows of the throughput benchmark
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from batch_invariance import predict, read_rows

from pipelines.inference.int8_linear import SmoothedInt8Linear
from pipelines.inference.loading import cpu_int8
from pipelines.inference.packed_linear import pack_linears
from pipelines.inference.predictor import Predictor
from pipelines.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def layer_milliseconds(tokens: int = 2560, repeat: int = 30) -> dict[str, dict[str, float]]:
    """One Linear layer of each of MiniLM's shapes on ``tokens`` tokens, on one thread (a lane's), alone: milliseconds
    per call of the packed float32 layer a job runs, torch's dynamic int8, per-token int8 and smooth int8."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    found = {}
    try:
        for inputs, outputs in ((384, 1536), (1536, 384), (384, 384)):
            torch.manual_seed(0)
            x, layer = torch.randn(tokens, inputs), torch.nn.Sequential(torch.nn.Linear(inputs, outputs))
            packed = copy.deepcopy(layer)
            pack_linears(packed)
            schemes = {
                "float32 packed": packed,
                "dynamic-int8": cpu_int8(copy.deepcopy(layer), torch.device("cpu"), "dynamic-int8"),
                "per-token-int8": cpu_int8(copy.deepcopy(layer), torch.device("cpu"), "per-token-int8"),
                "smooth-int8": torch.nn.Sequential(SmoothedInt8Linear(layer[0], x.abs().amax(0))),
            }
            times: dict[str, float] = {}
            with torch.inference_mode():
                for name, model in schemes.items():
                    for _ in range(3):
                        model(x)
                    start = time.perf_counter()
                    for _ in range(repeat):
                        model(x)
                    times[name] = round((time.perf_counter() - start) / repeat * 1000, 2)
            found[f"{inputs}->{outputs}"] = times
            print(f"layer {inputs} -> {outputs} on {tokens} tokens, one thread, ms: {times}", file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "jobs" / "label_news.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides")
    parser.add_argument("--call-rows", type=int, default=256, help="rows per call (the job's batch_size)")
    parser.add_argument("--other-call-rows", type=int, default=37, help="rows per call to compare labels with")
    args = parser.parse_args()
    overrides = [*args.set, "model.quantization=none", "model.dtype=float32"]
    spec = load_spec(args.spec, overrides)
    onednn = spec.compute.cpu_matmul == "onednn"
    spec = load_spec(args.spec, [*overrides, "compute.cpu_matmul=torch"])  # loaded unpacked: each scheme packs
    rows = read_rows(spec)
    predictor = Predictor(spec)
    label = spec.output.prediction_prefix + "label"
    plain, tokenizer = predictor.loaded.model, predictor.loaded.tokenizer
    schemes: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
        "float32": lambda model: model,
        "dynamic-int8": lambda model: cpu_int8(model, torch.device("cpu"), "dynamic-int8"),
        "per-token-int8": lambda model: cpu_int8(model, torch.device("cpu"), "per-token-int8"),
        "smooth-int8": lambda model: cpu_int8(model, torch.device("cpu"), "smooth-int8", tokenizer),
    }
    report: dict[str, object] = {"spec": args.spec, "set": args.set, "rows": rows.num_rows, "schemes": {},
                                 "layer_ms": layer_milliseconds()}
    reference: list[str] | None = None
    for name, build in schemes.items():
        with torch.inference_mode():
            model = build(copy.deepcopy(plain))
        if onednn:
            pack_linears(model)
        predictor.loaded.model = model
        predictor.task.setup(model, predictor.loaded.device)  # what the task computes once with the model
        predict(predictor, rows, args.call_rows)
        start = time.perf_counter()
        labels = predict(predictor, rows, args.call_rows).column(label).to_pylist()
        seconds = time.perf_counter() - start
        other = predict(predictor, rows, args.other_call_rows).column(label).to_pylist()
        reference = reference or labels
        found = {
            "label_agreement": sum(a == b for a, b in zip(reference, labels)) / len(labels),
            f"labels_changed_in_calls_of_{args.other_call_rows}": sum(a != b for a, b in zip(labels, other)),
            "seconds": round(seconds, 3),
        }
        report["schemes"][name] = found  # type: ignore[index]
        print(f"{name}: {found}", file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
