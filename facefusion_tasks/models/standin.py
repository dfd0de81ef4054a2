"""Small stand-in ONNX models with exactly the real models' I/O contracts, for tests and demos.

They load through the same code as the real files (and through insightface's model_zoo):
same input/output names, ranks, fixed and free dimensions, SCRFD's nine outputs in order and
inswapper's emap as the graph's last initializer. Only what they compute is fake:
- the detector fires where the image is "warm" (red well above blue) at a local maximum, so a
  frame without warm blobs yields no detections and tests can tell swapped from untouched;
- the embedder pools the aligned crop and projects it, so different faces embed differently;
- the swapper tints the crop towards a colour derived from the source latent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The real models' file names.
DETECTOR_FILE = "det_10g.onnx"
EMBEDDER_FILE = "w600k_r50.onnx"
SWAPPER_FILE = "inswapper_128.onnx"

#: det_10g.onnx's output names, in SCRFD's order: scores, boxes, keypoints × s8/16/32.
DETECTOR_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
STRIDES = (8, 16, 32)
#: Half the stand-in box side, in strides: a face spans 2 × 2.5 × 32 = 160 px of detector input.
_HALF_BOX = 2.5
#: ArcFace's 5-point template in 112 px space, used to place stand-in keypoints inside the box.
_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
_OPSET = 13
_IR_VERSION = 8


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name=name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="facefusion-tasks"
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def _ballast(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], gflops: float) -> str:
    """Convolutions worth about `gflops` GFLOPs on a 640×640 input whose result is multiplied by
    zero: the outputs stay exactly the same, the cost becomes a real model's (det_10g is about
    10 GFLOPs), so benchmarks can be inference-bound like real work. Returns the zero's name."""
    rng = np.random.default_rng(3)
    channels, pixels = 16, 640 * 640
    per_layer = 2 * pixels * channels * channels * 9 / 1e9
    layers = max(1, round(gflops / per_layer))
    previous, cin = "input.1", 3
    for i in range(layers):
        weight = (rng.standard_normal((channels, cin, 3, 3)) * 0.1).astype(np.float32)
        inits.append(_const(f"ballast_w{i}", weight))
        nodes.append(
            helper.make_node(
                "Conv", [previous, f"ballast_w{i}"], [f"ballast_c{i}"], pads=[1, 1, 1, 1]
            )
        )
        nodes.append(helper.make_node("Relu", [f"ballast_c{i}"], [f"ballast_r{i}"]))
        previous, cin = f"ballast_r{i}", channels
    # Max, not mean: a mean sums 6.5 M activations, which overflows fp16 (inf × 0 is NaN).
    nodes.append(helper.make_node("ReduceMax", [previous], ["ballast_max"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["ballast_max", "zero"], ["ballast_zero"]))
    return "ballast_zero"


def build_detector(*, gflops: float = 0.0) -> onnx.GraphProto:
    """SCRFD contract: input.1 [1,3,?,?] -> 9 outputs [cells*2, 1|4|10] for strides 8, 16, 32.
    `gflops` > 0 adds that much (result-neutral) compute, see _ballast."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [
        # Warmth = R - B of the normalised RGB input; the background and letterbox padding are ≤ 0.
        _const("warm_w", np.array([[[[1.0]], [[0.0]], [[-1.0]]]], np.float32)),
        _const("shape_1", np.array([-1, 1], np.int64)),
        _const("shape_4", np.array([-1, 4], np.int64)),
        _const("shape_10", np.array([-1, 10], np.int64)),
        _const("zero", np.array(0.0, np.float32)),
        _const("one", np.array(1.0, np.float32)),
        _const("thr", np.array(0.3, np.float32)),
        _const("gain", np.array(20.0, np.float32)),
        _const("peak_gain", np.array(4000.0, np.float32)),
        _const("off", np.array(-20.0, np.float32)),
    ]
    nodes.append(helper.make_node("Conv", ["input.1", "warm_w"], ["warm_raw"]))
    if gflops > 0:
        nodes.append(
            helper.make_node("Add", ["warm_raw", _ballast(nodes, inits, gflops)], ["warm"])
        )
    else:
        nodes.append(helper.make_node("Identity", ["warm_raw"], ["warm"]))
    # Per-anchor constants: boxes centred on the cell centre (anchors sit on the cell's corner).
    c = 0.5
    box = np.array([_HALF_BOX - c, _HALF_BOX - c, _HALF_BOX + c, _HALF_BOX + c], np.float32)
    kps = (_ARCFACE_112 - np.array([56.0, 60.0], np.float32)) / 112.0 * 2 * _HALF_BOX + c
    inits.append(_const("box_d", np.tile(box, 2).reshape(1, 1, 1, 8)))
    inits.append(_const("kps_d", np.tile(kps.reshape(-1), 2).reshape(1, 1, 1, 20)))
    scores, boxes, points = [], [], []
    for i, stride in enumerate(STRIDES):
        s = f"s{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool",
                ["warm"],
                [f"{s}_v"],
                kernel_shape=[stride, stride],
                strides=[stride, stride],
            )
        )
        if stride == STRIDES[-1]:
            # Fire only at a local maximum of warmth, so one blob gives one detection.
            nodes += [
                helper.make_node(
                    "MaxPool",
                    [f"{s}_v"],
                    [f"{s}_m"],
                    kernel_shape=[3, 3],
                    strides=[1, 1],
                    pads=[1, 1, 1, 1],
                ),
                helper.make_node("Sub", [f"{s}_v", "thr"], [f"{s}_a"]),
                helper.make_node("Mul", [f"{s}_a", "gain"], [f"{s}_b"]),
                helper.make_node("Sub", [f"{s}_v", f"{s}_m"], [f"{s}_p"]),
                helper.make_node("Mul", [f"{s}_p", "peak_gain"], [f"{s}_q"]),
                helper.make_node("Add", [f"{s}_b", f"{s}_q"], [f"{s}_logit"]),
            ]
        else:
            # Finer strides exist with the right shapes but never fire.
            nodes += [
                helper.make_node("Mul", [f"{s}_v", "zero"], [f"{s}_z"]),
                helper.make_node("Add", [f"{s}_z", "off"], [f"{s}_logit"]),
            ]
        nodes += [
            helper.make_node("Sigmoid", [f"{s}_logit"], [f"{s}_sig"]),
            # [1,1,h,w] -> [1,h,w,1] -> two anchors per cell -> [h*w*2, 1]
            helper.make_node("Transpose", [f"{s}_sig"], [f"{s}_t"], perm=[0, 2, 3, 1]),
            helper.make_node("Concat", [f"{s}_t", f"{s}_t"], [f"{s}_t2"], axis=3),
            helper.make_node("Reshape", [f"{s}_t2", "shape_1"], [DETECTOR_OUTPUTS[i]]),
            # Constant distances broadcast over the grid.
            helper.make_node("Mul", [f"{s}_v", "zero"], [f"{s}_z0"]),
            helper.make_node("Add", [f"{s}_z0", "one"], [f"{s}_ones"]),
            helper.make_node("Transpose", [f"{s}_ones"], [f"{s}_ot"], perm=[0, 2, 3, 1]),
            helper.make_node("Mul", [f"{s}_ot", "box_d"], [f"{s}_bd"]),
            helper.make_node("Reshape", [f"{s}_bd", "shape_4"], [DETECTOR_OUTPUTS[3 + i]]),
            helper.make_node("Mul", [f"{s}_ot", "kps_d"], [f"{s}_kd"]),
            helper.make_node("Reshape", [f"{s}_kd", "shape_10"], [DETECTOR_OUTPUTS[6 + i]]),
        ]
        scores.append(
            helper.make_tensor_value_info(DETECTOR_OUTPUTS[i], TensorProto.FLOAT, [None, 1])
        )
        boxes.append(
            helper.make_tensor_value_info(DETECTOR_OUTPUTS[3 + i], TensorProto.FLOAT, [None, 4])
        )
        points.append(
            helper.make_tensor_value_info(DETECTOR_OUTPUTS[6 + i], TensorProto.FLOAT, [None, 10])
        )
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
    return helper.make_graph(nodes, "scrfd_standin", inputs, scores + boxes + points, inits)


def build_embedder(seed: int = 7) -> onnx.GraphProto:
    """ArcFace contract: input.1 [N,3,112,112] -> 683 [N,512], unnormalised like the real one."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((192, 512)).astype(np.float32) / float(np.sqrt(192))
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["683"]),
    ]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])]
    return helper.make_graph(nodes, "arcface_standin", inputs, outputs, [_const("proj", proj)])


def build_swapper(seed: int = 11, *, batchable: bool = True) -> onnx.GraphProto:
    """inswapper contract: target [1,3,128,128] (RGB/255) + source [1,512] -> output [1,3,128,128].

    `batchable=False` makes the graph mix items across the batch dimension (a mean over axis 0,
    an identity at batch 1), so no conversion can batch it and the per-face fallback is tested.
    """
    rng = np.random.default_rng(seed)
    tint = rng.standard_normal((512, 3)).astype(np.float32) * 2.0
    emap = rng.standard_normal((512, 512)).astype(np.float32) / float(np.sqrt(512))
    nodes = []
    target = "target"
    if not batchable:
        nodes.append(helper.make_node("ReduceMean", ["target"], ["target_mean"], axes=[0]))
        target = "target_mean"
    nodes += [
        helper.make_node("MatMul", ["source", "tint"], ["tint_raw"]),
        helper.make_node("Tanh", ["tint_raw"], ["tint_t"]),
        helper.make_node("Reshape", ["tint_t", "tint_shape"], ["colour"]),
        helper.make_node("Mul", [target, "half"], ["dimmed"]),
        helper.make_node("Mul", ["colour", "quarter"], ["shift"]),
        helper.make_node("Add", ["dimmed", "shift"], ["mixed"]),
        helper.make_node("Add", ["mixed", "quarter"], ["lifted"]),
        helper.make_node("Clip", ["lifted", "zero", "one"], ["output"]),
    ]
    inits = [
        _const("tint", tint),
        _const("tint_shape", np.array([-1, 3, 1, 1], np.int64)),
        _const("half", np.array(0.5, np.float32)),
        _const("quarter", np.array(0.25, np.float32)),
        _const("zero", np.array(0.0, np.float32)),
        _const("one", np.array(1.0, np.float32)),
        # insightface reads the emap as the graph's LAST initializer; it is not used by any node.
        _const("emap", emap),
    ]
    inputs = [
        helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
        helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
    ]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])]
    return helper.make_graph(nodes, "inswapper_standin", inputs, outputs, inits)


def make_test_models(
    directory: Path, *, swapper_batchable: bool = True, detector_gflops: float = 0.0
) -> dict[str, Path]:
    """Write the three stand-in models under their real file names; returns key -> path."""
    directory = Path(directory)
    return {
        "detector": _save(build_detector(gflops=detector_gflops), directory / DETECTOR_FILE),
        "embedder": _save(build_embedder(), directory / EMBEDDER_FILE),
        "swapper": _save(build_swapper(batchable=swapper_batchable), directory / SWAPPER_FILE),
    }


def is_standin(path: Path) -> bool:
    """True when a model file was written by this module (so the CLI can say so plainly)."""
    try:
        return onnx.load(str(path), load_external_data=False).producer_name == "facefusion-tasks"
    except Exception:
        return False
