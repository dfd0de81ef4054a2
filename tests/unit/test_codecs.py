"""Which encoder and audio handling each output container gets, and which choices are refused."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.inputs import check_output
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.codecs import (
    ENCODERS,
    auto_nvenc,
    check_encoder,
    default_encoder,
    encoder_refusal,
    fleet_encoder,
    segment_muxer,
)
from facefusion_tasks.workspace import segment_path


@pytest.mark.parametrize(
    ("muxer", "default", "auto"),
    [
        ("mp4", "libx264", "h264_nvenc"),
        ("mov", "libx264", "h264_nvenc"),
        ("matroska", "libx264", "h264_nvenc"),
        ("webm", "libvpx-vp9", "av1_nvenc"),
    ],
)
def test_the_default_and_auto_encoders_fit_their_container(
    muxer: str, default: str, auto: str
) -> None:
    assert default_encoder(muxer) == default
    assert auto_nvenc(muxer) == auto
    assert encoder_refusal(default, muxer) is None
    assert encoder_refusal(auto, muxer) is None
    # Unset and auto resolve per container: they always fit.
    assert encoder_refusal("", muxer) is None and encoder_refusal("auto", muxer) is None


@pytest.mark.parametrize(
    ("encoder", "muxer"),
    [
        ("libvpx-vp9", "webm"),
        ("libsvtav1", "webm"),
        ("libaom-av1", "webm"),
        ("av1_nvenc", "webm"),
        ("libvpx-vp9", "mp4"),
        ("libsvtav1", "mp4"),
        ("libvpx-vp9", "matroska"),
        ("libx265", "matroska"),
        ("hevc_nvenc", "mov"),
    ],
)
def test_encoders_their_container_holds_are_accepted(encoder: str, muxer: str) -> None:
    check_encoder(encoder, muxer, width=320, height=240)


@pytest.mark.parametrize(
    ("encoder", "muxer", "message"),
    [
        ("libx264", "webm", "video encoder libx264 writes h264, which a webm file cannot hold "
         "(use libvpx-vp9, libsvtav1, libaom-av1, av1_nvenc or leave it unset)"),
        ("hevc_nvenc", "webm", "writes hevc, which a webm file cannot hold"),
        ("libvpx-vp9", "mov", "writes vp9, which a mov file cannot hold (use libx264, libx265"),
        ("libaom-av1", "mov", "writes av1, which a mov file cannot hold"),
        ("mpeg4", "mp4", "unknown video encoder 'mpeg4' (use auto, libx264,"),
    ],
)  # fmt: skip
def test_an_encoder_the_container_cannot_hold_is_refused_in_one_line(
    encoder: str, muxer: str, message: str
) -> None:
    with pytest.raises(InputError) as caught:
        check_encoder(encoder, muxer)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.reason is Reason.CONFIG  # exit 2, the user's choice


@pytest.mark.parametrize(("width", "height"), [(321, 240), (320, 241), (62, 120), (160, 48)])
def test_libsvtav1_refuses_odd_or_tiny_frames_that_the_others_encode(
    width: int, height: int
) -> None:
    refusal = encoder_refusal("libsvtav1", "webm", width=width, height=height)
    assert refusal == (
        "video encoder libsvtav1 needs even frame sizes of at least 64 pixels, this video is "
        f"{width}x{height} (use libaom-av1 or libvpx-vp9)"
    )
    for other in ("libaom-av1", "libvpx-vp9"):
        assert encoder_refusal(other, "webm", width=width, height=height) is None
    assert encoder_refusal("libsvtav1", "webm", width=64, height=64) is None


def test_libsvtav1_refuses_more_than_240_frames_a_second_up_front() -> None:
    # SVT-AV1 says "The maximum allowed frame rate is 240 fps" once ffmpeg has started; a
    # 300 fps video failed with ffmpeg's generic line, exit 1.
    size = {"width": 320, "height": 240}
    assert encoder_refusal("libsvtav1", "webm", frame_rate=Fraction(240), **size) is None
    assert encoder_refusal("libsvtav1", "webm", frame_rate=Fraction(300), **size) == (
        "video encoder libsvtav1 takes at most 240 fps, this video is 300 fps "
        "(use libaom-av1 or libvpx-vp9)"
    )
    assert encoder_refusal("libaom-av1", "webm", frame_rate=Fraction(1000), **size) is None
    assert fleet_encoder("", "libsvtav1", "webm", frame_rate=Fraction(1000), **size) == ""


def test_a_chunk_uses_the_jobs_choice_else_the_workers_when_it_fits_else_the_default() -> None:
    size = {"width": 320, "height": 240}
    assert fleet_encoder("libaom-av1", "libx265", "webm", **size) == "libaom-av1"
    assert fleet_encoder("", "libx265", "mp4", **size) == "libx265"
    assert fleet_encoder("", "auto", "webm", **size) == "auto"
    # A fleet set to an H.264/HEVC encoder still writes a WebM job, in the container's codec.
    assert fleet_encoder("", "libx265", "webm", **size) == ""
    assert fleet_encoder("", "libsvtav1", "webm", width=321, height=241) == ""
    assert fleet_encoder("", "", "webm", **size) == ""


def test_segments_are_webm_for_webm_outputs_and_mp4_otherwise(tmp_path: Path) -> None:
    assert segment_muxer("webm") == "webm"
    assert {segment_muxer(m) for m in ("mp4", "mov", "matroska")} == {"mp4"}
    settings = Settings.from_env({}, storage_roots=str(tmp_path))
    assert segment_path(settings, "j", 3, muxer="webm").name == "seg-00003.webm"
    assert segment_path(settings, "j", 3, muxer="matroska").name == "seg-00003.mp4"
    # mp4 segments hold every codec an mp4, mov or Matroska output may carry.
    for encoder in ENCODERS:
        if encoder_refusal(encoder, "matroska") is None:
            assert encoder_refusal(encoder, "mp4") is None


def test_webm_is_an_accepted_output_type(tmp_path: Path) -> None:
    target = tmp_path / "in.webm"
    check_output(tmp_path / "out.webm", target)
    with pytest.raises(InputError, match="unsupported output type"):
        check_output(tmp_path / "out.avi", target)


def test_frames_no_encoder_takes_and_rates_a_container_cannot_time_are_refused_up_front() -> None:
    # Each failed once ffmpeg had started (16400x16: exit 1 after the models loaded), or wrote
    # a file this tool's own reader refuses (1200 fps in Matroska: 20 of 120 frames shared a
    # millisecond timestamp).
    with pytest.raises(InputError, match="at most 16384 pixels a side") as wide:
        check_encoder("", "mp4", width=16400, height=16, frame_rate=Fraction(25))
    assert wide.value.reason is Reason.TOO_LARGE
    check_encoder("", "mp4", width=16384, height=16, frame_rate=Fraction(25))
    for muxer in ("matroska", "webm"):
        with pytest.raises(InputError, match="milliseconds") as fine:
            check_encoder("", muxer, width=320, height=240, frame_rate=Fraction(1200))
        assert fine.value.reason is Reason.BAD_OUTPUT
        check_encoder("", muxer, width=320, height=240, frame_rate=Fraction(1000))
    check_encoder("", "mp4", width=320, height=240, frame_rate=Fraction(1200))
