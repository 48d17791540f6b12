"""Which model scored a run: name, revision, the exact weights, quantization.

A local model directory (built-in aliases resolve to one) is identified by a
hash of its files' contents; a Hugging Face id by its revision and, when the
model is in the local Hugging Face cache, the commit that revision resolves to.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.inference.aliases import resolve_name
from pipelines.inference.identity import cached_commit, directory_hash
from pipelines.spec import ModelSpec

IDENTITY = ("name", "revision", "commit", "content_hash", "quantization", "dtype")


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
