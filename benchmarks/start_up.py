"""How long the main job takes to its first predicted batch, in parts: a first run (a new ``PIPELINES_CACHE``, so
that ``quantization: auto`` is decided by the run's actor) and a run that reads the decision kept, in turn.

    python benchmarks/start_up.py                       # the main job, five runs of each kind (about 3 min)
    python benchmarks/start_up.py --runs 3 --job JOB.yaml --set model.fidelity.rows=128

Each run is ``pipelines run`` as a user runs it (a new process, a local Ray of its own); the parts come from its
``_run.json`` (``timeline`` and ``check_s``) and the command's exit, the actor's by the actor's own clock. The goal
of issue #11: the first batch staged within 15 s of the command on a 2-core machine. Prints each run, then the
median and range of each part, and writes them as JSON (``--out``). Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The parts, in order: name, and how they are got from a run's timeline (with ``check_s`` and the command's
#: ``exit``), in seconds.
PARTS = {
    "driver": lambda t: t["connect_start"] - t["process_start"] + t["execution_start"] - t["ray_ready"],
    "Ray start": lambda t: t["ray_ready"] - t["connect_start"],
    "actor start": lambda t: t["actor_start"] - t["execution_start"],
    "actor imports": lambda t: t["actor_imported"] - t["actor_start"],
    "check": lambda t: t["check_s"],
    "model load": lambda t: t["actor_ready"] - t["actor_imported"] - t["check_s"],
    "first batch staged": lambda t: t["first_staged"] - t["process_start"],
    "whole command": lambda t: t["exit"] - t["process_start"],
}


def run_once(job: str, sets: list[str], cache: Path, output: Path) -> dict[str, Any]:
    """One ``pipelines run`` of ``job`` into ``output`` with ``cache`` as ``PIPELINES_CACHE``: its parts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_CACHE": str(cache)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "pipelines", "run", job, "--set", f"output.path={output}",
               *sum((["--set", s] for s in sets), [])]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    end = time.time()
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((output / "_run.json").read_text())
    timeline = {**summary["timeline"], "check_s": summary.get("check_s") or 0.0, "exit": end}
    found: dict[str, Any] = {name: round(part(timeline), 2) for name, part in PARTS.items()}
    chosen = summary.get("precision") or {}
    found["precision"] = chosen.get("quantization") if chosen.get("quantization") not in (None, "none") \
        else chosen.get("dtype")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "jobs" / "label_news.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (default: 5)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "start_up.json"))
    args = parser.parse_args()

    runs: dict[str, list[dict[str, Any]]] = {"first": [], "kept": []}
    with tempfile.TemporaryDirectory() as tmp:
        kept = Path(tmp) / "kept_cache"
        run_once(args.job, args.sets, kept, Path(tmp) / "warm")  # decides, and keeps it: not counted
        for i in range(args.runs):
            for kind in runs:  # in turn, so that a slower spell of the host weighs on both kinds
                cache = Path(tmp) / f"first_cache{i}" if kind == "first" else kept
                found = run_once(args.job, args.sets, cache, Path(tmp) / f"{kind}{i}")
                runs[kind].append(found)
                print(kind, i + 1, "  ".join(f"{name} {value}" for name, value in found.items()), flush=True)
    summary = {kind: {name: {"median": statistics.median(r[name] for r in found),
                             "min": min(r[name] for r in found), "max": max(r[name] for r in found)}
                      for name in PARTS} for kind, found in runs.items()}
    print(f"\n{'part':<20}" + "".join(f"{kind + ' run':>22}" for kind in runs))
    for name in PARTS:
        cells = [f"{s[name]['median']:.2f} ({s[name]['min']:.2f}-{s[name]['max']:.2f})" for s in summary.values()]
        print(f"{name:<20}" + "".join(f"{cell:>22}" for cell in cells))
    Path(args.out).write_text(json.dumps({"job": args.job, "sets": args.sets, "runs": runs, "summary": summary},
                                         indent=1) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
