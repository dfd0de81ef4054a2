"""Thin Celery tasks: decode the message, call the runner, map errors to retry or failure."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init

from facefusion_tasks.app import (
    GPU_QUEUE,
    LIGHT_QUEUE,
    PRELOAD_ENV,
    TASK_CHUNK,
    TASK_PLAN,
    TASK_STITCH,
)
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.store import JobStore, connect

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


@worker_process_init.connect
def _preload(**_: Any) -> None:
    # Runs in each pool child right after the fork: start loading models in a background thread
    # (returning at once), so CUDA is first touched in the child, never in the parent.
    if os.environ.get(PRELOAD_ENV) == "1":
        from facefusion_tasks.runner import MODELS

        MODELS.start(_settings())


def register(app: Celery) -> None:
    """Attach the three tasks to `app`."""

    @app.task(name=TASK_PLAN, bind=True)
    def plan(self: Task, job_id: str) -> int:
        from facefusion_tasks import runner

        store = _store()
        try:
            indexes = runner.plan_job(store, _settings(), job_id)
        except InputError as exc:
            runner.fail_job(store, job_id, exc, index=None)
            return 0
        priority = int(store.get(job_id).get("priority") or 5)
        for index in indexes:
            enqueue(app, TASK_CHUNK, [job_id, index], priority=priority)
        return len(indexes)

    @app.task(name=TASK_CHUNK, bind=True)
    def chunk(self: Task, job_id: str, index: int) -> dict[str, Any]:
        from facefusion_tasks import runner

        store, settings = _store(), _settings()
        try:
            result, last = runner.run_chunk(
                store, settings, job_id, index, worker=self.request.hostname or "?"
            )
        except InputError as exc:  # bad input: no retry can help, fail the job now
            runner.fail_job(store, job_id, exc, index=index)
            return {"state": "FAILED", "reason": exc.reason}
        except Exception as exc:
            if self.request.retries < settings.chunk_retries:
                log.warning("chunk %s/%s failed (%s); retrying", job_id, index, exc)
                raise self.retry(exc=exc, countdown=1) from exc
            runner.fail_job(store, job_id, exc, index=index)
            return {"state": "FAILED", "reason": getattr(exc, "reason", "internal")}
        if result is None:
            return {"state": "SKIPPED"}
        if last:
            enqueue(app, TASK_STITCH, [job_id], priority=9)
        return {"state": "DONE", "frames": result.frames, "faces": result.faces_swapped}

    @app.task(name=TASK_STITCH, bind=True)
    def stitch(self: Task, job_id: str) -> str | None:
        from facefusion_tasks import runner

        store, settings = _store(), _settings()
        try:
            output = runner.stitch_job(store, settings, job_id)
        except InputError as exc:
            runner.fail_job(store, job_id, exc, index=None)
            return None
        except Exception as exc:
            if self.request.retries < settings.chunk_retries:
                raise self.retry(exc=exc, countdown=1) from exc
            runner.fail_job(store, job_id, exc, index=None)
            return None
        return None if output is None else str(output)
