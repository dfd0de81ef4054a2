"""Ceiling stand-ins: the light stand-ins' detections and I/O contracts, next to no compute."""

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
    """The light stand-in detector with shortcuts that leave its detections the same:
    - each colour is averaged over the stride-32 tiles first, and warmth (red minus blue) is
      taken on that 20×20 grid: averaging is linear, so this is the light detector's pooled
      warmth up to float rounding, where its 1×1 convolution over the whole image cost ~10 ms a
      frame (onnxruntime reorders a 3-channel image into blocked layout for it), and a
      subtraction over the image, then pooling, 0.55 ms (now ~0.1 ms);
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
        if node.op_type == "Identity" and node.output[0] == "warm":
            continue
        if node.op_type == "Conv" and node.output[0] == "warm_raw":
            nodes += _block_means(graph, "input.1", "rgb_means", coarsest)
            nodes += [
                helper.make_node(
                    "Slice", ["rgb_means", f"{c}_start", f"{c}_end", "channel_axis"], [c]
                )
                for c in ("red", "blue")
            ]
            nodes.append(helper.make_node("Sub", ["red", "blue"], [f"s{coarsest}_v"]))
            continue
        stride = _pooled_stride(node)
        if stride is None:
            nodes.append(node)
            continue
        if stride == coarsest:
            continue  # made above, from the pooled input
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


def _block_means(
    graph: onnx.GraphProto, source: str, output: str, block: int
) -> list[onnx.NodeProto]:
    """Nodes for the mean of each block×block tile of [N, C, H, W] `source` ([N, C, H/block,
    W/block], any N, H and W that are multiples of `block`): a mean over each row's runs of
    `block` pixels, then over `block` rows. onnxruntime's AveragePool took 6x longer."""
    graph.initializer.append(_const("runs_shape", np.array([0, 0, 0, -1, block], np.int64)))
    graph.initializer.append(_const("rows_shape", np.array([0, 0, -1, block], np.int64)))
    graph.initializer.append(_const("last_start", np.array([3], np.int64)))
    graph.initializer.append(_const("last_end", np.array([4], np.int64)))
    return [
        helper.make_node("Reshape", [source, "runs_shape"], ["runs"]),
        helper.make_node("ReduceMean", ["runs"], ["run_means"], axes=[4], keepdims=0),
        helper.make_node("Shape", ["run_means"], ["run_means_shape"]),
        helper.make_node("Slice", ["run_means_shape", "last_start", "last_end"], ["tiles_wide"]),
        helper.make_node("Concat", ["rows_shape", "tiles_wide"], ["tiles_shape"], axis=0),
        helper.make_node("Reshape", ["run_means", "tiles_shape"], ["tiles"]),
        helper.make_node("ReduceMean", ["tiles"], [output], axes=[3], keepdims=0),
    ]


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
