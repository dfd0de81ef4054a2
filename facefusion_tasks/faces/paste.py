"""Paste swapped crops back, warping only each face's bounding box through a feathered mask."""

from __future__ import annotations

import cv2
import numpy as np


def feather_mask(size: int, *, border: float = 0.1, blur: float = 0.08) -> np.ndarray:
    """A size×size float32 mask: 1 inside, fading to 0 over the outer `border` of the crop,
    so the pasted face blends without a visible square edge."""
    mask = np.zeros((size, size), np.float32)
    edge = max(int(size * border), 1)
    mask[edge:-edge, edge:-edge] = 1.0
    sigma = max(size * blur, 1.0)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def paste_back(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> None:
    """Blend `crop` (aligned with frame->crop affine `matrix`) into `frame` in place.

    Only the face's bounding box in the frame is warped (not the whole frame three times, as
    insightface does), which keeps paste-back cost proportional to the face, not the frame.
    """
    size = crop.shape[0]
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    mapped = corners @ inverse.T
    height, width = frame.shape[:2]
    x0 = max(int(np.floor(mapped[:, 0].min())), 0)
    y0 = max(int(np.floor(mapped[:, 1].min())), 0)
    x1 = min(int(np.ceil(mapped[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(mapped[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    box = (x1 - x0, y1 - y0)
    # Warped as BGRA: OpenCV's 4-channel bilinear warp is about twice as fast as its 3-channel
    # one and gives the same B, G and R values (the equality test guards it).
    face = cv2.cvtColor(
        cv2.warpAffine(
            cv2.cvtColor(crop, cv2.COLOR_BGR2BGRA), local, box,
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
        ),
        cv2.COLOR_BGRA2BGR,
    )  # fmt: skip
    alpha = cv2.warpAffine(mask, local, box, flags=cv2.INTER_LINEAR, borderValue=0.0)
    region = frame[y0:y1, x0:x1]
    # region + alpha * (face - region), + 0.5, truncated to uint8: the same float32 operations
    # as ever (each one exactly rounded, so OpenCV's and numpy's agree bit for bit), with the
    # uint8 -> float32 widening folded into the subtraction and the addition instead of two
    # more passes, and alpha widened to 3 channels rather than broadcast from a trailing axis
    # of 1 (numpy's slow path). No clip to 0..255: rounding is monotonic, so with alpha in
    # [0, 1] (give or take a rounding) the blend stays between region and face, and after
    # + 0.5 truncation lands in 0..255 exactly where a clip first would have put it.
    out = cv2.subtract(face, region, dtype=cv2.CV_32F)
    cv2.multiply(out, cv2.merge((alpha, alpha, alpha)), dst=out)
    out = cv2.add(region, out, dtype=cv2.CV_32F)
    np.add(out, np.float32(0.5), out=out)
    np.copyto(region, out, casting="unsafe")
