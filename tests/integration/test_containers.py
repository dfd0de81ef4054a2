"""Outputs in WebM (VP9, AV1) and audio that changes codec to fit its container, with real
ffmpeg: local swaps, the writer's staging, a refusal before any work, and a distributed job."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import redis

from facefusion_tasks.config import Settings
from facefusion_tasks.producer import Producer
from facefusion_tasks.store import SUCCEEDED
from facefusion_tasks.video import ffbin
from facefusion_tasks.video.probe import frame_timestamps, probe
from facefusion_tasks.video.samples import synthetic_frame
from facefusion_tasks.video.writer import FrameWriter
from tests.cluster import Cluster, cluster, wait_for
from tests.integration.test_swap_cli import run_cli
from tests.media import (
    audio_codec,
    audio_duration,
    decode_frames,
    decoded_audio_seconds,
    ffprobe_json,
    storage_root,
    streams,
    video_times,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

#: The clips these tests swap into: VP9/Opus WebM (one at a variable frame rate), AAC mp4,
#: Vorbis Matroska, each two seconds of one small face.
CLIPS = {
    "vfr.webm": {"seconds": 2, "faces": 1, "audio": True, "variable_frame_rate": True},
    "cfr.webm": {"seconds": 2, "faces": 1, "audio": True},
    "aac.mp4": {"seconds": 2, "faces": 1, "audio": True},
    "vorbis.mkv": {"seconds": 2, "faces": 1, "audio": True, "audio_codec": "libvorbis"},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root with source.png, the clips and an empty out/; two-audio.mkv is aac.mp4's
    video with two audio tracks, AAC (eng) and Vorbis (fra), as a film with two languages."""
    root = storage_root(tmp_path_factory.mktemp("containers"), CLIPS)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-i", str(root / "vorbis.mkv"),
         "-map", "0:v", "-map", "0:a", "-map", "1:a", "-c", "copy",
         "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fra",
         str(root / "two-audio.mkv")],
        check=True, timeout=60,
    )  # fmt: skip
    # subs.mkv: aac.mp4 with an English SubRip track.
    (root / "subs.srt").write_text(
        "1\n00:00:00,200 --> 00:00:00,900\nHello there\n\n2\n00:00:01,000 --> 00:00:01,800\n"
        "General Kenobi\n"
    )
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-i", str(root / "subs.srt"),
         "-map", "0", "-map", "1", "-c", "copy", "-c:s", "srt", "-metadata:s:s:0", "language=eng",
         str(root / "subs.mkv")],
        check=True, timeout=60,
    )  # fmt: skip
    # anamorphic.mp4: pixels 4:3 wide (shown 64:27); its turned copy is shown upright, 27:64.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-vf", "setsar=4/3",
         "-c:v", "libx264", "-c:a", "copy", str(root / "anamorphic.mp4")],
        check=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "anamorphic.mp4"), "-c", "copy",
         "-metadata:s:v", "rotate=90", str(root / "anamorphic-turned.mp4")],
        check=True, timeout=60,
    )  # fmt: skip
    # pal601.mp4: BT.601's PAL widescreen pixel, 118:81 (a term over setsar's default max).
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-vf", "setsar=r=118/81:max=118",
         "-c:v", "libx264", "-c:a", "copy", str(root / "pal601.mp4")],
        check=True, timeout=60,
    )  # fmt: skip
    # movtext.mp4: the same as mp4's own timed text, which Matroska cannot take as it is.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "subs.mkv"), "-map", "0", "-c", "copy",
         "-c:s", "mov_text", str(root / "movtext.mp4")],
        check=True, timeout=60,
    )  # fmt: skip
    # delayed.mkv: the picture starts 0.5 s after the sound, which is silent until a tone at
    # 1.0 s (so the tone belongs 0.5 s into the picture), and a subtitle cue at 0.8 s.
    (root / "delayed.srt").write_text("1\n00:00:00,800 --> 00:00:01,200\nNow\n")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-itsoffset", "0.5", "-i", str(root / "aac.mp4"),
         "-f", "lavfi", "-i", "aevalsrc=if(gte(t\\,1)\\,0.5*sin(2*PI*440*t)\\,0):s=48000:d=2.5",
         "-i", str(root / "delayed.srt"),
         "-map", "0:v", "-map", "1:a", "-map", "2", "-c:v", "copy", "-c:a", "aac", "-c:s", "srt",
         str(root / "delayed.mkv")],
        check=True, timeout=60,
    )  # fmt: skip
    # preview-first.mkv: a 5-frame thumbnail track ahead of aac.mp4's picture, which is the
    # default; cover-first.mkv: a cover picture ahead of it.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-t", "0.2", "-vf", "scale=80:60",
         "-c:v", "libx264", "-an", str(root / "preview.mp4")],
        check=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "preview.mp4"), "-i", str(root / "aac.mp4"),
         "-map", "0:v", "-map", "1:v", "-map", "1:a", "-c", "copy",
         "-disposition:v:0", "0", "-disposition:v:1", "default", str(root / "preview-first.mkv")],
        check=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-i", str(root / "source.png"),
         "-map", "1", "-map", "0:v", "-map", "0:a", "-c", "copy", "-c:v:0", "mjpeg",
         "-disposition:v:0", "attached_pic", str(root / "cover-first.mkv")],
        check=True, timeout=60,
    )  # fmt: skip
    # anim.gif: aac.mp4's picture as an animated GIF at 10 fps (GIF ticks in 1/100 s).
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-vf", "fps=10", str(root / "anim.gif")],
        check=True, timeout=60,
    )  # fmt: skip
    # aac.ts: aac.mp4 in MPEG-TS, one keyframe at its start: every chunk but the first begins
    # where a seek in a file with no index lands after the span (decoding starts at the next
    # keyframe), so each must seek again further back.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "aac.mp4"), "-c", "copy", str(root / "aac.ts")],
        check=True, timeout=60,
    )  # fmt: skip
    return root


def first_frame(path: Path) -> float:
    """The first video frame's time in the file."""
    video = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time")
    return min(float(p["pts_time"]) for p in video["packets"])


def cues(path: Path) -> list[tuple[float, str]]:
    """(seconds from the first video frame, text) of each cue of the first subtitle stream:
    times from the packets themselves (`ffmpeg -f srt` would count from the file's start)."""
    packets = ffprobe_json(path, "-select_streams", "s:0", "-show_entries", "packet=pts_time,size")
    # mov_text also stores the gaps between cues, as empty (2-byte) samples.
    starts = sorted(float(p["pts_time"]) for p in packets["packets"] if int(p["size"]) > 2)
    srt = subtitles(path)[0][2]
    texts = [" ".join(block.splitlines()[2:]) for block in srt.strip().split("\n\n")]
    offset = first_frame(path)
    return [(round(t - offset, 3), text) for t, text in zip(starts, texts, strict=True)]


def tone_onset(path: Path) -> float:
    """Seconds from the first video frame to the first loud audio sample (the tone)."""
    audio = ffprobe_json(path, "-select_streams", "a:0", "-show_entries", "stream=start_time")
    audio_start = float(audio["streams"][0]["start_time"])
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", "48000",
         "-f", "s16le", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, np.int16)) > 2000)
    return audio_start + loud[0] / 48000 - first_frame(path)


def subtitles(path: Path) -> list[tuple[str, str, str]]:
    """(codec, language, the text as SubRip) of every subtitle stream, in order."""
    found = []
    for k, stream in enumerate(s for s in streams(path) if s["codec_type"] == "subtitle"):
        text = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:s:{k}", "-f", "srt", "-"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        tags = {key.lower(): value for key, value in stream.get("tags", {}).items()}
        found.append((str(stream["codec_name"]), str(tags.get("language", "")), text))
    return found


def audio_tracks(path: Path) -> list[tuple[str, str, float]]:
    """(codec, language, duration) of every audio stream, in order."""
    found = []
    for stream in streams(path):
        if stream["codec_type"] != "audio":
            continue
        tags = {key.lower(): value for key, value in stream.get("tags", {}).items()}
        if "duration" in stream:
            length = float(stream["duration"])
        else:  # Matroska keeps it only as a tag
            hours, minutes, secs = tags["duration"].split(":")
            length = int(hours) * 3600 + int(minutes) * 60 + float(secs)
        found.append((str(stream["codec_name"]), str(tags.get("language", "")), length))
    return found


def video_codec(path: Path) -> str:
    return str(next(s["codec_name"] for s in streams(path) if s["codec_type"] == "video"))


def swap(root: Path, models: Path, target: str, output: Path, *flags: str) -> dict:
    """`swap` in local mode; its JSON summary."""
    done = run_cli(
        "swap", root / "source.png", root / target, "-o", output, "--json", *flags, models=models
    )
    assert done.returncode == 0, done.stderr
    summary: dict = json.loads(done.stdout)
    return summary


def test_the_clips_are_what_they_claim(root: Path) -> None:
    assert (video_codec(root / "vfr.webm"), audio_codec(root / "vfr.webm")) == ("vp9", "opus")
    assert (video_codec(root / "aac.mp4"), audio_codec(root / "aac.mp4")) == ("h264", "aac")
    assert audio_codec(root / "vorbis.mkv") == "vorbis"
    times = video_times(root / "vfr.webm")
    steps = {b - a for a, b in zip(times, times[1:], strict=False)}
    assert len(steps) > 2  # really a variable frame rate


@pytest.mark.parametrize("clip", ["vfr.webm", "cfr.webm"])
def test_vp9_opus_webm_in_gives_webm_out_with_exact_frames_and_timestamps(
    root: Path, models_dir: Path, tmp_path: Path, clip: str
) -> None:
    output = tmp_path / "out.webm"
    summary = swap(root, models_dir, clip, output)
    assert summary["encoder"] == "libvpx-vp9" and summary["faces_swapped"] > 0
    assert video_codec(output) == "vp9"
    # Every frame, at exactly its own time (WebM ticks in ms, as the source does).
    assert video_times(output) == video_times(root / clip)
    assert summary["frames"] == len(decode_frames(output)) == len(video_times(root / clip))
    # Opus fits WebM: copied, its length kept.
    assert audio_codec(output) == "opus"
    source_audio, output_audio = audio_duration(root / clip), audio_duration(output)
    # Decoded, not only as the container says: every sample is there.
    assert decoded_audio_seconds(output) == pytest.approx(
        decoded_audio_seconds(root / clip), abs=0.05
    )
    assert source_audio is not None and output_audio == pytest.approx(source_audio, abs=0.05)


@pytest.mark.parametrize("clip", ["preview-first.mkv", "cover-first.mkv"])
@pytest.mark.parametrize("prober", ["ffprobe", "ffmpeg"])
def test_the_picture_is_the_stream_ffmpeg_would_pick_not_a_preview_or_cover_ahead_of_it(
    root: Path, monkeypatch: pytest.MonkeyPatch, clip: str, prober: str
) -> None:
    if prober == "ffmpeg":  # as with the imageio-ffmpeg wheel, which has no ffprobe
        monkeypatch.setattr(ffbin, "ffprobe_exe", lambda ffmpeg="": None)
    info = probe(root / clip)
    main = probe(root / "aac.mp4")
    assert info.video_stream == 1
    assert (info.width, info.height, info.frame_count) == (main.width, main.height, 50)
    assert info.duration == pytest.approx(main.duration, abs=0.01)
    times, time_base = frame_timestamps(root / clip, stream=info.video_stream)
    steps = {b - a for a, b in zip(times, times[1:], strict=False)}
    assert len(times) == 50 and steps == {40} and time_base == Fraction(1, 1000)  # 25 fps


@pytest.mark.parametrize("clip", ["preview-first.mkv", "cover-first.mkv"])
def test_a_swap_keeps_the_main_picture_when_another_video_stream_comes_first(
    root: Path, models_dir: Path, tmp_path: Path, clip: str
) -> None:
    output = tmp_path / "out.mkv"
    summary = swap(root, models_dir, clip, output)
    assert summary["frames"] == 50 and summary["faces_swapped"] > 0
    assert video_times(output) == video_times(root / "aac.mp4")
    assert audio_duration(output) == pytest.approx(audio_duration(root / "aac.mp4"), abs=0.05)


def test_aac_audio_written_to_webm_becomes_opus_and_keeps_its_length(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "from-mp4.webm"
    summary = swap(root, models_dir, "aac.mp4", output)
    assert summary["encoder"] == "libvpx-vp9"
    assert (video_codec(output), audio_codec(output)) == ("vp9", "opus")
    source_audio, output_audio = audio_duration(root / "aac.mp4"), audio_duration(output)
    # Decoded, not only as the container says: every sample is there.
    assert decoded_audio_seconds(output) == pytest.approx(
        decoded_audio_seconds(root / "aac.mp4"), abs=0.05
    )
    assert source_audio is not None and output_audio == pytest.approx(source_audio, abs=0.05)
    # The mp4's 1/12800 s ticks land on WebM's milliseconds: every frame, each within half a ms.
    got, want = video_times(output), video_times(root / "aac.mp4")
    assert len(got) == len(want) == 50
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= Fraction(1, 2000)


@pytest.mark.parametrize("clip", ["cfr.webm", "vorbis.mkv"])
def test_opus_or_vorbis_audio_written_to_mp4_becomes_aac(
    root: Path, models_dir: Path, tmp_path: Path, clip: str
) -> None:
    output = tmp_path / "out.mp4"
    summary = swap(root, models_dir, clip, output)
    assert summary["encoder"] == "libx264"
    assert (video_codec(output), audio_codec(output)) == ("h264", "aac")
    assert video_times(output) == video_times(root / clip)
    source_audio, output_audio = audio_duration(root / clip), audio_duration(output)
    # Decoded, not only as the container says: every sample is there.
    assert decoded_audio_seconds(output) == pytest.approx(
        decoded_audio_seconds(root / clip), abs=0.05
    )
    assert source_audio is not None and output_audio == pytest.approx(source_audio, abs=0.05)


@pytest.mark.parametrize(
    ("output", "codecs"),
    [("two.mkv", ["aac", "vorbis"]), ("two.mp4", ["aac", "aac"]), ("two.webm", ["opus", "vorbis"])],
)
def test_every_audio_track_is_kept_copied_where_it_fits_and_transcoded_where_not(
    root: Path, models_dir: Path, tmp_path: Path, output: str, codecs: list[str]
) -> None:
    # Matroska takes both as they are; mp4 takes the AAC and gets the Vorbis as AAC; WebM
    # takes the Vorbis and gets the AAC as Opus. Order, languages and lengths are kept.
    source = audio_tracks(root / "two-audio.mkv")
    assert [(c, lang) for c, lang, _ in source] == [("aac", "eng"), ("vorbis", "fra")]
    swap(root, models_dir, "two-audio.mkv", tmp_path / output)
    kept = audio_tracks(tmp_path / output)
    assert [(c, lang) for c, lang, _ in kept] == list(zip(codecs, ["eng", "fra"], strict=True))
    for (_, _, want), (_, _, got) in zip(source, kept, strict=True):
        assert got == pytest.approx(want, abs=0.05)
    for stream in range(2):  # decoded: every sample of both tracks is there
        assert decoded_audio_seconds(tmp_path / output, stream) == pytest.approx(
            decoded_audio_seconds(root / "two-audio.mkv", stream), abs=0.05
        )
    assert video_times(tmp_path / output) == video_times(root / "two-audio.mkv")


@pytest.mark.parametrize(
    ("source", "output", "codec"),
    [
        ("subs.mkv", "subs.mkv", "subrip"),
        ("subs.mkv", "subs.mp4", "mov_text"),
        ("subs.mkv", "subs.webm", "webvtt"),
        ("movtext.mp4", "movtext.mkv", "subrip"),
        # Copied, the empty sample before the first cue spanned the output's start (the
        # picture starts 23 ms in): every cue read 0.2 s early (a media probe found 6 s).
        ("movtext.mp4", "movtext.mp4", "mov_text"),
    ],
)
def test_text_subtitles_are_kept_in_a_codec_the_container_takes(
    root: Path, models_dir: Path, tmp_path: Path, source: str, output: str, codec: str
) -> None:
    [(_, _, source_text)] = subtitles(root / source)
    assert "General Kenobi" in source_text
    swap(root, models_dir, source, tmp_path / output)
    [(kept_codec, language, text)] = subtitles(tmp_path / output)
    assert (kept_codec, language) == (codec, "eng")
    # Every cue, at its time from the first frame (which starts 23 ms into the source).
    want = cues(root / source)
    assert cues(tmp_path / output) == want
    assert [t for _, t in want] == ["Hello there", "General Kenobi"]
    assert audio_tracks(tmp_path / output)[0][0] in {"aac", "opus"}  # the audio is still there


@pytest.mark.parametrize("output", ["delayed.mkv", "delayed.mp4", "delayed.webm"])
def test_sound_and_subtitles_stay_in_sync_when_the_picture_starts_late(
    root: Path, models_dir: Path, tmp_path: Path, output: str
) -> None:
    # The output starts at the first frame: the sound before it is left out, not played ahead.
    assert tone_onset(root / "delayed.mkv") == pytest.approx(0.5, abs=0.005)
    swap(root, models_dir, "delayed.mkv", tmp_path / output)
    assert tone_onset(tmp_path / output) == pytest.approx(0.5, abs=0.025)  # one AAC packet
    # Ending with the picture too: 2 s of sound, not the file's 2.5.
    assert decoded_audio_seconds(tmp_path / output) == pytest.approx(2.0, abs=0.05)
    assert cues(tmp_path / output) == [(0.3, "Now")]  # 0.8 s − 0.5 s


def start_times(path: Path) -> tuple[float, float]:
    """(video, audio) start times as players read them (mp4's edit lists applied)."""
    found = ffprobe_json(path, "-show_entries", "stream=codec_type,start_time")["streams"]
    start = {s["codec_type"]: float(s["start_time"]) for s in found}
    return start["video"], start["audio"]


@pytest.mark.parametrize("output", ["trimmed.mkv", "trimmed.mp4", "trimmed.webm"])
def test_sound_an_edit_list_hides_stays_hidden(
    root: Path, models_dir: Path, tmp_path: Path, output: str
) -> None:
    # A trimmed export (`-ss 0.5 -c copy`): the mp4 keeps the first half second of sound and
    # picture and hides it with an edit list; its demuxer hands those packets on, flagged
    # discard. Copied into Matroska they were kept, and ffmpeg 5.1 shifted the file to start
    # at the first: half a second of sound under no picture, the video starting at 0.5 s.
    trimmed = tmp_path / "trimmed-source.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", "0.5", "-i", str(root / "aac.mp4"), "-c", "copy",
         str(trimmed)],
        check=True, timeout=60,
    )  # fmt: skip
    shown = probe(trimmed).frame_count
    assert shown < len(video_times(trimmed))  # the hidden frames are stored
    swap(root, models_dir, str(trimmed), tmp_path / output)
    out = tmp_path / output
    picture, sound = start_times(out)
    # At most the packet that straddles the cut starts before the picture (AAC: 21 ms), and
    # Matroska shifts the file by what it does.
    assert picture == pytest.approx(0.0, abs=0.025)
    assert sound == pytest.approx(picture, abs=0.025)
    # Matroska keeps whole packets where mp4's edit lists cut to the sample: up to three AAC
    # packets (64 ms) more, against the half second the hidden packets added.
    assert decoded_audio_seconds(out) == pytest.approx(shown / 25, abs=0.065)
    assert len(video_times(out)) == shown


def shape(path: Path) -> tuple[int, int, str, str]:
    """Stored size, pixel shape and display shape of the video stream."""
    video = next(s for s in streams(path) if s["codec_type"] == "video")
    return (video["width"], video["height"], video["sample_aspect_ratio"],
            video["display_aspect_ratio"])  # fmt: skip


@pytest.mark.parametrize(
    ("source", "output", "expected"),
    [
        ("anamorphic.mp4", "wide.mp4", (320, 240, "4:3", "16:9")),
        ("anamorphic.mp4", "wide.mkv", (320, 240, "4:3", "16:9")),
        ("anamorphic-turned.mp4", "turned.mp4", (240, 320, "3:4", "9:16")),
        ("pal601.mp4", "pal601.mkv", (320, 240, "118:81", "472:243")),
    ],
)
def test_anamorphic_video_is_shown_as_wide_as_its_source(
    root: Path, models_dir: Path, tmp_path: Path, source: str, output: str,
    expected: tuple[int, int, str, str],
) -> None:  # fmt: skip
    # Decoded frames are stored pixels; the output says how wide each one is, as the source did
    # (before: square pixels, so a 16:9 picture came out 4:3).
    assert shape(root / "anamorphic.mp4")[2:] == ("4:3", "16:9")
    swap(root, models_dir, source, tmp_path / output)
    assert shape(tmp_path / output) == expected


@pytest.mark.parametrize("encoder", ["libsvtav1", "libaom-av1"])
def test_av1_webm_output_keeps_frames_and_timestamps(
    root: Path, models_dir: Path, tmp_path: Path, encoder: str
) -> None:
    output = tmp_path / f"{encoder}.webm"
    summary = swap(root, models_dir, "vfr.webm", output, "--video-encoder", encoder)
    assert summary["encoder"] == encoder
    assert (video_codec(output), audio_codec(output)) == ("av1", "opus")
    assert video_times(output) == video_times(root / "vfr.webm")
    assert len(decode_frames(output)) == summary["frames"]


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--video-encoder", "libx264"], {}, "libx264 writes h264, which a webm file cannot hold"),
        ([], {"FACEFUSION_VIDEO_ENCODER": "hevc_nvenc"}, "hevc_nvenc writes hevc"),
        # Fits WebM, but this ffmpeg (5.1) has no av1_nvenc, and this box no NVENC.
        (["--video-encoder", "av1_nvenc"], {}, "av1_nvenc"),
    ],
)
def test_an_encoder_webm_cannot_hold_or_this_ffmpeg_lacks_is_refused_before_any_work(
    root: Path, tmp_path: Path, flags: list[str], env: dict[str, str], message: str
) -> None:
    output = tmp_path / "out.webm"
    # No models at all: the refusal comes before they would be loaded (else: "models missing").
    done = run_cli(
        "swap", root / "source.png", root / "vfr.webm", "-o", output, "--no-progress", *flags,
        models=tmp_path / "no-models", env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_submit_refuses_an_encoder_webm_cannot_hold_and_enqueues_nothing(
    root: Path, redis_url: str
) -> None:
    env = {"FACEFUSION_BROKER_URL": redis_url, "FACEFUSION_STORAGE_ROOTS": str(root)}
    done = run_cli(
        "submit", root / "source.png", root / "vfr.webm", "-o", root / "out" / "never.webm",
        "--video-encoder", "libx265", models=root / "no-models", env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "libx265 writes hevc, which a webm file cannot hold" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert redis.Redis.from_url(redis_url).keys("*") == []
    assert not (root / "out" / "never.webm").exists()


def test_a_webm_writer_stages_a_hidden_webm_and_verifies_it_before_the_rename(
    tmp_path: Path,
) -> None:
    settings = Settings(video_preset="ultrafast")
    destination = tmp_path / "out.webm"
    steps = [0, 33, 83, 117, 167, 200]  # irregular, in ms
    writer = FrameWriter(
        destination, width=160, height=120, time_base=Fraction(1, 1000),
        audio_source=None, settings=settings,
    )  # fmt: skip
    for i, pts in enumerate(steps):
        writer.write(synthetic_frame(160, 120, 1, i), pts)
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(".out.") and temp.name.endswith(".partial.webm")
    assert writer.commit() == destination
    assert [p.name for p in tmp_path.iterdir()] == ["out.webm"]
    assert writer.encoder == "libvpx-vp9" and video_codec(destination) == "vp9"
    assert video_times(destination) == [Fraction(s, 1000) for s in steps]


# --- distributed ------------------------------------------------------------------------------


@pytest.fixture()
def fleet(root: Path, models_dir: Path) -> Iterator[Cluster]:
    # The fleet's own encoder is HEVC: a WebM job still gets VP9 (its container's default).
    with cluster(
        root, models_dir, visibility_timeout="12", chunk_time_limit="10", video_encoder="libx265"
    ) as c:
        yield c


def test_distributed_webm_jobs_stitch_vp9_segments_frame_exactly(
    fleet: Cluster, root: Path, tmp_path: Path
) -> None:
    fleet.start_worker("w1")
    # The producer chooses no encoder (its own FACEFUSION_VIDEO_ENCODER would be checked and
    # carried by the job): each chunk asks the worker's, which WebM cannot hold.
    producer = Producer(fleet.settings().replace(video_encoder=""))
    outputs = {"vfr.webm": root / "out" / "vfr-distributed.webm",
               "aac.mp4": root / "out" / "aac-distributed.webm",
               "two-audio.mkv": root / "out" / "two-distributed.webm",
               "subs.mkv": root / "out" / "subs-distributed.webm",
               "delayed.mkv": root / "out" / "delayed-distributed.mp4",
               "anamorphic.mp4": root / "out" / "anamorphic-distributed.mp4",
               "preview-first.mkv": root / "out" / "preview-first-distributed.mkv",
               "aac.ts": root / "out" / "ts-distributed.mp4",
               "anim.gif": root / "out" / "gif-distributed.mp4"}  # fmt: skip
    jobs = {
        clip: producer.submit(root / "source.png", root / clip, output, chunk_seconds=0.5)
        for clip, output in outputs.items()
    }
    for job_id in jobs.values():
        status = producer.wait(job_id, timeout=150)
        assert status.state == SUCCEEDED, (status.reason, status.error)
        assert status.chunks_total >= 2 and status.frames_done == status.frames_total
        work = root / ".facefusion-work" / job_id
        wait_for(lambda work=work: not work.exists(), timeout=15)
    vfr = outputs["vfr.webm"]
    assert (video_codec(vfr), audio_codec(vfr)) == ("vp9", "opus")
    # The stitched segments hold every frame at exactly the source's times: as local mode does.
    assert video_times(vfr) == video_times(root / "vfr.webm")
    local = tmp_path / "local.webm"
    done = subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", "swap", str(root / "source.png"),
         str(root / "vfr.webm"), "-o", str(local), "--no-progress"],
        env=fleet.env | {"FACEFUSION_BROKER_URL": "", "FACEFUSION_VIDEO_ENCODER": ""},
        capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert video_times(vfr) == video_times(local)
    assert audio_duration(vfr) == pytest.approx(audio_duration(root / "vfr.webm"), abs=0.05)
    assert decoded_audio_seconds(vfr) == pytest.approx(
        decoded_audio_seconds(root / "vfr.webm"), abs=0.05
    )
    # AAC cannot go into WebM: the stitch transcodes it to Opus and keeps its length.
    from_mp4 = outputs["aac.mp4"]
    assert (video_codec(from_mp4), audio_codec(from_mp4)) == ("vp9", "opus")
    assert len(video_times(from_mp4)) == 50
    assert audio_duration(from_mp4) == pytest.approx(audio_duration(root / "aac.mp4"), abs=0.05)
    assert decoded_audio_seconds(from_mp4) == pytest.approx(
        decoded_audio_seconds(root / "aac.mp4"), abs=0.05
    )
    # Two audio tracks: the stitch keeps both, the Vorbis copied, the AAC as Opus.
    two = outputs["two-audio.mkv"]
    kept = audio_tracks(two)
    assert [(c, lang) for c, lang, _ in kept] == [("opus", "eng"), ("vorbis", "fra")]
    for (_, _, want), (_, _, got) in zip(audio_tracks(root / "two-audio.mkv"), kept, strict=True):
        assert got == pytest.approx(want, abs=0.05)
    assert video_times(two) == video_times(root / "aac.mp4")
    # Subtitles: the stitch converts the SubRip track to WebVTT, every cue at its time.
    [(codec, language, text)] = subtitles(outputs["subs.mkv"])
    assert (codec, language) == ("webvtt", "eng")
    assert cues(outputs["subs.mkv"]) == cues(root / "subs.mkv")
    # A picture that starts 0.5 s into its file: the stitch leaves the sound before it out.
    delayed = outputs["delayed.mkv"]
    assert tone_onset(delayed) == pytest.approx(0.5, abs=0.025)
    assert decoded_audio_seconds(delayed) == pytest.approx(2.0, abs=0.05)
    assert cues(delayed) == [(0.3, "Now")]
    # Segments and the stitched file keep the source's pixel shape.
    assert shape(outputs["anamorphic.mp4"]) == (320, 240, "4:3", "16:9")
    # Every chunk decodes the main picture, not the thumbnail track ahead of it.
    assert video_times(outputs["preview-first.mkv"]) == video_times(root / "aac.mp4")
    # MPEG-TS cut into chunks: every frame once, at its time (90 kHz ticks, as the source's).
    assert video_times(outputs["aac.ts"]) == video_times(root / "aac.ts")
    assert len(video_times(outputs["aac.ts"])) == 50
    # A GIF's last frame lasts as long as its others (0.1 s), as in local mode: 20 frames, 2 s.
    gif = probe(outputs["anim.gif"])
    assert gif.frame_count == 20 and gif.duration == pytest.approx(2.0, abs=0.005), gif
