"""What zero-shot NLI costs per row with k candidate labels, and what sharing a row's tokenization saves.

    python benchmarks/zero_shot_nli.py --rows 400 --labels 1 2 4 8

An NLI cross-encoder judges every (row, label) pair in its own sequence: the
text and the hypothesis attend to each other in every layer, so nothing of the
forward pass can be shared between a row's labels without changing the scores.
What can be shared is the tokenization (each text tokenized once and joined to
every hypothesis, tokenized once per actor) and the batching (a row's pairs have
nearly the same length, so length-sorted micro-batches waste little padding).

The model is all-MiniLM-L6-v2 (the built-in ``minilm``) with a seeded random
3-class NLI head: the real depth and tokenizer of a small cross-encoder; the
labels it picks mean nothing. For comparison, ``method: embedding`` on the same
MiniLM (one forward per row, whatever k). All figures come from one process, the
same rows, rounds alternating between settings, medians reported; the ratios use
the process's CPU time, which a busy machine disturbs far less than wall time.
Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABELS = ["World", "Sports", "Business", "Science", "Politics", "Health", "Travel", "Music"]


def corpus(rows: int) -> list[str]:
    """The sample news shards and SST-2 reviews of jobs/data, shuffled (seed 0), repeated to ``rows``."""
    import gzip

    import numpy as np
    import pyarrow.parquet as pq

    texts: list[str] = []
    for path in sorted((ROOT / "jobs/data/news").iterdir()):
        if path.suffix == ".parquet":
            texts += pq.read_table(path).column("text").to_pylist()
        else:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as f:
                texts += [json.loads(line)["text"] for line in f]
    with open(ROOT / "jobs/data/reviews/sst2-sample.jsonl") as f:
        texts += [json.loads(line)["text"] for line in f]
    order = np.random.default_rng(0).permutation(len(texts))
    mixed = [texts[i] for i in order]
    return (mixed * (rows // len(mixed) + 1))[:rows]


def nli_model(directory: Path) -> str:
    """MiniLM with a seeded random NLI head, saved once."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipelines.inference.aliases import minilm_dir
    from pipelines.spec import ModelSpec

    if not (directory / "config.json").exists():
        base = minilm_dir(ModelSpec(name="minilm"))
        names = ["contradiction", "neutral", "entailment"]
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
        )
        model.save_pretrained(directory)
        AutoTokenizer.from_pretrained(base).save_pretrained(directory)
    return str(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a busy machine)")
    args = parser.parse_args()

    import pyarrow as pa

    from pipelines.inference.predictor import Predictor
    from pipelines.spec import spec_from_dict

    texts = corpus(args.rows)
    batch = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    model_dir = nli_model(Path(tempfile.gettempdir()) / "pipelines-bench-minilm-nli")

    def predictor(method: str, k: int) -> Predictor:
        spec = {
            "input": {"paths": ["unused"]},
            "model": {"name": model_dir if method == "nli" else "minilm"},
            "task": {"type": "zero-shot-classification", "candidate_labels": LABELS[:k], "method": method},
            "output": {"path": "unused"},
            "compute": {"threads_per_actor": args.threads},
        }
        made = Predictor(spec_from_dict(spec))
        made(batch.slice(0, 16))  # warm-up
        return made

    settings = {("nli", k): predictor("nli", k) for k in args.labels}
    settings["embedding", max(args.labels)] = predictor("embedding", max(args.labels))
    timings: dict[tuple, dict[str, list[float]]] = {s: {} for s in settings}

    def timed(setting: tuple, name: str, work) -> None:
        """CPU time of the process per row (steady on a busy machine), and wall time per row."""
        cpu, wall = time.process_time(), time.perf_counter()
        work()
        for clock, began in (("cpu", cpu), ("wall", wall)):
            now = time.process_time() if clock == "cpu" else time.perf_counter()
            timings[setting].setdefault(f"{name}_{clock}", []).append((now - began) / len(texts))

    for _ in range(args.rounds):
        for setting, made in settings.items():
            timed(setting, "row", lambda: made(batch))
            if setting[0] == "nli":
                timed(setting, "tokenize_shared", lambda: made.task._shared_pairs(texts))
                timed(setting, "tokenize_whole", lambda: made.task._whole_pairs(texts))
    medians = {s: {name: statistics.median(values) for name, values in t.items()} for s, t in timings.items()}
    base = medians["nli", args.labels[0]]["row_cpu"]
    for (method, k), m in medians.items():
        line = {"method": method, "labels": k, "cpu_ms_per_row": round(1000 * m["row_cpu"], 2)}
        line["wall_ms_per_row"] = round(1000 * m["row_wall"], 2)
        line["cpu_vs_nli_first"] = round(m["row_cpu"] / base, 2)
        if method == "nli":
            shared, whole = m["tokenize_shared_cpu"], m["tokenize_whole_cpu"]
            line["tokenize_cpu_ms_per_row"] = {"shared": round(1000 * shared, 3), "whole_pairs": round(1000 * whole, 3)}
            line["tokenize_saving_share_of_row"] = round((whole - shared) / m["row_cpu"], 4)
        print(json.dumps(line))


if __name__ == "__main__":
    main()
