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
