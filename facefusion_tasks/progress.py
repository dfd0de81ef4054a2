"""Whether this process is getting anywhere: the CPU its working threads and child processes use, read from /proc."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from facefusion_tasks.pools import PROC, live_children

#: How deep below this process child processes are followed (ffmpeg forks none; a shell might).
_DEPTH = 3


def cpu_ticks(*, excluding: Collection[int] = (), proc: Path = PROC) -> int | None:
    """Clock ticks of CPU used so far by this process's threads (but `excluding`, native thread
    ids: a heartbeat's own, whose Redis calls would pass for work), by the children it has
    reaped, and by its live descendants. It changes while any of them computes, reads or
    writes; it stands still while all of them wait on something that never answers (a
    stopped ffmpeg, a hung mount). None when /proc cannot tell."""
    pid = os.getpid()
    try:
        total = sum(
            _ticks(proc / str(pid) / "task" / tid / "stat", children=False)
            for tid in os.listdir(proc / str(pid) / "task")
            if int(tid) not in excluding
        )
        total += _reaped(proc / str(pid) / "stat")
    except (OSError, ValueError, IndexError):
        return None
    return total + _descendants(pid, proc, _DEPTH)


def _descendants(pid: int, proc: Path, depth: int) -> int:
    if depth == 0:
        return 0
    total = 0
    for child in live_children(pid, proc=proc) or []:
        try:
            total += _ticks(proc / str(child) / "stat", children=True)
        except (OSError, ValueError, IndexError):
            continue  # it ended while it was read: its ticks went to its parent
        total += _descendants(child, proc, depth - 1)
    return total


def _fields(stat: Path) -> list[str]:
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
    return stat.read_text(errors="replace").rpartition(")")[2].split()


def _ticks(stat: Path, *, children: bool) -> int:
    """utime + stime (fields 14 and 15 of proc(5)), plus cutime + cstime with `children`."""
    fields = _fields(stat)
    used = int(fields[11]) + int(fields[12])
    return used + (int(fields[13]) + int(fields[14]) if children else 0)


def _reaped(stat: Path) -> int:
    """cutime + cstime: what the children this process waited for used."""
    fields = _fields(stat)
    return int(fields[13]) + int(fields[14])
