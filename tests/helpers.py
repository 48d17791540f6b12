"""Small builders shared by tests: specs, input batches, shard files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.spec import JobSpec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]

SENTENCES = [
    "The team won the championship game last night.",
    "Stocks fell sharply as oil prices rose.",
    "A new telescope found water on a distant planet.",
    "great",
    "The prime minister met the president in Paris to talk about the war and the elections.",
    "This film was a terrible waste of time.",
    "Google released new software for phones.",
    "ok",
]


def make_spec(model: str, task: dict, out: str | Path = "unused", **sections) -> JobSpec:
    raw = {
        "input": {"paths": ["unused"]},
        "model": {"name": model},
        "task": task,
        "output": {"path": str(out)},
        "compute": {"threads_per_actor": 2, "cpus_per_actor": 0.5},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return spec_from_dict(raw)


def torch_free_stages(predictor, batch: pa.Table) -> pa.Table:
    """Run ``batch`` through the predictor's three stages as the pool's actor does; fail if ``prepare`` or ``finish``
    (run on Ray's calling threads, beside the model's) calls torch: a torch op there could start a second OpenMP
    team of threads on the actor's cores."""
    from torch.overrides import TorchFunctionMode

    class Recorded(TorchFunctionMode):  # torch's function modes are per thread: this one sees only its own
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Recorded() as before:
        pending = predictor.prepare(batch)
    pending = predictor.infer(pending)
    with Recorded() as after:
        table = predictor.finish(pending)
    assert (before.calls, after.calls) == ([], []), "torch called outside the model's thread"
    return table


def batch_of(texts: list, ids: list | None = None) -> pa.Table:
    ids = ids or [f"r{i}" for i in range(len(texts))]
    return pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def unchecked_strings(values: list[bytes]) -> pa.Array:
    """A text column holding bytes that may be no UTF-8, as Parquet writers that don't check them leave it."""
    binary = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(binary), binary.buffers())


def read_output(path: str | Path) -> pa.Table:
    """The output the way a user reads it: plain pyarrow over the directory, no Ray."""
    return pq.read_table(str(path))
