"""The project's one exception type, and the way back to it from Ray's reports of a remote failure."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class PipelineError(Exception):
    """The one error type of this project: its message says what is wrong and how to fix it."""


def from_ray(exc: BaseException) -> PipelineError | None:
    """The one-line error behind Ray's report of a failure in a task or an actor of this project; None for others.

    A task that raises a PipelineError reaches the driver as Ray's ``RayTaskError`` (a subclass of it whose message
    is the remote traceback); an actor whose constructor raised (the pool's actor, whose model could not be
    loaded) as an ``ActorDiedError`` holding that traceback as text. Either becomes what was raised, on one line.
    """
    if "ray" not in sys.modules:  # nothing ran on Ray in this process
        return None
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(exc, RayTaskError):
        return PipelineError(str(exc.cause)) if isinstance(exc.cause, PipelineError) else None
    if not isinstance(exc, RayActorError) or not exc.actor_init_failed:
        return None
    raised = _raised(exc.error_msg)
    ours = f"{PipelineError.__module__}.{PipelineError.__qualname__}: "
    if raised.startswith(ours):
        return PipelineError(raised[len(ours) :])
    return PipelineError(
        f"an actor of the pool failed while it loaded the model: {raised} (its traceback is in the log above); "
        "fix the model or the spec, then run again (committed shards are kept)"
    )


def _raised(traceback_text: str) -> str:
    """The first line of the exception a Python traceback ends with (what follows its last frame)."""
    lines = traceback_text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    after = lines[frames[-1] + 1 :] if frames else lines
    said = [line.strip() for line in after if line.strip() and not line.startswith(" ")]
    return said[0] if said else (lines[-1].strip() if lines else "no reason given")


def one_line_ray_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``; a failure Ray reports for one of this project's tasks or actors is raised as the
    PipelineError it stands for (see :func:`from_ray`)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            said = from_ray(exc)
            if said is None:
                raise
            raise said from None

    return wrapper
