"""onnxruntime IO binding: model outputs land in buffers allocated once per input shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class ModelSession(Protocol):
    """What the face models need of an onnxruntime session (a BoundSession is one too)."""

    def get_inputs(self) -> Any: ...

    def get_outputs(self) -> Any: ...

    def get_providers(self) -> list[str]: ...

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], *args: Any
    ) -> Any: ...


class BoundSession:
    """An InferenceSession whose run() writes into preallocated output buffers.

    The first call with a new input shape runs normally and learns the output shapes; later calls
    bind those buffers (a ring of `depth` sets per shape) and return them. A result therefore
    stays valid for the next `depth - 1` calls with the same shapes, then is overwritten: callers
    that keep results across calls (the detector, one call per frame of a batch) need `depth` at
    least their batch.
    """

    def __init__(self, session: Any, *, depth: int = 1) -> None:
        self.session = session
        self.depth = max(1, depth)
        self._rings: dict[tuple[Any, ...], list[list[np.ndarray]]] = {}
        self._next: dict[tuple[Any, ...], int] = {}

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], *args: Any
    ) -> list[np.ndarray]:
        names = list(output_names or [o.name for o in self.session.get_outputs()])
        feeds = {name: np.ascontiguousarray(value) for name, value in input_feed.items()}
        key = (tuple(names), tuple((n, v.shape, v.dtype.str) for n, v in feeds.items()))
        ring = self._rings.setdefault(key, [])
        if len(ring) < self.depth:
            # Learn the shapes (and fill the ring) with plain runs: onnxruntime allocates these
            # outputs once, and they become the buffers.
            outs = [np.ascontiguousarray(o) for o in self.session.run(names, feeds, *args)]
            ring.append(outs)
            return outs
        index = self._next.get(key, 0)
        self._next[key] = (index + 1) % self.depth
        buffers = ring[index]
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, buffer in zip(names, buffers, strict=True):
            binding.bind_output(
                name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data
            )
        self.session.run_with_iobinding(binding, *args)
        return buffers
