"""Does a row's prediction depend on the rows batched beside it?

One predictor (no Ray) scores a job's rows in calls of several sizes, at the job's precision or another, and
counts, against the first size, the rows whose label changed and the largest change of a score or embedding value.
A resumed run batches its remaining shards otherwise than a straight run would, and so do other ``batching``
sizes: this is what they can change (README, Guarantees, "Reproducibility"). Not a timing: run it beside anything.

    .venv/bin/python benchmarks/batch_invariance.py --set model.quantization=none --set model.dtype=bfloat16
    .venv/bin/python benchmarks/batch_invariance.py --set model.quantization=none --set model.dtype=float32
    .venv/bin/python benchmarks/batch_invariance.py --set model.quantization=dynamic-int8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.inference.predictor import Predictor
from pipelines.io.reader import read_shard
from pipelines.io.shards import list_shards
from pipelines.runner import columns_of
from pipelines.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def read_rows(spec) -> pa.Table:
    """Every input row, read as the job's read tasks read them (each shard in order of text length), no Ray."""
    shards = list_shards(spec.input.paths)
    columns = columns_of(spec, shards)
    return pa.concat_tables([block for shard in shards for block in read_shard(shard, columns)])


def predict(predictor: Predictor, rows: pa.Table, size: int) -> pa.Table:
    return pa.concat_tables([predictor(rows.slice(start, size)) for start in range(0, rows.num_rows, size)])


def values(table: pa.Table, name: str) -> np.ndarray | None:
    """A float prediction column as one array (an embedding's or every class's scores flattened), or None."""
    if name not in table.column_names:
        return None
    column = table.column(name).combine_chunks()
    if pa.types.is_struct(column.type):
        return np.column_stack([column.field(i).to_numpy(zero_copy_only=False) for i in range(column.type.num_fields)])
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        return np.asarray(column.to_pylist(), dtype=np.float64)
    if pa.types.is_floating(column.type):
        return column.to_numpy(zero_copy_only=False)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "jobs" / "label_news.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 256, 37, 5], help="rows per call")
    args = parser.parse_args()
    spec = load_spec(args.spec, args.set)
    rows = read_rows(spec)
    predictor = Predictor(spec)
    prefix = spec.output.prediction_prefix
    first = predict(predictor, rows, args.sizes[0])
    report = {"spec": args.spec, "set": args.set, "rows": rows.num_rows, "sizes": {}}
    for size in args.sizes[1:]:
        other = predict(predictor, rows, size)
        found: dict[str, float | int] = {}
        if prefix + "label" in first.column_names:
            a, b = first.column(prefix + "label").to_pylist(), other.column(prefix + "label").to_pylist()
            found["labels_changed"] = sum(x != y for x, y in zip(a, b))
        for name in ("score", "scores", "embedding"):
            a_values, b_values = values(first, prefix + name), values(other, prefix + name)
            if a_values is not None and b_values is not None:
                found[f"max_{name}_change"] = float(np.nanmax(np.abs(a_values - b_values)))
        report["sizes"][size] = found
        print(f"calls of {size} against {args.sizes[0]}: {found}", file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
