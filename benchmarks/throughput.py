"""One command that measures this project's job against the model's own forward speed and its peers.

    python benchmarks/throughput.py                        # everything, on the whole corpus (about 20 min)
    python benchmarks/throughput.py --rows 2000 --only limit,job     # a quick look
    python benchmarks/throughput.py --precision bfloat16   # the same at another precision

All parts run one after the other on the same rows (benchmarks/data/agnews_sst2: AG News + SST-2 test
splits shuffled, a length-skewed corpus), the same model (all-MiniLM-L6-v2, mean pooling, L2
normalised), the same precision and the same number of torch threads, and nothing else should run on
the machine meanwhile. Each part:

- ``limit``: the model's own forward speed, the ceiling for any job: rows tokenized beforehand, sorted
  by length over the whole input, micro-batches of at most 64 rows and 8,192 tokens, timed forwards
  only (pooling included), in this process, the model loaded as the job loads it (its ``--set`` too,
  e.g. ``compute.cpu_matmul=torch`` for torch's own matmul).
- ``limit-lanes``: the same micro-batches in as many lanes as threads, one torch thread each, a lane taking
  the next micro-batch as it finishes one (as the job's actor runs an encoder on a CPU, ``compute.cpu_lanes``):
  the model's own speed as the job computes it.
- ``limit-in-ray``: the same as ``limit``, in an actor of a local Ray started as a job starts it (one CPU, like
  the job's actor): what Ray's own processes beside the actor, and the priority Ray gives its workers, leave of the
  limit, before Ray Data or this project's pipeline do anything.
- ``job``: ``pipelines run`` as a user runs it (a new process, a local Ray, one actor), on the first half
  of the shards and on all of them, ``--job-repeat`` times each in turn, the fastest run of each size
  counting (a burst of other work only ever slows a run down): steady state = the extra rows / the extra
  seconds (the fixed cost at that speed: ``fixed_cost_two_sizes_s``); that run's timeline
  (imports, Ray start, actor start and model load, that also in three by the actor's own clock as
  ``start_up.py`` reads it, first batch, drain, shutdown) and the peak memory of
  its process tree. Also the pace inside each run (``in_run_speed``): the rows the actor staged after its
  first call over the time they took, the fastest of the whole input's runs counting: start-up and
  shut-down left out without a second run, so it does not carry their spread; the fixed cost is then
  the whole run less its rows at that pace.
- ``pipeline``: ``transformers.pipeline("feature-extraction", batch_size=32)`` over the rows in input
  order, in this process (model load not counted, like ``limit``).
- ``ray-data``: the Ray Data docs pattern as a whole process: ``read_json`` → ``map_batches(actor,
  batch_size=32)`` with ``padding=True`` → ``write_parquet``, on all the shards.
- ``sentence-transformers``: ``SentenceTransformer.encode(batch_size=32)`` (the benchmark-only extra
  ``pip install -e ".[bench]"``), in this process.
- ``memory`` (only when asked for): the job on the rows and on ``--memory-times`` × the rows (copies with
  new ids, as more shards), for the ratio of their peak memory.

Prints a table and writes every figure as JSON (``--out``, default ``benchmarks/results.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "benchmarks" / "data" / "agnews_sst2"
JOB = ROOT / "benchmarks" / "embed_corpus.yaml"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARTS = ("limit", "limit-lanes", "limit-in-ray", "job", "pipeline", "ray-data", "sentence-transformers")
MAX_ROWS, MAX_TOKENS, PEER_BATCH, MAX_LENGTH = 64, 8192, 32, 256
#: Blocks staged within this many seconds of each other come from one actor call (one block per shard in it).
SAME_CALL_S = 0.1


# the rows ---------------------------------------------------------------------------------------------


def shard_files() -> list[Path]:
    return sorted(CORPUS.glob("*.jsonl"))


def texts_of(files: list[Path]) -> list[str]:
    texts = []
    for path in files:
        with open(path) as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


def input_dir(files: list[Path], rows: int | None, folder: Path, times: int = 1) -> int:
    """Shards for a job run: the rows of ``files`` (the first ``rows`` of them), ``times`` over with new ids."""
    folder.mkdir(parents=True)
    written = 0
    left = rows if rows is not None else float("inf")
    for path in files:
        lines = [line for line in path.read_text().splitlines() if line.strip()][: int(min(left, 1e12))]
        left -= len(lines)
        for copy in range(times):
            copied = lines if not copy else [
                json.dumps({**(record := json.loads(line)), "id": f"{copy}-{record['id']}"}) for line in lines
            ]
            if copied:
                (folder / f"{copy:02d}-{path.name}").write_text("\n".join(copied) + "\n")
                written += len(copied)
    return written


# parts in this process -----------------------------------------------------------------------------


def predictor_spec(args: argparse.Namespace):
    from pipelines.spec import load_spec

    return load_spec(JOB, [f"model.dtype={args.precision}", f"compute.threads_per_actor={args.threads}", *args.set])


def run_limit(texts: list[str], args: argparse.Namespace, lanes: bool = False) -> dict:
    """Forward-only: pre-tokenized, globally length-sorted micro-batches, the project's own model load; one forward
    at a time on every thread, or (``lanes``) one per thread at once, each on one thread."""
    import numpy as np
    import torch

    from pipelines.inference.batching import Ragged, padded_tokens, plan_microbatches
    from pipelines.inference.predictor import Predictor
    from pipelines.tasks.feature_extraction import embed

    predictor = Predictor(predictor_spec(args))
    model, tokenizer = predictor.loaded.model, predictor.loaded.tokenizer
    ids = Ragged.from_lists(tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])
    batches = plan_microbatches(ids.lengths, MAX_TOKENS, MAX_ROWS, 0.0)
    padded_batches = [ids.pad(index, int(tokenizer.pad_token_id)) for index in batches]
    tensors = [(torch.from_numpy(i), torch.from_numpy(m)) for i, m in padded_batches]

    def forward(pair: tuple) -> None:
        with torch.inference_mode():
            embed(model, {"input_ids": pair[0], "attention_mask": pair[1]}, "mean", True)

    if lanes:  # a thread per lane, each forward on one torch thread
        torch.set_num_threads(1)
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(forward, tensors[: args.threads]))  # warm: each lane's first forward
            start = time.perf_counter()
            list(pool.map(forward, tensors))
            seconds = time.perf_counter() - start
        torch.set_num_threads(args.threads)
    else:  # on the thread that loaded the model, as the job's actor does
        torch.set_num_threads(args.threads)  # a predictor whose calls share their lanes left torch at one thread
        forward(tensors[0])  # warm
        start = time.perf_counter()
        for pair in tensors:
            forward(pair)
        seconds = time.perf_counter() - start
    tokens, padded = int(np.sum(ids.lengths)), padded_tokens(ids.lengths, batches)
    return {"rows": len(texts), "seconds": seconds, "tokens": tokens, "padded": padded}


def run_limit_lanes(texts: list[str], args: argparse.Namespace) -> dict:
    """``limit`` in lanes: as many micro-batches at once as threads, one torch thread each."""
    return run_limit(texts, args, lanes=True)


class LimitActor:
    """``limit`` in a Ray worker: what Ray's own processes beside it, and its workers' priority, leave of it."""

    def run(self, texts: list[str], args: argparse.Namespace) -> dict:
        return run_limit(texts, args)


def run_limit_in_ray(texts: list[str], args: argparse.Namespace) -> dict:
    """``limit`` again, in an actor of a local Ray started as a job starts it (one CPU, like the job's actor)."""
    import ray

    from pipelines.cluster.connect import start_local

    start_local()
    try:
        actor = ray.remote(num_cpus=1)(LimitActor).remote()
        return ray.get(actor.run.remote(texts, args))
    finally:
        ray.shutdown()


def input_order_tokens(tokenizer, texts: list[str]) -> tuple[int, int]:
    lengths = [len(x) for x in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    batches = [lengths[i : i + PEER_BATCH] for i in range(0, len(lengths), PEER_BATCH)]
    return sum(lengths), sum(len(b) * max(b) for b in batches)


def run_pipeline(texts: list[str], args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from transformers import pipeline

    from pipelines.inference.aliases import minilm_dir
    from pipelines.spec import ModelSpec

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.precision]
    pipe = pipeline("feature-extraction", model=minilm_dir(ModelSpec(name="minilm")), device="cpu", dtype=dtype)
    start = time.perf_counter()
    for output in pipe(texts, batch_size=PEER_BATCH, truncation=True, max_length=MAX_LENGTH):
        vector = np.asarray(output[0]).mean(axis=0)  # mean-pool the per-token lists it returns
        vector / np.linalg.norm(vector)
    seconds = time.perf_counter() - start
    tokens, padded = input_order_tokens(pipe.tokenizer, texts)
    return {"rows": len(texts), "seconds": seconds, "tokens": tokens, "padded": padded}


def run_sentence_transformers(texts: list[str], args: argparse.Namespace) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from pipelines.inference.aliases import minilm_dir
    from pipelines.spec import ModelSpec

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(minilm_dir(ModelSpec(name="minilm")), device="cpu")
    model.max_seq_length = MAX_LENGTH
    if args.precision == "bfloat16":
        model = model.to(torch.bfloat16)
    model.encode(texts[:32], batch_size=PEER_BATCH)
    start = time.perf_counter()
    model.encode(texts, batch_size=PEER_BATCH, normalize_embeddings=True)
    seconds = time.perf_counter() - start
    tokens, _ = input_order_tokens(model.tokenizer, texts)
    return {"rows": len(texts), "seconds": seconds, "tokens": tokens, "padded": None}


# whole processes -------------------------------------------------------------------------------------


class PeakMemory:
    """The largest sum of resident memory over a process and all its descendants, sampled every 0.2 s.

    The tree is listed again once a second only: listing it walks every process on the machine, and at ten
    times a second that took 2.4% of a core here, beside a job whose pace is being measured."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psutil

        tree: list = []
        for tick in itertools.count():
            if self._stop.is_set():
                return
            if tick % 5 == 0:
                try:
                    tree = [self.process, *self.process.children(recursive=True)]
                except psutil.Error:
                    pass
            total = 0
            for proc in tree:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed_process(command: list[str], env: dict[str, str]) -> tuple[float, int, float, subprocess.CompletedProcess]:
    """Run a command; its (wall seconds, peak memory of its process tree, end time, result)."""
    start = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = PeakMemory(proc.pid)
    out, err = proc.communicate()
    end = time.time()
    peak = watcher.stop()
    done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return end - start, peak, end, done


def job_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


def run_job_once(folder: Path, rows: int | None, args: argparse.Namespace, times: int = 1) -> dict:
    inputs, output = folder / "in", folder / "out"
    count = input_dir(shard_files(), rows, inputs, times)
    command = [
        sys.executable, "-m", "pipelines", "run", str(JOB), "--set", f"input.paths=[{inputs}]",
        "--set", f"output.path={output}", "--set", f"model.dtype={args.precision}",
        "--set", f"compute.threads_per_actor={args.threads}", *sum((["--set", s] for s in args.set), []),
    ]
    seconds, peak, end, _ = timed_process(command, job_env())
    summary = json.loads((output / "_run.json").read_text())
    timeline = dict(summary.get("timeline") or {})
    timeline["exit"] = end
    return {"rows": count, "seconds": seconds, "peak_bytes": peak, "summary": summary, "timeline": timeline,
            "in_run_rows_per_s": in_run_speed(output)}


def in_run_speed(output: Path) -> float | None:
    """The actor's pace inside one run: the rows it staged after its first call, over the time from the end
    of that call to the end of its last (the commit records' blocks say when each call's rows were staged).
    Start-up, the first call and everything after the last call (the last commit, the summary, Ray's shutdown)
    are left out; what runs beside the actor meanwhile (reads, commits, the driver, Ray) is in."""
    staged = sorted(
        (block["at"], block["rows"] + block["errors"])
        for record in (output / "_commits").glob("*.json")
        for block in json.loads(record.read_text()).get("blocks", [])
    )
    if not staged:
        return None
    first = staged[0][0]
    later = [(at, rows) for at, rows in staged if at > first + SAME_CALL_S]
    return sum(rows for _, rows in later) / (later[-1][0] - first) if later else None


def run_job(texts: list[str], args: argparse.Namespace) -> dict:
    from start_up import PARTS  # beside this script, on the path as a script's folder is

    halves, wholes = [], []
    for _ in range(args.job_repeat):  # in turn; the fastest of each size counts
        with tempfile.TemporaryDirectory() as tmp:
            halves.append(run_job_once(Path(tmp) / "half", len(texts) // 2, args))
            wholes.append(run_job_once(Path(tmp) / "whole", len(texts), args))
    half = min(halves, key=lambda run: run["seconds"])
    whole = min(wholes, key=lambda run: run["seconds"])
    steady = (whole["rows"] - half["rows"]) / (whole["seconds"] - half["seconds"])
    pace = max((r["in_run_rows_per_s"] for r in wholes if r["in_run_rows_per_s"]), default=None)
    fixed = whole["seconds"] - whole["rows"] / (pace or steady)  # the whole run less its rows at the pace
    t = whole["timeline"]
    parts = {
        "imports_and_plan": t.get("connect_start", t["run_start"]) - t["process_start"],
        "ray_start": t.get("ray_ready", 0) - t.get("connect_start", 0),
        "actor_start_and_model_load": t.get("actor_ready", 0) - t.get("execution_start", 0),
        # the same in three, by the actor's own clock (benchmarks/start_up.py's parts; None where not reached): its
        # constructor reached, its imports made, its model loaded (this job sets its precision: no check between)
        "actor_start": PARTS["actor start"](t),
        "actor_imports": PARTS["actor imports"](t),
        "model_load": PARTS["model load"](t),
        "first_batch": t.get("first_block", 0) - t.get("actor_ready", 0),
        "first_batch_after_command": t.get("first_block", 0) - t["process_start"],
        "first_batch_staged_after_command": t.get("first_staged", 0) - t["process_start"],
        "drain": t.get("last_commit", 0) - t.get("first_block", 0),
        "summary_and_shutdown": t["exit"] - t.get("last_commit", t["exit"]),
    }
    summary = whole["summary"]
    return {
        "rows": whole["rows"],
        "seconds": whole["seconds"],
        "tokens": summary.get("tokens"),
        "padded": summary.get("padded"),
        "steady_rows_per_s": steady,
        # the actor's pace inside the whole input's runs: the fastest counts, as for the runs' times
        "in_run_rows_per_s": pace,
        "in_run_all": {"half": [r["in_run_rows_per_s"] for r in halves],
                       "whole": [r["in_run_rows_per_s"] for r in wholes]},
        "fixed_cost_s": fixed,
        "fixed_cost_two_sizes_s": whole["seconds"] - whole["rows"] / steady,
        "half": {"rows": half["rows"], "seconds": half["seconds"], "peak_bytes": half["peak_bytes"]},
        "runs_s": {"half": [r["seconds"] for r in halves], "whole": [r["seconds"] for r in wholes]},
        "peak_bytes": whole["peak_bytes"],
        "timeline_s": {name: None if value is None else round(value, 2) for name, value in parts.items()},
    }


def run_memory(texts: list[str], args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        once = run_job_once(Path(tmp) / "once", len(texts), args)
        many = run_job_once(Path(tmp) / "many", len(texts), args, times=args.memory_times)
    return {
        "rows": [once["rows"], many["rows"]],
        "peak_bytes": [once["peak_bytes"], many["peak_bytes"]],
        "ratio": many["peak_bytes"] / once["peak_bytes"],
    }


RAY_DATA_PATTERN = """
import sys, time, ray, torch
from transformers import AutoModel, AutoTokenizer
path, inputs, output, threads, dtype = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

class Embedder:
    def __init__(self):
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype)).eval()

    def __call__(self, batch):
        inputs = self.tokenizer(list(batch["text"]), padding=True, truncation=True, max_length=256,
                                return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state.float()
        mask = inputs["attention_mask"].unsqueeze(-1)
        vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return {"id": batch["id"], "embedding": vectors.numpy()}

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
ds = ray.data.read_json(inputs).map_batches(Embedder, compute=ray.data.ActorPoolStrategy(size=1),
                                            batch_size=32, num_cpus=1)
ds.write_parquet(output)
"""


def run_ray_data(texts: list[str], args: argparse.Namespace) -> dict:
    from pipelines.inference.aliases import minilm_dir
    from pipelines.spec import ModelSpec

    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        count = input_dir(shard_files(), len(texts), inputs)
        command = [sys.executable, "-c", RAY_DATA_PATTERN, minilm_dir(ModelSpec(name="minilm")), str(inputs),
                   str(Path(tmp) / "out"), str(args.threads), args.precision]
        seconds, peak, _, _ = timed_process(command, job_env())
    return {"rows": count, "seconds": seconds, "peak_bytes": peak, "tokens": None, "padded": None}


RUNNERS = {
    "limit": run_limit,
    "limit-lanes": run_limit_lanes,
    "limit-in-ray": run_limit_in_ray,
    "job": run_job,
    "pipeline": run_pipeline,
    "ray-data": run_ray_data,
    "sentence-transformers": run_sentence_transformers,
}


# report ---------------------------------------------------------------------------------------------


def table(results: dict) -> str:
    limit = results.get("limit", {}).get("rows_per_s")
    lines = ["| what | rows | s | rows/s | vs limit | padding efficiency | peak memory |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        if "rows_per_s" not in r:
            continue
        ratio = f"{r['rows_per_s'] / limit:.2f}×" if limit else ""
        peak = f"{r['peak_bytes'] / 2**20:,.0f} MiB" if r.get("peak_bytes") else ""
        eff = f"{r['padding_efficiency']:.3f}" if r.get("padding_efficiency") else ""
        speed = f"{r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:.1f}"
        lines.append(f"| {name} | {speed} | {ratio} | {eff} | {peak} |")
        if name == "job" and r.get("in_run_rows_per_s"):
            pace = r["in_run_rows_per_s"]
            ratio = f"{pace / limit:.2f}×" if limit else ""
            lines.append(f"| job, inside its run (same run) | | | {pace:.1f} | {ratio} | | |")
    return "\n".join(lines)


def finish(name: str, result: dict) -> dict:
    if name == "job":
        result["rows_per_s"] = result["steady_rows_per_s"]
    elif name == "memory":
        return result
    elif "rows_per_s" not in result:
        result["rows_per_s"] = result["rows"] / result["seconds"]
    if result.get("tokens") and result.get("padded"):
        result["padding_efficiency"] = result["tokens"] / result["padded"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="use the first N rows (default: all 8,472)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}, memory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--job-repeat", type=int, default=2,
                        help="the job part: runs of each input size, in turn; the fastest of each counts")
    parser.add_argument("--memory-times", type=int, default=10, help="the memory part: the corpus this many times")
    parser.add_argument(
        "--set", action="append", default=[],
        help="extra --set for the job runs and the limit's model (e.g. compute.cpu_matmul=torch)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    texts = texts_of(shard_files())[: args.rows] if args.rows else texts_of(shard_files())
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    results: dict = {}
    runners = {**RUNNERS, "memory": run_memory}
    for name in wanted:
        print(f"== {name} ({len(texts):,} rows)", file=sys.stderr, flush=True)
        try:
            results[name] = finish(name, runners[name](texts, args))
        except ImportError as exc:
            results[name] = {"skipped": f"not installed: {exc.name}"}
        print(json.dumps({name: results[name]}, default=str), file=sys.stderr, flush=True)
    meta = {"threads": args.threads, "precision": args.precision, "cpus": os.cpu_count(), "when": time.ctime()}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    print(table(results))
    if "rows" in results.get("memory", {}):
        memory = results["memory"]
        rows, peaks = memory["rows"], [b / 2**20 for b in memory["peak_bytes"]]
        print(f"memory: {rows[0]:,} rows {peaks[0]:,.0f} MiB, {rows[1]:,} rows {peaks[1]:,.0f} MiB: "
              f"{memory['ratio']:.2f}×")
    print(f"(written to {args.out})")
    shutil.rmtree(ROOT / "output" / "embed_corpus", ignore_errors=True)


if __name__ == "__main__":
    main()
