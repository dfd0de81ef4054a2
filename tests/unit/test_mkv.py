"""The streaming Matroska writer's byte layout (read back with a tiny EBML parser)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest

from facefusion_tasks.video import mkv
from facefusion_tasks.video.mkv import MatroskaRawWriter, encode_size, pts_to_ns


def read_vint(data: bytes, at: int, *, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at `at`: (value, length)."""
    first = data[at]
    length = 1
    while not first & (0x80 >> (length - 1)):
        length += 1
    value = int.from_bytes(data[at : at + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, length


def elements(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
    """(id, payload start, payload size) of each element in data[start:end]; an unknown size
    (the Segment's) runs to the end."""
    end = len(data) if end is None else end
    found = []
    at = start
    while at < end:
        element_id, id_len = read_vint(data, at, keep_marker=True)
        size, size_len = read_vint(data, at + id_len, keep_marker=False)
        payload = at + id_len + size_len
        if size == (1 << (7 * size_len)) - 1:
            size = end - payload
        found.append((element_id, payload, size))
        at = payload + size
    return found


def children(data: bytes, parent: tuple[int, int, int]) -> dict[int, bytes]:
    """Payload bytes of each child element, by ID."""
    _, start, size = parent
    return {eid: data[s : s + n] for eid, s, n in elements(data, start, start + size)}


def child(data: bytes, parent: tuple[int, int, int], element_id: int) -> tuple[int, int, int]:
    """The one child element with this ID."""
    _, start, size = parent
    (found,) = [e for e in elements(data, start, start + size) if e[0] == element_id]
    return found


def uint(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def write_stream(frames: list[tuple[np.ndarray, int]], width: int, height: int) -> bytes:
    out = io.BytesIO()
    writer = MatroskaRawWriter(out, width, height, default_duration_ns=40_000_000)
    for image, stamp in frames:
        writer.write(image, stamp)
    assert writer.frames_written == len(frames)
    return out.getvalue()


def test_vint_sizes_use_the_shortest_form_and_avoid_the_reserved_all_ones() -> None:
    assert encode_size(0) == b"\x80"
    assert encode_size(126) == b"\xfe"
    assert encode_size(127) == b"\x40\x7f"  # 0xFF alone would mean "unknown size"
    assert encode_size(300) == b"\x41\x2c"
    assert encode_size(5, width=8) == b"\x01" + b"\x00" * 6 + b"\x05"
    with pytest.raises(ValueError):
        encode_size(-1)
    with pytest.raises(ValueError):
        encode_size(1 << 56, width=8)


def test_header_declares_one_raw_bgr24_track_with_nanosecond_ticks() -> None:
    data = write_stream([], 321, 241)
    top = elements(data)
    assert [eid for eid, _, _ in top] == [mkv.EBML, mkv.SEGMENT]
    ebml = children(data, top[0])
    assert ebml[mkv.DOC_TYPE] == b"matroska"
    assert uint(ebml[mkv.EBML_MAX_SIZE_LENGTH]) == 8
    # The Segment streams: its size is the 8-byte "unknown" marker.
    segment_at = data.index(mkv.encode_id(mkv.SEGMENT))
    assert data[segment_at + 4 : segment_at + 12] == mkv.UNKNOWN_SIZE
    segment = top[1]
    assert [eid for eid, _, _ in elements(data, segment[1])] == [mkv.INFO, mkv.TRACKS]
    info = children(data, child(data, segment, mkv.INFO))
    assert uint(info[mkv.TIMESTAMP_SCALE]) == 1
    tracks = child(data, segment, mkv.TRACKS)
    entry_element = child(data, tracks, mkv.TRACK_ENTRY)
    entry = children(data, entry_element)
    assert uint(entry[mkv.TRACK_NUMBER]) == 1
    assert uint(entry[mkv.TRACK_TYPE]) == 1  # video
    assert entry[mkv.CODEC_ID] == b"V_UNCOMPRESSED"
    assert entry[mkv.LANGUAGE] == b"und"  # unset, Matroska reads English into the output
    assert uint(entry[mkv.DEFAULT_DURATION]) == 40_000_000
    video = children(data, child(data, entry_element, mkv.VIDEO))
    assert uint(video[mkv.PIXEL_WIDTH]) == 321
    assert uint(video[mkv.PIXEL_HEIGHT]) == 241
    assert video[mkv.COLOUR_SPACE] == b"BGR\x18"


def test_each_frame_is_a_cluster_with_its_timestamp_and_one_keyframe_block() -> None:
    width, height = 5, 3
    frames = [
        (np.full((height, width, 3), i, np.uint8), stamp)
        for i, stamp in enumerate([0, 33_333_333, 83_333_333, 10**12])
    ]
    data = write_stream(frames, width, height)
    segment = elements(data)[1]
    clusters = [e for e in elements(data, segment[1]) if e[0] == mkv.CLUSTER]
    assert len(clusters) == len(frames)
    for (image, stamp), cluster in zip(frames, clusters, strict=True):
        body = children(data, cluster)
        assert uint(body[mkv.CLUSTER_TIMESTAMP]) == stamp
        block = body[mkv.SIMPLE_BLOCK]
        assert block[:4] == b"\x81\x00\x00\x80"  # track 1, relative time 0, keyframe
        assert block[4:] == image.tobytes()
    # Clusters are the last thing: nothing trails the final frame.
    assert clusters[-1][1] + clusters[-1][2] == len(data)


def test_writer_takes_bytes_and_non_contiguous_arrays() -> None:
    big = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    view = big[:, ::2]  # 4×3, not contiguous
    out = io.BytesIO()
    writer = MatroskaRawWriter(out, 3, 4)
    writer.write(view, 0)
    writer.write(view.tobytes(), 1)
    blocks = out.getvalue().split(b"\x81\x00\x00\x80")[1:]
    assert [b[: view.nbytes] for b in blocks] == [view.tobytes()] * 2


def test_writer_refuses_bad_frames_and_timestamps() -> None:
    writer = MatroskaRawWriter(io.BytesIO(), 4, 2)
    frame = np.zeros((2, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="negative"):
        writer.write(frame, -1)
    writer.write(frame, 10)
    with pytest.raises(ValueError, match="does not follow"):
        writer.write(frame, 10)
    with pytest.raises(ValueError, match="expected"):
        writer.write(np.zeros((4, 2, 3), np.uint8), 20)
    with pytest.raises(ValueError, match="expected"):
        writer.write(np.zeros((2, 4, 3), np.uint16), 20)
    with pytest.raises(ValueError, match="bytes"):
        writer.write(b"\x00" * 5, 20)
    with pytest.raises(ValueError):
        MatroskaRawWriter(io.BytesIO(), 0, 2)


@pytest.mark.parametrize(
    "time_base", [Fraction(1, 12800), Fraction(1, 30000), Fraction(1, 90000), Fraction(1001, 24000)]
)
def test_nanoseconds_map_back_to_the_same_ticks(time_base: Fraction) -> None:
    # What the encoder does with -enc_time_base: round(ns / 1e9 / time_base) must give pts back.
    for pts in [0, 1, 2, 511, 512, 1001, 3003, 123_456_789, 10**9 + 7]:
        ns = pts_to_ns(pts, time_base)
        assert round(Fraction(ns, 10**9) / time_base) == pts
    assert pts_to_ns(1001, Fraction(1, 30000)) == 33_366_667
