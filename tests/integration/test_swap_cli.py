"""`facefusion-tasks swap` end to end: real ffmpeg, real onnxruntime, stand-in models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from facefusion_tasks.faces.synthetic import background, bundled_photo
from facefusion_tasks.video.samples import make_photo_video, make_sample_video
from tests.media import (
    WITH_BEEPS,
    audio_duration,
    beep_onsets,
    decode_frames,
    decoded_audio_seconds,
    ffprobe_json,
    streams,
    video_length,
    video_times,
    write_beeping_flv,
    write_gif,
    write_source_face,
)


def run_cli(
    *args: str | Path, models: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    environment |= {"FACEFUSION_MODELS_DIR": str(models), "FACEFUSION_EXECUTION_PROVIDER": "cpu"}
    environment |= {"FACEFUSION_ALLOW_STANDIN_MODELS": "1"}
    environment |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=240,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    source = root / "source.png"
    write_source_face(source)
    noface = root / "noface.png"
    cv2.imwrite(str(noface), background(200, 200, 0))
    return {
        "source": source,
        "noface_source": noface,
        "faces": make_sample_video(root / "faces.mp4", seconds=2, faces=2, audio=True),
        "none": make_sample_video(root / "none.mp4", seconds=1, faces=0, audio=False),
        "vfr": make_sample_video(
            root / "vfr.mov",
            seconds=2,
            width=321,
            height=241,
            faces=1,
            audio=True,
            variable_frame_rate=True,
            rotation=90,
        ),  # fmt: skip
        "photo": make_photo_video(
            root / "photo.mp4",
            cv2.imread(str(bundled_photo("t1.jpg"))),
            seconds=1,
            width=480,
            height=320,
        ),
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


def test_swap_keeps_timing_and_audio_and_changes_only_faces(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], media["faces"], "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    frames_in = decode_frames(media["faces"])
    frames_out = decode_frames(out)
    assert summary["frames"] == len(frames_in) == len(frames_out) == 50
    assert summary["faces_swapped"] == 2 * len(frames_in)
    assert summary["standin_models"] is True
    assert set(summary["stage_seconds"]) >= {"decode", "detect", "swap", "paste", "encode"}
    assert video_times(out) == video_times(media["faces"])
    assert audio_duration(out) == pytest.approx(audio_duration(media["faces"]), abs=0.05)
    # Faces changed a lot; far from them, only codec noise.
    from facefusion_tasks.video.samples import face_positions

    for index in (0, 25, 49):
        diff = _diff(frames_in[index], frames_out[index])
        far = np.ones(diff.shape, bool)
        for cx, cy, r in face_positions(320, 240, 2, index):
            assert diff[int(cy), int(cx)] > 40  # the centre of each face was swapped
            yy, xx = np.ogrid[: diff.shape[0], : diff.shape[1]]
            far &= (xx - cx) ** 2 + (yy - cy) ** 2 > (1.6 * r) ** 2
        assert np.percentile(diff[far], 99) <= 12


def test_video_without_faces_passes_through_unchanged(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mkv"
    proc = run_cli("swap", media["source"], media["none"], "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["faces_swapped"] == 0
    before, after = decode_frames(media["none"]), decode_frames(out)
    assert len(before) == len(after)
    # Only codec noise: a decode→bgr24→yuv420p re-encode stays well above 33 dB PSNR.
    assert min(_psnr(a, b) for a, b in zip(before, after, strict=True)) > 33.0
    assert not [s for s in streams(out) if s["codec_type"] == "audio"]


def test_variable_rate_rotated_odd_sized_video_survives(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mov"
    proc = run_cli("swap", media["source"], media["vfr"], "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert video_times(out) == video_times(media["vfr"])
    before, after = decode_frames(media["vfr"]), decode_frames(out)
    assert len(before) == len(after)
    assert before[0].shape == after[0].shape == (321, 241, 3)  # displayed upright, odd sizes kept
    assert json.loads(proc.stdout)["faces_swapped"] > 0
    assert audio_duration(out) == pytest.approx(audio_duration(media["vfr"]), abs=0.05)


def test_an_mpeg_program_stream_is_swapped_with_every_frame_and_its_sound(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    # DVD and camcorder .mpg: MPEG-2 with B-frames, MP2 audio, a pts on only some packets.
    # It was refused as "frames repeat another's timestamp" (a missing pts read as the dts).
    mpg = tmp_path / "dvd.mpg"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(media["faces"]), "-c:v", "mpeg2video", "-bf", "2",
         "-b:v", "2M", "-c:a", "mp2", "-f", "mpeg", str(mpg)],
        check=True, timeout=60,
    )  # fmt: skip
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], mpg, "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["faces_swapped"] > 0
    assert video_times(out) == video_times(media["faces"])  # 50 frames, 25 fps, as encoded
    assert audio_duration(out) == pytest.approx(audio_duration(media["faces"]), abs=0.05)


@pytest.mark.parametrize(
    ("name", "encode"),
    [
        # A camcorder's raw DV (PAL: 720x576, interlaced, PCM sound).
        ("tape.dv", ["-s", "720x576", "-c:v", "dvvideo", "-pix_fmt", "yuv420p", "-c:a",
                     "pcm_s16le", "-ar", "48000", "-ac", "2", "-f", "dv"]),
        # Broadcast and editing MXF (OP1a, MPEG-2 and PCM).
        ("broadcast.mxf", ["-c:v", "mpeg2video", "-b:v", "2M", "-c:a", "pcm_s16le",
                           "-ar", "48000"]),
    ],
)  # fmt: skip
def test_dv_and_mxf_are_swapped_with_every_frame_and_their_sound(
    media: dict[str, Path], models_dir: Path, tmp_path: Path, name: str, encode: list[str]
) -> None:
    # Both were refused as "not a video file this accepts": their demuxers were not on the
    # list of those that read one self-contained file.
    target = tmp_path / name
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(media["faces"]), *encode, str(target)],
        check=True, timeout=60,
    )  # fmt: skip
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], target, "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert video_times(out) == video_times(target) and len(video_times(out)) == 50
    assert audio_duration(out) == pytest.approx(2.0, abs=0.05)


def test_an_flv_whose_sound_starts_before_its_picture_keeps_all_of_it_in_sync(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    # H.264 with B-frames and AAC in FLV, as ffmpeg and OBS write it: the picture starts 21 ms
    # after the sound, and ffmpeg's FLV seek to there landed 1.5 s later, on the second
    # keyframe: the first beeps were gone.
    flv = write_beeping_flv(tmp_path / "stream.flv")
    assert len(beep_onsets(flv)) == 3
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], flv, "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert len(video_times(out)) == 75
    assert decoded_audio_seconds(out) == pytest.approx(3.0, abs=0.03)
    assert beep_onsets(out) == pytest.approx(beep_onsets(flv), abs=0.005)


def test_a_gifs_long_last_frame_keeps_its_time(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    # Its last picture stays 0.48 s; given one average step (0.21 s), the output ended early.
    gif = write_gif(tmp_path / "in.gif", [70, 230, 50, 310, 120, 480])
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], gif, "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert video_times(out) == video_times(gif)
    assert video_length(out) == video_length(gif) == Fraction(126, 100)


def test_real_photo_video_changes_where_faces_were_found(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "photo-out.mp4"
    proc = run_cli("swap", media["source"], media["photo"], "-o", out, "--json", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames_with_faces"] == summary["frames"] > 0
    before, after = decode_frames(media["photo"]), decode_frames(out)
    assert len(before) == len(after)
    assert all(_diff(a, b).max() > 40 for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("text", "not a video"),
        ("image", "not a video"),
        ("truncated", "truncated"),
        ("audio_cut", "truncated or corrupt audio or subtitles (stream 1, offset"),
        # Refused before the swap: the OS refused it only at the final rename.
        ("long_name", "aaaa…: file name longer than 255 bytes"),
        ("file_as_directory", "faces.mp4 is not a directory"),
        ("noface", "no face found in the source image"),
        ("unwritable", "does not exist"),
        ("bad_suffix", "unsupported output type"),
        # Bytes that are not UTF-8 in a name: OpenCV segfaulted on images, ffmpeg-python
        # raised an internal UnicodeEncodeError on videos and outputs.
        ("not_utf8_source", "source\\xff.png: name is not valid UTF-8; rename it"),
        ("not_utf8_reference", "source\\xff.png: name is not valid UTF-8; rename it"),
        ("not_utf8_target", "faces\\xff.mp4: name is not valid UTF-8; rename it"),
        ("not_utf8_image_target", "photo\\xff.png: name is not valid UTF-8; rename it"),
        ("not_utf8_output", "out\\xff.mp4: name is not valid UTF-8; rename it"),
        ("trailing_slash", "out.mp4/: names a directory, not a file"),
        ("work_dir", "out.mp4: output is inside the work directory"),
        # A symlink loop was an internal RuntimeError from Path.resolve (Python < 3.13).
        ("loop_target", "loop.mp4: is a symlink loop"),
        ("loop_source", "loop.mp4: is a symlink loop"),
        ("loop_output", "loop.mp4: is a symlink loop"),
        # SVT-AV1 refuses over 240 fps once ffmpeg runs: it was exit 1, ffmpeg's generic line.
        ("svtav1_fast", "video encoder libsvtav1 takes at most 240 fps, this video is 300 fps"),
        # As a submitted job's plan refuses it: a local swap let the muxer move 23 of them a
        # tick each, with no word.
        ("repeated_times", "jumpy.mp4: 23 of 90 frames repeat another's timestamp"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(
    case: str, message: str, media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    source, target, out = media["source"], media["faces"], tmp_path / "out.mp4"
    out_arg: str | Path = out
    extra: list[str | Path] = []
    env: dict[str, str] = {}
    if case == "missing":
        target = tmp_path / "nope.mp4"
    elif case == "empty":
        target = tmp_path / "empty.mp4"
        target.touch()
    elif case == "text":
        target = tmp_path / "notes.mp4"
        target.write_text("this is not a video\n" * 100)
    elif case == "image":
        # A photo named .png is an image target; one named like a video is not a video.
        target = tmp_path / "still.mp4"
        target.write_bytes(media["source"].read_bytes())
    elif case == "truncated":
        data = media["faces"].read_bytes()
        target = tmp_path / "cut.mp4"
        target.write_bytes(data[: len(data) // 2])
    elif case == "audio_cut":
        # Only the last audio samples are missing: the probe reads the video stream alone, so
        # the encoder, which copies the audio, is the one to find it.
        data = media["faces"].read_bytes()
        target = tmp_path / "audio_cut.mp4"
        target.write_bytes(data[:-200])
    elif case == "long_name":
        out = out_arg = tmp_path / ("a" * 300 + ".mp4")
    elif case == "noface":
        source = media["noface_source"]
    elif case == "unwritable":
        out = out_arg = tmp_path / "no-such-dir" / "out.mp4"
    elif case == "file_as_directory":
        out = out_arg = media["faces"] / "out.mp4"
    elif case == "bad_suffix":
        out = out_arg = tmp_path / "out.txt"
    elif case == "not_utf8_source":
        source = _not_utf8(source, tmp_path / "source.png")
    elif case == "not_utf8_reference":
        extra = ["--reference-face", _not_utf8(source, tmp_path / "source.png")]
    elif case == "not_utf8_target":
        target = _not_utf8(target, tmp_path / "faces.mp4")
    elif case == "not_utf8_image_target":
        target, out = _not_utf8(source, tmp_path / "photo.png"), tmp_path / "out.png"
        out_arg = out
    elif case == "not_utf8_output":
        out_arg = tmp_path / os.fsdecode(b"out\xff.mp4")
    elif case == "trailing_slash":
        out_arg = f"{out}/"  # it wrote out.mp4
    elif case == "work_dir":
        # A fleet's work directory (these roots' default one): its files go when jobs end.
        env = {"FACEFUSION_STORAGE_ROOTS": str(tmp_path)}
        out = out_arg = tmp_path / ".facefusion-work" / "out.mp4"
        out.parent.mkdir()
    elif case.startswith("loop_"):
        loop = tmp_path / "loop.mp4"
        loop.symlink_to(tmp_path / "other.mp4")
        (tmp_path / "other.mp4").symlink_to(loop)
        source, target, out = {
            "loop_target": (source, loop, out),
            "loop_source": (loop, target, out),
            "loop_output": (source, target, loop),
        }[case]
        out_arg = out
    elif case == "svtav1_fast":
        target, out = tmp_path / "fast.mp4", tmp_path / "out.webm"
        out_arg, extra = out, ["--video-encoder", "libsvtav1"]
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=300:d=0.2",
             "-c:v", "libx264", "-preset", "ultrafast", str(target)],
            check=True,
        )  # fmt: skip
    elif case == "repeated_times":
        target = tmp_path / "jumpy.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=30:d=3", "-vf",
             "setpts='trunc(N*20+10*mod(N*7,3))/600/TB'", "-fps_mode", "passthrough",
             "-video_track_timescale", "600", "-pix_fmt", "yuv420p", "-c:v", "libx264",
             str(target)],
            check=True,
        )  # fmt: skip
    # The audio case fails mid-video, after the progress bar began: without --no-progress, a
    # captured stderr (not a terminal) must still hold the one line alone, no bar before it.
    quiet = [] if case == "audio_cut" else ["--no-progress"]
    proc = run_cli(
        "swap", source, target, "-o", out_arg, *quiet, *extra, models=models_dir, env=env
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert message in lines[0]
    # (Path.exists raises for a name over 255 bytes)
    assert not os.path.exists(out) and not os.path.exists(out_arg)
    assert (
        not [p for p in out.parent.glob("*") if p.name.startswith(".")]
        if out.parent.exists()
        else True
    )


def test_a_quoted_tilde_names_a_directory_called_tilde_never_home(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    # The shell expands an unquoted ~. A quoted one was checked as ./~ but written to $HOME:
    # -o '~/clip.mp4' replaced the target that lay there, past the output-is-target check.
    home = tmp_path / "home"
    home.mkdir()
    target = home / "clip.mp4"
    shutil.copy(media["none"], target)
    before = target.read_bytes()
    (tmp_path / "~").mkdir()
    done = run_cli("swap", media["source"], target, "-o", "~/clip.mp4", "--no-progress",
                   models=models_dir, env={"HOME": str(home)}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == before
    assert video_times(tmp_path / "~" / "clip.mp4") == video_times(target)
    # An input so named is read there too (it was looked for in $HOME).
    again = run_cli("swap", media["source"], "~/clip.mp4", "-o", "again.mp4", "--no-progress",
                    models=models_dir, env={"HOME": str(home)}, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert video_times(tmp_path / "again.mp4") == video_times(target)


def _not_utf8(original: Path, named: Path) -> Path:
    """A copy of `original` named as `named` with a byte that is not UTF-8 before its suffix."""
    copy = named.with_name(os.fsdecode(named.stem.encode() + b"\xff" + named.suffix.encode()))
    copy.write_bytes(original.read_bytes())
    return copy


def test_an_output_name_near_the_limit_is_written(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / ("b" * 250 + ".mp4")  # its temp's name would pass 255 bytes uncut
    proc = run_cli("swap", media["source"], media["none"], "-o", out, "--no-progress",
                   models=models_dir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_missing_models_is_a_clear_internal_error(media: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli(
        "swap", media["source"], media["faces"], "-o", tmp_path / "o.mp4", models=tmp_path
    )
    assert proc.returncode == 1
    assert "models missing" in proc.stderr and "Traceback" not in proc.stderr


def test_an_mp4_whose_edit_list_ends_before_its_last_packet_is_swapped(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    # The concat filter's VFR into mp4 (B-frames): the edit list ends before the last packet,
    # which the index still counts. A local swap refused the file ("decoded 75 frames,
    # expected 76") that a submitted job, whose plan demuxes every packet, swapped; both now
    # count with that demux pass.
    clip = tmp_path / "joined.mp4"
    parts = [("30", "1.3"), ("10", "1.2"), ("25", "1.0")]
    inputs = [
        a
        for rate, d in parts
        for a in ("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate={rate}:d={d}")
    ]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex",
         "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]", "-fps_mode", "vfr",
         "-video_track_timescale", "90000", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(clip)],
        check=True, timeout=60,
    )  # fmt: skip
    indexed = int(streams(clip)[0]["nb_frames"])
    decoded = len(decode_frames(clip))
    assert indexed == decoded + 1  # what the index promises
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], clip, "-o", out, "--no-progress", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert len(video_times(out)) == decoded


def test_audio_shorter_than_the_video_never_costs_frames(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short-audio.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(media["none"]), "-f", "lavfi", "-i",
         "sine=frequency=440:duration=0.3", "-map", "0:v", "-map", "1:a", "-c:v", "copy",
         "-c:a", "aac", str(short)],
        check=True,
    )  # fmt: skip
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], short, "-o", out, "--no-progress", models=models_dir)
    assert proc.returncode == 0, proc.stderr
    assert video_times(out) == video_times(short)
    assert audio_duration(out) == pytest.approx(audio_duration(short), abs=0.05)


def test_the_readme_demo_runs_end_to_end_on_stand_ins(tmp_path: Path) -> None:
    proc = run_cli(
        "demo", "--dir", tmp_path / "demo", "--seconds", "1", models=tmp_path / "no-models"
    )
    assert proc.returncode == 0, proc.stderr
    assert "STAND-IN models" in proc.stderr.splitlines()[0]  # said plainly, first thing
    assert "faces were tinted, not swapped" in proc.stdout
    out = tmp_path / "demo" / "swapped.mp4"
    assert video_times(out) == video_times(tmp_path / "demo" / "sample.mp4")
    assert audio_duration(out) is not None


def test_threaded_stages_write_the_same_video_as_inline_ones(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    """Letterbox, box decoding, warps and paste-back in a pool (overlapping the models and the
    pipes) change nothing in the output: the decoded frames equal an all-inline run's."""
    outputs = {}
    for threads in ("0", "3"):
        out = tmp_path / f"threads-{threads}.mp4"
        done = run_cli(
            "swap", media["source"], media["faces"], "-o", out, "--batch-size", "3",
            models=models_dir, env={"FACEFUSION_CPU_THREADS": threads},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs[threads] = decode_frames(out)
    assert len(outputs["0"]) == len(outputs["3"]) > 0
    for inline, threaded in zip(outputs["0"], outputs["3"], strict=True):
        assert np.array_equal(inline, threaded)


def test_a_swap_with_its_standard_descriptors_closed_still_swaps(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    # `swap … 2>&-` failed every swap (exit 1): Python set sys.stderr to None, and the first
    # capture of a decoder's warnings called its flush(). /dev/null now stands in for them.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    environment |= {"FACEFUSION_MODELS_DIR": str(models_dir), "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
                    "FACEFUSION_EXECUTION_PROVIDER": "cpu"}  # fmt: skip
    out = tmp_path / "closed.mp4"
    done = subprocess.run(
        ["bash", "-c", 'exec "$@" <&- >&- 2>&-', "swap", sys.executable, "-m", "facefusion_tasks",
         "swap", "--no-progress", str(media["source"]), str(media["faces"]), "-o", str(out)],
        env=environment, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert len(video_times(out)) == len(video_times(media["faces"]))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_swap_stops_ffmpeg_and_leaves_nothing(
    signum: int, media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    """`timeout`, a service manager or a closed terminal ends a swap as Ctrl-C does: its
    ffmpeg processes stop and no hidden partial file is left to grow beside the destination."""
    clip = make_sample_video(tmp_path / "long.mp4", seconds=8, width=960, height=540, faces=2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    environment |= {"FACEFUSION_MODELS_DIR": str(models_dir), "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
                    "FACEFUSION_EXECUTION_PROVIDER": "cpu"}  # fmt: skip
    argv = [sys.executable, "-m", "facefusion_tasks", "swap", "--no-progress"]
    proc = subprocess.Popen(
        [*argv, str(media["source"]), str(clip), "-o", str(out_dir / "x.mp4")],
        stderr=subprocess.PIPE, text=True, env=environment,
        # Not ignored, as under `nohup` (the command leaves an ignored signal ignored).
        preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in out_dir.iterdir()):  # the encoder is writing
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert stderr.strip().splitlines() == [
        f"facefusion-tasks: interrupted ({signal.Signals(signum).name})"
    ]
    time.sleep(1.0)  # an orphaned encoder would still be writing now
    assert list(out_dir.iterdir()) == []
    assert not [pid for pid in _pids() if str(out_dir) in _cmdline(pid)]


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _late_sound(path: Path, offset: float, *args: str) -> Path:
    """testsrc2 320x240, 25 fps, 4 s, with WITH_BEEPS starting `offset` s after the picture."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=4",
         "-itsoffset", str(offset), "-f", "lavfi", "-i", f"{WITH_BEEPS}:d=6",
         "-map", "0:v", "-map", "1:a", "-c:v", "libx264", *args, str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("ffmpeg", ["ffmpeg", imageio_ffmpeg.get_ffmpeg_exe()])
def test_sound_that_starts_after_the_picture_keeps_its_offset_and_ends_with_it(
    media: dict[str, Path], models_dir: Path, tmp_path: Path, ffmpeg: str
) -> None:
    # MPEG-TS and PS: the ffmpeg CLI moved an input's start to its earliest stream in use, and
    # the sound input used no video: the sound came out 0.79 s early (Debian's 5.1, 9.0 too).
    # Transcoded (PCM): the input's -t counted from the sound's first sample, and the file
    # played 1.3 s of sound past its last frame.
    env = {"FACEFUSION_FFMPEG": ffmpeg}
    cases = [
        (_late_sound(tmp_path / "late.ts", 0.8, "-c:a", "aac"), "out-ts.mkv"),
        (
            _late_sound(
                tmp_path / "late.vob", 0.8, "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "vob"
            ),
            "out-ps.mp4",
        ),  # fmt: skip
        (_late_sound(tmp_path / "late.mov", 1.3, "-c:a", "pcm_s16le"), "out-pcm.mp4"),
    ]
    for target, name in cases:
        out = tmp_path / name
        proc = run_cli("swap", media["source"], target, "-o", out, models=models_dir, env=env)
        assert proc.returncode == 0, (target, proc.stderr)
        assert len(video_times(out)) == 100
        within = [t for t in beep_onsets(target) if t < 3.9]  # the picture's 4 s
        assert beep_onsets(out) == pytest.approx(within, abs=0.03), target
        duration = float(
            ffprobe_json(out, "-show_entries", "format=duration")["format"]["duration"]
        )
        assert duration == pytest.approx(4.0, abs=0.05), (target, duration)


def test_damage_in_the_first_frames_is_judged_alike_with_sound_or_without(
    media: dict[str, Path], models_dir: Path, tmp_path: Path
) -> None:
    # The writer reads a source's sound as a second input, whose video ffmpeg decodes while it
    # probes it: a damaged first frame there ("no frame!" of a recording cut mid-GOP, "error
    # while decoding MB") failed the encode, exit 1, where the same file without sound went
    # through (its picture is read, and its damage judged, by the reader).
    whole = tmp_path / "whole.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=4", "-f",
         "lavfi", "-i", "sine=d=4", "-c:v", "libx264", "-g", "50", "-c:a", "mp2", str(whole)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cut = tmp_path / "cut-mid-gop.ts"  # as a DVB or IPTV recording starts
    cut.write_bytes(whole.read_bytes()[188 * 300 :])
    out = tmp_path / "out.mp4"
    proc = run_cli("swap", media["source"], cut, "-o", out, models=models_dir)
    assert proc.returncode == 0, proc.stderr
    kinds = [s["codec_type"] for s in streams(out)]
    assert kinds == ["video", "audio"] and len(video_times(out)) >= 40
