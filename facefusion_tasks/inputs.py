"""Cheap checks of user inputs, run before any work is queued or any model loads."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from facefusion_tasks import objects
from facefusion_tasks.config import DEFAULT_MAX_IMAGE_PIXELS
from facefusion_tasks.errors import InputError, OutputError
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason

#: Output containers we can mux video (and usually the source audio) into.
OUTPUT_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".m4v"})
#: Image types whose size the header gives before any decoding; nothing else is read.
IMAGE_TYPES = "PNG, JPEG or WebP"
#: JPEG start-of-frame markers (they carry the size); C4, C8 and CC share the range but are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def read_image(path: Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Load a still image as BGR or raise InputError with one line. The size comes from the
    header first: a 2.7 MB PNG of 30000² pixels would otherwise take gigabytes to decode."""
    import cv2

    if not path.is_file():
        raise InputError(f"{path}: no such file", reason=Reason.MISSING_FILE)
    try:
        width, height = image_size(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if width * height > max_pixels:
        raise InputError(
            f"{path}: image of {width}x{height} exceeds the limit of {max_pixels} pixels "
            "(FACEFUSION_MAX_IMAGE_PIXELS)",
            reason=Reason.TOO_LARGE,
        )
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not an image opencv can read", reason=Reason.NOT_AN_IMAGE)
    if image.shape[1] * image.shape[0] > width * height:
        # The decoder and the header disagree: never trust more than the header promised.
        raise InputError(
            f"{path}: corrupt image (size differs from header)", reason=Reason.NOT_AN_IMAGE
        )
    return image


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG, JPEG or WebP header, reading a few bytes; InputError for
    any other file."""
    with path.open("rb") as handle:
        head = handle.read(32)
        size: tuple[int, int] | None = None
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            size = struct.unpack(">II", head[16:24])
        elif head.startswith(b"\xff\xd8"):
            size = _jpeg_size(handle)
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            size = _webp_size(head)
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise InputError(f"{path}: not a {IMAGE_TYPES} image", reason=Reason.NOT_AN_IMAGE)
    return size


def _jpeg_size(handle: BinaryIO) -> tuple[int, int] | None:
    # Walk the marker segments, skipping their bodies, to the first start-of-frame.
    handle.seek(2)
    while handle.read(1) == b"\xff":
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = handle.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_STANDALONE:
            continue
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if code in _JPEG_SOF:
            body = handle.read(5)
            if len(body) < 5:
                return None
            height, width = struct.unpack(">HH", body[1:5])
            return width, height
        if code == 0xDA or length < 2:  # a scan before any frame header
            return None
        handle.seek(length - 2, os.SEEK_CUR)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _same(one: Location, other: Location) -> bool:
    if isinstance(one, ObjectRef) or isinstance(other, ObjectRef):
        return one == other
    return one.resolve() == other.resolve()


def check_output(
    output: Location, target: Location, *, inputs: Sequence[Location | None] = ()
) -> None:
    """Refuse destinations we could only fail on later, before any work starts; `inputs` (the
    source and reference images) must not be overwritten either. An object's bucket must
    exist and take these credentials."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        allowed = ", ".join(sorted(OUTPUT_SUFFIXES))
        raise OutputError(f"{output}: unsupported output type (use {allowed})")
    if _same(output, target):
        raise OutputError(f"{output}: output would overwrite the target video")
    for other in inputs:
        if other is not None and _same(output, other):
            raise OutputError(f"{output}: output would overwrite an input image")
    if isinstance(output, ObjectRef):
        objects.check_bucket(output)
        return
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: directory {parent} is not writable")
