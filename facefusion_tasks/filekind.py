"""What a path names when it is not a regular file, in the words of a one-line error."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason

_MISSING = "no such file"
#: File types that are not regular files, as a message names them.
_KINDS = (
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISFIFO, "is a pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a device, not a regular file"),
    (stat.S_ISBLK, "is a device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def not_a_file(path: Path) -> str | None:
    """Why `path` is not a regular file to read ("no such file", "is a symlink loop", "is a
    pipe (FIFO), …"), or None when it is one. Permission and name-length errors propagate as
    OSError (policy calls them the user's path)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        if exc.errno == errno.ENOTDIR:
            return f"{_MISSING} (a parent is not a directory)"
        raise
    return _kind(mode)


def resolved(path: Path) -> Path:
    """`path.resolve()`, with a symlink loop on the way refused as the user's path (InputError,
    reason path): Python before 3.13 raises a bare RuntimeError for one."""
    try:
        return path.resolve()
    except RuntimeError:
        raise InputError(f"{path}: is a symlink loop", reason=Reason.PATH) from None


def existing_non_file(path: Path) -> str | None:
    """Why an existing `path` may not be replaced by a regular file (a directory, a pipe, a
    device), or None when nothing is there or a regular file (or a link to one) is."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return _kind(mode)


def require_file(
    path: object, *, shown: str | None = None, reason: Reason = Reason.NOT_PLAIN_FILE
) -> None:
    """InputError unless a local `path` is a regular file (objects pass), named `shown` (its
    name by default), with reason missing_file or `reason`. Also checked again right before
    ffmpeg opens a job's target, which may have changed since it was probed: a pipe swapped in
    would block the open for the whole chunk time limit."""
    if not isinstance(path, Path):
        return
    why = not_a_file(path)
    if why is not None:
        missing = why.startswith(_MISSING)
        raise InputError(
            f"{shown or path.name}: {why}", reason=Reason.MISSING_FILE if missing else reason
        )


def _kind(mode: int) -> str | None:
    return next((what for test, what in _KINDS if test(mode)), None)
