"""A supervised child's tie to its launcher: when the launcher dies, even by SIGKILL, the child is told to stop."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

#: Set by the launcher in each child's environment: the launcher's pid.
LAUNCHER_ENV = "FACEFUSION_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1


def launcher_env() -> dict[str, str]:
    """What the launcher adds to a child's environment so the child can follow it."""
    return {LAUNCHER_ENV: str(os.getpid())}


def follow_launcher(environ: MutableMapping[str, str] | None = None) -> bool:
    """In a child the launcher started: have the kernel send SIGTERM (Celery's warm shutdown:
    the running task finishes, nothing new is taken) when the launcher dies, so a SIGKILLed
    launcher leaves no orphan serving the queues unsupervised, and a new launcher no rival
    fleet. The variable is taken out of the environment, so that the processes this one
    starts (pool children, ffmpeg, helpers) are not mistaken for the launcher's own children.
    Returns whether the tie is in place (Linux only)."""
    env = os.environ if environ is None else environ
    raw = env.pop(LAUNCHER_ENV, "")
    if not raw.isdigit() or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("cannot follow the launcher: prctl errno %d", ctypes.get_errno())
        return False
    if os.getppid() != int(raw):
        # The launcher died before the tie was made: the kernel will not send it now.
        log.warning("launcher %s is gone; stopping", raw)
        os.kill(os.getpid(), signal.SIGTERM)
    return True
