"""Batch inference with Hugging Face Transformers on Ray: shards in, actor pools of (quantized) models, Parquet out.

The package, by concern (each folder's ``__init__`` says what it owns and may import):

- :mod:`pipelines.spec` — the job spec (pydantic), the single source of settings; light.
- :mod:`pipelines.errors` — the one project exception type.
- :mod:`pipelines.runner` — the Ray Data job: plan, read → predict → stage, commit, summary.
- :mod:`pipelines.faults` — crash hooks the tests use to kill a process at a named point.
- ``cli/`` — the ``pipelines`` command, a thin layer over the functions below.
- ``io/`` — input shards: listing, reading (bad rows marked), the Ray datasource; light.
- ``output/`` — the output directory: its layout, staging, commits, duplicates, records, summary; light.
- ``inference/`` — what runs in an actor: the predictor, batching, model loading, GGUF conversion.
- ``tasks/`` — the batch tasks (options light; implementations with torch, no Ray).
- ``cluster/`` — Ray clusters: joining one, the job server client, token auth.
- ``schedule/`` — scheduled incremental runs: ticks, ledger, planner, executor, lock, lineage.

"Light" modules import no torch and no transformers: ``pipelines validate`` and the
Ray read and write tasks stay fast.
"""
