"""The project's one exception type, and the way back to it from Ray's reports of a remote failure."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

#: Terminal colours Ray puts in the remote traceback's header.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: How the pool's actor is named in Ray's report of it.
POOL_ACTOR = "PredictAndStage"
#: A remote traceback's frame of the predictor's constructor, which loads the model.
LOADING = re.compile(r'predictor\.py", line \d+, in __init__')
#: A remote traceback's frame of ``quantization: auto``'s check in the pool's actor
#: (:func:`pipelines.fidelity.run_precision`): what fails there is the model's only where it failed to load.
CHECKING = re.compile(r'fidelity\.py", line \d+, in run_precision')

P = ParamSpec("P")
R = TypeVar("R")


class PipelineError(Exception):
    """The one error type of this project: its message says what is wrong and how to fix it."""

    #: A run that failed after it started its work (deleting the output's page of the run before): the page it wrote
    #: of its failure (``report``), else the output a page can be built of (``unreported``), for the CLI to name.
    report: str | None = None
    unreported: str | None = None
    #: Such a run's output where no shard of it is committed yet (no page can be built of it), for the CLI to say.
    uncommitted: str | None = None
    #: Raised where the model is loaded, as the pool's actor started (to score, or to measure ``quantization: auto``'s
    #: candidates) or in the Ray task that measures ``model.fidelity`` (weights that can't be read, a constructor that
    #: refused the spec): no run of this job gets further until the model or the spec changes (a scheduler starts no
    #: other run on it). Not a check's failure on the run's own sampled rows, nor a lost board of its decision.
    unloadable_model: bool = False


class Terminated(BaseException):
    """SIGTERM arrived (a task timeout, a pod evicted, ``kill``, ``systemctl stop``): raised in the main thread as
    Ctrl-C raises KeyboardInterrupt, so that the run lets go of what it holds (its lock) on the way out. Not an
    Exception: no ``except Exception`` takes it for a failed run."""


#: 128 + SIGTERM: what a shell reports for a process SIGTERM ended, and what the CLI exits with then.
EXIT_TERMINATED = 143


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def keeping_sigterm() -> Iterator[None]:
    """Around ``ray.init``, which sets a SIGTERM handler of its own (``sys.exit``) in the main thread, and around
    ``ray.shutdown``, which puts SIGTERM back to the kernel's default (its core worker's shutdown does, below Python:
    ``signal.getsignal`` still names Python's handler, and the signal then ended a scheduler's loop where it slept,
    with no line of ours): where the CLI had set :func:`raise_terminated`, it is set again after, and a SIGTERM that
    came meanwhile, which Ray's handler made ``SystemExit(15)`` (the command exited 15, not a word said), is the
    CLI's :class:`Terminated` (143, its line)."""
    on_main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if on_main else None
    try:
        yield
    except SystemExit as exc:
        if before is raise_terminated and exc.code == signal.SIGTERM:
            signal.signal(signal.SIGTERM, raise_terminated)
            raise Terminated() from None
        raise
    finally:
        if before is raise_terminated:
            signal.signal(signal.SIGTERM, raise_terminated)


#: What the CLI does at once on SIGTERM where a local Ray runs in this process (see :func:`watch_sigterm`).
_sigterm_act: Callable[[], None] | None = None
_sigterm_watched = False


def act_on_sigterm(act: Callable[[], None]) -> None:
    """The CLI's way out on SIGTERM (let go of the locks, say so, exit), for :func:`watch_sigterm` to run."""
    global _sigterm_act
    _sigterm_act = act


def watch_sigterm() -> None:
    """Run the CLI's way out on a thread of its own as soon as SIGTERM arrives, beside the main thread's Terminated.

    Where this process started a local Ray, a SIGTERM to every process (``systemctl stop`` signals a unit's whole
    cgroup; a signal to this process's group no longer reaches them: see
    :func:`pipelines.cluster.connect.in_a_group_of_their_own`) reaches Ray's processes too, and Ray's core worker ends
    this process (exit 1, not a word of ours) once its raylet is gone ("The connection to the plasma store is failed.
    Terminate the process."), often before the main thread gets to raise Terminated. The signal's byte on
    :func:`signal.set_wakeup_fd` wakes this thread at once. Once per process, from the main thread, and only where
    the CLI set a way out (not in tests' processes)."""
    global _sigterm_watched
    act = _sigterm_act
    if act is None or _sigterm_watched or threading.current_thread() is not threading.main_thread():
        return
    import os

    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    _sigterm_watched = True

    def watch() -> None:
        while True:
            if signal.SIGTERM in os.read(read, 64):
                act()

    threading.Thread(target=watch, name="sigterm", daemon=True).start()


def first_line(exc: BaseException) -> str:
    """An exception's message as a one-line error quotes it: its first line, else the exception's type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def from_ray(exc: BaseException) -> PipelineError | None:
    """The one-line error behind Ray's report of a failure in a task or an actor of this project; None for others.

    A task that raises a PipelineError reaches the driver as Ray's ``RayTaskError`` (a subclass of it whose message
    is the remote traceback); one that the pool's actor raises while it works on a batch (a full disk where it
    stages) as a ``RayTaskError`` of Ray Data's ``UserCodeException``, the PipelineError only in its traceback's
    text; an actor whose constructor raised (the pool's actor, whose model could not be loaded) as an
    ``ActorDiedError`` holding that traceback as text. Each becomes what was raised, on one line.
    """
    if "ray" not in sys.modules:  # nothing ran on Ray in this process
        return None
    from ray.exceptions import RayActorError, RayTaskError, UserCodeException

    if isinstance(exc, RayTaskError):
        if isinstance(exc.cause, UserCodeException):
            return _ours_in(str(exc))
        return exc.cause if isinstance(exc.cause, PipelineError) else None  # its own type (LockHeld stays busy)
    if not isinstance(exc, RayActorError) or not exc.actor_init_failed:
        return None
    text = ANSI.sub("", exc.error_msg)
    raised = _raised(text)
    ours = f"{PipelineError.__module__}.{PipelineError.__qualname__}: "
    checking = CHECKING.search(text) is not None
    loading = not checking or LOADING.search(text) is not None  # a check's failure is the model's where it loaded it
    if raised.startswith(ours):
        said = PipelineError(raised[len(ours) :])
    else:
        who = ("an actor failed as it started" if POOL_ACTOR not in text
               else "the pool's actor failed while it loaded the model" if loading
               else "the pool's actor failed while it measured quantization auto's candidates")
        fix = ("fix the model or the spec" if loading else
               "set model.quantization yourself (none, or a precision that runs here), or fix the model or the spec")
        said = PipelineError(
            f"{who}: {raised} (the run's log has its traceback); {fix}, then run again (committed shards are kept)"
        )
    said.unloadable_model = POOL_ACTOR in text and loading
    return said


def died_on_a_batch(exc: BaseException) -> str | None:
    """Ray's word (its first line) where ``exc`` says an actor's process died while it ran a call, after the retries
    it had (the actor not failing as it started: that is :func:`from_ray`'s); None for any other failure."""
    if "ray" not in sys.modules:
        return None
    from ray.exceptions import RayActorError

    if not isinstance(exc, RayActorError) or exc.actor_init_failed:
        return None
    said = first_line(exc).replace(" The task may or may not have been executed on the actor.", "")
    return said if len(said) <= 300 else said[:297] + "..."


def _ours_in(traceback_text: str) -> PipelineError | None:
    """The PipelineError a remote traceback shows raised in user code (Ray Data chains its ``UserCodeException``
    to it, "the direct cause of the following exception", and the driver gets the text only); None for others."""
    text = ANSI.sub("", traceback_text).split("The above exception was the direct cause", 1)[0]
    raised = _raised(text)
    ours = f"{PipelineError.__module__}.{PipelineError.__qualname__}: "
    return PipelineError(raised[len(ours) :]) if raised.startswith(ours) else None


def _raised(traceback_text: str) -> str:
    """The exception a Python traceback ends with (the first line after its last frame, not indented; with the
    next line where the message starts there), or the last line where no frame is left (Ray hides its own)."""
    lines = traceback_text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if not frames:
        said = [line.strip() for line in lines if line.strip() and not line.startswith(" ")]
        return said[-1] if said else "no reason given"
    after = lines[frames[-1] + 1 :]
    for at, line in enumerate(after):
        if line.strip() and not line.startswith(" "):
            if not line.rstrip().endswith(":"):
                return line.strip()
            more = next((rest.strip() for rest in after[at + 1 :] if rest.strip()), "")
            return f"{line.strip()} {more}".strip()
    return "no reason given"


class SaidOnOneLine(logging.Filter):
    """Marks Ray Data's own report of a failure that :func:`from_ray` says on one line as hidden, so that Ray Data's
    console handler leaves it out (its log file, ``ray-data.log``, keeps it). Ray Data takes an actor that raised in
    its constructor for a bug of its own: it printed a hundred lines of its stack and asked for a report to Ray,
    between the actor's traceback and the run's error. Only in a thread inside :func:`one_line_ray_errors`, which
    says the error instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(_saying, "depth", 0):
            return True
        raised = record.exc_info[1] if record.exc_info else sys.exc_info()[1]  # logged while handling it, or with it
        try:
            said = raised is not None and from_ray(raised) is not None
        except Exception:  # noqa: BLE001 - a filter that raised would replace the error being reported
            said = False
        if said:
            record.hide = True  # Ray Data's HiddenRecordFilter: not on the console
        return True


#: Where Ray Data reports a failure of the dataset it executes (``ray.data.exceptions``' logger).
RAY_DATA_FAILURES = "ray.data.exceptions"
#: How many calls of :func:`one_line_ray_errors` the current thread is inside.
_saying = threading.local()
_filter = SaidOnOneLine()
logging.getLogger(RAY_DATA_FAILURES).addFilter(_filter)


def one_line_ray_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``; a failure Ray reports for one of this project's tasks or actors is raised as the
    PipelineError it stands for (see :func:`from_ray`), and Ray Data's own report of it stays off the console."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        _saying.depth = getattr(_saying, "depth", 0) + 1
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            said = from_ray(exc)
            if said is None:
                raise
            raise said from None
        finally:
            _saying.depth -= 1

    return wrapper
