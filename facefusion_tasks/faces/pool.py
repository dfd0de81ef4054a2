"""A small thread pool for per-frame CPU work beside inference, or inline as the reference."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import cv2

T = TypeVar("T")
R = TypeVar("R")


class CpuPool:
    """`map` and `submit` over a few threads, or inline when `workers` is 0.

    The work is letterbox, box decoding, warps and paste-back: OpenCV and numpy release the GIL
    inside their kernels, so it runs beside inference and the ffmpeg pipes. Inline, every call
    runs in the caller's thread, in order: the serial reference the tests compare against.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(0, workers)
        if self.workers:
            # This pool is the per-frame parallelism: OpenCV's own pool on top of it would start
            # a thread per core for every warp and resize, and those threads spin between calls.
            # On a 16-core GPU host that was 66-86 ms of CPU per 1080p frame, charged to no stage.
            # Process-wide, as OpenCV's setting is; results do not depend on it.
            cv2.setNumThreads(1)
        self._executor = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="ff-cpu") if self.workers else None
        )

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn over items, results in order; the first exception is raised here."""
        if self._executor is None:
            return [fn(item) for item in items]
        return list(self._executor.map(fn, items))

    def submit(self, fn: Callable[..., R], *args: object) -> Future[R]:
        """Start fn(*args); inline, the future is already done (with its result or error)."""
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, like a thread's
            future.set_exception(exc)
        return future

    def close(self, *, cancel: bool = False) -> None:
        """Stop the threads; with `cancel`, queued work that has not started is dropped."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> CpuPool:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(cancel=exc is not None)


#: The inline pool: every call in the caller's thread.
SERIAL = CpuPool(0)
