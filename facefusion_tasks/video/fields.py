"""Interlaced video: the field order the probe reads, and the encoder flags that keep it."""

from __future__ import annotations

#: ffprobe's field orders of interlaced video: top or bottom field first, and the two whose
#: coded order is swapped ("tb": top coded first, bottom shown first).
FIELD_ORDERS = frozenset({"tt", "bb", "tb", "bt"})
#: `ffmpeg -i`'s words for them, in its stream line's parenthesis.
_STREAM_LINE_WORDS = (
    ("top coded first (swapped)", "tb"),
    ("bottom coded first (swapped)", "bt"),
    ("top first", "tt"),
    ("bottom first", "bb"),
)


def field_order_of(value: object) -> str:
    """ffprobe's field_order when the video is interlaced, else "" (progressive, unknown)."""
    text = "" if value is None else str(value)
    return text if text in FIELD_ORDERS else ""


def field_order_from_stream_line(details: str) -> str:
    """The field order `ffmpeg -i` names after a stream's pixel format, else ""."""
    end = details.find(")")
    if not details.startswith("(") or end < 0:
        return ""
    # "(tv, bt709, top coded first (swapped))": the swapped forms hold a parenthesis.
    inside = details[1:]
    return next((order for words, order in _STREAM_LINE_WORDS if words in inside), "")


def encode_args(encoder: str, field_order: str) -> list[str]:
    """Output flags that keep an interlaced source interlaced: libx264 codes the two fields of
    each frame apart (interlaced DCT and motion estimation) with the field shown first on
    top or not; every encoder's stream is tagged with the order, which Matroska and
    QuickTime carry. The woven frames coded as progressive would show combing where a
    player deinterlaces nothing. [] for progressive video."""
    if field_order not in FIELD_ORDERS:
        return []
    args = ["-field_order", field_order]
    if encoder == "libx264":
        top_shown_first = field_order in {"tt", "bt"}
        args = ["-flags", "+ildct+ilme", "-top", "1" if top_shown_first else "0", *args]
    return args
