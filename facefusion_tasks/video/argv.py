"""Pure builders of ffmpeg command lines (no subprocess here, so tests assert on the argv)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import ffmpeg as ffmpeg_python

from facefusion_tasks.video.codecs import (
    ENCODERS,
    MUXERS,
    OPUS_LAYOUTS,
    audio_encoder,
    audio_is_copied,
    subtitle_plan,
)
from facefusion_tasks.video.colour import (
    DECODE_SWS_FLAGS,
    UNTAGGED,
    Colour,
    colour_tags,
    encode_filter,
)
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
    "dv",  # camcorders' raw DV
    "mxf",  # broadcast and editing (Avid, XDCAM): ffmpeg reads only the essence inside the file
)

#: Socket receive buffer of a signed-URL input (the most a reader fetches past where it stops).
RECV_BUFFER_BYTES = 256 * 1024

#: Muxers whose track timescale we pin to the source time base (-video_track_timescale).
MOV_FAMILY = {"mp4", "mov"}
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
#: x264 preset names mapped onto libvpx-vp9's (-deadline, -cpu-used): realtime 8 is about
#: x264 veryfast's speed here, "good" is several times slower.
VP9_SPEEDS = {
    "ultrafast": ("realtime", 8),
    "superfast": ("realtime", 8),
    "veryfast": ("realtime", 7),
    "faster": ("realtime", 6),
    "fast": ("realtime", 5),
    "medium": ("good", 4),
    "slow": ("good", 3),
    "slower": ("good", 2),
    "veryslow": ("good", 1),
    "placebo": ("good", 0),
}
#: x264 preset names mapped onto libsvtav1's -preset (13 fastest … 0 slowest).
SVTAV1_PRESETS = {
    "ultrafast": 12,
    "superfast": 12,
    "veryfast": 11,
    "faster": 10,
    "fast": 9,
    "medium": 8,
    "slow": 6,
    "slower": 4,
    "veryslow": 2,
    "placebo": 0,
}
#: x264 preset names mapped onto libaom-av1's (-usage, -cpu-used).
AOM_SPEEDS = {
    "ultrafast": ("realtime", 8),
    "superfast": ("realtime", 8),
    "veryfast": ("realtime", 7),
    "faster": ("realtime", 6),
    "fast": ("good", 6),
    "medium": ("good", 5),
    "slow": ("good", 4),
    "slower": ("good", 3),
    "veryslow": ("good", 2),
    "placebo": ("good", 1),
}


def muxer_for(path: str | Path) -> str:
    """The ffmpeg muxer for a destination, from its extension (ValueError if unsupported)."""
    suffix = Path(path).suffix.lower()
    muxer = MUXERS.get(suffix)
    if muxer is None:
        supported = ", ".join(MUXERS)
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


def rate_args(frame_rate: Fraction | None, version: tuple[int, int]) -> list[str]:
    """Where ffmpeg before 6.0 would misjudge the encoded frames' length, the output rate said
    outright. `frame_rate` is one over the last frame's length, the raw track's default
    duration. ffmpeg 5.1's Matroska demuxer takes a rate from that only strictly between 5
    and 1000 fps, and the encoder's packets last at most one frame of the rate it has. From
    1000 fps up it takes the pipe's 1 ns ticks for the rate, the packets get no duration, and
    an mp4's last frame lasted nothing (at exactly 1000 fps, the edit list dropped it). From
    5 fps down it guesses one from the timestamps, and a GIF's 0.48 s last frame lasted
    0.04 s. With passthrough every frame still keeps its own timestamp. Only from 5.1, whose
    -fps_mode takes it (4.x says "-vsync 0 and -r can produce invalid output files", an error
    line), to before 6.0, where frames began to carry their own duration: 9.0 keeps the last
    frame without it, and 7.1 refuses -r beside passthrough."""
    if frame_rate is None or not (5, 1) <= version < (6, 0) or 5 < frame_rate < 1000:
        return []
    return ["-r:v", ratio(frame_rate)]


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
    stream: int = 0,
) -> list[str]:
    """Decode video stream `stream` (ffmpeg's v:N) to bgr24 on stdout, one frame per decoded frame, with
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
        # The source's own matrix and range (swscale reads the frames' tags), converted so
        # that the encoder's way back gives the same YUV where no face was pasted.
        "sws_flags": DECODE_SWS_FLAGS,
        **_fps_mode(version),
    }
    if max_frames is not None:
        output_options["frames:v"] = str(max_frames)
    decoded = ffmpeg_python.input(str(source), **input_options)[f"v:{stream}"].output(
        "pipe:1", **output_options
    )
    return [ffmpeg, *DECODE_GLOBAL_ARGS, "-copyts", *decoded.get_args()]


def _known_preset(preset: str) -> str:
    if preset not in NVENC_PRESETS:
        raise ValueError(f"unknown preset {preset!r} (use one of {', '.join(NVENC_PRESETS)})")
    return preset


def video_codec_args(encoder: str, *, preset: str, quality: int) -> list[str]:
    """Encoder, speed and constant-quality flags: crf for the software encoders (x264/x265
    0–51, VP9/AV1 0–63), cq for nvenc; x264's preset names are mapped onto each encoder's
    own speed settings."""
    if encoder in {"libx264", "libx265"}:
        args = ["-c:v", encoder, "-preset", preset, "-crf", str(quality)]
        if encoder == "libx265":
            args += ["-x265-params", "log-level=error"]
        return args
    if encoder in {"h264_nvenc", "hevc_nvenc", "av1_nvenc"}:
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
    if encoder in {"libvpx-vp9", "libaom-av1"}:
        # -b:v 0 with -crf is constant quality (a bitrate would make crf a mere floor);
        # row-mt lets both use every core on one frame.
        table = VP9_SPEEDS if encoder == "libvpx-vp9" else AOM_SPEEDS
        mode, cpu_used = table[_known_preset(preset)]
        mode_flag = "-deadline" if encoder == "libvpx-vp9" else "-usage"
        return [
            "-c:v", encoder, mode_flag, mode, "-cpu-used", str(cpu_used),
            "-crf", str(quality), "-b:v", "0", "-row-mt", "1",
        ]  # fmt: skip
    if encoder == "libsvtav1":
        speed = SVTAV1_PRESETS[_known_preset(preset)]
        return ["-c:v", encoder, "-preset", str(speed), "-crf", str(quality)]
    raise ValueError(f"unknown video encoder {encoder!r} (use one of {', '.join(ENCODERS)})")


def audio_codec_args(
    muxer: str,
    source_codecs: Sequence[str | None],
    *,
    trim: float = 0.0,
    end: float | None = None,
    version: tuple[int, int] = (5, 1),
) -> list[str]:
    """For each audio stream of the source, in order: copied when the container takes its
    codec, else transcoded (Opus for WebM, AAC elsewhere). No stream is dropped for not
    fitting. One set of options for all streams when they agree, else one per stream.
    `trim` seconds dropped at the start (extras_trim) take a filter: every stream is then
    transcoded. A transcoded stream ends at `end` seconds (the picture's end) by a filter too.
    `version` is ffmpeg's (what a copy into Matroska needs differs)."""
    if trim > 0:
        return _audio_transcode_args(muxer, "", trim=trim, end=end)
    copied = [audio_is_copied(muxer, codec) for codec in source_codecs] or [False]
    if all(copied):
        return _audio_copy_args(muxer, "", version)
    if not any(copied):
        return _audio_transcode_args(muxer, "", end=end)
    args: list[str] = []
    for index, copy in enumerate(copied):
        stream = f":{index}"
        args += (
            _audio_copy_args(muxer, stream, version)
            if copy
            else _audio_transcode_args(muxer, stream, end=end)
        )
    return args


#: Muxers where a copied packet from before the picture's start is played: Matroska and WebM
#: (ffmpeg 5.1 shifts the whole file to start at it, later ones keep it negative).
_SHIFTING_MUXERS = frozenset({"matroska", "webm"})


def _drop_before_start(version: tuple[int, int]) -> str:
    """The bitstream filter that drops the audio packets an mp4 edit list hides (a trimmed
    export's leading sound; AAC's priming frame), which the mp4 demuxer hands on flagged
    "discard". Those ending before the picture's start go; ffmpeg 5.1 also drops one ending
    exactly there (AAC's priming: it would shift the file 21 ms), while later versions keep it
    and write Matroska's CodecDelay, so the decoder still primes. A packet without a pts never
    compares, and stays."""
    ends_by_start = "lte" if version < (6, 0) else "lt"
    return rf"noise=drop=lt(pts\,0)*{ends_by_start}(pts+duration\,0)"


def _audio_copy_args(muxer: str, stream: str, version: tuple[int, int]) -> list[str]:
    """Copy options for the audio streams `stream` selects ("" = all, ":1" = the second). Into
    Matroska, without the hidden packets: ffmpeg 5.1 wrote a trimmed export's hidden half
    second of sound under no picture and started the video that late."""
    args = [f"-c:a{stream}", "copy"]
    if muxer in _SHIFTING_MUXERS:
        args += [f"-bsf:a{stream}", _drop_before_start(version)]
    return args


#: Containers (ffmpeg's names) whose seek cannot be trusted for the extras window: ffmpeg's
#: FLV seek lands on the second keyframe for any time in the first GOP (h264 with B-frames:
#: an -ss of 0.021 s dropped the first 1.5 s of sound). Read from the start instead, the
#: audio's filters drop what comes before the picture (extras_trim).
NO_SEEK_CONTAINERS = frozenset({"flv"})


def extras_trim(skip: float, container: str = "") -> float:
    """Seconds the audio filters drop at the start of the extras: `skip` where the container's
    seek cannot be trusted (NO_SEEK_CONTAINERS), else 0 (the input seek drops them)."""
    return skip if skip > 0 and container in NO_SEEK_CONTAINERS else 0.0


#: Containers ffmpeg flags as having timestamp discontinuities (AVFMT_TS_DISCONT: MPEG-TS, and
#: MPEG-PS/VOB as "mpeg"). For them the ffmpeg CLI moves an input's start to the earliest of
#: the streams it *uses*: the extras input uses no video, so sound that starts after the
#: picture was moved to 0, ahead of it (0.79 s early in the probe that found it).
TS_DISCONT_CONTAINERS = frozenset({"mpegts", "mpeg"})

#: What keeps that move off, on both of ffmpeg's versions of it: up to 5.x it happens only when
#: the input's offset is exactly minus its start, which a 1 µs -itsoffset breaks (1 µs rounds
#: away in any audio or 90 kHz tick); from 6.0 it takes the earliest stream not discarded, and
#: the video, kept (demuxed, never decoded), is the earliest the output cares about.
_KEEP_START = {"itsoffset": "0.000001", "discard:v": "none"}


def extras_window(skip: float, length: float | None, container: str = "") -> dict[str, str]:
    """Input options that read a source's audio and subtitles from `skip` seconds after its
    start (its first video frame, where the output starts: what comes before would play ahead
    of the picture) for `length` seconds (the video's), so they stay in sync and end with it.
    In a `container` whose seek cannot be trusted, from its start for `skip` + `length`
    seconds, and extras_trim() says what the filters drop."""
    trim = extras_trim(skip, container)
    window = dict(_KEEP_START) if container in TS_DISCONT_CONTAINERS else {}
    if skip > 0 and not trim:
        window["ss"] = seconds(skip)
    if length is not None:
        window["t"] = seconds(length + trim)
    return window


def extras_subtitle_args(
    muxer: str, source_codecs: Sequence[str], skip: float, container: str = ""
) -> list[str]:
    """subtitle_args() for the extras input, none where extras_trim() cuts the sound by a
    filter: subtitles cannot be filtered, and read from the file's start they would show
    `skip` late."""
    return [] if extras_trim(skip, container) else subtitle_args(muxer, source_codecs)


def subtitle_args(muxer: str, source_codecs: Sequence[str], *, source: int = 1) -> list[str]:
    """-map and codec options for the subtitle streams of input `source` that this container
    can carry (codecs.subtitle_plan), each copied or converted to the container's own."""
    plan = subtitle_plan(muxer, source_codecs)
    maps = [arg for index, _ in plan for arg in ("-map", f"{source}:s:{index}")]
    return maps + [arg for k, (_, how) in enumerate(plan) for arg in (f"-c:s:{k}", how)]


def _audio_transcode_args(
    muxer: str, stream: str, *, trim: float = 0.0, end: float | None = None
) -> list[str]:
    """Transcode options for the audio streams `stream` selects ("" = all, ":1" = the second),
    `trim` seconds dropped at their start, cut at `end` seconds on the picture's clock."""
    encoder = audio_encoder(muxer)
    args = [f"-c:a{stream}", encoder, f"-b:a{stream}", "192k"]
    filters = []
    if trim > 0:
        # Shifted by the trim, not to the first sample kept: sound that starts after the
        # picture keeps its offset.
        filters.append(f"atrim=start={seconds(trim)},asetpts=PTS-{seconds(trim)}/TB")
    if end is not None:
        # The input's -t, once decoded, is counted from the stream's own first sample: sound
        # that starts 1.3 s after the picture ran 1.3 s past its last frame. (A copied stream
        # is cut on the file's clock, at the picture's end.)
        filters.append(f"atrim=end={seconds(end)}")
    if encoder == "libopus":
        # libopus refuses layouts outside its Vorbis mapping (2.1, 4.0, 7.1(wide), …);
        # aformat lets ffmpeg remix those to the nearest one it takes.
        filters.append(f"aformat=channel_layouts={'|'.join(OPUS_LAYOUTS)}")
    if filters:
        chain = ",".join(filters)
        args += ["-af", chain] if not stream else [f"-filter:a{stream}", chain]
    return args


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
    audio_codecs: Sequence[str | None] = (),
    audio_seconds: float | None = None,
    audio_skip: float = 0.0,
    audio_container: str = "",
    subtitle_codecs: Sequence[str] = (),
    colour: Colour = UNTAGGED,
    sample_aspect: str = "",
    field_order: str = "",
    frame_rate: Fraction | None = None,
    ffmpeg: str = "ffmpeg",
    version: tuple[int, int] = (5, 1),
) -> list[str]:
    """Encode Matroska-wrapped bgr24 frames read from stdin (input 0), optionally muxing every
    audio stream of audio_source (input 1, cut to the video's length; `audio_codecs` are
    theirs, in order) and the subtitle streams the container can carry, from `audio_skip`
    seconds into it (where the video's first frame is; `audio_container` is its container, as
    ffmpeg names it, for extras_window). BGR goes back to YUV with
    the source's `colour` matrix and range, and the output carries its colour tags, its
    pixels' shape (`sample_aspect`, "num:den"; "" = square) and its interlacing
    (`field_order`, "" = progressive). `frame_rate` (one over the last frame's length) is said
    outright only where an old ffmpeg would misjudge it (rate_args).

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
        audio = ffmpeg_python.input(
            str(audio_source), **plain_input_options(audio_source),
            **extras_window(audio_skip, audio_seconds, audio_container),
        )  # fmt: skip
        streams.append(audio["a?"])
    # ffmpeg-python gives inputs and maps; options are added by hand (it would sort them).
    args = ffmpeg_python.output(*streams, str(destination)).get_args()
    options = video_codec_args(encoder, preset=preset, quality=quality)
    video_filter = encode_filter(colour)
    if sample_aspect:  # anamorphic: shown as wide as the source is
        video_filter += "," + sar_filter(sample_aspect)
    if field_order:
        video_filter += "," + field_filter(field_order)
    options += ["-vf", video_filter, "-pix_fmt", pix_fmt_for(width, height)]
    options += colour_tags(colour)
    options += interlace_args(encoder, field_order, height=height)
    for key, value in _fps_mode(version).items():
        options += [f"-{key}", value]
    options += rate_args(frame_rate, version)
    # Video only: given to every stream, it broke libopus (Opus packets that decode to a few ms).
    options += ["-enc_time_base:v", ratio(time_base)]
    if muxer in MOV_FAMILY:
        options += ["-video_track_timescale", str(time_base.denominator)]
        options += ["-movflags", "+faststart"]
    if audio_source is not None and audio_codecs:
        options += audio_codec_args(
            muxer, audio_codecs, trim=extras_trim(audio_skip, audio_container),
            end=audio_seconds, version=version,
        )  # fmt: skip
    if audio_source is not None:
        options += extras_subtitle_args(muxer, subtitle_codecs, audio_skip, audio_container)
    # -y: the writer's temp file already exists (created race-free before ffmpeg starts).
    return [ffmpeg, *ENCODE_GLOBAL_ARGS, "-y", *args[:-1], *options, "-f", muxer, args[-1]]


def sar_filter(sample_aspect: str) -> str:
    """setsar for a "num:den" pixel shape, exactly: setsar rounds a ratio to terms of at most
    `max` (100 unless told), so BT.601's PAL widescreen 118:81 came out 67:46."""
    num, den = (int(part) for part in sample_aspect.split(":"))
    return f"setsar=r={num}/{den}:max={max(num, den, 1)}"


def interlace_args(encoder: str, field_order: str, *, height: int) -> list[str]:
    """Output flags that keep an interlaced source interlaced: libx264 codes each frame's two
    fields apart (interlaced DCT and motion estimation) where its 4:2:0 fields can be cut (a
    height a multiple of 4: it refuses others), and the stream is tagged with the order ("tt"
    or "bb"). Woven frames coded as progressive show combing where players deinterlace none.
    [] for progressive video. (Which field comes first is the frames' own flag:
    field_filter.)"""
    if not field_order:
        return []
    fields_apart = encoder == "libx264" and height % 4 == 0
    flags = ["-flags", "+ildct+ilme"] if fields_apart else []
    return [*flags, "-field_order", field_order]


def field_filter(field_order: str) -> str:
    """The filter that flags every frame with its first field, as encoders and muxers read it
    (ffmpeg 9 refuses `-top`, and 5.1's libx264 takes the frames' flag over it); "" for
    progressive video."""
    if not field_order:
        return ""
    return "setfield=" + ("tff" if field_order == "tt" else "bff")
