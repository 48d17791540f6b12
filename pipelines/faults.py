"""Fault injection for tests: crash the driver at a named point, as SIGKILL would.

``PIPELINES_CRASH_AT=<point>:<n>`` kills this process (SIGKILL, no clean-up) the
n-th time it reaches ``point``. Driver points: ``before_commit``, ``mid_commit``
(commit record written, files not yet moved into place), ``mid_reveal`` (on an object
store: a staged file copied into place, its staged copy not yet deleted), ``after_commit``,
``before_summary``; actor point: ``predict`` (each predictor call). With ``PIPELINES_CRASH_ONCE=<file>``
only the first process to get there dies (it creates the file), so a restarted
actor carries on. Unset in normal use; it exists so tests can prove that a
crash at any of these moments is resumed exactly once.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter[str] = Counter()


def checkpoint(point: str) -> None:
    wanted = os.environ.get("PIPELINES_CRASH_AT")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != point:
        return
    _reached[point] += 1
    if _reached[point] < int(count or 1):
        return
    once = os.environ.get("PIPELINES_CRASH_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
