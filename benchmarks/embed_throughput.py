"""Throughput of embedding the same rows three ways, with the same model and threads.

    python benchmarks/embed_throughput.py --impl project     # this project's Predictor (no Ray)
    python benchmarks/embed_throughput.py --impl pipeline    # transformers.pipeline("feature-extraction", batch_size=N)
    python benchmarks/embed_throughput.py --impl ray-data    # the plain Ray Data pattern: padded batches in input order
    python benchmarks/embed_throughput.py --impl project-ray # this project's full job on a local Ray (read → actors → Parquet)

Rows: the repo's AG News shards mixed with the SST-2 sample (a length-skewed corpus),
repeated to --rows. Each run prints one JSON line: rows/s, real tokens/s and padding
efficiency (real tokens / tokens computed). Model loading and Ray start-up are not
counted for project and pipeline; project-ray and ray-data include their actor's start and model
load (a job's wall time), so compare those two with each other.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def corpus(rows: int) -> list[str]:
    texts = []
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


def model_dir() -> str:
    from pipelines.models import minilm_dir
    from pipelines.spec import ModelSpec

    return minilm_dir(ModelSpec(name="minilm"))


def run_project(texts: list[str], args: argparse.Namespace) -> dict:
    import pyarrow as pa

    from pipelines.predictor import PADDED, TOKENS, Predictor
    from pipelines.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "input": {"paths": ["-"]},
            "model": {"name": "minilm", "quantization": args.quantization},
            "task": {"type": "feature-extraction"},
            "batching": {"max_length": args.max_length},
            "compute": {"threads_per_actor": args.threads},
            "output": {"path": "-"},
        }
    )
    predictor = Predictor(spec)
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    start = time.perf_counter()
    tokens = padded = 0
    for offset in range(0, len(texts), args.call_rows):
        out = predictor(table.slice(offset, args.call_rows))
        tokens += int(np.sum(out.column(TOKENS).to_numpy()))
        padded += int(np.sum(out.column(PADDED).to_numpy()))
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "padded": padded}


def run_pipeline(texts: list[str], args: argparse.Namespace) -> dict:
    import torch
    from transformers import pipeline

    torch.set_num_threads(args.threads)
    pipe = pipeline("feature-extraction", model=model_dir(), device="cpu")
    tokenizer = pipe.tokenizer
    start = time.perf_counter()
    vectors = []
    for output in pipe(texts, batch_size=args.batch_size, truncation=True, max_length=args.max_length):
        vectors.append(np.asarray(output[0]).mean(axis=0))  # mean-pool the per-token lists it returns
    seconds = time.perf_counter() - start
    tokens, padded = input_order_tokens(tokenizer, texts, args)
    return {"seconds": seconds, "tokens": tokens, "padded": padded}


def input_order_tokens(tokenizer, texts: list[str], args: argparse.Namespace) -> tuple[int, int]:
    lengths = np.array([len(x) for x in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]])
    batches = [lengths[i : i + args.batch_size] for i in range(0, len(lengths), args.batch_size)]
    return int(lengths.sum()), int(sum(len(b) * b.max() for b in batches))


class PlainEmbedder:
    """The usual Ray Data batch-inference callable: tokenize with padding=True, forward, mean-pool."""

    def __init__(self, path: str, threads: int, max_length: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length

    def __call__(self, batch: dict) -> dict:
        import torch

        inputs = self.tokenizer(
            list(batch["text"]), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1)
        vectors = (hidden * mask).sum(1) / mask.sum(1)
        return {"embedding": vectors.numpy(), "tokens": inputs["attention_mask"].sum(1).numpy()}


def run_ray_data(texts: list[str], args: argparse.Namespace) -> dict:
    import ray
    from transformers import AutoTokenizer

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    start = time.perf_counter()  # like project-ray: actor start and model load included
    dataset = ray.data.from_items([{"text": t} for t in texts]).map_batches(
        PlainEmbedder,
        fn_constructor_kwargs={"path": model_dir(), "threads": args.threads, "max_length": args.max_length},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=args.batch_size,
        num_cpus=1,
    )
    count = dataset.materialize().count()
    seconds = time.perf_counter() - start
    assert count == len(texts)
    tokens, padded = input_order_tokens(AutoTokenizer.from_pretrained(model_dir()), texts, args)
    return {"seconds": seconds, "tokens": tokens, "padded": padded}


def run_project_ray(texts: list[str], args: argparse.Namespace) -> dict:
    from pipelines.runner import run_job
    from pipelines.spec import spec_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "in"
        shards.mkdir()
        per_shard = max(1, len(texts) // 4)
        for k in range(0, len(texts), per_shard):
            with open(shards / f"part-{k}.jsonl", "w") as f:
                for i, text in enumerate(texts[k : k + per_shard]):
                    f.write(json.dumps({"id": f"{k}-{i}", "text": text}) + "\n")
        spec = spec_from_dict(
            {
                "input": {"paths": [str(shards)]},
                "model": {"name": "minilm", "quantization": args.quantization},
                "task": {"type": "feature-extraction"},
                "batching": {"max_length": args.max_length, "batch_size": args.call_rows},
                "compute": {"threads_per_actor": args.threads, "cpus_per_actor": 1},
                "output": {"path": str(Path(tmp) / "out")},
            }
        )
        summary = run_job(spec)
    tokens = summary["tokens_per_s"] * summary["wall_s"]
    return {"seconds": summary["wall_s"], "tokens": tokens, "padded": tokens / summary["padding_efficiency"]}


IMPLS = {"project": run_project, "pipeline": run_pipeline, "ray-data": run_ray_data, "project-ray": run_project_ray}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the plain baselines")
    parser.add_argument("--call-rows", type=int, default=512, help="rows per predictor call (the actor batch)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "nf4"])
    args = parser.parse_args()
    texts = corpus(args.rows)
    result = IMPLS[args.impl](texts, args)
    print(
        json.dumps(
            {
                "impl": args.impl,
                "rows": len(texts),
                "seconds": round(result["seconds"], 2),
                "rows_per_s": round(len(texts) / result["seconds"], 1),
                "tokens_per_s": round(result["tokens"] / result["seconds"], 0),
                "padding_efficiency": round(result["tokens"] / result["padded"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
