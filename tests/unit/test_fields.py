"""fields: reading an interlaced video's field order, and the flags that keep it."""

from __future__ import annotations

from fractions import Fraction

import pytest

from facefusion_tasks.video.argv import encode_argv
from facefusion_tasks.video.fields import (
    encode_args,
    field_order_from_stream_line,
    field_order_of,
)


@pytest.mark.parametrize(
    ("value", "order"),
    [("tt", "tt"), ("bb", "bb"), ("tb", "tb"), ("bt", "bt"), ("progressive", ""),
     ("unknown", ""), (None, ""), ("", "")],
)  # fmt: skip
def test_ffprobe_field_orders(value: object, order: str) -> None:
    assert field_order_of(value) == order


@pytest.mark.parametrize(
    ("details", "order"),
    [
        ("(top first), 320x240 [SAR 1:1 DAR 4:3], 25 fps", "tt"),
        ("(tv, bottom first), 320x240", "bb"),
        ("(tv, bt709, top coded first (swapped)), 1920x1080", "tb"),
        ("(bottom coded first (swapped)), 320x240", "bt"),
        ("(tv, bt709, progressive), 1920x1080", ""),
        ("(tv, bt709), 1920x1080", ""),
        (", 320x240", ""),
    ],
)
def test_ffmpeg_stream_line_field_orders(details: str, order: str) -> None:
    assert field_order_from_stream_line(details) == order


def test_libx264_codes_fields_apart_with_the_field_shown_first_on_top_or_not() -> None:
    assert encode_args("libx264", "tt") == [
        "-flags", "+ildct+ilme", "-top", "1", "-field_order", "tt",
    ]  # fmt: skip
    assert encode_args("libx264", "bb")[:4] == ["-flags", "+ildct+ilme", "-top", "0"]
    assert encode_args("libx264", "tb")[3] == "0"  # bottom shown first
    assert encode_args("libx264", "bt")[3] == "1"
    # Encoders that cannot code fields still say what the frames are, where the box can.
    assert encode_args("libx265", "tt") == ["-field_order", "tt"]
    assert encode_args("libx264", "") == []


def test_encode_argv_keeps_each_fields_chroma_apart_only_for_interlaced_video() -> None:
    size = {"width": 320, "height": 240, "time_base": Fraction(1, 25)}
    interlaced = encode_argv("out.mp4", field_order="tt", **size)  # type: ignore[arg-type]
    progressive = encode_argv("out.mp4", **size)  # type: ignore[arg-type]
    vf = interlaced[interlaced.index("-vf") + 1]
    assert vf.startswith("scale=") and ":interl=1" in vf and "-top" in interlaced
    assert "interl" not in progressive[progressive.index("-vf") + 1]
    assert "-top" not in progressive and "-field_order" not in progressive
