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

    def start_worker(self, name: str, *, queues: str = "gpu,light", concurrency: int = 1) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "facefusion_tasks.worker_app", "worker",
             "-Q", queues, "-n", f"{name}@%h", "-c", str(concurrency), "-P", "prefork",
             "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "info"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"ready." in (self.logs / f"{name}.log").read_bytes():
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
