"""SCRFD face detection: letterbox, one model call per frame (or per batch when the export is
batched), anchor decoding and NMS, vectorised in numpy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from facefusion_tasks.errors import ModelError
from facefusion_tasks.faces.backoff import BatchBackoff, concat_outputs
from facefusion_tasks.faces.iobinding import ModelSession
from facefusion_tasks.faces.pool import SERIAL, CpuPool
from facefusion_tasks.faces.types import Face

#: SCRFD exports with keypoints have 3 outputs (score, box, kps) per stride.
_STRIDES_BY_OUTPUTS = {9: (8, 16, 32), 15: (8, 16, 32, 64, 128)}
_ANCHORS_PER_CELL = 2
#: SCRFD's normalisation, (pixel - 127.5) / 128 in RGB, as pixel / 128 - 127.5 / 128: both
#: terms are multiples of 2**-8 within [-1, 1], so every float32 step is exact and the blob is
#: bit-identical to cv2.dnn.blobFromImage's, however it is computed (the equality test guards it).
_SCALE = np.float32(1.0 / 128.0)
_SHIFT = np.float32(127.5 / 128.0)
#: The normalised value of a black pixel: the padding of the letterbox.
_BLACK = -_SHIFT


@dataclass(frozen=True)
class Letterboxed:
    """One frame ready for the detector: the (1, 3, S, S) input and the frame->input scale."""

    blob: np.ndarray
    scale: float
    #: The batch array whose row `row` the blob is, when it was letterboxed into a BlobRing.
    batch: np.ndarray | None = None
    row: int = 0


@dataclass(frozen=True)
class Slot:
    """Where a frame is letterboxed to: a row of a BlobRing's (N, 3, S, S) float32 buffer."""

    batch: np.ndarray
    row: int
    #: Per row of `batch`, the picture's (height, width) last letterboxed there: the rest of
    #: the row is padding already, which a frame of the same size need not paint again (2 MB
    #: of float32 a 16:9 frame, ~0.17 ms). Shared with the ring; a row has one writer at a time.
    painted: list[tuple[int, int] | None]


class BlobRing:
    """Detector inputs in batch-shaped buffers used in turn, so a batch reaches the model as one
    view of consecutive rows instead of a concatenation: 8 blobs of 4.9 MB copied again were
    about 1 ms of CPU a frame, and a third batch of memory.

    Frame k goes to row k % batch of buffer (k // batch) % depth. The caller guarantees that a
    buffer's batch has been inferred before frame k + depth·batch is letterboxed over it (the
    pipeline's look-ahead semaphore holds depth·batch frames)."""

    def __init__(self, size: int, batch: int, depth: int) -> None:
        self.size = size
        self.batch = max(1, batch)
        self.buffers: list[np.ndarray | None] = [None] * max(1, depth)
        self.painted: list[list[tuple[int, int] | None]] = [
            [None] * self.batch for _ in self.buffers
        ]

    def slot(self, index: int) -> Slot:
        """Frame `index`'s buffer and row; a buffer is allocated when first used."""
        which = (index // self.batch) % len(self.buffers)
        buffer = self.buffers[which]
        if buffer is None:
            buffer = np.empty((self.batch, 3, self.size, self.size), np.float32)
            self.buffers[which] = buffer
        return Slot(buffer, index % self.batch, self.painted[which])


def batch_of(items: Sequence[Letterboxed]) -> np.ndarray:
    """The model input for `items`: a view when they are consecutive rows of one BlobRing
    buffer (the pipeline's batches), else their blobs concatenated."""
    first = items[0]
    if first.batch is not None and all(
        item.batch is first.batch and item.row == first.row + i for i, item in enumerate(items)
    ):
        return first.batch[first.row : first.row + len(items)]
    return first.blob if len(items) == 1 else np.concatenate([item.blob for item in items])


class Detector:
    """Finds faces (box, 5 landmarks, score) in BGR frames."""

    def __init__(
        self,
        session: ModelSession,
        *,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_batch: int = 8,
    ) -> None:
        outputs = session.get_outputs()
        if len(outputs) not in _STRIDES_BY_OUTPUTS:
            raise ModelError(
                f"detector has {len(outputs)} outputs; an SCRFD export with keypoints has 9 or 15"
            )
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in outputs]
        self.strides = _STRIDES_BY_OUTPUTS[len(outputs)]
        self.size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        # With a free batch dimension, outputs are either [N, anchors, C] (a batched export) or
        # [N * anchors, C] (the usual export converted to dynamic batch: "folded").
        self.batched = session.get_inputs()[0].shape[0] != 1
        self.folded = len(outputs[0].shape) != 3
        self._centers: dict[int, np.ndarray] = {}
        self.backoff = BatchBackoff("detector", max_batch if self.batched else 1)

    @property
    def calls(self) -> int:
        """Model calls made so far."""
        return self.backoff.calls

    def _anchor_centers(self, stride: int) -> np.ndarray:
        centers = self._centers.get(stride)
        if centers is None:
            cells = self.size // stride
            ys, xs = np.mgrid[:cells, :cells]
            grid = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            centers = np.repeat(grid, _ANCHORS_PER_CELL, axis=0)
            self._centers[stride] = centers
        return centers

    def ring(self, batch: int, depth: int) -> BlobRing:
        """Reusable batch buffers for `letterbox(frame, slot)` (see BlobRing)."""
        return BlobRing(self.size, batch, depth)

    def letterbox(self, frame: np.ndarray, slot: Slot | None = None) -> Letterboxed:
        """The model input for one frame: resized keeping aspect into the top-left of a square,
        normalised; the rest is the normalised value of black, as if padded with zeros. Into
        `slot` when given (a BlobRing's), else into a blob of its own."""
        height, width = frame.shape[:2]
        scale = min(self.size / height, self.size / width)
        new_w, new_h = max(int(width * scale), 1), max(int(height * scale), 1)
        resized = cv2.resize(frame, (new_w, new_h))
        if slot is None:
            batch, row = None, 0
            blob = np.empty((1, 3, self.size, self.size), np.float32)
        else:
            batch, row = slot.batch, slot.row
            blob = batch[row : row + 1]
        if slot is None or slot.painted[row] != (new_h, new_w):
            blob[:, :, :new_h, new_w:] = _BLACK
            blob[:, :, new_h:, :] = _BLACK
            if slot is not None:
                slot.painted[row] = (new_h, new_w)
        # Normalised straight into the blob, a plane at a time (BGR planes into RGB channels):
        # no float copy of the picture and no second copy into the canvas, as blobFromImage
        # needs, and one pass per plane (plane·scale + plane·0 − shift, every step exact).
        # 1.9 -> 1.1 ms of CPU for a 720p frame with numpy's two passes.
        for channel, plane in zip((2, 1, 0), cv2.split(resized), strict=True):
            picture = blob[0, channel, :new_h, :new_w]
            cv2.addWeighted(
                plane, float(_SCALE), plane, 0.0, -float(_SHIFT), dst=picture, dtype=cv2.CV_32F
            )
        return Letterboxed(blob, new_h / height, batch, row)

    def infer(self, prepared: Sequence[Letterboxed]) -> list[list[np.ndarray]]:
        """Run the model; each frame's outputs, in the order of `prepared`."""
        if not prepared:
            return []
        if not self.batched:
            per_frame: list[list[np.ndarray]] = []
            for item in prepared:

                def single(_start: int, _stop: int, b: np.ndarray = item.blob) -> list[np.ndarray]:
                    return list(self.session.run(self.output_names, {self.input_name: b}))

                (outs,) = self.backoff.run(1, single)
                per_frame.append(outs)
            return per_frame

        def call(start: int, stop: int) -> list[np.ndarray]:
            # Built per slice: at a cap of 1 (the CPU) no batch-sized input ever exists.
            batch = batch_of(prepared[start:stop])
            outs = self.session.run(self.output_names, {self.input_name: batch})
            if self.folded:  # [N * anchors, C] -> [N, anchors, C]
                outs = [o.reshape(stop - start, -1, o.shape[-1]) for o in outs]
            return list(outs)

        outs = concat_outputs(self.backoff.run(len(prepared), call))
        return [[o[i] for o in outs] for i in range(len(prepared))]

    def decode(self, outs: Sequence[np.ndarray], prepared: Letterboxed) -> list[Face]:
        """One frame's faces from its model outputs (anchor decoding and NMS)."""
        return self._decode(outs, prepared.scale)

    def detect(self, frames: Sequence[np.ndarray], pool: CpuPool = SERIAL) -> list[list[Face]]:
        """Faces per frame, in the same order as `frames`; per-frame CPU work in `pool`."""
        prepared = pool.map(self.letterbox, frames)
        outs = self.infer(prepared)
        return pool.map(lambda pair: self.decode(*pair), list(zip(outs, prepared, strict=True)))

    def _decode(self, outs: Sequence[np.ndarray], scale: float) -> list[Face]:
        count = len(self.strides)
        all_scores, all_boxes, all_kps = [], [], []
        for i, stride in enumerate(self.strides):
            scores = np.asarray(outs[i]).reshape(-1)
            keep = np.nonzero(scores >= self.score_threshold)[0]
            if keep.size == 0:
                continue
            centers = self._anchor_centers(stride)[keep]
            dist = np.asarray(outs[count + i]).reshape(-1, 4)[keep] * stride
            kps = np.asarray(outs[2 * count + i]).reshape(-1, 10)[keep] * stride
            boxes = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1)
            points = kps.reshape(-1, 5, 2) + centers[:, None, :]
            all_scores.append(scores[keep])
            all_boxes.append(boxes)
            all_kps.append(points)
        if not all_scores:
            return []
        scores = np.concatenate(all_scores)
        boxes = np.concatenate(all_boxes) / scale
        points = np.concatenate(all_kps) / scale
        order = nms(boxes, scores, self.nms_threshold)
        return [
            Face(
                bbox=boxes[j].astype(np.float32),
                kps=points[j].astype(np.float32),
                score=float(scores[j]),
            )
            for j in order
        ]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return keep
