"""Where ``quantization: auto``'s check spends its time: each model load, untimed warm-up call and timed call over the
job's fidelity sample, per precision, in one process (no Ray), as a run's pool actor makes it before its first row.

    python benchmarks/auto_check.py                                   # the main job (jobs/label_news.yaml)
    python benchmarks/auto_check.py --job JOB.yaml --set model.fidelity.rows=128

The check itself is the run's (:func:`pipelines.fidelity.choose_here`, on the sample a run picks); this script only
times the parts it is made of, by wrapping the Predictor's construction (the load) and its calls. Nothing is kept in
the model cache. Prints one line per part and writes JSON (``--out``). Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "jobs" / "label_news.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--out", help="write the parts as JSON here")
    args = parser.parse_args()

    start = time.perf_counter()
    from pipelines.inference.heavy_imports import import_predictor

    import_predictor()  # the imports a pool actor pays before its check, as it makes them, timed apart
    from pipelines import fidelity
    from pipelines.inference import fidelity as measuring
    from pipelines.inference import predictor
    from pipelines.io.shards import list_shards
    from pipelines.spec import load_spec

    imports_s = time.perf_counter() - start
    spec = load_spec(args.job, args.overrides)
    picked = fidelity.sample(spec, list_shards(spec.input.paths, spec.input.format), fidelity._rows(spec))
    parts: list[dict[str, object]] = []
    built, called = predictor.Predictor.__init__, predictor.Predictor.__call__

    def build(self, spec, *rest, **options):  # a load: the model at this precision
        began = time.perf_counter()
        built(self, spec, *rest, **options)
        self.precision = fidelity.precision_label({"quantization": spec.model.quantization, "dtype": spec.model.dtype})
        parts.append({"precision": self.precision, "part": "load", "s": round(time.perf_counter() - began, 3)})

    def call(self, table, *rest, **options):  # a warm-up call (a few rows) or a timed one (the sample)
        began = time.perf_counter()
        out = called(self, table, *rest, **options)
        parts.append({"precision": self.precision, "part": f"call of {table.num_rows} rows",
                      "s": round(time.perf_counter() - began, 3)})
        return out

    predictor.Predictor.__init__, predictor.Predictor.__call__ = build, call
    measuring.Predictor = predictor.Predictor
    began = time.perf_counter()
    found = fidelity.choose_here(spec.model_dump(mode="json"), picked, fidelity._auto_bar(spec))
    check_s = time.perf_counter() - began
    accounted = sum(float(p["s"]) for p in parts)  # type: ignore[arg-type]
    result = {"job": args.job, "rows": picked.num_rows, "imports_s": round(imports_s, 3), "check_s": round(check_s, 3),
              "parts": parts, "other_s": round(check_s - accounted, 3), "decision": found["why"]}
    print(f"imports (torch, transformers, this project) {imports_s:.2f} s; the check over {picked.num_rows} rows "
          f"{check_s:.2f} s:")
    for p in parts:
        print(f"  {p['precision']:<15} {p['part']:<20} {p['s']:.2f} s")
    print(f"  comparisons and the rest      {check_s - accounted:.2f} s")
    print(found["why"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
