"""A lock on an S3 object store that keeps apart runs on different machines: one object, conditional writes.

The lock is the object ``<output.path>/_run.lock`` (``_schedule.lock`` for the scheduler), holding
its holder's record (pid, host, since, a token). It is taken by creating the object with
``If-None-Match: *``: of several machines creating it at once, the store lets exactly one succeed
(S3 and S3-compatible stores with conditional writes; a store that refuses the header is named in a
one-line error suggesting ``PIPELINES_LOCK=local``).

A lock must not outlive its holder, and an object store does not notice a process dying, so the lock
is a **lease**: the holder rewrites the object every ``lease_s / 4`` seconds from a daemon thread
(``If-Match`` its last ETag). A lock is *stale*, and the next run takes it over, when

* its object was last written more than ``lease_s`` seconds ago, by the store's clock (its
  ``Last-Modified`` against the ``Date`` of the store's answer: the machines' clocks do not matter), or
* its holder ran on this host and that process has ended (a run restarted after a crash on the same
  machine does not wait for the lease). "This host" is the host name *and* the process space a pid is
  read in (this boot of the kernel, this PID namespace: :func:`here`): containers that share a node's host
  name (host networking) or two machines of one name can't see each other's processes, so between them
  only the lease counts.

A take-over is a write with ``If-Match`` on the ETag of the stale object, so of two machines taking
over the same stale lock one wins and the other is told the lock is held. A holder that finds, when
renewing, that its lock was taken over (it was stalled past its lease) marks it lost; :meth:`check`
then raises, and the run stops before its next commit (a holder whose lease is overdue at a check renews it
there first, so a run resuming from a stall finds the take-over before its renewing thread does). Releasing
deletes the object if it is still this holder's (``If-Match``).

boto3 is imported only when an S3 lock is taken; it finds credentials as pyarrow does and is pointed
at the endpoint pyarrow uses (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, not a profile's).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from pipelines.errors import PipelineError, first_line
from pipelines.io import stores
from pipelines.output.lock import HELD, LockHeld, describe_holder

log = logging.getLogger(__name__)

#: Seconds a lock stays valid without being renewed (``PIPELINES_LOCK_LEASE_S`` overrides it).
LEASE_S = 60.0
_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict")
_UNSUPPORTED = ("NotImplemented", "InvalidArgument", "InvalidRequest")


@dataclass(frozen=True)
class Seen:
    """The lock object as read: its ETag, its holder's record, and how long ago it was last written."""

    etag: str
    holder: dict[str, Any]
    age_s: float


def lease_seconds() -> float:
    return float(os.environ.get("PIPELINES_LOCK_LEASE_S") or LEASE_S)


def here() -> dict[str, str]:
    """Where a pid names a process of this one's: the host name, and the process space (``boot_id/PID namespace``;
    empty where ``/proc`` does not tell, off Linux). A lock holder's record carries both."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            space = f"{boot.read().strip()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        space = ""
    return {"host": socket.gethostname(), "processes": space}


def stale_reason(seen: Seen, lease_s: float, where: dict[str, str], alive: Callable[[int], bool]) -> str | None:
    """Why a held lock may be taken over, or None while its holder may still be working. ``where``: :func:`here`;
    a holder's pid is looked up only where its record names the same host and process space (an older record,
    without the space, waits for its lease)."""
    lease = float(seen.holder.get("lease_s") or lease_s)
    if seen.age_s > lease:
        return f"not renewed for {seen.age_s:.0f} s, longer than its lease of {lease:.0f} s"
    pid = seen.holder.get("pid")
    same = all(seen.holder.get(name) == value for name, value in where.items())
    if same and isinstance(pid, int) and not alive(pid):
        return f"its process {pid} on this host has ended"
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ObjectLock:
    """``with ObjectLock(...)``: holds the lock object or raises :class:`LockHeld` at once (never waits)."""

    def __init__(self, bucket: str, key: str, what: str, *, region: str | None = None,
                 lease_s: float | None = None) -> None:
        self.bucket, self.key, self.what = bucket, key, what
        self.uri = f"s3://{bucket}/{key}"
        self.region = region
        self.lease_s = lease_s if lease_s is not None else lease_seconds()
        self.where = here()
        self.token = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost: str | None = None
        self._beats = 0
        self._since = time.time()
        self._renewed = time.monotonic()  # when the lock object was last written by this holder
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None

    # the store -------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(ignore_configured_endpoint_urls=True, retries={"mode": "standard", "max_attempts": 3},
                            connect_timeout=10, read_timeout=30)
            self._client = boto3.session.Session().client(
                "s3", region_name=self.region or None, endpoint_url=stores.endpoint(), config=config
            )
        return self._client

    def _body(self) -> bytes:
        self._beats += 1
        return json.dumps({"pid": os.getpid(), **self.where, "since": self._since,
                           "token": self.token, "lease_s": self.lease_s, "renewals": self._beats}).encode()

    def _put(self, **condition: str) -> str:
        started = time.monotonic()
        answer = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)
        self._renewed = started  # the lease runs from the request, not from its answer
        return answer["ETag"]

    def read(self) -> Seen | None:
        """The lock object now, or None when there is none."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        body = answer["Body"].read()
        try:
            holder = json.loads(body)
        except ValueError:
            holder = {"raw": body[:200].decode(errors="replace")}
        if not isinstance(holder, dict):
            holder = {"raw": str(holder)[:200]}
        date = answer["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        return Seen(answer["ETag"], holder, max(0.0, now - answer["LastModified"].timestamp()))

    def present(self) -> bool:
        """Whether the lock object is there (held, or left by a run that ended without releasing it). Only a
        shortcut: where the store won't say, False, and :meth:`acquire` gives the answer later."""
        return self._peek() is not None

    # taking and giving back ------------------------------------------------------------------------

    def acquire(self) -> ObjectLock:
        self._since = time.time()
        try:
            self._take()
        except (LockHeld, PipelineError):
            raise
        except Exception as exc:
            raise self._failure("could not be taken", exc) from None
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.uri}", daemon=True)
        self._thread.start()
        HELD.add(self)
        return self

    def _take(self) -> None:
        for _ in range(3):  # the object may vanish or change between a refused create and the read
            try:
                self.etag = self._put(IfNoneMatch="*")
                return
            except Exception as exc:
                if _code(exc) not in _TAKEN:
                    raise
            seen = self.read()
            if seen is None:
                continue
            reason = stale_reason(seen, self.lease_s, self.where, pid_alive)
            if reason is None:
                raise self._held(seen)
            if self.take_over(seen):
                log.warning("took over the lock %s of %s: %s (%s)", self.uri, self.what, reason,
                            describe_holder(seen.holder))
                return
            # another run took it over first, or its holder renewed it: read again
        seen = self.read()
        holder = describe_holder(seen.holder) if seen else "holder unknown"
        raise LockHeld(f"another run of {self.what} is taking the lock {self.uri} at this moment ({holder})")

    def held_elsewhere(self) -> LockHeld | None:
        """The refusal :meth:`acquire` would raise because another run holds the lock (a lease still renewed),
        else None; nothing is written to find out, and a lock that can't be read counts as not held."""
        seen = self._peek()
        if seen is None or stale_reason(seen, self.lease_s, self.where, pid_alive) is not None:
            return None
        return self._held(seen)

    def _peek(self) -> Seen | None:
        """:meth:`read`, with a lock that can't be read taken as absent (acquire() says the store's refusal)."""
        try:
            return self.read()
        except Exception:  # noqa: BLE001 - acquire() reports the store's refusal with its own message
            log.debug("could not read the lock %s", self.uri, exc_info=True)
            return None

    def _held(self, seen: Seen) -> LockHeld:
        return LockHeld(
            f"another run of {self.what} is in progress ({describe_holder(seen.holder)}, renewed "
            f"{seen.age_s:.0f} s ago); not starting a second one. The lock {self.uri} is taken over "
            f"when it is not renewed for {float(seen.holder.get('lease_s') or self.lease_s):.0f} s"
        )

    def take_over(self, seen: Seen) -> bool:
        """Replace the lock object as it was seen (``If-Match`` its ETag); False when it has changed since."""
        try:
            self.etag = self._put(IfMatch=seen.etag)
        except Exception as exc:
            if _code(exc) not in _TAKEN:
                raise
            return False
        return True

    def renew(self) -> None:
        """Rewrite the lock object (the lease starts again); marks the lock lost if it was taken over."""
        with self._mutex:
            if self.lost or self.etag is None:
                return
            try:
                self.etag = self._put(IfMatch=self.etag)
            except Exception as exc:
                if _code(exc) not in _TAKEN:
                    raise
                seen = self.read()
                self.lost = describe_holder(seen.holder) if seen else "the lock was deleted"
                log.error("the lock %s of %s was taken over (%s): this run stops before its next commit",
                          self.uri, self.what, self.lost)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a network blip: the lease leaves time to try again
                log.warning("could not renew the lock %s (%s); trying again", self.uri, exc)
            if self.lost:
                return

    def check(self) -> None:
        """Raise when the lock was taken over by another run: this run must not write any more.

        Free while the lease is being renewed on time (a flag the renewing thread sets). A lease not renewed for
        half of it (the process was stalled, or the store did not answer) is renewed here first, one conditional
        write: a run resuming after a stall past its lease finds the take-over before it commits, not after its
        renewing thread wakes up.
        """
        overdue = time.monotonic() - self._renewed
        if not self.lost and self.etag is not None and overdue > self.lease_s / 2:
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a store that does not answer: the lease decides
                if overdue > self.lease_s:
                    raise PipelineError(
                        f"the lock {self.uri} of {self.what} was not renewed for {overdue:.0f} s, longer than its "
                        f"lease ({self.lease_s:.0f} s), and could not be now ({_code(exc) or type(exc).__name__}: "
                        f"{_message(exc)}); this run stops before its next commit, as another run may have taken "
                        "it over (what it committed is kept; run again to resume)"
                    ) from None
                log.warning("could not renew the lock %s (%s); trying again", self.uri, exc)
        if self.lost:
            raise PipelineError(
                f"the lock {self.uri} of {self.what} was taken over by another run ({self.lost}) after this run "
                f"did not renew it for {self.lease_s:.0f} s; this run stops (what it committed is kept, and the "
                "other run carries on)"
            )

    def let_go_at_exit(self) -> None:
        """On this process's way out (SIGTERM): an object outlives the process, so it is released now (a run that
        takes it over in the instant before the exit meets what the README says of a stall before a write)."""
        self.release()

    def release(self) -> None:
        """Stop renewing and delete the lock object, if it is still this holder's."""
        HELD.discard(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            etag, self.etag = self.etag, None
        if etag is None or self.lost:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
        except Exception as exc:
            if _code(exc) in _TAKEN:
                log.warning("the lock %s was taken over before it was released; left to its new holder", self.uri)
            elif _code(exc) in _UNSUPPORTED:  # a store without conditional deletes: check the token first
                seen = self.read()
                if seen is not None and seen.holder.get("token") == self.token:
                    self.client.delete_object(Bucket=self.bucket, Key=self.key)
            else:
                log.warning("could not delete the lock %s (%s); it expires after %.0f s", self.uri, exc, self.lease_s)

    def _failure(self, what: str, exc: Exception) -> PipelineError:
        code = _code(exc)
        if code in _UNSUPPORTED:
            return PipelineError(
                f"the lock {self.uri} {what}: the store{stores.endpoint_note()} does not support conditional writes "
                f"(If-None-Match: {code}); set PIPELINES_LOCK=local to lock on this machine only, and run one "
                "driver per output"
            )
        return PipelineError(f"the lock {self.uri} {what} ({code or type(exc).__name__}: {_message(exc)}); "
                             "check the credentials and the endpoint (AWS_ENDPOINT_URL)")

    def __enter__(self) -> ObjectLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _code(exc: Exception) -> str:
    """The error code of a botocore ClientError ('' for other errors)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Message"):
        return str(response["Error"]["Message"])
    return first_line(exc)
