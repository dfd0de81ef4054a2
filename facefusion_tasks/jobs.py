"""Job planning: split a video's own frame timestamps into chunks and describe the stitch."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

from facefusion_tasks.config import DEFAULT_MAX_CHUNKS, DEFAULT_MIN_CHUNK_SECONDS
from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason


@dataclass(frozen=True)
class Chunk:
    """Frames with start_pts <= pts < end_pts (end_pts None = to the end of the video)."""

    index: int
    start_pts: int
    end_pts: int | None
    frames: int
    #: Exact time from this chunk's first frame to the next chunk's first frame, in seconds as a
    #: fraction (None for the last chunk: its own length). The stitcher hands it to ffmpeg's
    #: concat demuxer so variable frame rates survive the join.
    span: Fraction | None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form for task messages and the job record."""
        data = asdict(self)
        data["span"] = (
            None if self.span is None else f"{self.span.numerator}/{self.span.denominator}"
        )
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        """Inverse of to_json."""
        span = data.get("span")
        return cls(
            index=int(data["index"]),
            start_pts=int(data["start_pts"]),
            end_pts=None if data.get("end_pts") is None else int(data["end_pts"]),
            frames=int(data["frames"]),
            span=None if span is None else Fraction(span),
        )


def check_chunk_seconds(
    chunk_seconds: float, *, min_chunk_seconds: float = DEFAULT_MIN_CHUNK_SECONDS
) -> None:
    """Refuse a chunk length that is not a finite number of seconds at or above the floor."""
    if not math.isfinite(chunk_seconds) or chunk_seconds < min_chunk_seconds:
        raise InputError(
            f"chunk seconds must be a finite number of at least {min_chunk_seconds:g} "
            f"(got {chunk_seconds:g})",
            reason=Reason.BAD_INPUT,
        )


def job_options(priority: object, chunk_seconds: object) -> tuple[int, float | None]:
    """A job's priority (a whole number 0..9) and chunk length (a positive number of seconds,
    or None for the setting's) as given by the CLI or the API; InputError for anything else.
    Checked by type too: a priority of 5.5 was recorded, and failed the job on a worker."""
    level = int(priority) if isinstance(priority, Integral) else None
    if isinstance(priority, bool) or level is None or not 0 <= level <= 9:
        raise InputError(
            f"priority must be a whole number 0..9 (9 = most urgent), not {priority!r}"
        )
    if chunk_seconds is None:
        return level, None
    seconds = math.nan
    if isinstance(chunk_seconds, (Real, Decimal)):
        with contextlib.suppress(ValueError, OverflowError):  # Decimal("sNaN"), 10**400
            seconds = float(chunk_seconds)
    if isinstance(chunk_seconds, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise InputError(f"chunk seconds must be a positive number, not {chunk_seconds!r}")
    return level, seconds


def check_chunking(
    duration: float,
    chunk_seconds: float,
    *,
    min_chunk_seconds: float = DEFAULT_MIN_CHUNK_SECONDS,
    max_chunks: int = DEFAULT_MAX_CHUNKS,
) -> int:
    """Before a job is recorded: refuse a chunk length that would cut a video of `duration`
    seconds into more than max_chunks chunks. Returns the estimated chunk count."""
    check_chunk_seconds(chunk_seconds, min_chunk_seconds=min_chunk_seconds)
    estimate = max(1, math.ceil(max(duration, 0.0) / chunk_seconds))
    _check_count(estimate, chunk_seconds, max_chunks)
    return estimate


def _check_count(count: int, chunk_seconds: float, max_chunks: int) -> None:
    if count > max_chunks:
        raise InputError(
            f"{chunk_seconds:g} s chunks cut this video into {count} chunks, over the limit of "
            f"{max_chunks} (FACEFUSION_MAX_CHUNKS): use longer chunks",
            reason=Reason.TOO_LARGE,
        )


def plan_chunks(
    timestamps: Sequence[int],
    time_base: Fraction,
    *,
    chunk_seconds: float,
    min_frames: int = 8,
    min_chunk_seconds: float = DEFAULT_MIN_CHUNK_SECONDS,
    max_chunks: int = DEFAULT_MAX_CHUNKS,
) -> list[Chunk]:
    """Cut on the video's own presentation timestamps (not on frame rate × seconds), so
    variable-frame-rate and odd-timed inputs split exactly; every frame lands in one chunk.

    A chunk ends at the first frame at or past `chunk_seconds` from its start that leaves it
    at least `min_frames` frames; a tail shorter than that joins the previous chunk. A chunk
    has fixed costs (model warm-up, encoder start, a keyframe), and fewer frames than the
    encoder's reordering delay change how segments join: x264 and x265 give a segment of 1
    or 2 frames no B-frame delay and a longer one 2 frames', so at 1 fps 2-frame chunks
    before a 4-frame tail stitched into an mp4 whose video track said 18 s for 20 s of frames.
    InputError for a chunk length under the floor, or a plan of more than max_chunks chunks."""
    check_chunk_seconds(chunk_seconds, min_chunk_seconds=min_chunk_seconds)
    if not timestamps:
        return []
    pts = sorted(timestamps)
    limit = Fraction(chunk_seconds) / time_base  # in pts ticks
    starts = [0]
    for i in range(1, len(pts)):
        if pts[i] - pts[starts[-1]] >= limit and i - starts[-1] >= min_frames:
            starts.append(i)
    if len(starts) > 1 and len(pts) - starts[-1] < min_frames:
        starts.pop()
    _check_count(len(starts), chunk_seconds, max_chunks)
    chunks = []
    for n, first in enumerate(starts):
        last = starts[n + 1] if n + 1 < len(starts) else len(pts)
        end_pts = pts[last] if last < len(pts) else None
        span = (end_pts - pts[first]) * time_base if end_pts is not None else None
        chunks.append(Chunk(n, pts[first], end_pts, last - first, span))
    return chunks


def image_plan() -> list[Chunk]:
    """A still image's plan: one chunk of one frame (nothing to cut, nothing to stitch)."""
    return [Chunk(0, 0, None, 1, None)]
