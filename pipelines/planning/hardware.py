"""Where actors could run: the GPU node types of ``cluster.yaml``, and this machine.

Light: YAML and the standard library. GPU memory is what ``nvidia-smi`` reports
as total for the accelerator types AWS offers in the project's ``cluster.yaml``
(and a few more); an unknown type has no memory figure and no memory fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.errors import PipelineError

MIB = 1 << 20
GIB = 1 << 30

#: Total memory nvidia-smi reports (MiB) per Ray accelerator type (A10G and L4 are sold as 24 GB, T4 as 16 GB).
GPU_MEMORY_MIB = {"A10G": 23028, "L4": 23034, "T4": 15360}

#: GPUs without bfloat16 (dtype auto then loads float16: the same two bytes per value).
NO_BF16 = {"T4", "V100"}


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry with a GPU."""

    name: str
    accelerator: str | None
    instance: str | None
    resources: dict[str, float] = field(default_factory=dict)
    max_workers: int | None = None

    @property
    def gpu_memory(self) -> int | None:
        mib = GPU_MEMORY_MIB.get(self.accelerator or "")
        return mib * MIB if mib else None


@dataclass(frozen=True)
class Cluster:
    """What a plan needs from a Ray cluster launcher config."""

    path: str
    node_types: list[NodeType]  # those with GPUs, in file order
    max_workers: int | None  # worker nodes of all types together


def read_cluster(path: str | Path) -> Cluster:
    """The GPU node types of a Ray cluster launcher config (``ray up`` YAML)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise PipelineError(f"--cluster {path}: file not found; give a Ray cluster launcher config") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"--cluster {path}: not valid YAML ({exc})") from None
    types = config.get("available_node_types") if isinstance(config, dict) else None
    if not isinstance(types, dict):
        raise PipelineError(f"--cluster {path}: no available_node_types; give a Ray cluster launcher config")
    found = []
    for name, entry in types.items():
        resources = {str(k): float(v) for k, v in ((entry or {}).get("resources") or {}).items()}
        if resources.get("GPU", 0) <= 0:
            continue
        accelerators = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
        node_config = entry.get("node_config") or {}
        found.append(
            NodeType(
                name=str(name),
                accelerator=accelerators[0] if accelerators else None,
                instance=node_config.get("InstanceType"),
                resources=resources,
                max_workers=entry.get("max_workers") if isinstance(entry.get("max_workers"), int) else None,
            )
        )
    limit = config.get("max_workers")
    return Cluster(str(path), found, int(limit) if isinstance(limit, int) else None)


def this_machine_memory() -> int:
    """Memory available for new processes here (MemAvailable on Linux, else the total)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def this_machine_cpus() -> int:
    """The CPUs this process may use (a container's share where the OS says so), as a local Ray counts them."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
