"""Monitoring never stops production: broken storage, a deleted directory, a taken port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from facefusion_tasks.jobs import Chunk
from facefusion_tasks.metrics import multiproc
from facefusion_tasks.metrics.exporter import make_server, start_in_thread
from facefusion_tasks.metrics.keys import LIVE_KEY, PENDING_KEY
from facefusion_tasks.metrics.queues import (
    METRICS_DISABLED_KEY,
    QueueCollector,
    heartbeat,
    read_liveness,
)
from facefusion_tasks.store import PLANNING, JobStore
from tests.cluster import free_port
from tests.integration.test_metrics_exporter import (
    fetch,
    redis_url,  # noqa: F401 - the module's private redis-server fixture
    write_worker_metrics,
)

pytestmark = pytest.mark.timeout(60)


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


@pytest.fixture()
def broker(redis_url: str) -> Iterator[redis.Redis]:  # noqa: F811
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def test_a_deleted_metrics_directory_still_scrapes_200_and_is_recreated(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    broker: redis.Redis,
) -> None:
    directory = tmp_path / "mp"
    directory.mkdir()
    write_worker_metrics(directory)
    server = make_server(0, "127.0.0.1", redis_url=redis_url, multiproc_dir=directory, gpu=False)
    start_in_thread(server)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        assert fetch(url)[0] == 200
        shutil.rmtree(directory)
        status, _, body = fetch(url)
        assert status == 200
        values = samples(body)
        # The queue gauges survive, and the directory (with its lock) is back.
        assert values[("facefusion_exporter_redis_up", ())] == 1
        assert values[("facefusion_exporter_collector_up", (("collector", "multiprocess"),))] == 1
        assert directory.is_dir()
        write_worker_metrics(directory)  # a worker started after the deletion is counted
        values = samples(fetch(url)[2])
        assert values[("facefusion_frames_processed_total", ())] == 240
    finally:
        server.shutdown()
        server.server_close()


def test_a_broken_collector_costs_its_own_series_not_the_scrape(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    broker: redis.Redis,
) -> None:
    directory = tmp_path / "mp"
    write_worker_metrics(directory)
    server = make_server(0, "127.0.0.1", redis_url=redis_url, multiproc_dir=directory, gpu=False)
    start_in_thread(server)
    try:
        # Unreadable, and impossible to recreate: a plain file where the directory was.
        shutil.rmtree(directory)
        directory.write_text("not a directory")
        status, _, body = fetch(f"http://127.0.0.1:{server.server_address[1]}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200
    values = samples(body)
    assert values[("facefusion_exporter_collector_up", (("collector", "multiprocess"),))] == 0
    assert values[("facefusion_exporter_collector_up", (("collector", "queues"),))] == 1
    assert values[("facefusion_queue_backlog", (("queue", "gpu"),))] == 0


def test_a_taken_port_is_logged_and_retried_until_free(tmp_path: Path) -> None:
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    code = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        from pathlib import Path
        from facefusion_tasks.metrics.exporter import serve
        serve({port}, "127.0.0.1", redis_url=None, multiproc_dir=Path({str(tmp_path)!r}),
              gpu=False, bind_retry_seconds=0.2)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != multiproc.PROMETHEUS_ENV}
    log = tmp_path / "exporter.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=sink)
    try:
        deadline = time.monotonic() + 20
        while b"is taken" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        holder.close()
        while True:
            try:
                status = fetch(f"http://127.0.0.1:{port}/metrics")[0]
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert status == 200
    finally:
        holder.close()
        process.terminate()
        process.wait(10)


def test_stalled_work_and_workers_per_queue_are_gauged(broker: redis.Redis, redis_url: str) -> None:  # noqa: F811
    store = JobStore(broker)
    job = store.create({})
    plan = [Chunk(index=i, start_pts=i, end_pts=i + 1, frames=1, span=None) for i in range(2)]
    store.set_state(job, PLANNING)  # as the planner does
    store.set_plan(job, plan, 2, {})
    store.chunk_delivered(job, 0, worker="w@h", pid=1, now=1000.0)
    store.chunk_heartbeat(job, 1, 5, now=1095.0)
    stuck = store.create({})
    broker.zadd("facefusion:live", {stuck: 900.0})
    heartbeat(broker, "h:1", {"queues": ["gpu"]})
    heartbeat(broker, "h:2", {"queues": ["light"]})
    heartbeat(broker, "h:3", {})  # from an older worker: it served both
    broker.hset(METRICS_DISABLED_KEY, "here:/run/a", 2)
    broker.hset(METRICS_DISABLED_KEY, "here:/run/b", 5)  # another launcher's, on this host
    collector = QueueCollector(
        redis_url, stall_seconds=60, clock=lambda: 1100.0, disabled_field="here:/run/a"
    )
    values = {
        (s.name, s.labels.get("queue")): s.value for m in collector.collect() for s in m.samples
    }
    assert values[("facefusion_chunks_running", None)] == 2
    assert values[("facefusion_chunks_stalled", None)] == 1
    assert values[("facefusion_jobs_stalled", None)] == 2
    assert values[("facefusion_chunk_progress_oldest_age_seconds", None)] == 100
    assert values[("facefusion_queue_workers", "gpu")] == 2
    assert values[("facefusion_queue_workers", "light")] == 2
    assert values[("facefusion_workers_alive", None)] == 3
    assert values[("facefusion_metrics_disabled_processes_total", None)] == 2


def test_a_chunk_whose_message_is_nowhere_in_the_gpu_queue_counts_its_job_stalled(
    broker: redis.Redis,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> None:
    store = JobStore(broker)
    job = store.create({})
    store.set_state(job, PLANNING)  # as the planner does
    store.set_plan(job, [Chunk(index=0, start_pts=0, end_pts=1, frames=1, span=None)], 1, {})
    store.set_state(job, "RUNNING")
    broker.zadd(PENDING_KEY, {f"{job}:0": 900.0})  # sent at 900, never taken
    collector = QueueCollector(redis_url, stall_seconds=60, clock=lambda: 1100.0)
    values = {
        (s.name, s.labels.get("queue")): s.value for m in collector.collect() for s in m.samples
    }
    assert values[("facefusion_queue_length", "gpu")] == 0
    assert values[("facefusion_jobs_stalled", None)] == 1
    # Its message waiting in the gpu queue (behind others): not stalled.
    line = frozenset({(job, "0"), ("other", "0")})
    waiting = read_liveness(broker, stall_seconds=60, now=1100.0, gpu_line=lambda: line)
    assert waiting.stalled_jobs == 0
    # A busy queue that does not hold it: lost, stalled. Too long a line to read: it may wait.
    other = frozenset({("other", "0")})
    assert (
        read_liveness(broker, stall_seconds=60, now=1100.0, gpu_line=lambda: other).stalled_jobs
        == 1
    )
    assert (
        read_liveness(broker, stall_seconds=60, now=1100.0, gpu_line=lambda: None).stalled_jobs == 0
    )
    store.chunk_delivered(job, 0, worker="w@h", pid=1, now=1099.0)
    assert read_liveness(broker, stall_seconds=60, now=1100.0).stalled_jobs == 0
    # A job QUEUED since long ago: stalled unless its plan message waits in the light queue's
    # line, as the sweep judges it (no false alert on a busy fleet).
    queued = store.create({})
    broker.zadd(LIVE_KEY, {queued: 900.0})
    planned = frozenset({(queued,)})
    assert read_liveness(broker, stall_seconds=60, now=1100.0).stalled_jobs == 1
    waiting = read_liveness(broker, stall_seconds=60, now=1100.0, light_line=lambda: planned)
    assert waiting.stalled_jobs == 0
