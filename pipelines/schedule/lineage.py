"""Which model scored a run: name, revision, the exact weights, quantization.

A local model directory (built-in aliases resolve to one) is identified by a
hash of its files' contents; a Hugging Face id by its revision and, when the
model is in the local Hugging Face cache, the commit that revision resolves to.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from pipelines.inference.aliases import resolve_name
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

IDENTITY = ("name", "revision", "commit", "content_hash", "quantization", "dtype")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def model_lineage(spec: ModelSpec) -> dict:
    """The model's identity as recorded in the ledger; two runs used the same model iff these match."""
    source = resolve_name(spec)
    record = {
        "name": spec.name,
        "revision": spec.revision,
        "quantization": spec.quantization,
        "dtype": spec.dtype,
    }
    if Path(source).is_dir():
        record["content_hash"] = directory_hash(Path(source))
    else:
        record["commit"] = cached_commit(source, spec.revision)
    return record


def same_model(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in IDENTITY)


def directory_hash(folder: Path) -> str:
    """sha256 over every file's relative path and content (hidden files and folders left out)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(str(relative).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision resolves to, if the model is in the local cache (no network)."""
    if revision and COMMIT.match(revision):
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception as exc:  # noqa: BLE001 - lineage is best effort for hub ids
        log.debug("no cached commit for %s: %s", repo_id, exc)
        return None
    if isinstance(found, str):
        match = re.search(r"/snapshots/([0-9a-f]{40})/", found)
        return match.group(1) if match else None
    return None
