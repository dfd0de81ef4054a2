"""inswapper: source identity latent via the emap, then swap many aligned faces per model call."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from facefusion_tasks.errors import ModelError
from facefusion_tasks.faces.backoff import BatchBackoff
from facefusion_tasks.faces.iobinding import ModelSession

log = logging.getLogger(__name__)

#: inswapper works on 128×128 crops.
SWAP_SIZE = 128


def read_emap(model_path: str) -> np.ndarray:
    """inswapper keeps its 512×512 identity projection as the graph's last initializer."""
    graph = onnx.load(model_path, load_external_data=False).graph
    if not graph.initializer:
        raise ModelError(f"{model_path}: no initializers, so no emap")
    emap = numpy_helper.to_array(graph.initializer[-1])
    if emap.shape != (512, 512):
        raise ModelError(
            f"{model_path}: last initializer is {emap.shape}, expected the 512×512 emap"
        )
    return emap.astype(np.float32)


class Swapper:
    """Runs inswapper on batches of aligned 128 px crops (BGR uint8 in, BGR uint8 out)."""

    def __init__(self, session: ModelSession, emap: np.ndarray, *, max_batch: int = 64) -> None:
        self.session = session
        inputs = session.get_inputs()
        if len(inputs) != 2:
            raise ModelError("swapper must take two inputs (target crop, source latent)")
        self.target_name, self.source_name = inputs[0].name, inputs[1].name
        self.output_name = session.get_outputs()[0].name
        self.emap = emap
        # Only a converted (dynamic-batch) export can take several faces in one call.
        self.batched = inputs[0].shape[0] != 1
        self.backoff = BatchBackoff("swapper", max_batch if self.batched else 1)

    @property
    def calls(self) -> int:
        """Model calls made so far."""
        return self.backoff.calls

    def latent(self, embedding: np.ndarray) -> np.ndarray:
        """Source identity for the model: normalised embedding through the emap, renormalised."""
        vector = embedding.reshape(1, -1).astype(np.float32)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        latent = vector @ self.emap
        return (latent / max(float(np.linalg.norm(latent)), 1e-12)).astype(np.float32)

    def swap(self, crops: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """(N,128,128,3) BGR uint8 crops -> swapped crops, in as few calls as the model allows."""
        if len(crops) == 0:
            return crops
        blob = np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
        blob *= 1.0 / 255.0

        def call(start: int, stop: int) -> np.ndarray:
            source = np.repeat(latent, stop - start, axis=0)
            feeds = {self.target_name: blob[start:stop], self.source_name: source}
            return self.session.run([self.output_name], feeds)[0]

        return to_bgr_crops(np.concatenate(self.backoff.run(len(blob), call)))


def to_bgr_crops(out: np.ndarray) -> np.ndarray:
    """The model's (N,3,H,W) RGB in [0, 1] -> (N,H,W,3) BGR uint8: ×255 in float32, rounded
    half to even and clipped to 0..255, as numpy's clip, round and astype did, but contiguous:
    numpy's pass over the transposed, reversed view cost 15× more (3 ms for 8 faces)."""
    count, channels, height, width = out.shape
    scaled = np.multiply(out, np.float32(255.0), dtype=np.float32)
    # cv2's float -> uint8 conversion rounds half to even and saturates: numpy's round + clip.
    # (OpenCV's stubs list no scalar overload for add, though the binding takes one.)
    planes = cv2.add(scaled.reshape(count * channels, -1), 0.0, dtype=cv2.CV_8U)  # type: ignore[call-overload]
    planes = planes.reshape(count, channels, height, width)
    crops = np.empty((count, height, width, channels), np.uint8)
    for plane, crop in zip(planes, crops, strict=True):
        cv2.merge(tuple(plane[::-1]), dst=crop)
    return crops
