"""Multiprocess-mode wiring: the shared metrics directory and per-process liveness locks."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

# No prometheus_client import here, not even indirectly: prometheus_client picks its value
# storage (single- or multi-process) once, when it is first imported, from the environment that
# `prepare()` sets. Importing it here would make `prepare()` too late by construction.

log = logging.getLogger(__name__)

#: Where worker processes write their metric files (default: <tmp>/facefusion-metrics).
ENV_DIR = "FACEFUSION_METRICS_DIR"
#: The variable prometheus_client itself reads at import time.
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Per-process lock files: held (flock) by each live metrics-writing process for its lifetime.
LOCK_PREFIX = "pid_"
LOCK_SUFFIX = ".lock"


#: How long a starting process waits for its own pid lock (normally free at once).
LOCK_WAIT_SECONDS = 1.0

_LIVE_GAUGE_MODES = ("liveall", "livemin", "livemax", "livesum", "livemostrecent")


#: The file a worker launcher holds (flock) for as long as it owns the directory; its pid inside.
#: Not a wipe suffix: a second launcher must see it to refuse, not delete it.
OWNER_FILE = "launcher.pid"


class MetricsModeError(RuntimeError):
    """prometheus_client was imported before `prepare()`, or for a different directory."""


class DirectoryInUse(RuntimeError):
    """Another live launcher owns the metrics directory; the message names its pid."""


def directory_name(raw: str) -> Path:
    """A metrics directory named on a command line (argparse type); an empty name (an unset
    variable in a script) is refused: it read as the current directory, which was wiped."""
    import argparse

    if not raw.strip():
        raise argparse.ArgumentTypeError(
            "an empty name is not a directory (it would be the current one)"
        )
    return Path(raw)


def default_dir() -> Path:
    """FACEFUSION_METRICS_DIR, else a fixed folder under the system temp directory."""
    configured = os.environ.get(ENV_DIR, "")
    if configured:
        return Path(configured).expanduser()
    return Path(tempfile.gettempdir()) / "facefusion-metrics"


def prepare(directory: Path, *, wipe: bool) -> None:
    """Put this process (and every process it starts) in multiprocess mode on `directory`.

    Call it at the entrypoint, before anything imports prometheus_client. `wipe=True` belongs to
    fleet start only: it deletes every process's files, so counters restart from zero.
    """
    directory = Path(directory).expanduser().absolute()
    _check_not_imported_elsewhere(directory, wipe=wipe)
    directory.mkdir(parents=True, exist_ok=True)
    if wipe:
        _wipe(directory)
    os.environ[PROMETHEUS_ENV] = str(directory)
    register_process()


def claim_directory(directory: Path) -> int:
    """Own `directory` for this launcher's lifetime: the held lock's fd (never inherited by the
    children, so it goes with the launcher, even SIGKILLed). A second launcher on the same
    directory would wipe the first one's live files and merge both fleets into one exporter's
    figures, so it is refused: DirectoryInUse. -1 when the lock file cannot be made (a full or
    read-only metrics filesystem costs metrics, never the workers)."""
    directory = Path(directory).expanduser().absolute()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / OWNER_FILE
    try:
        fd = acquire_lock(path, blocking=False)
    except OSError as exc:
        log.warning("metrics directory %s: no owner lock (%s); not guarded", directory, exc)
        return -1
    if fd is None:
        try:
            holder = path.read_text(encoding="ascii", errors="replace").strip() or "?"
        except OSError:
            holder = "?"
        raise DirectoryInUse(
            f"metrics directory {directory} belongs to the worker launcher with pid {holder}; "
            "give each launcher on a host its own --metrics-dir and --metrics-port"
        )
    with contextlib.suppress(OSError):  # the pid only names the owner in the refusal
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


def keep_claim(directory: Path, fd: int) -> int:
    """Called by the launcher every few seconds: its lock file must still be the one it locked.
    Someone who deleted the directory took the lock with it (the exporter recreates the
    directory, empty), and a second launcher could then claim it; this claims it again. Returns
    the fd now held (the same one when nothing changed or it cannot be claimed again)."""
    if fd < 0:
        return fd
    path = Path(directory).expanduser().absolute() / OWNER_FILE
    held = os.fstat(fd)
    try:
        now = os.stat(path)
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
    except FileNotFoundError:
        pass
    except OSError:
        return fd  # cannot tell: keep what is held
    log.error("metrics directory %s lost its owner lock (deleted?); claiming it again", directory)
    try:
        again = claim_directory(directory)
    except DirectoryInUse as exc:
        log.error("%s", exc)
        return fd
    if again < 0:
        return fd
    os.close(fd)
    return again


def _check_not_imported_elsewhere(directory: Path, *, wipe: bool) -> None:
    values = sys.modules.get("prometheus_client.values")
    if values is None:
        return
    value_class = getattr(values, "ValueClass", None)
    if not getattr(value_class, "_multiprocess", False):
        raise MetricsModeError(
            "prometheus_client was already imported in single-process mode; call "
            "facefusion_tasks.metrics.multiproc.prepare() before anything imports it"
        )
    current = os.environ.get(PROMETHEUS_ENV, "")
    if current and Path(current).absolute() != directory:
        raise MetricsModeError(
            f"prometheus_client is already in multiprocess mode on {current}, not {directory}"
        )
    if wipe:
        # This process may already have its own files open in there; deleting them would make
        # its later increments vanish into unlinked inodes.
        raise MetricsModeError("wipe=True after prometheus_client was imported would lose data")


#: What `prepare(wipe=True)` removes: the names prometheus_client, the compactor (leftovers of
#: an interrupted compaction too) and the liveness locks give their files. Anything else is left
#: alone: the directory may be misconfigured to point at a shared folder (any *.db went, so the
#: current directory, named by mistake, lost its own databases).
_OURS = re.compile(
    r"(?:(?:counter|histogram|summary|gauge(?:_[a-z]+)?)_(?:\d+|archive)\.db"
    r"(?:\.(?:stage|journal|new|tmp|corrupt))*|pid_\d+\.lock)"
)


def _wipe(directory: Path) -> None:
    removed = 0
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) and _OURS.fullmatch(entry.name):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    log.info("metrics directory %s wiped (%d files)", directory, removed)


def lock_path(directory: Path, pid: int) -> Path:
    """The lock file a live process with this pid holds."""
    return Path(directory) / f"{LOCK_PREFIX}{pid}{LOCK_SUFFIX}"


def acquire_lock(path: Path, *, blocking: bool) -> int | None:
    """flock `path` exclusively; the open fd, or None if another process holds it (non-blocking).

    The compactor unlinks a dead pid's lock file while holding it, so a lock won on a file that
    is no longer at `path` protects nothing: check the inode and retry on the current file.
    """
    flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        held = os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


class _Registration:
    """The lock this process holds on its own pid, so the compactor never takes it for dead."""

    def __init__(self) -> None:
        self.pid = 0
        self.fd = -1
        self.directory = ""
        self.fork_hook_installed = False
        self.mutex = threading.Lock()


_registration = _Registration()


def register_process() -> None:
    """Hold this pid's lock in the multiprocess directory (no-op outside multiprocess mode).

    Must run before the process opens its first metric file: definitions.py calls it before
    constructing metrics, and forked children re-run it from an at-fork hook before any of their
    own code runs. Idempotent.
    """
    directory = os.environ.get(PROMETHEUS_ENV, "")
    if not directory:
        return
    with _registration.mutex:
        pid = os.getpid()
        if _registration.pid == pid and _registration.directory == directory:
            return
        if _registration.fd >= 0 and _registration.pid == pid:
            os.close(_registration.fd)  # same process, new directory (tests): move the lock
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd = _acquire_own_lock(lock_path(Path(directory), pid))
        _registration.pid, _registration.fd, _registration.directory = pid, fd, directory
        if not _registration.fork_hook_installed:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _registration.fork_hook_installed = True


def _acquire_own_lock(path: Path) -> int:
    """Our pid's lock; -1 if something else keeps holding it.

    The compactor holds a pid's lock for milliseconds, so waiting is short. But a process
    forked by C code (no at-fork hook, no exec) inherits its parent's lock fd and can keep a
    dead pid's lock held for its own lifetime; a new process that gets that pid number must not
    hang on it (Celery kills a child whose init takes 4 s). Give up after a while: the compactor
    then sees the lock held and leaves this pid alone, which is the safe direction.
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        fd = acquire_lock(path, blocking=False)
        if fd is not None:
            return fd
        if time.monotonic() >= deadline:
            log.warning("metrics pid lock %s stays held by another process; going on without", path)
            return -1
        time.sleep(0.005)


def _after_fork_in_child() -> None:
    # The inherited fd shares the parent's lock (flock belongs to the open file description):
    # close our copy without unlocking, so the parent's lock dies with the parent, not with us.
    if _registration.fd >= 0:
        with contextlib.suppress(OSError):
            os.close(_registration.fd)
    _registration.pid, _registration.fd, _registration.directory = 0, -1, ""
    _registration.mutex = threading.Lock()  # the parent's may have been held by another thread
    try:
        register_process()
    except Exception:  # an at-fork hook cannot propagate; metrics must never kill a worker
        log.exception("could not take the metrics pid lock in child %d", os.getpid())


def mark_dead(pid: int, directory: Path | None = None) -> None:
    """Drop a finished process's live-mode gauge files (Celery's worker_process_shutdown).

    Counters and histograms stay: they must keep counting after the process is gone, and the
    exporter's compactor folds them into the archive files. Safe to call for any pid, twice.
    """
    folder = Path(directory) if directory is not None else _current_dir()
    for mode in _LIVE_GAUGE_MODES:
        (folder / f"gauge_{mode}_{pid}.db").unlink(missing_ok=True)


def _current_dir() -> Path:
    configured = os.environ.get(PROMETHEUS_ENV, "")
    return Path(configured) if configured else default_dir()


def reopen_files() -> bool:
    """Point this process's metric values at new files in its (deleted and recreated)
    directory, keeping their values; True if done.

    prometheus_client does exactly this after a fork (its pid check closes every file and
    re-reads every value from the new pid's file); here the pid is unchanged but the files
    were deleted under the process, so trigger that path and write the kept values back.
    It reaches into the library's closure: on any other shape, return False (the caller then
    disables metrics for this process instead).
    """
    values_module = sys.modules.get("prometheus_client.values")
    value_class = getattr(values_module, "ValueClass", None)
    check = getattr(value_class, "_MmapedValue__check_for_pid_change", None)
    write = getattr(value_class, "inc", None)
    try:
        cells = dict(zip(check.__code__.co_freevars, check.__closure__, strict=True))  # type: ignore[union-attr]
        lock = dict(zip(write.__code__.co_freevars, write.__closure__, strict=True))["lock"]  # type: ignore[union-attr]
        pid, values = cells["pid"].cell_contents, cells["values"].cell_contents
        lock = lock.cell_contents
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    with lock:
        kept = [(value, value._value, value._timestamp) for value in values]
        pid["value"] = None  # "the pid changed": the next check reopens every file
        if values:
            check(values[0])  # type: ignore[misc]
        for value, number, stamp in kept:
            value._value, value._timestamp = number, stamp
            value._file.write_value(value._key, number, stamp)
    with _registration.mutex:  # the pid lock went with the directory: take it again
        if _registration.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(_registration.fd)
        _registration.pid, _registration.fd, _registration.directory = 0, -1, ""
    register_process()
    return True
