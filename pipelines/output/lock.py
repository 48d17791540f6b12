"""One run at a time per output: an exclusive ``flock`` on a lock file that dies with its process.

``pipelines run`` locks ``<output.path>/_run.lock``, the scheduler ``<output.path>/_schedule.lock``;
with output on S3 the lock is that object, a lease taken with a conditional write
(:mod:`pipelines.output.object_lock`); on other object stores the lock file lives in a local lock
folder and keeps apart only the runs of one machine (:func:`output_lock`).

The kernel drops an ``flock`` the moment the process holding it ends, however it
ends (SIGKILL and OOM kills included), so a crashed run never leaves a lock that
blocks the next one. The file also names its holder (pid, host, since when), for
the message a refused run prints and for the log line of a recovery.

``flock`` locks belong to an open file, not to a process: a second ``JobLock`` on
the same file is refused even inside the process that holds the first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pyarrow.fs as pafs

from pipelines.errors import PipelineError
from pipelines.io.shards import resolve

if TYPE_CHECKING:
    from pipelines.output.object_lock import ObjectLock

log = logging.getLogger(__name__)


# A run that asks whether another holds the lock (held_elsewhere) takes a shared lock for an instant; a run taking
# the lock then tries a few times before it calls the output busy.
LOOK_TRIES, LOOK_WAIT_S = 5, 0.02


#: The locks this process holds, so that a SIGTERM can let go of them from another thread (see release_held).
HELD: set[JobLock | ObjectLock] = set()


def release_held() -> None:
    """Let go of every lock this process holds, from any thread, on its way out: the CLI's way out on SIGTERM, where
    Ray's core worker may end the process before the main thread unwinds (see pipelines.errors.watch_sigterm). The
    process exits right after; until it does, its main thread may still be in the middle of a commit, so a lock
    the kernel drops at the exit is left to the exit (see :meth:`JobLock.let_go_at_exit`)."""
    for lock in list(HELD):
        try:
            lock.let_go_at_exit()
        except Exception:  # noqa: BLE001 - on the way out: a lock left behind is taken over by the next run
            log.debug("could not release %s on the way out", lock, exc_info=True)


class LockHeld(PipelineError):
    """Another run of the same job holds the lock; try again later."""


class JobLock:
    """``with JobLock(path):`` holds the job's lock or raises :class:`LockHeld` at once (never waits)."""

    def __init__(self, path: str | Path, what: str = "this job") -> None:
        self.path = Path(path)
        self.what = what
        self._file: IO[str] | None = None

    def present(self) -> bool:
        """Whether the lock file is there (held, or left by an earlier run): nothing is created to find out."""
        return self.path.exists()

    def acquire(self) -> JobLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the lock is
        for attempt in range(LOOK_TRIES):
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < LOOK_TRIES:  # perhaps another run's look (held_elsewhere) for an instant
                    time.sleep(LOOK_WAIT_S)
                    continue
                refusal = self._held(handle)
                handle.close()
                raise refusal from None
        previous = _read_holder(handle)
        if previous:
            log.warning("recovered the lock of %s left by a run that ended without releasing it (%s)",
                        self.what, describe_holder(previous))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        self._file = handle
        HELD.add(self)
        return self

    def held_elsewhere(self) -> LockHeld | None:
        """The refusal :meth:`acquire` would raise because another run holds the lock, else None; nothing is
        written or taken to find out."""
        if not self.path.exists():
            return None
        try:
            handle = open(self.path)  # noqa: SIM115 - closed below
        except OSError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused only beside an exclusive holder
        except BlockingIOError:
            return self._held(handle)
        else:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None
        finally:
            handle.close()

    def _held(self, handle: IO[str]) -> LockHeld:
        return LockHeld(
            f"another run of {self.what} is in progress ({describe_holder(_read_holder(handle))}); not starting a "
            f"second one. It ends by itself; the lock is {self.path} (do not delete it: the run holds the lock on "
            "that file, and a run started after its deletion would write beside it)"
        )

    def release(self) -> None:
        """Empty the file (a clean end) and drop the lock. The file stays: unlinking it would race."""
        HELD.discard(self)
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def let_go_at_exit(self) -> None:
        """Empty the file (a clean end) and keep the lock for the instant until this process exits: the kernel drops
        it then. Let go of now, from another thread, it could be taken by another run while this process's main
        thread still writes (the rest of a commit it was in)."""
        HELD.discard(self)
        handle = self._file
        if handle is not None:
            handle.seek(0)
            handle.truncate()
            handle.flush()

    def check(self) -> None:
        """Raise where the lock's path no longer names the file this run locked. A kernel lock cannot be taken away
        from a live holder, but its file can be deleted (by hand): a run started then locks a new file of that name
        and writes here too, so this one must not write any more."""
        if self._file is None:
            return
        held = os.fstat(self._file.fileno())
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        if there is None or (there.st_dev, there.st_ino) != (held.st_dev, held.st_ino):
            instead = "" if there is None else " (another file is in its place)"
            raise PipelineError(
                f"the lock {self.path} of {self.what} was deleted while this run held it{instead}: a run started since "
                "may be writing here; this run stops before it writes more (what it committed is kept; once no other "
                "run writes here, run again to resume)"
            )

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(handle) -> dict | None:
    handle.seek(0)
    text = handle.read().strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text[:200]}


def describe_holder(holder: dict | None) -> str:
    """A lock holder's record in words: ``pid 123 on host since 2026-11-28 02:00:01 UTC`` (in UTC: an object
    store's lock is read on other machines, in other zones)."""
    if not holder:
        return "holder unknown"
    if "pid" not in holder:
        return f"holder {holder}"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return f"pid {holder['pid']} on {holder.get('host', '?')} since {since}"


MOUNTINFO = "/proc/self/mountinfo"
#: How /proc/self/mountinfo writes a space, a tab, a newline or a backslash of a mount point.
OCTAL = re.compile(r"\\([0-7]{3})")


def fuse_mount(path: str, mountinfo: str | None = None) -> str | None:
    """The file system type of the FUSE mount a local path lies on (``fuse.gcsfuse``, ``fuse.s3fs``: a bucket mounted
    as a folder, as Kubernetes' CSI drivers do), else None; also None where the mounts can't be read (not Linux).
    ``mountinfo``: the text of /proc/self/mountinfo (read where not given). The path's nearest existing folder, links
    resolved, is looked up: the mount whose mount point is its longest leading folder."""
    if mountinfo is None:
        try:
            mountinfo = Path(MOUNTINFO).read_text()
        except OSError:
            return None
    at = os.path.realpath(path)
    while not os.path.exists(at) and os.path.dirname(at) != at:
        at = os.path.dirname(at)
    best, kind = "", None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if "-" not in fields or len(fields) < 5:
            continue
        point = OCTAL.sub(lambda found: chr(int(found.group(1), 8)), fields[4])  # \040: a space, as escaped there
        fstype = fields[fields.index("-") + 1] if fields.index("-") + 1 < len(fields) else ""
        inside = at == point or at.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind if kind is not None and (kind == "fuse" or kind.startswith("fuse.")) else None


def lock_folder() -> Path:
    """The local lock folder: ``$PIPELINES_LOCK_DIR`` (a ``~`` at its start the home directory, as in a spec's paths:
    a systemd unit or a Kubernetes env expands none), else ``~/.cache/pipelines/locks``. A relative one is refused:
    each command would take its locks under the directory it runs from, and a scheduler started by cron from the
    home directory and a run started from the project would not be kept apart."""
    given = os.environ.get("PIPELINES_LOCK_DIR")
    if not given:
        return Path.home() / ".cache" / "pipelines" / "locks"
    folder = Path(given).expanduser()
    if not folder.is_absolute():
        raise PipelineError(
            f"PIPELINES_LOCK_DIR {given} is a relative path: a command started from another directory would take "
            "its lock in another folder, and two runs of one output would not be kept apart; set it to an absolute "
            "path (or unset it: ~/.cache/pipelines/locks)"
        )
    return folder


def output_lock(location: str, name: str, what: str, quiet: bool = False) -> JobLock | ObjectLock:
    """The lock of an output location: ``<location>/<name>``.

    A local path gets a kernel lock on that file. On S3 the lock is that object, taken with a
    conditional write (:mod:`.object_lock`), which keeps apart runs on different machines; with
    ``PIPELINES_LOCK=local``, and on other object stores, it is a file in a local lock folder
    (``$PIPELINES_LOCK_DIR``, default ``~/.cache/pipelines/locks``) named after the location, which
    keeps apart only the runs of this machine (and says so in a warning, unless ``quiet``: a look at another
    command's lock).
    """
    fs, root = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        if not quiet and (kind := fuse_mount(root)) is not None:
            log.warning(
                "output.path %s is on a FUSE mount (%s, such as gcsfuse or s3fs mount a bucket): its lock keeps apart "
                "only the runs of this machine, as such a file system passes no lock to the others; run one driver "
                "per output at a time, or write to the store's own URI (s3://…), whose lock keeps machines apart",
                location, kind)
        return JobLock(Path(root) / name, what)
    if isinstance(fs, pafs.S3FileSystem) and os.environ.get("PIPELINES_LOCK", "").lower() != "local":
        from pipelines.output.object_lock import ObjectLock

        bucket, _, prefix = root.rstrip("/").partition("/")
        return ObjectLock(bucket, f"{prefix}/{name}" if prefix else name, what, region=fs.region)
    folder = lock_folder()
    if not quiet:
        log.warning("output.path %s: runs are kept apart only on this machine (lock in %s); run one driver per "
                    "output at a time", location, folder)
    # named after the place, not the string: s3://b/out, s3://b/out/ and s3://b/o%75t are one output
    digest = hashlib.sha1(f"{fs.type_name}://{root.rstrip('/')}\0{name}".encode()).hexdigest()[:16]
    return JobLock(folder / f"{digest}.lock", what)
