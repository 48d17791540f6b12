"""``pipelines schedule`` without ``--once``: run the job at every tick of its schedule until interrupted."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pipelines.errors import PipelineError, Terminated, keeping_sigterm
from pipelines.faults import checkpoint
from pipelines.output.lock import LockHeld
from pipelines.schedule.executor import Runner, describe, run_due
from pipelines.schedule.ticks import next_tick, parse_run_id, run_id
from pipelines.spec import JobSpec

log = logging.getLogger(__name__)


def serve(
    spec: JobSpec,
    *,
    address: str | None = None,
    rescore: bool = False,
    prune: bool = False,
    clock: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    runner: Runner | None = None,
    wakeups: int | None = None,
) -> None:
    """Run the job at every tick of its schedule until interrupted (``wakeups``: stop after that many).

    ``rescore`` and ``prune`` go with the first run (at start). Where that run is refused before any work (gone
    input without ``prune``, a clock behind the newest run), the PipelineError is raised: asked again at every tick it
    would be refused again, and new input would wait behind it while the loop ran."""
    if spec.schedule is None:
        raise PipelineError("the job spec has no schedule section; add one (schedule: {cron: '0 2 * * *'}) "
                            "or run `pipelines schedule JOB --once` from your own scheduler")
    clock = clock or (lambda: datetime.now(UTC))
    done = 0
    while True:
        ray_was_up = _ray_is_up()
        terminated = False
        handled = None
        try:
            report = run_due(spec, now=clock(), address=address, rescore=rescore, prune=prune, runner=runner)
            handled = parse_run_id(report.tick)
            rescore = prune = False
            for entry in report.entries:
                log.info("%s", describe(entry))
            for failure in report.failures:
                log.error("%s", failure)
        except Terminated:
            terminated = True  # Ray's shutdown may abort where the signal ended its processes too: the CLI exits
            raise
        except LockHeld as exc:
            log.warning("%s", exc)
        except PipelineError as exc:
            if rescore or prune:  # what the command was started to do was refused: say so and stop, to be fixed
                raise
            log.error("%s", exc)
        except Exception:  # noqa: BLE001 - a long-running scheduler outlives one bad run
            log.exception("the run failed; the next tick resumes it")
        finally:
            if not terminated and not ray_was_up and _ray_is_up():
                with keeping_sigterm():  # Ray's shutdown puts SIGTERM back to the kernel's default
                    sys.modules["ray"].shutdown()  # a local Ray started for this tick: free its memory till the next
        done += 1
        if wakeups is not None and done >= wakeups:
            return
        # The tick after the one handled, not after now: a tick that passed while the run ran is due at once (run once
        # now, or recorded as skipped, as the policy says), not left out while the loop sleeps to the one after it.
        wake = next_tick(spec.schedule, handled or clock())
        log.info("next tick at %s", run_id(wake))
        checkpoint("idle")
        sleep_until(wake, clock, sleep)


def sleep_until(moment: datetime, clock: Callable[[], datetime], sleep: Callable[[float], None]) -> None:
    """Sleep until ``moment``, in steps of at most an hour (so a clock change or a suspend is noticed)."""
    while (left := (moment - clock()).total_seconds()) > 0:
        sleep(min(left, 3600.0))


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())
