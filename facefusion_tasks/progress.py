"""Whether this process is getting anywhere: the CPU its working threads and child processes use, read from /proc."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from facefusion_tasks.pools import PROC, live_children

#: How deep below this process child processes are followed (ffmpeg forks none; a shell might).
_DEPTH = 3


def thread_ids(*, proc: Path = PROC) -> set[int]:
    """The native ids of this process's threads now; empty when /proc cannot tell."""
    try:
        return {int(tid) for tid in os.listdir(proc / str(os.getpid()) / "task")}
    except (OSError, ValueError):
        return set()


class WorkMeter:
    """Clock ticks of CPU used by the work of this process: its threads but those `excluding`
    (native ids: a heartbeat's own, whose Redis calls would pass for work, and threads that
    run beside the work whatever it does), the children it has reaped, and its live
    descendants. It moves while the work computes, reads or writes, in its own thread, in
    threads it starts (an upload's) or in its ffmpeg; it stands still while all of them wait
    on something that never answers (a stopped ffmpeg, a hung mount).

    Each counted thread is read on its own and remembered, so one that ends keeps what it
    used (the kernel drops a thread's own count when it ends), and the threads left out are
    never read: subtracting them from the process's total raced with their running."""

    def __init__(self, *, excluding: Collection[int] = (), proc: Path = PROC) -> None:
        self._excluding = frozenset(excluding)
        self._proc = proc
        self._threads: dict[int, int] = {}

    def read(self) -> int | None:
        """The ticks so far; None when /proc cannot tell."""
        folder = self._proc / str(os.getpid())
        try:
            tids = [int(tid) for tid in os.listdir(folder / "task")]
            reaped = _ticks(folder / "stat", own=False, children=True)
        except (OSError, ValueError, IndexError):
            return None
        for tid in tids:
            if tid in self._excluding:
                continue
            try:
                self._threads[tid] = _ticks(folder / "task" / str(tid) / "stat")
            except (OSError, ValueError, IndexError):
                continue  # ended while it was read: what it was last seen using stays
        return sum(self._threads.values()) + reaped + _descendants(os.getpid(), self._proc, _DEPTH)


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


def _ticks(stat: Path, *, own: bool = True, children: bool = False) -> int:
    """utime + stime (fields 14 and 15 of proc(5)) with `own`, cutime + cstime (16 and 17:
    children waited for) with `children`."""
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
    fields = stat.read_text(errors="replace").rpartition(")")[2].split()
    used = int(fields[11]) + int(fields[12]) if own else 0
    return used + (int(fields[13]) + int(fields[14]) if children else 0)
