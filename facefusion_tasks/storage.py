"""Shared storage: every job path must resolve inside a configured root, every object lie in an
allowed bucket."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from facefusion_tasks import objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, OutputError, Unconfined
from facefusion_tasks.filekind import resolved as resolve_path
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason

#: The work directory's name under the first root (FACEFUSION_WORK_DIR unset): the bucket
#: prefix's name, so a fleet's segments are found by one name on a disk and in a bucket.
WORK_NAME = objects.WORK_PREFIX.rstrip("/")


def confine(path: Path | str, settings: Settings, *, what: str, output: bool = False) -> Path:
    """The resolved path, or InputError when it escapes every storage root (symlinks and
    `..` resolved first, so neither can smuggle a path out). An `output` keeps its own name:
    see output_path."""
    roots = settings.roots()
    if not roots:
        raise Unconfined(
            "FACEFUSION_STORAGE_ROOTS is not set: distributed jobs need the shared directories "
            "every worker can see",
            reason=Reason.CONFIG,
        )
    resolved = output_path(Path(path)) if output else resolve_path(Path(path))
    # A job records and hands on the resolved path: a symlink may lead to a name that is not
    # UTF-8 where the name given was.
    objects.check_utf8(str(resolved))
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        shown = ":".join(str(r) for r in roots)
        raise Unconfined(f"{path}: {what} is outside the storage roots ({shown})")
    return resolved


def output_path(path: Path) -> Path:
    """Where an output goes: its directory resolved, its own name kept. The output replaces
    whatever entry has that name (by rename: a symlink there is replaced, not followed), so
    the name must not be resolved either: a link put there after the job was accepted led
    the job to write through it, over its own target or another job's input."""
    if path.name in ("", ".", ".."):
        return resolve_path(path)  # a directory, refused as an output later
    return resolve_path(path.parent) / path.name


def locate(
    value: str | PathLike[str] | ObjectRef, settings: Settings, *, what: str, output: bool = False
) -> Location:
    """A job's file confined by the one rule for its kind: an object (s3://bucket/key) must be
    in an allowed bucket, a path inside the storage roots; neither in the work area."""
    where = objects.location(value)
    if isinstance(where, ObjectRef):
        where = objects.confine(where, settings, what=what)
    else:
        where = confine(where, settings, what=what, output=output)
    check_outside_work(where, settings, what=what, output=output)
    return where


def work_dir(settings: Settings) -> Path:
    """Where segments of running jobs live (inside the roots, shared by all workers)."""
    if settings.work_dir:
        return confine(Path(settings.work_dir).expanduser(), settings, what="work directory")
    roots = settings.roots()
    if not roots:
        confine(".", settings, what="work directory")  # raises the clear error
    return roots[0] / WORK_NAME


def check_fleet_work_dir(settings: Settings) -> None:
    """At a worker's start, with one line: its work directory must lie inside the roots (else
    every job it took failed, exit 1) and have a name ffmpeg's concat list can hold (a line
    break failed every stitch). A fleet with no roots keeps its segments in a bucket, and
    never uses its work directory."""
    if not settings.roots():
        return
    try:
        where = work_dir(settings)
    except InputError as exc:
        raise InputError(f"FACEFUSION_WORK_DIR: {exc}", reason=Reason.CONFIG) from None
    if any(c in str(where) for c in "\r\n"):
        raise InputError(
            f"FACEFUSION_WORK_DIR {str(where)!r}: a line break in its name cannot be listed for "
            "ffmpeg's concat demuxer; choose another directory",
            reason=Reason.CONFIG,
        )


def check_outside_work(
    where: Location, settings: Settings, *, what: str, output: bool = False
) -> None:
    """Refuse a job file in the work area: the work directory (the configured one, or the
    default name under any root: a fleet may list its roots in another order) or the segments'
    prefix in a bucket. What lies there is removed when a job ends, so an output would vanish
    after its job succeeded, an input while a job still reads it. OutputError for the output,
    InputError (reason path) for an input."""
    if isinstance(where, ObjectRef):
        area = f"{objects.SCHEME}{where.bucket}/{objects.WORK_PREFIX}"
        inside = where.key.startswith(objects.WORK_PREFIX)
    else:
        resolved = output_path(where) if output else resolve_path(where)
        dirs = [root / WORK_NAME for root in settings.roots()]
        if settings.work_dir:
            dirs.append(resolve_path(Path(settings.work_dir).expanduser()))
        found = next((d for d in dirs if resolved == d or resolved.is_relative_to(d)), None)
        area, inside = str(found), found is not None
    if not inside:
        return
    message = f"{where}: {what} is inside the work directory {area}, whose files go when jobs end"
    if output:
        raise OutputError(message)
    raise InputError(message, reason=Reason.PATH)
