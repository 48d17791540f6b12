"""Greedy text-generation: this project's predictor against ``transformers.pipeline("text-generation")``.

    python benchmarks/generation.py                          # jobs/generate_summaries.yaml, pipeline at N = 1..32
    python benchmarks/generation.py --rows 32 --sizes 8 16 --repeat 1
    python benchmarks/generation.py --impls project generate_batch

Same rows (the job's input), same model (SmolLM2-135M-Instruct), same threads, same
prompts (the job's chat turn and system prompt) and ``max_new_tokens``, greedy.
Implementations, each timed on every row:

* ``project``: this project's Predictor from the job's spec, called in calls of
  ``batching.batch_size`` rows as an actor is (prompts sorted by length, the shared
  prefix computed once, finished rows leaving the batch);
* ``pipeline``: ``transformers.pipeline("text-generation", batch_size=N)`` for each
  N of ``--sizes`` (input order, left-padded batches through ``model.generate``);
* ``generate_batch``: Transformers' continuous batching (``model.generate_batch``).

Model loading and the project's once-per-actor prefix are not timed. Each
implementation runs ``--repeat`` times, the implementations taking turns, and its fastest
run counts (another process on a shared machine only ever slows a run down). Prints one JSON line: rows/s
and generated tokens/s of each, the best pipeline N, the speed-up over it, and on how
many rows the texts are identical to the pipeline's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_rows(raw: dict, limit: int | None) -> list[dict]:
    path = ROOT / raw["input"]["paths"][0]
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def conversations(raw: dict, rows: list[dict]) -> list[list[dict]]:
    task = raw["task"]
    head = [{"role": "system", "content": task["system_prompt"]}] if task.get("system_prompt") else []
    return [[*head, {"role": "user", "content": task["prompt_template"].format(text=r["text"])}] for r in rows]


def run_project(raw: dict, rows: list[dict], threads: int) -> Callable[[], tuple[list[str], int]]:
    import pyarrow as pa

    from pipelines.inference.predictor import Predictor
    from pipelines.spec import spec_from_dict

    raw = json.loads(json.dumps(raw))
    raw["compute"]["threads_per_actor"] = threads
    spec = spec_from_dict(raw)
    predictor = Predictor(spec)
    prefix = spec.output.prediction_prefix
    batch_size = spec.batching.batch_size
    table = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})

    def run() -> tuple[list[str], int]:
        out = [r for at in range(0, len(rows), batch_size) for r in predictor(table.slice(at, batch_size)).to_pylist()]
        return [r[prefix + "generated_text"] for r in out], sum(r[prefix + "generated_tokens"] for r in out)

    return run


def model_dir() -> str:
    from pipelines.inference.aliases import resolve_name
    from pipelines.spec import ModelSpec

    return resolve_name(ModelSpec(name="smollm2"))


def run_pipeline(raw: dict, rows: list[dict], size: int) -> Callable[[], tuple[list[str], int]]:
    import transformers

    generator = transformers.pipeline("text-generation", model=model_dir(), device="cpu")
    chats = conversations(raw, rows)
    tokenizer = generator.tokenizer
    max_new = raw["task"]["max_new_tokens"]

    def run() -> tuple[list[str], int]:
        out = generator(chats, batch_size=size, max_new_tokens=max_new, do_sample=False, return_full_text=False)
        texts = [o[0]["generated_text"] for o in out]
        return texts, sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    return run


def run_generate_batch(raw: dict, rows: list[dict]) -> Callable[[], tuple[list[str], int]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts = tokenizer.apply_chat_template(conversations(raw, rows), add_generation_prompt=True, return_dict=False)
    config = GenerationConfig(
        max_new_tokens=raw["task"]["max_new_tokens"], do_sample=False, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    def run() -> tuple[list[str], int]:
        out = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
        generated = [list(o.generated_tokens) for o in out.values()]
        order = [int(key.split("_")[-1]) if key.split("_")[-1].isdigit() else i for i, key in enumerate(out)]
        by_row = [g for _, g in sorted(zip(order, generated))]
        texts = tokenizer.batch_decode(by_row, skip_special_tokens=True)
        return texts, sum(len(g) for g in by_row)

    return run


Run = Callable[[], tuple[list[str], int]]


def best_of(runs: dict[str, Run], repeat: int) -> dict[str, tuple[list[str], int, float]]:
    """Each implementation's texts, generated tokens and fastest time over ``repeat`` rounds, taking turns (so a
    change of load on the machine reaches all of them alike)."""
    results: dict[str, tuple[list[str], int, float]] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            texts, tokens = run()
            seconds = time.perf_counter() - start
            if name not in results or seconds < results[name][2]:
                results[name] = (texts, tokens, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(ROOT / "jobs/generate_summaries.yaml"))
    parser.add_argument("--rows", type=int, default=None, help="first N rows of the job's input (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="pipeline batch sizes")
    parser.add_argument("--impls", nargs="+", default=["project", "pipeline"])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. batching.min_fill=0")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pipelines.spec import apply_overrides

    raw = apply_overrides(yaml.safe_load(Path(args.job).read_text()), list(args.set))
    rows = load_rows(raw, args.rows)
    runs: dict[str, Callable[[], tuple[list[str], int]]] = {}
    if "project" in args.impls:
        runs["project"] = run_project(raw, rows, args.threads)
    if "pipeline" in args.impls:
        runs.update({f"pipeline_{n}": run_pipeline(raw, rows, n) for n in args.sizes})
    if "generate_batch" in args.impls:
        runs["generate_batch"] = run_generate_batch(raw, rows)
    results = best_of(runs, args.repeat)

    report: dict = {"rows": len(rows), "threads": args.threads, "repeat": args.repeat, "batching": raw["batching"]}
    for name, (_, tokens, seconds) in results.items():
        report[name] = {"s": round(seconds, 2), "rows_per_s": round(len(rows) / seconds, 2),
                        "generated_tokens_per_s": round(tokens / seconds, 1)}
    pipelines = [name for name in results if name.startswith("pipeline_")]
    if pipelines:
        best = min(pipelines, key=lambda name: results[name][2])
        report["best_pipeline"] = best
        for name in results:
            if not name.startswith("pipeline_"):
                report[name]["speedup_over_best_pipeline"] = round(results[best][2] / results[name][2], 2)
                same = sum(a == b for a, b in zip(results[name][0], results[best][0]))
                report[name]["texts_identical_to_best_pipeline"] = f"{same}/{len(rows)}"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
