"""Schedule ticks: when a cron schedule is due, and what to do about ticks found late.

Pure functions of the schedule, the last tick handled and the current time
(croniter reads the cron expression in the schedule's time zone).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pipelines.spec import ScheduleSpec

MAX_COUNTED_TICKS = 100_000


def run_id(moment: datetime) -> str:
    """A tick as a partition id: ``2026-11-28T02:00:00Z`` (UTC; sorts in time order as text)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_run_id(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _cron(schedule: ScheduleSpec, start: datetime):
    from croniter import croniter

    return croniter(schedule.cron, start.astimezone(ZoneInfo(schedule.timezone)))


def _fixed_time(cron: str) -> bool:
    """Whether a cron expression runs at a fixed time of day: neither its minute nor its hour field is a wildcard
    (``*``, ``*/15``), as cron tells them apart; of the aliases, all but ``@hourly``."""
    fields = cron.split()
    if fields[0].startswith("@"):
        return fields[0].lower() != "@hourly"
    return not fields[0].startswith("*") and not fields[1].startswith("*")


def _repeated(schedule: ScheduleSpec, tick: datetime) -> bool:
    """Whether a tick is the second pass of a fixed-time job through the hour repeated when the clocks go back
    (02:00 twice in Berlin on the last Sunday of October): cron runs such a job once, at the first; croniter gives
    both. A job with a wildcard minute or hour keeps both hours, in cron too."""
    local = tick.astimezone(ZoneInfo(schedule.timezone))
    return bool(local.fold) and local.replace(fold=0).utcoffset() != local.utcoffset() and _fixed_time(schedule.cron)


def latest_tick(schedule: ScheduleSpec, now: datetime) -> datetime:
    """The last tick at or before ``now`` (UTC)."""
    start = now.replace(microsecond=0) + timedelta(seconds=1)  # croniter's get_prev excludes its start
    cron = _cron(schedule, start)
    while _repeated(schedule, tick := cron.get_prev(datetime).astimezone(UTC)):
        pass
    return tick


def next_tick(schedule: ScheduleSpec, now: datetime) -> datetime:
    """The first tick after ``now`` (UTC)."""
    cron = _cron(schedule, now)
    while _repeated(schedule, tick := cron.get_next(datetime).astimezone(UTC)):
        pass
    return tick


def ticks_between(schedule: ScheduleSpec, after: datetime, before: datetime) -> int:
    """How many ticks fall strictly between two moments (counted up to a cap)."""
    cron, n = _cron(schedule, after), 0
    while n < MAX_COUNTED_TICKS and (tick := cron.get_next(datetime).astimezone(UTC)) < before:
        n += 0 if _repeated(schedule, tick) else 1
    return n


@dataclass(frozen=True)
class Decision:
    """What an invocation does about the schedule: run a tick, see it was handled, or skip it."""

    action: Literal["run", "handled", "skip"]
    tick: datetime
    missed: int = 0
    late_s: float = 0.0

    def note(self) -> str:
        if self.action == "handled":
            return "tick already handled; new input waits for the next tick"
        if not self.missed:
            return ""
        late = _duration(self.late_s)
        if self.action == "skip":
            return f"{self.missed} missed tick(s) skipped; found {late} after the tick"
        return f"{self.missed} missed tick(s), one run for them all, {late} after the tick"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def decide(schedule: ScheduleSpec | None, last_tick: str | None, now: datetime) -> Decision:
    """The tick due at ``now`` given the last tick handled; no schedule: every call is a tick."""
    if schedule is None:
        tick = now.replace(microsecond=0).astimezone(UTC)
        handled = last_tick is not None and run_id(tick) <= last_tick
        return Decision("handled" if handled else "run", tick)
    tick = latest_tick(schedule, now)
    if last_tick is not None and run_id(tick) <= last_tick:
        return Decision("handled", tick)
    late = (now.replace(microsecond=0) - tick).total_seconds()  # to the second, as ticks are: a loop wakes just after
    skipped_between = ticks_between(schedule, parse_run_id(last_tick), tick) if last_tick else 0
    is_late = late > schedule.grace_seconds
    missed = skipped_between + (1 if is_late else 0)
    if is_late and schedule.missed_ticks == "skip":
        return Decision("skip", tick, missed, late)
    return Decision("run", tick, missed, late)


def upcoming(schedule: ScheduleSpec, handled: str, now: datetime) -> str:
    """What ``pipelines schedule --once`` says of the next tick after it handled the tick ``handled`` (a run id): the
    first tick after ``now``, or, where a tick came after ``handled`` while its run ran, that one, due already (the
    next invocation takes it: it said the one after, and the next run's ledger line then told of a missed tick)."""
    due = latest_tick(schedule, now)
    if due > parse_run_id(handled):
        return f"{run_id(due)} (due already: it came while this run ran; the next invocation takes it)"
    return run_id(next_tick(schedule, now))
