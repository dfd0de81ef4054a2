"""Model calls that survive GPU out-of-memory: halve the batch, retry the same inputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from facefusion_tasks import observe
from facefusion_tasks.errors import GpuOutOfMemory
from facefusion_tasks.metrics.oom import classify_oom

log = logging.getLogger(__name__)

T = TypeVar("T")

#: After an OOM, a model keeps its lowered batch cap this long before trying to grow again.
RECOVER_SECONDS = 300.0


class BatchBackoff:
    """Runs a model over N inputs in slices no bigger than its current cap. On a GPU OOM the
    failed slice is split in half and retried, so no input is lost; the lower cap is kept for
    RECOVER_SECONDS (memory pressure usually persists), then doubled back step by step. At a
    slice of 1 an OOM is final: GpuOutOfMemory, so the chunk is retried on another worker."""

    def __init__(
        self,
        model: str,
        limit: int,
        *,
        recover_seconds: float = RECOVER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.max_limit = max(1, limit)
        self.limit = self.max_limit
        self.recover_seconds = recover_seconds
        self.clock = clock
        self._lowered_at: float | None = None
        self.calls = 0
        # Served from the start: the dashboard's cap panel was empty until the first OOM.
        observe.batch_limit(model, self.limit)

    def _maybe_recover(self) -> None:
        if self._lowered_at is None or self.clock() - self._lowered_at < self.recover_seconds:
            return
        self.limit = min(self.limit * 2, self.max_limit)
        self._lowered_at = None if self.limit == self.max_limit else self.clock()
        observe.batch_limit(self.model, self.limit)

    def run(self, count: int, call: Callable[[int, int], T]) -> list[T]:
        """`call(start, stop)` for consecutive slices covering range(count); results in order."""
        self._maybe_recover()
        results: list[T] = []
        start = 0
        while start < count:
            stop = min(start + self.limit, count)
            try:
                results.append(call(start, stop))
            except Exception as exc:  # onnxruntime raises plain Exception subclasses
                kind = classify_oom(exc)
                if kind is None:
                    raise
                observe.gpu_oom(kind, self.model)
                size = stop - start
                if size == 1:
                    raise GpuOutOfMemory(
                        f"{self.model}: GPU out of memory even at batch 1 ({kind})"
                    ) from exc
                self.limit = max(1, size // 2)
                self._lowered_at = self.clock()
                observe.batch_limit(self.model, self.limit)
                log.warning(
                    "%s: GPU out of memory (%s); batch cap now %d", self.model, kind, self.limit
                )
                continue  # the same inputs again, in smaller slices
            observe.model_call(self.model, stop - start)
            self.calls += 1
            start = stop
        return results


def concat_outputs(parts: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    """Join per-slice output lists (one list of arrays per slice) along the batch axis."""
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
