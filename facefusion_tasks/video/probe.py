"""What a video is (display size, rotation, timing, frame count, audio), and refusing what isn't."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from facefusion_tasks import objects
from facefusion_tasks.config import DEFAULT_MAX_FRAME_PIXELS
from facefusion_tasks.errors import InputError
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import ffbin, process
from facefusion_tasks.video.colour import UNTAGGED, Colour
from facefusion_tasks.video.damage import corrupt, damage_line
from facefusion_tasks.video.fields import (
    frame_field_order,
    stream_line_interlaced,
    tagged_interlaced,
)
from facefusion_tasks.video.packets import Packets, demux_pass, read_packets
from facefusion_tasks.video.plainfile import (
    check_file,
    check_plain,
    input_args,
    open_failure,
    run_probe,
    still_image,
)
from facefusion_tasks.video.streams import VideoStream, pick_video_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """A probed video. Sizes are as displayed (after rotation); pts count in time_base."""

    #: The file, or the object (ffmpeg reads it through a URL each reader signs for itself).
    path: Location
    #: Display size: the decoded size turned by `rotation`.
    width: int
    height: int
    #: Counter-clockwise degrees (0/90/180/270) the stored picture turns to be displayed,
    #: from the display matrix; the reader's frames are already turned.
    rotation: int
    frame_rate: Fraction
    time_base: Fraction
    frame_count: int
    duration: float
    start_pts: int
    #: Every audio stream's codec, in stream order: all are kept.
    audio_codecs: tuple[str, ...]
    video_codec: str
    pix_fmt: str
    variable_frame_rate: bool
    #: Stored (coded) size before rotation.
    stored_width: int = 0
    stored_height: int = 0
    #: ffmpeg's name for the container ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", …).
    container: str = ""
    #: The video stream's colour description, which the output keeps.
    colour: Colour = UNTAGGED
    #: Every subtitle stream's codec, in stream order (carried where the output can hold them).
    subtitle_codecs: tuple[str, ...] = ()
    #: Seconds from the file's start (its earliest stream) to its first video frame. The output
    #: starts at that frame, so the audio and subtitles before it are left out to stay in sync.
    video_delay: float = 0.0
    #: The shape of a decoded pixel, "num:den" ("" = square): anamorphic video (DVD, some
    #: broadcast) is stored narrower or wider than it is shown, and the output says so too.
    sample_aspect: str = ""
    #: The picture's stream as ffmpeg counts video streams (`0:v:N`, attached pictures
    #: included): the one ffmpeg itself would pick, so a preview track or a cover picture
    #: ahead of the main video is never the one swapped.
    video_stream: int = 0
    #: Interlaced video's field order (fields.FIELD_ORDERS); "" for progressive.
    field_order: str = ""
    #: Seconds the last frame is shown, by its own packet (a GIF's last delay, a slideshow's
    #: long last picture); 0 = unknown, and the output gives it one frame at frame_rate.
    last_frame: Fraction = Fraction(0)

    @property
    def has_audio(self) -> bool:
        """Whether the file has sound."""
        return bool(self.audio_codecs)

    @property
    def carries_streams(self) -> bool:
        """Whether the output takes streams from this file besides the picture (audio or
        subtitles), so a writer or stitch reads it as a second input."""
        return bool(self.audio_codecs or self.subtitle_codecs)

    @property
    def picture_decoders(self) -> frozenset[str]:
        """The names ffmpeg's messages give this file's video decoder: a writer or stitch
        that reads only its other streams judges none of them (process.StderrLog)."""
        return frozenset({self.video_codec} if self.video_codec else ())

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form, so a job probes its video once and every chunk reuses the result."""
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        data["frame_rate"] = str(self.frame_rate)
        data["time_base"] = str(self.time_base)
        data["last_frame"] = str(self.last_frame)
        for late, unset in (("video_stream", 0), ("field_order", ""), ("last_frame", "0")):
            if data[late] == unset:
                # The common case stays readable by workers from before the field, during an
                # upgrade: they would refuse a record with a key they do not know.
                del data[late]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VideoInfo:
        """Inverse of to_json."""
        values = dict(data)
        values["path"] = objects.location(values["path"])
        values["frame_rate"] = Fraction(values["frame_rate"])
        values["time_base"] = Fraction(values["time_base"])
        values["last_frame"] = Fraction(values.get("last_frame") or 0)
        # A record from before audio_codecs existed knew only the first stream.
        first = values.pop("audio_codec", None)
        values.pop("has_audio", None)
        values["audio_codecs"] = tuple(values.get("audio_codecs") or ([first] if first else ()))
        values["colour"] = Colour(**(values.get("colour") or {}))
        values["subtitle_codecs"] = tuple(values.get("subtitle_codecs") or ())
        # A record from a newer planner may carry fields this version does not know.
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def probe(
    path: str | Path | ObjectRef,
    *,
    ffmpeg: str = "",
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
) -> VideoInfo:
    """Probe a video with ffprobe, or by parsing `ffmpeg -i` when there is
    no ffprobe. Raises InputError, one line naming the file, for anything that is not a
    readable, complete video with at least one frame, that is not a plain file (a playlist or
    any demuxer that opens other files), or whose frames exceed max_frame_pixels."""
    source = check_file(path)
    exe = ffbin.ffmpeg_exe(ffmpeg)
    ffprobe = ffbin.ffprobe_exe(ffmpeg)
    if ffprobe is not None:
        info, counted = _probe_with_ffprobe(source, ffprobe, exe)
    else:
        info, counted = _probe_with_ffmpeg(source, exe)
    check_plain(source, info.container)
    # Before anything decodes: memory is sized by the frame, not the file (a 199 KB 8192²
    # H.264 file took a swap past 7 GB), and the header's size is enough to know.
    check_frame_size(info, max_frame_pixels=max_frame_pixels)
    if info.frame_count <= 0:
        raise InputError(f"{source.name}: video stream has no frames", reason=Reason.NO_FRAMES)
    if not counted:
        # The index may promise frames the file no longer holds (an mp4 with its moov first,
        # cut short): demux the last second, which reads through to the end of the data.
        tail = _check_tail(source, exe, info.duration, info.video_stream)
        info = dataclasses.replace(info, last_frame=tail.last_frame())
    log.debug("probed %s: %s", source, info)
    return info


def frame_timestamps(
    path: str | Path | ObjectRef, *, ffmpeg: str = "", stream: int = 0
) -> tuple[list[int], Fraction]:
    """Every video frame's pts in presentation order, and the stream time base.

    A demux-only pass (stream copy into framecrc, nothing decoded): packets the decoder would
    discard are left out, so the list has exactly one entry per frame the reader yields.
    """
    source = check_file(path)
    packets = demux_pass(source, ffbin.ffmpeg_exe(ffmpeg), stream)
    return sorted(packets.pts), packets.time_base


def check_frame_size(info: VideoInfo, *, max_frame_pixels: int) -> None:
    """Refuse frames larger than max_frame_pixels (0 = no limit), before anything decodes."""
    pixels = max(info.stored_width * info.stored_height, info.width * info.height)
    if max_frame_pixels > 0 and pixels > max_frame_pixels:
        raise InputError(
            f"{info.path.name}: frames of {info.width}x{info.height} exceed the limit of "
            f"{max_frame_pixels} pixels (FACEFUSION_MAX_FRAME_PIXELS)",
            reason=Reason.TOO_LARGE,
        )


def _check_tail(source: Location, exe: str, duration: float, stream: int) -> Packets:
    """The packets from the keyframe before the last second on: damage there raises, and
    the last of them says how long the last frame lasts."""
    argv = [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+warning", "-copyts"]
    *options, target = input_args(source)
    argv += [*options, "-ss", f"{max(duration - 1.0, 0.0):.6f}", "-i", target]
    argv += ["-map", f"0:v:{stream}", "-c", "copy", "-f", "framecrc", "-"]
    done = run_probe(argv)
    damage = damage_line(done.stderr)
    if damage is not None:
        raise corrupt(source, damage)
    return read_packets(done.stdout, done.stderr)


def _parse_ratio(text: str | None) -> Fraction:
    if not text or "/" not in text:
        return Fraction(0)
    num, _, den = text.partition("/")
    try:
        return Fraction(int(num), int(den)) if int(den) else Fraction(0)
    except ValueError:
        return Fraction(0)


def _display(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


def sample_aspect(text: object, rotation: int) -> str:
    """The "num:den" shape of a non-square pixel as decoded (a quarter turn swaps its sides),
    or "" for a square or unknown one."""
    try:
        num, den = (int(part) for part in str(text).split(":"))
    except ValueError:  # absent, or "N/A"
        return ""
    if num <= 0 or den <= 0 or num == den:  # 0:1 is ffmpeg's "unknown"
        return ""
    ratio = Fraction(den, num) if rotation in (90, 270) else Fraction(num, den)
    return f"{ratio.numerator}:{ratio.denominator}"


def _normal_rotation(degrees: float) -> int:
    # Display matrices can hold any angle; the pipeline only turns by quarter turns.
    return (round(degrees / 90) * 90) % 360


# --- ffprobe ----------------------------------------------------------------------------------

#: Containers whose frame count in the header can promise frames no decoder returns: an AVI
#: index lists dropped frames as empty entries. Their frames are counted by a demux pass.
_INDEX_OVERCOUNTS = frozenset({"avi"})


def _probe_with_ffprobe(source: Location, ffprobe: str, exe: str) -> tuple[VideoInfo, bool]:
    """VideoInfo and whether frame_count came from a demux pass (True) or the index."""
    *options, target = input_args(source)
    done = run_probe(
        [ffprobe, "-v", "error", *options, "-show_format", "-show_streams", "-of", "json", target]
    )
    if done.returncode != 0:
        raise open_failure(source, done.stderr)
    data: dict[str, Any] = json.loads(done.stdout)
    container = str(data.get("format", {}).get("format_name", ""))
    streams: list[dict[str, Any]] = data.get("streams", [])
    videos = [s for s in streams if s.get("codec_type") == "video"]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    chosen = pick_video_stream(
        [
            VideoStream(
                pixels=int(s.get("width") or 0) * int(s.get("height") or 0),
                default=bool(s.get("disposition", {}).get("default")),
                attached_pic=bool(s.get("disposition", {}).get("attached_pic")),
            )
            for s in videos
        ]
    )
    if chosen is None:
        if still_image(container) or videos:
            raise InputError(
                f"{source.name}: not a video file (a still image)", reason=Reason.NOT_VIDEO
            )
        raise InputError(f"{source.name}: no video stream", reason=Reason.NO_VIDEO)
    video = videos[chosen]
    nb_frames = _int(video.get("nb_frames"))
    if still_image(container):
        raise InputError(
            f"{source.name}: not a video file (a still image)", reason=Reason.NOT_VIDEO
        )

    rotation = 0
    for side in video.get("side_data_list", []) or []:
        if "rotation" in side:
            rotation = _normal_rotation(float(side["rotation"]))
    if not rotation and "rotate" in video.get("tags", {}):
        # ffmpeg before 5.0 reported the legacy clockwise tag instead of side data.
        rotation = _normal_rotation(-float(video["tags"]["rotate"]))
    stored_w, stored_h = int(video.get("width") or 0), int(video.get("height") or 0)
    width, height = _display(stored_w, stored_h, rotation)

    time_base = _parse_ratio(video.get("time_base"))
    avg = _parse_ratio(video.get("avg_frame_rate"))
    real = _parse_ratio(video.get("r_frame_rate"))
    delay = _delay(video.get("start_time"), data.get("format", {}).get("start_time"))
    # The video's own length, from its first frame: Matroska and WebM keep no stream duration,
    # and the file's counts from its earliest stream, which may start before the picture.
    duration = _float(video.get("duration")) or max(
        0.0, _float(data.get("format", {}).get("duration")) - delay
    )
    frame_rate = avg or real

    counted = False
    last_frame = Fraction(0)
    frame_count = nb_frames or 0
    # An edit list can hide frames the index still counts (mp4 cut by stream copy): the count
    # then disagrees with duration × average rate, and only a demux pass, which sees the
    # packets' discard flags, is exact. One hidden frame is a difference of one (a cut one
    # frame past a keyframe), so half a frame is the limit; rounding is far below it.
    edited = bool(frame_count and duration and avg and abs(frame_count - duration * avg) > 0.5)
    indexed = container not in _INDEX_OVERCOUNTS
    if not frame_count or edited or time_base == 0 or not indexed:
        packets = demux_pass(source, exe, chosen)
        frame_count, time_base, counted = len(packets.pts), packets.time_base, True
        last_frame = packets.last_frame()
        if not frame_rate:
            frame_rate = packets.frame_rate()
        if not _float(video.get("duration")):
            # No stream duration (Matroska, WebM): the file's length is its longest stream's,
            # and audio running on past the picture would be muxed in past its end.
            duration = packets.length(frame_rate) or duration
        else:
            # An MPEG program stream's stated duration ends at its last frame's start: its
            # audio was cut a frame short of the picture.
            duration = max(duration, packets.length(frame_rate))
    return VideoInfo(
        path=source,
        width=width,
        height=height,
        rotation=rotation,
        frame_rate=frame_rate,
        time_base=time_base,
        frame_count=frame_count,
        duration=duration,
        start_pts=_int(video.get("start_pts")) or 0,
        audio_codecs=tuple(str(a.get("codec_name")) for a in audios),
        subtitle_codecs=tuple(
            str(s.get("codec_name")) for s in streams if s.get("codec_type") == "subtitle"
        ),
        video_delay=delay,
        sample_aspect=sample_aspect(video.get("sample_aspect_ratio"), rotation),
        colour=Colour.of(
            video.get("color_space"),
            video.get("color_primaries"),
            video.get("color_transfer"),
            video.get("color_range"),
        ),  # fmt: skip
        video_codec=str(video.get("codec_name", "")),
        pix_fmt=str(video.get("pix_fmt", "")),
        # r_frame_rate is the finest regular rate; avg differs when steps vary.
        variable_frame_rate=bool(avg and real and avg != real),
        stored_width=stored_w,
        stored_height=stored_h,
        container=container,
        video_stream=chosen,
        field_order=frame_field_order(
            source,
            exe,
            chosen,
            interlaced=tagged_interlaced(video.get("field_order"), str(video.get("codec_name"))),
        ),
        last_frame=last_frame,
    ), counted


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


_INPUT_START = re.compile(r"Input #0, ([^ ]+), from")
_VIDEO_LINE = re.compile(r"Stream #0:\d+\S*: Video: (\w+)(.*)$")
_AUDIO_LINE = re.compile(r"Stream #0:\d+\S*: Audio: (\w+)")
_SUBTITLE_LINE = re.compile(r"Stream #0:\d+\S*: Subtitle: (\w+)")
_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})\b")
_SAR = re.compile(r"\[SAR (\d+:\d+) DAR")
_PIX_FMT = re.compile(r"^[^,]*\), ([a-z0-9_]+)|^[^,]*, ([a-z0-9_]+)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_LEGACY_ROTATE = re.compile(r"^\s*rotate\s*:\s*(-?\d+)")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_START = re.compile(r"Duration: .*, start: (-?\d+(?:\.\d+)?)")


def _delay(video_start: object, file_start: object) -> float:
    """Seconds the first video frame comes after the file's start (0 when either is unknown)."""
    try:
        return max(0.0, float(video_start) - float(file_start))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # absent, or "N/A"
        return 0.0


def _probe_with_ffmpeg(source: Location, exe: str) -> tuple[VideoInfo, bool]:
    """Parse the input description ffmpeg prints, and count packets in the same pass."""
    packets = demux_pass(source, exe)
    lines = [process.strip_level(line) for line in packets.stderr.splitlines()]
    container = ""
    # Per video stream: its line, then the rotation it was given (display matrix, legacy tag).
    video_lines: list[list[str | None]] = []
    audio_codecs: list[str] = []
    subtitle_codecs: list[str] = []
    file_start: str | None = None
    duration = 0.0
    in_video = False
    for line in lines:
        if line.startswith(("Output #", "Stream mapping")):
            break
        match = _INPUT_START.search(line)
        if match:
            container = match.group(1).rstrip(",")
            continue
        match = _START.search(line)
        if match and file_start is None:
            file_start = match.group(1)
        match = _DURATION.search(line)
        if match and not duration:
            h, m, s = match.groups()
            duration = int(h) * 3600 + int(m) * 60 + float(s)
        if _VIDEO_LINE.search(line):
            video_lines.append([line, None, None])
            in_video = True
            continue
        if "Stream #" in line:
            in_video = False
            audio = _AUDIO_LINE.search(line)
            if audio:
                audio_codecs.append(audio.group(1))
            subtitle = _SUBTITLE_LINE.search(line)
            if subtitle:
                subtitle_codecs.append(subtitle.group(1))
            continue
        if in_video:
            match = _ROTATION.search(line)
            if match:
                video_lines[-1][1] = match.group(1)
            match = _LEGACY_ROTATE.match(line)
            if match:
                video_lines[-1][2] = match.group(1)
    chosen = pick_video_stream([_stream_of(str(line)) for line, _, _ in video_lines])
    if chosen is None:
        raise InputError(f"{source.name}: no video stream", reason=Reason.NO_VIDEO)
    video_line, rotation_text, legacy_rotate = video_lines[chosen]
    assert video_line is not None
    if chosen:
        packets = demux_pass(source, exe, chosen)  # the first pass read stream v:0
    if still_image(container):
        raise InputError(
            f"{source.name}: not a video file (a still image)", reason=Reason.NOT_VIDEO
        )
    video = _VIDEO_LINE.search(video_line)
    assert video is not None
    codec, rest = video.group(1), video.group(2)
    size = _SIZE.search(rest)
    stored_w, stored_h = (int(size.group(1)), int(size.group(2))) if size else (0, 0)
    pix = _PIX_FMT.search(rest)
    pix_fmt = (pix.group(1) or pix.group(2)) if pix else ""
    rotation = 0
    if rotation_text is not None:
        rotation = _normal_rotation(float(rotation_text))
    elif legacy_rotate is not None:
        rotation = _normal_rotation(-float(legacy_rotate))
    width, height = _display(stored_w, stored_h, rotation)
    ordered = sorted(packets.pts)
    delay = _delay(ordered[0] * packets.time_base, file_start) if ordered else 0.0
    # Summed packet durations are exact; the header's Duration line has 10 ms steps, and is
    # the longest stream's. Failing both, the file's length less what comes before the picture.
    duration = packets.length(packets.frame_rate()) or max(0.0, duration - delay)
    return VideoInfo(
        path=source,
        width=width,
        height=height,
        rotation=rotation,
        frame_rate=packets.frame_rate(),
        time_base=packets.time_base,
        frame_count=len(ordered),
        duration=duration,
        start_pts=ordered[0] if ordered else 0,
        audio_codecs=tuple(audio_codecs),
        subtitle_codecs=tuple(subtitle_codecs),
        video_delay=delay,
        sample_aspect=sample_aspect(sar.group(1) if (sar := _SAR.search(rest)) else "", rotation),
        colour=Colour.from_stream_line(rest[pix.end() :] if pix else ""),
        video_codec=codec,
        pix_fmt=pix_fmt,
        variable_frame_rate=packets.variable(),
        stored_width=stored_w,
        stored_height=stored_h,
        container=container,
        video_stream=chosen,
        field_order=frame_field_order(
            source,
            exe,
            chosen,
            interlaced=stream_line_interlaced(rest[pix.end() :] if pix else "", codec),
        ),
        last_frame=packets.last_frame(),
    ), True


def _stream_of(line: str) -> VideoStream:
    """A video stream as `ffmpeg -i` describes it on one line."""
    size = _SIZE.search(line)
    return VideoStream(
        pixels=int(size.group(1)) * int(size.group(2)) if size else 0,
        default="(default)" in line,
        attached_pic="(attached pic)" in line,
    )
