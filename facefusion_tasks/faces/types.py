"""The Face record that detection produces and the rest of the pipeline consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face in frame coordinates."""

    #: x1, y1, x2, y2 in pixels of the frame it was found in.
    bbox: np.ndarray
    #: Five landmarks (eyes, nose, mouth corners) as a (5, 2) float32 array.
    kps: np.ndarray
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels (the `one` selector keeps the largest face)."""
        x1, y1, x2, y2 = self.bbox
        return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))
