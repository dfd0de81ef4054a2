"""Thin Celery tasks: decode the message, call the runner, map errors to retry or failure."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init

from facefusion_tasks import observe, policy
from facefusion_tasks.app import (
    GPU_QUEUE,
    LIGHT_QUEUE,
    PRELOAD_ENV,
    TASK_CHUNK,
    TASK_PLAN,
    TASK_STITCH,
)
from facefusion_tasks.config import Settings
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import TERMINAL, JobStore, connect

log = logging.getLogger(__name__)

#: Message header carrying the enqueue time (queue wait and oldest-message age).
ENQUEUED_HEADER = "ff_enqueued_at"


@functools.cache
def _settings() -> Settings:
    return Settings.from_env()


@functools.cache
def _store() -> JobStore:
    return JobStore(connect(_settings().broker_url))


def kombu_priority(priority: int) -> int:
    """Users say 0..9 with 9 = most urgent (RabbitMQ's sense); kombu's Redis transport serves
    0 first, so flip it."""
    return 9 - max(0, min(9, priority))


def enqueue(app: Celery, name: str, args: list[Any], *, priority: int = 5) -> None:
    """Send a task with the enqueue-time header every consumer and the exporter rely on."""
    queue = GPU_QUEUE if name == TASK_CHUNK else LIGHT_QUEUE
    app.send_task(
        name,
        args=args,
        queue=queue,
        priority=kombu_priority(priority),
        headers={ENQUEUED_HEADER: time.time()},
    )


#: Seconds between worker heartbeats; the key lives three times as long.
HEARTBEAT_SECONDS = 10


def _heartbeat_loop(name: str) -> None:
    from facefusion_tasks.metrics.queues import heartbeat

    info = {"pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    while True:
        try:
            heartbeat(_store().r, name, info, ttl=3 * HEARTBEAT_SECONDS)
        except Exception as exc:  # Redis away: the key expires and the exporter says so
            log.debug("heartbeat failed: %s", exc)
        time.sleep(HEARTBEAT_SECONDS)


@worker_process_init.connect
def _on_child_start(**_: Any) -> None:
    # Runs in each pool child right after the fork and must return within seconds: model
    # loading and heartbeats go to background threads, so CUDA is first touched in the child
    # (never in the parent) and Celery's start-up handshake is never held up.
    # Metrics first, synchronously: prometheus_client must not be imported by two threads at
    # once (a concurrent first import fails with a partially initialised module).
    observe.metrics().worker_processes.set(1)
    observe.busy(False)
    if os.environ.get(PRELOAD_ENV) == "1":
        from facefusion_tasks.runner import MODELS

        MODELS.start(_settings())
    name = f"{socket.gethostname()}:{os.getpid()}"
    threading.Thread(target=_heartbeat_loop, args=(name,), name="ff-heartbeat", daemon=True).start()


@contextmanager
def _instrumented(task: Task, queue: str) -> Iterator[None]:
    """Queue wait on start, busy while running, the job's outcome once it has one."""
    observe.queue_wait(queue, getattr(task.request, ENQUEUED_HEADER, None))
    observe.busy(True)
    try:
        yield
    finally:
        observe.busy(False)


def _meter_job_end(job_id: str) -> None:
    """Count a finished job exactly once, whichever worker saw it finish."""
    store = _store()
    job = store.get(job_id)
    state = job.get("state", "")
    if state in TERMINAL and store.claim_metering(job_id):
        observe.job(
            state.lower(), job.get("reason", ""), created_at=float(job.get("created_at") or 0)
        )


def _timed_chunk(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    outcome, reason = "failed", Reason.INTERNAL.value
    try:
        result = fn()
        outcome = {"DONE": "succeeded", "FAILED": "failed"}.get(result["state"], "skipped")
        reason = result.get("reason", "none")
        return result
    except Exception as exc:  # a retry (celery.exceptions.Retry) or a crash
        from celery.exceptions import Retry

        outcome = "retried" if isinstance(exc, Retry) else "failed"
        cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
        reason = policy.reason_of(cause).value
        raise
    finally:
        if outcome != "skipped":
            observe.chunk(outcome, reason, seconds=time.perf_counter() - started)


def _settle(task: Task, job_id: str, index: int | None, error: Exception) -> Reason:
    """The one error-to-outcome policy for every task: retry what may pass on another attempt
    (celery's Retry is raised from here), else fail the job with the error's reason. Any
    exception ends here, so no job is left in a state that nothing will move."""
    from facefusion_tasks import runner

    outcome = policy.decide(
        error, attempt=task.request.retries, max_retries=_settings().chunk_retries
    )
    if outcome.retry:
        where = job_id if index is None else f"{job_id}/{index}"
        log.warning("%s %s failed (%s); retrying", task.name, where, outcome.message)
        raise task.retry(exc=error, countdown=1) from error
    if outcome.reason is Reason.INTERNAL:
        log.error("%s %s: unexpected error", task.name, job_id, exc_info=error)
    return runner.fail_job(_store(), job_id, error, index=index)


def register(app: Celery) -> None:
    """Attach the three tasks to `app`."""

    @app.task(name=TASK_PLAN, bind=True)
    def plan(self: Task, job_id: str) -> int:
        from facefusion_tasks import runner

        store = _store()
        try:
            with _instrumented(self, LIGHT_QUEUE):
                indexes = runner.plan_job(store, _settings(), job_id)
            priority = int(store.get(job_id).get("priority") or 5)
            for index in indexes:
                enqueue(app, TASK_CHUNK, [job_id, index], priority=priority)
        except Exception as exc:
            _settle(self, job_id, None, exc)
            _meter_job_end(job_id)
            return 0
        return len(indexes)

    @app.task(name=TASK_CHUNK, bind=True)
    def chunk(self: Task, job_id: str, index: int) -> dict[str, Any]:
        try:
            with _instrumented(self, GPU_QUEUE):
                return _timed_chunk(lambda: _run_chunk(self, job_id, index))
        finally:
            _meter_job_end(job_id)

    def _run_chunk(self: Task, job_id: str, index: int) -> dict[str, Any]:
        from facefusion_tasks import runner

        try:
            result, last = runner.run_chunk(
                _store(), _settings(), job_id, index, worker=self.request.hostname or "?"
            )
        except Exception as exc:
            return {"state": "FAILED", "reason": _settle(self, job_id, index, exc).value}
        if result is None:
            return {"state": "SKIPPED"}
        if last:
            enqueue(app, TASK_STITCH, [job_id], priority=9)
        return {"state": "DONE", "frames": result.frames, "faces": result.faces_swapped}

    @app.task(name=TASK_STITCH, bind=True)
    def stitch(self: Task, job_id: str) -> str | None:
        from facefusion_tasks import runner

        try:
            with _instrumented(self, LIGHT_QUEUE):
                output = runner.stitch_job(_store(), _settings(), job_id)
        except Exception as exc:
            _settle(self, job_id, None, exc)
            output = None
        _meter_job_end(job_id)
        return None if output is None else str(output)
