"""ArcFace identity embeddings, one model call for any number of aligned faces."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from facefusion_tasks.faces import align
from facefusion_tasks.faces.backoff import BatchBackoff
from facefusion_tasks.faces.iobinding import ModelSession
from facefusion_tasks.faces.types import Face

#: ArcFace crop size (w600k_r50 takes 112×112).
EMBED_SIZE = 112


class Embedder:
    """Maps faces to L2-normalised 512-d identity vectors."""

    def __init__(self, session: ModelSession, *, max_batch: int = 64) -> None:
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = session.get_outputs()[0].name
        self.size = int(inp.shape[2]) if isinstance(inp.shape[2], int) else EMBED_SIZE
        # The real export's batch is free; a fixed-1 export gets one call per face.
        self.batched = inp.shape[0] != 1
        self.backoff = BatchBackoff("embedder", max_batch if self.batched else 1)

    @property
    def calls(self) -> int:
        """Model calls made so far."""
        return self.backoff.calls

    def embed(self, pairs: Sequence[tuple[np.ndarray, Face]]) -> np.ndarray:
        """(frame, face) pairs -> (N, 512) unit vectors."""
        if not pairs:
            return np.zeros((0, 512), np.float32)
        crops = [align.crop(frame, face.kps, self.size)[0] for frame, face in pairs]
        blob = cv2.dnn.blobFromImages(
            crops, 1.0 / 127.5, (self.size, self.size), (127.5, 127.5, 127.5), swapRB=True
        )
        parts = self.backoff.run(
            len(blob),
            lambda start, stop: self.session.run(
                [self.output_name], {self.input_name: blob[start:stop]}
            )[0],
        )
        raw = np.concatenate(parts)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return (raw / np.maximum(norms, 1e-12)).astype(np.float32)
