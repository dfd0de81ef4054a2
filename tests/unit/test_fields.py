"""fields: telling interlaced video, and the flags that keep it interlaced."""

from __future__ import annotations

from fractions import Fraction

import pytest

from facefusion_tasks.video.argv import encode_argv, field_filter, interlace_args
from facefusion_tasks.video.fields import stream_line_interlaced, tagged_interlaced


@pytest.mark.parametrize(
    ("value", "interlaced"),
    [("tt", True), ("bb", True), ("tb", True), ("bt", True), ("progressive", False),
     ("unknown", False), (None, False), ("", False)],
)  # fmt: skip
def test_ffprobe_tags_that_say_interlaced(value: object, interlaced: bool) -> None:
    assert tagged_interlaced(value) is interlaced


@pytest.mark.parametrize(
    ("details", "interlaced"),
    [
        ("(top first), 320x240 [SAR 1:1 DAR 4:3], 25 fps", True),
        ("(tv, bottom first), 320x240", True),
        ("(tv, bt709, top coded first (swapped)), 1920x1080", True),
        ("(bottom coded first (swapped)), 320x240", True),
        ("(tv, bt709, progressive), 1920x1080", False),
        ("(tv, bt709), 1920x1080", False),
        (", 320x240", False),
    ],
)
def test_ffmpeg_stream_lines_that_say_interlaced(details: str, interlaced: bool) -> None:
    assert stream_line_interlaced(details) is interlaced


def test_dv_is_a_hint_of_interlacing_whatever_its_container_says() -> None:
    # Standard-definition DV is always interlaced and no container says so; the first frame
    # decides (DVCPRO HD's 720p is progressive).
    assert tagged_interlaced("", "dvvideo") and tagged_interlaced(None, "dvvideo")
    assert stream_line_interlaced(", 720x576 [SAR 16:15 DAR 4:3]", "dvvideo")
    assert not tagged_interlaced("", "h264") and not stream_line_interlaced(", 720x576", "h264")


def test_libx264_codes_fields_apart_and_every_encoder_tags_the_order() -> None:
    assert interlace_args("libx264", "tt", height=240) == [
        "-flags", "+ildct+ilme", "-field_order", "tt",
    ]  # fmt: skip
    assert interlace_args("libx265", "bb", height=240) == ["-field_order", "bb"]
    assert interlace_args("libx264", "", height=240) == []
    # libx264 refuses to code the fields of a height that is not a multiple of 4 apart.
    assert interlace_args("libx264", "tt", height=242) == ["-field_order", "tt"]
    # Which field comes first is the frames' flag (ffmpeg 9 refuses -top).
    assert (field_filter("tt"), field_filter("bb"), field_filter("")) == (
        "setfield=tff",
        "setfield=bff",
        "",
    )


def test_encode_argv_flags_the_frames_last_in_the_filter_chain() -> None:
    size = {"width": 320, "height": 240, "time_base": Fraction(1, 25)}
    interlaced = encode_argv("out.mp4", field_order="bb", sample_aspect="8:9", **size)  # type: ignore[arg-type]
    progressive = encode_argv("out.mp4", **size)  # type: ignore[arg-type]
    vf = interlaced[interlaced.index("-vf") + 1]
    assert vf.startswith("scale=") and vf.endswith(",setsar=r=8/9:max=9,setfield=bff")
    assert "-top" not in interlaced and "interl" not in vf
    assert "setfield" not in progressive[progressive.index("-vf") + 1]
    assert "-field_order" not in progressive and "+ildct+ilme" not in progressive
