"""Limits checked before any decoding: image headers, frame size, chunk length and count."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.images import image_size
from facefusion_tasks.inputs import read_image
from facefusion_tasks.jobs import check_chunking, plan_chunks
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.argv import decode_argv, encode_argv, plain_input_args
from facefusion_tasks.video.probe import VideoInfo, check_frame_size


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".png", []),
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # lossy: VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless: VP8L
    ],
)
def test_the_header_gives_the_size_opencv_decodes(
    tmp_path: Path, suffix: str, params: list[int]
) -> None:
    path = tmp_path / f"image{suffix}"
    assert cv2.imwrite(str(path), np.full((37, 53, 3), 128, np.uint8), params)
    assert image_size(path) == (53, 37)
    assert read_image(path).shape == (37, 53, 3)


def test_an_image_over_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((10, 20, 3), np.uint8))
    with pytest.raises(InputError, match="image of 20x10 exceeds the limit of 199") as caught:
        read_image(path, max_pixels=199)
    assert caught.value.reason == Reason.TOO_LARGE
    assert read_image(path, max_pixels=200).shape == (10, 20, 3)


def test_a_file_that_is_no_known_image_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("just some text\n")
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert caught.value.reason == "not_an_image"


def test_a_frame_over_the_limit_is_refused() -> None:
    info = VideoInfo(
        path=Path("/v/big.mp4"), width=8192, height=8192, rotation=0,
        frame_rate=Fraction(25), time_base=Fraction(1, 25), frame_count=1, duration=0.04,
        start_pts=0, audio_codecs=(), video_codec="h264", pix_fmt="yuv420p",
        variable_frame_rate=False, stored_width=8192, stored_height=8192,
    )  # fmt: skip
    with pytest.raises(InputError, match="8192x8192 exceed") as caught:
        check_frame_size(info, max_frame_pixels=Settings().max_frame_pixels)
    assert caught.value.reason == Reason.TOO_LARGE
    check_frame_size(info, max_frame_pixels=8192 * 8192)


@pytest.mark.parametrize("value", ["0.000001", "0", "-1", "inf", "nan"])
def test_chunk_seconds_must_be_finite_and_above_the_floor(value: str) -> None:
    with pytest.raises(InputError, match="chunk seconds must be a finite number"):
        Settings.from_env({"FACEFUSION_CHUNK_SECONDS": value})


def test_the_chunk_floor_is_a_setting() -> None:
    settings = Settings.from_env(
        {"FACEFUSION_CHUNK_SECONDS": "0.2", "FACEFUSION_MIN_CHUNK_SECONDS": "0.1"}
    )
    assert settings.chunk_seconds == 0.2


def test_a_ten_hour_video_in_tiny_chunks_is_refused_before_planning() -> None:
    ten_hours = 10 * 3600.0
    with pytest.raises(InputError, match="72000 chunks, over the limit of 10000"):
        check_chunking(ten_hours, 0.5)
    assert check_chunking(ten_hours, 10) == 3600
    with pytest.raises(InputError, match="finite"):
        check_chunking(ten_hours, math.inf)


def test_the_plan_itself_never_exceeds_the_chunk_limit() -> None:
    pts = list(range(0, 60 * 100, 1))  # 100 s at 60 fps, time base 1/60
    with pytest.raises(InputError, match="over the limit of 10") as caught:
        plan_chunks(pts, Fraction(1, 60), chunk_seconds=1, max_chunks=10)
    assert caught.value.reason == Reason.TOO_LARGE
    with pytest.raises(InputError, match="at least 0.5"):
        plan_chunks(pts, Fraction(1, 60), chunk_seconds=0.000001)
    assert len(plan_chunks(pts, Fraction(1, 60), chunk_seconds=10, max_chunks=10)) == 10


def test_every_ffmpeg_input_of_a_user_file_is_confined_to_plain_files() -> None:
    confine = plain_input_args()
    assert confine[:2] == ["-protocol_whitelist", "file"]
    assert "hls" not in confine[3].split(",") and "concat" not in confine[3].split(",")
    decode = decode_argv("/v/in.mp4", seek_seconds=2.0)
    at = decode.index("-i")
    assert decode[at + 1] == "/v/in.mp4"
    assert decode[decode.index("-protocol_whitelist") + 1] == "file"
    assert decode.index("-format_whitelist") < at
    encode = encode_argv(
        "/v/out.mp4", width=64, height=64, time_base=Fraction(1, 25), audio_source="/v/in.mp4"
    )
    audio_at = encode.index("/v/in.mp4")
    assert encode[encode.index("-protocol_whitelist") + 1] == "file"
    assert encode.index("-format_whitelist") < audio_at


def test_a_swap_refuses_a_stored_probe_over_the_limit(settings: Settings, tmp_path: Path) -> None:
    # A chunk runs on the probe its plan stored: the limit holds there too, before decoding.
    from facefusion_tasks.pipeline import SwapJob, run_swap

    info = VideoInfo(
        path=tmp_path / "big.mp4", width=8192, height=8192, rotation=0,
        frame_rate=Fraction(25), time_base=Fraction(1, 25), frame_count=1, duration=0.04,
        start_pts=0, audio_codecs=(), video_codec="h264", pix_fmt="yuv420p",
        variable_frame_rate=False, stored_width=8192, stored_height=8192,
    )  # fmt: skip
    job = SwapJob(sources=(tmp_path / "s.png",), target=info.path, output=tmp_path / "out.mp4")
    with pytest.raises(InputError, match="exceed the limit"):
        run_swap(job, None, settings, info=info)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_chunk_floor_itself_must_be_positive(value: str) -> None:
    with pytest.raises(InputError, match="MIN_CHUNK_SECONDS must be positive"):
        Settings.from_env({"FACEFUSION_MIN_CHUNK_SECONDS": value})


def test_stage_queues_hold_fewer_large_frames() -> None:
    from facefusion_tasks.config import Settings
    from facefusion_tasks.pipeline import queue_slots

    settings = Settings.from_env({})
    assert queue_slots(settings, 1280, 720) == settings.queue_frames  # 2.8 MB frames: all 32
    assert queue_slots(settings, 3840, 2160) == 10  # 25 MB frames: 256 MiB holds 10
    assert queue_slots(settings, 7680, 4320) == 2  # 100 MB frames: 256 MiB holds 2
    tight = settings.replace(queue_bytes=1)
    assert queue_slots(tight, 7680, 4320) == 2  # never fewer than 2
