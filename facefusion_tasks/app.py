"""The Celery app: Redis broker and backend, JSON only, late acks, one prefetched chunk."""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from facefusion_tasks.config import Settings
from facefusion_tasks.queue_names import (
    GPU_QUEUE,
    LIGHT_QUEUE,
    TASK_CHUNK,
    TASK_CLOSE,
    TASK_PLAN,
    TASK_STITCH,
)

#: Set by `facefusion-tasks worker` for processes that serve the gpu queue (preload models).
PRELOAD_ENV = "FACEFUSION_PRELOAD_MODELS"
#: Set by `facefusion-tasks worker`: the queues a worker process consumes (comma-separated).
#: The exporter counts live workers per queue, and light-queue processes run the stall sweep.
QUEUES_ENV = "FACEFUSION_WORKER_QUEUES"

__all__ = [
    "GPU_QUEUE", "LIGHT_QUEUE", "TASK_CHUNK", "TASK_CLOSE", "TASK_PLAN", "TASK_STITCH", "make_app",
]  # fmt: skip


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings, separate from the app so tests can assert on them."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.broker_url,
        # No task results are kept: the job store is the record, and nothing reads them. A
        # result written is a Redis write per task that can be refused (and memory for a day):
        # a task whose retry could not be sent (Redis full) is rejected, and Celery stores its
        # FAILURE result before the reject; refused, the reject never ran, and the worker kept
        # its one prefetch slot for ever, taking no more work (a fault probe's finding).
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # Pickle on a shared broker is remote code execution: JSON only, in and out.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A chunk is acknowledged only when done, and requeued if its process dies; one at a
        # time per process, so a busy worker never sits on chunks another could run.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Each queue its own direct exchange and routing key: left to defaults, Celery binds
        # every queue to the default queue's exchange *and key*, so a message sent to one
        # queue is delivered to both (every task would run twice).
        "task_queues": tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (GPU_QUEUE, LIGHT_QUEUE)
        ),
        "task_default_queue": LIGHT_QUEUE,
        "task_default_exchange": LIGHT_QUEUE,
        "task_default_routing_key": LIGHT_QUEUE,
        "task_routes": {
            TASK_CHUNK: {"queue": GPU_QUEUE},
            TASK_PLAN: {"queue": LIGHT_QUEUE},
            TASK_STITCH: {"queue": LIGHT_QUEUE},
            TASK_CLOSE: {"queue": LIGHT_QUEUE},
        },
        # Redis hands an unacknowledged task to another worker after the visibility timeout,
        # even while it still runs (celery#5935): keep every time limit below it.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for abandoned (SIGKILLed worker) messages often enough that they come back
            # soon after the visibility timeout, not ~100 s later (kombu's default cadence).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
            # A worker SIGKILLed while it restores holds kombu's restore lock until it expires
            # (300 s by default): no other worker could restore anything meanwhile.
            "unacked_mutex_expire": max(5, min(300, settings.visibility_timeout // 4)),
        },
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_time_limit": settings.chunk_time_limit,
        # The soft limit leaves the chunk time to kill ffmpeg and remove its temp file.
        "task_soft_time_limit": max(
            settings.chunk_time_limit - 30, settings.chunk_time_limit * 0.9
        ),
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_track_started": True,
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_hijack_root_logger": False,
        "worker_deduplicate_successful_tasks": False,
    }
    if settings.broker_url.startswith("rediss://") and "ssl_cert_reqs" not in settings.broker_url:
        tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        config["broker_use_ssl"] = tls
        config["redis_backend_use_ssl"] = tls
    return config


def make_app(settings: Settings) -> Celery:
    """A Celery app for these settings, with the tasks registered."""
    from facefusion_tasks import kombu_acks, tasks

    kombu_acks.install()  # before any worker consumes: a refused ack must not wedge it
    app = Celery("facefusion_tasks", set_as_current=False)
    app.conf.update(celery_config(settings))

    tasks.register(app)
    return app
