"""Video I/O against real ffmpeg: probing, exact round trips, spans, bad inputs and outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, MediaError, OutputError, TransientError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import ffbin, process
from facefusion_tasks.video.fields import written_field_order
from facefusion_tasks.video.mkv import MatroskaRawWriter
from facefusion_tasks.video.plainfile import run_probe
from facefusion_tasks.video.probe import VideoInfo, frame_timestamps, probe
from facefusion_tasks.video.reader import FrameReader
from facefusion_tasks.video.samples import (
    face_positions,
    make_photo_video,
    make_sample_video,
    synthetic_frame,
)
from facefusion_tasks.video.writer import FrameWriter, choose_encoder
from tests.media import decoded_audio_seconds, video_length, write_gif

pytestmark = pytest.mark.integration

#: The static ffmpeg from the imageio-ffmpeg wheel (a newer major version, and no ffprobe).
BUNDLED_FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
SETTINGS = Settings(video_encoder="libx264", video_preset="ultrafast", video_quality=18)
#: Mean absolute pixel difference a libx264 crf 18 round trip stays under (chroma
#: subsampling of the sharp synthetic stripes dominates for yuv420p).
CODEC_NOISE = 4.0


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small clips, built once: each exercises one thing timestamps or layout can break on."""
    d = tmp_path_factory.mktemp("clips")
    # MPEG-TS has no index: ffmpeg seeks it by bisecting on timestamps and starts decoding at
    # the next keyframe after where that lands (keyframes 2 s apart here, never near a span).
    long_gop = make_sample_video(d / "gop50.mp4", seconds=4, keyframe_interval=50)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(long_gop), "-c", "copy", str(d / "gop50.ts")],
        check=True, timeout=60,
    )  # fmt: skip
    # HEVC's decoder, after such a seek, paints the frames before the first keyframe with
    # their references missing (grey): none of them may be kept.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(long_gop), "-c:v", "libx265", "-x265-params",
         "log-level=error:open-gop=0:keyint=50:min-keyint=50:scenecut=0", "-an",
         "-f", "mpegts", str(d / "hevc50.ts")],
        check=True, timeout=120,
    )  # fmt: skip
    # An MPEG program stream as DVDs and camcorders write it (MPEG-2 with B-frames, MP2 audio):
    # only some packets carry a pts.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(long_gop), "-c:v", "mpeg2video", "-bf", "2",
         "-b:v", "2M", "-c:a", "mp2", "-f", "mpeg", str(d / "dvd.mpg")],
        check=True, timeout=60,
    )  # fmt: skip
    # H.264 in AVI: each packet holds only a dts. genpts (which the program stream needs)
    # would give each the next one's: one frame off the decoder's, and chunks lost a frame.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(long_gop), "-c:v", "libx264", "-bf", "0", "-g", "12",
         "-an", str(d / "h264.avi")],
        check=True, timeout=60,
    )  # fmt: skip
    return {
        "ts": d / "gop50.ts",
        "hevc_ts": d / "hevc50.ts",
        "mpg": d / "dvd.mpg",
        "avi": d / "h264.avi",
        "cfr25": make_sample_video(d / "cfr25.mp4", seconds=2),
        "ntsc": make_sample_video(d / "ntsc.mp4", seconds=2, fps="30000/1001", audio=False),
        "vfr": make_sample_video(d / "vfr.mp4", seconds=2, variable_frame_rate=True),
        "rot90": make_sample_video(d / "rot90.mp4", seconds=1, rotation=90),
        "odd": make_sample_video(d / "odd.mp4", seconds=1, width=321, height=241, faces=2),
        "gop10": make_sample_video(d / "gop10.mp4", seconds=3, keyframe_interval=10, audio=False),
    }


def ffprobe_json(path: Path, *args: str) -> dict[str, object]:
    """Ask ffprobe directly (independent of the code under test)."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout)
    return result


def packet_times(path: Path) -> list[Fraction]:
    """Sorted video packet pts in seconds, relative to the first; discarded packets left out."""
    data = ffprobe_json(
        path, "-select_streams", "v:0", "-show_entries", "packet=pts,flags:stream=time_base"
    )
    streams = data["streams"]
    packets = data["packets"]
    assert isinstance(streams, list) and isinstance(packets, list)
    num, den = streams[0]["time_base"].split("/")
    time_base = Fraction(int(num), int(den))
    pts = sorted(int(p["pts"]) for p in packets if "D" not in p["flags"])
    return [(p - pts[0]) * time_base for p in pts]


def audio_seconds(path: Path) -> float | None:
    data = ffprobe_json(path, "-select_streams", "a:0", "-show_entries", "stream=duration")
    streams = data["streams"]
    assert isinstance(streams, list)
    return float(streams[0]["duration"]) if streams else None


def transcode(info: VideoInfo, destination: Path, *, settings: Settings = SETTINGS) -> Path:
    """Decode → FrameReader → FrameWriter, no processing: the pipeline minus the faces."""
    with (
        FrameReader(info) as reader,
        FrameWriter(
            destination, width=info.width, height=info.height, time_base=info.time_base,
            audio_source=info, settings=settings, field_order=written_field_order(info),
            last_frame=info.last_frame,
        ) as writer,
    ):  # fmt: skip
        for frame in reader:
            writer.write(frame.image, frame.pts)
    return destination


def frame_pairs(a: VideoInfo, b: VideoInfo) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    with FrameReader(a) as first, FrameReader(b) as second:
        yield from ((x.image, y.image) for x, y in zip(first, second, strict=True))


def mean_abs_diff(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x.astype(np.int16) - y.astype(np.int16)).mean())


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cfr25", "ntsc", "vfr", "rot90", "odd"])
def test_round_trip_keeps_frames_timestamps_size_audio_and_pixels(
    clips: dict[str, Path], name: str, tmp_path: Path
) -> None:
    source = clips[name]
    info = probe(source)
    result = probe(transcode(info, tmp_path / "out.mp4"))

    assert result.frame_count == info.frame_count
    # Every frame's time relative to the first, exactly (each file in its own time base).
    assert packet_times(result.path) == packet_times(source)
    assert result.time_base == info.time_base
    assert result.variable_frame_rate == info.variable_frame_rate
    # Written upright at the display size: no rotation left to apply, odd sizes intact.
    assert (result.width, result.height, result.rotation) == (info.width, info.height, 0)
    if info.has_audio:
        assert result.has_audio
        out_audio, in_audio = audio_seconds(result.path), audio_seconds(source)
        assert out_audio is not None and in_audio is not None
        assert abs(out_audio - in_audio) < 0.1
        assert abs(out_audio - result.duration) < 0.1
    else:
        assert not result.has_audio
    noise = max(mean_abs_diff(x, y) for x, y in frame_pairs(info, result))
    assert noise < CODEC_NOISE


@pytest.mark.parametrize("ffmpeg", ["", BUNDLED_FFMPEG], ids=["system", "bundled"])
@pytest.mark.parametrize("rotation", [90, 270])
def test_rotated_video_reads_upright_at_display_size(
    tmp_path: Path, ffmpeg: str, rotation: int
) -> None:
    # ffmpeg 5.1 sets the display matrix from a stream-copy `rotate` tag, newer ones from
    # -display_rotation: the sample helper must produce the same file either way.
    clip = make_sample_video(
        tmp_path / "rot.mp4", seconds=0.4, rotation=rotation, audio=False, ffmpeg=ffmpeg
    )
    info = probe(clip)
    assert (info.rotation, info.width, info.height) == (rotation, 240, 320)
    assert (info.stored_width, info.stored_height) == (320, 240)
    with FrameReader(info) as reader:
        frame = next(reader)
    assert frame.image.shape == (320, 240, 3)
    assert frame.image.flags.c_contiguous and frame.image.dtype == np.uint8
    # Counter-clockwise, as the display matrix says: np.rot90 turns the same way.
    upright = np.rot90(synthetic_frame(320, 240, 1, 0), k=rotation // 90)
    wrong_way = np.rot90(synthetic_frame(320, 240, 1, 0), k=-rotation // 90)
    assert mean_abs_diff(frame.image, upright) < CODEC_NOISE
    assert mean_abs_diff(frame.image, wrong_way) > 4 * mean_abs_diff(frame.image, upright)


def test_matroska_pipe_format_is_read_back_with_exact_timestamps_and_pixels(
    tmp_path: Path,
) -> None:
    path = tmp_path / "raw.mkv"
    stamps = [0, 33_333_333, 83_333_333, 116_666_667, 166_666_667, 200_000_001]
    images = [synthetic_frame(64, 48, 1, i) for i in range(len(stamps))]
    with path.open("wb") as handle:
        writer = MatroskaRawWriter(handle, 64, 48)
        for image, stamp in zip(images, stamps, strict=True):
            writer.write(image, stamp)
    info = probe(path)
    assert (info.video_codec, info.pix_fmt, info.width, info.height) == (
        "rawvideo", "bgr24", 64, 48,
    )  # fmt: skip
    assert info.frame_count == len(stamps)
    pts, time_base = frame_timestamps(path)
    assert [p * time_base for p in pts] == [Fraction(s, 10**9) for s in stamps]
    with FrameReader(info) as reader:
        decoded = list(reader)
    assert [f.pts * reader.time_base for f in decoded] == [Fraction(s, 10**9) for s in stamps]
    for frame, image in zip(decoded, images, strict=True):
        assert np.array_equal(frame.image, image)  # bgr24 end to end: bit exact


def test_writer_to_matroska_with_audio(clips: dict[str, Path], tmp_path: Path) -> None:
    info = probe(clips["vfr"])
    result = probe(transcode(info, tmp_path / "out.mkv"))
    assert result.frame_count == info.frame_count and result.has_audio
    # Matroska ticks in milliseconds: the VFR steps survive to the nearest one.
    for got, want in zip(packet_times(result.path), packet_times(info.path), strict=True):
        assert abs(got - want) <= Fraction(1, 1000)


def _pcm(path: Path, ffmpeg: str) -> np.ndarray:
    """The first audio stream decoded to mono 16-bit samples at its own rate."""
    done = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-f", "s16le", "-"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return np.frombuffer(done.stdout, np.int16)


@pytest.mark.parametrize("ffmpeg", ["", BUNDLED_FFMPEG], ids=["system", "bundled"])
@pytest.mark.parametrize("trimmed", [False, True], ids=["whole", "trimmed"])
def test_aac_copied_into_matroska_starts_with_the_picture(
    tmp_path: Path, ffmpeg: str, trimmed: bool
) -> None:
    # An mp4's AAC starts with a priming packet its edit list hides, and a trimmed export
    # (`-ss 0.5 -c copy`) hides half a second more: ffmpeg 5.1 shifted the Matroska file to
    # start at them (the picture 21 ms, or 0.5 s, late), 9.0 kept them at negative times.
    clip = make_sample_video(tmp_path / "aac.mp4", seconds=1.5, audio=True)
    if trimmed:
        whole, clip = clip, tmp_path / "trimmed.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-ss", "0.5", "-i", str(whole), "-c", "copy", str(clip)],
            check=True, timeout=60,
        )  # fmt: skip
    info = probe(clip)
    out = transcode(
        info, tmp_path / "out.mkv", settings=dataclasses.replace(SETTINGS, ffmpeg=ffmpeg)
    )
    streams = ffprobe_json(out, "-show_entries", "stream=codec_type,start_time")["streams"]
    assert isinstance(streams, list)
    starts = {s["codec_type"]: float(s["start_time"]) for s in streams}
    assert starts["video"] == pytest.approx(0.0, abs=0.025)
    assert starts["audio"] == pytest.approx(starts["video"], abs=0.025)  # one packet at most
    if ffmpeg and not trimmed:
        # 9.0 keeps the priming packet and writes CodecDelay: the sound decodes as the source's.
        got, want = _pcm(out, ffmpeg), _pcm(clip, ffmpeg)
        assert np.array_equal(got[: len(got) // 2], want[: len(got) // 2])


@pytest.fixture(scope="module")
def last_frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Variable-rate videos whose last frame lasts other than their average step: a GIF whose
    last picture stays 0.48 s, and the mp4 ffmpeg makes of it, whose last frame it cuts to
    0.04 s against an average step of 0.12 s."""
    d = tmp_path_factory.mktemp("last")
    gif = write_gif(d / "long-last.gif", [70, 230, 50, 310, 120, 480])
    short = d / "short-last.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(gif), "-c:v", "libx264", "-pix_fmt", "yuv420p",
         "-fps_mode", "passthrough", str(short)],
        check=True, timeout=60,
    )  # fmt: skip
    return {"gif": gif, "mp4": short}


@pytest.mark.parametrize("ffmpeg", ["", BUNDLED_FFMPEG], ids=["system", "bundled"])
@pytest.mark.parametrize(
    ("name", "suffix"), [("gif", ".mp4"), ("gif", ".webm"), ("mp4", ".mkv"), ("mp4", ".mov")]
)
def test_the_output_lasts_as_long_as_the_source_its_last_frame_included(
    last_frames: dict[str, Path], tmp_path: Path, ffmpeg: str, name: str, suffix: str
) -> None:
    source = last_frames[name]
    info = probe(source, ffmpeg=ffmpeg)  # the bundled one has no ffprobe: the other probe
    end = video_length(source)
    # (an mp4's movie header keeps its length in milliseconds)
    assert abs(info.last_frame - (end - packet_times(source)[-1])) <= Fraction(1, 1000)
    # The last frame used to last one average step, and the output came out short or long.
    assert abs(end - packet_times(source)[-1] - 1 / info.frame_rate) > Fraction(1, 20)
    encoder = "" if suffix == ".webm" else SETTINGS.video_encoder  # WebM's own: VP9
    settings = dataclasses.replace(SETTINGS, ffmpeg=ffmpeg, video_encoder=encoder)
    out = transcode(info, tmp_path / f"out{suffix}", settings=settings)
    # Matroska ticks in milliseconds, the source's clock in 1/19456 s; the two files' lengths
    # are each rounded to a millisecond.
    pairs = zip(packet_times(out), packet_times(source), strict=True)
    assert all(abs(got - want) <= Fraction(1, 1000) for got, want in pairs)
    assert abs(video_length(out) - end) <= Fraction(2, 1000)


# --- spans (chunks) ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gop10", "vfr", "ts", "hevc_ts", "mpg", "avi"])
def test_spans_yield_exactly_their_frames(clips: dict[str, Path], name: str) -> None:
    info = probe(clips[name])
    pts, time_base = frame_timestamps(info.path)
    assert len(pts) == info.frame_count and time_base == info.time_base
    with FrameReader(info) as reader:
        whole = {f.pts: f.image for f in reader}
    assert sorted(whole) == pts

    bounds: list[int | None] = [pts[0], pts[17], pts[18], pts[len(pts) - 9], None]
    seen: list[int] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        with FrameReader(info, start_pts=start, end_pts=end) as reader:
            span = list(reader)
        expected = [p for p in pts if p >= (start or 0) and (end is None or p < end)]
        assert [f.pts for f in span] == expected
        assert [f.index for f in span] == list(range(len(expected)))
        for frame in span:
            assert np.array_equal(frame.image, whole[frame.pts])
        seen += [f.pts for f in span]
    assert seen == pts
    if name == "gop10":
        # The last span started from a nearby keyframe, not from the beginning.
        with FrameReader(info, start_pts=pts[-9]) as reader:
            assert len(list(reader)) == 9
            assert reader.frames_decoded < 20


def test_reader_stops_early_and_closes_twice(clips: dict[str, Path]) -> None:
    reader = FrameReader(probe(clips["cfr25"]))
    frames = [next(reader), next(reader)]
    assert [f.index for f in frames] == [0, 1]
    assert frames[1].pts - frames[0].pts == 512
    reader.close()
    reader.close()
    assert reader._proc.returncode is not None  # ffmpeg is gone, not left running
    assert list(reader) == []


def _signal_decoder(info: VideoInfo, sent: signal.Signals, *, ffmpeg: str = "") -> None:
    """Decode `info`'s video, sending its ffmpeg `sent` after the first frame."""
    with FrameReader(info, ffmpeg=ffmpeg) as reader:
        next(reader)
        os.kill(reader._proc.pid, sent)
        list(reader)


def _signal_encoder(
    path: Path, info: VideoInfo, sent: signal.Signals, *, settings: Settings = SETTINGS
) -> None:
    """Encode black frames into `path`, sending its ffmpeg `sent` after the first, until the
    pipe breaks. Not waited for: a stopped ffmpeg may be blocked reading its stdin, and stops
    at its next frame."""
    with FrameWriter(
        path, width=info.width, height=info.height, time_base=info.time_base,
        audio_source=None, settings=settings,
    ) as writer:  # fmt: skip
        frame = np.zeros((info.height, info.width, 3), np.uint8)
        writer.write(frame, 0)
        os.kill(writer._proc.pid, sent)
        for index in range(1, 500):
            writer.write(frame, index * 512)


def test_an_ffmpeg_killed_from_outside_is_a_transient_failure(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    # The kernel's OOM killer, or someone on the host: the host's trouble, not the file's.
    # It failed the job at once (media); another attempt, maybe on another worker, may pass.
    info = probe(clips["cfr25"])
    with pytest.raises(TransientError, match=r"decoding cfr25.mp4: ffmpeg was killed .SIGKILL"):
        _signal_decoder(info, signal.SIGKILL)
    with pytest.raises(TransientError, match=r"killed.mp4: ffmpeg stopped after .* was killed"):
        _signal_encoder(tmp_path / "killed.mp4", info, signal.SIGKILL)
    # A crash (SIGSEGV, an assertion's SIGABRT) would come again on the same input: no retry.
    with pytest.raises(
        MediaError, match=r"decoding cfr25.mp4: ffmpeg crashed .SIGSEGV"
    ) as crash:  # fmt: skip
        _signal_decoder(info, signal.SIGSEGV)
    assert not isinstance(crash.value, TransientError)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ffmpeg", ["", BUNDLED_FFMPEG], ids=["system", "bundled"])
@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_ffmpeg_stopped_from_outside_is_a_transient_failure(
    clips: dict[str, Path], tmp_path: Path, sent: signal.Signals, ffmpeg: str
) -> None:
    # A service manager stopping the worker's whole process group (systemd's default
    # KillMode), a terminal's Ctrl-C: ffmpeg catches the signal, stops and exits 255. The
    # decoder's read as the user's corrupt video, the encoder's as a media failure, and each
    # failed the job for good.
    info = probe(clips["cfr25"], ffmpeg=ffmpeg)
    with pytest.raises(TransientError, match=r"decoding cfr25.mp4: ffmpeg was stopped .SIGTERM"):
        _signal_decoder(info, sent, ffmpeg=ffmpeg)
    with pytest.raises(TransientError, match=r"stopped.mp4: .*ffmpeg was stopped .SIGTERM"):
        settings = dataclasses.replace(SETTINGS, ffmpeg=ffmpeg)
        _signal_encoder(tmp_path / "stopped.mp4", info, sent, settings=settings)
    assert leftovers(tmp_path) == []


def test_a_probe_a_signal_ended_is_a_transient_failure_not_a_bad_file() -> None:
    # ffprobe catches no signal: the OOM killer's SIGKILL or a service manager's SIGTERM
    # during a plan's probe read as "not a video file", the user's fault.
    for sent in ("KILL", "TERM"):
        with pytest.raises(TransientError, match=rf"sh on clip.mp4: sh was killed .SIG{sent}"):
            run_probe(["sh", "-c", f"kill -{sent} $$", "clip.mp4"])


def test_close_from_another_thread_ends_iteration_quietly(clips: dict[str, Path]) -> None:
    # The pipeline's decode thread iterates while the main thread may give up and close().
    reader = FrameReader(probe(clips["cfr25"]))
    seen: list[int] = []
    failures: list[BaseException] = []
    first = threading.Event()

    def consume() -> None:
        try:
            for frame in reader:
                seen.append(frame.pts)
                first.set()
                time.sleep(0.02)
        except BaseException as exc:  # the test reports whatever escapes
            failures.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert first.wait(10)
    reader.close()
    consumer.join(10)
    assert not consumer.is_alive() and failures == []
    assert 0 < len(seen) < 50


# --- bad inputs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    paths = {"missing": d / "missing.mp4", "folder": d / "folder.mp4"}
    paths["folder"].mkdir()
    paths["fifo"] = d / "fifo.mp4"
    os.mkfifo(paths["fifo"])
    paths["loop"] = d / "loop.mp4"
    paths["loop"].symlink_to(paths["loop"])
    paths["empty"] = d / "empty.mp4"
    paths["empty"].write_bytes(b"")
    paths["text"] = d / "notes.mp4"
    paths["text"].write_text("this is not a video\n" * 20)
    still = synthetic_frame(64, 48, 1, 0)
    paths["png"] = d / "still.png"
    paths["png"].write_bytes(cv2.imencode(".png", still)[1].tobytes())
    paths["png_as_mp4"] = d / "still.mp4"
    paths["png_as_mp4"].write_bytes(paths["png"].read_bytes())
    paths["jpeg"] = d / "photo.jpg"
    paths["jpeg"].write_bytes(cv2.imencode(".jpg", still)[1].tobytes())
    # A phone's photo: an ISO-BMFF file of HEIF boxes (ftyp heic, meta, mdat) and no moov.
    paths["heic"] = d / "IMG_0001.HEIC"
    paths["heic"].write_bytes(
        struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic"
        + struct.pack(">I", 12) + b"meta" + bytes(4)
        + struct.pack(">I", 1008) + b"mdat" + bytes(1000)
    )  # fmt: skip
    for faststart in (False, True):
        whole = make_sample_video(d / f"whole_{faststart}.mp4", seconds=2, faststart=faststart)
        cut = d / f"cut_{'faststart' if faststart else 'moov_last'}.mp4"
        data = whole.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        paths[cut.stem] = cut
    paths["no_frames"] = d / "header_only.mkv"
    with paths["no_frames"].open("wb") as handle:
        MatroskaRawWriter(handle, 64, 48)  # a Matroska header, a track, and no frame
    paths["zero_frames_mp4"] = d / "zero.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc", "-frames:v", "0",
         "-c:v", "libx264", str(paths["zero_frames_mp4"])],
        check=True,
    )  # fmt: skip
    whole_mkv = make_sample_video(d / "whole.mkv", seconds=2, audio=True)
    data = whole_mkv.read_bytes()
    paths["cut_mkv"] = d / "cut.mkv"
    paths["cut_mkv"].write_bytes(data[: len(data) // 2])
    paths["damaged_mkv"] = d / "damaged.mkv"
    start = len(data) * 2 // 5
    paths["damaged_mkv"].write_bytes(data[:start] + bytes(20000) + data[start + 20000 :])
    # Garbage written over the middle: ffmpeg stops at a size that cannot be, or an element
    # larger than the one holding it (and the rest of the video was silently dropped).
    long_mkv = make_sample_video(d / "long.mkv", seconds=4, audio=False).read_bytes()
    for offset in (50000, 100000):
        damaged = bytearray(long_mkv)
        damaged[offset : offset + 2048] = bytes(range(256)) * 8
        paths[f"garbled_mkv_{offset}"] = d / f"garbled_{offset}.mkv"
        paths[f"garbled_mkv_{offset}"].write_bytes(bytes(damaged))
    paths["raw_h264"] = d / "raw.h264"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(whole_mkv), "-an", "-c:v", "copy",
         "-bsf:v", "h264_mp4toannexb", str(paths["raw_h264"])],
        check=True,
    )  # fmt: skip
    paths["fine_ticks_mkv"] = d / "fine_ticks.mkv"  # 1500 fps on Matroska's 1 ms clock
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=160x120:r=1500:d=0.1",
         "-c:v", "libx264", "-bf", "0", str(paths["fine_ticks_mkv"])],
        check=True,
    )  # fmt: skip
    paths["mp3"] = d / "tone.mp3"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(paths["mp3"])],
        check=True,
    )
    paths["audio_only"] = d / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(paths["audio_only"])],
        check=True,
    )
    return paths


BAD_INPUTS = {
    "missing": "no such file",
    "folder": "is a directory",
    "fifo": "is a pipe (FIFO), not a regular file",
    "loop": "is a symlink loop",
    "empty": "empty file",
    "text": "not a video file",
    "png": "not a video file",
    "png_as_mp4": "not a video file",
    "jpeg": "not a video file",
    "cut_moov_last": "truncated or corrupt video (moov atom not found)",
    "heic": "not a video file (a still image: HEIF/HEIC)",
    "cut_faststart": "truncated or corrupt video",
    "audio_only": "no video stream",
    "mp3": "no video stream (an audio file)",
    "cut_mkv": "truncated or corrupt video (File ended prematurely",
    "damaged_mkv": "truncated or corrupt video (",
    "garbled_mkv_50000": "truncated or corrupt video (",
    "garbled_mkv_100000": "truncated or corrupt video (",
    "raw_h264": "49 of 50 frames repeat another's timestamp",
    "fine_ticks_mkv": "50 of 150 frames repeat another's timestamp",
    "no_frames": "video stream has no frames",
    "zero_frames_mp4": "no video stream",  # the mp4 muxer drops a track without samples
}


@pytest.fixture(params=["ffprobe", "ffmpeg-only"])
def probe_tool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with ffprobe, and again as if there were none (probe parses `ffmpeg -i`)."""
    if request.param == "ffmpeg-only":
        monkeypatch.setattr(ffbin, "ffprobe_exe", lambda ffmpeg="": None)
    return str(request.param)


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line(
    bad_inputs: dict[str, Path], kind: str, probe_tool: str
) -> None:
    path = bad_inputs[kind]
    with pytest.raises(InputError) as caught:
        probe(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path.name}: {BAD_INPUTS[kind]}")


def test_an_avi_index_entry_for_a_dropped_frame_is_not_counted(tmp_path: Path) -> None:
    # A gap in the timestamps is an empty entry in an AVI index: the header then says 25
    # frames, and 24 decode.
    clip = tmp_path / "gap.avi"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=160x120:r=25:d=1",
         "-vf", "select='not(eq(n,10))'", "-fps_mode", "passthrough", "-c:v", "mpeg4", str(clip)],
        check=True,
    )  # fmt: skip
    info = probe(clip)
    with FrameReader(info) as reader:
        assert info.frame_count == sum(1 for _ in reader) == 24


@pytest.mark.parametrize("hidden", [1, 2])
def test_frames_an_edit_list_hides_are_not_counted(
    tmp_path: Path, hidden: int, probe_tool: str
) -> None:
    # A stream-copy cut `hidden` frames past a keyframe: the index still lists the keyframe,
    # and an edit list hides it and the frames up to the cut. One hidden frame was counted.
    whole = make_sample_video(tmp_path / "whole.mp4", seconds=2, audio=False)
    clip = tmp_path / "cut.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", str(hidden / 25), "-i", str(whole), "-c", "copy",
         str(clip)],
        check=True,
    )  # fmt: skip
    info = probe(clip)
    with FrameReader(info) as reader:
        assert info.frame_count == sum(1 for _ in reader) == 50 - hidden


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_frames_seconds_apart_are_written_to_mp4_and_kept_apart(
    tmp_path: Path, suffix: str
) -> None:
    # Frames ever further apart (the last two 3.94 s): with B-frames, mp4 gives the last frame
    # a decode-order gap as its length, and the writer's check refused a right file (exit 1).
    steady = make_sample_video(tmp_path / "steady.mkv", seconds=4, audio=False)
    clip = tmp_path / "slowing.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(steady), "-vf", "settb=1/1000,setpts='N*N/50/TB'",
         "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", str(clip)],
        check=True,
    )  # fmt: skip
    info = probe(clip)
    # B-frames (ultrafast, the other tests' preset, makes none).
    settings = dataclasses.replace(SETTINGS, video_preset="veryfast")
    written = transcode(info, tmp_path / f"out{suffix}", settings=settings)
    assert packet_times(written) == packet_times(clip)


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_a_thousand_frames_a_second_keep_their_last_frame(tmp_path: Path, suffix: str) -> None:
    # ffmpeg 5.1 took the pipe's 1 ns ticks for the rate at 1000 fps and up: its packets had
    # no duration, and an mp4's edit list ended at the last frame, so players dropped it.
    clip = make_sample_video(tmp_path / "fast.mkv", seconds=0.2, fps="1000", audio=False)
    settings = dataclasses.replace(SETTINGS, video_preset="veryfast")  # with B-frames
    written = transcode(probe(clip), tmp_path / f"out{suffix}", settings=settings)
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(written), "-map", "0:v:0", "-f", "framemd5", "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert sum(1 for line in decoded.splitlines() if line and not line.startswith("#")) == 200
    assert packet_times(written) == packet_times(clip)


def test_a_time_squashed_file_fails_the_check_a_long_gap_widens(tmp_path: Path) -> None:
    # One 5 s gap lets the last frame's length be off by up to 5 s (mp4 with B-frames takes a
    # decode-order gap for it); the frames' own span is still held to one frame.
    steady = make_sample_video(tmp_path / "steady.mkv", seconds=2, audio=False)
    gap = tmp_path / "gap.mkv"
    squashed = tmp_path / "squashed.mkv"
    for source, out, setpts in ((steady, gap, "'PTS+gt(N,24)*5/TB'"), (gap, squashed, "0.8*PTS")):
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(source), "-vf", f"settb=1/1000,setpts={setpts}",
             "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", str(out)],
            check=True,
        )  # fmt: skip
    frame = Fraction(1, 25)
    expected = {
        "frames": 50,
        "duration": Fraction(7) + frame,
        "tolerance": Fraction(5) + frame,
        "span": (Fraction(7), frame),
    }
    process.verify_video(gap, ffmpeg="ffmpeg", what="gap", **expected)  # type: ignore[arg-type]
    with pytest.raises(MediaError, match="squashed: the file spans 5.5"):
        process.verify_video(squashed, ffmpeg="ffmpeg", what="squashed", **expected)  # type: ignore[arg-type]


def test_audio_matroska_has_no_name_for_is_transcoded_not_copied(tmp_path: Path) -> None:
    # QuickTime's IMA4 ADPCM: copied, Matroska's muxer failed to start (exit 1).
    video = make_sample_video(tmp_path / "v.mp4", seconds=1, audio=False)
    clip = tmp_path / "ima4.mov"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-f", "lavfi", "-t", "1", "-i", "sine",
         "-c:v", "copy", "-c:a", "adpcm_ima_qt", str(clip)],
        check=True,
    )  # fmt: skip
    written = transcode(probe(clip), tmp_path / "out.mkv")
    streams = ffprobe_json(written, "-show_entries", "stream=codec_name")["streams"]
    assert isinstance(streams, list)
    assert [s["codec_name"] for s in streams] == ["h264", "aac"]
    assert abs(decoded_audio_seconds(written) - 1.0) < 0.05


def _field_flags(path: Path) -> set[tuple[str, str]]:
    """Each decoded frame's (interlaced_frame, top_field_first), as a set."""
    data = ffprobe_json(
        path, "-select_streams", "v:0", "-show_entries", "frame=interlaced_frame,top_field_first"
    )
    frames = data["frames"]
    assert isinstance(frames, list) and frames
    return {(str(f["interlaced_frame"]), str(f["top_field_first"])) for f in frames}


@pytest.mark.parametrize(
    ("codec", "suffix", "order", "flags"),
    [
        (["-c:v", "libx264", "-top", "1"], ".mp4", "tt", ("1", "1")),
        (["-c:v", "mpeg2video", "-top", "0", "-q:v", "3"], ".ts", "bb", ("1", "0")),
        # Tagged wrong: ffmpeg's own Matroska says tb (bottom shown first) for top first; mp4
        # stores no order, and ffprobe's parser guesses tt. The frames decide.
        (["-c:v", "libx264", "-top", "1"], ".mkv", "tt", ("1", "1")),
        (["-c:v", "libx264", "-top", "0"], ".mp4", "bb", ("1", "0")),
        # Raw DV says nothing of its fields, and is always bottom first: it came out progressive.
        (
            ["-c:v", "dvvideo", "-s", "720x576", "-pix_fmt", "yuv420p", "-f", "dv"],
            ".dv",
            "bb",
            ("1", "0"),
        ),
    ],
)
def test_interlaced_video_stays_interlaced_field_order_and_all(
    tmp_path: Path,
    codec: list[str],
    suffix: str,
    order: str,
    flags: tuple[str, str],
    probe_tool: str,
) -> None:
    # Coded as progressive frames, woven fields show combing where players deinterlace none.
    steady = make_sample_video(tmp_path / "steady.mkv", seconds=1, audio=False)
    clip = tmp_path / f"interlaced{suffix}"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(steady), "-flags", "+ildct+ilme", *codec, str(clip)],
        check=True,
    )  # fmt: skip
    info = probe(clip)
    assert info.field_order == order
    for out in (".mp4", ".mkv"):
        written = transcode(info, tmp_path / f"out{out}")
        assert _field_flags(written) == _field_flags(clip) == {flags}
        assert packet_times(written) == packet_times(clip)


@pytest.mark.parametrize(
    ("args", "size", "flags"),
    [
        # libx264 refuses to code apart the fields of a height not a multiple of 4 (exit 1).
        (["-vf", "scale=320:242", "-c:v", "mpeg2video", "-q:v", "3"], (320, 242), None),
        # Turned by the reader, the fields become columns: written progressive, as they are.
        (["-c:v", "libx264"], (240, 320), {("0", "0")}),
    ],
)
def test_interlaced_video_the_encoder_cannot_keep_interlaced_is_still_written(
    tmp_path: Path, args: list[str], size: tuple[int, int], flags: set[tuple[str, str]] | None
) -> None:
    steady = make_sample_video(tmp_path / "steady.mkv", seconds=1, audio=False)
    clip = tmp_path / "interlaced.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(steady), *args, "-flags", "+ildct+ilme", "-top", "1",
         str(clip)],
        check=True,
    )  # fmt: skip
    if size[0] < size[1]:  # a display matrix, put on by stream copy (ffmpeg 5.1's way)
        turned = tmp_path / "turned.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-metadata:s:v:0",
             "rotate=90", str(turned)],
            check=True,
        )  # fmt: skip
        clip = turned
    info = probe(clip)
    assert (info.width, info.height) == size and info.field_order == "tt"
    written = transcode(info, tmp_path / "out.mp4")
    assert packet_times(written) == packet_times(clip)
    if flags is not None:
        assert _field_flags(written) == flags


def test_a_matroska_video_lasts_its_own_frames_not_its_longer_audio(tmp_path: Path) -> None:
    video = make_sample_video(tmp_path / "one.mkv", seconds=1, audio=False)
    clip = tmp_path / "long_audio.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-f", "lavfi", "-t", "3", "-i", "sine",
         "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "libvorbis", str(clip)],
        check=True,
    )  # fmt: skip
    assert probe(clip).duration == pytest.approx(1.0, abs=0.001)


def test_truncation_the_index_hides_is_caught_by_every_reader(bad_inputs: dict[str, Path]) -> None:
    # Probe the intact file, then point the reader at the cut one: the decoder must notice.
    cut = bad_inputs["cut_faststart"]
    info = dataclasses.replace(probe(cut.with_name("whole_True.mp4")), path=cut)
    with (
        pytest.raises(InputError, match=r"^cut_faststart\.mp4: truncated or corrupt video \("),
        FrameReader(info) as reader,
    ):
        for _ in reader:
            pass
    with pytest.raises(InputError, match="truncated or corrupt video"):
        frame_timestamps(cut)


# --- without ffprobe --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cfr25", "ntsc", "vfr", "rot90", "odd", "mpg"])
@pytest.mark.parametrize("ffmpeg", ["", BUNDLED_FFMPEG], ids=["system", "bundled"])
def test_probe_without_ffprobe_matches_ffprobe(
    clips: dict[str, Path], name: str, ffmpeg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = probe(clips[name])
    monkeypatch.setattr(ffbin, "ffprobe_exe", lambda ffmpeg="": None)
    got = probe(clips[name], ffmpeg=ffmpeg)
    assert dataclasses.replace(got, duration=0.0) == dataclasses.replace(expected, duration=0.0)
    assert got.duration == pytest.approx(expected.duration, abs=1e-3)


@pytest.fixture()
def bundled_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A PATH with neither ffmpeg nor ffprobe: only the imageio-ffmpeg wheel's binary is left."""
    monkeypatch.setenv("PATH", str(tmp_path))
    for cached in (ffbin.ffmpeg_exe, ffbin.ffprobe_exe):
        cached.cache_clear()
    yield
    for cached in (ffbin.ffmpeg_exe, ffbin.ffprobe_exe):
        cached.cache_clear()


def test_bundled_ffmpeg_alone_probes_and_reads(clips: dict[str, Path], bundled_only: None) -> None:
    assert ffbin.ffmpeg_exe() == BUNDLED_FFMPEG
    assert ffbin.ffprobe_exe() is None
    info = probe(clips["vfr"])
    assert info.frame_count == 48 and info.variable_frame_rate and info.has_audio
    with FrameReader(info) as reader:
        assert sum(1 for _ in reader) == info.frame_count


# --- outputs ----------------------------------------------------------------------------------


def open_writer(destination: Path, *, settings: Settings = SETTINGS) -> FrameWriter:
    return FrameWriter(
        destination, width=320, height=240, time_base=Fraction(1, 12800),
        audio_source=None, settings=settings,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing_dir/out.mp4", "does not exist"),
        ("regular_file/out.mp4", "is not a directory"),  # root ignores chmod; a file never works
        ("a_directory.mp4", "is a directory"),
        ("out.gif", "unsupported output container"),
    ],
)
def test_unwritable_destination_is_refused_before_encoding(
    tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "regular_file").write_text("x")
    (tmp_path / "a_directory.mp4").mkdir()
    before = leftovers(tmp_path)
    with pytest.raises(OutputError, match=message) as caught:
        open_writer(tmp_path / where)
    assert "\n" not in str(caught.value)
    assert leftovers(tmp_path) == before


def test_abort_mid_stream_leaves_the_destination_untouched(tmp_path: Path) -> None:
    destination = tmp_path / "out.mp4"
    writer = open_writer(destination)
    for i in range(5):
        writer.write(synthetic_frame(320, 240, 1, i), i * 512)
    # While encoding, only a hidden temp file beside the destination exists.
    (temp,) = leftovers(tmp_path)
    assert temp.startswith(".out.") and temp.endswith(".mp4")
    writer.abort()
    writer.abort()
    assert leftovers(tmp_path) == []

    destination.write_bytes(b"an earlier result")
    with pytest.raises(RuntimeError, match="consumer failed"), open_writer(destination) as writer:
        writer.write(synthetic_frame(320, 240, 1, 0), 0)
        raise RuntimeError("consumer failed")
    assert leftovers(tmp_path) == ["out.mp4"]
    assert destination.read_bytes() == b"an earlier result"


def test_encoder_failure_is_a_media_error_with_stderr_and_no_file(tmp_path: Path) -> None:
    broken = SETTINGS.replace(video_preset="no-such-preset")
    with (
        pytest.raises(MediaError) as caught,
        open_writer(tmp_path / "out.mp4", settings=broken) as writer,
    ):
        for i in range(10):
            writer.write(synthetic_frame(320, 240, 1, i), i * 512)
    assert "preset" in caught.value.stderr.lower()
    assert leftovers(tmp_path) == []


def test_commit_returns_the_destination_and_writes_exact_ticks(tmp_path: Path) -> None:
    destination = tmp_path / "out.mp4"
    steps = [0, 427, 1067, 1494, 2134, 2600]  # irregular, in 1/12800 s
    writer = open_writer(destination)
    for i, pts in enumerate(steps):
        writer.write(synthetic_frame(320, 240, 1, i), 10_000 + pts)  # output starts at 0
    assert writer.commit() == destination
    assert leftovers(tmp_path) == ["out.mp4"]
    assert packet_times(destination) == [Fraction(s, 12800) for s in steps]


def test_auto_encoder_picks_one_that_works_here() -> None:
    exe = ffbin.ffmpeg_exe()
    chosen = choose_encoder("auto", exe)
    assert chosen in {"h264_nvenc", "libx264"}
    assert ffbin.encoder_works(exe, chosen)
    with pytest.raises(InputError, match="unknown video encoder"):
        choose_encoder("mpeg4", exe)


# --- samples ----------------------------------------------------------------------------------


def test_ten_second_sample_is_quick_and_exact(tmp_path: Path) -> None:
    started = time.perf_counter()
    clip = make_sample_video(tmp_path / "ten.mp4", seconds=10, faces=2)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0
    info = probe(clip)
    assert (info.frame_count, info.frame_rate, info.width, info.height) == (250, 25, 320, 240)
    assert info.has_audio and info.duration == pytest.approx(10.0)


def test_photo_video_pans_across_a_real_photo(tmp_path: Path) -> None:
    import insightface

    photo_path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    photo = cv2.imread(str(photo_path))
    assert photo is not None
    clip = make_photo_video(tmp_path / "photo.mp4", photo, seconds=1, width=320, height=240)
    info = probe(clip)
    assert (info.frame_count, info.width, info.height, info.has_audio) == (25, 320, 240, False)
    with FrameReader(info) as reader:
        frames = [f.image for f in reader]
    assert mean_abs_diff(frames[0], frames[-1]) > 10  # the window moved
    assert all(f.std() > 20 for f in frames)  # real picture content, not a flat fill


@pytest.mark.parametrize(
    ("width", "height", "faces"), [(320, 240, 1), (320, 240, 2), (640, 360, 5)]
)
def test_sample_faces_stay_inside_the_frame_and_apart(width: int, height: int, faces: int) -> None:
    for index in range(0, 300, 7):
        placed = face_positions(width, height, faces, index)
        assert len(placed) == faces
        for cx, cy, radius in placed:
            assert radius >= 0.1 * min(width, height)
            assert radius <= cx <= width - radius and radius <= cy <= height - radius
        for i, (x1, y1, r1) in enumerate(placed):
            for x2, y2, r2 in placed[i + 1 :]:
                assert np.hypot(x1 - x2, y1 - y2) > r1 + r2


def test_a_chunk_that_starts_after_a_change_of_size_refuses_the_file_as_a_local_swap_does(
    tmp_path: Path,
) -> None:
    """An MPEG-TS joined from 320x240 and 480x360 parts (no index: the chunk's seek lands on
    the second part's first keyframe). Its chunk read 480x360 before any frame of the probed
    size and failed the job as the system's fault (`media`, exit 1), where a local swap of
    the same file refuses it as the user's (a media probe's finding)."""
    parts = []
    for k, size in enumerate(("320x240", "480x360")):
        part = tmp_path / f"part{k}.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:d=2",
             "-c:v", "libx264", "-g", "50", "-preset", "ultrafast", str(part)],
            check=True, timeout=60,
        )  # fmt: skip
        parts.append(part)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    joined = tmp_path / "switch.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing),
         "-c", "copy", str(joined)],
        check=True, timeout=60,
    )  # fmt: skip
    info = probe(joined)
    assert (info.width, info.height) == (320, 240)
    second = info.start_pts + round(Fraction(2) / info.time_base)  # the second part's start
    with pytest.raises(InputError) as refused, FrameReader(info, start_pts=second) as reader:
        for _ in reader:
            pass
    assert refused.value.reason == Reason.BAD_INPUT
    assert "changes size mid-stream (320x240 to 480x360)" in str(refused.value)


def test_a_seek_that_lands_on_the_first_frame_keeps_a_size_mismatch_the_systems_fault(
    tmp_path: Path,
) -> None:
    """A chunk whose seek lands on the file's first frame (one keyframe for the whole clip)
    reads the very frames the probe measured: a size other than the probe's there is the
    probe's and the decoder's disagreement (media, exit 1), not the file changing size (review).
    The disagreement is made by telling the reader another size than the probe's."""
    clip = tmp_path / "one-key.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:d=2",
         "-c:v", "libx264", "-g", "1000", "-preset", "ultrafast", str(clip)],
        check=True, timeout=60,
    )  # fmt: skip
    info = dataclasses.replace(probe(clip), width=352, height=288)
    later = info.start_pts + round(Fraction(1) / info.time_base)  # 1 s in: lands on frame 0
    with pytest.raises(MediaError) as failed, FrameReader(info, start_pts=later) as reader:
        for _ in reader:
            pass
    assert "ffmpeg decodes 320x240 frames, the probe said 352x288" in str(failed.value)
