"""Feed pipeline and task events into the metric definitions (imported on first use, so the
metrics directory is always prepared before prometheus_client loads)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import ModuleType

_definitions: ModuleType | None = None


def metrics() -> ModuleType:
    """The definitions module, imported once."""
    global _definitions
    if _definitions is None:
        from facefusion_tasks.metrics import definitions

        _definitions = definitions
    return _definitions


def batch(stage_seconds: Mapping[str, float], *, frames: int, faces: int, seconds: float) -> None:
    """One frame batch went through: per-stage time, per-frame time, frame and face counts."""
    m = metrics()
    for stage, spent in stage_seconds.items():
        if spent > 0:
            m.stage_duration_seconds.labels(stage=stage).observe(spent)
    if frames:
        per_frame = seconds / frames
        for _ in range(frames):
            m.frame_duration_seconds.observe(per_frame)
        m.frames_processed_total.inc(frames)
    if faces:
        m.faces_swapped_total.inc(faces)


def model_call(model: str, size: int) -> None:
    """A model ran on `size` inputs in one call."""
    metrics().model_batch_size.labels(model=model).observe(size)


def gpu_oom(kind: str, model: str) -> None:
    """A model call ran out of GPU memory."""
    metrics().gpu_oom_total.labels(kind=kind, model=model).inc()


def batch_limit(model: str, limit: int) -> None:
    """The batch cap a model works under now (lowered after an OOM, restored later)."""
    metrics().model_batch_limit.labels(model=model).set(limit)


def swap_run(*, ok: bool, seconds: float) -> None:
    """The seed's request counter and duration: one per local run or chunk attempt."""
    m = metrics()
    m.face_swap_requests_total.labels(status="success" if ok else "error").inc()
    m.face_swap_duration_seconds.observe(seconds)


def chunk(outcome: str, reason: str, *, seconds: float) -> None:
    """A chunk attempt ended (succeeded | retried | failed)."""
    m = metrics()
    m.chunks_total.labels(outcome=outcome, reason=m.bounded_reason(reason)).inc()
    m.chunk_duration_seconds.observe(seconds)


def job(outcome: str, reason: str, *, created_at: float) -> None:
    """A job reached its final state."""
    m = metrics()
    m.jobs_total.labels(outcome=outcome, reason=m.bounded_reason(reason)).inc()
    if created_at:
        m.job_duration_seconds.observe(max(time.time() - created_at, 0.0))


def queue_wait(queue: str, enqueued_at: float | None) -> None:
    """A task started; how long it waited since it was enqueued."""
    if enqueued_at:
        metrics().queue_wait_seconds.labels(queue=queue).observe(
            max(time.time() - enqueued_at, 0.0)
        )


def busy(flag: bool) -> None:
    """This worker process started (True) or finished (False) a task."""
    metrics().worker_busy.set(1 if flag else 0)


def stall_recovery(kind: str, action: str) -> None:
    """The stall sweep requeued (kind chunk | plan | stitch) or failed (kind job) stalled work."""
    metrics().stall_recoveries_total.labels(kind=kind, action=action).inc()
