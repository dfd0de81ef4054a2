"""The real `facefusion-tasks worker` launcher in a test: start, find its children, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from facefusion_tasks.config import Settings
from facefusion_tasks.metrics.queues import alive_workers
from facefusion_tasks.producer import Producer


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.05) -> Any:
    """The predicate's first truthy value, or an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def children(pid: int) -> dict[int, str]:
    """Direct children of `pid`: pid -> command line."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, IndexError, ValueError):
            continue
    return found


class Launcher:
    """`python -m facefusion_tasks worker` with its own metrics directory and port."""

    def __init__(
        self,
        root: Path,
        models: Path,
        broker_url: str,
        *,
        metrics_dir: Path,
        port: int,
        **settings: str,
    ) -> None:
        self.root = root
        self.broker_url = broker_url
        self.metrics_dir = metrics_dir
        self.port = port
        self.log_path = root / "logs" / f"launcher-{port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FACEFUSION_", "PROMETHEUS_"))
        }
        self.env |= {
            "FACEFUSION_BROKER_URL": broker_url,
            "FACEFUSION_STORAGE_ROOTS": str(root),
            "FACEFUSION_MODELS_DIR": str(models),
            "FACEFUSION_EXECUTION_PROVIDER": "cpu",
            "FACEFUSION_INFERENCE_THREADS": "1",
            "FACEFUSION_BATCH_SIZE": "4",
            "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
        }
        self.env |= {f"FACEFUSION_{k.upper()}": v for k, v in settings.items()}
        self.proc: subprocess.Popen[bytes] | None = None

    def settings(self) -> Settings:
        return Settings.from_env({k: v for k, v in self.env.items() if k.startswith("FACEFUSION_")})

    def producer(self) -> Producer:
        return Producer(self.settings())

    def start(self, *, gpu_processes: int = 1, wait: bool = True) -> None:
        argv = [
            sys.executable, "-m", "facefusion_tasks", "worker", "--gpus", "none",
            "--light-concurrency", "1", "--metrics-port", str(self.port),
            "--metrics-dir", str(self.metrics_dir), "--loglevel", "info",
        ]  # fmt: skip
        env = self.env | {"FACEFUSION_GPU_PROCESSES": str(gpu_processes)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_ready(gpu=gpu_processes)

    def workers(self) -> dict[str, dict[str, Any]]:
        return alive_workers(redis.Redis.from_url(self.broker_url))

    def wait_ready(self, *, gpu: int, timeout: float = 90) -> None:
        """Until `gpu` gpu-queue pool processes and a light one send heartbeats."""

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            queues = [q for info in self.workers().values() for q in info.get("queues", [])]
            return queues.count("gpu") >= gpu and "light" in queues

        try:
            wait_for(ready, timeout=timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"workers not ready:\n{self.log()[-4000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> dict[int, str]:
        assert self.proc is not None
        return children(self.proc.pid)

    def child(self, marker: str) -> int:
        """The pid of the launcher's child whose command line contains `marker`."""
        matches = [pid for pid, cmd in self.children().items() if marker in cmd]
        assert len(matches) == 1, (marker, self.children())
        return matches[0]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the launcher (as an orchestrator would); its exit code."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left (a stopped pool process, say) goes with the session.
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        return -9


@contextmanager
def launcher(
    root: Path, models: Path, broker_url: str, *, metrics_dir: Path, port: int, **settings: str
) -> Iterator[Launcher]:
    """A launcher on a flushed test database; stopped (and the database flushed) after."""
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    fleet = Launcher(root, models, broker_url, metrics_dir=metrics_dir, port=port, **settings)
    try:
        yield fleet
    finally:
        fleet.stop()
        client.flushdb()
