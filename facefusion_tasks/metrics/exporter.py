"""The one metrics HTTP server: /metrics (all processes merged, queues, GPUs) and /healthz."""

from __future__ import annotations

import argparse
import errno
import gzip
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from facefusion_tasks.config import DEFAULT_METRICS_PORT, broker_url_from_env, metrics_port_from_env
from facefusion_tasks.lifeline import follow_launcher
from facefusion_tasks.metrics import multiproc
from facefusion_tasks.metrics.compaction import CompactingCollector
from facefusion_tasks.metrics.definitions import EXPORTER_METRICS, QUEUES
from facefusion_tasks.metrics.gpu import GpuCollector
from facefusion_tasks.metrics.keys import metrics_disabled_field
from facefusion_tasks.metrics.queues import QueueCollector

log = logging.getLogger(__name__)

#: Default port: the exporter's own, never an API port.
DEFAULT_PORT = DEFAULT_METRICS_PORT


class _CompactionStats:
    """The exporter's view of its multiprocess directory (file count, compaction work)."""

    def __init__(self, compacting: CompactingCollector) -> None:
        self.compacting = compacting

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        # Registered after the compacting collector, so these describe this scrape's run.
        files = GaugeMetricFamily(
            "facefusion_exporter_multiproc_files",
            EXPORTER_METRICS["facefusion_exporter_multiproc_files"][1],
            value=self.compacting.files,
        )
        compacted = CounterMetricFamily(
            "facefusion_exporter_compacted_processes",
            EXPORTER_METRICS["facefusion_exporter_compacted_processes_total"][1],
            value=self.compacting.compacted_processes,
        )
        seconds = GaugeMetricFamily(
            "facefusion_exporter_compaction_seconds",
            EXPORTER_METRICS["facefusion_exporter_compaction_seconds"][1],
            value=self.compacting.last.seconds,
        )
        return [files, compacted, seconds]


#: The workers' progress stamps (the host's monotonic clock) and the age the exporter serves.
_PROGRESS_STAMP = "facefusion_worker_progress_monotonic_seconds"
_PROGRESS_AGE = "facefusion_worker_progress_age_seconds"


class _ProgressAges:
    """The merged worker metrics, with each queue's oldest progress stamp served as its age.
    The stamps and this clock are the same host's CLOCK_MONOTONIC, so the age needs no clock
    agreement with Prometheus or other hosts, and a wall-clock step cannot fake one."""

    def __init__(self, merged: Collector) -> None:
        self.merged = merged

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        metrics = list(self.merged.collect())
        now = time.monotonic()
        ages = GaugeMetricFamily(
            _PROGRESS_AGE, EXPORTER_METRICS[_PROGRESS_AGE][1], labels=["queue"]
        )
        kept = []
        for metric in metrics:
            if metric.name != _PROGRESS_STAMP:
                kept.append(metric)
                continue
            for sample in metric.samples:
                # +Inf: no live process is busy with the queue. 0: a value prometheus_client
                # created before its first write (no stamp; the clock is far past 0). A stamp
                # ahead of now cannot be (one clock), but reads as 0 rather than negative.
                stamp = sample.value
                age = max(now - stamp, 0.0) if math.isfinite(stamp) and stamp > 0 else 0.0
                ages.add_metric([sample.labels.get("queue", "")], age)
        return [*kept, ages]


class _Guarded:
    """One collector whose failure costs only its own families, never the scrape: the others
    are still served with HTTP 200, and facefusion_exporter_collector_up says which failed."""

    def __init__(self, name: str, collector: Collector, health: _Health) -> None:
        self.name = name
        self.collector = collector
        self.health = health

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            metrics = list(self.collector.collect())
        except Exception:
            if self.health.up.get(self.name) is not False:  # log transitions, not every scrape
                log.exception("metrics collector %s failed; serving the others", self.name)
            self.health.up[self.name] = False
            return []
        # A collector that answered with its own "down" gauge alone (the queue collector while
        # Redis is unreachable) served none of its series: not up, though it did not raise.
        working = not getattr(self.collector, "degraded", False)
        if working and self.health.up.get(self.name) is False:
            log.info("metrics collector %s works again", self.name)
        self.health.up[self.name] = working
        return metrics


class _Health:
    """Per-collector health of the last scrape (registered last, so it describes this one)."""

    def __init__(self) -> None:
        self.up: dict[str, bool] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        name = "facefusion_exporter_collector_up"
        family = GaugeMetricFamily(name, EXPORTER_METRICS[name][1], labels=["collector"])
        for collector, up in sorted(self.up.items()):
            family.add_metric([collector], 1 if up else 0)
        return [family]


class _Directory:
    """Recreates the multiprocess directory (and so its lock file) if someone deleted it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        if not self.directory.is_dir():
            log.error("metrics directory %s was gone; recreated", self.directory)
            self.directory.mkdir(parents=True, exist_ok=True)
        return []


def build_registry(
    *,
    multiproc_dir: Path,
    redis_url: str | None,
    queues: Sequence[str] = QUEUES,
    gpu: bool = True,
    redis_timeout: float = 1.0,
    stall_seconds: float = 300.0,
) -> CollectorRegistry:
    """A registry with the exporter's collectors (and nothing process-local)."""
    multiproc_dir = Path(multiproc_dir)
    multiproc_dir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry(auto_describe=False)
    health = _Health()
    compacting = CompactingCollector(multiproc_dir)
    collectors: list[tuple[str, Collector]] = [
        ("directory", _Directory(multiproc_dir)),
        ("multiprocess", _ProgressAges(compacting)),
        ("compaction_stats", _CompactionStats(compacting)),
    ]
    if redis_url:
        queue_collector = QueueCollector(
            redis_url, queues, timeout=redis_timeout, stall_seconds=stall_seconds,
            disabled_field=metrics_disabled_field(multiproc_dir),
        )  # fmt: skip
        collectors.append(("queues", queue_collector))
    if gpu:
        collectors.append(("gpu", GpuCollector()))
    for name, collector in collectors:
        registry.register(_Guarded(name, collector, health))
    registry.register(health)
    return registry


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._metrics()
            elif path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

        def _metrics(self) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(registry)
            except Exception:
                log.exception("metrics collection failed")
                self._send(500, "text/plain; charset=utf-8", b"collection failed\n")
                return
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            if gzipped:
                body = gzip.compress(body, compresslevel=3)
            self._send(200, content_type, body, gzipped=gzipped)

        def _send(
            self, status: int, content_type: str, body: bytes, *, gzipped: bool = False
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("%s - %s", self.address_string(), format % args)

    return Handler


def make_server(
    port: int = DEFAULT_PORT,
    addr: str = "0.0.0.0",
    *,
    redis_url: str | None,
    multiproc_dir: Path,
    queues: Sequence[str] = QUEUES,
    gpu: bool = True,
    stall_seconds: float = 300.0,
) -> ThreadingHTTPServer:
    """A bound, not yet serving, server (port 0 picks a free port: see server_address)."""
    registry = build_registry(
        multiproc_dir=multiproc_dir,
        redis_url=redis_url,
        queues=queues,
        gpu=gpu,
        stall_seconds=stall_seconds,
    )
    server = ThreadingHTTPServer((addr, port), _handler(registry))
    server.daemon_threads = True
    return server


#: Seconds between attempts to bind a port that is taken.
BIND_RETRY_SECONDS = 5.0


def serve(
    port: int = DEFAULT_PORT,
    addr: str = "0.0.0.0",
    *,
    redis_url: str | None,
    multiproc_dir: Path,
    queues: Sequence[str] = QUEUES,
    gpu: bool = True,
    stall_seconds: float = 300.0,
    bind_retry_seconds: float = BIND_RETRY_SECONDS,
) -> None:
    """Serve /metrics and /healthz until interrupted. A taken port is logged and tried again
    every `bind_retry_seconds`: the workers beside this exporter keep working meanwhile."""
    while True:
        try:
            server = make_server(
                port,
                addr,
                redis_url=redis_url,
                multiproc_dir=multiproc_dir,
                queues=queues,
                gpu=gpu,
                stall_seconds=stall_seconds,
            )
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.error(
                "metrics port %s:%s is taken (%s); trying again in %.0f s",
                addr,
                port,
                exc.strerror,
                bind_retry_seconds,
            )
            time.sleep(bind_retry_seconds)
    log.info(
        "metrics exporter on http://%s:%s/metrics (dir %s, broker %s, gpu %s)",
        *server.server_address[:2],
        multiproc_dir,
        "yes" if redis_url else "no",
        "if present" if gpu else "no",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve in a daemon thread (tests, embedding); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True)
    thread.start()
    return thread


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """CLI flag > FACEFUSION_* environment variable > default."""
    parser = argparse.ArgumentParser(
        prog="facefusion-tasks metrics",
        description="Serve the fleet's metrics: every worker process merged, queues, GPUs.",
    )
    env = os.environ
    parser.add_argument("--port", type=int, default=metrics_port_from_env(env))
    parser.add_argument("--addr", default=env.get("FACEFUSION_METRICS_ADDR") or "0.0.0.0")
    parser.add_argument(
        "--redis-url",
        default=broker_url_from_env(env) or None,
        help="broker to read queue depth and heartbeats from (default FACEFUSION_BROKER_URL "
        "with FACEFUSION_BROKER_PASSWORD_FILE: prefer those, since a password on the command "
        "line is visible to every user of the host; '' = no queue metrics)",
    )
    parser.add_argument(
        "--multiproc-dir",
        type=multiproc.directory_name,
        default=multiproc.default_dir(),
        help="the workers' multiprocess directory (default FACEFUSION_METRICS_DIR)",
    )
    parser.add_argument(
        "--queues",
        default=env.get("FACEFUSION_METRICS_QUEUES") or ",".join(QUEUES),
        help="comma-separated Celery queues to report",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=float(env.get("FACEFUSION_STALL_SECONDS") or 300),
        help="no progress for this long counts a chunk or job as stalled",
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip NVML")
    parser.add_argument("--log-level", default=env.get("FACEFUSION_LOG_LEVEL") or "INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m facefusion_tasks.metrics.exporter --port 9808 --redis-url redis://...`."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    follow_launcher()  # a launcher's exporter goes with it (its successor starts its own)
    serve(
        args.port,
        args.addr,
        redis_url=args.redis_url,
        multiproc_dir=args.multiproc_dir,
        queues=[q.strip() for q in args.queues.split(",") if q.strip()],
        gpu=not args.no_gpu,
        stall_seconds=args.stall_seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
