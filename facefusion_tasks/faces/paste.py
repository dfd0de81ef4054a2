"""Paste swapped crops back, warping only each face's bounding box through a feathered mask."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Feather:
    """A feather mask as paste_back uses it: 8-bit, with a one-pixel frame of zeros, so that
    warped as the crop's alpha channel it fades to 0 past the crop's edge as the float mask
    warped with a zero border did."""

    alpha: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Feather:
        """The 8-bit, framed copy of a float mask in [0, 1]."""
        alpha = np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)
        return cls(cv2.copyMakeBorder(alpha, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0))


def face_box(
    matrix: np.ndarray, size: int, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the frame pixels a size×size crop aligned by frame->crop `matrix`
    covers, clipped to the frame; None when it lies outside."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    mapped = corners @ inverse.T
    x0 = max(int(np.floor(mapped[:, 0].min())), 0)
    y0 = max(int(np.floor(mapped[:, 1].min())), 0)
    x1 = min(int(np.ceil(mapped[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(mapped[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def paste_back(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, feather: Feather) -> None:
    """Blend `crop` (aligned with frame->crop affine `matrix`) into `frame` in place.

    Only the face's bounding box in the frame is warped (not the whole frame three times, as
    insightface does), which keeps paste-back cost proportional to the face, not the frame.
    """
    box = face_box(matrix, crop.shape[0], *frame.shape[:2])
    if box is None:
        return
    x0, y0, x1, y1 = box
    # One warp for colour and mask together: the crop as BGRA with the feather as its alpha
    # (OpenCV's 4-channel bilinear warp costs what its 3-channel one does, so the mask rides
    # free). Colour replicates past the edge as before; the framed alpha fades to 0 there.
    source = cv2.merge((*cv2.split(cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_REPLICATE)),
                        feather.alpha))  # fmt: skip
    # Frame (x0 + x, y0 + y) -> crop, + 1 for the frame of padding.
    local = np.asarray(matrix, np.float64).copy()
    local[:, 2] += local[:, 0] * x0 + local[:, 1] * y0 + 1.0
    warped = cv2.warpAffine(
        source, local, (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    alpha = np.multiply(warped[..., 3], np.float32(1.0 / 255.0), dtype=np.float32)
    region = frame[y0:y1, x0:x1]
    # One rounding pass: face·a + region·(1 − a), straight into the frame. Against the float
    # formula this replaces (float mask warped apart, float blend, + 0.5 truncated), 1.3 % of
    # pixels differ by one grey level and none by more in the test's 2·10^8.
    cv2.blendLinear(cv2.cvtColor(warped, cv2.COLOR_BGRA2BGR), region, alpha, 1.0 - alpha,
                    dst=region)  # fmt: skip
