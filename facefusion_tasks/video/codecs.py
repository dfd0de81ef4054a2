"""Which codecs each output container holds, and the encoder and audio choices that follow (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason

#: Output muxer by file extension; -f is always explicit so a temp file name cannot mislead it.
MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
}
#: The codec each offered video encoder writes.
ENCODER_CODECS = {
    "libx264": "h264",
    "libx265": "hevc",
    "h264_nvenc": "h264",
    "hevc_nvenc": "hevc",
    "libvpx-vp9": "vp9",
    "libsvtav1": "av1",
    "libaom-av1": "av1",
    "av1_nvenc": "av1",
}
#: Every encoder --video-encoder accepts (besides `auto` and unset).
ENCODERS = tuple(ENCODER_CODECS)
#: Video codecs each output muxer holds in ffmpeg 5.1: WebM only VP9 and AV1 (of ours), mov
#: neither of those ("vp9 only supported in MP4"), mp4 and Matroska all four.
MUXER_VIDEO_CODECS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"h264", "hevc", "vp9", "av1"}),
    "mov": frozenset({"h264", "hevc"}),
    "matroska": frozenset({"h264", "hevc", "vp9", "av1"}),
    "webm": frozenset({"vp9", "av1"}),
}
#: The encoder used when none is chosen, by muxer (libx264 elsewhere).
DEFAULT_ENCODERS = {"webm": "libvpx-vp9"}
#: The NVENC encoder `auto` tries first, by muxer (a one-frame trial decides; h264_nvenc
#: elsewhere); without it `auto` is the muxer's default.
AUTO_NVENC = {"webm": "av1_nvenc"}
# fmt: off
_MATROSKA_AUDIO = frozenset({
    "aac", "ac3", "eac3", "dts", "truehd", "mlp", "mp1", "mp2", "mp3", "flac", "alac",
    "opus", "vorbis", "wavpack", "tta", "pcm_u8", "pcm_s16le", "pcm_s16be", "pcm_s24le",
    "pcm_s24be", "pcm_s32le", "pcm_s32be", "pcm_f32le", "pcm_f64le", "pcm_s64le",
    "ra_144", "ra_288", "cook", "atrac3", "sipr", "ralf",
    # Through Matroska's A_MS/ACM, as WAVE tags them.
    "pcm_alaw", "pcm_mulaw", "adpcm_ms", "adpcm_ima_wav", "adpcm_g726", "adpcm_g722",
    "adpcm_yamaha", "wmav1", "wmav2", "gsm_ms",
})
# fmt: on
#: Audio codecs each muxer takes as they are (stream copy). mp4 could hold Opus, but many
#: players cannot play it there: mp4 gets AAC, which plays everywhere. Matroska: the codecs it
#: has an ID of its own for (ffmpeg's matroska.c), and those WAVE has a tag for (each muxed
#: with ffmpeg 5.1); others, such as QuickTime's IMA4 ADPCM, make its muxer fail to start.
AUDIO_COPY_CODECS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"aac", "mp3", "alac", "ac3", "eac3"}),
    "mov": frozenset({"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"}),
    "matroska": _MATROSKA_AUDIO,
    "webm": frozenset({"opus", "vorbis"}),
}
#: The audio encoder for a codec that cannot be copied, by muxer (aac elsewhere).
AUDIO_ENCODERS = {"webm": "libopus"}
#: Channel layouts libopus takes (its Vorbis mapping): any other layout (2.1, 4.0, 7.1(wide),
#: …) makes it fail to open, so the transcode remixes to the nearest of these first.
OPUS_LAYOUTS = ("mono", "stereo", "3.0", "quad", "5.0", "5.1", "6.1", "7.1")
#: Text subtitle codecs, which ffmpeg converts between; bitmap ones (PGS, DVD, DVB) cannot
#: become text.
TEXT_SUBTITLES = frozenset({"subrip", "ass", "ssa", "webvtt", "mov_text", "text"})
#: Subtitle codecs each muxer takes as they are (ffmpeg 5.1's Matroska refuses mov_text, for one).
SUBTITLE_COPY_CODECS: dict[str, frozenset[str]] = {
    "matroska": frozenset(
        {
            "subrip",
            "ass",
            "ssa",
            "webvtt",
            "text",
            "dvd_subtitle",
            "hdmv_pgs_subtitle",
            "dvb_subtitle",
        }
    ),  # fmt: skip
    # Not mov_text into mp4 or mov: an mp4 stores the gap before each cue as an empty sample,
    # and copied from a file whose picture starts after its sound, the sample that spans the
    # output's start got an edit list that ffmpeg (and the players built on it) reads from
    # the next sample on: every cue showed early by that gap (6 s in the probe's file).
    # Re-encoded, the empty samples are dropped and the muxer writes its own.
    "webm": frozenset({"webvtt"}),
}
#: The encoder other text subtitles go through, by muxer.
SUBTITLE_ENCODERS = {"matroska": "srt", "mp4": "mov_text", "mov": "mov_text", "webm": "webvtt"}
#: libsvtav1 takes only yuv420p, so even sizes, and at least 64 pixels each way.
SVTAV1_MIN_SIDE = 64
#: ... and at most 240 frames a second ("The maximum allowed frame rate is 240 fps", SVT-AV1
#: 1.4): a 300 fps video failed once ffmpeg had started, exit 1, with ffmpeg's generic line.
SVTAV1_MAX_FPS = 240


def default_encoder(muxer: str) -> str:
    """The encoder a muxer gets when none is chosen."""
    return DEFAULT_ENCODERS.get(muxer, "libx264")


def auto_nvenc(muxer: str) -> str:
    """The NVENC encoder `auto` tries for this muxer before falling back to the default."""
    return AUTO_NVENC.get(muxer, "h264_nvenc")


def segment_muxer(muxer: str) -> str:
    """The container of a distributed job's chunk segments: WebM for a WebM output (joined by
    a plain Matroska-to-Matroska stream copy), else mp4 (exact ticks in any time base, and it
    holds every codec mp4, mov and Matroska outputs may carry)."""
    return "webm" if muxer == "webm" else "mp4"


def encoder_refusal(
    requested: str,
    muxer: str,
    *,
    width: int | None = None,
    height: int | None = None,
    frame_rate: Fraction | None = None,
) -> str | None:
    """Why `requested` cannot write this container (and frame size and rate), in one line;
    None when it can. Unset ("") and `auto` always fit: they resolve per container."""
    if requested in {"", "auto"}:
        return None
    codec = ENCODER_CODECS.get(requested)
    if codec is None:
        return f"unknown video encoder {requested!r} (use auto, {', '.join(ENCODERS)})"
    holds = MUXER_VIDEO_CODECS.get(muxer, frozenset())
    if codec not in holds:
        fitting = [e for e in ENCODERS if ENCODER_CODECS[e] in holds]
        return (
            f"video encoder {requested} writes {codec}, which a {muxer} file cannot hold "
            f"(use {', '.join(fitting)} or leave it unset)"
        )
    if requested == "libsvtav1" and width and height and not _svtav1_fits(width, height):
        return (
            f"video encoder libsvtav1 needs even frame sizes of at least {SVTAV1_MIN_SIDE} "
            f"pixels, this video is {width}x{height} (use libaom-av1 or libvpx-vp9)"
        )
    if requested == "libsvtav1" and frame_rate and frame_rate > SVTAV1_MAX_FPS:
        return (
            f"video encoder libsvtav1 takes at most {SVTAV1_MAX_FPS} fps, this video is "
            f"{float(frame_rate):g} fps (use libaom-av1 or libvpx-vp9)"
        )
    return None


def _svtav1_fits(width: int, height: int) -> bool:
    return width % 2 == 0 and height % 2 == 0 and min(width, height) >= SVTAV1_MIN_SIDE


#: x264's preset names, which every encoder's speed setting is mapped from (argv.py).
PRESET_NAMES = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow", "placebo")  # fmt: skip
#: The highest constant-quality value each encoder takes (crf, or cq for nvenc); 51 for any
#: other.
QUALITY_MAX = {"libvpx-vp9": 63, "libsvtav1": 63, "libaom-av1": 63}


def check_quality(encoder: str, quality: int) -> None:
    """InputError (reason config) for a quality this encoder refuses: ffmpeg would only say so
    once the run has started."""
    highest = QUALITY_MAX.get(encoder, 51)
    if not 0 <= quality <= highest:
        raise InputError(
            f"video quality {quality} is out of range for {encoder} (0 to {highest})",
            reason=Reason.CONFIG,
        )


#: The widest or tallest frame the encoders take: x264 and libvpx refused 16400x16 once
#: ffmpeg had started (exit 1, after the models loaded and a frame went through).
MAX_ENCODED_SIDE = 16384
#: Muxers that keep time in milliseconds (Matroska's default TimestampScale): frames closer
#: than that share a timestamp (a 1200 fps clip came out with 20 of 120 repeated, which this
#: tool's own reader then refuses).
MILLISECOND_MUXERS = frozenset({"matroska", "webm"})


def check_encoder(
    requested: str,
    muxer: str,
    *,
    width: int | None = None,
    height: int | None = None,
    frame_rate: Fraction | None = None,
) -> None:
    """InputError (one line) for an encoder this container, frame size or rate cannot take:
    checked before any model loads or anything is enqueued. Reason config for the encoder
    chosen; too_large for a frame no encoder here takes; bad_output for a container whose
    clock cannot tell this video's frames apart."""
    if width and height and max(width, height) > MAX_ENCODED_SIDE:
        raise InputError(
            f"frames of {width}x{height} are too large to encode: the video encoders take at "
            f"most {MAX_ENCODED_SIDE} pixels a side",
            reason=Reason.TOO_LARGE,
        )
    if muxer in MILLISECOND_MUXERS and frame_rate and frame_rate > 1000:
        raise InputError(
            f"a {muxer} file keeps time in milliseconds, too coarse for this video's "
            f"{float(frame_rate):g} fps (frames would share a timestamp); write .mp4 or .mov",
            reason=Reason.BAD_OUTPUT,
        )
    refusal = encoder_refusal(requested, muxer, width=width, height=height, frame_rate=frame_rate)
    if refusal is not None:
        raise InputError(refusal, reason=Reason.CONFIG)


def fleet_encoder(
    job_choice: str,
    worker_choice: str,
    muxer: str,
    *,
    width: int,
    height: int,
    frame_rate: Fraction | None = None,
) -> str:
    """The encoder a distributed chunk asks for: the job's own choice (checked at submit) when
    it made one; else the worker's configured one when it fits this job; else unset (the
    container's default). A fleet set to libx265 still writes a WebM job, in VP9."""
    if job_choice:
        return job_choice
    fits = encoder_refusal(worker_choice, muxer, width=width, height=height, frame_rate=frame_rate)
    if fits is None:
        return worker_choice
    return ""


def audio_is_copied(muxer: str, source_codec: str | None) -> bool:
    """Whether the source audio goes in as it is (the container takes its codec)."""
    return bool(source_codec) and source_codec in AUDIO_COPY_CODECS.get(muxer, frozenset())


def subtitle_plan(muxer: str, source_codecs: Sequence[str]) -> list[tuple[int, str]]:
    """(index among the source's subtitle streams, "copy" or the encoder) for every subtitle
    stream this container can carry: as it is where it takes the codec (Matroska: text and
    bitmap ones), else converted when it is text (to SubRip, mov_text or WebVTT). The rest
    (bitmap subtitles outside Matroska, closed captions, teletext) is left out."""
    copied = SUBTITLE_COPY_CODECS.get(muxer, frozenset())
    encoder = SUBTITLE_ENCODERS.get(muxer)
    plan: list[tuple[int, str]] = []
    for index, codec in enumerate(source_codecs):
        if codec in copied:
            plan.append((index, "copy"))
        elif codec in TEXT_SUBTITLES and encoder:
            plan.append((index, encoder))
    return plan


def audio_encoder(muxer: str) -> str:
    """What audio this container cannot take as it is becomes: Opus in WebM, else AAC."""
    return AUDIO_ENCODERS.get(muxer, "aac")
