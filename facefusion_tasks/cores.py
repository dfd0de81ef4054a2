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


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity (the CPU count where there is none),
    capped by the tightest cgroup v2 CPU quota on its cgroup's path (a container's or a
    systemd service's CPU limit, which the affinity does not show)."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    for limit in _cpu_max_files(cgroup_root):
        try:
            quota, period = limit.read_text().split()[:2]
            if quota != "max":
                cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            continue
    return cores


def _cpu_max_files(cgroup_root: Path) -> list[Path]:
    """cpu.max of this process's cgroup v2 and of each cgroup above it (a limit anywhere on
    the path applies)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return [cgroup_root / "cpu.max"]
    own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    folder = cgroup_root / own.strip("/")
    files = [folder / "cpu.max"]
    while folder != cgroup_root and cgroup_root in folder.parents:
        folder = folder.parent
        files.append(folder / "cpu.max")
    return files


def pool_threads(requested: int, pipelines: int = 1) -> int:
    """The pool size for a cpu_threads setting: itself, or for "auto" (negative) auto_threads
    over this process's usable cores."""
    return requested if requested >= 0 else auto_threads(usable_cores(), pipelines)
