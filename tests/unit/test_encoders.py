"""Encoder and decoder choice on this host's real ffmpeg: nvenc and -hwaccel cuda are listed by
the build but cannot run without an NVIDIA GPU, so neither is chosen nor claimed."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from facefusion_tasks import observe
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.pipeline import _proven_hwaccel
from facefusion_tasks.video import ffbin
from facefusion_tasks.video.writer import choose_encoder


@pytest.fixture(scope="module")
def exe() -> str:
    found = ffbin.ffmpeg_exe()
    # The trap this module guards: Debian's ffmpeg lists nvenc and cuda on a GPU-less host.
    assert "h264_nvenc" in ffbin.encoders(found) and "cuda" in ffbin.hwaccels(found)
    return found


def encodes(encoder: str) -> float:
    return observe.metrics().video_encodes_total.labels(encoder=encoder)._value.get()  # type: ignore[no-any-return]


def test_auto_picks_libx264_where_the_nvenc_trial_fails_and_counts_it(
    exe: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="facefusion_tasks.video.writer")
    before = encodes("libx264")
    assert choose_encoder("auto", exe) == "libx264"
    assert encodes("libx264") == before + 1
    assert "video encoder auto -> libx264" in caplog.text


def test_explicit_nvenc_that_cannot_encode_is_refused_before_the_job(exe: str) -> None:
    with pytest.raises(InputError, match="h264_nvenc is listed by .* but cannot encode here"):
        choose_encoder("h264_nvenc", exe)


def test_unset_is_the_containers_default_and_auto_falls_back_to_it(exe: str) -> None:
    # CI's apt ffmpeg 5.1 has every software encoder a WebM output may use, and Opus.
    assert {"libvpx-vp9", "libsvtav1", "libaom-av1", "libopus", "aac"} <= ffbin.encoders(exe)
    assert choose_encoder("", exe, "mp4") == "libx264"
    assert choose_encoder("", exe, "matroska") == "libx264"
    assert choose_encoder("", exe, "webm") == "libvpx-vp9"
    # auto tries av1_nvenc for WebM: absent from 5.1, and without NVENC it could not encode.
    assert choose_encoder("auto", exe, "webm") == "libvpx-vp9"
    assert choose_encoder("libsvtav1", exe, "webm") == "libsvtav1"


def test_an_encoder_that_cannot_serve_the_container_is_refused_before_any_encode(exe: str) -> None:
    with pytest.raises(InputError, match="libx264 writes h264, which a webm file cannot hold"):
        choose_encoder("libx264", exe, "webm")
    with pytest.raises(InputError, match="av1_nvenc (is not available|is listed by .* but)"):
        choose_encoder("av1_nvenc", exe, "webm")
    with pytest.raises(InputError, match="libsvtav1 needs even frame sizes"):
        choose_encoder("libsvtav1", exe, "webm", width=321, height=240)


def test_an_unknown_encoder_counts_as_other() -> None:
    assert observe.metrics().bounded_encoder("h264_vaapi") == "other"
    assert observe.metrics().bounded_encoder("libx265") == "libx265"
    assert observe.metrics().bounded_encoder("libvpx-vp9") == "libvpx-vp9"


def test_hwaccel_cuda_is_not_claimed_when_ffmpeg_cannot_decode_on_the_gpu(exe: str) -> None:
    assert ffbin.hwaccel_works(exe, "cuda") is False
    assert ffbin.effective_hwaccel(exe, "cuda") == "none"
    assert _proven_hwaccel(Settings.from_env({}, hwaccel="cuda")) == "none"
    assert _proven_hwaccel(Settings.from_env({}, hwaccel="none")) == "none"


def test_the_hwaccel_trial_sample_is_real_h264_that_decodes_in_software(exe: str) -> None:
    # Otherwise "the GPU trial failed" above could mean "the sample was broken".
    sample = ffbin.h264_sample(exe)
    assert sample
    done = subprocess.run(
        [exe, "-hide_banner", "-loglevel", "error", "-f", "h264", "-i", "pipe:0", "-f", "null", "-"],
        input=sample, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_run_asked_for_nvenc_auto_and_cuda_decoding_reports_what_really_ran(
    settings: Settings, tmp_path: Path
) -> None:
    import cv2

    from facefusion_tasks.faces.synthetic import background, draw_face
    from facefusion_tasks.local import run_local
    from facefusion_tasks.video.samples import make_sample_video

    source = tmp_path / "source.png"
    image = background(256, 256, 0)
    draw_face(image, 128, 128, 90)
    cv2.imwrite(str(source), image)
    target = make_sample_video(tmp_path / "in.mp4", seconds=0.4, faces=1, audio=False)
    asked = settings.replace(video_encoder="auto", hwaccel="cuda")
    result, _ = run_local(source, target, tmp_path / "out.mp4", settings=asked)
    summary = result.as_dict()
    assert summary["encoder"] == "libx264" and summary["hwaccel"] == "none"
    assert summary["frames"] == 10
