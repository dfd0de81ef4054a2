"""A minimal streaming Matroska writer: raw bgr24 frames with exact per-frame timestamps."""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import IO

import numpy as np

# Element IDs (Matroska spec); written with their length-marker bits already included.
EBML = 0x1A45DFA3
EBML_VERSION = 0x4286
EBML_READ_VERSION = 0x42F7
EBML_MAX_ID_LENGTH = 0x42F2
EBML_MAX_SIZE_LENGTH = 0x42F3
DOC_TYPE = 0x4282
DOC_TYPE_VERSION = 0x4287
DOC_TYPE_READ_VERSION = 0x4285
SEGMENT = 0x18538067
INFO = 0x1549A966
TIMESTAMP_SCALE = 0x2AD7B1
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
FLAG_LACING = 0x9C
DEFAULT_DURATION = 0x23E383
CODEC_ID = 0x86
LANGUAGE = 0x22B59C
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
COLOUR_SPACE = 0x2EB524
CLUSTER = 0x1F43B675
CLUSTER_TIMESTAMP = 0xE7
SIMPLE_BLOCK = 0xA3

#: An 8-byte size with every value bit set: "unknown size", so the Segment can stream.
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
#: ffmpeg maps this fourcc to AV_PIX_FMT_BGR24 for V_UNCOMPRESSED tracks.
BGR24_FOURCC = b"BGR\x18"
_APP = b"facefusion-tasks"


def encode_id(element_id: int) -> bytes:
    """An element ID as stored: its own bytes, marker bits included."""
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def encode_size(size: int, *, width: int = 0) -> bytes:
    """A data size as an EBML variable-length integer (shortest form unless width is given)."""
    if size < 0:
        raise ValueError("EBML sizes are unsigned")
    length = width
    if not length:
        length = 1
        # All-ones values are reserved for "unknown", hence the strict bound.
        while size >= (1 << (7 * length)) - 1:
            length += 1
    if length > 8 or size >= (1 << (7 * length)) - 1:
        raise ValueError(f"size {size} does not fit in {length} bytes")
    return ((1 << (7 * length)) | size).to_bytes(length, "big")


def element(element_id: int, payload: bytes) -> bytes:
    """ID, size, payload."""
    return encode_id(element_id) + encode_size(len(payload)) + payload


def uint_element(element_id: int, value: int) -> bytes:
    """An unsigned integer element in its shortest big-endian form (zero takes one byte)."""
    if value < 0:
        raise ValueError("unsigned element cannot hold a negative value")
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def header(width: int, height: int, *, default_duration_ns: int | None = None) -> bytes:
    """EBML header, an open-ended Segment, Info (1 ns ticks) and the one raw video track."""
    ebml = element(
        EBML,
        uint_element(EBML_VERSION, 1)
        + uint_element(EBML_READ_VERSION, 1)
        + uint_element(EBML_MAX_ID_LENGTH, 4)
        + uint_element(EBML_MAX_SIZE_LENGTH, 8)
        + element(DOC_TYPE, b"matroska")
        + uint_element(DOC_TYPE_VERSION, 4)
        + uint_element(DOC_TYPE_READ_VERSION, 2),
    )
    # TimestampScale=1: cluster timestamps are nanoseconds, fine enough that any
    # source time base survives the round trip (the encoder re-quantises exactly).
    info = element(
        INFO,
        uint_element(TIMESTAMP_SCALE, 1) + element(MUXING_APP, _APP) + element(WRITING_APP, _APP),
    )
    video = element(
        VIDEO,
        uint_element(PIXEL_WIDTH, width)
        + uint_element(PIXEL_HEIGHT, height)
        + element(COLOUR_SPACE, BGR24_FOURCC),
    )
    entry = (
        uint_element(TRACK_NUMBER, 1)
        + uint_element(TRACK_UID, 1)
        + uint_element(TRACK_TYPE, 1)
        + uint_element(FLAG_LACING, 0)
        + element(CODEC_ID, b"V_UNCOMPRESSED")
        # Unset, Matroska's language is English, and ffmpeg carries that into the output.
        + element(LANGUAGE, b"und")
    )
    if default_duration_ns:
        # Only consulted for the last frame's duration (every block has its own timestamp).
        entry += uint_element(DEFAULT_DURATION, default_duration_ns)
    tracks = element(TRACKS, element(TRACK_ENTRY, entry + video))
    return ebml + encode_id(SEGMENT) + UNKNOWN_SIZE + info + tracks


def cluster_header(timestamp_ns: int, frame_size: int) -> bytes:
    """A Cluster holding one keyframe SimpleBlock of frame_size bytes, up to the frame data."""
    block_head = b"\x81" + struct.pack(">hB", 0, 0x80)  # track 1, relative time 0, keyframe
    block_size = len(block_head) + frame_size
    block = encode_id(SIMPLE_BLOCK) + encode_size(block_size, width=8) + block_head
    body_size = len(uint_element(CLUSTER_TIMESTAMP, timestamp_ns)) + len(block) + frame_size
    return (
        encode_id(CLUSTER)
        + encode_size(body_size, width=8)
        + uint_element(CLUSTER_TIMESTAMP, timestamp_ns)
        + block
    )


def pts_to_ns(pts: int, time_base: Fraction) -> int:
    """Exact rounding of pts × time_base to nanoseconds (the encoder's -enc_time_base undoes it)."""
    return round(pts * time_base * 10**9)


class MatroskaRawWriter:
    """Writes raw bgr24 frames as a Matroska stream: one Cluster per frame, any timestamps."""

    def __init__(
        self,
        stream: IO[bytes],
        width: int,
        height: int,
        *,
        default_duration_ns: int | None = None,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"bad frame size {width}x{height}")
        self.stream = stream
        self.width = width
        self.height = height
        self.frame_size = width * height * 3
        self.frames_written = 0
        self._last_ns = -1
        stream.write(header(width, height, default_duration_ns=default_duration_ns))

    def write(self, frame: bytes | bytearray | memoryview | np.ndarray, timestamp_ns: int) -> None:
        """Append one frame; timestamps must be non-negative and strictly increasing."""
        if timestamp_ns < 0:
            raise ValueError(f"negative timestamp {timestamp_ns} ns")
        if timestamp_ns <= self._last_ns:
            raise ValueError(f"timestamp {timestamp_ns} ns does not follow {self._last_ns} ns")
        if isinstance(frame, np.ndarray):
            if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
                raise ValueError(
                    f"expected a {self.height}x{self.width}x3 uint8 frame, got "
                    f"{frame.shape} {frame.dtype}"
                )
            data: bytes | bytearray | memoryview = np.ascontiguousarray(frame).data.cast("B")
        else:
            data = frame
        if len(data) != self.frame_size:
            raise ValueError(f"frame has {len(data)} bytes, expected {self.frame_size}")
        self.stream.write(cluster_header(timestamp_ns, self.frame_size))
        self.stream.write(data)
        self._last_ns = timestamp_ns
        self.frames_written += 1
