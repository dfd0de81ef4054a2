"""Whether a supervised Celery worker still has a pool: its live child processes, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

#: The kernel's process table.
PROC = Path("/proc")


def live_children(pid: int, *, proc: Path = PROC) -> list[int]:
    """The pids whose parent is `pid` and that have not exited (zombies, dead but not yet
    collected, do not count)."""
    found: list[int] = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = (proc / entry / "stat").read_text(errors="replace")
        except OSError:  # exited while the table was read
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 2 and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found
