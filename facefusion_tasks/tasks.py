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

import redis
from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown

from facefusion_tasks import observe, policy
from facefusion_tasks.app import (
    GPU_QUEUE,
    LIGHT_QUEUE,
    PRELOAD_ENV,
    QUEUES_ENV,
    TASK_CHUNK,
    TASK_CLOSE,
    TASK_PLAN,
    TASK_STITCH,
)
from facefusion_tasks.config import Settings
from facefusion_tasks.fleet_clock import fleet_now
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import (
    CANCELLED,
    DONE,
    SUCCEEDED,
    TERMINAL,
    Delivery,
    JobStore,
    connect,
)

log = logging.getLogger(__name__)

#: Message header carrying the enqueue time (queue wait and oldest-message age).
ENQUEUED_HEADER = "ff_enqueued_at"


@functools.cache
def _settings() -> Settings:
    return Settings.from_env()


@functools.cache
def _store() -> JobStore:
    settings = _settings()
    return JobStore(connect(settings.broker_url), record_ttl=settings.record_ttl_seconds)


def kombu_priority(priority: int) -> int:
    """Users say 0..9 with 9 = most urgent (RabbitMQ's sense); kombu's Redis transport serves
    0 first, so flip it."""
    return 9 - max(0, min(9, priority))


def enqueue(app: Celery, name: str, args: list[Any], *, priority: int = 5, sent_at: float) -> None:
    """Send a task with the enqueue-time header every consumer and the exporter rely on
    (`sent_at`: the fleet's clock, fleet_now)."""
    queue = GPU_QUEUE if name == TASK_CHUNK else LIGHT_QUEUE
    app.send_task(
        name,
        args=args,
        queue=queue,
        priority=kombu_priority(priority),
        headers={ENQUEUED_HEADER: sent_at},
    )


#: Seconds between worker heartbeats; the key lives three times as long.
HEARTBEAT_SECONDS = 10
#: Task names the stall sweep may send again.
_SWEEP_TASKS = {"chunk": TASK_CHUNK, "plan": TASK_PLAN, "stitch": TASK_STITCH}

#: The app the tasks are registered on (the sweep re-enqueues through it).
_APP: Celery | None = None


def _worker_queues() -> list[str]:
    raw = os.environ.get(QUEUES_ENV, "")
    return [q.strip() for q in raw.split(",") if q.strip()] or [GPU_QUEUE, LIGHT_QUEUE]


#: Set when this pool process exits cleanly: its heartbeat stops and its key goes.
_EXITING = threading.Event()
_HEARTBEAT: threading.Thread | None = None


def _heartbeat_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _heartbeat_loop(name: str) -> None:
    from facefusion_tasks.metrics.keys import heartbeat

    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "queues": _worker_queues(),
    }
    while not _EXITING.is_set():
        observe.check_storage()  # before the metrics storage can kill this process
        try:
            heartbeat(_store().r, name, info, ttl=3 * HEARTBEAT_SECONDS)
        except Exception as exc:  # Redis away: the key expires and the exporter says so
            log.debug("heartbeat failed: %s", exc)
        _EXITING.wait(HEARTBEAT_SECONDS)


@worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    # A clean exit (a warm shutdown, recycling after max tasks per child) says so at once; a
    # killed process's key still expires on its own. Bounded: a Redis that does not answer
    # must not hold the exit up.
    from facefusion_tasks.metrics.keys import forget_heartbeat

    _EXITING.set()

    def forget() -> None:
        # After the heartbeat's last write: one already on its way would bring the key back
        # for another 30 s.
        if _HEARTBEAT is not None:
            _HEARTBEAT.join(1)
        try:
            forget_heartbeat(_store().r, _heartbeat_name())
        except Exception as exc:  # best effort: the key expires anyway
            log.debug("could not remove the heartbeat: %s", exc)

    thread = threading.Thread(target=forget, name="ff-heartbeat-exit", daemon=True)
    thread.start()
    thread.join(2)


@worker_process_init.connect
def _on_child_start(**_: Any) -> None:
    # Runs in each pool child right after the fork and must return within seconds: model
    # loading and heartbeats go to background threads, so CUDA is first touched in the child
    # (never in the parent) and Celery's start-up handshake is never held up.
    # Metrics first, synchronously: prometheus_client must not be imported by two threads at
    # once (a concurrent first import fails with a partially initialised module).
    observe.configure(
        min_free_bytes=_settings().metrics_min_free_bytes, on_disable=_report_metrics_disabled
    )
    observe.metrics().worker_processes.set(1)
    for queue in _worker_queues():
        observe.busy(False, queue)
    if os.environ.get(PRELOAD_ENV) == "1":
        from facefusion_tasks.model_cache import MODELS

        MODELS.start(_settings())
    global _HEARTBEAT
    _HEARTBEAT = threading.Thread(
        target=_heartbeat_loop, args=(_heartbeat_name(),), name="ff-heartbeat", daemon=True
    )
    _HEARTBEAT.start()
    if LIGHT_QUEUE in _worker_queues():
        _start_sweep()


def _report_metrics_disabled(_problem: str) -> None:
    """Count, per launcher, the worker processes that stopped writing metrics (its exporter
    shows it: their own counters can no longer say so). In a thread: this can run inside
    worker_process_init, which must not wait on a slow Redis."""
    from facefusion_tasks.metrics.keys import METRICS_DISABLED_KEY, metrics_disabled_field
    from facefusion_tasks.metrics.multiproc import PROMETHEUS_ENV

    field = metrics_disabled_field(os.environ.get(PROMETHEUS_ENV, ""))

    def count() -> None:
        try:
            _store().r.hincrby(METRICS_DISABLED_KEY, field, 1)
        except Exception as exc:  # best effort: the log line already said it
            log.warning("could not count disabled metrics in Redis: %s", exc)

    threading.Thread(target=count, name="ff-metrics-disabled", daemon=True).start()


def _start_sweep() -> None:
    """The stall sweep, in a thread of each light-queue process (one sweep per period runs
    fleet-wide): it lives where no chunk runs, so a hung GPU process cannot stop it."""
    from facefusion_tasks import liveness
    from facefusion_tasks.metrics.keys import InLine, messages_in_line

    app = _APP
    if app is None:
        return

    def send(kind: str, args: list[Any], priority: int) -> None:
        enqueue(app, _SWEEP_TASKS[kind], args, priority=priority, sent_at=fleet_now(_store().r))

    def line(queue: str) -> Callable[[float], InLine]:
        return lambda held_since: messages_in_line(_store().r, queue, held_since=held_since)

    def report(result: liveness.SweepReport) -> None:
        for _ in result.requeued_chunks:
            observe.stall_recovery("chunk", "requeued")
        for _, task in result.requeued_jobs:
            observe.stall_recovery(task, "requeued")
        for job_id, _reason in result.failed_jobs:
            observe.stall_recovery("job", "failed")
            _meter_job_end(job_id)

    liveness.run_periodically(
        _store(),
        _settings(),
        enqueue=send,
        light_line=line(LIGHT_QUEUE),
        gpu_line=line(GPU_QUEUE),
        on_report=report,
    )


def _count_delivery(task: Task, job_id: str, index: int) -> tuple[Delivery, dict[str, Any] | None]:
    """Count this start of the chunk in Redis before anything can kill the process (a SIGKILL
    or the OOM killer leaves no other trace). Returns the delivery and, when the chunk must not
    run, the task's result: it is already done, or too many deliveries died."""
    store, settings = _store(), _settings()
    delivery = store.chunk_delivered(
        job_id, index, worker=task.request.hostname or "?", pid=os.getpid()
    )
    if delivery.state == DONE:  # a duplicate of a finished chunk (redelivered or re-sent)
        return delivery, {"state": "SKIPPED"}
    refused = delivery.lost >= settings.max_deliveries
    if (
        (delivery.newly_lost or delivery.newly_stalled)
        and delivery.state != CANCELLED
        and store.state(job_id) not in TERMINAL
    ):
        # Attempts before this one that no code of theirs ended (a SIGKILL, the OOM killer, a
        # process the sweep gave back) are counted here or nowhere: retried when the chunk runs
        # again, failed when they cost it its last delivery; not when its job already ended.
        observe.lost_attempts(
            "failed" if refused else "retried",
            lost=delivery.newly_lost,
            stalled=delivery.newly_stalled,
        )
    if refused:
        error = (
            f"chunk {index} was delivered {delivery.deliveries} times and {delivery.lost} "
            "deliveries never finished (worker killed or hung)"
        )
        log.error("job %s: %s", job_id, error)
        store.fail(job_id, Reason.WORKER_LOST, error, index=index)
        return delivery, {"state": "FAILED", "reason": Reason.WORKER_LOST.value}
    return delivery, None


@contextmanager
def _instrumented(task: Task, queue: str) -> Iterator[None]:
    """Queue wait on start, busy while running, the job's outcome once it has one."""
    observe.queue_wait(queue, getattr(task.request, ENQUEUED_HEADER, None), now=_fleet_time())
    observe.busy(True, queue)
    try:
        yield
    finally:
        observe.busy(False, queue)


def _fleet_time() -> float | None:
    """The fleet's clock for a metric; None when Redis cannot tell (the sample is skipped, and
    the task goes on: a metric never fails work)."""
    try:
        return fleet_now(_store().r)
    except (redis.RedisError, OSError):
        return None


def _meter_job_end(job_id: str) -> None:
    """Count a finished job exactly once, whichever worker saw it finish; a job that failed
    or was cancelled has its chunk messages still in line withdrawn then (they would only be
    skipped, after holding the backlog, and the autoscaler, up until a worker came to them)."""
    store = _store()
    job = store.get(job_id)
    state = job.get("state", "")
    if state in TERMINAL and store.claim_metering(job_id):
        # Both ends as the records have them, on the fleet's clock: no round trip needed here.
        observe.job(
            state.lower(), job.get("reason", ""), created_at=float(job.get("created_at") or 0),
            finished_at=float(job.get("finished_at") or job.get("updated_at") or 0),
        )  # fmt: skip
        if state != SUCCEEDED:
            store.withdraw_chunks(job_id)


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

        cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
        # Redis refusing even the failure's record (full, unable to persist): nothing ended
        # the chunk, and the sweep or a redelivery runs it again once Redis is back.
        retried = isinstance(exc, Retry) or policy.broker_refused(cause)
        outcome = "retried" if retried else "failed"
        reason = policy.reason_of(cause).value
        raise
    finally:
        if outcome != "skipped":
            observe.chunk(outcome, reason, seconds=time.perf_counter() - started)


def _settle(
    task: Task, job_id: str, index: int | None, error: Exception, *, token: str = ""
) -> Reason:
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
        if index is not None:
            # Ended before its retry is sent: the retry may start on another process before
            # this one's `finally` runs, and must not take this attempt for a lost one.
            if token:
                _store().chunk_attempt_ended(job_id, index, token)
            _store().chunk_retrying(job_id, index)
        # No countdown: a message with an ETA is held by the worker that took it, not waiting
        # in line, and the sweep could not tell it from one whose holder died. Sent with none,
        # it joins the back of the line, which is delay enough. Stamped anew: Celery copies
        # the first send's headers, and the queue's oldest age and the wait histogram took
        # the failed attempt's run (up to chunk_time_limit) for time spent waiting.
        resent_at = _fleet_time()
        headers = dict(task.request.headers or {})
        if resent_at is not None:
            headers[ENQUEUED_HEADER] = resent_at
        raise task.retry(exc=error, countdown=0, headers=headers) from error
    if outcome.reason is Reason.INTERNAL:
        log.error("%s %s: unexpected error", task.name, job_id, exc_info=error)
    return runner.fail_job(_store(), job_id, error, index=index)


def register(app: Celery) -> None:
    """Attach the three tasks to `app`."""
    global _APP
    _APP = app

    @app.task(name=TASK_PLAN, bind=True)
    def plan(self: Task, job_id: str) -> int:
        from facefusion_tasks import runner

        store = _store()
        try:
            with _instrumented(self, LIGHT_QUEUE):
                indexes = runner.plan_job(store, _settings(), job_id)
            priority = int(store.get(job_id).get("priority") or 5)
            sent_at = fleet_now(store.r)
            for index in indexes:
                enqueue(app, TASK_CHUNK, [job_id, index], priority=priority, sent_at=sent_at)
        except Exception as exc:
            _settle(self, job_id, None, exc)
            _meter_job_end(job_id)
            return 0
        # A job cancelled while it waited to be planned ends here, unplanned: counted here.
        _meter_job_end(job_id)
        return len(indexes)

    @app.task(name=TASK_CHUNK, bind=True)
    def chunk(self: Task, job_id: str, index: int) -> dict[str, Any]:
        delivery, refused = _count_delivery(self, job_id, index)
        try:
            if refused is not None:
                return refused
            with _instrumented(self, GPU_QUEUE):
                return _timed_chunk(lambda: _run_chunk(self, job_id, index, delivery.token))
        finally:
            _store().chunk_attempt_ended(job_id, index, delivery.token)
            _meter_job_end(job_id)

    def _run_chunk(self: Task, job_id: str, index: int, token: str) -> dict[str, Any]:
        from facefusion_tasks import runner

        try:
            result, last = runner.run_chunk(
                _store(), _settings(), job_id, index, worker=self.request.hostname or "?"
            )
        except Exception as exc:
            if not _store().holds_chunk(job_id, index, token):
                # Given back by the stall sweep, or taken by a later delivery: that one
                # decides (it meets the same bad input, if that is what this was).
                log.warning("chunk %s/%d: a stale attempt failed (%s); its successor decides",
                            job_id, index, exc)  # fmt: skip
                return {"state": "SKIPPED"}
            return {
                "state": "FAILED",
                "reason": _settle(self, job_id, index, exc, token=token).value,
            }
        if result is None:
            return {"state": "SKIPPED"}
        if last:
            enqueue(app, TASK_STITCH, [job_id], priority=9, sent_at=fleet_now(_store().r))
        return {"state": "DONE", "frames": result.frames, "faces": result.faces_swapped}

    @app.task(name=TASK_CLOSE)
    def close(job_id: str) -> None:
        # Sent by a cancel that withdrew the job's waiting chunks while none ran: no chunk
        # will come to count its end, so this does.
        _meter_job_end(job_id)

    @app.task(name=TASK_STITCH, bind=True)
    def stitch(self: Task, job_id: str) -> str | None:
        from facefusion_tasks import stitching

        try:
            with _instrumented(self, LIGHT_QUEUE):
                output = stitching.stitch_job(_store(), _settings(), job_id)
        except Exception as exc:
            _settle(self, job_id, None, exc)
            output = None
        _meter_job_end(job_id)
        return None if output is None else str(output)
