"""One still image through a video frame's face path, written beside its destination, verified."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facefusion_tasks import observe
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import Cancelled, InputError, MediaError
from facefusion_tasks.faces.engine import FaceEngine
from facefusion_tasks.images import ImageHeader, check_image_target, read_header
from facefusion_tasks.inputs import check_output, read_image
from facefusion_tasks.pipeline import SwapJob, SwapResult, metric_stages
from facefusion_tasks.video import staging
from facefusion_tasks.video.staging import StagedOutput

#: JPEG and WebP quality. 95 is OpenCV's JPEG default; its WebP default is lossless, which
#: would write a photo several times larger than it came in.
IMAGE_QUALITY = 95


def encode_args(image_format: str) -> tuple[str, list[int]]:
    """The extension and parameters cv2.imencode writes `image_format` with. No metadata is
    carried over: the pixels are stored upright, so no EXIF orientation can turn them again."""
    if image_format == "jpeg":
        return ".jpg", [cv2.IMWRITE_JPEG_QUALITY, IMAGE_QUALITY]
    if image_format == "webp":
        return ".webp", [cv2.IMWRITE_WEBP_QUALITY, IMAGE_QUALITY]
    if image_format == "png":
        return ".png", []
    raise ValueError(f"no image format {image_format!r}")


def verify_image(path: Path, *, image_format: str, width: int, height: int, what: str) -> None:
    """MediaError unless `path` holds a complete, still `image_format` image that decodes, EXIF
    orientation applied, to width×height: what a viewer would show is what was swapped."""
    try:
        header: ImageHeader | None = read_header(path)
    except InputError:
        header = None
    expected = (image_format, width, height, False, True)
    if (
        header is None
        or (header.format, header.width, header.height, header.animated, header.complete)
        != expected
    ):
        raise MediaError(f"{what}: the written image does not verify (header {header})")
    # From bytes Python read, as inputs.read_image decodes: OpenCV never gets a name.
    decoded = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None or decoded.shape != (height, width, 3):
        shape = None if decoded is None else decoded.shape
        raise MediaError(f"{what}: the written image does not decode back (got {shape})")


def write_image(image: np.ndarray, destination: Path, *, image_format: str) -> StagedOutput:
    """Encode `image` (BGR) into a temp beside `destination` and verify it by decoding it back;
    the caller commits or discards. Nothing at `destination` changes here."""
    extension, params = encode_args(image_format)
    ok, encoded = cv2.imencode(extension, image, params)
    if not ok:
        raise MediaError(f"{destination.name}: OpenCV could not encode the image")
    temp = staging.write_temp(destination, encoded.tobytes())
    try:
        height, width = image.shape[:2]
        verify_image(
            temp, image_format=image_format, width=width, height=height, what=destination.name
        )
    except BaseException:
        staging.remove(temp)
        raise
    return StagedOutput(temp, destination)


def swap_image(
    job: SwapJob,
    engine: FaceEngine,
    settings: Settings,
    *,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[SwapResult, StagedOutput]:
    """Swap faces in a still image: decoded upright, through the engine calls a decoded video
    frame gets (prepare → infer → paste, engine.process), encoded in the target's own format
    into a verified temp beside the output. The caller commits it (local mode at once, a
    distributed job through COMMITTING)."""
    target = job.target
    if not isinstance(target, Path):  # the callers fetch an object target first
        raise TypeError(f"{target}: a still image is swapped from a local copy")
    started = time.perf_counter()
    clock = engine.clock
    clock.clear()
    header = check_image_target(target, max_pixels=settings.max_image_pixels)
    check_output(job.output, target, image_format=header.format)
    with clock.stage("decode"):
        frame = read_image(target, max_pixels=settings.max_image_pixels)
    faces = engine.process([frame])[0]
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")
    with clock.stage("encode"):
        staged = write_image(frame, job.output, image_format=header.format)
    seconds = time.perf_counter() - started
    observe.batch(metric_stages(dict(clock.seconds)), frames=1, faces=faces, seconds=seconds)
    if progress is not None:
        progress(1)
    result = SwapResult(
        output=job.output,
        frames=1,
        faces_swapped=faces,
        frames_with_faces=int(faces > 0),
        seconds=seconds,
        stage_seconds=dict(clock.seconds),
        stage_cpu_seconds=dict(clock.cpu_seconds),
        encoder=header.format,
    )
    return result, staged
