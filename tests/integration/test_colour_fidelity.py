"""Outside the faces a swap gives back the source's pixels: the trip through BGR keeps the luma
exactly and the colour tags as they were (real ffmpeg, lossless encoder settings)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facefusion_tasks.video.samples import make_sample_video
from tests.integration.test_swap_cli import run_cli
from tests.media import streams, write_source_face

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

WIDTH, HEIGHT = 320, 240

#: How each source is tagged: (scale filter for its YUV, its output tags).
SOURCES = {
    "untagged": ("", []),
    # Interlaced: the fields keep their chroma through the trip as progressive frames do.
    "interlaced": ("", ["-flags", "+ildct+ilme", "-top", "1"]),
    "bt709-tv": (
        "scale=out_color_matrix=bt709:out_range=tv",
        [
            "-colorspace",
            "bt709",
            "-color_primaries",
            "bt709",
            "-color_trc",
            "bt709",
            "-color_range",
            "tv",
        ],
    ),  # fmt: skip
    "bt601-full": (
        "scale=out_color_matrix=bt601:out_range=pc",
        [
            "-colorspace",
            "bt470bg",
            "-color_primaries",
            "bt470bg",
            "-color_trc",
            "smpte170m",
            "-color_range",
            "pc",
        ],
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A faceless clip, re-encoded losslessly as each SOURCES entry says."""
    root = tmp_path_factory.mktemp("colour")
    write_source_face(root / "source.png")
    base = make_sample_video(
        root / "base.mp4", seconds=1, width=WIDTH, height=HEIGHT, faces=0, audio=False
    )
    for name, (scale, tags) in SOURCES.items():
        vf = ["-vf", f"{scale}:flags=accurate_rnd+full_chroma_int"] if scale else []
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(base), *vf, "-c:v", "libx264", "-qp", "0",
             "-pix_fmt", "yuv420p", *tags, str(root / f"{name}.mp4")],
            check=True, timeout=60,
        )  # fmt: skip
    return root


def _planes(path: Path) -> np.ndarray:
    """Every frame's stored Y, U and V bytes, as the file holds them (no conversion)."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, WIDTH * HEIGHT * 3 // 2).astype(int)


def _tags(path: Path) -> tuple[str, ...]:
    video = next(s for s in streams(path) if s["codec_type"] == "video")
    keys = ("color_space", "color_primaries", "color_transfer", "color_range")
    return tuple(str(video.get(key, "unknown")) for key in keys)


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_swap_with_no_face_gives_back_the_sources_luma_and_tags(
    clips: Path, models_dir: Path, tmp_path: Path, name: str
) -> None:
    output = tmp_path / "out.mp4"
    done = run_cli(
        "swap", clips / "source.png", clips / f"{name}.mp4", "-o", output, "--json",
        models=models_dir, env={"FACEFUSION_VIDEO_QUALITY": "0"},  # crf 0: lossless x264
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["faces_swapped"] == 0
    assert _tags(output) == _tags(clips / f"{name}.mp4")
    source, swapped = _planes(clips / f"{name}.mp4"), _planes(output)
    assert source.shape == swapped.shape
    # swscale's default rounding made every pixel about 1.9 levels darker, and a BT.709 source
    # was written back with BT.601. Now what no face touched comes back exactly: Y, U and V.
    assert np.array_equal(swapped, source)


@pytest.mark.parametrize("codec", ["gif", "png", "qtrle", "ffv1-gray"])
def test_an_rgb_source_is_written_as_yuv_tagged_with_the_matrix_it_was_converted_with(
    clips: Path, models_dir: Path, tmp_path: Path, codec: str
) -> None:
    # RGB (or grey, which the swap colours) has no matrix to keep. Untagged, the YUV output's
    # matrix (BT.601, swscale's) was left to players, which take HD video for BT.709 and shift
    # its colours; PNG's full range became full-range YUV, which many players ignore.
    suffix = {"gif": "gif", "ffv1-gray": "mkv"}.get(codec, "mov")
    source = tmp_path / f"rgb-{codec}.{suffix}"
    args = ["-c:v", "ffv1", "-pix_fmt", "gray"] if codec == "ffv1-gray" else ["-c:v", codec]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(clips / "untagged.mp4"), *args, str(source)],
        check=True, timeout=60,
    )  # fmt: skip
    output = tmp_path / "out.mp4"
    done = run_cli(
        "swap", clips / "source.png", source, "-o", output, "--json", models=models_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (_tags(output)[0], _tags(output)[3]) == ("smpte170m", "tv")
    if codec in {"gif", "ffv1-gray"}:
        return  # a dithered palette does not survive chroma subsampling, nor grey the swap
    # Decoded as tagged, the picture is the source's (x264 crf 18 and chroma subsampling aside).
    rgb = [
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-i",
                str(path),
                "-frames:v",
                "1",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout  # fmt: skip
        for path in (source, output)
    ]
    before, after = (np.frombuffer(raw, np.uint8).astype(int) for raw in rgb)
    assert np.abs(before - after).mean() < 4
