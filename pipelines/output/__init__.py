"""The output directory of a job: its layout, staging, per-shard commits, duplicates, records and summary.

:mod:`.layout` is the one module that knows the names under ``output.path`` and
how a file is written whole (write-then-rename). :mod:`.staging` runs in Ray
write tasks; :mod:`.commit` and :mod:`.duplicates` run on the driver;
:mod:`.records` holds the typed records written here; :mod:`.summary` builds and
renders ``_run.json``; :mod:`.report` builds ``_report.html`` (plotly); :mod:`.openai_batch` writes the
committed files of ``output.format: openai-batch``. Light: pyarrow, pydantic and plotly, no torch and no Ray.
May import :mod:`pipelines.io` and :mod:`pipelines.errors`.
"""
