"""Sample faces: synthetic ones the stand-in detector finds, and the photos insightface ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facefusion_tasks.errors import ModelError

#: BGR colour at a synthetic face's centre (a warm skin tone: red well above blue).
FACE_BGR = (120, 165, 235)


def draw_face(image: np.ndarray, cx: float, cy: float, radius: float) -> None:
    """Paint a face in place: skin tone at the centre fading towards the edge, so the
    stand-in detector's warmth peak (red minus blue) sits at one point, the centre."""
    height, width = image.shape[:2]
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, width)
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    r = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) / radius
    inside = r <= 1.0
    fade = np.clip(1.0 - 0.45 * r**2, 0.0, 1.0)[..., None]
    # A face-like pattern (darker eyes and mouth) so swapped and untouched crops differ.
    face = (np.array(FACE_BGR, np.float32) * fade).astype(np.float32)
    for ex in (-0.35, 0.35):
        eye = np.sqrt((xs - (cx + ex * radius)) ** 2 + (ys - (cy - 0.25 * radius)) ** 2)
        face[eye < 0.12 * radius] *= 0.55
    mouth = (np.abs(ys - (cy + 0.4 * radius)) < 0.06 * radius) & (np.abs(xs - cx) < 0.35 * radius)
    face[mouth] *= 0.6
    region = image[y0:y1, x0:x1]
    region[inside] = face[inside].astype(np.uint8)


def background(width: int, height: int, index: int) -> np.ndarray:
    """A cool (blue-dominant) moving background that never looks like skin."""
    xs = np.arange(width, dtype=np.int32)[None, :]
    ys = np.arange(height, dtype=np.int32)[:, None]
    stripes = ((xs + ys + 3 * index) // 16) % 2
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = 150 + 40 * stripes  # blue
    image[..., 1] = 110 + 20 * stripes  # green
    image[..., 2] = 60 + 10 * stripes  # red
    return image


def bundled_photo(name: str) -> Path:
    """A face photo shipped inside the insightface wheel (t1.jpg, Tom_Hanks_54745.png)."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / name
    if not path.is_file():
        raise ModelError(f"insightface's bundled {name} is missing from {path.parent}")
    return path
