"""How many per-frame pool threads a pipeline gets: the setting, or "auto" from the cores this host lets it use."""

from __future__ import annotations

import contextlib
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


def usable_cores(
    cgroup_root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int:
    """Cores this process may run on: its CPU affinity (the CPU count where there is none),
    capped by the tightest CPU quota on its cgroup's path, v2 or v1 (a container's or a
    systemd service's CPU limit, which the affinity does not show)."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    for quota in _quotas(cgroup_root, membership):
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def _quotas(cgroup_root: Path, membership: Path) -> list[float]:
    """The CPU quotas, in CPUs, set on this process's cgroup or any cgroup above it (a limit
    anywhere on the path applies): v2's cpu.max ("max" is none), v1's cpu.cfs_quota_us over
    cpu.cfs_period_us (-1 is none). Unreadable or malformed files count as no limit."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    quotas = []
    # v2: "0::/path". Without a membership file, the root's own limit still applies.
    own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    for folder in _path_up(cgroup_root, own):
        with contextlib.suppress(OSError, ValueError):
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                quotas.append(int(quota) / int(period))
    # v1: "N:cpu,cpuacct:/path", the cpu controller mounted on its own folder or with cpuacct.
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "cpu" not in controllers.split(","):
            continue
        for mount in (
            cgroup_root / "cpu,cpuacct",
            cgroup_root / "cpuacct,cpu",
            cgroup_root / "cpu",
        ):
            for folder in _path_up(mount, path) if mount.is_dir() else []:
                with contextlib.suppress(OSError, ValueError):
                    quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                    period_us = int((folder / "cpu.cfs_period_us").read_text())
                    if quota_us > 0 and period_us > 0:
                        quotas.append(quota_us / period_us)
    return quotas


def _path_up(root: Path, own: str) -> list[Path]:
    """root/own and every folder above it up to root. Inside a container's cgroup namespace
    `own` is "/" and root is the container's own cgroup; without one, folders of the host's
    hierarchy that this mount does not show are simply absent."""
    folder = root / own.strip("/")
    folders = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        folders.append(folder)
    return folders


def pool_threads(requested: int, pipelines: int = 1) -> int:
    """The pool size for a cpu_threads setting: itself, or for "auto" (negative) auto_threads
    over this process's usable cores."""
    return requested if requested >= 0 else auto_threads(usable_cores(), pipelines)
