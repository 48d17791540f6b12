"""Scheduled, incremental runs: only new or changed input is scored, into one partition per run.

Owns :mod:`.ticks` (cron ticks and missed-tick decisions, pure), :mod:`.ledger`
(``_runs.jsonl`` and its typed lines), :mod:`.planner` (what to run, decided in
memory from the ledger and the input), :mod:`.executor` (runs the plans: the
runner, ledger lines, moves to ``_superseded/``), :mod:`.loop` (the long-running
scheduler), :mod:`.lock` (one run at a time) and :mod:`.lineage` (which model
scored a run). May import :mod:`pipelines.spec`, :mod:`pipelines.io`,
:mod:`pipelines.output` and :mod:`pipelines.inference.aliases`; the runner is
passed in (or imported when a run starts). No torch.
"""
