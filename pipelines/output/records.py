"""The typed records of an output directory: whose results these are, what each commit holds, the run summary.

Each is a pydantic model, written as JSON (``_job.json``, ``_commits/<shard>.json``,
``_run.json``) and read back with validation, so a record crosses module and
process boundaries with its fields and types, never as a loose dict.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Confusion = dict[str, dict[str, int]]  # {ground truth: {predicted: rows}}


class Record(BaseModel):
    """Base of the records: extra keys from newer versions are kept, not refused."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def parse(cls, value: Any) -> Any:
        """The record from a JSON value, or None when the value is not one (missing, foreign, half-written)."""
        if not isinstance(value, dict):
            return None
        try:
            return cls.model_validate(value)
        except ValidationError:
            return None


class ModelRef(Record):
    name: str
    revision: str | None = None


class JobRecord(Record):
    """``_job.json``: what identifies the results in an output directory."""

    name: str | None = None
    spec_hash: str
    model: ModelRef
    quantization: str
    device: str
    task: str
    spec: dict[str, Any] = Field(default_factory=dict)


class ShardInput(Record):
    """An input shard's fingerprint as a commit records it: where it was and what it looked like."""

    uri: str
    size: int
    mtime_ns: int | None = None


class CommitRecord(Record):
    """``_commits/<shard>.json``: a shard is committed exactly when this record exists."""

    shard: str
    input: ShardInput
    spec_hash: str
    model: ModelRef
    rows_in: int
    rows: int
    errors: int
    tokens: int = 0
    padded: int = 0
    generated: int = 0
    confusion: Confusion = Field(default_factory=dict)
    reasons: dict[str, int] = Field(default_factory=dict)
    files: list[str] = Field(default_factory=list)
    error_files: list[str] = Field(default_factory=list)
    committed_at: float = 0.0


class Agreement(Record):
    accuracy: float
    rows: int
    confusion: Confusion


class RunSummary(Record):
    """``_run.json``: totals over every committed shard, speed over the shards this run did."""

    job: str | None = None
    status: str
    spec_hash: str
    model: ModelRef
    quantization: str
    device: str
    task: str
    shards: int
    shards_this_run: int
    rows_in: int
    rows_out: int
    errors: int
    error_rate: float
    error_reasons: dict[str, int] = Field(default_factory=dict)
    rows_this_run: int = 0
    wall_s: float = 0.0
    rows_per_s: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    generated_tokens_per_s: float | None = None
    padding_efficiency: float | None = None
    agreement: Agreement | None = None


def merge_counts(into: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Add ``more``'s counts into ``into`` (and return it)."""
    for key, n in more.items():
        into[key] = into.get(key, 0) + n
    return into


def merge_confusion(into: Confusion, more: Confusion) -> Confusion:
    for truth, row in more.items():
        merge_counts(into.setdefault(truth, {}), row)
    return into
