"""A video's colour description, and the ffmpeg options that keep it through BGR and back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: swscale's flags for the decoder's YUV -> BGR and the encoder's way back. Each chroma sample
#: is repeated over its 2×2 pixels on the way in and those four are averaged on the way out, with
#: exact rounding both ways: YUV that no face touched survives the trip bit for bit (measured;
#: swscale's defaults darkened every pixel by ~1.9 levels), for ~3.5 ms more CPU per 720p frame
#: than the defaults (bicubic chroma with the same rounding: ~10 ms, and not exact).
DECODE_SWS_FLAGS = "neighbor+accurate_rnd+full_chroma_int"
ENCODE_SWS_FLAGS = "area+accurate_rnd"

#: ffprobe's color_space names -> swscale's matrix names (the ones it can convert with).
_MATRICES = {
    "bt709": "bt709",
    "smpte170m": "smpte170m",
    "bt470bg": "bt470",
    "fcc": "fcc",
    "smpte240m": "smpte240m",
    "bt2020nc": "bt2020",
    "bt2020c": "bt2020",
}
#: Pixel formats with no YUV matrix to keep: RGB (GIF's palette included) and grey, whose
#: frames the swap gives colour.
_MATRIXLESS_FORMATS = ("rgb", "bgr", "gbr", "argb", "abgr", "0rgb", "0bgr", "pal8", "x2rgb",
                       "x2bgr", "gray", "ya8", "ya16")  # fmt: skip
#: Values that describe nothing.
_UNKNOWN = frozenset({"", "unknown", "unspecified", "reserved", "reserved0"})


@dataclass(frozen=True)
class Colour:
    """ffprobe's color_space, color_primaries, color_transfer and color_range of a video
    stream ("" where the file says nothing)."""

    space: str = ""
    primaries: str = ""
    transfer: str = ""
    range: str = ""

    @classmethod
    def of(cls, space: object, primaries: object, transfer: object, range_: object) -> Colour:
        """From ffprobe's fields (None or a placeholder such as "unknown" becomes "")."""
        return cls(*(_known(v) for v in (space, primaries, transfer, range_)))

    @classmethod
    def from_stream_line(cls, details: str) -> Colour:
        """From the parenthesis after the pixel format in `ffmpeg -i`'s stream line:
        "(tv, bt709)", "(pc, smpte170m/bt470bg/smpte170m, progressive)", "(tv, progressive)"."""
        end = details.find(")")
        if not details.startswith("(") or end < 0:
            return cls()
        range_, space, primaries, transfer = "", "", "", ""
        for item in (part.strip() for part in details[1:end].split(",")):
            if item in {"tv", "pc"}:
                range_ = item
            elif item.count("/") == 2:
                space, primaries, transfer = item.split("/")
            elif item in _MATRICES:
                space = primaries = transfer = item
        return cls.of(space, primaries, transfer, range_)


#: A video that says nothing about its colour (swscale's defaults apply both ways).
UNTAGGED = Colour()


def _known(value: object) -> str:
    text = "" if value is None else str(value)
    return "" if text in _UNKNOWN else text


def encode_filter(colour: Colour) -> str:
    """The scale filter that turns the pipeline's BGR back into YUV with the matrix and range
    the decoder used: the source's own where it names them, else swscale's defaults, as on
    decode."""
    options = []
    matrix = _MATRICES.get(colour.space)
    if matrix:
        options.append(f"out_color_matrix={matrix}")
    if colour.range in {"tv", "pc"}:
        options.append(f"out_range={colour.range}")
    options.append(f"flags={ENCODE_SWS_FLAGS}")
    return "scale=" + ":".join(options)


def colour_tags(colour: Colour) -> list[str]:
    """Output options that tag the file as the source was tagged (nothing it did not say). The
    matrix only when it is one the output was converted with: an RGB source ("gbr") becomes
    YUV here, and must not say otherwise."""
    tags: list[str] = []
    for flag, value in (
        ("-colorspace", colour.space if colour.space in _MATRICES else ""),
        ("-color_primaries", colour.primaries),
        ("-color_trc", colour.transfer),
        ("-color_range", colour.range),
    ):
        if value:
            tags += [flag, value]
    return tags


def written_colour(colour: Colour, pix_fmt: str) -> Colour:
    """The colour an output is converted to YUV with and tagged with: the source's, but an RGB
    or grey source (GIF, PNG or QuickTime RLE in a video) has no matrix to keep, so it gets
    BT.601's, swscale's own, in limited range, and says so: untagged, players take HD video
    for BT.709 and shift its colours, and many ignore H.264's full-range flag."""
    if pix_fmt.startswith(_MATRIXLESS_FORMATS) or colour.space == "gbr":
        return dataclasses.replace(colour, space="smpte170m", range="tv")
    return colour
