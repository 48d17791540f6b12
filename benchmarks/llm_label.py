"""llm-label with the prompt prefix reused against full recomputation, same rows, same model, one process.

    python benchmarks/llm_label.py                       # jobs/sentiment_llm_label.yaml on jobs/data/reviews
    python benchmarks/llm_label.py --rows 64 --repeat 1

Both predictors come from the job's spec (SmolLM2-135M-Instruct, the four-shot
prompt, its batching); one sets ``task.reuse_prefix: false``, which is how every
row was labelled before: one right-padded forward over the whole prompt and label
for every (row, label) pair. Each predictor is called on the same rows in calls of
``batching.batch_size`` rows, as an actor is; model loading and the once-per-actor
prefix are not timed. Every call runs ``--repeat`` times, alternating the two
paths, and the fastest time of each call counts: on a shared machine another
process's burst only ever slows a run down. Prints one JSON line: rows/s of each
path, the speed-up, and how far the labels and scores of the two paths are apart.

``--naive`` also times the yardstick of the issue that asked for prefix reuse: a
plain Transformers loop scoring every (row, label) pair as its own right-padded
sequence, 16 per forward, in input order, logits at every position and log-probabilities where
a label token is scored (the job of that day ran at 0.9x of it), with torch's own matmul as plain Transformers has it
(``--naive-matmul onednn``: this project's, for the loop's share alone). Same model,
tokens and scoring rule; its labels are compared with the job's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_rows(limit: int | None) -> list[dict]:
    with open(ROOT / "jobs/data/reviews/sst2-sample.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def predictor(raw: dict, reuse: bool, threads: int, cpu_matmul: str | None = None):
    from pipelines.inference.predictor import Predictor
    from pipelines.spec import spec_from_dict

    raw = json.loads(json.dumps(raw))
    raw["task"]["reuse_prefix"] = reuse
    raw["compute"]["threads_per_actor"] = threads
    if cpu_matmul is not None:
        raw["compute"]["cpu_matmul"] = cpu_matmul
    return Predictor(spec_from_dict(raw))


def label_all(models: list, rows: list[dict], batch_size: int, repeat: int) -> tuple[list[list[dict]], list[float]]:
    """Each model's output on every row, and its total time: per call of ``batch_size`` rows, the fastest of
    ``repeat`` runs (the models alternating)."""
    import pyarrow as pa

    table = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})
    outputs: list[list[dict]] = [[] for _ in models]
    totals = [0.0 for _ in models]
    for at in range(0, len(rows), batch_size):
        batch = table.slice(at, batch_size)
        best = [float("inf") for _ in models]
        last: list = [None for _ in models]
        for _ in range(repeat):
            for i, model in enumerate(models):
                start = time.perf_counter()
                last[i] = model(batch)
                best[i] = min(best[i], time.perf_counter() - start)
        for i in range(len(models)):
            totals[i] += best[i]
            outputs[i] += last[i].to_pylist()
    return outputs, totals


def naive_loop(predictor, rows: list[dict], repeat: int, per_forward: int = 16) -> tuple[list[str], float]:
    """The issue's yardstick in plain Transformers: every (row, label) pair its own right-padded sequence (the
    whole prompt, then the label), ``per_forward`` at a time in input order, logits at every position; the labels
    and the fastest of ``repeat`` runs. Same model, tokens and scoring rule as the job."""
    import torch

    from pipelines.tasks.prompts import fill, render

    task, model = predictor.task, predictor.loaded.model
    options = task.options
    prompts, _ = fill(options.prompt_template, [r["text"] for r in rows], {})
    rendered = render(task.tokenizer, prompts, options.chat, options.system_prompt)
    prompt_ids, continuations = task._tokenize(rendered)
    pairs = [
        (i, j, ids + label, len(ids))
        for i, (ids, per_label) in enumerate(zip(prompt_ids, continuations))
        for j, label in enumerate(per_label)
    ]
    pad = predictor.pad_id
    best, loglik = float("inf"), np.zeros((len(rows), len(task.labels)))
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.inference_mode():
            for at in range(0, len(pairs), per_forward):
                chunk = pairs[at : at + per_forward]
                width = max(len(ids) for _, _, ids, _ in chunk)
                ids = torch.tensor([ids + [pad] * (width - len(ids)) for _, _, ids, _ in chunk])
                mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for _, _, ids, _ in chunk])
                logits = model(input_ids=ids, attention_mask=mask).logits
                for k, (i, j, seq, cut) in enumerate(chunk):  # log-probabilities only where a label token is scored
                    logp = logits[k, cut - 1 : len(seq) - 1].float().log_softmax(-1)
                    total = float(logp[torch.arange(len(seq) - cut), torch.tensor(seq[cut:])].sum())
                    loglik[i, j] = total / (len(seq) - cut) if options.normalize == "mean" else total
        best = min(best, time.perf_counter() - start)
    return [task.labels[int(j)] for j in loglik.argmax(axis=1)], best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(ROOT / "jobs/sentiment_llm_label.yaml"))
    parser.add_argument("--rows", type=int, default=None, help="first N rows of jobs/data/reviews (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each call; the fastest counts")
    parser.add_argument(
        "--naive", action="store_true",
        help="also time the issue's yardstick: each (row, label) pair its own right-padded sequence, 16 per forward",
    )
    parser.add_argument(
        "--naive-matmul", choices=["torch", "onednn"], default="torch",
        help="the yardstick's matmul: torch's own, as plain Transformers (default), or this project's oneDNN",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. batching.batch_size=256")
    args = parser.parse_args()
    from pipelines.spec import apply_overrides

    raw = apply_overrides(yaml.safe_load(Path(args.job).read_text()), list(args.set))
    rows = load_rows(args.rows)
    batch_size = raw.get("batching", {}).get("batch_size", 256)
    prefix = raw.get("output", {}).get("prediction_prefix", "")

    reused, full = predictor(raw, True, args.threads), predictor(raw, False, args.threads)
    label_all([reused, full], rows[:4], batch_size, 1)  # warm-up: first calls allocate
    (fast, slow), (reused_s, full_s) = label_all([reused, full], rows, batch_size, args.repeat)

    naive_labels, naive_s = None, None
    if args.naive:  # plain Transformers: torch's own matmul unless asked otherwise
        naive_labels, naive_s = naive_loop(predictor(raw, False, args.threads, args.naive_matmul), rows, args.repeat)

    labels = raw["task"]["candidate_labels"]
    diff = max(abs(a[prefix + "scores"][x] - b[prefix + "scores"][x]) for a, b in zip(fast, slow) for x in labels)
    result = {
        "rows": len(rows),
        "threads": args.threads,
        "repeat": args.repeat,
        "batching": raw.get("batching", {}),
        "shared_prefix_tokens": len(reused.task.kv_prefix) if reused.task.kv_prefix is not None else 0,
        "full_rows_per_s": round(len(rows) / full_s, 2),
        "reused_rows_per_s": round(len(rows) / reused_s, 2),
        "speedup": round(full_s / reused_s, 2),
        "labels_differ": sum(a[prefix + "label"] != b[prefix + "label"] for a, b in zip(fast, slow)),
        "max_score_diff": float(f"{diff:.2e}"),
        **(
            {
                "naive_matmul": args.naive_matmul,
                "naive_rows_per_s": round(len(rows) / naive_s, 2),
                "speedup_vs_naive": round(naive_s / reused_s, 2),
                "naive_labels_differ": sum(a[prefix + "label"] != b for a, b in zip(fast, naive_labels)),
            }
            if naive_s
            else {}
        ),
        "accuracy": round(float(np.mean([r[prefix + "label"] == t["label"] for r, t in zip(fast, rows)])), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
