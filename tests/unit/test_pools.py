"""pools.live_children: a worker's live pool processes, read from the process table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from facefusion_tasks.pools import live_children


def _stat(proc: Path, pid: int, comm: str, state: str, ppid: int) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} {ppid} 1 1 0 -1\n")


def test_only_live_children_of_the_process_count(tmp_path: Path) -> None:
    _stat(tmp_path, 10, "celery", "S", 1)
    _stat(tmp_path, 11, "ForkPoolWorker-1", "R", 10)
    _stat(tmp_path, 12, "a (tricky) name 9 10", "S", 10)  # a comm with spaces and parentheses
    _stat(tmp_path, 13, "ForkPoolWorker-2", "Z", 10)  # dead, not yet collected
    _stat(tmp_path, 14, "ffmpeg", "S", 11)  # a grandchild
    (tmp_path / "self").mkdir()
    (tmp_path / "15").mkdir()  # exited while the table was read: no stat
    # No children lists (a kernel without CONFIG_PROC_CHILDREN): the whole table is read.
    assert sorted(live_children(10, proc=tmp_path) or []) == [11, 12]
    assert live_children(14, proc=tmp_path) == []
    # With them, only the children each thread lists are looked at.
    for thread, listed in (("10", "11 13 "), ("16", "12")):
        (tmp_path / "10" / "task" / thread).mkdir(parents=True)
        (tmp_path / "10" / "task" / thread / "children").write_text(listed)
    assert sorted(live_children(10, proc=tmp_path) or []) == [11, 12]
    # A table that cannot be read says "cannot tell", never "no pool".
    assert live_children(10, proc=tmp_path / "absent") is None


def test_a_real_child_is_found_and_an_exited_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in (live_children(os.getpid()) or [])
    finally:
        child.kill()
    # Killed, not yet collected (a zombie): no longer a live child.
    deadline = time.monotonic() + 10
    while child.pid in (live_children(os.getpid()) or []) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_children(os.getpid()) is not None
    assert child.pid not in (live_children(os.getpid()) or [])
    child.wait()
