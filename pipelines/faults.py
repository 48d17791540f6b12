"""Fault injection for tests: crash the driver at a named point, as SIGKILL would.

``PIPELINES_CRASH_AT=<point>:<n>`` kills this process (SIGKILL, no clean-up) the
n-th time it reaches ``point`` (a signal the process lives through, ``STOP``, is sent again at
each time after). Driver points: ``before_commit``, ``mid_commit``
(commit record written, files not yet moved into place), ``mid_reveal`` (on an object
store: a staged file copied into place, its staged copy not yet deleted), ``after_commit``,
``before_summary``, ``exit`` (the CLI has said how the command ended; Ray's shutdown at exit follows), ``idle``
(the scheduler's loop, about to sleep till its next tick); actor point:
``predict`` (each predictor call), ``decided`` (``quantization: auto``'s check made in the pool's actor, before
it posts the decision). ``PIPELINES_CRASH_ON_TEXT=<text>`` kills the actor (SIGKILL) at each call whose
batch holds a row whose text contains ``text``, in every process: a batch that kills whichever actor takes it, as
the out-of-memory killer does a batch too big for the node. Several points, comma-separated, each signal once
(``mid_commit:2,exit``).
With ``PIPELINES_CRASH_ONCE=<file>`` only the first process to get there dies (it creates the file), so a
restarted actor carries on. Unset in normal use; it exists so tests can prove that a
crash at any of these moments is resumed exactly once.

``PIPELINES_CRASH_SIGNAL=TERM|INT|KILL`` (test-only; default KILL) sends that signal instead, as a task timeout,
``kill`` or Ctrl-C would; ``PIPELINES_CRASH_TARGET=<pid>`` sends it to that process instead of this one, or with a
negative pid to that process group (so an actor's ``predict`` point can signal the driver, or the driver's group),
or with ``session:<sid>`` to every process of that session, this one last (as ``systemctl stop`` signals every
process of a unit's cgroup).

``PIPELINES_WRITE_FAILS_AT=<point>:<n>[:<errno name>]`` makes the n-th write at ``point`` fail as a full disk
does (``OSError`` ENOSPC, or the errno named: ``EDQUOT``), after its bytes went to the temporary file. Points
(:func:`pipelines.output.layout.write_whole`): ``stage`` (the actor staging a block), ``merge`` (the commit
merging a shard's staged files), else the name of the file written (``_run.json``, ``_report.html``, ...).
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

_reached: Counter[str] = Counter()


def checkpoint(point: str) -> None:
    wanted = os.environ.get("PIPELINES_CRASH_AT")
    if not wanted:
        return
    counts = dict(item.partition(":")[::2] for item in wanted.split(","))  # point → n ("" for 1)
    if point not in counts:
        return
    _reached[point] += 1
    if _reached[point] < int(counts[point] or 1):
        return
    once = os.environ.get("PIPELINES_CRASH_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    sig = getattr(signal, "SIG" + os.environ.get("PIPELINES_CRASH_SIGNAL", "KILL").upper())
    target = os.environ.get("PIPELINES_CRASH_TARGET")
    if target and target.startswith("session:"):
        _signal_session(int(target.removeprefix("session:")), sig)
    else:
        os.kill(int(target) if target else os.getpid(), sig)


def _signal_session(sid: int, sig: int) -> None:
    """``sig`` to every process of session ``sid`` (Linux: the pids under /proc), this one last if it is one."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), sig)
            except OSError:  # gone meanwhile
                continue
    if os.getsid(0) == sid:
        os.kill(me, sig)


CRASH_ON_TEXT = "PIPELINES_CRASH_ON_TEXT"


def crash_on_text(texts: object) -> None:
    """Kill this process (SIGKILL) if any of ``texts`` (a pyarrow column) holds ``PIPELINES_CRASH_ON_TEXT``."""
    wanted = os.environ.get(CRASH_ON_TEXT)
    if wanted and any(wanted in text for text in texts.to_pylist() if isinstance(text, str)):  # type: ignore[attr-defined]
        os.kill(os.getpid(), signal.SIGKILL)


def write_fails(point: str) -> None:
    """Raise the OSError ``PIPELINES_WRITE_FAILS_AT`` asks for, the n-th time a write reaches ``point``."""
    wanted = os.environ.get("PIPELINES_WRITE_FAILS_AT")
    if not wanted:
        return
    name, _, rest = wanted.partition(":")
    count, _, code_name = rest.partition(":")
    if name != point:
        return
    _reached[f"write:{point}"] += 1
    if _reached[f"write:{point}"] != int(count or 1):
        return
    code = getattr(errno, code_name or "ENOSPC")
    raise OSError(code, f"Error writing bytes to file. Detail: [errno {code}] {os.strerror(code)}")
