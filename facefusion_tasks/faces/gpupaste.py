"""Paste-back as an ONNX graph, so a GPU worker blends faces on the GPU instead of its CPU."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from facefusion_tasks import observe
from facefusion_tasks.faces.paste import Feather, face_box, framed_source, paste_back, source_map
from facefusion_tasks.faces.sessions import CPU, ProviderChoice, create_session
from facefusion_tasks.metrics.oom import classify_oom

log = logging.getLogger(__name__)

#: The opset the graph is written for (GridSample is 16+).
_OPSET = 17
#: The model label the paste's out-of-memory errors are counted under.
MODEL = "paste"
#: Pastes of one process on the device at once. Each holds about 150-170 bytes of memory per
#: pixel of its faces' box (measured on the CPU provider: 171 B/px at 1080p, 144 at 4000x3000),
#: on a GPU in an arena that does not shrink; the device runs them one after another
#: anyway, and two let one frame's copies overlap another's compute.
CONCURRENT_RUNS = 2


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name))


def _body(side: int) -> onnx.GraphProto:
    """One face over the whole image given (the box of a frame its faces cover): warp its BGRA
    source back (bilinear, zeros outside), round colour and alpha to 8 bits as cv2's warp of a
    uint8 image does, then blend the image towards the colour by alpha/255, rounded:
    paste_back's arithmetic, step for step."""
    f32 = TensorProto.FLOAT
    scale = np.float32(2.0 / (side - 1))
    nodes = [
        _const("b_scale", np.array(scale, np.float32)),
        _const("b_one", np.array(1.0, np.float32)),
        _const("b_inv255", np.array(1.0 / 255.0, np.float32)),
        _const("b_c0", np.array([0], np.int64)),
        _const("b_c3", np.array([3], np.int64)),
        _const("b_c4", np.array([4], np.int64)),
        _const("b_axis", np.array([-1], np.int64)),
        helper.make_node("Gather", ["sources", "k"], ["src_u8"], axis=0),
        helper.make_node("Cast", ["src_u8"], ["src_hwc"], to=f32),
        helper.make_node("Transpose", ["src_hwc"], ["src"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["src", "b_c0"], ["src4"]),
        helper.make_node("Gather", ["maps", "k"], ["map"], axis=0),
        # Frame pixel (x, y) -> source pixel: the same inverse map cv2 is given.
        helper.make_node("Einsum", ["base", "map"], ["coords"], equation="hwc,dc->hwd"),
        # To GridSample's [-1, 1] (align_corners: -1 and +1 are the first and last pixel
        # centres, as cv2's integer coordinates are). OpenCV 5's warp samples at the exact
        # float coordinate, as GridSample does (4.x snapped to 1/32 pixel).
        helper.make_node("Mul", ["coords", "b_scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "b_one"], ["grid3"]),
        helper.make_node("Unsqueeze", ["grid3", "b_c0"], ["grid"]),
        helper.make_node(
            "GridSample",
            ["src4", "grid"],
            ["sampled4"],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=1,
        ),  # fmt: skip
        helper.make_node("Squeeze", ["sampled4", "b_c0"], ["sampled"]),
        helper.make_node("Transpose", ["sampled"], ["warped_f"], perm=[1, 2, 0]),
        helper.make_node("Round", ["warped_f"], ["warped"]),
        helper.make_node("Slice", ["warped", "b_c0", "b_c3", "b_axis"], ["colour"]),
        helper.make_node("Slice", ["warped", "b_c3", "b_c4", "b_axis"], ["alpha"]),
        helper.make_node("Sub", ["colour", "canvas_in"], ["difference"]),
        helper.make_node("Mul", ["difference", "alpha"], ["weighted"]),
        helper.make_node("Mul", ["weighted", "b_inv255"], ["step_f"]),
        helper.make_node("Round", ["step_f"], ["step"]),
        helper.make_node("Add", ["canvas_in", "step"], ["canvas_out"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    return helper.make_graph(
        nodes,
        "paste_one_face",
        [
            helper.make_tensor_value_info("k", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("canvas_in", f32, ["H", "W", 3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("canvas_out", f32, ["H", "W", 3]),
        ],
    )


def paste_model(side: int) -> onnx.ModelProto:
    """The graph: frame (H,W,3) uint8, sources (K,side,side,4) uint8 BGRA (the framed crops
    paste_back warps), maps (K,2,3) float32 (frame pixel -> source pixel) -> the frame with the
    K faces blended in, in order (faces may overlap)."""
    f32 = TensorProto.FLOAT
    nodes = [
        _const("zero", np.array(0.0, np.float32)),
        _const("one", np.array(1.0, np.float32)),
        _const("i0", np.array([0], np.int64)),
        _const("i1", np.array([1], np.int64)),
        _const("tail", np.array([-1], np.int64)),
        _const("true", np.array(True)),
        helper.make_node("Cast", ["frame"], ["canvas0"], to=f32),
        helper.make_node("Shape", ["frame"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["h1"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["w1"], axis=0),
        helper.make_node("Concat", ["h1", "w1"], ["hw"], axis=0),
        helper.make_node("Squeeze", ["h1"], ["h"]),
        helper.make_node("Squeeze", ["w1"], ["w"]),
        helper.make_node("Cast", ["h"], ["hf"], to=f32),
        helper.make_node("Cast", ["w"], ["wf"], to=f32),
        helper.make_node("Range", ["zero", "wf", "one"], ["xs"]),
        helper.make_node("Range", ["zero", "hf", "one"], ["ys"]),
        helper.make_node("Unsqueeze", ["xs", "i0"], ["xs_row"]),
        helper.make_node("Unsqueeze", ["ys", "i1"], ["ys_col"]),
        helper.make_node("Expand", ["xs_row", "hw"], ["gx"]),
        helper.make_node("Expand", ["ys_col", "hw"], ["gy"]),
        helper.make_node("Expand", ["one", "hw"], ["g1"]),
        helper.make_node("Unsqueeze", ["gx", "tail"], ["gx3"]),
        helper.make_node("Unsqueeze", ["gy", "tail"], ["gy3"]),
        helper.make_node("Unsqueeze", ["g1", "tail"], ["g13"]),
        # (x, y, 1) for every frame pixel, made once and read by every face.
        helper.make_node("Concat", ["gx3", "gy3", "g13"], ["base"], axis=-1),
        helper.make_node("Shape", ["sources"], ["sources_shape"]),
        helper.make_node("Gather", ["sources_shape", "i0"], ["count1"], axis=0),
        helper.make_node("Squeeze", ["count1"], ["count"]),
        helper.make_node("Loop", ["count", "true", "canvas0"], ["canvas"], body=_body(side)),
        helper.make_node("Cast", ["canvas"], ["pasted"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "paste_back",
        [
            helper.make_tensor_value_info("frame", TensorProto.UINT8, ["H", "W", 3]),
            helper.make_tensor_value_info("sources", TensorProto.UINT8, ["K", side, side, 4]),
            helper.make_tensor_value_info("maps", f32, ["K", 2, 3]),
        ],
        [helper.make_tensor_value_info("pasted", TensorProto.UINT8, ["H", "W", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def faces_region(
    faces: Sequence[tuple[np.ndarray, np.ndarray]], side: int, height: int, width: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[int, int, int, int] | None]:
    """The faces that touch the frame, and the smallest box holding all their paste boxes
    (face_box, as paste_back warps); None when none does. A matrix paste_back cannot take (not
    finite) fails here as it does there."""
    kept, boxes = [], []
    for crop, matrix in faces:
        box = face_box(matrix, side, height, width)
        if box is not None:
            kept.append((crop, matrix))
            boxes.append(box)
    if not boxes:
        return kept, None
    x0, y0, x1, y1 = zip(*boxes, strict=True)
    return kept, (min(x0), min(y0), max(x1), max(y1))


class GpuPaster:
    """paste_back for a whole frame in one graph run on the models' provider. The region its
    faces cover goes to the device and back once however many faces it has (paste_back's CPU
    cost grows with each face's area: 27.5 ms a 1080p frame with 8 faces on an H100 host's
    cores). An out-of-memory on the device is counted like a model's and that frame is pasted
    on the CPU, which gives the same picture within a grey level."""

    def __init__(self, choice: ProviderChoice, *, gpu_mem_limit: int = 0, side: int) -> None:
        model = paste_model(side).SerializeToString()
        self.session = create_session(
            model, choice, threads=1, gpu_mem_limit=gpu_mem_limit, allow_cpu_fallback=False
        )
        self.provider = self.session.get_providers()[0]
        self.side = side
        self._warned = threading.Event()
        self._runs = threading.BoundedSemaphore(CONCURRENT_RUNS)

    def paste(
        self, frame: np.ndarray, faces: Sequence[tuple[np.ndarray, np.ndarray]], feather: Feather
    ) -> None:
        """Blend every (swapped crop, frame->crop affine) of one frame into it, in place."""
        height, width = frame.shape[:2]
        faces, box = faces_region(faces, feather.alpha.shape[0] - 2, height, width)
        if box is None:
            return
        x0, y0, x1, y1 = box
        region = frame[y0:y1, x0:x1]
        sources = np.stack([framed_source(crop, feather) for crop, _ in faces])
        maps = np.stack([source_map(matrix, x0, y0) for _, matrix in faces]).astype(np.float32)
        try:
            with self._runs:
                pasted = self.session.run(
                    ["pasted"], {"frame": region, "sources": sources, "maps": maps}
                )[0]
        except Exception as exc:  # onnxruntime raises plain Exception subclasses
            kind = classify_oom(exc)
            if kind is None:
                raise
            observe.gpu_oom(kind, MODEL)
            if not self._warned.is_set():
                self._warned.set()
                log.warning("paste: GPU out of memory (%s); pasting such frames on the CPU", kind)
            for crop, matrix in faces:
                paste_back(frame, crop, matrix, feather)
            return
        np.copyto(region, pasted)


def cpu_choice() -> ProviderChoice:
    """The CPU provider, asked for as such (tests and the equality check run the graph there)."""
    return ProviderChoice("cpu", (CPU,))
