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


def umeyama_many(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """umeyama for a stack of point sets (N, K, 2) onto one dst (K, 2): (N, 2, 3), in one
    vectorised pass with the same operations per face, so the same floats as `umeyama`."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    count, n = src.shape[0], src.shape[1]
    src_mean, dst_mean = src.mean(1), dst.mean(0)
    src_c, dst_c = src - src_mean[:, None, :], dst - dst_mean
    cov = np.matmul(dst_c.T, src_c) / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones((count, 2))
    d[np.linalg.det(cov) < 0, -1] = -1.0
    diag = np.zeros((count, 2, 2))
    diag[:, 0, 0], diag[:, 1, 1] = d[:, 0], d[:, 1]
    rot = np.matmul(np.matmul(u, diag), vt)
    var = (src_c**2).reshape(count, -1).sum(1) / n
    scale = np.ones(count)
    positive = var > 0
    scale[positive] = (s * d).sum(1)[positive] / var[positive]
    scaled = scale[:, None, None] * rot
    matrix = np.empty((count, 2, 3))
    matrix[:, :, :2] = scaled
    matrix[:, :, 2] = dst_mean - np.matmul(scaled, src_mean[:, :, None])[:, :, 0]
    return matrix


def estimate_norms(kps: np.ndarray, size: int) -> np.ndarray:
    """estimate_norm for a stack of faces' landmarks (N, 5, 2): (N, 2, 3)."""
    return umeyama_many(kps, template(size))


def estimate_norm(kps: np.ndarray, size: int) -> np.ndarray:
    """Affine (2×3) that maps a face's landmarks onto the template of a `size` px crop."""
    return umeyama(kps, template(size))


def crop(image: np.ndarray, kps: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The aligned `size`×`size` crop of a face and the frame->crop affine used for it."""
    matrix = estimate_norm(kps, size)
    return warp(image, matrix, size), matrix


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The `size`×`size` crop that the frame->crop affine `matrix` cuts out of `image`."""
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
