"""Small builders shared by tests: specs, input batches, shard files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
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


class Watched(pafs.LocalFileSystem):
    """A local disk that calls ``look()`` (set after construction) before and after each rename, copy or delete it
    makes: a reader at every step of a writer, at the exact moment, with no timing."""

    look: Any = None

    def _around(self, change: Any, *args: Any) -> Any:
        self.look()
        try:
            return change(*args)
        finally:
            self.look()

    def move(self, src: str, dest: str) -> None:
        self._around(super().move, src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._around(super().copy_file, src, dest)

    def delete_file(self, path: str) -> None:
        self._around(super().delete_file, path)

    def delete_dir(self, path: str) -> None:
        self._around(super().delete_dir, path)


def readers_see(folder: str | Path, glob: str = "*.parquet", column: str = "id") -> dict[str, list]:
    """``column``'s values as each reader the README names reads the output ``folder`` (sorted, duplicates kept):
    pyarrow (``pq.read_table``, ``pyarrow.dataset``) and pandas given the folder, Polars and DuckDB given the
    ``glob`` in it (hive partitions: ``run=*/*.parquet``). No file for the glob is nothing to read (Polars and
    DuckDB raise for it, pandas gives no columns)."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    folder = str(folder)
    hive = "=" in glob

    def values(table: pa.Table) -> list:
        return sorted(table.column(column).to_pylist()) if column in table.column_names else []

    if not list(Path(folder).glob(glob)):
        files: dict[str, Any] = {}
    else:
        files = {
            "polars": lambda: sorted(pl.read_parquet(f"{folder}/{glob}", hive_partitioning=hive)[column].to_list()),
            "duckdb": lambda: sorted(row[0] for row in duckdb.sql(
                f"select {column} from read_parquet('{folder}/{glob}', hive_partitioning={str(hive).lower()})"
            ).fetchall()),
        }
    readers = {
        "pyarrow.parquet": lambda: values(pq.read_table(folder)),
        "pyarrow.dataset": lambda: values(ds.dataset(folder, format="parquet",
                                                     partitioning="hive" if hive else None).to_table()),
        "pandas": lambda: values(pa.Table.from_pandas(pd.read_parquet(folder))),
        **files,
    }
    return {name: read() for name, read in readers.items()}


def staged_shard(output: Any, folder: Path, name: str, ids: list[str], bad: str | None = None, version: int = 0):
    """A shard ``name`` (its file in ``folder``) whose rows are staged under ``output`` (an OutputDir), as writer tasks
    stage them, and the report that commits it: ``ids`` with a column ``version``, and ``bad``, the id of one more
    row, quarantined."""
    from pipelines.io.shards import Shard
    from pipelines.output.staging import StagingReport

    path = folder / f"{name}.jsonl"
    path.write_text("{}\n")
    shard = Shard(str(path), str(path), "jsonl", False, 1, 1, f"{name}.jsonl")
    staging = Path(output.root) / "_staging" / shard.key
    staging.mkdir(parents=True, exist_ok=True)
    data, errors = staging / f"block{version}-data.parquet", staging / f"block{version}-errors.parquet"
    pq.write_table(pa.table({"id": ids, "version": [version] * len(ids), "_row": list(range(len(ids)))}), data)
    if bad is not None:
        pq.write_table(pa.table({"shard": [str(path)], "row": [len(ids)], "id": [bad], "reason": ["r"],
                                 "preview": ["p"]}), errors)
    report = StagingReport(shard=shard.key, shard_rows=len(ids) + (bad is not None), rows=len(ids),
                           errors=int(bad is not None), files=[str(data)],
                           error_files=[str(errors)] if bad is not None else [],
                           row_ranges=[(0, len(ids) + (bad is not None))])
    return shard, report


def joining(ray) -> list[str]:
    """``--address`` of the session's Ray (the ``ray_session`` fixture, passed as ``ray``): a CLI run given it joins
    that Ray instead of starting a local one of its own and shutting it down (about 10 s less a run here). Only for
    a run whose crash point and settings the driver alone reads (mid_commit, after_commit, before_summary, ...): the
    joined Ray's workers don't inherit the command's environment (a crash point in the actor, S3 keys)."""
    return ["--address", ray.get_runtime_context().gcs_address]
