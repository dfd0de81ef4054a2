"""How many per-frame pool threads a pipeline gets: the setting, or "auto" from the cores this host lets it use."""

from __future__ import annotations

import math
import os
from pathlib import Path

#: The most threads "auto" gives a pipeline: on a 16-core H100 host 6 threads beat 2 in every
#: ceiling case (README, GPU figures); nothing past 6 was measured.
MOST_AUTO_THREADS = 6


def auto_threads(cores: int, pipelines: int = 1) -> int:
    """Pool threads for one of `pipelines` pipelines sharing `cores` usable cores: half the
    cores, split among the pipelines (their ffmpeg decoders and encoders take the other half),
    at least 2 (the best measured on the 2-core development machine), at most
    MOST_AUTO_THREADS."""
    return max(2, min(MOST_AUTO_THREADS, cores // (2 * max(1, pipelines))))


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit, which the affinity does not show)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def pool_threads(requested: int, pipelines: int = 1) -> int:
    """The pool size for a cpu_threads setting: itself, or for "auto" (negative) auto_threads
    over this process's usable cores."""
    return requested if requested >= 0 else auto_threads(usable_cores(), pipelines)
