"""`facefusion-tasks worker`: Celery worker processes per GPU (pinned), a light one, the exporter."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Nothing here may import prometheus_client (or anything that does): the metrics directory must
# be prepared before the first import anywhere in this process tree.
from facefusion_tasks.app import GPU_QUEUE, LIGHT_QUEUE, PRELOAD_ENV, QUEUES_ENV
from facefusion_tasks.config import FLAG_SETTINGS, Settings
from facefusion_tasks.cores import pool_threads
from facefusion_tasks.errors import InputError
from facefusion_tasks.lifeline import launcher_env
from facefusion_tasks.pools import live_children
from facefusion_tasks.reasons import Reason
from facefusion_tasks.storage import check_fleet_work_dir

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


def _listed(gpus: str) -> list[str]:
    """The GPUs `--gpus` names, each once: "0,0" started two workers with one Celery node
    name, and ",," three CPU workers under one."""
    devices = [d.strip() for d in gpus.split(",")]
    if not all(devices) or len(set(devices)) != len(devices):
        raise InputError(
            f"--gpus {gpus!r}: name each GPU once, comma-separated (or auto, or none)",
            reason=Reason.CONFIG,
        )
    return devices


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
    """(argv, extra environment) for each worker process to start.

    Names carry the launcher's pid (`gpu0-4711@host`), so two launchers on one host never share
    a Celery node name and `status` tells their processes apart; `name` prefixes them too
    ("NAME-cpu0-4711@host")."""
    prefix = f"{name}-" if name else ""
    if not queues:
        raise InputError(f"no queue to serve (--queues takes {GPU_QUEUE}, {LIGHT_QUEUE} or both)")
    unknown = set(queues) - {GPU_QUEUE, LIGHT_QUEUE}
    if unknown:
        raise InputError(f"unknown queues: {', '.join(sorted(unknown))}")
    if not settings.broker_url:
        raise InputError("no broker configured (set FACEFUSION_BROKER_URL)", reason=Reason.CONFIG)
    check_fleet_work_dir(settings)
    plans: list[tuple[list[str], dict[str, str]]] = []
    launcher = os.getpid()
    # The workers read their settings from the environment: the launcher's flags go with it.
    flags = settings.as_env(FLAG_SETTINGS)
    if GPU_QUEUE in queues:
        devices = detect_gpus() if gpus == "auto" else [] if gpus == "none" else _listed(gpus)
        # No GPU: gpu_processes CPU workers serve the gpu queue (the CPU profile); with GPUs,
        # gpu_processes workers share each one.
        slots = [(d, k) for d in devices for k in range(settings.gpu_processes)] or [
            ("", k) for k in range(settings.gpu_processes)
        ]
        # "auto" pool threads are shared out here, where the host's pipelines are counted.
        threads = pool_threads(settings.cpu_threads, pipelines=len(slots))
        for device, k in slots:
            env = flags | {PRELOAD_ENV: "1", "CUDA_VISIBLE_DEVICES": device, QUEUES_ENV: GPU_QUEUE}
            env["FACEFUSION_CPU_THREADS"] = str(threads)
            node = f"gpu{device}" if device else f"cpu{k}"
            if device and settings.gpu_processes > 1:
                node += f"x{k}"
            argv = worker_argv(
                name=f"{prefix}{node}-{launcher}",
                queue=GPU_QUEUE,
                concurrency=1,
                max_tasks_per_child=max_tasks_per_child,
                loglevel=loglevel,
            )
            plans.append((argv, env))
    if LIGHT_QUEUE in queues:
        argv = worker_argv(
            name=f"{prefix}light-{launcher}",
            queue=LIGHT_QUEUE,
            concurrency=light_concurrency,
            max_tasks_per_child=max_tasks_per_child,
            loglevel=loglevel,
        )
        plans.append((argv, flags | {PRELOAD_ENV: "0", QUEUES_ENV: LIGHT_QUEUE}))
    return plans


def exporter_argv(*, port: int, metrics_dir: Path) -> list[str]:
    """The metrics exporter for this host's worker processes (pure, for tests). The broker URL
    is not on it: a command line is readable by every user of the host (`ps`), so the exporter
    takes the broker from its environment (exporter_env)."""
    argv = [sys.executable, "-m", "facefusion_tasks.metrics.exporter", "--port", str(port)]
    return argv + ["--multiproc-dir", str(metrics_dir)]


def exporter_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The exporter's environment: the launcher's, with the broker and stall settings it uses.
    The exporter reads the directory and must not write into it (a full metrics filesystem
    would kill it with SIGBUS like any writer), so it runs in single-process mode."""
    from facefusion_tasks.metrics import multiproc

    env = {k: v for k, v in environ.items() if k != multiproc.PROMETHEUS_ENV}
    if settings.broker_url and not env.get("FACEFUSION_BROKER_URL"):
        env["FACEFUSION_BROKER_URL"] = settings.broker_url
    env["FACEFUSION_STALL_SECONDS"] = str(settings.stall_seconds)
    return env


#: Restart delay after a child exits: doubles per quick exit, from the first to the second.
RESTART_BACKOFF = (1.0, 60.0)
#: Seconds between checks that the launcher still holds its metrics directory's lock.
CLAIM_CHECK_SECONDS = 5.0
#: A child that ran this long before exiting starts again with the shortest delay.
STABLE_SECONDS = 60.0
#: Seconds between looks at each Celery worker's pool processes.
POOL_CHECK_SECONDS = 5.0


@dataclass
class _Child:
    """One supervised process: restarted in place, with backoff, whenever it exits."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    quick_exits: int = 0
    #: A Celery worker (not the exporter): it must keep a pool of child processes.
    pooled: bool = False
    #: When a pool process of it was last seen alive (its start counts as one).
    pool_seen_at: float = 0.0
    checked_at: float = 0.0

    def start(self) -> None:
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = subprocess.Popen(self.argv, env=self.env | launcher_env())
        self.started_at = self.pool_seen_at = time.monotonic()

    def kill_if_wedged(self, now: float, wedged_seconds: float) -> None:
        """SIGKILL a Celery worker that has had no live pool process for `wedged_seconds`:
        after an unrecoverable error (a pool process's result garbled on its pipe) Celery's
        main process can stay alive with no pool, consuming nothing, so no exit would ever
        restart it. Its exit, collected by the supervision loop, restarts it."""
        proc = self.proc
        if not self.pooled or proc is None or now - self.checked_at < POOL_CHECK_SECONDS:
            return
        self.checked_at = now
        pool = live_children(proc.pid)
        if pool is None or pool:  # a process table that cannot be read tells nothing
            self.pool_seen_at = now
        elif now - self.pool_seen_at >= wedged_seconds and proc.poll() is None:
            log.error(
                "%s (pid %s) has had no pool process for %.0f s and takes no work; killing it",
                self.name,
                proc.pid,
                now - self.pool_seen_at,
            )
            proc.kill()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def schedule_restart(self, code: int, backoff: tuple[float, float]) -> None:
        ran = time.monotonic() - self.started_at
        self.quick_exits = 0 if ran >= STABLE_SECONDS else self.quick_exits + 1
        delay = min(backoff[1], backoff[0] * 2 ** max(0, self.quick_exits - 1))
        log.error(
            "%s (pid %s) exited with %s after %.0f s; restarting it in %.1f s",
            self.name,
            self.proc.pid if self.proc else "?",
            code,
            ran,
            delay,
        )
        self.proc = None
        self.restart_at = time.monotonic() + delay


def run_workers(
    settings: Settings,
    *,
    metrics_port: int = 9808,
    metrics_dir: Path | None = None,
    backoff: tuple[float, float] = RESTART_BACKOFF,
    **options: Any,
) -> int:
    """Start the planned worker processes and the exporter, and supervise them.

    A child that exits (crash, OOM kill, a dead exporter) is started again in place, with
    backoff; the others keep running. Only SIGTERM/SIGINT/SIGHUP stop the launcher: they are passed
    on (Celery's warm shutdown lets a running chunk finish), and it returns once every child
    has exited.

    The metrics directory is claimed (another live launcher's is refused), wiped and put in the
    environment *before* any child starts (the fleet's start), and one exporter process serves
    every worker process's metrics."""
    from facefusion_tasks.metrics import multiproc

    plans = plan_workers(settings, **options)
    # A gpu-queue worker whose CUDA session cannot start refuses here, with one line, unless
    # CPU was asked for or allowed: nothing serves the gpu queue on a CPU nobody chose.
    from facefusion_tasks.gpus import require_usable_gpus

    # One proof per GPU, however many processes share it.
    pins = list(
        dict.fromkeys(e["CUDA_VISIBLE_DEVICES"] for _, e in plans if e.get(PRELOAD_ENV) == "1")
    )
    require_usable_gpus(settings, pins)
    # As prepare() puts it in the workers' environment: the exporter and the launcher's own
    # Redis field must name the same directory ("~/m" named another, and served 0).
    directory = (metrics_dir or multiproc.default_dir()).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise InputError(f"metrics directory {directory} is not a directory", reason=Reason.CONFIG)
    try:
        owner = multiproc.claim_directory(directory)
    except multiproc.DirectoryInUse as exc:
        raise InputError(str(exc), reason=Reason.CONFIG) from None
    multiproc.prepare(directory, wipe=True)
    _forget_disabled_metrics(settings.broker_url, directory)
    children: list[_Child] = []
    if metrics_port:
        argv = exporter_argv(port=metrics_port, metrics_dir=directory)
        children.append(_Child("exporter", argv, exporter_env(settings, os.environ)))
    for argv, extra in plans:
        name = argv[argv.index("-n") + 1].split("@")[0]
        children.append(_Child(name, argv, os.environ | extra, pooled=True))
    stop: list[int] = []
    signalled: set[int] = set()  # pids already told to stop

    def pass_on(signum: int) -> None:
        for child in children:
            proc = child.proc
            if proc is not None and proc.pid not in signalled and proc.poll() is None:
                signalled.add(proc.pid)
                proc.send_signal(signum)

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)
        # SIGTERM either way: Celery takes it as a warm shutdown however often it comes, while a
        # second SIGINT (the terminal's Ctrl-C reaches the children too) would be a cold one.
        pass_on(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A hang-up sent to the launcher: stopped the same way (its default action ended the
    # launcher at once, exit 129, which a service manager reads as a failure). Not where it
    # was started ignoring hang-ups (nohup): it must outlive the terminal, as it used to.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)
    for child in children:
        if not stop:
            child.start()
    checked_claim = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now - checked_claim >= CLAIM_CHECK_SECONDS:
            owner, checked_claim = multiproc.keep_claim(directory, owner), now
        for child in children:
            code = child.exited()
            if code is not None:
                child.schedule_restart(code, backoff)
            elif child.proc is None and now >= child.restart_at and not stop:
                child.start()
            else:
                child.kill_if_wedged(now, settings.worker_wedged_seconds)
        time.sleep(0.2)
    log.info("signal %d: waiting for the workers to finish their running tasks", stop[0])
    pass_on(signal.SIGTERM)  # a child started while the signal arrived
    for child in children:
        if child.proc is not None:
            child.proc.wait()
    if owner >= 0:
        os.close(owner)  # the directory is free once every child is gone
    return 0


def _forget_disabled_metrics(broker_url: str, directory: Path) -> None:
    """A launcher starts with its metrics directory wiped, and with no worker process of its
    own counted as having disabled its metrics (the count of a launcher that ran here before
    on this directory would read as new), from now: the count's start, which its exporter
    serves as the counter's `_created`. Best effort: Redis may not be up yet."""
    import redis

    from facefusion_tasks.broker import client_kwargs
    from facefusion_tasks.metrics.keys import (
        METRICS_DISABLED_KEY,
        METRICS_LAUNCHED_KEY,
        metrics_disabled_field,
    )

    field = metrics_disabled_field(directory)
    try:
        client = redis.Redis.from_url(broker_url, **client_kwargs(timeout=2.0, retries=1))
        with client.pipeline(transaction=True) as pipe:
            pipe.hdel(METRICS_DISABLED_KEY, field)
            pipe.hset(METRICS_LAUNCHED_KEY, field, time.time())
            pipe.execute()
    except (redis.RedisError, OSError) as exc:
        log.warning("could not reset this launcher's count of disabled metrics: %s", exc)
