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
    assert sorted(live_children(10, proc=tmp_path)) == [11, 12]
    assert live_children(14, proc=tmp_path) == []
    assert live_children(10, proc=tmp_path / "absent") == []


def test_a_real_child_is_found_and_an_exited_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in live_children(os.getpid())
    finally:
        child.kill()
    # Killed, not yet collected (a zombie): no longer a live child.
    deadline = time.monotonic() + 10
    while child.pid in live_children(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.pid not in live_children(os.getpid())
    child.wait()
