"""Shared fixtures: one local Ray per test session (per worker under pytest-xdist), tiny models built once per
session, offline Hugging Face."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# What each test module cost in a clean-clone `.ci/run` (2026-12-01 at e188dd6, `--durations=0`, its tests'
# set-up, call and tear-down summed; two workers on 2 cores). `make test` hands whole modules to its workers
# (`--dist loadfile`) in the order below, the costliest first: each module's fixtures are made once, and the
# modules started last are short, so neither worker waits long for the other at the end (with `--dist worksteal`
# one waited 41 s). The figures only order the modules; one not listed counts as MODULE_SECONDS_UNLISTED.
# test_guarantees, test_faults and test_s3 got faster (runs that join the session's Ray) and were measured again
# on 2026-12-04 at c38daec, each module alone (`pytest -p no:randomly tests/FILE --durations=0`, summed) on the
# shared 2-core host, then put on the CI's scale by the ratio of their slowest tests' CI figures (.ci/run at 8f5404b
# and b5f23f2) to the same tests' here: guarantees 329 s here (×1.0), faults 366 s (×0.67), s3 105 s (×2.0);
# test_signals is those CI runs' own figures; test_readme_specs (under a second) was unlisted, so counted as 60.
# Being off by half for any module moves the end of a run by seconds only: the workers take the modules one at
# a time as they get free, so what the order has to do is start the big ones early (a simulation of xdist's
# hand-out with these figures as the truth: the same finish, within 1 s, with the old ones or these).
MODULE_SECONDS = {
    "test_guarantees.py": 329, "test_faults.py": 246, "test_schedule.py": 216, "test_s3.py": 209,
    "test_smollm2.py": 152, "test_plan.py": 150, "test_cluster.py": 137, "test_report.py": 125, "test_signals.py": 122,
    "test_performance_paths.py": 129, "test_fidelity.py": 117, "test_runner.py": 112, "test_errors_cli.py": 91,
    "test_openai_batch.py": 81, "test_parity.py": 78, "test_cli.py": 64, "test_jobs_client.py": 63,
    "test_tasks_ray.py": 41, "test_terminal.py": 34, "test_jobs_report.py": 19, "test_kill_points.py": 15,
    "test_kill_points_runs.py": 13, "test_jobs_transport.py": 12,
    "test_tasks_generation.py": 11, "test_light_modules.py": 6, "test_tasks_llm_label.py": 4,
    "test_submit_upload.py": 3, "test_tiny_models.py": 2, "test_tasks_extractive.py": 2, "test_predictor.py": 2,
    "test_jobs_submit_retry.py": 2, "test_cluster_yaml.py": 1, "test_faults_predictor.py": 1, "test_kv_cache.py": 1,
    "test_readme_specs.py": 1, "test_batching.py": 0, "test_spec.py": 0, "test_readme_addresses.py": 0,
    "test_layout.py": 0,
}
MODULE_SECONDS_UNLISTED = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The costliest modules first, each module's tests together and in their own order (a stable sort)."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, MODULE_SECONDS_UNLISTED))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session, sized like this 2-CPU machine."""
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2, logging_level="ERROR"
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A function kind → directory of a tiny model saved with save_pretrained (built once per kind)."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in built:
            built[kind] = build_tiny_model(kind, root / kind)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def s3_server():
    """One local S3 API (moto on 127.0.0.1) for the session, with buckets pipelines-in and pipelines-out."""
    from s3_server import start

    server = start(["pipelines-in", "pipelines-out"])
    yield server
    server.stop()
