"""Interlaced video: does the probe see it, and which field do its frames show first."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from facefusion_tasks.objects import Location
from facefusion_tasks.video import process
from facefusion_tasks.video.plainfile import PROBE_TIMEOUT, input_args
from facefusion_tasks.video.signed import redact

if TYPE_CHECKING:  # probe imports this module
    from facefusion_tasks.video.probe import VideoInfo

#: ffprobe's stream field orders that say "interlaced" (tb and bt: coded order swapped).
_INTERLACED_TAGS = frozenset({"tt", "bb", "tb", "bt"})
#: `ffmpeg -i`'s words for them, in its stream line's parenthesis.
_STREAM_LINE_WORDS = ("top first", "bottom first", "coded first (swapped)")
#: showinfo's interlace mode of a frame: T(op first), B(ottom first), P(rogressive).
_SHOWINFO_MODE = re.compile(r"\bi:([TBP])\b")


#: Codecs whose video is interlaced though no container says so: standard-definition DV
#: (raw .dv, DV in AVI) always is, bottom field first; DVCPRO HD's 720p is not, and its first
#: frame says so.
INTERLACED_CODECS = frozenset({"dvvideo"})


def tagged_interlaced(value: object, codec: str = "") -> bool:
    """Whether ffprobe's stream field_order says interlaced, or the codec always may be. Only
    a hint: files are often tagged wrong (ffmpeg's own Matroska says tb for top first; mp4
    stores none and ffprobe's parser guesses tt), so the first frame decides
    (frame_field_order)."""
    return str(value) in _INTERLACED_TAGS or codec in INTERLACED_CODECS


def stream_line_interlaced(details: str, codec: str = "") -> bool:
    """Whether `ffmpeg -i`'s stream line, after the pixel format, says interlaced, or the
    codec always may be (a hint, as tagged_interlaced)."""
    end = details.rfind(")")
    return codec in INTERLACED_CODECS or (
        details.startswith("(")
        and end > 0
        and any(words in details[1:end] for words in _STREAM_LINE_WORDS)
    )


def frame_field_order(source: Location, exe: str, stream: int, *, interlaced: bool) -> str:
    """The field the first decoded frame of `0:v:stream` is flagged to show first ("tt" top,
    "bb" bottom), "" when it is progressive: what a player goes by, whatever the container
    says. Decoded only when the probe saw a hint of interlacing (`interlaced`)."""
    if not interlaced:
        return ""
    argv = [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info"]
    *options, target = input_args(source)
    argv += [*options, "-i", target, "-map", f"0:v:{stream}", "-frames:v", "1"]
    argv += ["-vf", "showinfo", "-f", "null", "-"]
    done = process.run(
        argv, timeout=PROBE_TIMEOUT, what=f"{Path(exe).name} on {redact(str(target))}"
    )
    for line in done.stderr.splitlines():
        if "Parsed_showinfo" in line and (mode := _SHOWINFO_MODE.search(line)):
            return {"T": "tt", "B": "bb"}.get(mode.group(1), "")
    return ""


def written_field_order(info: VideoInfo) -> str:
    """The field order the output is written with: the source's, unless the reader turned the
    picture (a display rotation), which makes its fields columns (90, 270) or swaps them
    (180): such frames are written progressive, as they are."""
    return info.field_order if info.rotation == 0 else ""
