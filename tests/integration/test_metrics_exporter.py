"""The exporter against a real Redis fed by a real Celery app, served over real HTTP."""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu import Queue
from prometheus_client.parser import text_string_to_metric_families

from facefusion_tasks.metrics import multiproc
from facefusion_tasks.metrics.exporter import make_server, start_in_thread
from facefusion_tasks.metrics.gpu import GpuCollector
from facefusion_tasks.metrics.keys import PENDING_KEY, RUNNING_KEY, messages_in_line
from facefusion_tasks.metrics.queues import (
    QueueCollector,
    alive_workers,
    heartbeat,
    priority_keys,
    read_queues,
)
from tests.cluster import free_port, private_redis

pytestmark = pytest.mark.integration

#: kombu priorities of the chunks we enqueue, in send order (0 = served first on Redis).
PRIORITIES = [0, 0, 2, 4, 5, 7, 8, 9, 9, 9]
#: How many the "worker" reserves (basic_get without ack): they come off the priority-0 list.
RESERVED = 3


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server: the shared one on 6379 is never touched."""
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture()
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()


def celery_app(url: str) -> Celery:
    app = Celery("metrics-test", broker=url, set_as_current=False)
    # The same queue declarations and serializer as facefusion_tasks.app.
    app.conf.update(
        task_queues=(Queue("gpu"), Queue("light")),
        task_serializer="json",
        accept_content=["json"],
    )
    return app


@pytest.fixture()
def enqueued(broker: redis.Redis, redis_url: str) -> Iterator[tuple[Celery, float]]:
    """Ten gpu chunks across all priority steps, two light tasks, three chunks reserved."""
    app = celery_app(redis_url)
    base = time.time() - 1000.0
    for index, priority in enumerate(PRIORITIES):
        app.send_task(
            "facefusion.chunk",
            args=["job", index],
            queue="gpu",
            priority=priority,
            headers={"ff_enqueued_at": base + index},
        )
    for _ in range(2):
        app.send_task("facefusion.stitch", args=["job"], queue="light", headers={})
    connection = app.connection_for_read()
    channel = connection.default_channel
    # A worker's prefetch: delivered, not acknowledged -> kombu's `unacked` hash.
    reserved = [channel.basic_get("gpu", no_ack=False) for _ in range(RESERVED)]
    assert all(message is not None for message in reserved)
    try:
        yield app, base
    finally:
        connection.release()


def test_backlog_counts_every_priority_list_and_the_reserved(
    enqueued: tuple[Celery, float], broker: redis.Redis
) -> None:
    app, base = enqueued
    # The plain list alone, what LLEN-based exporters read, misses most of the work.
    assert broker.llen("gpu") == 0
    assert sum(broker.llen(key) for key in priority_keys("gpu")) == 7
    assert broker.hlen("unacked") == RESERVED

    depths = read_queues(broker, ["gpu", "light"])

    assert depths["gpu"].waiting == len(PRIORITIES) - RESERVED
    assert depths["gpu"].unacked == RESERVED
    assert depths["gpu"].backlog == len(PRIORITIES)
    assert depths["light"].waiting == 2 and depths["light"].unacked == 0
    with app.connection_for_read() as connection:
        # kombu's own count of waiting messages agrees.
        assert connection.default_channel._size("gpu") == depths["gpu"].waiting
    # The reserved three were the oldest; the oldest still waiting is the fourth sent.
    assert depths["gpu"].oldest_enqueued_at == pytest.approx(base + 3)
    assert depths["gpu"].oldest_age(base + 1000) == pytest.approx(997)
    # Light tasks carry no ff_enqueued_at: their age is unknown, reported as 0, never garbage.
    assert depths["light"].oldest_age(base + 1000) == 0.0


def test_an_empty_queue_reads_zero(broker: redis.Redis) -> None:
    depths = read_queues(broker, ["gpu"])
    assert depths["gpu"].backlog == 0
    assert depths["gpu"].oldest_age(time.time()) == 0.0


def test_collector_families(
    enqueued: tuple[Celery, float], broker: redis.Redis, redis_url: str
) -> None:
    _, base = enqueued
    # Two chunks running, one with no progress for 700 s: the collector failed whenever any
    # chunk ran, and every series it serves was gone (redis-py pairs a WITHSCORES reply).
    broker.zadd(RUNNING_KEY, {"job:0": base + 300, "job:1": base + 990})
    for protocol in (2, 3):  # redis-py 5 to 7 speak RESP2, 8 RESP3: WITHSCORES differs
        collector = QueueCollector(
            f"{redis_url}?protocol={protocol}", ["gpu", "light"], clock=lambda: base + 1000,
            stall_seconds=300,
        )  # fmt: skip
        liveness = {s.name: s.value for m in collector.collect() for s in m.samples}
        assert not collector.degraded
        assert liveness["facefusion_chunks_running"] == 2
        assert liveness["facefusion_chunks_stalled"] == 1
        assert liveness["facefusion_chunk_progress_oldest_age_seconds"] == pytest.approx(700)
    values = {
        (s.name, s.labels.get("queue")): s.value for m in collector.collect() for s in m.samples
    }
    assert values[("facefusion_exporter_redis_up", None)] == 1
    assert values[("facefusion_queue_length", "gpu")] == 7
    assert values[("facefusion_queue_unacked", "gpu")] == 3
    assert values[("facefusion_queue_backlog", "gpu")] == 10
    assert values[("facefusion_queue_backlog", "light")] == 2
    assert values[("facefusion_queue_oldest_age_seconds", "gpu")] == pytest.approx(997)
    assert values[("facefusion_workers_alive", None)] == 0


def test_a_redis_past_maxmemory_is_read_not_reported_down(
    enqueued: tuple[Celery, float], broker: redis.Redis, redis_url: str
) -> None:
    # Redis 7 refuses every command queued in a MULTI once it is past maxmemory, reads
    # included: the exporter read nothing, and on-call saw redis_up 0 and an empty backlog for
    # a Redis that was up and full.
    _, base = enqueued
    # Two chunks planned long ago and never seen running: one's message waits in line, the
    # other's is nowhere (its job counts as stalled).
    broker.zadd(PENDING_KEY, {"job:4": base, "lost:0": base})
    broker.zadd(RUNNING_KEY, {"job:0": base + 300})  # one chunk running, silent for 700 s
    broker.config_set("maxmemory-policy", "noeviction")
    broker.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            broker.set("probe", "1")
        collector = QueueCollector(
            redis_url, ["gpu", "light"], clock=lambda: base + 1000, stall_seconds=300
        )
        samples = [s for m in collector.collect() for s in m.samples]
        line = messages_in_line(broker, "gpu", held_since=base)
    finally:
        broker.config_set("maxmemory", "0")
    values = {(s.name, s.labels.get("queue")): s.value for s in samples}
    assert values[("facefusion_exporter_redis_up", None)] == 1 and not collector.degraded
    assert values[("facefusion_queue_backlog", "gpu")] == len(PRIORITIES)
    assert values[("facefusion_queue_unacked", "gpu")] == RESERVED
    assert values[("facefusion_queue_backlog", "light")] == 2
    assert values[("facefusion_chunks_running", None)] == 1
    assert values[("facefusion_chunk_progress_oldest_age_seconds", None)] == pytest.approx(700)
    assert values[("facefusion_jobs_stalled", None)] == 2  # "job" (its silent chunk), "lost"
    assert line == {("job", str(index)) for index in range(len(PRIORITIES))}
    # And it says why the workers' heartbeats go unwritten: full (a metrics probe saw every
    # worker read as gone, and nothing named the cause).
    memory = {(s.name, s.labels.get("policy")): s.value for s in samples}
    assert memory[("facefusion_redis_maxmemory_bytes", "noeviction")] == 1
    assert values[("facefusion_redis_used_memory_bytes", None)] > 1


def test_heartbeats_expire(broker: redis.Redis) -> None:
    heartbeat(broker, "gpu-0@host", {"queues": "gpu", "pid": 12}, ttl=1)
    heartbeat(broker, "gpu-1@host", {"queues": "gpu"}, ttl=30)
    workers = alive_workers(broker)
    assert set(workers) == {"gpu-0@host", "gpu-1@host"}
    assert workers["gpu-0@host"]["pid"] == 12 and "ts" in workers["gpu-0@host"]
    time.sleep(1.2)
    assert set(alive_workers(broker)) == {"gpu-1@host"}


def test_an_unreachable_broker_costs_one_gauge_not_the_scrape() -> None:
    collector = QueueCollector(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    started = time.monotonic()
    families = list(collector.collect())
    assert time.monotonic() - started < 2
    assert [(m.name, m.samples[0].value) for m in families] == [("facefusion_exporter_redis_up", 0)]


def test_the_queue_collector_reads_down_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    # It read 1 through a Redis outage, its series all gone: the health panel stayed green.
    from prometheus_client import generate_latest

    from facefusion_tasks.metrics.exporter import build_registry

    registry = build_registry(
        multiproc_dir=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", gpu=False,
        redis_timeout=0.3,
    )  # fmt: skip
    text = generate_latest(registry).decode()
    assert 'facefusion_exporter_collector_up{collector="queues"} 0.0' in text
    assert "facefusion_exporter_redis_up 0.0" in text


def write_worker_metrics(directory: Path) -> None:
    """A worker-like child process: prepare, import the definitions, count some work."""
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from facefusion_tasks.metrics import multiproc
        multiproc.prepare(Path({str(directory)!r}), wipe=False)
        from facefusion_tasks.metrics import definitions as d
        d.frames_processed_total.inc(240)
        d.stage_duration_seconds.labels(stage="detect").observe(0.012)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != multiproc.PROMETHEUS_ENV}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_one_http_server_serves_everything(
    enqueued: tuple[Celery, float],
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_worker_metrics(tmp_path)
    write_worker_metrics(tmp_path)  # two processes: the scrape must merge them
    caplog.set_level(logging.INFO, logger="facefusion_tasks.metrics.gpu")
    server = make_server(0, "127.0.0.1", redis_url=redis_url, multiproc_dir=tmp_path)
    start_in_thread(server)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert fetch(base + "/healthz")[::2] == (200, b"ok")
        assert fetch(base + "/nothing-here")[0] == 404
        status, headers, body = fetch(base + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        second = fetch(base + "/metrics", **{"Accept-Encoding": "gzip"})
        assert second[1]["Content-Encoding"] == "gzip"
        assert gzip.decompress(second[2]).startswith(b"# HELP")
    finally:
        server.shutdown()
        server.server_close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("facefusion_frames_processed_total", ())] == 480
    assert samples[("facefusion_stage_duration_seconds_count", (("stage", "detect"),))] == 2
    assert samples[("facefusion_queue_backlog", (("queue", "gpu"),))] == 10
    assert samples[("facefusion_queue_unacked", (("queue", "gpu"),))] == 3
    assert samples[("facefusion_exporter_redis_up", ())] == 1
    assert samples[("facefusion_exporter_compacted_processes_total", ())] == 2
    assert samples[("facefusion_exporter_multiproc_files", ())] >= 1
    # No GPU and no driver here: no GPU series at all, no error, one log line.
    assert not [name for name, _ in samples if name.startswith("facefusion_gpu_memory")]
    assert not [name for name, _ in samples if name.startswith("facefusion_gpu_utilization")]
    nvml_lines = [r for r in caplog.records if "NVML" in r.getMessage()]
    assert len(nvml_lines) == 1 and nvml_lines[0].levelno == logging.INFO


def test_gpu_collector_without_nvml_is_silent_after_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="facefusion_tasks.metrics.gpu")
    collector = GpuCollector(retry_seconds=0)
    assert list(collector.collect()) == []
    assert list(collector.collect()) == []  # retried, still absent, not logged again
    assert len([r for r in caplog.records if "NVML" in r.getMessage()]) == 1


def test_the_module_runs_as_a_command(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != multiproc.PROMETHEUS_ENV}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facefusion_tasks.metrics.exporter",
            "--port",
            str(port),
            "--addr",
            "127.0.0.1",
            "--redis-url",
            redis_url,
            "--multiproc-dir",
            str(tmp_path / "mp"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, body = fetch(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "exporter did not start"
                time.sleep(0.1)
        assert status == 200
        assert b"facefusion_exporter_redis_up 1.0" in body
    finally:
        process.terminate()
        process.wait(timeout=10)
