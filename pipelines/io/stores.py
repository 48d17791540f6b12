"""Object stores (``s3://…``): where their settings come from, and their refusals as one line.

pyarrow's ``S3FileSystem`` (checked with pyarrow 26) finds what the AWS SDK finds, so a user gives
settings the usual way, on the driver and on every Ray worker (local workers inherit the driver's
environment; the nodes of a cluster need their own):

* credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), else the
  profile ``AWS_PROFILE`` in ``~/.aws/credentials`` (or ``AWS_SHARED_CREDENTIALS_FILE``), else the
  machine's role (EC2 instance profile);
* endpoint (MinIO, another S3 API): ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``. A profile's
  ``endpoint_url`` in ``~/.aws/config`` is *not* read by pyarrow, so it is not read here either;
* region: ``AWS_DEFAULT_REGION``, the profile's ``region``, else the bucket's own.

A store's refusal (no such bucket, access denied, unknown key) comes back from pyarrow as an
``OSError`` whose text names the AWS error; :func:`refusal` turns it into a :class:`PipelineError`
naming the location, the cause and the fix. :func:`check_bucket` and :func:`check_writable` let a
run refuse, before any work, a location it could not read or write.
"""

from __future__ import annotations

import errno
import os
import re
import uuid

import pyarrow.fs as pafs

from pipelines.errors import PipelineError

_AWS_ERROR = re.compile(r"AWS Error (\w+) during (\w+) operation")
_CREDENTIALS = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the machine's role"
_REFUSED_KEYS = {"INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "UNRECOGNIZED_CLIENT", "EXPIRED_TOKEN",
                 "INVALID_CLIENT_TOKEN_ID", "MISSING_AUTHENTICATION_TOKEN"}
_WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject",
           "DeleteObject", "DeleteObjects"}


def is_store_error(exc: OSError) -> bool:
    """Whether an error is a refusal reported by an object store (rather than by a local disk)."""
    return _AWS_ERROR.search(str(exc)) is not None


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def endpoint() -> str | None:
    """The S3 endpoint the environment names (pyarrow and boto3 read the same variables), if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint_note() -> str:
    """' at <endpoint>' when the environment names one, for messages."""
    found = endpoint()
    return f" at {found}" if found else ""


def bucket_of(path: str) -> str:
    """The bucket of a path inside an S3 filesystem (``bucket/key/...``)."""
    return path.split("/", 1)[0]


def no_bucket(role: str, location: str, bucket: str) -> PipelineError:
    return PipelineError(f"{role} {location}: the bucket {bucket} does not exist{endpoint_note()}; create it, "
                         "or fix the name")


def refusal(role: str, location: str, exc: OSError) -> PipelineError:
    """A store's refusal as one line: ``<role> <location>: <what the store said>; <what to do>``."""
    text = str(exc)
    found = _AWS_ERROR.search(text)
    code, operation = found.groups() if found else ("", "")
    bucket = bucket_of(location.split("://", 1)[-1])
    if code == "NO_SUCH_BUCKET":
        return no_bucket(role, location, bucket)
    if code == "ACCESS_DENIED":
        writes = operation in _WRITES
        needs = "write and delete objects (s3:PutObject, s3:DeleteObject)" if writes else "list and read objects"
        head = operation.startswith("Head")
        why = "; S3 gives a HEAD request no reason, so the key may also be unknown" if head else ""
        return PipelineError(
            f"{role} {location}: access denied{endpoint_note()} ({operation}{why}); use valid credentials "
            f"({_CREDENTIALS}) that may {needs} under it, or another location"
        )
    if code in _REFUSED_KEYS:
        return PipelineError(
            f"{role} {location}: the store{endpoint_note()} refused the credentials ({code.lower()}); "
            f"check {_CREDENTIALS}"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if not found and is_local_location(location):
        return local_refusal(role, location, exc, first)
    return PipelineError(f"{role} {location}: the store{endpoint_note()} cannot be used ({first}); check the location, "
                         "the endpoint (AWS_ENDPOINT_URL) and the network")


def invalid_path(role: str, location: str, exc: Exception) -> PipelineError:
    """A path pyarrow refuses to take (``Empty path component``: ``s3://bucket//x``) as one line."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return PipelineError(f"{role} {location}: not a path pyarrow takes ({said}); write the names between single "
                         "slashes (s3://bucket/folder/name), with no empty one")


def is_local_location(location: str) -> bool:
    """Whether a location names the local disk (a path, or a ``file://`` URI) rather than a store."""
    return "://" not in location or location.startswith("file://")


def local_refusal(role: str, location: str, exc: OSError, said: str) -> PipelineError:
    """A local disk's refusal as one line: a permission to fix, or a path or disk to check (no store advice)."""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return PipelineError(
            f"{role} {location}: this process may not list or read it ({said}); fix its permissions, so that this "
            "user may list and read every folder and file under it, or choose another location"
        )
    return PipelineError(f"{role} {location}: cannot be listed or read ({said}); check the path and its disk")


def check_bucket(fs: pafs.FileSystem, path: str, role: str, location: str, refused_is_unknown: bool = False) -> None:
    """Refuse a location in a bucket that does not exist or may not be looked at (object stores only).

    ``refused_is_unknown``: a refused look at the bucket (credentials that may list a prefix but not look
    at the bucket itself) says nothing, rather than refusing the location."""
    if is_local(fs):
        return
    bucket = bucket_of(path)
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        if refused_is_unknown:
            return
        raise refusal(role, location, exc) from None
    if info.type == pafs.FileType.NotFound:
        raise no_bucket(role, location, bucket)


def check_writable(fs: pafs.FileSystem, root: str, location: str, scratch: str, role: str = "output.path") -> None:
    """Before any work: an object can be written and deleted under ``location`` (so its bucket exists).

    The probe object is written under ``<location>/<scratch>/`` (a folder readers skip) and deleted
    at once. Local paths are not probed: their refusals already come as one line when they happen.
    """
    if is_local(fs):
        return
    probe = f"{root.rstrip('/')}/{scratch}/.write-check-{uuid.uuid4().hex}"
    written = False
    try:
        with fs.open_output_stream(probe) as stream:
            stream.write(b"")
        written = True
        fs.delete_file(probe)
    except FileNotFoundError:
        pass  # deleted meanwhile by a run cleaning up its staging folder: it was written, which is what counts
    except OSError as exc:
        refused = refusal(role, location, exc)
        if written:  # credentials that may write but not delete: the probe stays, and the line names it
            scheme = location.split("://", 1)[0]
            raise PipelineError(f"{refused}; the empty probe object {scheme}://{probe} it wrote stays there "
                                f"(readers skip {scratch}/, and no run deletes it): delete it") from None
        raise refused from None
