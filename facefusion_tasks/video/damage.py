"""What ffmpeg's messages say about a file cut short or damaged, as one-line refusals."""

from __future__ import annotations

from collections.abc import Sequence

from facefusion_tasks.errors import InputError
from facefusion_tasks.objects import Location
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import process
from facefusion_tasks.video.signed import redact

#: Demuxer messages that mean the file ends before its index says it should, or that its
#: bytes are damaged (lowercase; matched in ffmpeg's stderr).
TRUNCATION_MARKERS = (
    "partial file",
    "truncat",
    "corrupt input packet",
    "packet corrupt",
    "moov atom not found",
    "file ended prematurely",  # Matroska/WebM cut short
    "invalid as first byte of an ebml number",  # Matroska/WebM bytes damaged:
    "indicated by an ebml number",  # a size that cannot be,
    "exceeds containing master element",  # or an element larger than what holds it
)


def damage_line(stderr: str) -> str | None:
    """ffmpeg's first line that says the file is cut short or damaged (its level prefix off,
    shortened), or None."""
    for line in stderr.splitlines():
        lowered = line.lower()
        if any(marker in lowered for marker in TRUNCATION_MARKERS):
            text = " ".join(redact(process.strip_level(line)).split())
            return text if len(text) <= 120 else text[:119] + "…"
    return None


def extras_damage(errors: Sequence[str], source: Location | None) -> InputError | None:
    """The source's own damage, when that is what stopped an ffmpeg that muxes in its audio
    and subtitles (the writer, the stitch): those streams cut short or corrupt, which the
    probe, reading only the video stream, cannot see. None when `errors` say otherwise."""
    damage = damage_line("\n".join(errors))
    if damage is None or source is None:
        return None
    return InputError(
        f"{source.name}: truncated or corrupt audio or subtitles ({damage})",
        reason=Reason.CORRUPT_VIDEO,
    )


def corrupt(source: Location, detail: str) -> InputError:
    """The one-line refusal of a video ffmpeg found cut short or damaged."""
    return InputError(
        f"{source.name}: truncated or corrupt video ({detail})", reason=Reason.CORRUPT_VIDEO
    )
