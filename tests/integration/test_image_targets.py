"""Still-image targets end to end: jpg, png and webp in, the same format out, upright, in local
mode and on a real fleet; bad images refused with one line and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from PIL import Image

from facefusion_tasks.config import Settings
from facefusion_tasks.faces.engine import FaceEngine
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.inputs import read_image
from facefusion_tasks.store import FAILED, SUCCEEDED
from tests.cluster import cluster, metric_samples, wait_for
from tests.media import (
    ORIENTATION_TAG,
    face_photo,
    write_second_face,
    write_source_face,
    write_turned_photo,
)

pytestmark = pytest.mark.timeout(240)

#: Pillow's name for each format: an independent judge of what was written.
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root: the source face, the same photo as png/jpg/webp, a phone-style turned
    jpg and webp, and an empty out/ folder."""
    base = tmp_path_factory.mktemp("images")
    write_source_face(base / "source.png")
    photo = face_photo(320, 240)
    for suffix in PIL_FORMATS:
        assert cv2.imwrite(str(base / f"photo{suffix}"), photo)
    portrait = face_photo(240, 320)
    write_turned_photo(base / "turned.jpg", portrait)
    write_turned_photo(base / "turned.webp", portrait)
    (base / "out").mkdir()
    return base


@pytest.fixture(scope="module")
def engine(models_dir: Path, root: Path) -> FaceEngine:
    """The face engine a swap loads, aimed at the source face."""
    settings = Settings.from_env(
        {}, models_dir=models_dir, execution_provider="cpu", allow_standin_models=True
    )
    engine = load_models(settings).engine
    engine.set_source(root / "source.png")
    return engine


def swapped_frame(engine: FaceEngine, target: Path) -> np.ndarray:
    """What the pipeline makes of the target as a decoded frame, before any encoding."""
    frame = read_image(target)
    engine.process([frame])
    return frame


def run_cli(
    *args: str | Path, models: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    environment |= {
        "FACEFUSION_MODELS_DIR": str(models),
        "FACEFUSION_EXECUTION_PROVIDER": "cpu",
        "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment | (env or {}),
        timeout=180,
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 40


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_an_image_target_comes_out_in_its_own_format_with_its_faces_swapped(
    root: Path, models_dir: Path, engine: FaceEngine, tmp_path: Path, suffix: str
) -> None:
    target, out = root / f"photo{suffix}", tmp_path / f"swapped{suffix}"
    done = run_cli("swap", root / "source.png", target, "-o", out, "--json", models=models_dir)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["frames"] == 1 and summary["faces_swapped"] >= 2
    with Image.open(out) as written:
        assert written.format == PIL_FORMATS[suffix]
        assert written.size == (320, 240)
    before, after = read_image(target), read_image(out)
    expected = swapped_frame(engine, target)
    faces = _changed(before, expected)
    assert faces.mean() > 0.05  # the pipeline changed the face regions of this frame...
    assert _changed(before, after)[faces].mean() > 0.8  # ...and so did the swap of the image
    if suffix == ".png":
        assert np.array_equal(after, expected)  # lossless: exactly the pipeline's frame
    else:
        assert _psnr(after, expected) > 35  # the same frame through a lossy encoder
    assert _leftovers(tmp_path) == []


def test_an_image_target_takes_the_mean_identity_of_several_sources(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    write_second_face(tmp_path / "second.png")
    settings = Settings.from_env(
        {}, models_dir=models_dir, execution_provider="cpu", allow_standin_models=True
    )
    engine = load_models(settings).engine
    engine.set_sources([root / "source.png", tmp_path / "second.png"])
    expected = swapped_frame(engine, root / "photo.png")
    out = tmp_path / "both.png"
    done = run_cli(
        "swap", "--source", root / "source.png", "--source", tmp_path / "second.png",
        root / "photo.png", "-o", out, models=models_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert np.array_equal(read_image(out), expected)
    alone = tmp_path / "alone.png"
    assert run_cli("swap", root / "source.png", root / "photo.png", "-o", alone,
                   models=models_dir).returncode == 0  # fmt: skip
    assert not np.array_equal(read_image(alone), expected)


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_an_exif_turned_photo_is_swapped_upright_and_stored_upright(
    root: Path, models_dir: Path, engine: FaceEngine, tmp_path: Path, suffix: str
) -> None:
    target, out = root / f"turned{suffix}", tmp_path / f"upright{suffix}"
    with Image.open(target) as stored:
        assert stored.size == (320, 240) and stored.getexif()[ORIENTATION_TAG] == 6
    done = run_cli("swap", root / "source.png", target, "-o", out, "--json", models=models_dir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["faces_swapped"] >= 2  # found upright, as drawn
    with Image.open(out) as written:
        assert written.size == (240, 320)  # the pixels themselves stand upright...
        assert written.getexif().get(ORIENTATION_TAG, 1) == 1  # ...and nothing turns them again
    raw = cv2.imread(str(out), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert raw.shape == (320, 240, 3)
    expected = swapped_frame(engine, target)
    assert expected.shape == raw.shape
    assert _psnr(raw, expected) > 35
    assert _changed(read_image(target), raw).mean() > 0.05


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated.png", "truncated PNG image"),
        ("truncated.jpg", "truncated JPEG image"),
        ("truncated.webp", "truncated WebP image"),
        ("cut_data.jpg", "corrupt JPEG image (Corrupt JPEG data: premature end of data segment)"),
        ("restart_cut.jpg", "corrupt JPEG image (Corrupt JPEG data: found marker 0xd9 instead"),
        ("bad_data.png", "not an image opencv can read"),
        ("text.png", "not a PNG, JPEG or WebP image"),
        ("empty.png", "empty file"),
        ("missing.jpg", "no such file"),
        ("animated.webp", "animated WebP images are not supported"),
        ("wrong_format", "the target is a PNG image, so the output is one too"),
        ("no_directory", "does not exist"),
    ],
)
def test_a_bad_image_exits_2_with_one_line_and_writes_nothing(
    root: Path, models_dir: Path, tmp_path: Path, case: str, message: str
) -> None:
    target, out = root / "photo.png", tmp_path / "out.png"
    data = (root / f"photo{Path(case).suffix}").read_bytes() if "." in case else b""
    if case.startswith("truncated"):
        target = tmp_path / case
        target.write_bytes(data[: len(data) * 3 // 4])
    elif case == "cut_data.jpg":
        # Its end marker put back: complete by its bytes, and libjpeg would paint the missing
        # half grey, saying so only on stderr.
        target = tmp_path / case
        target.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    elif case == "restart_cut.jpg":
        # Written with restart markers and cut just before the middle one: libjpeg says only
        # "found marker" (no "premature end") and paints the lower half grey.
        ok, encoded = cv2.imencode(
            ".jpg", read_image(root / "photo.png"), [cv2.IMWRITE_JPEG_RST_INTERVAL, 4]
        )
        whole = encoded.tobytes()
        scan = whole.index(b"\xff\xda")
        markers = [i for i in range(scan, len(whole) - 1)
                   if whole[i] == 0xFF and 0xD0 <= whole[i + 1] <= 0xD7]  # fmt: skip
        target = tmp_path / case
        target.write_bytes(whole[: markers[len(markers) // 2]] + b"\xff\xd9")
    elif case == "bad_data.png":
        # Every chunk present, IEND included, but the pixel data cut: libpng errors out.
        target = tmp_path / case
        start = data.index(b"IDAT") + 4
        end = data.index(b"IEND") - 4
        target.write_bytes(data[:start] + data[start : start + 64] + data[end:])
    elif case == "text.png":
        target = tmp_path / case
        target.write_text("this is not an image\n" * 50)
    elif case == "empty.png":
        target = tmp_path / case
        target.touch()
    elif case == "missing.jpg":
        target = tmp_path / case
    elif case == "animated.webp":
        target = tmp_path / case
        flags = bytearray(b"VP8X\x0a\x00\x00\x00\x02\x00\x00\x00\x3f\x01\x00\xef\x00\x00")
        target.write_bytes(b"RIFF" + (4 + len(flags)).to_bytes(4, "little") + b"WEBP" + flags)
    elif case == "wrong_format":
        out = tmp_path / "out.jpg"
    elif case == "no_directory":
        out = tmp_path / "no-such-dir" / "out.png"
    if target.suffix != ".png" and case != "wrong_format":
        out = out.with_suffix(target.suffix)
    done = run_cli("swap", root / "source.png", target, "-o", out, models=models_dir)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not out.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["truncated.jpg", "text.png", "empty.png"])
def test_submit_refuses_a_bad_image_before_anything_is_queued(
    root: Path, models_dir: Path, redis_url: str, case: str
) -> None:
    bad = root / "out" / f"bad-{case}"
    if case == "truncated.jpg":
        data = (root / "photo.jpg").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case == "text.png":
        bad.write_text("not an image\n")
    else:
        bad.touch()
    out = root / "out" / f"result{bad.suffix}"
    env = {"FACEFUSION_BROKER_URL": redis_url, "FACEFUSION_STORAGE_ROOTS": str(root)}
    try:
        done = run_cli("submit", root / "source.png", bad, "-o", out, models=models_dir, env=env)
    finally:
        bad.unlink()
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert redis.Redis.from_url(redis_url).dbsize() == 0
    assert not out.exists()


@pytest.fixture()
def fleet_root(root: Path, tmp_path: Path) -> Iterator[Path]:
    """A storage root of this test's own, holding the module's images."""
    for name in ("source.png", "photo.png", "photo.jpg"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    (tmp_path / "out").mkdir()
    yield tmp_path


def test_a_distributed_image_job_is_one_chunk_and_ends_with_a_verified_output(
    fleet_root: Path, models_dir: Path, engine: FaceEngine
) -> None:
    with cluster(fleet_root, models_dir) as fleet:
        fleet.start_worker("w1")
        producer = fleet.producer()
        output = fleet_root / "out" / "swapped.png"
        job_id = producer.submit(fleet_root / "source.png", fleet_root / "photo.png", output)
        status = producer.wait(job_id, timeout=120)
        assert status.state == SUCCEEDED, (status.reason, status.error)
        assert (status.chunks_total, status.chunks_done) == (1, 1)
        assert status.frames_total == status.frames_done == 1
        assert status.chunks[0]["attempts"] == 1
        # What the worker wrote is what the pipeline makes of the same frame, exactly.
        assert np.array_equal(read_image(output), swapped_frame(engine, fleet_root / "photo.png"))
        assert _leftovers(fleet_root / "out") == []
        wait_for(lambda: not (fleet_root / ".facefusion-work" / job_id).exists(), timeout=15)
        samples = metric_samples(fleet.logs / "metrics-w1")
        assert samples[("facefusion_frames_processed_total", ())] == 1
        assert samples[("facefusion_faces_swapped_total", ())] >= 2
        succeeded = (("outcome", "succeeded"), ("reason", "none"))
        assert samples[("facefusion_jobs_total", succeeded)] == 1
        assert samples[("facefusion_chunks_total", succeeded)] == 1


def test_an_image_that_breaks_after_submit_fails_its_job_with_a_reason(
    fleet_root: Path, models_dir: Path
) -> None:
    with cluster(fleet_root, models_dir) as fleet:
        producer = fleet.producer()
        target, output = fleet_root / "photo.jpg", fleet_root / "out" / "never.jpg"
        job_id = producer.submit(fleet_root / "source.png", target, output)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])  # cut short before any worker saw it
        fleet.start_worker("w1")
        status = producer.wait(job_id, timeout=120)
        assert status.state == FAILED
        assert status.reason == "not_an_image" and "truncated JPEG image" in status.error
        assert not output.exists() and _leftovers(fleet_root / "out") == []
        # `wait` exits as `swap` does for the same input: 2, with the reason.
        done = run_cli("wait", job_id, "--no-progress", models=models_dir, env=fleet.env)
        assert done.returncode == 2, done.stderr
        assert "truncated JPEG image" in done.stderr
