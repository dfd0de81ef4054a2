"""Sample faces: synthetic ones the stand-in detector finds, and the photos insightface ships."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.request
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


#: insightface's sample photos (its wheel's data/images), name -> sha256 of the wheel's copy.
SAMPLE_PHOTOS = {
    "t1.jpg": "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
    "Tom_Hanks_54745.png": "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083",
}
_PHOTO_URL = (
    "https://raw.githubusercontent.com/deepinsight/insightface/master/"
    "python-package/insightface/data/images/{name}"
)


def write_source(folder: Path) -> Path:
    """A source photo with one synthetic face, written as `folder`/source.png."""
    import cv2

    path = folder / "source.png"
    image = background(256, 256, 0)
    draw_face(image, 128, 128, 90)
    cv2.imwrite(str(path), image)
    return path


def bundled_photo(name: str, *, cache_dir: Path | None = None) -> Path:
    """A face photo insightface ships (t1.jpg, Tom_Hanks_54745.png): from an installed insightface
    when there is one, else fetched once from its repository and checked against the digest.

    insightface is not a runtime dependency: it requires the CPU onnxruntime and opencv-python,
    which would shadow onnxruntime-gpu and the headless OpenCV."""
    if name not in SAMPLE_PHOTOS:
        raise ModelError(f"unknown sample photo {name!r}")
    # Locate without importing: importing insightface loads onnxruntime and its model zoo.
    spec = importlib.util.find_spec("insightface")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "data" / "images" / name
        if path.is_file():
            return path
    from facefusion_tasks.config import default_models_dir

    directory = cache_dir or default_models_dir().parent / "samples"
    path = directory / name
    if path.is_file() and _sha256(path.read_bytes()) == SAMPLE_PHOTOS[name]:
        return path
    url = _PHOTO_URL.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise ModelError(
            f"sample photo {name}: cannot fetch {url} ({exc}); put it in {directory} or "
            "`pip install --no-deps insightface`"
        ) from None
    if _sha256(data) != SAMPLE_PHOTOS[name]:
        raise ModelError(f"sample photo {name} from {url} does not match its pinned digest")
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{name}.part"
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
