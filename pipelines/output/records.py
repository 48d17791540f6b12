"""The typed records of an output directory: whose results these are, what each commit holds, the run summary.

Each is a pydantic model, written as JSON (``_job.json``, ``_commits/<shard>.json``,
``_run.json``) and read back with validation, so a record crosses module and
process boundaries with its fields and types, never as a loose dict.
"""

from __future__ import annotations

import hashlib
import re
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


#: Kinds of reason that earlier versions recorded (in commit records and ``_run.json``), as they are counted now: an
#: OpenAI Batch prompt over batching.max_length with its length in its kind, one over the model's context as just
#: ``prompt``, an embedding input with its place (see :func:`pipelines.output.staging.reason_kind`).
_EARLIER_KINDS = (
    (re.compile(r"prompt is \d+ tokens, over batching\.max_length"), "prompt longer than batching.max_length"),
    (re.compile(r"prompt"), "prompt and max_tokens exceed the model's context"),
    (re.compile(r"input\[\d+\](?P<rest>.*)"), "input[…]{rest}"),
)


def current_kinds(reasons: Any) -> Any:
    """Quarantined rows by kind of reason, an earlier version's kinds counted as today's (an output begun before an
    upgrade and resumed after it: one kind per prompt length would be listed beside today's one kind); anything
    other than a mapping as it is, for validation to judge."""
    if not isinstance(reasons, dict):
        return reasons
    found: dict[Any, Any] = {}
    for kind, n in reasons.items():
        for pattern, now in _EARLIER_KINDS:
            match = pattern.fullmatch(kind) if isinstance(kind, str) else None
            if match:
                kind = now.format(**match.groupdict())
                break
        found[kind] = found[kind] + n if kind in found and isinstance(n, int) else n
    return found


class ModelRef(Record):
    name: str
    revision: str | None = None


def precision_label(precision: dict[str, Any]) -> str:
    """What ``quantization: auto`` ran at, in one word: the quantization, or the dtype where there is none."""
    return precision["quantization"] if precision["quantization"] != "none" else precision["dtype"]


def prefixed_hash(spec_hash: str, prediction_prefix: str) -> str:
    """A spec hash that also covers ``output.prediction_prefix`` (the output's column names): the hash itself where
    there is none, so that outputs without one keep their hash, and one computed from it where there is one."""
    if not prediction_prefix:
        return spec_hash
    return hashlib.sha256(f"{spec_hash}\nprediction_prefix={prediction_prefix}".encode()).hexdigest()[:16]


#: 2: the spec hash covers output.prediction_prefix (:func:`prefixed_hash`); 1 (records without the field): not.
HASH_VERSION = 2


class JobRecord(Record):
    """``_job.json``: what identifies the results in an output directory."""

    name: str | None = None
    spec_hash: str
    hash_version: int = HASH_VERSION
    model: ModelRef
    quantization: str
    device: str
    task: str
    spec: dict[str, Any] = Field(default_factory=dict)
    #: The Arrow types of the passed-through columns (serialized schema), fixed by the first run.
    column_types: str | None = None
    #: What ``quantization: auto`` chose for this output on its first run: ``{quantization, dtype}``, and the figures
    #: of the check that chose it (``measure``, ``agreement``, ``rows``, ``bar``), which a later run's bar must meet.
    precision: dict[str, Any] | None = None
    #: The model files that scored the committed shards (:func:`pipelines.inference.identity.model_files`): a local
    #: directory's ``files`` key and ``content`` hash, or a hub id's cached ``commit``; None where not known here.
    model_files: dict[str, str] | None = None

    @classmethod
    def parse(cls, value: Any) -> Any:
        """As :meth:`Record.parse`; a record written before the hash covered the prediction prefix gets its hash as
        it is now, from the prefix its spec recorded (so that such an output resumes under the same spec, and is
        refused under another prefix)."""
        if isinstance(value, dict) and "hash_version" not in value and isinstance(value.get("spec_hash"), str):
            spec = value.get("spec")
            output = spec.get("output") if isinstance(spec, dict) else None
            prefix = output.get("prediction_prefix") if isinstance(output, dict) else None
            upgraded = prefixed_hash(value["spec_hash"], prefix or "")
            value = {**value, "spec_hash": upgraded, "hash_version": HASH_VERSION}
        return super().parse(value)


class ShardInput(Record):
    """An input shard's fingerprint as a commit records it: where it was and what it looked like.

    ``name`` (its path under its input location) identifies it; ``digest`` is a hash of its bytes
    as read, which settles whether a file whose modification time changed still holds the same data.
    """

    uri: str
    size: int
    mtime_ns: int | None = None
    name: str = ""
    digest: str | None = None


class Unreadable(Record):
    """An input file that could not be read: why, and how many rows it held where that can be told."""

    uri: str
    reason: str
    rows: int | None = None
    exact: bool = False

    def rows_told(self) -> str:
        """Its rows in words: ``1,000 rows``, ``68 rows before the damage`` (a lower bound), or ``rows unknown``."""
        if self.rows is None:
            return "rows unknown"
        return f"{self.rows:,} rows" + ("" if self.exact else " before the damage")


class StagedBlock(Record):
    """A block of a shard as its writer staged it: when (epoch seconds), rows, quarantined rows, tokens."""

    at: float
    rows: int
    errors: int
    tokens: int = 0
    padded: int = 0


#: How this code reads a file's rows and scores them, as a date: set anew by a change that reads a file's rows
#: otherwise or gives a row another output, so that the shards an earlier version committed can be told (each commit
#: records it, ``CommitRecord.scored_by``; a resume warns of shards committed under another). 2026-12-06: the first
#: recorded (the reader fixes of 2026-12-05 and the QA/NER overlap of 2026-12-05 are before it). A second change on
#: one day adds ``.2``: 2026-12-06.2, kept bytes and durations of other writers' types (their repr's text before),
#: a float id that is NaN null (the id ``nan`` before), token-classification's aggregation none over windows keeping
#: each token once (tokens that shared a span were taken for one).
SCORING = "2026-12-06.2"


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
    #: One entry per staged block of this shard, in the order they came: what the run report plots over time.
    blocks: list[StagedBlock] = Field(default_factory=list)
    generated: int = 0
    #: Rows of the data file whose text or prompt was cut to fit ``max_length`` (None: committed by a version before
    #: this was counted).
    cut: int | None = None
    confusion: Confusion = Field(default_factory=dict)
    reasons: dict[str, int] = Field(default_factory=dict)
    files: list[str] = Field(default_factory=list)
    error_files: list[str] = Field(default_factory=list)
    committed_at: float = 0.0
    #: Set when the shard's file could not be read and was quarantined whole (errors.unreadable_files: quarantine).
    unreadable: Unreadable | None = None
    #: :data:`SCORING` of the code that committed it (None: a version before it was recorded).
    scored_by: str | None = None
    #: The precision its rows were scored at, in one word (:func:`precision_label`: ``bfloat16``, ``per-token-int8``,
    #: ``float32``…), as the actors that predicted them loaded their model; None: no actor predicted any (an empty or
    #: unreadable shard), or committed by a version before it was recorded.
    precision: str | None = None

    _current_kinds = field_validator("reasons", mode="before")(current_kinds)

    @field_validator("shard")
    @classmethod
    def _plain_key(cls, shard: str) -> str:
        if not _plain_name(shard):
            raise ValueError(f"not a shard key: {shard!r}")
        return shard

    @field_validator("files")
    @classmethod
    def _part_files(cls, files: list[str]) -> list[str]:
        """Only a part file's name, as this project writes it: a record is the list of files a run deletes or moves,
        each joined to the output path, so ``../x``, ``.``, an absolute path, a user's folder or one of the ``_``
        entries would reach beyond the shard's own files (a broken commit at any run's start deleted them)."""
        for name in files:
            if not _part_name(name):
                raise ValueError(f"not a part file of this output: {name!r}")
        return files

    @field_validator("error_files")
    @classmethod
    def _error_files(cls, files: list[str]) -> list[str]:
        for name in files:
            folder, _, base = name.partition("/")
            if folder != "_errors" or not _part_name(base):
                raise ValueError(f"not a quarantine file of this output: {name!r}")
        return files


def _plain_name(name: str) -> bool:
    """A name of one entry in a folder: not empty, no separator, not ``.`` or ``..``, nor hidden."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _part_name(name: str) -> bool:
    """A committed part file's name (``part-<shard>-<n>.parquet``, or ``.jsonl``): see ``layout.part_name``."""
    return _plain_name(name) and name.startswith("part-") and name.endswith((".parquet", ".jsonl"))


class Agreement(Record):
    accuracy: float
    rows: int
    confusion: Confusion
    #: The labels the model can give (its classes; a zero-shot or llm-label job's candidate labels), as the run's
    #: actors held them: what the truth values are checked against. None where the run did not learn them (a
    #: ``_run.json`` written before this field, a run that scored no shard).
    labels: list[str] | None = None


class Fidelity(Record):
    """How far a quantized model's predictions are from the same model's unquantized ones, on a sample.

    ``agreement`` is the task's headline measure (label agreement, mean cosine, exact match, span
    agreement, entity F1 or top-1 agreement: ``measure`` names it); ``metrics`` holds every measure
    of the task, each in [0, 1]. A row the quantized model could not predict (but the unquantized one
    could) counts as a disagreement; rows the unquantized one could not predict are left out. A prediction
    holding a NaN or infinite number is one a model could not make.
    """

    task: str
    quantization: str
    reference: str = "float32"
    rows: int
    measure: str
    agreement: float
    metrics: dict[str, float] = Field(default_factory=dict)
    failed_quantized: int = 0
    failed_reference: int = 0
    min_agreement: float | None = None
    passed: bool | None = None
    examples: list[dict[str, Any]] = Field(default_factory=list)
    wall_s: float = 0.0
    predict_s: float | None = None  # the quantized model's time on the sample, its load left out
    reference_predict_s: float | None = None  # the same for float32
    #: When the check these figures are of was made (epoch seconds), where they were read from this machine's kept
    #: decisions (``quantization: auto``) instead of measured now; None: measured now.
    kept_at: float | None = None


def cut(value: float, places: int = 4, percent: bool = False) -> str:
    """A measure as shown: cut to ``places`` decimals, not rounded, so that a figure under a bar never shows as the
    bar (0.98996 is ``0.9899``, not ``0.9900``; as a percentage ``98.99%``)."""
    exact = Decimal(repr(float(value))) * (100 if percent else 1)
    if not exact.is_finite():
        return str(value)
    return f"{exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_FLOOR)}{'%' if percent else ''}"


class RunSummary(Record):
    """``_run.json``: totals over every committed shard, speed over the shards this run did."""

    job: str | None = None
    status: str
    #: Why the run failed (``status: failed``): the error it ended with, as the terminal said it.
    failure: str | None = None
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
    tokens: int = 0  # real tokens over every committed shard (each row's features summed)
    padded: int = 0  # tokens computed for them, padding included
    rows_this_run: int = 0
    #: Rows written whose text or prompt was cut to fit ``max_length`` (``errors.too_long: truncate``), over every
    #: committed shard that counted them; ``cut_uncounted_shards``: committed shards that did not (earlier versions).
    rows_cut: int = 0
    cut_uncounted_shards: int = 0
    #: Seconds ``quantization: auto``'s check took in this run's pool (its first actor measured the candidates before
    #: it scored a row), within ``wall_s``; None where the run made none (the precision kept, or measured elsewhere).
    check_s: float | None = None
    #: When this run's work started (epoch seconds): the run report's time axis starts here.
    started_at: float | None = None
    #: What ``quantization: auto`` chose (``{quantization, dtype}``, with its check's figures), when the spec says auto.
    precision: dict[str, Any] | None = None
    #: The spec's ``model.dtype``: the model line names a reduced one (bfloat16, float16) a model ran in unquantized.
    dtype: str | None = None
    #: When this run reached each step (epoch seconds): process start, Ray ready, the first actor's start, imports and
    #: model ready (its own clock), first and last block, ...
    timeline: dict[str, float] = Field(default_factory=dict)
    #: The quantization fidelity check of model.fidelity, run before the job's work.
    fidelity: Fidelity | None = None
    wall_s: float = 0.0
    rows_per_s: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    generated_tokens_per_s: float | None = None
    padding_efficiency: float | None = None
    agreement: Agreement | None = None
    #: Input files that could not be read: quarantined whole, or (the default) failing the job.
    unreadable_files: list[Unreadable] = Field(default_factory=list)
    #: How many of those files hold a number of rows nobody can tell (they count as no rows above).
    files_with_unknown_rows: int = 0
    #: The run report this run wrote (as the output path is named), None when it could not be built.
    #: Not in ``_run.json``: the page is written after it, from it.
    report: str | None = Field(default=None, exclude=True)

    _current_kinds = field_validator("error_reasons", mode="before")(current_kinds)


def merge_counts(into: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Add ``more``'s counts into ``into`` (and return it)."""
    for key, n in more.items():
        into[key] = into.get(key, 0) + n
    return into


def merge_confusion(into: Confusion, more: Confusion) -> Confusion:
    for truth, row in more.items():
        merge_counts(into.setdefault(truth, {}), row)
    return into
