"""Join encoded segments without re-encoding, add the original audio, rename into place."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import MediaError, OutputError
from facefusion_tasks.video import ffbin
from facefusion_tasks.video.argv import (
    ENCODE_GLOBAL_ARGS,
    MOV_FAMILY,
    audio_codec_args,
    muxer_for,
    seconds,
)
from facefusion_tasks.video.probe import VideoInfo

_MICROS = 1_000_000


def concat_list(segments: Sequence[tuple[Path, Fraction | None]]) -> str:
    """An ffconcat script. Each segment but the last gets an explicit duration = the exact gap
    to the next segment's first frame, so the joined timestamps are the source's own (variable
    frame rates included) rather than guessed from the last frame's length.

    ffmpeg reads durations in microseconds; each one is the difference of *rounded cumulative*
    offsets, so rounding never accumulates over many segments."""
    lines = ["ffconcat version 1.0"]
    elapsed = Fraction(0)
    for path, span in segments:
        quoted = str(path).replace("'", "'\\''")
        lines.append(f"file '{quoted}'")
        if span is not None:
            start = round(elapsed * _MICROS)
            elapsed += span
            micros = round(elapsed * _MICROS) - start
            lines.append(f"duration {micros // _MICROS}.{micros % _MICROS:06d}")
    return "\n".join(lines) + "\n"


def stitch_argv(
    concat_file: Path,
    destination: Path,
    *,
    time_base: Fraction,
    muxer: str,
    audio_source: Path | None = None,
    audio_codec: str | None = None,
    audio_seconds: float | None = None,
    ffmpeg: str = "ffmpeg",
) -> list[str]:
    """ffmpeg argv: concat demuxer → stream copy of the video, plus the source's first audio
    stream (copied when the container takes it), limited to the video's length."""
    argv = [ffmpeg, *ENCODE_GLOBAL_ARGS, "-y", "-f", "concat", "-safe", "0", "-i", str(concat_file)]
    if audio_source is not None:
        if audio_seconds is not None:
            argv += ["-t", seconds(audio_seconds)]
        argv += ["-i", str(audio_source)]
    argv += ["-map", "0:v:0", "-c:v", "copy"]
    if audio_source is not None:
        argv += ["-map", "1:a:0?", *audio_codec_args(muxer, audio_codec)]
    if muxer in MOV_FAMILY:
        argv += ["-video_track_timescale", str(time_base.denominator), "-movflags", "+faststart"]
    return [*argv, "-f", muxer, str(destination)]


def stitch_segments(
    segments: Sequence[tuple[Path, Fraction | None]],
    output: Path,
    *,
    audio_source: VideoInfo,
    settings: Settings,
) -> Path:
    """Write the joined video to a hidden temp file beside `output`, then rename it into place:
    a failure never leaves a half-written file at the destination."""
    missing = [str(p) for p, _ in segments if not p.is_file()]
    if missing:
        raise MediaError(f"segments missing: {', '.join(missing[:3])}")
    exe = ffbin.ffmpeg_exe(settings.ffmpeg)
    muxer = muxer_for(output)
    list_file = segments[0][0].parent / "concat.ffconcat"
    list_file.write_text(concat_list(segments))
    try:
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{output.name}.", suffix=".partial", dir=output.parent
        )
    except OSError as exc:
        raise OutputError(f"{output}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    temp = Path(temp_name)
    argv = stitch_argv(
        list_file,
        temp,
        time_base=audio_source.time_base,
        muxer=muxer,
        audio_source=audio_source.path if audio_source.has_audio else None,
        audio_codec=audio_source.audio_codec,
        audio_seconds=audio_source.duration if audio_source.has_audio else None,
        ffmpeg=exe,
    )
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-3:]
            raise MediaError(
                f"stitching {output.name} failed: {' / '.join(tail)}", stderr=proc.stderr
            )
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)
    return output
