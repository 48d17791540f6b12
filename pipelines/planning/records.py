"""The typed records of a plan: what ``pipelines plan`` prints, and ``--json`` writes as they are.

Each figure says how it was obtained: ``exact`` (counted or read from a footer),
``estimated`` (extrapolated from a sample or a formula, with its basis).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class PlanRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ShardCount(PlanRecord):
    """One input file: its rows and how they were counted."""

    uri: str
    format: str
    compressed: bool
    bytes: int
    rows: int
    #: footer: from the Parquet footer; counted: non-blank lines; estimated: lines in the first bytes, scaled
    #: to the file's size; unreadable: the file can't be read (the run quarantines it as one record), and
    #: ``rows`` are those a run tells of it: a Parquet footer's, or the lines before the damage (0: unknown)
    count: Literal["footer", "counted", "estimated", "unreadable"]
    error: str | None = None
    rows_exact: bool = True  # False for an unreadable file whose rows are a lower bound or unknown
    records: int | None = None  # rows the reader yields for it where not ``rows``: an unreadable file's one record

    def read_rows(self) -> int:
        return self.rows if self.records is None else self.records


class InputPlan(PlanRecord):
    shards: list[ShardCount]
    bytes: int
    rows: int  # rows the run reads (rows_in): an unreadable file's rows as the run tells them
    rows_exact: bool
    unreadable: int
    formats: dict[str, int]  # e.g. {"jsonl": 2, "jsonl.gz": 2, "parquet": 2}


class OutputPlan(PlanRecord):
    """What a run (no ``--overwrite``) would do with the output as it is now; a scheduled job: a tick due now."""

    path: str
    #: new: nothing committed; resume: some shards to do; up to date: a run writes nothing; refused: a run stops
    #: before any work (``note`` says why); scheduled: what a tick scores (new and changed files, unfinished runs)
    state: Literal["new", "resume", "up to date", "refused", "scheduled"]
    shards_done: int  # committed (scored by earlier runs, for a scheduled job)
    rows_done: int
    shards_todo: int  # what a run (a tick) would score now
    rows_todo: int
    note: str


class Distribution(PlanRecord):
    mean: float
    p50: int
    p90: int
    p99: int
    max: int


class TokenPlan(PlanRecord):
    """The sample tokenized through the task's own encode, cut into the micro-batches the predictor plans."""

    sample_rows: int
    sample_batches: int
    batch_size: int
    covers_input: bool  # the sample is the whole input: tokens and quarantined rows are exact
    max_length: int  # batching.max_length, capped by the tokenizer and the model's positions
    features: int  # model inputs: one per row, or several (a feature per label, per context window)
    features_per_row: float
    feature_tokens: Distribution | None  # the length of what the model sees
    tokens: int  # real tokens in the sample (what the job counts: every feature's tokens)
    padded: int  # tokens computed, padding included, under the batching settings
    padding_efficiency: float | None
    micro_batches: int
    truncated_rows: int | None  # rows cut at max_length (None: the task windows long texts instead)
    quarantined: dict[str, int] = Field(default_factory=dict)  # in the sample, by reason
    #: a sampled plan's unreadable files, counted apart from the sample (exact: their rows, as a run counts them)
    unreadable_quarantined: dict[str, int] = Field(default_factory=dict)
    #: an OpenAI Batch input under errors.duplicate_ids: keep: the custom_ids in the sample that a run answers twice
    repeated_ids: list[str] = Field(default_factory=list)
    tokens_total: int  # whole input: exact when covers_input, else scaled by rows
    rows_out: int  # rows the job would write (whole input; exact when covers_input)


class Fit(PlanRecord):
    """How many actors fit on one machine: by memory and by the Ray resources an actor asks for."""

    target: str  # "this machine" or a node type of cluster.yaml
    accelerator: str | None  # e.g. A10G; None: CPU
    instance: str | None = None
    device: Literal["cpu", "cuda"]
    dtype: str
    memory_bytes: int | None  # of the GPU (cuda) or the machine's available memory (cpu); None: unknown
    weights_bytes: int
    activations_bytes: int  # the largest micro-batch under max_tokens / max_rows, times the actor's lanes
    overhead_bytes: int  # per actor process (cpu) or CUDA context (cuda): an assumption, see `basis`
    per_actor_bytes: int
    by_memory: int | None
    by_resources: int | None  # what Ray would place on one node: CPUs, GPU fractions (None: not a Ray node)
    actors: int | None  # the smaller of the two
    max_nodes: int | None = None  # cluster.yaml's max_workers for this node type
    basis: str


class ModelPlan(PlanRecord):
    name: str
    resolved: str
    model_class: str
    parameters: int
    quantization: str
    quantized_parameters: int  # parameters of the Linear layers bitsandbytes replaces (0 without quantization)
    fits: list[Fit]


class Measurement(PlanRecord):
    """The sample run through one predictor here (no Ray)."""

    device: str
    threads: int
    load_s: float
    rows: int
    predict_s: float
    rows_per_s: float
    tokens_per_s: float
    padding_efficiency: float | None
    peak_rss_bytes: int  # of this process, model loaded and sample predicted
    precision: str | None = None  # for quantization auto: what was measured, and why
    #: a fresh interpreter's import of the predictor (torch, Transformers), as a run's actor imports it
    import_s: float | None = None


class Part(PlanRecord):
    """One part of an estimated wall time: measured here, or a known cost of a run (``basis`` says which)."""

    name: str
    seconds: float
    how: Literal["measured", "known"]
    in_run_wall: bool  # in what a run's ``_run.json`` calls ``wall_s`` (else only in the command's whole time)
    basis: str
    scaled_by: float | None = None  # a known part on this machine: the factor of its speed (measure.known_scale)


class Estimate(PlanRecord):
    """Wall time for the whole input with ``actors`` actors: an estimate, with its basis. ``wall_s``: from the
    command to its exit, the sum of ``parts`` (the rows, and the run's fixed cost); ``run_wall_s``: those parts
    a run's ``_run.json`` counts in its ``wall_s`` (from its execution's start to its last commit)."""

    where: str
    rows: int  # the rows a run would score now (the whole input where the output is new, or a run is refused)
    actors: int
    nodes: int | None  # nodes of the type needed (None: this machine)
    possible: bool
    wall_s: float | None
    basis: str
    run_wall_s: float | None = None
    parts: list[Part] = Field(default_factory=list)


class Plan(PlanRecord):
    job: str
    name: str | None
    spec_hash: str
    task: str
    input: InputPlan
    tokens: TokenPlan
    model: ModelPlan
    output: OutputPlan | None = None
    measurement: Measurement | None = None
    estimates: list[Estimate] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
