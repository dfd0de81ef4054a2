"""Still image files from their bytes alone: format, size, animation and completeness."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from facefusion_tasks.errors import InputError
from facefusion_tasks.filekind import require_file
from facefusion_tasks.reasons import Reason

if TYPE_CHECKING:
    from facefusion_tasks.objects import ObjectRef

#: Image types whose size the header gives before any decoding; nothing else is read.
IMAGE_TYPES = "PNG, JPEG or WebP"
#: Target names that make a job a still-image job (the bytes, not the name, give the format).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
#: Output names each format is written under: the output keeps its target's format.
FORMAT_SUFFIXES = {"png": (".png",), "jpeg": (".jpg", ".jpeg"), "webp": (".webp",)}
#: How each format is called in messages.
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}
#: JPEG start-of-frame markers (they carry the size); C4, C8 and CC share the range but are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_SOS, _JPEG_EOI = 0xDA, b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The IEND chunk's type and CRC: the last thing a complete PNG holds.
_PNG_IEND = b"IEND\xaeB`\x82"
#: PNG chunks looked at for an acTL (animation) before the first IDAT; a file with more is
#: judged on those (the walk reads 8 bytes a chunk, and a hostile file may hold millions).
_PNG_MAX_CHUNKS = 10_000
#: The VP8X flag of an animated WebP.
_WEBP_ANIMATED = 0x02
#: What a still image's file may hold beyond its pixels: 8 bytes a pixel (an uncompressed
#: 16-bit RGBA PNG), and room for metadata (EXIF, ICC, XMP, a thumbnail, a motion photo's clip).
_BYTES_PER_PIXEL, _METADATA_BYTES = 8, 64 << 20
#: Bytes read at a time while skipping what lies between a JPEG's marker segments.
_SKIP_CHUNK = 1 << 16


@dataclass(frozen=True)
class ImageHeader:
    """What a still image's header says, before any pixel is decoded."""

    #: "png", "jpeg" or "webp" (a key of FORMAT_SUFFIXES).
    format: str
    #: As stored (EXIF orientation may turn it when decoded).
    width: int
    height: int
    #: An APNG or an animated WebP.
    animated: bool
    #: The file reaches its format's end marker: a PNG's IEND, a JPEG's EOI after its scan, a
    #: WebP's RIFF length. libjpeg decodes a cut JPEG without an error, grey to the bottom.
    complete: bool

    @property
    def name(self) -> str:
        """The format as written in messages ("JPEG")."""
        return FORMAT_NAMES[self.format]


def file_limit(width: int, height: int) -> int:
    """The most bytes a width×height image's file is let hold: a larger one is refused before
    it is scanned or read (a few pixels' header in front of gigabytes)."""
    return width * height * _BYTES_PER_PIXEL + _METADATA_BYTES


def is_image_target(path: Path | ObjectRef) -> bool:
    """A target named .png, .jpg, .jpeg or .webp (a file or an object's key) is a still image,
    whatever else it holds (then it is refused as not an image: such a name never reaches the
    video probe)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_header(path: Path) -> ImageHeader:
    """The header of a PNG, JPEG or WebP file, reading a few bytes (and, for completeness, the
    tail through mmap); InputError (not_an_image) for any other file."""
    header: ImageHeader | None = None
    with path.open("rb") as handle:
        head = handle.read(32)
        if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
            header = _png(handle, head)
        elif head.startswith(b"\xff\xd8"):
            header = _jpeg(handle)
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            header = _webp(handle, head)
    if (
        header is not None
        and header.format == "jpeg"
        and not header.complete
        and not (header.width or header.height)
    ):
        raise InputError(
            f"{path}: truncated JPEG image (the file ends before its frame header)",
            reason=Reason.NOT_AN_IMAGE,
        )
    if header is None or header.width <= 0 or header.height <= 0:
        raise InputError(f"{path}: not a {IMAGE_TYPES} image", reason=Reason.NOT_AN_IMAGE)
    return header


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG, JPEG or WebP header; InputError for any other file."""
    header = read_header(path)
    return header.width, header.height


def check_image(path: Path, *, max_pixels: int) -> ImageHeader:
    """Refuse, with one line, a missing, empty, unknown, cut-short or oversized image before
    anything decodes it (a 2.7 MB PNG of 30000² pixels would take gigabytes)."""
    require_file(path, shown=str(path), reason=Reason.NOT_AN_IMAGE)
    try:
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"{path}: empty file", reason=Reason.NOT_AN_IMAGE)
        header = read_header(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if header.width * header.height > max_pixels:
        raise InputError(
            f"{path}: image of {header.width}x{header.height} exceeds the limit of "
            f"{max_pixels} pixels (FACEFUSION_MAX_IMAGE_PIXELS)",
            reason=Reason.TOO_LARGE,
        )
    refuse_oversized(path, header, size)
    if not header.complete:
        raise InputError(
            f"{path}: truncated {header.name} image (the file ends before the image does)",
            reason=Reason.NOT_AN_IMAGE,
        )
    return header


def refuse_oversized(path: Path, header: ImageHeader, size: int) -> None:
    """InputError (too_large) for a file of `size` bytes far larger than its header's picture
    could need."""
    limit = file_limit(header.width, header.height)
    if size > limit:
        raise InputError(
            f"{path}: file is too large for a {header.width}x{header.height} image "
            f"(over {limit} bytes)",
            reason=Reason.TOO_LARGE,
        )


def check_image_target(path: Path, *, max_pixels: int) -> ImageHeader:
    """What check_image refuses, and animated images (one frame of an animation is not the
    picture the user has); bounded by FACEFUSION_MAX_IMAGE_PIXELS: one image is decoded,
    not a queue of frames."""
    header = check_image(path, max_pixels=max_pixels)
    if header.animated:
        raise InputError(
            f"{path}: animated {header.name} images are not supported (convert it to a video)",
            reason=Reason.BAD_INPUT,
        )
    return header


def _ends_with(handle: BinaryIO, marker: bytes, *, after: int, size: tuple[int, int]) -> bool:
    """Whether `marker` occurs past offset `after`: searched from the end through mmap, so only
    the tail of a complete file is read. A file larger than a `size` (width, height) picture
    could need is not searched (check_image refuses it): in a hole of gigabytes after a real
    header the search read, and held, every page (3.3 GB for a 320x240 PNG)."""
    if os.fstat(handle.fileno()).st_size > file_limit(*size):
        return False
    try:
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.rfind(marker, after) >= 0
    except (OSError, ValueError):  # a filesystem without mmap: read the rest instead
        handle.seek(after)
        return handle.read().rfind(marker) >= 0


def _png(handle: BinaryIO, head: bytes) -> ImageHeader:
    width, height = struct.unpack(">II", head[16:24])
    # Chunks from IHDR on (length, type, body, CRC): an acTL before the first IDAT is an APNG.
    animated, offset = False, 8
    for _ in range(_PNG_MAX_CHUNKS):
        handle.seek(offset)
        chunk = handle.read(8)
        if len(chunk) < 8:
            break
        length, kind = struct.unpack(">I", chunk[:4])[0], chunk[4:]
        if kind == b"acTL":
            animated = True
        if kind in (b"IDAT", b"IEND", b"acTL"):
            break
        offset += 12 + length
    complete = _ends_with(handle, _PNG_IEND, after=8, size=(width, height))
    return ImageHeader("png", width, height, animated, complete)


def _jpeg(handle: BinaryIO) -> ImageHeader | None:
    # Walk the marker segments, skipping their bodies, through the start-of-frame (the size)
    # to the first start-of-scan: the entropy-coded data after it must end with an EOI
    # (inside it every 0xFF is stuffed, and an EXIF thumbnail's EOI lies before it).
    size: tuple[int, int] | None = None

    def cut_short() -> ImageHeader:
        # A file that ends mid-header is an incomplete JPEG; before its size is known, one of
        # 0x0, which read_header reports as cut before its frame header.
        return ImageHeader("jpeg", *(size or (0, 0)), False, False)

    handle.seek(2)
    budget = [_METADATA_BYTES]  # stray bytes skipped in all, before the walk gives up
    while _skip_to_marker(handle, budget):
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = handle.read(1)
        if not marker:
            return cut_short()
        code = marker[0]
        if code == 0 or code in _JPEG_STANDALONE:  # 0: a stuffed 0xFF among stray bytes
            continue
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return cut_short()
        (length,) = struct.unpack(">H", length_bytes)
        if code in _JPEG_SOF and size is None:
            body = handle.read(5)
            if len(body) < 5:
                return cut_short()
            height, width = struct.unpack(">HH", body[1:5])
            size = width, height
            handle.seek(-5, os.SEEK_CUR)
        if code == _JPEG_SOS:
            if size is None:  # a scan before any frame header
                return None
            complete = _ends_with(handle, _JPEG_EOI, after=handle.tell(), size=size)
            return ImageHeader("jpeg", *size, False, complete)
        if length < 2:
            return None
        handle.seek(length - 2, os.SEEK_CUR)
    return cut_short()


def _skip_to_marker(handle: BinaryIO, budget: list[int]) -> bool:
    """Move past the next 0xFF byte, skipping any others, as libjpeg does between segments (it
    warns "extraneous bytes before marker" and decodes every pixel: a metadata segment whose
    stated length is a few bytes short, which some cameras and editors write); False at the
    end, or once more than `budget[0]` bytes were skipped in all (a hole of gigabytes)."""
    first = handle.read(1)
    if first in (b"\xff", b""):  # the usual case, a marker right after its segment; the end
        return bool(first)
    handle.seek(-1, os.SEEK_CUR)
    while budget[0] >= 0 and (chunk := handle.read(min(_SKIP_CHUNK, budget[0] + 1))):
        found = chunk.find(b"\xff")
        if found >= 0:
            handle.seek(found + 1 - len(chunk), os.SEEK_CUR)
            budget[0] -= found
            return True
        budget[0] -= len(chunk)
    return False


def _webp(handle: BinaryIO, head: bytes) -> ImageHeader | None:
    size = _webp_size(head)
    if size is None:
        return None
    riff_end = 8 + int.from_bytes(head[4:8], "little")
    complete = os.fstat(handle.fileno()).st_size >= riff_end
    animated = head[12:16] == b"VP8X" and bool(head[20] & _WEBP_ANIMATED)
    return ImageHeader("webp", size[0], size[1], animated, complete)


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
