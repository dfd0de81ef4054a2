"""Feed pipeline and task events into the metric definitions (imported on first use, so the
metrics directory is always prepared before prometheus_client loads)."""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from facefusion_tasks.reasons import Reason

log = logging.getLogger(__name__)

_definitions: ModuleType | None = None
#: The queue whose task this process runs now ("" when idle): its frame batches are progress.
_busy_with = ""

#: Default for Settings.metrics_min_free_bytes until a worker calls configure().
DEFAULT_MIN_FREE_BYTES = 8 * 1024 * 1024


class _NullMetric:
    """Stands in for every metric of a process whose metrics storage failed."""

    def labels(self, *_: Any, **__: Any) -> _NullMetric:
        return self

    def inc(self, *_: Any, **__: Any) -> None:
        pass

    def dec(self, *_: Any, **__: Any) -> None:
        pass

    def set(self, *_: Any, **__: Any) -> None:
        pass

    def observe(self, *_: Any, **__: Any) -> None:
        pass


class _NullMetrics:
    """The definitions module's shape, doing nothing."""

    def __getattr__(self, _name: str) -> _NullMetric:
        return _NullMetric()

    @staticmethod
    def bounded_reason(reason: str | None) -> str:
        return reason or "none"

    @staticmethod
    def bounded_encoder(encoder: str) -> str:
        return encoder


class _Health:
    """Whether this process may still write metrics, and why not."""

    def __init__(self) -> None:
        self.disabled = ""
        self.min_free_bytes = DEFAULT_MIN_FREE_BYTES
        self.on_disable: list[Callable[[str], None]] = []
        self.lock = threading.Lock()


_health = _Health()
_NULL = _NullMetrics()


def configure(*, min_free_bytes: int, on_disable: Callable[[str], None] | None = None) -> None:
    """Worker processes: how much free space the metrics directory must keep, and whom to tell
    (once) when this process stops writing metrics."""
    _health.min_free_bytes = min_free_bytes
    if on_disable is not None:
        _health.on_disable.append(on_disable)


def metrics_disabled() -> str:
    """Why this process writes no metrics ("" while it does)."""
    return _health.disabled


def _disable(problem: str) -> None:
    with _health.lock:
        if _health.disabled:
            return
        _health.disabled = problem
    # Loud and once: the process goes on working, only its metrics are gone.
    log.error("metrics disabled in process %d, work goes on: %s", os.getpid(), problem)
    _unstamp()
    for hook in _health.on_disable:
        try:
            hook(problem)
        except Exception as exc:  # the hook reports; it must not fail the caller
            log.warning("could not report disabled metrics: %s", exc)


def _unstamp() -> None:
    """Best effort, as metrics go: this process leaves the live gauges. Its progress stamps
    go to +Inf (idle), its busy gauges and its process count to 0. Frozen at their last
    value, the stamps made the exporter age them for the process's whole life, and the
    ChunkProgressStopped alert page for a process that only stopped writing metrics; a busy
    gauge left at 1 showed the host saturated; counted as a process but never busy, it would
    show spare capacity (it is counted in facefusion_metrics_disabled_processes_total). Their
    values already have their place in the mapped files, so this writes no new page."""
    if _definitions is None:
        return
    try:
        _definitions.worker_processes.set(0)
        for queue in _definitions.QUEUES:
            _definitions.worker_progress_monotonic.labels(queue=queue).set(math.inf)
            _definitions.worker_busy.labels(queue=queue).set(0)
    except Exception as exc:  # the storage that failed may fail this too
        log.warning("could not clear this process's progress stamps: %s", exc)


def _unstamp_if_disabled(written: object) -> None:
    """After a live-gauge write through `written` (what metrics() gave): metrics disabled by
    another thread (the heartbeat's storage check) between that call and the write would
    leave it standing. Once disabled, metrics() gives the null object and nothing is undone."""
    if written is not _NULL and _health.disabled:
        _unstamp()


def _multiproc_dir() -> Path | None:
    from facefusion_tasks.metrics.multiproc import PROMETHEUS_ENV

    configured = os.environ.get(PROMETHEUS_ENV, "")
    return Path(configured) if configured else None


def storage_problem() -> str:
    """Why writing metric files now could fail or kill this process ("" if it cannot).

    prometheus_client writes through mmap: a write to a page the filesystem cannot back (a full
    tmpfs) is a SIGBUS, which no Python code can catch. So look before writing: the directory
    exists, keeps `min_free_bytes` free, and this process's files are still in it."""
    directory = _multiproc_dir()
    if directory is None:  # single-process mode: values live in memory
        return ""
    try:
        stats = os.statvfs(directory)
    except OSError as exc:
        return f"metrics directory {directory} unusable: {exc}"
    free = stats.f_bavail * stats.f_frsize
    if free < _health.min_free_bytes:
        return f"metrics directory {directory} has {free} bytes free (< {_health.min_free_bytes})"
    if _definitions is not None and not any(directory.glob(f"*_{os.getpid()}.db")):
        return f"{_DELETED} from {directory}"
    return ""


#: storage_problem()'s answer when only this process's files are gone (the directory is back).
_DELETED = "this process's metric files were deleted"


def _reserve() -> str:
    """Allocate the blocks behind this process's metric files, so that later writes through
    the mmap cannot hit a full filesystem (ENOSPC here is an error, not a SIGBUS there)."""
    directory = _multiproc_dir()
    if directory is None:
        return ""
    for path in directory.glob(f"*_{os.getpid()}.db"):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"cannot open {path}: {exc}"
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            return f"cannot reserve space for {path}: {exc}"
        finally:
            os.close(fd)
    return ""


def check_storage() -> None:
    """Worker processes call this every few seconds: stop writing metrics before the storage
    can kill the process (space running out, directory deleted)."""
    if _health.disabled or _definitions is None:
        return
    problem = storage_problem()
    if problem.startswith(_DELETED):
        # The directory was deleted and is back (the exporter recreates it): carry on in new
        # files with the same values, or, if that cannot be done, without metrics.
        from facefusion_tasks.metrics import multiproc

        if multiproc.reopen_files():
            log.warning("%s; process %d carries on in new files", problem, os.getpid())
            problem = ""
    problem = problem or _reserve()
    if problem:
        _disable(problem)


def metrics() -> Any:
    """The definitions module, imported once; a do-nothing stand-in when this process's
    metrics storage is unusable (the work goes on without them)."""
    global _definitions
    if _health.disabled:
        return _NULL
    if _definitions is None:
        problem = storage_problem()
        if problem:
            _disable(problem)
            return _NULL
        try:
            from facefusion_tasks.metrics import definitions
        except OSError as exc:
            _disable(f"metric files unusable: {exc}")
            return _NULL
        _definitions = definitions
        problem = _reserve()
        if problem:
            _disable(problem)
            return _NULL
    return _definitions


_F = TypeVar("_F", bound=Callable[..., None])


def _safe(fn: _F) -> _F:
    """A metrics call that fails (disk full, file gone) disables metrics; the work goes on."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            _disable(f"metrics write failed: {type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


@_safe
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
        if _busy_with:
            m.worker_progress_monotonic.labels(queue=_busy_with).set(time.monotonic())
            _unstamp_if_disabled(m)
    if faces:
        m.faces_swapped_total.inc(faces)


@_safe
def model_call(model: str, size: int) -> None:
    """A model ran on `size` inputs in one call."""
    metrics().model_batch_size.labels(model=model).observe(size)


@_safe
def gpu_oom(kind: str, model: str) -> None:
    """A model call ran out of GPU memory."""
    metrics().gpu_oom_total.labels(kind=kind, model=model).inc()


@_safe
def batch_limit(model: str, limit: int) -> None:
    """The batch cap a model works under now (lowered after an OOM, restored later)."""
    metrics().model_batch_limit.labels(model=model).set(limit)


@_safe
def swap_run(*, ok: bool, seconds: float) -> None:
    """The seed's request counter and duration: one per local run or chunk attempt, by how it
    ended (a chunk attempt's outcome, not its swap's: the swap of an attempt that then failed
    on its input changing counted as a success)."""
    m = metrics()
    m.face_swap_requests_total.labels(status="success" if ok else "error").inc()
    m.face_swap_duration_seconds.observe(seconds)


@_safe
def chunk(outcome: str, reason: str, *, seconds: float) -> None:
    """A chunk attempt ended (succeeded | retried | failed); the seed's counter with it."""
    m = metrics()
    m.chunks_total.labels(outcome=outcome, reason=m.bounded_reason(reason)).inc()
    m.chunk_duration_seconds.observe(seconds)
    swap_run(ok=outcome == "succeeded", seconds=seconds)


@_safe
def lost_attempts(outcome: str, *, lost: int, stalled: int) -> None:
    """Chunk attempts that never ended, seen by the delivery after them: `lost` ones whose
    process died (worker_lost), `stalled` ones the sweep gave back; `outcome` retried (the
    chunk runs again) or failed (they used up its deliveries)."""
    m = metrics()
    for reason, count in ((Reason.WORKER_LOST, lost), (Reason.STALLED, stalled)):
        if count:
            m.chunks_total.labels(outcome=outcome, reason=reason.value).inc(count)


@_safe
def job(outcome: str, reason: str, *, created_at: float, finished_at: float) -> None:
    """A job reached its final state (both times from its record, on the fleet's clock)."""
    m = metrics()
    m.jobs_total.labels(outcome=outcome, reason=m.bounded_reason(reason)).inc()
    if created_at and finished_at:
        m.job_duration_seconds.observe(max(finished_at - created_at, 0.0))


@_safe
def queue_wait(queue: str, enqueued_at: float | None, *, now: float | None) -> None:
    """A task started; how long it waited since it was enqueued (both on the fleet's clock;
    `now` None: the clock could not be read, no sample)."""
    if enqueued_at and now is not None:
        metrics().queue_wait_seconds.labels(queue=queue).observe(max(now - enqueued_at, 0.0))


@_safe
def busy(flag: bool, queue: str) -> None:
    """This worker process started (True) or finished (False) a task from `queue`."""
    global _busy_with
    m = metrics()
    m.worker_busy.labels(queue=queue).set(1 if flag else 0)
    m.worker_progress_monotonic.labels(queue=queue).set(time.monotonic() if flag else math.inf)
    _busy_with = queue if flag else ""
    _unstamp_if_disabled(m)


@_safe
def worker_info(*, provider: str, requested: str, gpu_uuid: str, cuda_index: str) -> None:
    """Which provider this model-loading process really runs on, and on which GPU."""
    metrics().worker_info.labels(
        provider=provider, requested=requested, gpu_uuid=gpu_uuid, cuda_index=cuda_index
    ).set(1)


@_safe
def video_encode(encoder: str) -> None:
    """A video encode started with `encoder` (the label is bounded to the known encoders)."""
    m = metrics()
    m.video_encodes_total.labels(encoder=m.bounded_encoder(encoder)).inc()


@_safe
def stall_recovery(kind: str, action: str) -> None:
    """The stall sweep requeued (kind chunk | plan | stitch) or failed (kind job) stalled work."""
    metrics().stall_recoveries_total.labels(kind=kind, action=action).inc()
