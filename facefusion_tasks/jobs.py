"""Job planning: split a video's own frame timestamps into chunks and describe the stitch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any


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


def plan_chunks(
    timestamps: Sequence[int], time_base: Fraction, *, chunk_seconds: float, min_frames: int = 8
) -> list[Chunk]:
    """Cut on the video's own presentation timestamps (not on frame rate × seconds), so
    variable-frame-rate and odd-timed inputs split exactly; every frame lands in one chunk.

    A chunk ends at the first frame at or past `chunk_seconds` from its start; a tail shorter
    than `min_frames` joins the previous chunk (a chunk has fixed costs: model warm-up,
    encoder start, a keyframe)."""
    if not timestamps:
        return []
    if chunk_seconds <= 0:
        raise ValueError("chunk_seconds must be positive")
    pts = sorted(timestamps)
    limit = Fraction(chunk_seconds) / time_base  # in pts ticks
    starts = [0]
    for i in range(1, len(pts)):
        if pts[i] - pts[starts[-1]] >= limit:
            starts.append(i)
    if len(starts) > 1 and len(pts) - starts[-1] < min_frames:
        starts.pop()
    chunks = []
    for n, first in enumerate(starts):
        last = starts[n + 1] if n + 1 < len(starts) else len(pts)
        end_pts = pts[last] if last < len(pts) else None
        span = (end_pts - pts[first]) * time_base if end_pts is not None else None
        chunks.append(Chunk(n, pts[first], end_pts, last - first, span))
    return chunks
