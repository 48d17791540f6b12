"""Where a job's CPU goes while it runs at its steady pace: the actor, the driver, Ray's own processes, idle.

    python benchmarks/cpu_share.py                                   # the benchmark job, float32
    python benchmarks/cpu_share.py --set model.dtype=bfloat16        # … at another precision

Runs ``pipelines run benchmarks/embed_corpus.yaml`` (a new output each time) as a user runs it, reads every new
process's CPU time and the machine's idle time from ``/proc`` twice a second, and reports each one's share of the
machine's cores over the run's steady state: from the first block back at the driver to the last commit, as the
run's ``_run.json`` timeline gives them (start-up and shut-down left out). A share is in % of one core, so the
shares of a 2-core machine add up to about 200%. Linux only; nothing else should run meanwhile (its share would show
as ``other``). Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "benchmarks" / "embed_corpus.yaml"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: str) -> tuple[str, int, float] | None:
    """A process's name, its parent and the CPU time it has used (user + system), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def idle_seconds() -> float:
    """The machine's idle time so far, summed over its cores."""
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[4]) / TICK


def part(pid: int, processes: dict[int, tuple[str, int, float]], driver: int) -> str:
    """The driver, the actor (the job's map worker), Ray's (every other process the driver started), or other."""
    if pid == driver:
        return "driver"
    if processes[pid][0].startswith("ray::MapWorker"):
        return "actor"
    ancestor = processes[pid][1]
    while ancestor in processes:
        if ancestor == driver:
            return "ray"
        ancestor = processes[ancestor][1]
    return "ray" if ancestor == driver else "other"


Samples = list[tuple[float, float, dict[int, tuple[str, int, float]]]]


def sample(command: list[str], every: float) -> tuple[Samples, int]:
    """Run the command; every ``every`` s, the time, the idle seconds and each process's CPU seconds."""
    newer_than = os.getpid()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while process.poll() is None:
        now = time.time()
        seen = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) > newer_than and (found := cpu_seconds(pid)):
                seen[int(pid)] = found
        samples.append((now, idle_seconds(), seen))
        time.sleep(every)
    if process.returncode:
        sys.exit(f"{' '.join(command)} exited {process.returncode}")
    return samples, process.pid


def shares(samples: Samples, driver: int, start: float, end: float) -> dict[str, float]:
    """Each part's CPU over [start, end] in % of one core."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        sys.exit("the run's steady state was shorter than two samples: give it more rows")
    (t0, idle0, first), (t1, idle1, last) = inside[0], inside[-1]
    used: dict[str, float] = defaultdict(float)
    for pid, (_, _, seconds) in last.items():
        used[part(pid, last, driver)] += seconds - (first[pid][2] if pid in first else 0.0)
    used["idle"] = idle1 - idle0
    return {key: round(value / (t1 - t0) * 100, 1) for key, value in sorted(used.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="a spec override, as pipelines run takes it")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pipelines", "run", str(JOB), "--set", f"output.path={scratch}/out"]
        for override in args.set:
            command += ["--set", override]
        samples, driver = sample(command, args.every)
        summary = json.loads(Path(scratch, "out", "_run.json").read_text())
    timeline = summary["timeline"]
    result = {
        "set": args.set,
        "cores": os.cpu_count(),
        "rows_per_s": summary["rows_per_s"],
        "steady_s": round(timeline["last_commit"] - timeline["first_block"], 1),
        "share_of_one_core_pct": shares(samples, driver, timeline["first_block"], timeline["last_commit"]),
    }
    print(f"steady state {result['steady_s']} s of a {summary['wall_s']:.1f} s run ({result['cores']} cores):")
    for key, value in result["share_of_one_core_pct"].items():
        print(f"  {key:7} {value:6.1f}% of a core")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
