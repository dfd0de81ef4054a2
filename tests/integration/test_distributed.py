"""Distributed jobs on a real Redis with real Celery worker processes and real ffmpeg."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import redis

from facefusion_tasks.app import GPU_QUEUE, LIGHT_QUEUE, TASK_CHUNK
from facefusion_tasks.faces.synthetic import background, draw_face
from facefusion_tasks.metrics.queues import alive_workers, priority_keys
from facefusion_tasks.producer import Retried, WaitTimeout
from facefusion_tasks.store import CANCELLED, FAILED, RUNNING, SUCCEEDED, JobStatus
from tests.cluster import (
    SHARED_REDIS,
    Cluster,
    RedisServer,
    cluster,
    metric_samples,
    wait_for,
)
from tests.media import (
    LONG,
    TINY,
    audio_duration,
    beep_onsets,
    decoded_audio_seconds,
    storage_root,
    streams,
    video_length,
    video_times,
    video_track_seconds,
    write_beeping_flv,
    write_gif,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared storage root, with the inputs every test uses."""
    vfr = {"seconds": 3, "faces": 2, "audio": True, "variable_frame_rate": True}
    clips = {"vfr.mov": vfr, "long.mp4": LONG, "tiny.mp4": TINY}
    return storage_root(tmp_path_factory.mktemp("shared"), clips)


@pytest.fixture()
def fleet(root: Path, models_dir: Path) -> Iterator[Cluster]:
    with cluster(root, models_dir, visibility_timeout="12", chunk_time_limit="10") as c:
        yield c


@pytest.fixture()
def slow_fleet(root: Path, slow_models_dir: Path) -> Iterator[Cluster]:
    with cluster(root, slow_models_dir, visibility_timeout="12", chunk_time_limit="10") as c:
        yield c


def _launcher(node: str) -> str:
    """The cluster's name for the launcher that started a Celery node ("w1-cpu0@host" -> w1)."""
    return node.split("@")[0].split("-", 1)[0]


def _running_chunk(producer, job_id: str):  # type: ignore[no-untyped-def]
    status = producer.status(job_id)
    for chunk in status.chunks:
        if chunk["state"] == RUNNING and 0 < chunk["frames_done"] < chunk["frames"]:
            return chunk
    return None


def _first_seconds_of_long(root: Path, name: str, *encode: str) -> Path:
    """root/`name`: the first 3 s of long.mp4, encoded by ffmpeg with `encode`."""
    target = root / name
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(root / "long.mp4"), "-t", "3", *encode, str(target)],
        check=True, timeout=60,
    )  # fmt: skip
    return target


def _swap_in_half_second_chunks(
    fleet: Cluster, root: Path, target: Path, output: Path, *, chunk_seconds: float = 0.5
) -> JobStatus:
    """One worker swaps `target` into `output` in half-second chunks (or `chunk_seconds`);
    the job's final status, which must be SUCCEEDED."""
    fleet.start_worker("w1")
    producer = fleet.producer()
    job_id = producer.submit(root / "source.png", target, output, chunk_seconds=chunk_seconds)
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    return status


def test_two_workers_share_a_job_and_the_output_is_frame_exact(
    fleet: Cluster, root: Path, tmp_path: Path
) -> None:
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    producer = fleet.producer()
    output = root / "out" / "vfr-distributed.mov"
    job_id = producer.submit(root / "source.png", root / "vfr.mov", output, chunk_seconds=0.5)
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert status.chunks_total >= 5 and status.chunks_done == status.chunks_total
    assert status.frames_done == status.frames_total
    assert {_launcher(c["worker"]) for c in status.chunks} == {"w1", "w2"}
    assert all(c["attempts"] == 1 for c in status.chunks)
    # Frame count and every timestamp equal the input's, and what local mode produces.
    assert video_times(output) == video_times(root / "vfr.mov")
    local = tmp_path / "local.mov"
    env = fleet.env | {"FACEFUSION_BROKER_URL": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", "swap", str(root / "source.png"),
         str(root / "vfr.mov"), "-o", str(local), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert video_times(output) == video_times(local)
    assert audio_duration(output) == pytest.approx(audio_duration(root / "vfr.mov"), abs=0.05)
    wait_for(lambda: not (root / ".facefusion-work" / job_id).exists(), timeout=15)


def test_an_mpeg_program_stream_is_cut_into_chunks_and_stitched_frame_exact(
    fleet: Cluster, root: Path
) -> None:
    # MPEG-2 with B-frames in a program stream (.mpg), a pts on only some packets: the plan
    # cuts on the times the decoder gives, and each chunk seeks the file by them.
    mpg = _first_seconds_of_long(
        root, "dvd.mpg", "-c:v", "mpeg2video", "-bf", "2", "-b:v", "2M", "-c:a", "mp2", "-f", "mpeg"
    )
    output = root / "out" / "dvd.mp4"
    status = _swap_in_half_second_chunks(fleet, root, mpg, output)
    assert status.chunks_total >= 5 and status.frames_done == status.frames_total == 75
    assert video_times(output) == [Fraction(i, 25) for i in range(75)]
    assert audio_duration(output) == pytest.approx(3.0, abs=0.05)


def test_an_flv_whose_sound_starts_before_its_picture_is_stitched_with_all_of_it(
    fleet: Cluster, root: Path
) -> None:
    # The stitch reads the sound as the local writer does: from the file's start, trimmed by
    # a filter, since ffmpeg's FLV seek lands on the second keyframe.
    flv = write_beeping_flv(root / "stream.flv")
    output = root / "out" / "stream.mp4"
    status = _swap_in_half_second_chunks(fleet, root, flv, output)
    assert status.chunks_total >= 5 and len(video_times(output)) == 75
    assert decoded_audio_seconds(output) == pytest.approx(3.0, abs=0.03)
    assert beep_onsets(output) == pytest.approx(beep_onsets(flv), abs=0.005)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_a_slideshow_with_a_long_last_frame_is_stitched_frame_exact(
    fleet: Cluster, root: Path, suffix: str
) -> None:
    # Frames shown 40 ms to 0.9 s, the last the longest. The stitch's stream copy gave the
    # last frame one step of a guessed rate (one tick of the GIF's clock with ffmpeg 5.1); it
    # now keeps its own 0.9 s, as a local swap does. 30 frames: a chunk holds 8 at least.
    delays = [70, 230, 50, 310, 120, 90, 40, 200, 60, 150, 80, 260, 300, 140] * 2 + [110, 900]
    gif = write_gif(root / "slideshow.gif", delays)
    output = root / "out" / f"slideshow{suffix}"
    status = _swap_in_half_second_chunks(fleet, root, gif, output)
    assert status.chunks_total >= 3
    assert video_times(output) == video_times(gif)
    assert video_length(output) == pytest.approx(sum(delays) / 1000, abs=0.002)


def test_a_one_fps_clip_in_short_chunks_keeps_its_video_tracks_length(
    fleet: Cluster, root: Path
) -> None:
    # x264 gives a segment of 1 or 2 frames no B-frame delay and a longer one 2 frames': the
    # plan cut this clip into 2-frame chunks and a 4-frame tail, and the stitched mp4's video
    # track said 18 s for 20 s of frames. Every chunk now holds at least 8 frames.
    target = root / "one-fps.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=1:duration=20",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(target)],
        check=True, timeout=60,
    )  # fmt: skip
    output = root / "out" / "one-fps.mp4"
    status = _swap_in_half_second_chunks(fleet, root, target, output, chunk_seconds=2)
    assert status.chunks_total >= 2
    assert video_times(output) == video_times(target)
    assert video_track_seconds(output) == video_track_seconds(target) == 20


def test_a_phone_clip_whose_stream_claims_600_fps_is_stitched(fleet: Cluster, root: Path) -> None:
    # VFR H.264 (30, 15, then 24 fps, with jitter) on a 1/600 s clock, so its stream claims
    # 600 fps, in MPEG-TS (no packet durations): the stitch expected a last frame of 1/600 s,
    # ffmpeg 5.1 reads the stitched mp4's back as its decode-order gap (43 ms), and every such
    # job failed ("lasts 3.543 s, expected 3.502 s") where a local swap succeeded.
    steps = "if(lt(N,40),N*20+mod(N,2),if(lt(N,60),800+(N-40)*40+mod(N,2),1600+(N-60)*25+mod(N,2)))"
    target = root / "phone.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:d=2.6667",
         "-f", "lavfi", "-i", "sine=d=3.5", "-vf", f"settb=1/600,setpts='{steps}'",
         "-fps_mode", "passthrough", "-enc_time_base", "1/600", "-pix_fmt", "yuv420p",
         "-c:v", "libx264", "-c:a", "aac", str(target)],
        check=True, timeout=60,
    )  # fmt: skip
    output = root / "out" / "phone.mp4"
    status = _swap_in_half_second_chunks(fleet, root, target, output, chunk_seconds=1)
    assert status.chunks_total >= 3
    times, source = video_times(output), video_times(target)
    assert len(times) == len(source) == 81
    assert all(abs(a - b) <= Fraction(1, 2000) for a, b in zip(times, source, strict=True))


def test_a_stitched_matroska_carries_the_colour_range_a_local_swap_writes(
    fleet: Cluster, root: Path, tmp_path: Path
) -> None:
    # The mp4 segments keep a range only beside a matrix or primaries: from a source that
    # named neither, the stitched .mkv came out untagged where a local swap's says "tv", and a
    # full-range one lost "pc".
    fleet.start_worker("w1")
    producer = fleet.producer()
    ranges = {}
    for name, tags in {"untagged": [], "full": ["-color_range", "pc"]}.items():
        target = root / f"range-{name}.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:d=2",
             "-pix_fmt", "yuv420p", *tags, "-c:v", "libx264", str(target)],
            check=True, timeout=60,
        )  # fmt: skip
        output = root / "out" / f"range-{name}.mkv"
        job_id = producer.submit(root / "source.png", target, output, chunk_seconds=0.5)
        status = producer.wait(job_id, timeout=120)
        assert status.state == SUCCEEDED and status.chunks_total >= 3, (status.reason, status.error)
        ranges[name] = streams(output)[0].get("color_range")
    local = tmp_path / "local.mkv"
    proc = subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", "swap", str(root / "source.png"),
         str(root / "range-untagged.mp4"), "-o", str(local), "--no-progress"],
        env=fleet.env | {"FACEFUSION_BROKER_URL": ""}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert ranges == {"untagged": streams(local)[0].get("color_range"), "full": "pc"}
    assert ranges["untagged"] == "tv"


def test_worker_processes_that_stop_cleanly_leave_the_live_count_at_once(
    fleet: Cluster, root: Path
) -> None:
    # Their heartbeat keys lived out their 30 s: under recycling (max tasks per child) the
    # live-worker count read 15 for 2 processes, and the unserved-queue alerts came late.
    client = redis.Redis.from_url(SHARED_REDIS)
    fleet.start_worker("w1")
    wait_for(lambda: len(alive_workers(client)) == 2, timeout=30)
    fleet.stop_all()  # SIGTERM: a warm shutdown
    # The launcher may be gone a moment before its pool processes finish exiting; their keys
    # go then, far inside the 30 s they would otherwise live.
    wait_for(lambda: alive_workers(client) == {}, timeout=10, interval=0.1)


def test_a_sigkilled_worker_chunk_is_redone_elsewhere(slow_fleet: Cluster, root: Path) -> None:
    fleet = slow_fleet
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    producer = fleet.producer()
    output = root / "out" / "killed.mp4"
    job_id = producer.submit(root / "source.png", root / "long.mp4", output, chunk_seconds=4)
    victim = wait_for(lambda: _running_chunk(producer, job_id), timeout=60, interval=0.02)
    killed = _launcher(victim["worker"])
    fleet.kill(killed)
    try:
        status = producer.wait(job_id, timeout=150)
    except WaitTimeout:  # say what each worker saw, and where every chunk stands
        chunks = [
            (c["state"], c["worker"], c["deliveries"]) for c in producer.status(job_id).chunks
        ]
        survivor = "w2" if killed == "w1" else "w1"
        raise AssertionError(
            f"killed {killed}; chunks {chunks}\n--- {killed}:\n{fleet.log(killed)[-3000:]}"
            f"\n--- {survivor}:\n{fleet.log(survivor)[-6000:]}"
        ) from None
    assert status.state == SUCCEEDED, (status.reason, status.error)
    redone = status.chunks[victim["index"]]
    assert redone["attempts"] >= 2 and redone["worker"] != victim["worker"]
    assert video_times(output) == video_times(root / "long.mp4")  # nothing lost or duplicated


def test_redis_restart_mid_job_completes_exactly(
    root: Path, slow_models_dir: Path, tmp_path: Path
) -> None:
    """Redis (AOF, fsync always) restarts while a chunk runs: the store's commands retry with
    backoff, lost connections are transient and retried, so the job ends SUCCEEDED with
    exactly the input's frames."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        with cluster(
            root, slow_models_dir, server.url, visibility_timeout="12", chunk_time_limit="10"
        ) as fleet:
            fleet.start_worker("w1")
            producer = fleet.producer()
            output = root / "out" / "restart.mp4"
            job_id = producer.submit(
                root / "source.png", root / "long.mp4", output, chunk_seconds=2
            )
            wait_for(lambda: _running_chunk(producer, job_id), timeout=60)
            server.stop()
            time.sleep(1.5)
            server.start()
            status = producer.wait(job_id, timeout=150)
            assert status.state == SUCCEEDED, (status.reason, status.error)
            assert status.frames_done == status.frames_total
            assert video_times(output) == video_times(root / "long.mp4")
    finally:
        server.stop()


def test_fifty_small_jobs_all_complete(fleet: Cluster, root: Path) -> None:
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    producer = fleet.producer()
    jobs = {
        producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / f"tiny-{i}.mp4"): i
        for i in range(50)
    }
    for job_id, i in jobs.items():
        status = producer.wait(job_id, timeout=200)
        assert status.state == SUCCEEDED, (i, status.reason, status.error)
        assert len(video_times(root / "out" / f"tiny-{i}.mp4")) == 10


def test_cancel_stops_a_running_job_and_cleans_up(slow_fleet: Cluster, root: Path) -> None:
    fleet = slow_fleet
    fleet.start_worker("w1")
    producer = fleet.producer()
    output = root / "out" / "cancelled.mp4"
    job_id = producer.submit(root / "source.png", root / "long.mp4", output, chunk_seconds=2)
    wait_for(lambda: _running_chunk(producer, job_id), timeout=60)
    begun = time.monotonic()
    assert producer.cancel(job_id)
    assert time.monotonic() - begun < 0.5  # no sleeping in hope
    cancelled = producer.status(job_id)
    assert cancelled.state == CANCELLED
    # Every chunk not finished says so at once: none is left showing RUNNING or PENDING.
    assert {c["state"] for c in cancelled.chunks} <= {CANCELLED, "DONE"}
    # Running chunk stops within a watch interval; pending ones are skipped, quickly.
    other = producer.submit(
        root / "source.png", root / "tiny.mp4", root / "out" / "after-cancel.mp4"
    )
    assert producer.wait(other, timeout=60).state == SUCCEEDED
    assert not output.exists()
    wait_for(lambda: not (root / ".facefusion-work" / job_id).exists(), timeout=15)
    assert not [p for p in (root / "out").iterdir() if p.name.startswith(".cancelled")]
    assert producer.status(job_id).state == CANCELLED
    assert {c["state"] for c in producer.status(job_id).chunks} <= {CANCELLED, "DONE"}


def test_an_interlaced_video_is_stitched_interlaced_with_its_field_order(
    fleet: Cluster, root: Path
) -> None:
    # Bottom field first, in chunks: the mp4 segments store no field order, so the stitch,
    # a stream copy, must say it again (ffprobe's parser would guess top first).
    target = _first_seconds_of_long(
        root, "interlaced.mkv", "-c:v", "libx264", "-flags", "+ildct+ilme", "-top", "0",
        "-c:a", "copy",
    )  # fmt: skip
    fleet.start_worker("w1")
    producer = fleet.producer()
    output = root / "out" / "interlaced.mkv"
    job_id = producer.submit(root / "source.png", target, output, chunk_seconds=1)
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED and status.chunks_total >= 3, (status.reason, status.error)
    frames = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
         "frame=interlaced_frame,top_field_first:stream=field_order", "-of", "json", str(output)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    probed = json.loads(frames)
    assert probed["streams"][0]["field_order"] == "bb"
    assert {(f["interlaced_frame"], f["top_field_first"]) for f in probed["frames"]} == {(1, 0)}
    assert video_times(output) == video_times(target)


def test_a_worker_whose_storage_roots_leave_out_the_job_is_the_fleets_fault(
    fleet: Cluster, root: Path, tmp_path: Path
) -> None:
    # The producer accepted the paths; this host mounts its storage elsewhere. That failed
    # the job as the user's input (reason path, exit 2).
    fleet.start_worker("planner", queues=LIGHT_QUEUE)
    fleet.start_worker("astray", queues=GPU_QUEUE, env={"FACEFUSION_STORAGE_ROOTS": str(tmp_path)})
    producer = fleet.producer()
    output = root / "out" / "astray.mp4"
    job_id = producer.submit(root / "source.png", root / "tiny.mp4", output)
    failed = producer.wait(job_id, timeout=60)
    assert failed.state == FAILED and failed.reason == "worker_config", failed.reason
    assert "FACEFUSION_STORAGE_ROOTS" in failed.error and not output.exists()
    # Retried first, for a worker configured right to take.
    assert fleet.log("astray").count("retry: Retry in") == fleet.settings().chunk_retries
    fleet.kill("astray")
    fleet.start_worker("gpu", queues=GPU_QUEUE)
    producer.retry(job_id)
    assert producer.wait(job_id, timeout=60).state == SUCCEEDED


def test_a_job_cancelled_before_it_was_planned_is_counted_once(fleet: Cluster, root: Path) -> None:
    producer = fleet.producer()
    job_id = producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / "unplanned.mp4")
    assert producer.cancel(job_id)  # still QUEUED: no light worker has taken its plan
    fleet.start_worker("planner", queues=LIGHT_QUEUE)
    # The plan task finds it cancelled and plans nothing; only it can count the job's end.
    wait_for(lambda: producer.store.get(job_id).get("metered"), timeout=30)
    samples = metric_samples(fleet.logs / "metrics-planner")
    cancelled = (("outcome", "cancelled"), ("reason", "cancelled"))
    assert samples[("facefusion_jobs_total", cancelled)] == 1


def _waiting_chunks(producer) -> list[str]:  # type: ignore[no-untyped-def]
    """The job ids of the chunk messages waiting in the gpu queue's lines."""
    lines = [producer.store.r.lrange(key, 0, -1) for key in priority_keys(GPU_QUEUE)]
    return sorted(
        json.loads(json.loads(raw)["headers"]["argsrepr"].replace("'", '"').replace("(", "[")
                   .replace(")", "]"))[0]
        for line in lines for raw in line
    )  # fmt: skip


def test_a_cancel_withdraws_the_jobs_waiting_chunks_and_still_counts_its_end(
    fleet: Cluster, root: Path
) -> None:
    # They stayed in line until a gpu worker came to skip each: the backlog (and KEDA, which
    # scales on it, from zero too) counted work that would never run.
    fleet.start_worker("planner", queues=LIGHT_QUEUE)
    producer = fleet.producer()
    cancelled = producer.submit(
        root / "source.png", root / "long.mp4", root / "out" / "withdrawn.mp4", chunk_seconds=2
    )
    kept = producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / "kept.mp4")
    wait_for(lambda: len(_waiting_chunks(producer)) == 5, timeout=30)  # 4 + 1, nothing runs
    assert producer.cancel(cancelled)
    assert _waiting_chunks(producer) == [kept]  # at once, the other job's left alone
    # No chunk of it will ever reach a worker to count its end: the light worker does, once.
    wait_for(lambda: producer.store.get(cancelled).get("metered"), timeout=30)
    samples = metric_samples(fleet.logs / "metrics-planner")
    assert (
        samples[("facefusion_jobs_total", (("outcome", "cancelled"), ("reason", "cancelled")))] == 1
    )
    fleet.start_worker("gpu", queues=GPU_QUEUE)
    assert producer.wait(kept, timeout=60).state == SUCCEEDED
    assert {c["deliveries"] for c in producer.status(cancelled).chunks} == {0}


def test_a_target_replaced_after_planning_fails_the_job_instead_of_mixing_two_videos(
    fleet: Cluster, root: Path
) -> None:
    """Another job's output (or the user's re-export) renamed over the target while this job
    waits for its chunks: each chunk would cut its span from the new file."""
    target = root / "replaced-after-plan.mp4"
    target.write_bytes((root / "long.mp4").read_bytes())
    fleet.start_worker("planner", queues=LIGHT_QUEUE)
    producer = fleet.producer()
    output = root / "out" / "replaced-after-plan.mp4"
    job_id = producer.submit(root / "source.png", target, output, chunk_seconds=2.5)
    wait_for(lambda: producer.status(job_id).chunks_total == 4, timeout=30)
    newer = root / "newer.mp4"
    newer.write_bytes((root / "long.mp4").read_bytes())  # the same bytes, another file
    newer.replace(target)
    fleet.start_worker("gpu", queues=GPU_QUEUE)
    failed = producer.wait(job_id, timeout=120)
    assert (failed.state, failed.reason) == (FAILED, "input_changed"), failed.error
    assert f"{target} changed after the job was planned" in failed.error
    assert not output.exists()
    assert producer.retry(job_id).action == "chunks"  # a retry meets the same change
    assert producer.wait(job_id, timeout=120).reason == "input_changed"
    # The seed's request counter says how each chunk attempt ended: it counted only the ones
    # whose swap ran, by the swap's end (a metrics probe's attempt, failed on the change after
    # its swap, counted a success).
    samples = metric_samples(fleet.logs / "metrics-gpu")
    requests = {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "facefusion_face_swap_requests_total"
    }
    assert requests.get("success", 0) == 0 and requests.get("error", 0) >= 2, requests


def test_a_target_cut_short_while_a_chunk_reads_it_is_reported_changed_not_corrupt(
    slow_fleet: Cluster, root: Path
) -> None:
    target = root / "cut-while-read.mp4"
    target.write_bytes((root / "long.mp4").read_bytes())
    slow_fleet.start_worker("w1")
    producer = slow_fleet.producer()
    output = root / "out" / "cut-while-read.mp4"
    job_id = producer.submit(root / "source.png", target, output, chunk_seconds=2.5)
    wait_for(lambda: _running_chunk(producer, job_id), timeout=60)
    os.truncate(target, target.stat().st_size // 3)  # rewritten in place, mid-read
    failed = producer.wait(job_id, timeout=120)
    assert (failed.state, failed.reason) == (FAILED, "input_changed"), failed.error
    assert not output.exists()


def test_retry_runs_again_a_finished_chunk_whose_segment_was_deleted(
    fleet: Cluster, root: Path
) -> None:
    # The fleet keeps its segments in a work directory of its own, which the producer (as
    # the README has it) does not set: retry must look where the plan recorded them.
    work = {"FACEFUSION_WORK_DIR": str(root / "fleet-work")}
    fleet.start_worker("planner", queues=LIGHT_QUEUE, env=work)
    producer = fleet.producer()
    output = root / "out" / "lost-segment.mp4"
    job_id = producer.submit(root / "source.png", root / "long.mp4", output, chunk_seconds=2.5)
    client = redis.Redis.from_url(SHARED_REDIS)
    # Every chunk message sent (the plan is stored before its messages go out), and only
    # then no light worker: no stitch until every chunk is done and one segment is gone.
    wait_for(lambda: sum(client.llen(k) for k in priority_keys(GPU_QUEUE)) == 4, timeout=30)
    fleet.kill("planner")
    fleet.start_worker("gpu", queues=GPU_QUEUE, env=work)
    wait_for(lambda: producer.status(job_id).chunks_done == 4, timeout=120)
    (root / "fleet-work" / job_id / "seg-00002.mp4").unlink()
    fleet.start_worker("stitcher", queues=LIGHT_QUEUE, env=work)
    failed = producer.wait(job_id, timeout=60)
    assert failed.state == FAILED and "segments missing" in failed.error, failed.error
    assert producer.retry(job_id) == Retried("chunks", [2])  # not a stitch that fails again
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert [c["attempts"] for c in status.chunks] == [1, 1, 2, 1]
    assert video_times(output) == video_times(root / "long.mp4")


def test_retry_reruns_only_unfinished_chunks(fleet: Cluster, root: Path) -> None:
    fleet.start_worker("planner", queues=LIGHT_QUEUE)
    producer = fleet.producer()
    output = root / "out" / "retried.mp4"
    job_id = producer.submit(root / "source.png", root / "long.mp4", output, chunk_seconds=2.5)
    wait_for(lambda: producer.status(job_id).chunks_total == 4, timeout=30)
    # A real fault: a directory squats on chunk 1's segment path, so writing it fails.
    blocker = root / ".facefusion-work" / job_id / "seg-00001.mp4"
    blocker.mkdir(parents=True)
    fleet.start_worker("gpu", queues=GPU_QUEUE)
    failed = producer.wait(job_id, timeout=120)
    # The fleet's own file, not the user's output (that was bad_output, exit 2).
    assert failed.state == FAILED and failed.reason == "internal", failed.reason
    assert failed.error.startswith("the fleet's work directory: "), failed.error
    assert failed.chunks[0]["state"] == "DONE" and failed.chunks[1]["state"] == FAILED
    assert not output.exists()
    blocker.rmdir()
    rerun = producer.retry(job_id).chunks
    assert 0 not in rerun and 1 in rerun
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert status.chunks[0]["attempts"] == 1  # the finished chunk was not run again
    assert video_times(output) == video_times(root / "long.mp4")


class _Exploit:
    """Unpickling this would create a file: the classic pickle payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickle_messages_are_refused(fleet: Cluster, root: Path, tmp_path: Path) -> None:
    fleet.start_worker("w1")
    marker = tmp_path / "pwned"
    assert pickle.loads(pickle.dumps(_Exploit(marker))) is None and marker.exists()
    marker.unlink()
    producer = fleet.producer()
    producer.app.send_task(
        TASK_CHUNK, args=[_Exploit(marker), 0], queue=GPU_QUEUE, serializer="pickle"
    )
    job_id = producer.submit(
        root / "source.png", root / "tiny.mp4", root / "out" / "after-pickle.mp4"
    )
    assert producer.wait(job_id, timeout=60).state == SUCCEEDED
    assert not marker.exists()
    assert "untrusted content" in fleet.log("w1") or "ContentDisallowed" in fleet.log("w1")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outside", "outside the storage roots"),
        ("not_video", "not a video"),
        ("missing", "no such file"),
    ],
)
def test_bad_submissions_exit_2_and_enqueue_nothing(
    case: str, message: str, root: Path, models_dir: Path, tmp_path: Path
) -> None:
    with cluster(root, models_dir) as fleet:
        target = {
            "outside": tmp_path / "elsewhere.mp4",
            # A picture named as a video (one named .png is an image target, and runs).
            "not_video": root / "still.mp4",
            "missing": root / "missing.mp4",
        }[case]
        if case == "outside":
            target.write_bytes((root / "tiny.mp4").read_bytes())
        if case == "not_video":
            target.write_bytes((root / "source.png").read_bytes())
        proc = subprocess.run(
            [sys.executable, "-m", "facefusion_tasks", "submit", str(root / "source.png"),
             str(target), "-o", str(root / "out" / "bad.mp4")],
            env=fleet.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
        client = redis.Redis.from_url(SHARED_REDIS)
        assert client.keys("*") == []  # no job record, no message


def test_status_json_names_workers_per_chunk(fleet: Cluster, root: Path) -> None:
    fleet.start_worker("w1")
    job_id = fleet.producer().submit(
        root / "source.png", root / "tiny.mp4", root / "out" / "st.mp4"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", "wait", job_id, "--json"],
        env=fleet.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["state"] == SUCCEEDED and status["frames_done"] == 10
    assert _launcher(status["chunks"][0]["worker"]) == "w1"
    assert os.path.getsize(root / "out" / "st.mp4") > 0


def test_a_message_lands_in_its_own_queue_only(root: Path, models_dir: Path) -> None:
    with cluster(root, models_dir) as fleet:
        producer = fleet.producer()
        job_id = producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / "q.mp4")
        client = redis.Redis.from_url(SHARED_REDIS)

        def waiting(queue: str) -> int:  # every priority sub-queue of it
            return sum(client.llen(key) for key in priority_keys(queue))

        assert (waiting(LIGHT_QUEUE), waiting(GPU_QUEUE)) == (1, 0)  # the plan task
        from facefusion_tasks.tasks import enqueue

        enqueue(producer.app, TASK_CHUNK, [job_id, 0], sent_at=time.time())
        assert (waiting(LIGHT_QUEUE), waiting(GPU_QUEUE)) == (1, 1)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_lets_the_running_chunk_finish(
    slow_fleet: Cluster, root: Path, stop: signal.Signals
) -> None:
    """As an orchestrator stops a pod (SIGTERM), or a terminal hangs up (SIGHUP: its default
    action ended the launcher at once, exit 129, a fault probe's finding)."""
    fleet = slow_fleet
    fleet.start_worker("w1")
    producer = fleet.producer()
    output = root / "out" / f"graceful-{stop.name}.mp4"
    job_id = producer.submit(root / "source.png", root / "long.mp4", output, chunk_seconds=4)
    running = wait_for(lambda: _running_chunk(producer, job_id), timeout=60, interval=0.02)
    worker = fleet.workers.pop("w1")
    worker.send_signal(stop)  # to the launcher alone
    try:
        assert worker.wait(60) == 0
    finally:  # never left serving the next tests' queues
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    finished = producer.status(job_id).chunks[running["index"]]
    assert finished["state"] == "DONE" and finished["attempts"] == 1  # finished, not abandoned
    fleet.start_worker("w2")  # the rest of the job goes on elsewhere
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert status.chunks[running["index"]]["attempts"] == 1
    assert video_times(output) == video_times(root / "long.mp4")


def test_a_launcher_started_under_nohup_outlives_a_hang_up(
    fleet: Cluster, root: Path, tmp_path: Path
) -> None:
    """Started ignoring SIGHUP (nohup), the launcher must outlive the terminal: handling
    SIGHUP as a stop must not override that (a review's finding)."""
    argv = [sys.executable, "-m", "facefusion_tasks", "worker", "--queues", "light",
            "--gpus", "none", "--metrics-port", "0", "--metrics-dir", str(tmp_path / "mp")]  # fmt: skip
    with open(tmp_path / "nohup.log", "wb") as log:
        launcher = subprocess.Popen(
            argv, env=fleet.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
        )  # fmt: skip
    try:
        wait_for(lambda: "light" in (tmp_path / "nohup.log").read_text(errors="replace"), 60)
        launcher.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert launcher.poll() is None, (tmp_path / "nohup.log").read_text(errors="replace")
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)


def test_a_reference_face_limits_the_swap_to_that_person(fleet: Cluster, root: Path) -> None:
    """The selector and reference travel with the job to the workers."""

    from facefusion_tasks.config import Settings
    from facefusion_tasks.video.writer import FrameWriter
    from tests.media import decode_frames

    video = root / "two-people.mp4"
    with FrameWriter(
        video, width=320, height=240, time_base=Fraction(1, 25), audio_source=None,
        settings=Settings.from_env({}), frame_rate=Fraction(25),
    ) as writer:  # fmt: skip
        for i in range(20):
            frame = background(320, 240, i)
            draw_face(frame, 70, 120, 30)  # a small face on the left
            draw_face(frame, 230, 120, 60)  # a big one on the right: the reference person
            writer.write(frame, i)
    reference = root / "reference.png"
    cv2.imwrite(str(reference), decode_frames(video)[0][:, 150:])
    fleet.start_worker("w1")
    producer = fleet.producer()
    output = root / "out" / "only-right.mp4"
    job_id = producer.submit(root / "source.png", video, output, reference=reference)
    assert producer.wait(job_id, timeout=60).state == SUCCEEDED
    before, after = decode_frames(video), decode_frames(output)
    left = [
        float(np.abs(a[:, :140].astype(int) - b[:, :140]).mean())
        for a, b in zip(before, after, strict=True)
    ]
    right = [
        float(np.abs(a[:, 170:].astype(int) - b[:, 170:]).mean())
        for a, b in zip(before, after, strict=True)
    ]
    assert max(left) < 4  # codec noise only: the other person was left alone
    assert min(right) > 8  # the reference person was swapped in every frame


def _mixed_rate(root: Path, name: str) -> Path:
    """2 s at 10 fps, then 30 fps to 5 s (110 frames), in a 1/90000 time base: a clip that
    opens slower than it ends."""
    target = root / name
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=5",
         "-vf", "settb=1/90000,setpts='if(lt(N\\,20)\\,N*9000\\,180000+(N-20)*3000)'",
         "-fps_mode", "passthrough", "-enc_time_base", "1/90000", "-video_track_timescale",
         "90000", "-c:v", "libx264", "-frames:v", "110", str(target)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return target


@pytest.mark.parametrize("ffmpeg", ["ffmpeg", imageio_ffmpeg.get_ffmpeg_exe()])
@pytest.mark.parametrize("suffix", ["mkv", "mp4"])
def test_a_clip_that_opens_slower_than_it_ends_is_stitched_to_its_own_length(
    fleet: Cluster, root: Path, suffix: str, ffmpeg: str
) -> None:
    # The stitch's stream copy gave the last frame one step of the first segment's rate
    # (0.1 s, not its own 1/30 s): into .mkv the job failed (reason media, exit 1), "lasts
    # 5.061 s, expected 5.000 s"; into .mp4 it succeeded 0.067 s long.
    target = _mixed_rate(root, f"mixed-{suffix}.mp4")
    fleet.start_worker("w1", env={"FACEFUSION_FFMPEG": ffmpeg})  # 5.1 and 9.0 differ here
    producer = fleet.producer()
    output = root / "out" / f"mixed.{suffix}"
    job_id = producer.submit(root / "source.png", target, output, chunk_seconds=1)
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    times, source = video_times(output), video_times(target)
    assert len(times) == len(source) == 110
    assert all(abs(a - b) <= Fraction(1, 2000) for a, b in zip(times, source, strict=True))
    # As a local swap has it: the source's own last frame, as each ffmpeg reads its packet
    # (5.1: 0.047 s; 9.0: 0.040 s), not the first segment's 0.1 s step.
    assert video_length(output) == pytest.approx(float(video_length(target)), abs=0.01)
