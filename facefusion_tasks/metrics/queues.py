"""Exact Celery-on-Redis backlog and worker heartbeats, read by the exporter at scrape time."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from facefusion_tasks.fleet_clock import fleet_now
from facefusion_tasks.metrics.definitions import EXPORTER_METRICS, QUEUES
from facefusion_tasks.metrics.keys import (
    DEFAULT_PRIORITY_STEPS,
    HEARTBEAT_PREFIX,
    KOMBU_SEP,
    LIVE_KEY,
    METRICS_DISABLED_KEY,
    METRICS_LAUNCHED_KEY,
    PENDING_KEY,
    RUNNING_KEY,
    UNACKED_KEY,
    InLine,
    as_text,
    heartbeat,
    messages_in_line,
    priority_keys,
    waits_in,
)
from facefusion_tasks.metrics.snapshot import Read, read_together
from facefusion_tasks.queue_names import GPU_QUEUE, LIGHT_QUEUE
from facefusion_tasks.store_keys import QUEUED, RUNNING, job_key

__all__ = [
    "DEFAULT_PRIORITY_STEPS",
    "HEARTBEAT_PREFIX",
    "METRICS_DISABLED_KEY",
    "QueueCollector",
    "alive_workers",
    "heartbeat",
    "priority_keys",
    "read_liveness",
    "read_queues",
]

log = logging.getLogger(__name__)

#: kombu's exchange binding table: a SET of "routing_key\x06\x16pattern\x06\x16queue".
BINDING_KEY = "_kombu.binding.{exchange}"
#: Header our producer puts on every task message (unix time, float).
ENQUEUED_HEADER = "ff_enqueued_at"


@dataclass(frozen=True)
class QueueDepth:
    """One queue's backlog at one instant."""

    queue: str
    waiting: int
    unacked: int
    oldest_enqueued_at: float | None

    @property
    def backlog(self) -> int:
        return self.waiting + self.unacked

    def oldest_age(self, now: float) -> float:
        if self.waiting == 0 or self.oldest_enqueued_at is None:
            return 0.0
        return max(0.0, now - self.oldest_enqueued_at)


def read_queues(
    client: redis.Redis,
    queues: Sequence[str] = QUEUES,
    *,
    steps: Sequence[int] = DEFAULT_PRIORITY_STEPS,
    key_prefix: str = "",
) -> dict[str, QueueDepth]:
    """Waiting and unacked counts and the oldest waiting enqueue time, per queue.

    One atomic read, so lists and the unacked hash are one consistent snapshot. (A message a
    worker has just popped and not yet recorded in `unacked` is in neither: kombu moves it in two
    steps, so a backlog can read one low for that instant; nothing can make it read high.)
    """
    reads: list[Read] = []
    layout: list[tuple[str, str]] = []
    for queue in queues:
        for key in priority_keys(queue, steps):
            # Both ends: the tail is the next to run, but a message rejected with requeue goes
            # back to the head with its old enqueue time.
            name = key_prefix + key
            reads += [("LLEN", name), ("LINDEX", name, -1), ("LINDEX", name, 0)]
            layout.append((queue, key))
    reads.append(("HVALS", key_prefix + UNACKED_KEY))
    replies = read_together(client, reads)
    waiting = dict.fromkeys(queues, 0)
    oldest: dict[str, float | None] = dict.fromkeys(queues, None)
    for index, (queue, _key) in enumerate(layout):
        length, tail, head = replies[3 * index : 3 * index + 3]
        waiting[queue] += int(length or 0)
        for raw in (tail, head):
            stamp = enqueued_at(raw)
            current = oldest[queue]
            if stamp is not None and (current is None or stamp < current):
                oldest[queue] = stamp
    unacked = _count_unacked(client, replies[-1], queues, key_prefix)
    return {
        queue: QueueDepth(queue, waiting[queue], unacked[queue], oldest[queue]) for queue in queues
    }


def enqueued_at(raw: bytes | str | None) -> float | None:
    """The ff_enqueued_at header of a raw kombu message, or None when absent or unreadable."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        value = float(message["headers"][ENQUEUED_HEADER])
    except (ValueError, TypeError, KeyError):
        return None
    return value if math.isfinite(value) else None


def _count_unacked(
    client: redis.Redis,
    entries: Iterable[bytes | str],
    queues: Sequence[str],
    key_prefix: str,
) -> dict[str, int]:
    counts = dict.fromkeys(queues, 0)
    routes: list[tuple[str, str]] = []
    for raw in entries:
        try:
            _message, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        routes.append((str(exchange or ""), str(routing_key or "")))
    bindings = _bindings(client, {exchange for exchange, _ in routes if exchange}, key_prefix)
    for exchange, routing_key in routes:
        # The queue a message returns to is what kombu's restore would pick: the queues bound
        # to its exchange with its routing key; with no binding (default exchange) the routing
        # key is the queue name.
        targets = bindings.get(exchange, {}).get(routing_key) or [routing_key]
        for queue in targets:
            if queue in counts:
                counts[queue] += 1
    return counts


def _bindings(
    client: redis.Redis, exchanges: set[str], key_prefix: str
) -> dict[str, dict[str, list[str]]]:
    if not exchanges:
        return {}
    ordered = sorted(exchanges)
    pipe = client.pipeline(transaction=False)
    for exchange in ordered:
        pipe.smembers(key_prefix + BINDING_KEY.format(exchange=exchange))
    table: dict[str, dict[str, list[str]]] = {}
    for exchange, members in zip(ordered, pipe.execute(), strict=True):
        for member in members or ():
            text = member.decode() if isinstance(member, bytes) else str(member)
            parts = text.split(KOMBU_SEP)
            if len(parts) == 3:
                table.setdefault(exchange, {}).setdefault(parts[0], []).append(parts[2])
    return table


def alive_workers(client: redis.Redis, *, key_prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every worker whose heartbeat has not expired: name -> the info it last sent."""
    pattern = f"{key_prefix}{HEARTBEAT_PREFIX}*"
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in client.scan_iter(pattern)]
    if not keys:
        return {}
    workers: dict[str, dict[str, Any]] = {}
    for key, raw in zip(keys, client.mget(keys), strict=True):
        if raw is None:
            continue  # expired between SCAN and MGET
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}
        workers[key[len(key_prefix) + len(HEARTBEAT_PREFIX) :]] = (
            info if isinstance(info, dict) else {}
        )
    return workers


@dataclass(frozen=True)
class Liveness:
    """Running and stalled work at one instant, from the job store's liveness indexes."""

    running: int
    stalled_chunks: int
    stalled_jobs: int
    oldest_progress_age: float


def read_liveness(
    client: redis.Redis, *, stall_seconds: float, now: float,
    gpu_line: Callable[[], InLine] = frozenset, light_line: Callable[[], InLine] = frozenset,
    key_prefix: str = "",
) -> Liveness:  # fmt: skip
    """Count running chunks, those with no progress for `stall_seconds`, and the jobs they
    belong to, plus jobs stuck as long as the sweep sees them: queued, planning, stitching or
    committing (a QUEUED job, or a RUNNING one waiting for its stitch, only when its message is
    not in `light_line`), and jobs with a chunk whose message has not reached a worker as long
    and is not in `gpu_line` either (lost: the sweep sends it again, as it does for the rest).
    Each line is read only when something has waited long enough to be looked for there."""
    cutoff = now - stall_seconds
    stale = ("-inf", cutoff, "LIMIT", 0, 10000)
    running, stale_chunks, oldest, stale_jobs, unsent = read_together(
        client,
        [
            ("ZCARD", key_prefix + RUNNING_KEY),
            ("ZRANGEBYSCORE", key_prefix + RUNNING_KEY, *stale),
            ("ZRANGE", key_prefix + RUNNING_KEY, 0, 0, "WITHSCORES"),  # [[member, score]]
            ("ZRANGEBYSCORE", key_prefix + LIVE_KEY, *stale),
            ("ZRANGEBYSCORE", key_prefix + PENDING_KEY, *stale),
        ],
    )
    jobs = {as_text(member).rpartition(":")[0] for member in stale_chunks}
    jobs |= _stuck_jobs(client, [as_text(m) for m in stale_jobs], light_line, key_prefix)
    line = gpu_line() if unsent else frozenset()
    for member in unsent:
        job_id, _, index = as_text(member).rpartition(":")
        if not waits_in(line, job_id, index):
            jobs.add(job_id)
    age = max(0.0, now - float(oldest[0][1])) if oldest else 0.0
    return Liveness(int(running), len(stale_chunks), len(jobs), age)


def _stuck_jobs(
    client: redis.Redis, stale: list[str], light_line: Callable[[], InLine], key_prefix: str
) -> set[str]:
    """The stale jobs the sweep would act on: all but a QUEUED or RUNNING one whose plan or
    stitch message waits in the light queue's line (or may: a line too long to read)."""
    if not stale:
        return set()
    pipe = client.pipeline(transaction=False)
    for job_id in stale:
        pipe.hget(key_prefix + job_key(job_id), "state")
    states = [as_text(state) if state is not None else "" for state in pipe.execute()]
    waiting = [j for j, state in zip(stale, states, strict=True) if state in (QUEUED, RUNNING)]
    line = light_line() if waiting else frozenset()
    return {j for j in stale if j not in waiting or not waits_in(line, j)}


def _family(name: str) -> GaugeMetricFamily:
    _type, documentation, labels = EXPORTER_METRICS[name]
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class QueueCollector:
    """Scrape-time backlog per queue, live workers, and whether Redis answered at all."""

    def __init__(
        self,
        redis_url: str,
        queues: Sequence[str] = QUEUES,
        *,
        timeout: float = 1.0,
        steps: Sequence[int] = DEFAULT_PRIORITY_STEPS,
        key_prefix: str = "",
        clock: Callable[[], float] | None = None,
        stall_seconds: float = 300.0,
        disabled_field: str = "",
    ) -> None:
        # Short timeouts: a hung broker must cost one scrape a second, not the scrape timeout.
        self.client = redis.Redis.from_url(
            redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
        )
        self.queues = tuple(queues)
        self.steps = tuple(steps)
        self.key_prefix = key_prefix
        # Heartbeats and enqueue stamps are on the fleet's clock (Redis's); so is their age.
        self.clock = clock or (lambda: fleet_now(self.client))
        self.stall_seconds = stall_seconds
        #: This launcher's field of METRICS_DISABLED_KEY (metrics_disabled_field); "": none.
        self.disabled_field = disabled_field
        self._was_up: bool | None = None
        #: Whether the last scrape served redis_up=0 alone (read by the exporter's health).
        self.degraded = False

    def describe(self) -> list[Metric]:
        return []  # never touch Redis at registration time

    def collect(self) -> Iterable[Metric]:
        up = _family("facefusion_exporter_redis_up")
        try:
            depths = read_queues(
                self.client, self.queues, steps=self.steps, key_prefix=self.key_prefix
            )
            workers = alive_workers(self.client, key_prefix=self.key_prefix)
            now = self.clock()
            liveness = read_liveness(
                self.client, stall_seconds=self.stall_seconds, now=now,
                gpu_line=lambda: messages_in_line(
                    self.client, GPU_QUEUE, held_since=now - self.stall_seconds,
                    key_prefix=self.key_prefix,
                ),
                light_line=lambda: messages_in_line(
                    self.client, LIGHT_QUEUE, held_since=now - self.stall_seconds,
                    key_prefix=self.key_prefix,
                ),  # fmt: skip
                key_prefix=self.key_prefix,
            )  # fmt: skip
            disabled, launched = self._disabled()
            memory = redis_memory(self.client)
        except (redis.RedisError, OSError) as exc:
            if self._was_up is not False:  # log transitions, not every scrape
                log.warning("broker unreachable from the metrics exporter: %s", exc)
            self._was_up = False
            up.add_metric([], 0)
            # Served, but its series are gone: the collector-health gauge says it did not work.
            self.degraded = True
            return [up]
        if self._was_up is False:
            log.info("broker reachable again from the metrics exporter")
        self._was_up = True
        self.degraded = False
        up.add_metric([], 1)
        length = _family("facefusion_queue_length")
        unacked = _family("facefusion_queue_unacked")
        backlog = _family("facefusion_queue_backlog")
        oldest = _family("facefusion_queue_oldest_age_seconds")
        for queue, depth in depths.items():
            length.add_metric([queue], depth.waiting)
            unacked.add_metric([queue], depth.unacked)
            backlog.add_metric([queue], depth.backlog)
            oldest.add_metric([queue], depth.oldest_age(now))
        alive = _family("facefusion_workers_alive")
        alive.add_metric([], len(workers))
        per_queue = _family("facefusion_queue_workers")
        for queue in self.queues:
            per_queue.add_metric([queue], sum(_serves(info, queue) for info in workers.values()))
        families: list[Metric] = [up, length, unacked, backlog, oldest, alive, per_queue]
        if memory is not None:
            # A Redis past maxmemory refuses heartbeats: every worker reads as gone, and
            # nothing else says why (a metrics probe's finding).
            used, limit, policy = memory
            family = _family("facefusion_redis_used_memory_bytes")
            family.add_metric([], used)
            families.append(family)
            family = _family("facefusion_redis_maxmemory_bytes")
            family.add_metric([policy], limit)
            families.append(family)
        for name, value in (
            ("facefusion_chunks_running", liveness.running),
            ("facefusion_chunks_stalled", liveness.stalled_chunks),
            ("facefusion_jobs_stalled", liveness.stalled_jobs),
            ("facefusion_chunk_progress_oldest_age_seconds", liveness.oldest_progress_age),
        ):
            family = _family(name)
            family.add_metric([], value)
            families.append(family)
        name = "facefusion_metrics_disabled_processes_total"
        families.append(
            CounterMetricFamily(
                name.removesuffix("_total"),
                EXPORTER_METRICS[name][1],
                value=disabled,
                created=launched,
            )  # fmt: skip
        )
        return families

    def _disabled(self) -> tuple[int, float | None]:
        """This launcher's count of worker processes that disabled their metrics, and when the
        count began (its start; None when not recorded)."""
        if not self.disabled_field:
            return 0, None
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(self.key_prefix + METRICS_DISABLED_KEY, self.disabled_field)
            pipe.hget(self.key_prefix + METRICS_LAUNCHED_KEY, self.disabled_field)
            count, launched = pipe.execute()
        try:
            started = float(launched) if launched is not None else None
        except ValueError:
            started = None
        return int(count or 0), started


def redis_memory(client: redis.Redis) -> tuple[int, int, str] | None:
    """(used_memory, maxmemory, maxmemory_policy) from INFO memory; None where INFO is refused
    (managed Redis services may rename or forbid it): the other series do not depend on it."""
    try:
        info = client.info("memory")
    except redis.ResponseError:
        return None
    try:
        return (
            int(info["used_memory"]),
            int(info.get("maxmemory") or 0),
            str(info.get("maxmemory_policy") or "unknown"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _serves(info: Mapping[str, Any], queue: str) -> bool:
    # A heartbeat without a queue list comes from a worker older than the list: it served both.
    queues = info.get("queues")
    return queue in queues if isinstance(queues, list) else True
