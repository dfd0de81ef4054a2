"""`facefusion-tasks worker`: one Celery worker process per GPU (pinned), plus a light one."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Nothing here may import prometheus_client (or anything that does): the metrics directory must
# be prepared before the first import anywhere in this process tree.
from facefusion_tasks.app import GPU_QUEUE, LIGHT_QUEUE, PRELOAD_ENV
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason

log = logging.getLogger(__name__)


def detect_gpus() -> list[str]:
    """One CUDA_VISIBLE_DEVICES value (a GPU or MIG UUID) per device CUDA will see here, found
    by NVML in a subprocess: neither CUDA nor NVML is initialised in this parent process, because
    the Celery pool forks and a child inheriting an initialised context breaks."""
    from facefusion_tasks.gpus import detect_gpus as discover_pins

    return discover_pins()


def worker_argv(
    *,
    name: str,
    queue: str,
    concurrency: int,
    max_tasks_per_child: int,
    loglevel: str,
) -> list[str]:
    """The celery command for one worker process (pure, for tests)."""
    argv = [
        sys.executable, "-m", "celery", "-A", "facefusion_tasks.worker_app", "worker",
        "-Q", queue, "-n", f"{name}@%h", "-c", str(concurrency), "-P", "prefork",
        "--prefetch-multiplier", "1", "-E", "--without-gossip", "--without-mingle",
        "-l", loglevel,
    ]  # fmt: skip
    if max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    return argv


def plan_workers(
    settings: Settings,
    *,
    gpus: str,
    queues: list[str],
    light_concurrency: int,
    max_tasks_per_child: int,
    loglevel: str,
    name: str = "",
) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, extra environment) for each worker process to start. `name` prefixes the node
    names (several launchers on one host stay distinguishable: "NAME-cpu0@host")."""
    prefix = f"{name}-" if name else ""
    unknown = set(queues) - {GPU_QUEUE, LIGHT_QUEUE}
    if unknown:
        raise InputError(f"unknown queues: {', '.join(sorted(unknown))}")
    if not settings.broker_url:
        raise InputError("no broker configured (set FACEFUSION_BROKER_URL)", reason=Reason.CONFIG)
    plans: list[tuple[list[str], dict[str, str]]] = []
    if GPU_QUEUE in queues:
        devices = detect_gpus() if gpus == "auto" else [] if gpus == "none" else gpus.split(",")
        # No GPU: one CPU worker still serves the gpu queue (the CPU profile).
        for index, device in enumerate(devices or [""]):
            env = {PRELOAD_ENV: "1", "CUDA_VISIBLE_DEVICES": device}
            node = f"{prefix}gpu{device}" if device else f"{prefix}cpu{index}"
            argv = worker_argv(
                name=node,
                queue=GPU_QUEUE,
                concurrency=1,
                max_tasks_per_child=max_tasks_per_child,
                loglevel=loglevel,
            )
            plans.append((argv, env))
    if LIGHT_QUEUE in queues:
        argv = worker_argv(
            name=f"{prefix}light",
            queue=LIGHT_QUEUE,
            concurrency=light_concurrency,
            max_tasks_per_child=max_tasks_per_child,
            loglevel=loglevel,
        )
        plans.append((argv, {PRELOAD_ENV: "0"}))
    return plans


def exporter_argv(*, port: int, metrics_dir: Path, redis_url: str) -> list[str]:
    """The metrics exporter for this host's worker processes (pure, for tests)."""
    argv = [sys.executable, "-m", "facefusion_tasks.metrics.exporter", "--port", str(port)]
    argv += ["--multiproc-dir", str(metrics_dir)]
    if redis_url:
        argv += ["--redis-url", redis_url]
    return argv


def run_workers(
    settings: Settings, *, metrics_port: int = 9808, metrics_dir: Path | None = None, **options: Any
) -> int:
    """Start the planned worker processes and supervise them: SIGTERM/SIGINT are passed on
    (Celery's warm shutdown lets a running chunk finish; if it is killed instead, the chunk is
    redelivered), and the launcher exits when any worker exits, so an orchestrator restarts it.

    The metrics directory is wiped and put in the environment *before* any child starts (the
    fleet's start), and one exporter process serves every worker process's metrics."""
    from facefusion_tasks.metrics import multiproc

    plans = plan_workers(settings, **options)
    directory = metrics_dir or multiproc.default_dir()
    multiproc.prepare(directory, wipe=True)
    children: list[subprocess.Popen[bytes]] = []
    if metrics_port:
        argv = exporter_argv(
            port=metrics_port, metrics_dir=directory, redis_url=settings.broker_url
        )
        children.append(subprocess.Popen(argv))
    for argv, env in plans:
        log.info("starting %s", " ".join(argv))
        children.append(subprocess.Popen(argv, env=os.environ | env))

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    forward(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
