"""A setting's value as the user wrote it, before pydantic checks its type: what pydantic would take silently.

YAML reads ``yes``, ``no``, ``on``, ``off``, ``true`` and ``false`` unquoted as booleans, and pydantic takes a boolean
for the number 1 or 0 (``errors.max_count: no``, meant as no limit, is 0); ``.inf`` and ``.nan`` are YAML's float
infinity and not-a-number, which no setting means; an empty text is what ``--set key=$VAR`` gives where VAR is unset.
The job spec's sections (:mod:`pipelines.spec`) and the task options (:mod:`pipelines.tasks.options`) both ask here.
Light: no pydantic, no torch.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any


def number_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` can't be taken for the number a field typed ``annotation`` wants (None: it can, or the field
    wants no number): a YAML boolean, a number that is not finite; in a mapping of numbers (``compute.resources``),
    of any of its values."""
    if typing.get_origin(annotation) is dict and isinstance(value, dict):
        wanted = typing.get_args(annotation)
        for key, item in value.items():
            problem = number_problem(wanted[1], item) if len(wanted) == 2 else None
            if problem:
                return f"{key}: {problem}"
        return None
    if not _wants_number(annotation):
        return None
    if isinstance(value, bool):
        return (f"{str(value).lower()} is a YAML boolean (yes, no, on, off, true and false unquoted are), not a "
                "number: write a number, or leave the setting out for its default")
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number: write a number, or leave the setting out for its default"
    return None


def empty_text_problem(annotation: Any, value: Any) -> str | None:
    """Why an empty text can't stand for a field typed ``annotation`` that wants a text (None: it is not empty, or
    the field wants none)."""
    if not isinstance(value, str) or value.strip() or str not in _options(annotation):
        return None
    unset = ", or null for none" if type(None) in _options(annotation) else ""
    empty = "an empty value" if not value else "a value of whitespace alone"
    return (f"{empty} (a --set whose shell variable was empty or unset?): write one{unset}, or leave the setting out "
            "for its default")


def _options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _wants_number(annotation: Any) -> bool:
    options = _options(annotation)
    return bool not in options and any(option in (int, float) for option in options)
