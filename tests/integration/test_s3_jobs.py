"""Jobs whose media live only in a bucket of a real S3 server (SeaweedFS): local mode, and two
workers that share no directory (each its own scratch, no storage roots at all)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import redis

from facefusion_tasks.app import GPU_QUEUE, LIGHT_QUEUE
from facefusion_tasks.metrics.queues import priority_keys
from facefusion_tasks.objects import WORK_PREFIX
from facefusion_tasks.store import FAILED, RUNNING, SUCCEEDED
from facefusion_tasks.video.samples import make_sample_video
from tests.cluster import SHARED_REDIS, Cluster, cluster, wait_for
from tests.media import (
    LONG,
    audio_duration,
    face_photo,
    streams,
    video_times,
    write_second_face,
    write_source_face,
)
from tests.s3server import client, keys, uploads

pytestmark = pytest.mark.timeout(240)

BUCKET = "media"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local originals of what the bucket holds (for comparing, never read by a worker)."""
    base = tmp_path_factory.mktemp("originals")
    write_source_face(base / "face.png")
    make_sample_video(base / "vfr.mov", seconds=3, faces=2, audio=True, variable_frame_rate=True)
    make_sample_video(base / "long.mp4", **LONG)
    return base


@pytest.fixture()
def s3(s3_env: dict[str, str], inputs: Path) -> Any:
    """The bucket with the inputs in it (emptied of everything else first)."""
    s3 = client(s3_env)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for key in keys(s3, BUCKET):
        s3.delete_object(Bucket=BUCKET, Key=key)
    for name in ("face.png", "vfr.mov", "long.mp4"):
        s3.upload_file(str(inputs / name), BUCKET, f"in/{name}")
    return s3


def _cluster(tmp_path: Path, models: Path, s3_env: dict[str, str]) -> Iterator[Cluster]:
    with cluster(
        tmp_path / "fleet", models, s3_buckets=BUCKET, visibility_timeout="12",
        chunk_time_limit="10", scratch_dir=str(tmp_path / "scratch-producer"),
    ) as fleet:  # fmt: skip
        # No storage roots: the bucket is the only place the workers share.
        del fleet.env["FACEFUSION_STORAGE_ROOTS"]
        fleet.env |= s3_env
        yield fleet


@pytest.fixture()
def fleet(tmp_path: Path, models_dir: Path, s3_env: dict[str, str]) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, models_dir, s3_env)


@pytest.fixture()
def slow_fleet(tmp_path: Path, slow_models_dir: Path, s3_env: dict[str, str]) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, slow_models_dir, s3_env)


def _start(fleet: Cluster, tmp_path: Path, name: str, queues: str = "gpu,light") -> Path:
    """A worker with a scratch directory of its own; returns that directory."""
    scratch = tmp_path / f"scratch-{name}"
    fleet.start_worker(name, queues=queues, env={"FACEFUSION_SCRATCH_DIR": str(scratch)})
    return scratch


def _fetch(s3: Any, key: str, path: Path) -> Path:
    s3.download_file(BUCKET, key, str(path))
    return path


def _task_dirs(scratch: Path) -> list[Path]:
    """What a worker left in its scratch besides its image cache."""
    return [p for p in scratch.iterdir() if p.name != "objects"] if scratch.exists() else []


def test_local_mode_swaps_objects_into_an_object(
    s3: Any, s3_env: dict[str, str], inputs: Path, models_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")} | s3_env
    env |= {
        "FACEFUSION_S3_BUCKETS": BUCKET, "FACEFUSION_MODELS_DIR": str(models_dir),
        "FACEFUSION_ALLOW_STANDIN_MODELS": "1", "FACEFUSION_EXECUTION_PROVIDER": "cpu",
        "FACEFUSION_SCRATCH_DIR": str(tmp_path / "scratch"),
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", "swap", f"s3://{BUCKET}/in/face.png",
         f"s3://{BUCKET}/in/vfr.mov", "-o", f"s3://{BUCKET}/out/local.mov", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote s3://{BUCKET}/out/local.mov" in done.stdout
    output = _fetch(s3, "out/local.mov", tmp_path / "local.mov")
    assert video_times(output) == video_times(inputs / "vfr.mov")
    assert audio_duration(output) == pytest.approx(audio_duration(inputs / "vfr.mov"), abs=0.05)
    assert _task_dirs(tmp_path / "scratch") == []
    assert "X-Amz" not in done.stdout + done.stderr


def _swap_vfr_clip(fleet: Cluster, output_key: str) -> tuple[str, Any]:
    """Submit the VFR clip, media only in the bucket, in half-second chunks to `output_key`;
    the job id and its final status, which must be SUCCEEDED."""
    producer = fleet.producer()
    job_id = producer.submit(
        f"s3://{BUCKET}/in/face.png",
        f"s3://{BUCKET}/in/vfr.mov",
        f"s3://{BUCKET}/{output_key}",
        chunk_seconds=0.5,
    )
    status = producer.wait(job_id, timeout=150)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    return job_id, status


def test_two_workers_sharing_no_directory_swap_an_object_exactly(
    fleet: Cluster, s3: Any, inputs: Path, tmp_path: Path
) -> None:
    scratches = [_start(fleet, tmp_path, "w1"), _start(fleet, tmp_path, "w2")]
    job_id, status = _swap_vfr_clip(fleet, "out/vfr.mov")
    assert status.chunks_total >= 5 and status.chunks_done == status.chunks_total
    assert {c["worker"].split("-", 1)[0] for c in status.chunks} == {"w1", "w2"}
    output = _fetch(s3, "out/vfr.mov", tmp_path / "vfr.mov")
    assert video_times(output) == video_times(inputs / "vfr.mov")
    assert audio_duration(output) == pytest.approx(audio_duration(inputs / "vfr.mov"), abs=0.05)
    # Segments gone from the bucket, nothing left in either worker's scratch, no signature in
    # the job's record or in what the workers logged.
    assert sorted(keys(s3, BUCKET)) == ["in/face.png", "in/long.mp4", "in/vfr.mov", "out/vfr.mov"]
    assert uploads(s3, BUCKET) == []
    assert all(_task_dirs(scratch) == [] for scratch in scratches)
    record = redis.Redis.from_url(SHARED_REDIS).hgetall(f"facefusion:job:{job_id}")
    assert record and b"X-Amz" not in b" ".join(record.values())
    assert "X-Amz" not in fleet.log("w1") + fleet.log("w2")


def test_a_webm_object_is_stitched_from_webm_segments_kept_in_the_bucket(
    fleet: Cluster, s3: Any, inputs: Path, tmp_path: Path
) -> None:
    _start(fleet, tmp_path, "w1")
    _, status = _swap_vfr_clip(fleet, "out/vfr.webm")
    assert status.chunks_total >= 5
    output = _fetch(s3, "out/vfr.webm", tmp_path / "vfr.webm")
    codecs = {s["codec_type"]: s["codec_name"] for s in streams(output)}
    assert codecs == {"video": "vp9", "audio": "opus"}
    # WebM counts in milliseconds: every frame is there, each within one tick of its source
    # (the segments and the stitched file each round to the millisecond).
    times, source = video_times(output), video_times(inputs / "vfr.mov")
    assert len(times) == len(source)
    assert max(abs(float(a - b)) for a, b in zip(times, source, strict=True)) <= 0.001
    assert "out/vfr.webm" in keys(s3, BUCKET)
    assert not [k for k in keys(s3, BUCKET) if k.startswith(WORK_PREFIX)]


def test_a_sigkilled_worker_chunk_is_redone_from_the_bucket(
    slow_fleet: Cluster, s3: Any, inputs: Path, tmp_path: Path
) -> None:
    fleet = slow_fleet
    _start(fleet, tmp_path, "w1")
    _start(fleet, tmp_path, "w2")
    producer = fleet.producer()
    job_id = producer.submit(
        f"s3://{BUCKET}/in/face.png",
        f"s3://{BUCKET}/in/long.mp4",
        f"s3://{BUCKET}/out/killed.mp4",
        chunk_seconds=4,
    )

    def running() -> dict[str, Any] | None:
        for chunk in producer.status(job_id).chunks:
            if chunk["state"] == RUNNING and 0 < chunk["frames_done"] < chunk["frames"]:
                return chunk
        return None

    victim = wait_for(running, timeout=60, interval=0.02)
    fleet.kill(victim["worker"].split("-", 1)[0])
    status = producer.wait(job_id, timeout=150)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert status.chunks[victim["index"]]["attempts"] >= 2
    output = _fetch(s3, "out/killed.mp4", tmp_path / "killed.mp4")
    assert video_times(output) == video_times(inputs / "long.mp4")
    assert not keys(s3, BUCKET, f".facefusion-work/{job_id}/")


def test_a_refused_bucket_exits_2_and_enqueues_nothing(fleet: Cluster, s3: Any) -> None:
    r = redis.Redis.from_url(SHARED_REDIS)
    for target, output in (
        ("s3://elsewhere/in/vfr.mov", f"s3://{BUCKET}/out/x.mp4"),
        (f"s3://{BUCKET}/in/vfr.mov", "s3://elsewhere/out/x.mp4"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "facefusion_tasks", "submit", f"s3://{BUCKET}/in/face.png",
             target, "-o", output],
            env=fleet.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            f"facefusion-tasks: error: s3://elsewhere/{'in/vfr.mov' if 'elsewhere/in' in target else 'out/x.mp4'}: "
            f"{'target' if 'elsewhere/in' in target else 'output'} is outside the allowed "
            f"buckets ({BUCKET})"
        )
    assert not r.keys("facefusion:job:*")
    assert sum(r.llen(k) for q in (GPU_QUEUE, LIGHT_QUEUE) for k in priority_keys(q)) == 0
    assert "out/x.mp4" not in keys(s3, BUCKET)


def test_a_failed_stitch_leaves_the_destination_as_it_was(
    fleet: Cluster, s3: Any, tmp_path: Path
) -> None:
    s3.put_object(Bucket=BUCKET, Key="out/failed.mp4", Body=b"the previous output")
    fleet.start_worker("planner", queues=LIGHT_QUEUE)
    producer = fleet.producer()
    job_id = producer.submit(
        f"s3://{BUCKET}/in/face.png",
        f"s3://{BUCKET}/in/long.mp4",
        f"s3://{BUCKET}/out/failed.mp4",
        chunk_seconds=2.5,
    )
    r = redis.Redis.from_url(SHARED_REDIS)
    # Planned and every chunk sent; then no light worker: the stitch will wait in its queue.
    wait_for(lambda: sum(r.llen(k) for k in priority_keys(GPU_QUEUE)) == 4, timeout=30)
    fleet.kill("planner")
    _start(fleet, tmp_path, "gpu", queues=GPU_QUEUE)
    wait_for(lambda: producer.status(job_id).chunks_done == 4, timeout=120)
    s3.delete_object(Bucket=BUCKET, Key=f".facefusion-work/{job_id}/seg-00001.mp4")
    _start(fleet, tmp_path, "stitcher", queues=LIGHT_QUEUE)
    status = producer.wait(job_id, timeout=60)
    assert status.state == FAILED and status.reason == "media", (status.reason, status.error)
    assert "segments missing" in status.error
    body = s3.get_object(Bucket=BUCKET, Key="out/failed.mp4")["Body"].read()
    assert body == b"the previous output"
    assert uploads(s3, BUCKET) == []


def _still_inputs(s3: Any, inputs: Path) -> None:
    """Two source photos and a still jpg target, in the bucket only for the tests that use them
    (the other tests check the bucket's exact keys)."""
    write_second_face(inputs / "second.png")
    assert cv2.imwrite(str(inputs / "photo.jpg"), face_photo(320, 240))
    for name in ("second.png", "photo.jpg"):
        s3.upload_file(str(inputs / name), BUCKET, f"in/{name}")


def _local_swap(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", "swap", *map(str, args), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_several_object_sources_swap_a_still_object_as_files_do(
    fleet: Cluster, s3: Any, s3_env: dict[str, str], inputs: Path, models_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Two s3:// source photos and an s3:// jpg target, written to an s3:// jpg: in local mode
    and on a worker sharing no directory, the object holds exactly the bytes a swap of the
    same files writes locally; a wrongly named image output is refused before any work."""
    _still_inputs(s3, inputs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")} | s3_env
    env |= {
        "FACEFUSION_S3_BUCKETS": BUCKET, "FACEFUSION_MODELS_DIR": str(models_dir),
        "FACEFUSION_ALLOW_STANDIN_MODELS": "1", "FACEFUSION_EXECUTION_PROVIDER": "cpu",
        "FACEFUSION_SCRATCH_DIR": str(tmp_path / "scratch"),
    }  # fmt: skip
    expected = tmp_path / "expected.jpg"
    done = _local_swap(env, "--source", inputs / "face.png", "--source", inputs / "second.png",
                       inputs / "photo.jpg", "-o", expected)  # fmt: skip
    assert done.returncode == 0, done.stderr
    sources = ["--source", f"s3://{BUCKET}/in/face.png", "--source", f"s3://{BUCKET}/in/second.png"]
    done = _local_swap(env, *sources, f"s3://{BUCKET}/in/photo.jpg", "-o",
                       f"s3://{BUCKET}/out/local.jpg")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote s3://{BUCKET}/out/local.jpg" in done.stdout
    body = s3.get_object(Bucket=BUCKET, Key="out/local.jpg")["Body"].read()
    assert body == expected.read_bytes()
    assert _task_dirs(tmp_path / "scratch") == []
    refused = _local_swap(env, *sources, f"s3://{BUCKET}/in/photo.jpg", "-o",
                          f"s3://{BUCKET}/out/wrong.png")  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"facefusion-tasks: error: s3://{BUCKET}/out/wrong.png: the target is a JPEG image, so "
        "the output is one too (name it .jpg or .jpeg)"
    )

    scratch = _start(fleet, tmp_path, "w1")
    producer = fleet.producer()
    job_id = producer.submit(
        [f"s3://{BUCKET}/in/face.png", f"s3://{BUCKET}/in/second.png"],
        f"s3://{BUCKET}/in/photo.jpg",
        f"s3://{BUCKET}/out/fleet.jpg",
    )
    status = producer.wait(job_id, timeout=150)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert status.sources == [f"s3://{BUCKET}/in/face.png", f"s3://{BUCKET}/in/second.png"]
    assert s3.get_object(Bucket=BUCKET, Key="out/fleet.jpg")["Body"].read() == body
    assert not keys(s3, BUCKET, ".facefusion-work/")
    assert "out/wrong.png" not in keys(s3, BUCKET)
    assert uploads(s3, BUCKET) == []
    assert _task_dirs(scratch) == []
