"""A local filesystem that dies: the hook of tests/test_kill_points.py.

Every mutation of a scheduled job's output goes through pyarrow's ``LocalFileSystem`` (move, delete_file,
delete_dir, delete_dir_contents, open_output_stream, open_append_stream, copy_file, create_dir), so
:func:`install` puts a subclass in its place (through ``monkeypatch``, for one test only) that counts those calls
while a :class:`KillSwitch` is armed and raises the kill before the k-th one. From then on the process is dead:
every later mutation raises too, armed or not, until the invocation has unwound, so no ``except BaseException``
clean-up can tidy up after the kill (as with SIGKILL). Each mutation is named with the call of the package it is
inside (``OutputDir.clear#1 > OutputDir.forget#1 > layout.delete#4``: the fourth ``layout.delete`` of the
invocation, inside its first ``forget`` and ``clear``), so a failure says where the kill struck.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from pipelines import faults
from pipelines.output import layout
from pipelines.output.commit import OutputDir
from pipelines.schedule.executor import ScheduledJob
from pipelines.schedule.ledger import Ledger

MUTATIONS = ("move", "delete_file", "delete_dir", "delete_dir_contents", "open_output_stream", "open_append_stream",
             "copy_file", "create_dir")
TWO_PATHS = ("move", "copy_file")

#: The calls a mutation is named by, those it is inside.
NAMED_CALLS: list[tuple[Any, str, str]] = [
    (ScheduledJob, "_move", "ScheduledJob._move"),
    (ScheduledJob, "retire_tree", "ScheduledJob.retire_tree"),
    (ScheduledJob, "retire_shard", "ScheduledJob.retire_shard"),
    (ScheduledJob, "restore_shard", "ScheduledJob.restore_shard"),
    (ScheduledJob, "reconcile", "ScheduledJob.reconcile"),
    (ScheduledJob, "remember_digests", "ScheduledJob.remember_digests"),
    (ScheduledJob, "write_report", "ScheduledJob.write_report"),
    (OutputDir, "_move", "OutputDir._move"),
    (OutputDir, "_reveal", "OutputDir._reveal"),
    (OutputDir, "forget", "OutputDir.forget"),
    (OutputDir, "clear", "OutputDir.clear"),
    (OutputDir, "clean", "OutputDir.clean"),
    (OutputDir, "recover", "OutputDir.recover"),
    (OutputDir, "write_json", "OutputDir.write_json"),
    (OutputDir, "drop_empty_errors", "OutputDir.drop_empty_errors"),
    (layout, "delete", "layout.delete"),
    (Ledger, "append", "Ledger.append"),
    (faults, "checkpoint", "faults.checkpoint"),
]


class KillSwitch:
    """Counts the output's mutations while armed; the ``kill_at``-th and every later one raise ``killed``."""

    def __init__(self, killed: type[BaseException]) -> None:
        self.killed = killed
        self.root = ""  # paths are shown relative to it
        self.armed = False
        self.dead = False
        self.kill_at: int | None = None
        self.events: list[str] = []
        self.stack: list[str] = []
        self.calls: collections.Counter[str] = collections.Counter()

    def mutation(self, op: str, paths: tuple[Any, ...]) -> None:
        if self.dead:
            raise self.killed()
        if not self.armed:
            return
        shown = ", ".join(str(p).removeprefix(self.root + "/") for p in paths)
        self.events.append(f"{op}({shown}) in {' > '.join(self.stack) or 'no named call'}")
        if len(self.events) == self.kill_at:
            self.dead = True
            raise self.killed()

    def run(self, invocation: Callable[[], Any], root: Path, kill_at: int | None) -> tuple[bool, list[str]]:
        """Run ``invocation`` killed before its ``kill_at``-th mutation (None: never); whether it was killed and
        the mutations it made or was killed at. Other exceptions propagate."""
        self.root, self.kill_at, self.armed, self.dead = str(root), kill_at, True, False
        self.events, self.stack, self.calls = [], [], collections.Counter()
        try:
            invocation()
            return False, self.events
        except self.killed:
            return True, self.events
        finally:
            self.armed = self.dead = False
            self.stack = []

    def named(self, label: str, real: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(real)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.armed:
                return real(*args, **kwargs)
            self.calls[label] += 1
            self.stack.append(f"{label}#{self.calls[label]}")
            try:
                return real(*args, **kwargs)
            finally:
                self.stack.pop()

        return call


def install(monkeypatch: pytest.MonkeyPatch, killed: type[BaseException]) -> KillSwitch:
    """pyarrow's LocalFileSystem replaced by one that ``switch`` can kill, and the named calls wrapped, until the
    test ends (monkeypatch undoes both)."""
    switch = KillSwitch(killed)
    real = pafs.LocalFileSystem

    def mutating(op: str) -> Callable[..., Any]:
        method = getattr(real, op)
        count = 2 if op in TWO_PATHS else 1

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            switch.mutation(op, args[:count])
            return method(self, *args, **kwargs)

        return wrapped

    dying = type("DyingLocalFileSystem", (real,), {op: mutating(op) for op in MUTATIONS})
    monkeypatch.setattr(pafs, "LocalFileSystem", dying)
    for owner, name, label in NAMED_CALLS:
        monkeypatch.setattr(owner, name, switch.named(label, getattr(owner, name)))
    return switch
