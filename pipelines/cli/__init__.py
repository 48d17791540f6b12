"""The ``pipelines`` command: one module per command group, each a thin layer over library functions.

Owns argument parsing, printing and exit statuses (a PipelineError is one line
on stderr and exit status 2). May import everything in the package, but only
inside the command that needs it, so ``pipelines validate`` loads no torch:
:mod:`.main` (run, validate, and the parser), :mod:`.schedule` (schedule, runs),
:mod:`.cluster` (submit, status, logs, stop), :mod:`.quality` (fidelity, report).
"""

from pipelines.cli.main import main

__all__ = ["main"]
