"""Which of a file's video streams is the picture: the one ffmpeg itself would pick."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VideoStream:
    """What choosing among a file's video streams looks at."""

    pixels: int
    default: bool
    attached_pic: bool


#: What the default disposition weighs against size, as ffmpeg's own automatic choice of a
#: video stream scores them: the default stream wins unless another is far larger.
_DEFAULT_BONUS = 5_000_000


def pick_video_stream(streams: list[VideoStream]) -> int | None:
    """The index (ffmpeg's `v:N`) of the stream that is the video, as ffmpeg picks one when
    told nothing: never a cover picture, else the largest, the default one counting extra;
    the first of equals. None when there is only pictures or nothing."""
    scored = [
        (stream.pixels + _DEFAULT_BONUS * stream.default, -index, index)
        for index, stream in enumerate(streams)
        if not stream.attached_pic
    ]
    return max(scored)[2] if scored else None
