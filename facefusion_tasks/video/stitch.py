"""Join encoded segments without re-encoding, add the original audio, verify, stage for commit."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from facefusion_tasks import objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import MediaError
from facefusion_tasks.filekind import require_file
from facefusion_tasks.video import ffbin, process, staging
from facefusion_tasks.video.argv import (
    ENCODE_GLOBAL_ARGS,
    MOV_FAMILY,
    audio_codec_args,
    extras_subtitle_args,
    extras_trim,
    extras_window,
    muxer_for,
    plain_input_args,
)
from facefusion_tasks.video.codecs import MILLISECOND_MUXERS
from facefusion_tasks.video.colour import written_colour
from facefusion_tasks.video.damage import extras_damage
from facefusion_tasks.video.probe import VideoInfo
from facefusion_tasks.video.staging import StagedOutput
from facefusion_tasks.video.writer import last_frame_length

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
    audio_source: str | Path | None = None,
    audio_codecs: Sequence[str | None] = (),
    audio_seconds: float | None = None,
    audio_skip: float = 0.0,
    audio_container: str = "",
    subtitle_codecs: Sequence[str] = (),
    field_order: str = "",
    colour_range: str = "",
    last_frame: Fraction = Fraction(0),
    ffmpeg: str = "ffmpeg",
    version: tuple[int, int] = (5, 1),
) -> list[str]:
    """ffmpeg argv: concat demuxer → stream copy of the video, plus every audio stream of the
    source (each copied when the container takes it) and the subtitle streams the container can
    carry, limited to the video's length. An interlaced video's field order is restated: the
    mp4 segments do not store it, and ffmpeg's parser guesses. So is `colour_range`: an mp4
    keeps the range only beside a matrix or primaries, and a Matroska output of a source
    that named neither came out untagged, where a local swap's says "tv". The last frame lasts
    `last_frame` seconds (0: as the copy has it): see _last_frame_args."""
    argv = [ffmpeg, *ENCODE_GLOBAL_ARGS, "-y", "-f", "concat", "-safe", "0", "-i", str(concat_file)]
    if audio_source is not None:
        for option, value in extras_window(audio_skip, audio_seconds, audio_container).items():
            argv += [f"-{option}", value]
        # The user's file: confined like every other read of it (no playlists, file: only, or
        # the one URL a worker signed for its object).
        argv += [*plain_input_args(audio_source), "-i", str(audio_source)]
    argv += ["-map", "0:v:0", "-c:v", "copy"]
    argv += _last_frame_args(muxer, time_base, last_frame, version)
    if field_order:
        argv += ["-field_order", field_order]
    if colour_range:
        argv += ["-color_range", colour_range]
    if audio_source is not None:
        argv += ["-map", "1:a?"]
        if audio_codecs:
            argv += audio_codec_args(
                muxer,
                audio_codecs,
                trim=extras_trim(audio_skip, audio_container),
                end=audio_seconds,
                version=version,
            )
        argv += extras_subtitle_args(muxer, subtitle_codecs, audio_skip, audio_container)
    if muxer in MOV_FAMILY:
        argv += ["-video_track_timescale", str(time_base.denominator), "-movflags", "+faststart"]
    return [*argv, "-f", muxer, str(destination)]


def _last_frame_args(
    muxer: str, time_base: Fraction, last_frame: Fraction, version: tuple[int, int]
) -> list[str]:
    """Before ffmpeg 6.0: give every copied packet `last_frame` seconds, in the ticks 5.1's
    bitstream filter sees for this muxer (Matroska's 1 ms; an mp4/mov track's own timescale,
    the source's time base, measured): the last frame keeps it (every other one lasts until
    the next one's timestamp). 5.1 reads no packet durations from our mp4 segments and
    guessed one step of the first segment's rate: a clip that opens at 10 fps and ends at 30
    came out with a 0.1 s last frame (into .mkv, a failed job). pts and dts are said
    outright: 5.1's setts left to its defaults broke them. From 6.0 nothing: it reads the last
    segment's own durations (its writer gave its last frame the source's length), and its
    filter ticks in the segments' time base, not the muxer's."""
    if version >= (6, 0):
        return []
    ticks = (
        1000 if muxer in MILLISECOND_MUXERS
        else time_base.denominator if muxer in MOV_FAMILY
        else 0
    )  # fmt: skip
    length = round(last_frame * ticks)
    if length <= 0:
        return []
    return ["-bsf:v", f"setts=pts=PTS:dts=DTS:duration={length}"]


def stitch_segments(
    segments: Sequence[tuple[Path, Fraction | None]],
    output: Path,
    *,
    audio_source: VideoInfo,
    settings: Settings,
    frames: int,
    timeout: float,
) -> StagedOutput:
    """Join the segments into a hidden temp file beside `output` and verify it: ffmpeg
    reported no error (whatever its exit code), and a demux-only re-count finds exactly
    `frames` frames over the segments' planned spans. Nothing at `output` changes here."""
    missing = [str(p) for p, _ in segments if not p.is_file()]
    if missing:
        raise MediaError(f"segments missing: {', '.join(missing[:3])}")
    # The source's audio and subtitles, if it has any, cut to the video's length.
    extras = audio_source.carries_streams
    if extras:  # read again for them: still a plain file?
        require_file(audio_source.path)
    exe = ffbin.ffmpeg_exe(settings.ffmpeg)
    version = ffbin.ffmpeg_version(exe)  # asked before the temp exists: nothing to leave
    muxer = muxer_for(output)
    # The last segment has no planned span (it runs to the end): its frames count, and its
    # last one lasts what a local swap gives it, the source's own (writer.last_frame_length).
    last = process.count_video(segments[-1][0], ffmpeg=exe)
    final = last_frame_length(audio_source.last_frame, audio_source.frame_rate)
    span = sum((gap or Fraction(0) for _, gap in segments[:-1]), Fraction(0)) + last.span
    duration = span + final if final > 0 else span + last.duration - last.span
    list_file = segments[0][0].parent / "concat.ffconcat"
    list_file.write_text(concat_list(segments))
    temp = staging.create_temp(output)
    argv = stitch_argv(
        list_file,
        temp,
        time_base=audio_source.time_base,
        muxer=muxer,
        audio_source=objects.ffmpeg_input(audio_source.path) if extras else None,
        audio_codecs=audio_source.audio_codecs,
        audio_seconds=float(duration) if extras else None,  # the stitched picture's length
        audio_skip=audio_source.video_delay,
        audio_container=audio_source.container,
        subtitle_codecs=audio_source.subtitle_codecs,
        field_order=audio_source.field_order,
        # The range the segments were encoded in: the source's, else swscale's for YUV.
        colour_range=written_colour(audio_source.colour, audio_source.pix_fmt).range or "tv",
        last_frame=final,
        ffmpeg=exe,
        version=version,
    )
    try:
        done = process.run(argv, timeout=timeout, what=f"stitching {output.name}")
        log = done.log(quiet=audio_source.picture_decoders if extras else frozenset())
        failure = log.failure(f"stitching {output.name}", done.returncode)
        if failure is not None:
            # Damage in the source's audio shows first here: chunks copy no audio.
            raise extras_damage(list(log.errors), audio_source.path if extras else None) or failure
        frame = 1 / audio_source.frame_rate if audio_source.frame_rate else Fraction(1, 25)
        # The span (first frame to last) is checked to a frame; the length as the local
        # writer's is (process.length_tolerance): ffmpeg 5.1 shows an mp4's last frame as a
        # guess (one tick of a GIF's 1/100 s clock, where it plays 0.9 s; a decode-order
        # gap, 43 ms at the end of a phone's VFR clip whose stream claims 600 fps, where
        # 1/600 s was expected, and every such job failed while a local swap succeeded).
        tolerance = frame + Fraction(1, 1000)
        process.verify_video(
            temp,
            ffmpeg=exe,
            frames=frames,
            duration=duration,
            tolerance=process.length_tolerance(frame, final, last.widest),
            what=f"stitched {output.name}",
            span=(span, tolerance),
        )
    except BaseException:
        staging.remove(temp)
        raise
    return StagedOutput(temp, output)
