"""Shared storage: every job path must resolve inside a configured root, every object lie in an
allowed bucket."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from facefusion_tasks import objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason


def confine(path: Path | str, settings: Settings, *, what: str) -> Path:
    """The resolved path, or InputError when it escapes every storage root (symlinks and
    `..` resolved first, so neither can smuggle a path out)."""
    roots = settings.roots()
    if not roots:
        raise InputError(
            "FACEFUSION_STORAGE_ROOTS is not set: distributed jobs need the shared directories "
            "every worker can see",
            reason=Reason.CONFIG,
        )
    resolved = Path(path).expanduser().resolve()
    # A job records and hands on the resolved path: a symlink may lead to a name that is not
    # UTF-8 where the name given was.
    objects.check_utf8(str(resolved))
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        shown = ":".join(str(r) for r in roots)
        raise InputError(
            f"{path}: {what} is outside the storage roots ({shown})", reason=Reason.PATH
        )
    return resolved


def locate(value: str | PathLike[str] | ObjectRef, settings: Settings, *, what: str) -> Location:
    """A job's file confined by the one rule for its kind: an object (s3://bucket/key) must be
    in an allowed bucket, a path inside the storage roots."""
    where = objects.location(value)
    if isinstance(where, ObjectRef):
        return objects.confine(where, settings, what=what)
    return confine(where, settings, what=what)


def work_dir(settings: Settings) -> Path:
    """Where segments of running jobs live (inside the roots, shared by all workers)."""
    if settings.work_dir:
        return confine(settings.work_dir, settings, what="work directory")
    roots = settings.roots()
    if not roots:
        confine(".", settings, what="work directory")  # raises the clear error
    return roots[0] / ".facefusion-work"
