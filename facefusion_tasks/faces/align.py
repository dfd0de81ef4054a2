"""Five-point similarity alignment to the ArcFace template (112 px, or 128 px for inswapper)."""

from __future__ import annotations

import cv2
import numpy as np

#: ArcFace's canonical landmark positions in a 112×112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template(size: int) -> np.ndarray:
    """The template for a crop of `size` px: scaled for multiples of 112, else +8 px on x
    at 128 scale (how inswapper's 128 px crops were made in training)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    ratio = size / 128.0
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += 8.0 * ratio
    return dst


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) src -> dst, 2×3."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var = (src_c**2).sum() / n
    scale = float((s * d).sum() / var) if var > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def estimate_norm(kps: np.ndarray, size: int) -> np.ndarray:
    """Affine (2×3) that maps a face's landmarks onto the template of a `size` px crop."""
    return umeyama(kps, template(size))


def crop(image: np.ndarray, kps: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The aligned `size`×`size` crop of a face and the frame->crop affine used for it."""
    matrix = estimate_norm(kps, size)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0), matrix
