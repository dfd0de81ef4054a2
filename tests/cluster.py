"""A real little fleet for tests: Redis (shared or private), the real `facefusion-tasks worker`
launcher started as an operator does, a producer, and one wait-for helper."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from facefusion_tasks.config import Settings
from facefusion_tasks.metrics.queues import alive_workers
from facefusion_tasks.producer import Producer

#: The machine's shared Redis; tests use their own database in it and flush only that one.
#: FACEFUSION_TEST_REDIS picks another database, so two checkouts can test side by side.
SHARED_REDIS = os.environ.get("FACEFUSION_TEST_REDIS", "redis://127.0.0.1:6379/11")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.05) -> Any:
    """The predicate's first truthy value, or an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class RedisServer:
    """A private redis-server with AOF on, for tests that stop and restart Redis; with a
    `password`, it asks for it (set in a config file, as deployed)."""

    def __init__(
        self, directory: Path, *, password: str | None = None, extra: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.password = password
        self.extra = tuple(extra)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server"]
        if self.password is not None:
            config = self.directory / "auth.conf"
            config.write_text(f'requirepass "{self.password}"\n')
            argv.append(str(config))
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory),
             *self.extra],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, password=self.password)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            self.proc.wait(10)
        self.proc = None


@contextmanager
def private_redis(
    directory: Path, *, password: str | None = None, extra: Sequence[str] = ()
) -> Iterator[RedisServer]:
    """A started RedisServer (`extra`: more redis-server flags), always stopped afterwards."""
    server = RedisServer(directory, password=password, extra=extra)
    try:
        server.start()
        yield server
    finally:
        server.stop()


#: redis-server flags that let a test change `dir` (unable_to_save needs them).
PROTECTED_CONFIGS = ("--enable-protected-configs", "yes")


@contextmanager
def unable_to_save(client: redis.Redis, directory: Path) -> Iterator[None]:
    """Redis refusing writes and PING with MISCONF while the body runs, as when its disk fails:
    its snapshot into /proc fails with stop-writes-on-bgsave-error on. The server must have
    been started with PROTECTED_CONFIGS; `directory` is its own dir, set back afterwards."""
    client.config_set("save", "3600 1")
    client.config_set("stop-writes-on-bgsave-error", "yes")
    client.config_set("dir", "/proc")
    client.bgsave()
    for _ in range(100):
        if client.info("persistence")["rdb_last_bgsave_status"] == "err":
            break
        time.sleep(0.1)
    try:
        yield
    finally:
        client.config_set("dir", str(directory))
        client.config_set("save", "")


def metric_samples(metrics_dir: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample in a launcher's metrics directory, merged as its exporter merges them:
    (name, sorted labels) -> value."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = [str(p) for p in metrics_dir.glob("*.db")]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in MultiProcessCollector.merge(files)
        for s in metric.samples
    }


def fleet_env(root: Path, models: Path, broker_url: str, **settings: str) -> dict[str, str]:
    """The environment of every worker a test starts: the caller's, less its FACEFUSION_* and
    PROMETHEUS_* variables, with the broker, the storage root and stand-in models on the CPU;
    `settings` add FACEFUSION_<NAME> variables (stall_seconds="4" -> FACEFUSION_STALL_SECONDS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACEFUSION_", "PROMETHEUS_"))}
    env |= {
        "FACEFUSION_BROKER_URL": broker_url,
        "FACEFUSION_STORAGE_ROOTS": str(root),
        "FACEFUSION_MODELS_DIR": str(models),
        "FACEFUSION_EXECUTION_PROVIDER": "cpu",
        "FACEFUSION_INFERENCE_THREADS": "1",
        "FACEFUSION_BATCH_SIZE": "4",
        "FACEFUSION_PRELOAD_MODELS": "1",
        "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
    }
    return env | {f"FACEFUSION_{k.upper()}": v for k, v in settings.items()}


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a worker started with `env` reads."""
    return Settings.from_env({k: v for k, v in env.items() if k.startswith("FACEFUSION_")})


def start_launcher(
    env: dict[str, str],
    log_path: Path,
    *,
    metrics_dir: Path,
    metrics_port: int = 0,
    name: str = "",
    queues: str = "gpu,light",
    gpus: str = "none",
    light_concurrency: int = 1,
) -> subprocess.Popen[bytes]:
    """Start a worker the way an operator does: the real `facefusion-tasks worker` launcher
    (one Celery process per GPU, or FACEFUSION_GPU_PROCESSES CPU ones, plus a light one), in a
    session of its own, its output in `log_path` (started afresh)."""
    argv = [sys.executable, "-m", "facefusion_tasks", "worker", "--name", name,
            "--queues", queues, "--gpus", gpus, "--light-concurrency", str(light_concurrency),
            "--metrics-port", str(metrics_port), "--metrics-dir", str(metrics_dir),
            "--loglevel", "info"]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_hang_up_as_from_a_terminal,
        )  # fmt: skip


def _hang_up_as_from_a_terminal() -> None:
    """SIGHUP at its default, as a launcher started from a shell has it: a test run under
    nohup (a CI runner's) would hand every launcher an ignored SIGHUP, which it keeps."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


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


@contextmanager
def _flushed(broker_url: str) -> Iterator[None]:
    """The test database flushed before and after (a private server may be gone after)."""
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    try:
        yield
    finally:
        with contextlib.suppress(redis.ConnectionError):
            client.flushdb()


class Cluster:
    """Named launchers sharing a broker, storage root and stand-in models."""

    def __init__(self, root: Path, models: Path, broker_url: str, **settings: str) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = fleet_env(root, models, broker_url, **settings)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def settings(self) -> Settings:
        return settings_of(self.env)

    def producer(self) -> Producer:
        return Producer(self.settings())

    def start_worker(
        self,
        name: str,
        *,
        queues: str = "gpu,light",
        gpus: str = "none",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        """A launcher whose node names are prefixed with `name`, started and ready (`env`
        adds to the cluster's environment). Its metrics directory is its own unless the test
        set one."""
        metrics_dir = Path(self.env.get("FACEFUSION_METRICS_DIR") or self.logs / f"metrics-{name}")
        self.workers[name] = start_launcher(
            self.env | (env or {}), self.logs / f"{name}.log", metrics_dir=metrics_dir, name=name,
            queues=queues, gpus=gpus, light_concurrency=concurrency,
        )  # fmt: skip
        gpu_processes = len(gpus.split(",")) if gpus not in {"none", "auto"} else 1
        expected = (gpu_processes if "gpu" in queues else 0) + (1 if "light" in queues else 0)
        self.wait_ready(name, processes=expected)

    def wait_ready(self, name: str, *, processes: int = 1, timeout: float = 60) -> None:
        """Until every Celery process of the launcher says it is ready."""

        def settled() -> bool:  # ready, or gone
            return (
                self.log(name).count(" ready.") >= processes
                or self.workers[name].poll() is not None
            )

        with contextlib.suppress(AssertionError):
            wait_for(settled, timeout=timeout, interval=0.2)
        if self.log(name).count(" ready.") < processes:
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
    try:
        with _flushed(broker_url):
            fleet = Cluster(root, models, broker_url, **settings)
            try:
                yield fleet
            finally:
                fleet.stop_all()
    finally:
        shutil.rmtree(root / ".facefusion-work", ignore_errors=True)


class Launcher:
    """One unnamed launcher with its own metrics directory and exporter port, watched through
    its children and the workers' heartbeats (for tests that stop, kill and starve it)."""

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
        self.env = fleet_env(root, models, broker_url, **settings)
        self.proc: subprocess.Popen[bytes] | None = None

    def settings(self) -> Settings:
        return settings_of(self.env)

    def producer(self) -> Producer:
        return Producer(self.settings())

    def start(self, *, gpu_processes: int = 1, wait: bool = True) -> None:
        env = self.env | {"FACEFUSION_GPU_PROCESSES": str(gpu_processes)}
        self.proc = start_launcher(
            env, self.log_path, metrics_dir=self.metrics_dir, metrics_port=self.port
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
    with _flushed(broker_url):
        fleet = Launcher(root, models, broker_url, metrics_dir=metrics_dir, port=port, **settings)
        try:
            yield fleet
        finally:
            fleet.stop()
