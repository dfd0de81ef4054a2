"""Temp files beside a destination that become it only on commit, and sweeping stale ones.

A temp must sit in the destination's directory (same filesystem: the final rename is atomic),
so a process killed mid-write (SIGKILL, OOM killer, power loss) leaves one behind. Its name
carries the host (and pid namespace) and pid that wrote it; whoever next writes to the same
destination removes temps whose writer is gone (same host and namespace, pid not running) or
that have not changed for a day (any host: shared storage). A live writer's temp is kept.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from facefusion_tasks.errors import MediaError, OutputError
from facefusion_tasks.reasons import Reason

log = logging.getLogger(__name__)

#: A temp nobody has written to for this long is abandoned, whoever made it.
STALE_SECONDS = 24 * 3600.0
#: The marker in every temp's name ("." + stem + "." + host-pid-token + MARKER + suffix).
MARKER = ".partial"
#: The names of the temps this process is writing: one of its own not among them was left by a
#: cleanup that failed (a directory remounted read-only), which the pid rule would keep while
#: the process lives. Named before the file exists, so no sweep in another thread finds it
#: unnamed; a forked child (Celery's pool) starts with none of its parent's.
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()
#: The directory of each temp an encoder is writing, held open (create_temp's hold_dir): a
#: directory moved (or removed) while its temp is written is still reached through it, so
#: the temp is deleted wherever it went, and the writer can tell the user's output folder
#: went away from a failed encode. Only the writer's: it always ends in commit or remove.
_DIRS: dict[str, int] = {}


def _forget_parents() -> None:
    global _LIVE_LOCK
    _LIVE.clear()
    for fd in _DIRS.values():  # copies of the parent's: they would pin its directories here
        with contextlib.suppress(OSError):
            os.close(fd)
    _DIRS.clear()
    _LIVE_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_parents)


@functools.cache
def _host() -> str:
    """Who may judge this name's pid: the host name, plus the kernel boot and pid namespace
    (containers with one host name on two machines, or two containers on one machine, must
    never take each other's live pid for a dead one)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return name
    return f"{name}_{hashlib.sha1(f'{boot}{namespace}'.encode()).hexdigest()[:8]}"


#: Longest file name most filesystems take (bytes).
NAME_MAX = 255


def _temp_stem(destination: Path) -> str:
    """The destination's stem as its temps carry it: whole, or (when a temp's name would pass
    NAME_MAX, as for a 250-byte name that is itself fine) cut and tagged with its digest, the
    same way every time, so the sweep finds them."""
    # "." stem "." host "-" pid (at most 10 digits) "-" token MARKER suffix
    overhead = (
        1 + 1 + len(_host()) + 1 + 10 + 1 + 8 + len(MARKER) + len(destination.suffix.encode())
    )
    stem = destination.stem
    if len(stem.encode()) + overhead <= NAME_MAX:
        return stem
    tag = "~" + hashlib.sha1(stem.encode()).hexdigest()[:8]
    room = NAME_MAX - overhead - len(tag)
    return stem.encode()[: max(room, 0)].decode(errors="ignore") + tag


def _pattern(destination: Path) -> re.Pattern[str]:
    return re.compile(
        rf"^\.{re.escape(_temp_stem(destination))}\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-"
        rf"[0-9a-f]{{8}}{re.escape(MARKER)}{re.escape(destination.suffix)}$"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(destination: Path, *, now: float | None = None) -> list[Path]:
    """Remove abandoned temps of `destination`; returns what was removed."""
    pattern = _pattern(destination)
    now = time.time() if now is None else now
    removed: list[Path] = []
    host = _host()
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(match.group("pid"))
        ours = pid == os.getpid() and entry.name not in _live()
        dead = match.group("host") == host and (ours or not _pid_alive(pid))
        if dead or age > STALE_SECONDS:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    if removed:
        log.info("removed %d abandoned temp file(s) of %s", len(removed), destination)
    return removed


def create_temp(destination: Path, *, hold_dir: bool = False) -> Path:
    """A new hidden, empty file beside `destination`, keeping its extension, with the mode
    the umask gives (0644 typically; mkstemp would give 0600). Abandoned temps of the same
    destination are swept first. `hold_dir`: keep its directory open until commit or remove
    (see _DIRS), for a caller that always ends in one of them."""
    sweep(destination)
    stem = f".{_temp_stem(destination)}.{_host()}-{os.getpid()}"
    for _ in range(100):
        temp = destination.with_name(f"{stem}-{secrets.token_hex(4)}{MARKER}{destination.suffix}")
        with _LIVE_LOCK:
            _LIVE.add(temp.name)
        try:
            fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except OSError as exc:
            _forget(temp)
            if isinstance(exc, FileExistsError):
                continue
            if exc.errno == errno.ENOSPC:
                raise MediaError(f"{destination}: no space left", reason=Reason.NO_SPACE) from None
            raise OutputError(f"{destination}: cannot write there ({exc.strerror})") from None
        os.close(fd)
        if hold_dir:
            with contextlib.suppress(OSError), _LIVE_LOCK:
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                _DIRS[str(temp)] = os.open(temp.parent, flags)
        return temp
    raise OutputError(f"{destination}: cannot create a temporary file beside it")


def moved(temp: Path) -> bool:
    """Whether the directory `temp` was made in is no longer at its path (moved, removed, or
    replaced by another): the user's doing, not the encoder's."""
    with _LIVE_LOCK:  # held while the descriptor is used: a remove cannot close it meanwhile
        fd = _DIRS.get(str(temp))
        if fd is None:
            return False
        try:
            held, there = os.fstat(fd), os.stat(temp.parent)
        except OSError:
            return True
    return (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino)


def _live() -> frozenset[str]:
    with _LIVE_LOCK:
        return frozenset(_LIVE)


def _forget(temp: Path) -> int | None:
    """This process no longer writes `temp`; returns its directory's descriptor, if held (the
    caller closes it)."""
    with _LIVE_LOCK:
        _LIVE.discard(temp.name)
        return _DIRS.pop(str(temp), None)


def remove(temp: Path) -> None:
    """Delete a temp that will not be committed, as well as can be: a failure here (the
    directory went read-only) is logged, never raised over the error that made the caller
    give up, and the next write to the same destination sweeps what is left. Through its
    directory's descriptor: found even where the directory was moved meanwhile."""
    fd = _forget(temp)
    try:
        if fd is None:
            temp.unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp.name, dir_fd=fd)
    except OSError as exc:
        log.warning("%s: cannot remove it (%s); the next write there will", temp, exc.strerror)
    finally:
        if fd is not None:
            os.close(fd)


def commit(temp: Path, destination: Path) -> Path:
    """Move a verified temp into place (atomic); the temp is gone either way. A file it
    replaces keeps its permission bits: the temp has the umask's (0644), and a 0600 photo
    swapped in place would otherwise come out readable by every user."""
    # Best effort: some mounts (vfat, CIFS, FUSE) refuse a chmod, which must not fail the
    # commit; set-id and sticky bits are not carried.
    with contextlib.suppress(OSError):
        replaced = destination.lstat()
        if stat.S_ISREG(replaced.st_mode):
            os.chmod(temp, replaced.st_mode & 0o777)
    try:
        os.replace(temp, destination)
    except OSError as exc:
        remove(temp)
        raise OutputError(f"{destination}: cannot move into place ({exc.strerror})") from None
    fd = _forget(temp)
    if fd is not None:
        os.close(fd)
    return destination


def write_temp(destination: Path, data: bytes) -> Path:
    """A new temp beside `destination` holding `data` (an encoded image); a full disk is
    no_space, any other failure to write there an OutputError. Nothing is left on failure."""
    temp = create_temp(destination)
    try:
        with temp.open("wb") as handle:
            handle.write(data)
    except OSError as exc:
        remove(temp)
        if exc.errno == errno.ENOSPC:
            raise MediaError(f"{destination}: no space left", reason=Reason.NO_SPACE) from None
        raise OutputError(f"{destination}: cannot write there ({exc.strerror})") from None
    return temp


@dataclass(frozen=True)
class StagedOutput:
    """A verified file waiting beside its destination (a stitched video, a swapped image):
    commit() renames it into place, discard() removes it. The caller decides in between (the
    job store's COMMITTING state), so a cancel and a commit can never both win."""

    temp: Path
    destination: Path

    def commit(self) -> Path:
        """Move it into place (atomic)."""
        return commit(self.temp, self.destination)

    def discard(self) -> None:
        """Remove it; the destination is untouched."""
        remove(self.temp)
