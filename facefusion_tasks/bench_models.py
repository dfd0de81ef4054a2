"""Ceiling stand-ins: the light stand-ins' exact outputs and I/O contracts, next to no compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from facefusion_tasks.models.standin import (
    DETECTOR_FILE,
    STRIDES,
    _const,
    _save,
    build_detector,
    make_test_models,
)


def build_ceiling_detector() -> onnx.GraphProto:
    """The light stand-in detector with two shortcuts that leave every output the same float:
    - warmth is red minus blue by a subtraction, not a 1×1 convolution with weights (1, 0, -1)
      (onnxruntime reorders a 3-channel image into blocked layout for it, ~10 ms a frame);
    - the strides that never fire (8 and 16) take their grid from the stride-32 grid (nearest
      upsampling) instead of pooling the whole input again: those grids are only ever
      multiplied by zero."""
    graph = build_detector()
    coarsest = STRIDES[-1]
    for name, channel in (("red", 0), ("blue", 2)):
        graph.initializer.append(_const(f"{name}_start", np.array([channel], np.int64)))
        graph.initializer.append(_const(f"{name}_end", np.array([channel + 1], np.int64)))
    graph.initializer.append(_const("channel_axis", np.array([1], np.int64)))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Conv" and node.output[0] == "warm_raw":
            nodes += [
                helper.make_node(
                    "Slice", ["input.1", f"{c}_start", f"{c}_end", "channel_axis"], [c]
                )
                for c in ("red", "blue")
            ]
            nodes.append(helper.make_node("Sub", ["red", "blue"], ["warm_raw"]))
            continue
        stride = _pooled_stride(node)
        if stride is None or stride == coarsest:
            nodes.append(node)
            continue
        factor = float(coarsest // stride)
        scales = f"upsample_{stride}"
        graph.initializer.append(_const(scales, np.array([1, 1, factor, factor], np.float32)))
        nodes.append(
            helper.make_node(
                "Resize", [f"s{coarsest}_v", "", scales], [node.output[0]], mode="nearest"
            )
        )
    # The convolution's weights are unused now (onnxruntime would warn on every load).
    kept = [init for init in graph.initializer if init.name != "warm_w"]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(_topological(nodes, {i.name for i in graph.input}, graph.initializer))
    return graph


def _pooled_stride(node: onnx.NodeProto) -> int | None:
    if node.op_type != "AveragePool" or not node.output[0].endswith("_v"):
        return None
    return int(node.output[0][1:-2])


def _topological(
    nodes: list[onnx.NodeProto], inputs: set[str], initializers: object
) -> list[onnx.NodeProto]:
    """Nodes reordered so each comes after the producers of its inputs (ONNX requires it)."""
    ready = set(inputs) | {init.name for init in initializers} | {""}  # type: ignore[attr-defined]
    pending, ordered = list(nodes), []
    while pending:
        progressed = False
        for node in list(pending):
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
                pending.remove(node)
                progressed = True
        if not progressed:
            raise ValueError("ceiling detector graph has a cycle or a missing input")
    return ordered


def make_ceiling_models(directory: Path) -> dict[str, Path]:
    """The light stand-ins, with the detector replaced by build_ceiling_detector()."""
    paths = make_test_models(directory)
    paths["detector"] = _save(build_ceiling_detector(), Path(directory) / DETECTOR_FILE)
    return paths
