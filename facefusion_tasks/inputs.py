"""Cheap checks of user inputs, run before any work is queued or any model loads."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from facefusion_tasks import objects
from facefusion_tasks.config import DEFAULT_MAX_IMAGE_PIXELS
from facefusion_tasks.errors import InputError, OutputError
from facefusion_tasks.filekind import existing_non_file, resolved
from facefusion_tasks.images import (
    FORMAT_NAMES,
    FORMAT_SUFFIXES,
    ImageHeader,
    check_image,
    file_limit,
    refuse_oversized,
)
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason
from facefusion_tasks.stderr_capture import captured_stderr, release
from facefusion_tasks.video.codecs import MUXERS
from facefusion_tasks.video.staging import NAME_MAX

log = logging.getLogger(__name__)

#: How libjpeg's, libpng's and OpenCV's own messages begin, as printed straight to stderr while
#: an image decodes (kept out of the CLI's one line, logged instead).
_DECODER_PREFIXES = ("Corrupt JPEG data", "Premature end of JPEG file", "libpng ", "Warning:",
                     "Invalid SOS", "Unsupported marker", "Not a JPEG file",
                     "Inconsistent progression sequence", "[ WARN", "[ERROR")  # fmt: skip
#: What libjpeg says when it could not decode part of the picture and painted it grey (data
#: that stops early, a restart interval lost, a bad Huffman or arithmetic code): every "Corrupt
#: JPEG data" line but one. Stray bytes between markers, which many cameras write, cost no pixel.
_DAMAGE = ("premature end", "corrupt jpeg data")
_HARMLESS = "extraneous bytes"
#: Output containers we can mux video (and the source audio, copied or transcoded) into.
OUTPUT_SUFFIXES = frozenset(MUXERS)


#: One source image, or several photos of the same person (their identities are averaged);
#: each a path or an s3://bucket/key object.
Source = str | PathLike[str] | ObjectRef
Sources = Source | Sequence[Source]


def source_paths(sources: Sources) -> tuple[Location, ...]:
    """The source images as locations (s3://… text stays an object, as Path would fold its
    `//`): one, or a sequence of them; InputError when none."""
    if isinstance(sources, (str, bytes, PathLike, ObjectRef)):
        return (objects.location(sources),)
    if not isinstance(sources, Iterable):
        return (objects.location(sources),)  # refused there: not a file name
    paths = tuple(objects.location(s) for s in sources)
    if not paths:
        raise InputError("no source image given")
    return paths


def read_image(path: Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Load a still image as BGR, upright, or raise InputError with one line. The header is
    checked first (images.check_image): size, format, and that the file is not cut short.

    OpenCV decodes: IMREAD_COLOR applies the EXIF orientation of a JPEG, PNG (eXIf) or WebP,
    so a phone's portrait photo comes out upright, as every viewer shows it (ffmpeg 5.1 does
    not turn images by their EXIF)."""
    import cv2

    header = check_image(path, max_pixels=max_pixels)
    data = _image_bytes(path, header)
    with captured_stderr() as said:
        # Decoded from bytes Python read: OpenCV never gets a name (one that is not UTF-8
        # crashed imread), and imdecode applies the EXIF orientation as imread does.
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    theirs = [line for line in said if not line.startswith(_DECODER_PREFIXES)]
    release(theirs)
    ours = [line.strip() for line in said if line.startswith(_DECODER_PREFIXES)]
    for line in ours:
        log.info("%s: %s", path.name, line)
    damage = next(
        (
            line
            for line in ours
            if any(d in line.lower() for d in _DAMAGE) and _HARMLESS not in line.lower()
        ),
        None,
    )
    if damage is not None:
        # libjpeg fills what it could not read with grey and still returns the image.
        raise InputError(
            f"{path}: corrupt {header.name} image ({damage})", reason=Reason.NOT_AN_IMAGE
        )
    if image is None:
        why = next((line for line in ours if "error" in line.lower()), "")
        raise InputError(
            f"{path}: not an image opencv can read{f' ({why})' if why else ''}",
            reason=Reason.NOT_AN_IMAGE,
        )
    if image.shape[1] * image.shape[0] > header.width * header.height:
        # The decoder and the header disagree: never trust more than the header promised.
        raise InputError(
            f"{path}: corrupt image (size differs from header)", reason=Reason.NOT_AN_IMAGE
        )
    return image


def _image_bytes(path: Path, header: ImageHeader) -> np.ndarray:
    """The file's bytes, to decode; InputError (too_large) for a file far larger than its
    header's picture could need, which would be read whole for a few pixels."""
    limit = file_limit(header.width, header.height)
    try:
        with path.open("rb") as handle:
            # Sized by the file (a read asks for all it may return at once), one byte past
            # the limit so a file that grows meanwhile is caught too.
            data = handle.read(min(os.fstat(handle.fileno()).st_size, limit) + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    refuse_oversized(path, header, len(data))
    return np.frombuffer(data, dtype=np.uint8)


def _same(one: Location, other: Location) -> bool:
    if isinstance(one, ObjectRef) or isinstance(other, ObjectRef):
        return one == other
    return resolved(one) == resolved(other)


def check_output(
    output: Location,
    target: Location,
    *,
    inputs: Sequence[Location | None] = (),
    image_format: str | None = None,
) -> None:
    """Refuse destinations we could only fail on later, before any work starts; `inputs` (the
    source and reference images) must not be overwritten either. An image target
    (`image_format`, from its header) is written in its own format: the output is named so.
    An object's bucket must exist and take these credentials."""
    if image_format is not None:
        suffixes = FORMAT_SUFFIXES[image_format]
        if output.suffix.lower() not in suffixes:
            raise OutputError(
                f"{output}: the target is a {FORMAT_NAMES[image_format]} image, so the output "
                f"is one too (name it {' or '.join(suffixes)})"
            )
    elif output.suffix.lower() not in OUTPUT_SUFFIXES:
        allowed = ", ".join(sorted(OUTPUT_SUFFIXES))
        raise OutputError(f"{output}: unsupported output type (use {allowed})")
    if _same(output, target):
        raise OutputError(f"{output}: output would overwrite the target")
    for other in inputs:
        if other is not None and _same(output, other):
            raise OutputError(f"{output}: output would overwrite an input image")
    if isinstance(output, ObjectRef):
        objects.check_bucket(output)
        return
    there = existing_non_file(output)
    if there is not None:
        # A pipe or device there would be replaced by the finished file, not written to.
        raise OutputError(f"{output}: {there}")
    parent = output.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"{output}: {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: directory {parent} is not writable")
    if len(output.name.encode()) > NAME_MAX:
        # The OS would refuse it only at the rename, after the whole swap.
        raise OutputError(f"{output.name[:40]}…: file name longer than {NAME_MAX} bytes")
