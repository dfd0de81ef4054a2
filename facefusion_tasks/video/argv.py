"""Pure builders of ffmpeg command lines (no subprocess here, so tests assert on the argv)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import ffmpeg as ffmpeg_python

from facefusion_tasks.video.signed import SignedUrl

#: Decoder logging: showinfo prints each frame's pts at info level; the level prefix lets the
#: reader pick out [error]/[fatal] lines; no banner, no progress line, never read the terminal.
DECODE_GLOBAL_ARGS = ["-loglevel", "level+info", "-nostats", "-hide_banner", "-nostdin"]
#: Encoder logging: warnings and errors only, level-prefixed, for the error message.
ENCODE_GLOBAL_ARGS = ["-loglevel", "level+warning", "-nostats", "-hide_banner", "-nostdin"]

#: Demuxers that read one self-contained file and open nothing else. Any other demuxer is
#: refused, whatever the file is called: hls, dash and concat playlists or image2 patterns name
#: further files (or URLs) that ffmpeg would open outside every storage root.
PLAIN_DEMUXERS = (
    "mov",
    "matroska",
    "webm",
    "avi",
    "mpegts",
    "flv",
    "mpeg",
    "ogg",
    "asf",
    "gif",
    "nut",
    "ivf",
    "h264",
    "hevc",
    "m4v",
    "yuv4mpegpipe",
)

#: Socket receive buffer of a signed-URL input (the most a reader fetches past where it stops).
RECV_BUFFER_BYTES = 256 * 1024

#: Output muxer by file extension; -f is always explicit so a temp file name cannot mislead it.
MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}
#: Muxers whose track timescale we pin to the source time base (-video_track_timescale).
MOV_FAMILY = {"mp4", "mov"}
#: Audio codecs each muxer takes as-is (stream copy); None = any codec.
AUDIO_COPY_CODECS: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus"}),
    "mov": frozenset({"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le"}),
    "matroska": None,
    "webm": frozenset({"opus", "vorbis"}),
    "avi": frozenset({"mp3", "ac3", "pcm_s16le"}),
}
#: Video codecs each muxer can hold (webm takes neither h264 nor hevc).
VIDEO_MUXERS = {"mp4", "mov", "matroska", "avi"}
ENCODERS = ("libx264", "libx265", "h264_nvenc", "hevc_nvenc")
#: x264/x265 preset names mapped onto nvenc's p1 (fastest) … p7 (best).
NVENC_PRESETS = {
    "ultrafast": "p1",
    "superfast": "p1",
    "veryfast": "p2",
    "faster": "p3",
    "fast": "p4",
    "medium": "p5",
    "slow": "p6",
    "slower": "p7",
    "veryslow": "p7",
    "placebo": "p7",
}


def muxer_for(path: str | Path) -> str:
    """The ffmpeg muxer for a destination, from its extension (ValueError if unsupported)."""
    suffix = Path(path).suffix.lower()
    muxer = MUXERS.get(suffix)
    if muxer is None or muxer not in VIDEO_MUXERS:
        supported = ", ".join(s for s, m in MUXERS.items() if m in VIDEO_MUXERS)
        raise ValueError(f"unsupported output container {suffix or '(none)'!r} (use {supported})")
    return muxer


def pix_fmt_for(width: int, height: int) -> str:
    """yuv420p needs even sizes; odd ones keep full chroma instead of being padded or cropped."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


def ratio(value: Fraction) -> str:
    """A Fraction as ffmpeg's num/den."""
    return f"{value.numerator}/{value.denominator}"


def seconds(value: float) -> str:
    """Seconds with microsecond precision (ffmpeg's internal time unit)."""
    return f"{value:.6f}"


def plain_input_options(source: str | Path | None = None) -> dict[str, str]:
    """Input options that confine ffmpeg to the named local file: the file protocol only (no
    http, subfile, concat: or data: URLs) and only PLAIN_DEMUXERS, so a playlist sniffed from
    the content is refused before it opens anything. A SignedUrl gets its own scheme's
    protocols instead (http and tcp, or https, tls and tcp), the demuxers stay as narrow."""
    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(PLAIN_DEMUXERS)}
    if isinstance(source, SignedUrl):
        scheme = urlsplit(source).scheme.lower()
        options["protocol_whitelist"] = "https,tls,tcp" if scheme == "https" else "http,tcp"
        # TCP flow control keeps what is in flight within the receive window: a small one
        # means a reader that stops at its span's end has fetched little past it.
        options["recv_buffer_size"] = str(RECV_BUFFER_BYTES)
    return options


def plain_input_args(source: str | Path | None = None) -> list[str]:
    """plain_input_options() as argv, to go right before an input's -i."""
    options = plain_input_options(source)
    return [arg for key, value in options.items() for arg in (f"-{key}", value)]


def _fps_mode(version: tuple[int, int]) -> dict[str, str]:
    # -fps_mode arrived in 5.1; older builds only know the (same) global -vsync.
    return {"fps_mode": "passthrough"} if version >= (5, 1) else {"vsync": "passthrough"}


def decode_argv(
    source: str | Path,
    *,
    ffmpeg: str = "ffmpeg",
    hwaccel: str = "none",
    seek_seconds: float | None = None,
    duration_seconds: float | None = None,
    max_frames: int | None = None,
    version: tuple[int, int] = (5, 1),
) -> list[str]:
    """Decode the first video stream to bgr24 on stdout, one frame per decoded frame, with
    each frame's pts printed by showinfo on stderr.

    Timestamps stay those of the file (-copyts), so they match frame_timestamps(). A seek is
    by absolute timestamp to the keyframe at or before seek_seconds, and keeps every frame
    from there on (no accurate-seek trim): the caller drops what precedes its span.
    """
    if hwaccel not in {"none", "auto", "cuda"}:
        raise ValueError(f"unknown hwaccel {hwaccel!r}")
    input_options: dict[str, object] = {**plain_input_options(source)}
    if hwaccel != "none":
        input_options["hwaccel"] = hwaccel
    if seek_seconds is not None:
        input_options["ss"] = seconds(seek_seconds)
        input_options["seek_timestamp"] = "1"
        input_options["noaccurate_seek"] = None  # a boolean flag: it takes no value
    if duration_seconds is not None:
        input_options["t"] = seconds(duration_seconds)
    output_options: dict[str, object] = {
        "vf": "showinfo=checksum=0",
        "f": "rawvideo",
        "pix_fmt": "bgr24",
        **_fps_mode(version),
    }
    if max_frames is not None:
        output_options["frames:v"] = str(max_frames)
    stream = ffmpeg_python.input(str(source), **input_options)["v:0"].output(
        "pipe:1", **output_options
    )
    return [ffmpeg, *DECODE_GLOBAL_ARGS, "-copyts", *stream.get_args()]


def video_codec_args(encoder: str, *, preset: str, quality: int) -> list[str]:
    """Encoder, speed preset and constant-quality flags (crf for x264/x265, cq for nvenc)."""
    if encoder in {"libx264", "libx265"}:
        args = ["-c:v", encoder, "-preset", preset, "-crf", str(quality)]
        if encoder == "libx265":
            args += ["-x265-params", "log-level=error"]
        return args
    if encoder in {"h264_nvenc", "hevc_nvenc"}:
        nv_preset = NVENC_PRESETS.get(preset, preset)
        # -b:v 0 lets -cq alone decide the bitrate in vbr mode.
        return [
            "-c:v",
            encoder,
            "-preset",
            nv_preset,
            "-rc",
            "vbr",
            "-cq",
            str(quality),
            "-b:v",
            "0",
        ]
    raise ValueError(f"unknown video encoder {encoder!r} (use one of {', '.join(ENCODERS)})")


def audio_codec_args(muxer: str, source_codec: str | None) -> list[str]:
    """Copy the source audio when the container takes its codec, else re-encode it."""
    allowed = AUDIO_COPY_CODECS.get(muxer, frozenset())
    if source_codec and (allowed is None or source_codec in allowed):
        return ["-c:a", "copy"]
    return ["-c:a", "libopus" if muxer == "webm" else "aac", "-b:a", "192k"]


def encode_argv(
    destination: str | Path,
    *,
    width: int,
    height: int,
    time_base: Fraction,
    encoder: str = "libx264",
    preset: str = "veryfast",
    quality: int = 18,
    muxer: str | None = None,
    audio_source: str | Path | None = None,
    audio_codec: str | None = None,
    audio_seconds: float | None = None,
    ffmpeg: str = "ffmpeg",
    version: tuple[int, int] = (5, 1),
) -> list[str]:
    """Encode Matroska-wrapped bgr24 frames read from stdin (input 0), optionally muxing the
    first audio stream of audio_source (input 1, cut to the video's length).

    Each frame keeps its own timestamp: passthrough never drops or duplicates, the encoder
    ticks in the source time base, and mp4/mov tracks use its denominator as timescale.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    muxer = muxer or muxer_for(destination)
    frames = ffmpeg_python.input("pipe:0", f="matroska")
    streams = [frames["v:0"]]
    if audio_source is not None:
        # The trailing "?" keeps a source without audio from being an error.
        # Audio is cut to the video's length where it is read (-t on that input), never with
        # -shortest: that would cut *video* frames whenever the audio track is the shorter one.
        limit = {} if audio_seconds is None else {"t": seconds(audio_seconds)}
        audio = ffmpeg_python.input(str(audio_source), **plain_input_options(audio_source), **limit)
        streams.append(audio["a:0?"])
    # ffmpeg-python gives inputs and maps; options are added by hand (it would sort them).
    args = ffmpeg_python.output(*streams, str(destination)).get_args()
    options = video_codec_args(encoder, preset=preset, quality=quality)
    options += ["-pix_fmt", pix_fmt_for(width, height)]
    for key, value in _fps_mode(version).items():
        options += [f"-{key}", value]
    options += ["-enc_time_base", ratio(time_base)]
    if muxer in MOV_FAMILY:
        options += ["-video_track_timescale", str(time_base.denominator)]
        options += ["-movflags", "+faststart"]
    if audio_source is not None:
        options += audio_codec_args(muxer, audio_codec)
    # -y: the writer's temp file already exists (created race-free before ffmpeg starts).
    return [ffmpeg, *ENCODE_GLOBAL_ARGS, "-y", *args[:-1], *options, "-f", muxer, args[-1]]
