"""How long the main job takes to its first predicted batch, in parts: a first run (a new ``PIPELINES_CACHE``, so
that ``quantization: auto`` is decided by the run's actor) and a run that reads the decision kept, in turn.

    python benchmarks/start_up.py                       # the main job, five runs of each kind (about 4 min)
    python benchmarks/start_up.py --runs 3 --set model.fidelity.rows=128

Each run is ``pipelines run`` as a user runs it (a new process, a local Ray of its own); the parts come from its
``_run.json`` (``timeline`` and ``check_s``) and the command's exit, the actor's by the actor's own clock. The goal
of issue #11: the first batch staged within 15 s of the command on a 2-core machine. The actor's parts are right for
a job of one actor under ``quantization: auto`` (the main job): with more actors the first ready may be one that
waited for another's check; without auto there is no check, and a first run is a kept one. A part whose moments a
run did not reach is left out of it (None). Prints each run, then the median and range of each part, and writes
them as JSON (``--out``) after each run. Nothing else should run meanwhile.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def span(timeline: dict[str, float], end: str, start: str) -> float | None:
    """Seconds from the moment ``start`` to ``end`` of a run's timeline; None where it reached either not."""
    return timeline[end] - timeline[start] if end in timeline and start in timeline else None


def load_s(timeline: dict[str, float]) -> float | None:
    """From the actor's imports to its model loaded, less a first run's check, which comes between them."""
    both = span(timeline, "actor_ready", "actor_imported")
    return None if both is None else both - (timeline.get("check_s") or 0.0)


#: The parts, in order: name, and how a run's ``timeline`` (with ``check_s`` and the command's ``exit``) gives it.
PARTS: dict[str, Callable[[dict[str, float]], float | None]] = {
    "driver start": lambda t: span(t, "connect_start", "process_start"),
    "Ray start": lambda t: span(t, "ray_ready", "connect_start"),
    # the fidelity sample, the board, a gate's Ray task where model.fidelity is set, the dataset
    "before the execution": lambda t: span(t, "execution_start", "ray_ready"),
    "actor start": lambda t: span(t, "actor_start", "execution_start"),
    "actor imports": lambda t: span(t, "actor_imported", "actor_start"),
    "check": lambda t: t.get("check_s"),  # None: not decided in this run
    "model load": load_s,
    "first batch": lambda t: span(t, "first_staged", "actor_ready"),
    "first batch staged after the command": lambda t: span(t, "first_staged", "process_start"),
    "whole command": lambda t: span(t, "exit", "process_start"),
}
#: The most one run may take.
TIMEOUT_S = 600


def run_once(job: str, sets: list[str], cache: Path, output: Path) -> dict[str, Any]:
    """One ``pipelines run`` of ``job`` into ``output`` with ``cache`` as ``PIPELINES_CACHE``: its parts, and the
    precision it ran at."""
    from pipelines.output.records import precision_label

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_CACHE": str(cache)}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, as a user's first command starts
    command = [sys.executable, "-m", "pipelines", "run", job, "--set", f"output.path={output}",
               *sum((["--set", s] for s in sets), [])]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    end = time.time()
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((output / "_run.json").read_text())
    timeline = {**summary["timeline"], "exit": end}
    if summary.get("check_s") is not None:
        timeline["check_s"] = summary["check_s"]
    found: dict[str, Any] = {}
    for name, part in PARTS.items():
        seconds = part(timeline)
        found[name] = None if seconds is None else round(seconds, 2)
    chosen = summary.get("precision") or {"quantization": summary["quantization"], "dtype": summary["dtype"]}
    found["precision"] = precision_label(chosen)
    return found


def spread(values: list[float | None]) -> dict[str, float] | None:
    """The median and range of a part over the runs that reached it (None: none did)."""
    reached = [v for v in values if v is not None]
    if not reached:
        return None
    return {"median": statistics.median(reached), "min": min(reached), "max": max(reached)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "jobs" / "label_news.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (default: 5)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "start_up.json"))
    args = parser.parse_args()

    runs: dict[str, list[dict[str, Any]]] = {"first": [], "kept": []}
    summary: dict[str, dict[str, Any]] = {}

    def write() -> None:  # after each run, so that a run that fails leaves those before it written
        nonlocal summary
        summary = {kind: {name: spread([r[name] for r in found]) for name in PARTS} for kind, found in runs.items()}
        Path(args.out).write_text(json.dumps({"job": args.job, "sets": args.sets, "runs": runs, "summary": summary},
                                             indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        kept = Path(tmp) / "kept_cache"
        run_once(args.job, args.sets, kept, Path(tmp) / "warm")  # decides, and keeps it: not counted
        for i in range(args.runs):
            for kind in runs:  # in turn, so that a slower spell of the host weighs on both kinds
                cache = Path(tmp) / f"first_cache{i}" if kind == "first" else kept
                found = run_once(args.job, args.sets, cache, Path(tmp) / f"{kind}{i}")
                runs[kind].append(found)
                write()
                print(kind, i + 1, "  ".join(f"{name} {value}" for name, value in found.items()), flush=True)
    width = max(map(len, PARTS)) + 2
    print(f"\n{'part':<{width}}" + "".join(f"{kind + ' run':>22}" for kind in runs))
    for name in PARTS:
        cells = [f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if s else "-"
                 for s in (summary[kind][name] for kind in runs)]
        print(f"{name:<{width}}" + "".join(f"{cell:>22}" for cell in cells))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
