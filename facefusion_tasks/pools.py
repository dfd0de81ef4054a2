"""Whether a supervised Celery worker still has a pool: its live child processes, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

#: The kernel's process table.
PROC = Path("/proc")


def live_children(pid: int, *, proc: Path = PROC) -> list[int] | None:
    """The pids whose parent is `pid` and that have not exited (zombies, dead but not yet
    collected, do not count); None when the process table cannot be read, so a caller never
    takes "cannot tell" for "none"."""
    candidates = _listed_children(pid, proc)
    if candidates is None:  # a kernel without the children lists: the whole table
        try:
            candidates = [int(entry) for entry in os.listdir(proc) if entry.isdigit()]
        except OSError:
            return None
    return [child for child in candidates if _live_child_of(child, pid, proc)]


def _listed_children(pid: int, proc: Path) -> list[int] | None:
    """The children each thread of `pid` forked, from /proc/PID/task/TID/children (a few
    reads, where a scan of the whole table reads every process's stat); None without it."""
    try:
        threads = os.listdir(proc / str(pid) / "task")
    except OSError:
        return None
    found: list[int] = []
    for thread in threads:
        try:
            text = (proc / str(pid) / "task" / thread / "children").read_text()
        except FileNotFoundError:
            if not (proc / str(pid) / "task" / thread).exists():
                continue  # the thread ended while the list was read
            return None  # CONFIG_PROC_CHILDREN off
        except OSError:
            return None
        found += [int(child) for child in text.split()]
    return found


def _live_child_of(child: int, pid: int, proc: Path) -> bool:
    try:
        stat = (proc / str(child) / "stat").read_text(errors="replace")
    except OSError:  # exited while the table was read
        return False
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
    fields = stat.rpartition(")")[2].split()
    return len(fields) >= 2 and fields[1] == str(pid) and fields[0] not in ("Z", "X")
