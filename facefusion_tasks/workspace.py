"""Where a distributed job's segments live (the shared storage, or a job prefix in its output's
bucket), and the host-local scratch a task uses for what it reads whole or writes before upload."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from facefusion_tasks import objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import FaceFusionError, InputError, Unconfined, WorkerConfigError
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason
from facefusion_tasks.storage import work_dir
from facefusion_tasks.video.argv import muxer_for
from facefusion_tasks.video.codecs import segment_muxer

log = logging.getLogger(__name__)

#: A scratch entry untouched this long was left by a task killed outright: removed.
STALE_SCRATCH_SECONDS = 24 * 3600.0
#: The host's cache of objects read whole (source and reference images), inside the scratch.
IMAGE_CACHE = "objects"


def fleet_work_dir(settings: Settings) -> Path:
    """This host's work directory, which must lie in its storage roots: outside them it is the
    host's configuration that is wrong, never a job's input (WorkerConfigError)."""
    try:
        return work_dir(settings)
    except Unconfined as exc:
        raise WorkerConfigError(
            f"work directory: {exc}; every host needs the same FACEFUSION_STORAGE_ROOTS"
        ) from None


def for_job(settings: Settings, job: Mapping[str, str]) -> Settings:
    """`settings` with the work directory the job's plan recorded: every chunk, the stitch,
    `retry` and `cancel` find its segments there, whatever their own FACEFUSION_WORK_DIR says
    (a producer rarely sets it; a host configured apart would scatter the segments)."""
    recorded = job.get("work_dir", "")
    if not recorded:
        return settings
    chosen = settings.replace(work_dir=recorded)
    fleet_work_dir(chosen)  # reachable from here
    return chosen


def segment_dir(settings: Settings, job_id: str) -> Path:
    """The job's scratch directory on shared storage."""
    return work_dir(settings) / job_id


def segment_path(settings: Settings, job_id: str, index: int, *, muxer: str = "mp4") -> Path:
    """Where chunk `index` of a job whose output uses `muxer` writes its encoded frames
    (replaced atomically on a rerun), in the container segment_muxer() picks for it."""
    return segment_dir(settings, job_id) / _segment_name(index, muxer)


def _segment_name(index: int, muxer: str) -> str:
    suffix = "webm" if segment_muxer(muxer) == "webm" else "mp4"
    return f"seg-{index:05d}.{suffix}"


def work_bucket(output: str) -> str | None:
    """The bucket holding a job's segments: its output's, when the output is an object (the
    workers then need no shared directory); None for a job on the shared storage."""
    return objects.parse(output).bucket if objects.is_uri(output) else None


def work_prefix(job_id: str) -> str:
    """The key prefix of a job's segments in its work bucket."""
    return f"{objects.WORK_PREFIX}{job_id}/"


def segment(settings: Settings, job_id: str, index: int, *, output: str) -> Location:
    """Where chunk `index` of the job whose output is `output` keeps its segment, in the
    container segment_muxer() picks for that output."""
    muxer = muxer_for(output)
    bucket = work_bucket(output)
    if bucket is None:
        return segment_path(settings, job_id, index, muxer=muxer)
    return ObjectRef(bucket, f"{work_prefix(job_id)}{_segment_name(index, muxer)}")


def segment_present(settings: Settings, job_id: str, index: int, *, output: str) -> bool:
    """Whether chunk `index`'s segment is still where its chunk wrote it (a file, or an
    object)."""
    where = segment(settings, job_id, index, output=output)
    if isinstance(where, Path):
        return where.is_file()
    try:
        objects.head(where)
    except InputError:  # missing
        return False
    return True


def prepare(settings: Settings, job_id: str, *, output: str) -> None:
    """Make the job's segment folder where one is needed (a key prefix needs nothing)."""
    if work_bucket(output) is None:
        segment_dir(settings, job_id).mkdir(parents=True, exist_ok=True)


def remove_segments(settings: Settings, job_id: str, *, output: str) -> None:
    """Remove the job's segments; for objects a failure is logged and left to the retention
    sweep (liveness.sweep_work_dirs), which removes them once the job is over."""
    bucket = work_bucket(output)
    if bucket is None:
        shutil.rmtree(segment_dir(settings, job_id), ignore_errors=True)
        return
    try:
        objects.delete_prefix(bucket, work_prefix(job_id))
    except FaceFusionError as exc:
        log.warning("job %s: segments left for the sweep: %s", job_id, exc)


def scratch_base(settings: Settings) -> Path:
    """The scratch directory, made if missing. The default one lies in the shared temp
    directory, so it must be this user's own: a real directory (not a symlink someone planted,
    through which the stale sweep would empty another directory), owned by this user and
    writable by no one else."""
    base = settings.scratch()
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(base)
    except OSError as exc:
        raise InputError(
            f"scratch directory {base}: {exc.strerror or exc}", reason=Reason.CONFIG
        ) from exc
    if not settings.scratch_dir and (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise InputError(
            f"scratch directory {base} is not this user's own directory (a symlink, another "
            "owner, or writable by others): remove it or set FACEFUSION_SCRATCH_DIR",
            reason=Reason.CONFIG,
        )
    return base


#: Why no directory can be made in a scratch directory that is the setting's fault.
_UNUSABLE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS})


@contextlib.contextmanager
def scratch(settings: Settings, job_id: str) -> Iterator[Path]:
    """A fresh directory of this host's own for one task, removed when it ends. A task killed
    outright leaves one: the next task on this host removes it after a day."""
    base = scratch_base(settings)
    _sweep(base)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=base))
    except OSError as exc:
        if exc.errno not in _UNUSABLE:
            raise  # full, an I/O error, a stale handle: the host's state, not its setting
        # /proc, a read-only mount, no write permission: the setting, one line, exit 2.
        raise InputError(
            f"scratch directory {base}: cannot make a directory in it ({exc.strerror or exc})",
            reason=Reason.CONFIG,
        ) from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def local_copy(settings: Settings, where: Location) -> Path:
    """A path to read `where` from: itself, or the object fetched into this host's cache, kept
    by its ETag so every chunk of a job reads the same file (and reuses its face embedding)."""
    if isinstance(where, Path):
        return where
    etag = str(objects.head(where).get("ETag", ""))
    digest = hashlib.sha1(f"{where}\n{etag}".encode()).hexdigest()[:20]
    folder = scratch_base(settings) / IMAGE_CACHE / digest
    path = folder / (where.name or "object")
    if path.is_file():
        os.utime(folder)  # in use: not stale
        return path
    folder.mkdir(parents=True, exist_ok=True)
    return objects.download(where, path)


def _sweep(base: Path, *, now: float | None = None) -> None:
    now = time.time() if now is None else now
    for parent in (base, base / IMAGE_CACHE):
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                if entry.name == IMAGE_CACHE:
                    continue
                with contextlib.suppress(OSError):
                    # lstat: a symlink is removed itself, never followed.
                    if now - entry.lstat().st_mtime <= STALE_SCRATCH_SECONDS:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
