"""Colour and pixel shape survive the trip through BGR: parsed, converted back, tagged."""

from __future__ import annotations

from fractions import Fraction

from facefusion_tasks.video.argv import decode_argv, encode_argv, sar_filter
from facefusion_tasks.video.colour import UNTAGGED, Colour, colour_tags, encode_filter
from facefusion_tasks.video.probe import sample_aspect


def _option(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, argv
    return argv[argv.index(flag) + 1]


def test_ffprobe_placeholders_say_nothing() -> None:
    assert Colour.of("unknown", None, "unspecified", "") == UNTAGGED
    assert Colour.of("bt709", "bt709", "bt709", "tv") == Colour("bt709", "bt709", "bt709", "tv")


def test_colour_from_ffmpeg_stream_lines() -> None:
    # What follows the pixel format in `ffmpeg -i`'s stream line.
    assert Colour.from_stream_line("(tv, bt709), 1280x720 [SAR 1:1]") == Colour(
        "bt709", "bt709", "bt709", "tv"
    )
    assert Colour.from_stream_line(
        "(pc, smpte170m/bt470bg/smpte170m, progressive), 640x480"
    ) == Colour("smpte170m", "bt470bg", "smpte170m", "pc")
    assert Colour.from_stream_line("(tv, progressive), 64x64") == Colour(range="tv")
    assert Colour.from_stream_line(", 64x64, 25 fps (default)") == UNTAGGED


def test_bgr_goes_back_to_yuv_with_the_sources_matrix_and_range() -> None:
    hd = Colour("bt709", "bt709", "bt709", "tv")
    assert encode_filter(hd) == "scale=out_color_matrix=bt709:out_range=tv:flags=area+accurate_rnd"
    assert colour_tags(hd) == [
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
        "-color_range", "tv",
    ]  # fmt: skip
    phone = Colour("bt470bg", "bt470bg", "smpte170m", "pc")  # full range, BT.601
    assert (
        encode_filter(phone) == "scale=out_color_matrix=bt470:out_range=pc:flags=area+accurate_rnd"
    )
    hdr = Colour("bt2020nc", "bt2020", "smpte2084", "tv")
    assert "out_color_matrix=bt2020" in encode_filter(hdr)
    assert _option(colour_tags(hdr), "-color_trc") == "smpte2084"
    # Untagged: swscale's defaults, as on decode, and no tags the source did not have.
    assert (
        encode_filter(UNTAGGED) == "scale=flags=area+accurate_rnd" and colour_tags(UNTAGGED) == []
    )
    # An RGB source becomes YUV here: its "gbr" matrix tag would be a lie.
    rgb = Colour("gbr", "bt709", "iec61966-2-1", "pc")
    assert "-colorspace" not in colour_tags(rgb) and "out_color_matrix" not in encode_filter(rgb)
    assert _option(colour_tags(rgb), "-color_primaries") == "bt709"


def test_decode_and_encode_argv_carry_the_conversion() -> None:
    assert _option(decode_argv("in.mp4"), "-sws_flags") == "neighbor+accurate_rnd+full_chroma_int"
    hd = Colour("bt709", "bt709", "bt709", "tv")
    argv = encode_argv("o.mp4", width=64, height=64, time_base=Fraction(1, 25), colour=hd)
    assert _option(argv, "-vf") == encode_filter(hd)
    assert _option(argv, "-colorspace") == "bt709" and _option(argv, "-color_range") == "tv"


def test_a_non_square_pixel_shape_is_kept_and_turned_with_the_picture() -> None:
    assert sample_aspect("4:3", 0) == "4:3" and sample_aspect("64:45", 180) == "64:45"
    assert sample_aspect("4:3", 90) == "3:4"  # decoded upright: the pixel turned too
    for square_or_unknown in ("1:1", "0:1", "N/A", None, ""):
        assert sample_aspect(square_or_unknown, 0) == ""
    argv = encode_argv("o.mp4", width=64, height=64, time_base=Fraction(1, 25), sample_aspect="4:3")
    assert _option(argv, "-vf").endswith(",setsar=r=4/3:max=4")
    # setsar's own max, 100, would round BT.601's PAL widescreen pixel to 67:46.
    assert sar_filter("118:81") == "setsar=r=118/81:max=118"
    square = encode_argv("o.mp4", width=64, height=64, time_base=Fraction(1, 25))
    assert "setsar" not in _option(square, "-vf")
