"""Make onnxruntime model calls fail the way a full GPU makes them fail: the real exception
class (onnxruntime's RuntimeException) with the real BFC-arena message, above a batch size."""

from __future__ import annotations

import os
from typing import Any

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

#: Verbatim shape of onnxruntime's CUDA arena OOM (only the buffer size varies).
ARENA_OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
    "Conv node. Name:'Conv_0' Status Message: /onnxruntime_src/onnxruntime/core/framework/"
    "bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, "
    "onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for "
    "requested buffer of size {size}"
)


class OomSession:
    """Wraps a real session; any call whose batch exceeds `fits` raises the real OOM."""

    def __init__(self, session: ort.InferenceSession, fits: int) -> None:
        self.session = session
        self.fits = fits
        self.ooms = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, output_names: Any, feeds: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        batch = max(len(v) for v in feeds.values())
        if batch > self.fits:
            self.ooms += 1
            raise RuntimeException(ARENA_OOM.format(size=batch * 3 * 128 * 128 * 4))
        return self.session.run(output_names, feeds, *args, **kwargs)


def install_from_env() -> None:
    """In a worker process: FF_FAULT_OOM="swapper:2" makes every inswapper call with more
    than 2 faces run out of memory (sessions are recognised by their input names)."""
    spec = os.environ.get("FF_FAULT_OOM")
    if not spec:
        return
    model, fits = spec.split(":")
    inputs = {"swapper": {"target", "source"}}[model]
    original = ort.InferenceSession.run

    def run(
        self: ort.InferenceSession, output_names: Any, feeds: dict[str, Any], *a: Any, **k: Any
    ) -> Any:
        if set(feeds) == inputs and max(len(v) for v in feeds.values()) > int(fits):
            raise RuntimeException(ARENA_OOM.format(size=1 << 22))
        return original(self, output_names, feeds, *a, **k)

    ort.InferenceSession.run = run  # type: ignore[method-assign]
