"""A child the launcher started stops when the launcher dies, and only the launcher's own children do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from facefusion_tasks.lifeline import LAUNCHER_ENV, follow_launcher, launcher_env

# A stand-in launcher: starts a child that follows it, prints the child's pid, then sleeps.
_LAUNCHER = """
import subprocess, sys, time
from facefusion_tasks.lifeline import launcher_env
import os
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=os.environ | launcher_env())
print(child.pid, flush=True)
time.sleep(60)
"""
_CHILD = """
import os, sys, time
from facefusion_tasks.lifeline import LAUNCHER_ENV, follow_launcher
assert follow_launcher()
assert LAUNCHER_ENV not in os.environ  # what this process starts is not the launcher's
time.sleep(60)
"""


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_child_gets_sigterm_when_its_launcher_is_sigkilled() -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, _CHILD], stdout=subprocess.PIPE, text=True
    )
    try:
        assert launcher.stdout is not None
        child = int(launcher.stdout.readline())
        time.sleep(1.0)  # the child has made its tie
        assert not _gone(child, timeout=0.1)
        os.kill(launcher.pid, signal.SIGKILL)
        assert _gone(child)
    finally:
        launcher.kill()
        launcher.wait()


def test_a_child_whose_launcher_is_already_gone_stops_at_once() -> None:
    # Its parent is this test, not the pid it was given: the launcher died before the tie.
    env = os.environ | {LAUNCHER_ENV: "999999999"}
    child = subprocess.run([sys.executable, "-c", _CHILD], env=env, timeout=30)
    assert child.returncode == -signal.SIGTERM


def test_without_a_launcher_nothing_is_tied() -> None:
    env: dict[str, str] = {}
    assert not follow_launcher(env)
    assert launcher_env() == {LAUNCHER_ENV: str(os.getpid())}
