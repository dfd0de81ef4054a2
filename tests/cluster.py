"""A real little fleet for tests: Redis (shared or private), Celery worker processes, a producer."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from facefusion_tasks.config import Settings
from facefusion_tasks.producer import Producer

#: The machine's shared Redis; tests use their own database in it and flush only that one.
#: FACEFUSION_TEST_REDIS picks another database, so two checkouts can test side by side.
SHARED_REDIS = os.environ.get("FACEFUSION_TEST_REDIS", "redis://127.0.0.1:6379/11")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server with AOF on, for tests that stop and restart Redis."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            self.proc.wait(10)
        self.proc = None


class Cluster:
    """Worker processes sharing a broker, storage root and stand-in models."""

    def __init__(self, root: Path, models: Path, broker_url: str, **settings: str) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
        self.env |= {
            "FACEFUSION_BROKER_URL": broker_url,
            "FACEFUSION_STORAGE_ROOTS": str(root),
            "FACEFUSION_MODELS_DIR": str(models),
            "FACEFUSION_EXECUTION_PROVIDER": "cpu",
            "FACEFUSION_INFERENCE_THREADS": "1",
            "FACEFUSION_BATCH_SIZE": "4",
            "FACEFUSION_PRELOAD_MODELS": "1",
            "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
        }
        self.env |= {f"FACEFUSION_{k.upper()}": v for k, v in settings.items()}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def settings(self) -> Settings:
        env = {k: v for k, v in self.env.items() if k.startswith("FACEFUSION_")}
        return Settings.from_env(env)

    def producer(self) -> Producer:
        return Producer(self.settings())

    def start_worker(
        self, name: str, *, queues: str = "gpu,light", gpus: str = "none", concurrency: int = 1
    ) -> None:
        """Start a worker the way an operator does: the real `facefusion-tasks worker` launcher
        (one Celery process per GPU, or one CPU process, plus a light one), node names
        prefixed with `name`. Its metrics directory is its own unless the test set one."""
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        argv = [sys.executable, "-m", "facefusion_tasks", "worker", "--name", name,
                "--queues", queues, "--gpus", gpus, "--light-concurrency", str(concurrency),
                "--metrics-port", "0", "--loglevel", "info"]  # fmt: skip
        if "FACEFUSION_METRICS_DIR" not in self.env:
            argv += ["--metrics-dir", str(self.logs / f"metrics-{name}")]
        self.workers[name] = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        gpu_processes = len(gpus.split(",")) if gpus not in {"none", "auto"} else 1
        expected = (gpu_processes if "gpu" in queues else 0) + (1 if "light" in queues else 0)
        self.wait_ready(name, processes=expected)

    def wait_ready(self, name: str, *, processes: int = 1, timeout: float = 60) -> None:
        """Until every Celery process of the launcher says it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.logs / f"{name}.log").read_bytes().count(b" ready.") >= processes:
                return
            if self.workers[name].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker {name} did not start:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool children (the whole process group)."""
        proc = self.workers.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.workers):
            proc = self.workers.pop(name)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


@contextmanager
def cluster(
    root: Path, models: Path, broker_url: str = SHARED_REDIS, **settings: str
) -> Iterator[Cluster]:
    """A cluster on a flushed test database; workers stopped and the database flushed after."""
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    fleet = Cluster(root, models, broker_url, **settings)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        with contextlib.suppress(redis.ConnectionError):  # a private server may be gone
            client.flushdb()
        shutil.rmtree(root / ".facefusion-work", ignore_errors=True)
