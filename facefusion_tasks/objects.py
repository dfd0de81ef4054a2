"""Objects in S3-compatible storage: s3:// locations, the bucket allow-list, signed reads, uploads.

Credentials and the endpoint come from the standard AWS settings (environment, shared config,
instance roles; AWS_ENDPOINT_URL for MinIO, SeaweedFS or Ceph): boto3 reads them, this module
never sees them. A worker signs its own URLs for ffmpeg; a signed URL never leaves the process
that made it (not in a message, a log line, a record or a metric).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timezone
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

from facefusion_tasks.config import SIGNED_URL_SECONDS, Settings
from facefusion_tasks.errors import (
    FaceFusionError,
    InputError,
    OutputError,
    TransientError,
    Unconfined,
)
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.signed import SignedUrl

log = logging.getLogger(__name__)

SCHEME = "s3://"
#: Part size of a multipart upload (S3 takes 5 MiB to 5 GiB per part, at most 10,000 parts).
PART_BYTES = 16 * 1024 * 1024
MAX_PARTS = 10_000
#: Parts in flight at once.
UPLOAD_THREADS = 4
#: An upload started this long ago and never completed was abandoned (its writer was killed):
#: the next upload to the same key aborts it, as staging sweeps a day-old temp file.
STALE_UPLOAD_SECONDS = 24 * 3600.0
#: Where a job keeps its segments, in its output's bucket: <WORK_PREFIX><job id>/seg-NNNNN.mp4 (.webm for a WebM output).
WORK_PREFIX = ".facefusion-work/"
#: S3's bucket naming rules (3-63 characters: lowercase letters, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: Error codes that mean "not there" and "not allowed" (HTTP status codes too: HEAD has no body).
_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_REFUSED = frozenset(
    {"AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


@dataclass(frozen=True)
class ObjectRef:
    """One object: `s3://bucket/key`. Named like a Path where messages need a name."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """The key's last component (as Path.name)."""
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        """The key's extension (as Path.suffix)."""
        return PurePosixPath(self.key).suffix


#: Where a job's file is: a path (in the storage roots) or an object (in an allowed bucket).
Location = Path | ObjectRef


def is_uri(value: object) -> bool:
    """Whether `value` names an object (s3://…) rather than a path."""
    return isinstance(value, ObjectRef) or (isinstance(value, str) and value.startswith(SCHEME))


def parse(text: str) -> ObjectRef:
    """`s3://bucket/key` as an ObjectRef; InputError when it names no object."""
    if not text.startswith(SCHEME):
        raise InputError(f"{text}: not an s3:// location", reason=Reason.PATH)
    bucket, _, key = text[len(SCHEME) :].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise InputError(f"{text}: {bucket!r} is not a valid bucket name", reason=Reason.PATH)
    if not key or key.endswith("/"):
        raise InputError(f"{text}: names a bucket or folder, not an object", reason=Reason.PATH)
    return ObjectRef(bucket, key)


def location(value: str | bytes | PathLike[str] | ObjectRef) -> Location:
    """A path or an object from what a user gave: s3://… text is an object, the rest paths.
    Every job file the CLI or the API is given becomes a location here, so the name is
    checked here, as typed (a Path would drop a trailing slash): check_utf8, and a path must
    name a file."""
    if isinstance(value, ObjectRef):
        return value
    if not isinstance(value, (str, bytes, PathLike)):
        raise InputError(f"{value!r}: not a file name", reason=Reason.PATH)
    # bytes as os.fsdecode reads them (a name that is not UTF-8 is refused just below).
    text = os.fsdecode(value)
    check_utf8(text)
    if "\x00" in text:  # os calls raise a bare ValueError for it
        raise InputError(f"{text!r}: a file name cannot hold a NUL byte", reason=Reason.PATH)
    if text.startswith(SCHEME):
        return parse(text)
    if os.path.basename(text) in ("", ".", ".."):
        raise InputError(f"{text or '(empty)'}: names a directory, not a file", reason=Reason.PATH)
    # The absolute form too: ffmpeg and the job records get it (a relative name in a
    # directory whose own name is not UTF-8).
    check_utf8(os.path.abspath(text))
    # Taken as written, as every tool takes a name: a "~" the shell left (quoted) is a
    # directory called "~", never $HOME (checked as one and written to the other, an output
    # could replace the very target the checks had compared it with).
    return Path(text)


def check_utf8(name: str) -> None:
    """InputError (reason path) for a name holding bytes that are not UTF-8: Python keeps them
    as surrogate escapes, which ffmpeg-python's argv, OpenCV (it crashes) and Redis cannot
    take. The one policy for such names: refused up front, never half-handled downstream."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        try:  # shown as the bytes on disk (src\xff.png), so the user can find the file
            raw = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate no byte stands for (an API caller's)
            raw = name.encode("utf-8", "backslashreplace")
        shown = raw.decode("utf-8", "backslashreplace")
        raise InputError(
            f"{shown}: name is not valid UTF-8; rename it", reason=Reason.PATH
        ) from None


def confine(ref: ObjectRef, settings: Settings, *, what: str) -> ObjectRef:
    """`ref`, or InputError when its bucket is not in FACEFUSION_S3_BUCKETS (the storage roots'
    counterpart: the only buckets a job may read or write)."""
    allowed = settings.buckets()
    if not allowed:
        raise Unconfined(
            f"{ref}: FACEFUSION_S3_BUCKETS is not set: s3:// locations need the buckets jobs "
            "may use",
            reason=Reason.CONFIG,
        )
    if ref.bucket not in allowed:
        raise Unconfined(f"{ref}: {what} is outside the allowed buckets ({', '.join(allowed)})")
    return ref


# --- the client ---------------------------------------------------------------------------------


def client() -> Any:
    """This process's S3 client (boto3 clients must not cross a fork: one per pid)."""
    return _client(os.getpid())


@functools.cache
def _client(_pid: int) -> Any:
    import boto3
    from botocore.config import Config

    # Everything else (credentials, region, endpoint, addressing style) is the standard
    # settings' business: environment, ~/.aws/config, instance or pod roles.
    config = Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5})
    return boto3.session.Session().client("s3", config=config)


def _failure(exc: Exception, ref: ObjectRef | str, *, writing: bool = False) -> FaceFusionError:
    """Our error for a botocore one: a missing object or bucket and refused credentials are
    the request's (exit 2), anything else the service's (transient: retried). The message has
    the error code, never a credential or a signed URL."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return InputError(
            f"{ref}: no AWS credentials found (environment, shared config or instance role)",
            reason=Reason.CONFIG,
        )
    if isinstance(exc, ClientError):
        code = _code(exc)
        kind = OutputError if writing else InputError
        if code in _MISSING:
            what = "no such bucket" if code == "NoSuchBucket" else "no such object"
            return kind(f"{ref}: {what}", reason=None if writing else Reason.MISSING_FILE)
        if code in _REFUSED:
            return kind(f"{ref}: the storage refused this request ({code})", reason=Reason.CONFIG)
        return TransientError(f"{ref}: object storage failed ({code})")
    return TransientError(f"{ref}: object storage unreachable ({type(exc).__name__})")


def _code(exc: Any) -> str:
    """A botocore ClientError's error code ("?" when it has none)."""
    return str(exc.response.get("Error", {}).get("Code", "")) or "?"


@contextlib.contextmanager
def _calls(ref: ObjectRef | str, *, writing: bool = False) -> Iterator[None]:
    """Translate botocore's errors raised inside into ours."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise _failure(exc, ref, writing=writing) from None


# --- reading --------------------------------------------------------------------------------


def head(ref: ObjectRef) -> dict[str, Any]:
    """The object's metadata (ContentLength, ETag, LastModified); InputError when missing."""
    with _calls(ref):
        return dict(client().head_object(Bucket=ref.bucket, Key=ref.key))


def read_range(ref: ObjectRef, start: int, length: int) -> bytes:
    """Up to `length` bytes from offset `start` (one ranged GET)."""
    with _calls(ref):
        response = client().get_object(
            Bucket=ref.bucket, Key=ref.key, Range=f"bytes={start}-{start + length - 1}"
        )
        return bytes(response["Body"].read())


def presign(ref: ObjectRef) -> SignedUrl:
    """A GET URL for ffmpeg, signed here for this process's own use, valid SIGNED_URL_SECONDS
    (past any task's time limit: ffmpeg asks again on every seek)."""
    with _calls(ref):
        url = client().generate_presigned_url(
            "get_object",
            Params={"Bucket": ref.bucket, "Key": ref.key},
            ExpiresIn=SIGNED_URL_SECONDS,
        )
    return SignedUrl(url)


def ffmpeg_input(source: Location) -> str | Path:
    """What ffmpeg opens for `source`: the path itself, or a URL signed for it right now."""
    return presign(source) if isinstance(source, ObjectRef) else source


def download(ref: ObjectRef, destination: Path) -> Path:
    """Copy the object to `destination` (through a temp beside it, renamed when complete)."""
    temp = destination.with_name(f".{destination.name}.{os.getpid()}.download")
    try:
        with _calls(ref):
            client().download_file(ref.bucket, ref.key, str(temp))
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)
    return destination


# --- writing --------------------------------------------------------------------------------


def check_bucket(ref: ObjectRef) -> None:
    """OutputError unless `ref`'s bucket exists and these credentials may use it."""
    with _calls(ref, writing=True):
        client().head_bucket(Bucket=ref.bucket)


def upload(
    path: Path,
    ref: ObjectRef,
    *,
    metadata: dict[str, str] | None = None,
    started: Callable[[str], None] | None = None,
) -> None:
    """Put a complete, verified local file at `ref` with a multipart upload. Nothing appears at
    the key until the upload completes (S3's complete is atomic, and an object already there
    stays whole until then); on any failure the upload is aborted, so a failure leaves the key
    as it was and no parts behind. Uploads of the same key abandoned for a day go first.
    `started` is told the upload's id before any part goes up (whoever knows it can abort it,
    see abort_upload); whatever it raises aborts the upload."""
    size = path.stat().st_size
    part = max(PART_BYTES, -(-size // MAX_PARTS))
    spans = [(offset, min(part, size - offset)) for offset in range(0, size, part)] or [(0, 0)]
    s3 = client()
    with _calls(ref, writing=True):
        _abort_stale(ref)
        upload_id = s3.create_multipart_upload(
            Bucket=ref.bucket, Key=ref.key, Metadata=metadata or {}
        )["UploadId"]
    try:
        if started is not None:
            started(upload_id)
        with _calls(ref, writing=True), ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            futures = [
                pool.submit(_put_part, s3, ref, upload_id, number, path, offset, length)
                for number, (offset, length) in enumerate(spans, start=1)
            ]
            parts = [future.result() for future in futures]
            s3.complete_multipart_upload(
                Bucket=ref.bucket,
                Key=ref.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
    except BaseException:
        with contextlib.suppress(Exception):
            s3.abort_multipart_upload(Bucket=ref.bucket, Key=ref.key, UploadId=upload_id)
        raise
    log.info("uploaded %s (%d bytes, %d parts)", ref, size, len(spans))


def abort_upload(ref: ObjectRef, upload_id: str) -> bool:
    """Abort the multipart upload `upload_id` of `ref`, so that its writer, should it wake,
    cannot complete it (its complete fails with NoSuchUpload). False when the storage says
    there was none (completed, aborted or expired already; some answer success for those
    too); TransientError when the storage failed, OutputError when it refused."""
    from botocore.exceptions import ClientError

    with _calls(ref, writing=True):
        try:
            client().abort_multipart_upload(Bucket=ref.bucket, Key=ref.key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) not in {"NoSuchUpload", "404"}:
                raise
            return False
    return True


def _put_part(
    s3: Any, ref: ObjectRef, upload_id: str, number: int, path: Path, offset: int, length: int
) -> dict[str, Any]:
    with path.open("rb") as handle:
        handle.seek(offset)
        body = handle.read(length)
    if len(body) != length:
        raise OSError(f"{path.name} changed while it was uploaded")
    done = s3.upload_part(
        Bucket=ref.bucket, Key=ref.key, UploadId=upload_id, PartNumber=number, Body=body
    )
    return {"PartNumber": number, "ETag": done["ETag"]}


def _abort_stale(ref: ObjectRef, *, now: float | None = None) -> None:
    now = time.time() if now is None else now
    listing = client().list_multipart_uploads(Bucket=ref.bucket, Prefix=ref.key)
    for upload in listing.get("Uploads", []):
        started = upload["Initiated"].timestamp()
        if upload["Key"] == ref.key and now - started > STALE_UPLOAD_SECONDS:
            client().abort_multipart_upload(
                Bucket=ref.bucket, Key=ref.key, UploadId=upload["UploadId"]
            )
            log.info("aborted an upload of %s abandoned since %s", ref, upload["Initiated"])


def delete(ref: ObjectRef) -> None:
    """Remove one object (nothing there is no error, as S3 has it)."""
    with _calls(ref, writing=True):
        client().delete_object(Bucket=ref.bucket, Key=ref.key)


def delete_prefix(bucket: str, prefix: str) -> int:
    """Remove every object under `prefix` and abort uploads under it; returns objects removed."""
    s3 = client()
    removed = 0
    with _calls(f"{SCHEME}{bucket}/{prefix}", writing=True):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            batch = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if batch:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                removed += len(batch)
        for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return removed


def work_folders(bucket: str) -> dict[str, float]:
    """The job folders under WORK_PREFIX in `bucket`: name -> newest object's time (epoch)."""
    newest: dict[str, float] = {}
    with _calls(f"{SCHEME}{bucket}/{WORK_PREFIX}"):
        pages = (
            client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=WORK_PREFIX)
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"][len(WORK_PREFIX) :].partition("/")[0]
                stamp = item["LastModified"].astimezone(timezone.utc).timestamp()
                newest[name] = max(newest.get(name, 0.0), stamp)
    return newest
