"""SUCCEEDED means a complete, verified video; a failure never touches the user's files.

Disk full on a real small tmpfs (CI runs as root), local and distributed; planning failures
that used to strand a job; exit codes that agree between `swap` and `wait`; cancel against
commit; temps of killed runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest

from facefusion_tasks.app import TASK_PLAN
from facefusion_tasks.errors import OutputError
from facefusion_tasks.faces.synthetic import background
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import CANCELLED, FAILED, SUCCEEDED
from facefusion_tasks.tasks import enqueue
from facefusion_tasks.video import staging
from tests.cluster import Cluster, cluster
from tests.media import LONG, TINY, storage_root, video_times

pytestmark = pytest.mark.timeout(240)


@contextmanager
def small_disk(directory: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `directory`, always unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                   check=True)  # fmt: skip
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def grow(directory: Path, size: str) -> None:
    """Make more room on a mounted tmpfs, keeping its files."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(directory)], check=True)


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name)


def run_cli(*args: str | Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "facefusion_tasks", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def local_env(models: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    return env | {"FACEFUSION_MODELS_DIR": str(models), "FACEFUSION_EXECUTION_PROVIDER": "cpu",
                  "FACEFUSION_BATCH_SIZE": "4", "FACEFUSION_ALLOW_STANDIN_MODELS": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clips = {"long.mp4": LONG, "tiny.mp4": {**TINY, "seconds": 1.2}}  # 30 frames here
    base = storage_root(tmp_path_factory.mktemp("shared"), clips)
    cv2.imwrite(str(base / "noface.png"), background(200, 200, 0))
    return base


# --- disk full ---------------------------------------------------------------------------------


def test_local_disk_full_fails_and_leaves_the_destination_as_it_was(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    env = local_env(models_dir)
    with small_disk(tmp_path / "small", "300k") as disk:
        keep = disk / "keep.mp4"
        keep.write_bytes(b"old\n")
        proc = run_cli("swap", root / "source.png", root / "long.mp4", "-o", keep,
                       "--no-progress", env=env)  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "no space left on device" in proc.stderr
        assert "wrote" not in proc.stdout
        assert keep.read_bytes() == b"old\n"
        assert temps(disk) == []
        # More room, same command: a complete, verified video with exactly the input's frames.
        grow(disk, "20m")
        proc = run_cli("swap", root / "source.png", root / "long.mp4", "-o", keep,
                       "--no-progress", env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert video_times(keep) == video_times(root / "long.mp4")
        assert temps(disk) == []


def test_distributed_disk_full_fails_the_job_and_retry_completes_it_exactly(
    root: Path, models_dir: Path
) -> None:
    with (
        small_disk(root / "work", "200k") as work,
        small_disk(root / "outdisk", "300k") as outdisk,
        cluster(root, models_dir, work_dir=str(work)) as fleet,
    ):
        keep = outdisk / "keep.mp4"
        keep.write_bytes(b"old\n")
        fleet.start_worker("w1")
        producer = fleet.producer()
        job_id = producer.submit(root / "source.png", root / "long.mp4", keep, chunk_seconds=3)
        # The work dir fills while segments are written: no truncated segment counts as DONE.
        failed = producer.wait(job_id, timeout=120)
        assert (failed.state, failed.reason) == (FAILED, Reason.NO_SPACE.value), failed.error
        # 200 KB holds about two of the three segments: some chunks finish, one hits the wall.
        assert 0 < failed.chunks_done < failed.chunks_total
        for chunk in failed.chunks:  # a DONE segment reads back whole, with its planned frames
            if chunk["state"] == "DONE":
                segment = work / job_id / f"seg-{chunk['index']:05d}.mp4"
                assert len(video_times(segment)) == chunk["frames"]
        assert keep.read_bytes() == b"old\n" and temps(outdisk) == []
        assert temps(work / job_id) == []
        assert run_cli("wait", job_id, env=fleet.env).returncode == 1  # the system's, not input

        grow(work, "50m")  # segments fit now; the output disk is still too small for the stitch
        producer.retry(job_id)
        failed = producer.wait(job_id, timeout=120)
        assert (failed.state, failed.reason) == (FAILED, Reason.NO_SPACE.value), failed.error
        assert failed.chunks_done == failed.chunks_total  # only the stitch failed
        assert keep.read_bytes() == b"old\n" and temps(outdisk) == []

        grow(outdisk, "50m")
        assert producer.retry(job_id).action == "stitch"  # every chunk is done: only it re-runs
        status = producer.wait(job_id, timeout=120)
        assert status.state == SUCCEEDED, (status.reason, status.error)
        assert video_times(keep) == video_times(root / "long.mp4")
        assert temps(outdisk) == []
        # Stitched outputs get the mode local ones get (the umask's), not mkstemp's 0600.
        umask = os.umask(0)
        os.umask(umask)
        assert keep.stat().st_mode & 0o777 == 0o666 & ~umask


# --- no job is ever stranded, and exit codes agree -------------------------------------------


@pytest.fixture()
def fleet(root: Path, models_dir: Path) -> Iterator[Cluster]:
    with cluster(root, models_dir) as c:
        yield c


def test_planning_failures_end_the_job_failed_never_stranded(fleet: Cluster, root: Path) -> None:
    """A record an older producer wrote (chunk seconds nan), and one no check foresaw (not a
    number at all: an unexpected exception): both end FAILED, neither stays PLANNING."""
    fleet.start_worker("w1", queues="light")
    producer = fleet.producer()
    fields = {"source": str(root / "source.png"), "target": str(root / "tiny.mp4"),
              "output": str(root / "out" / "plan.mp4"), "priority": 5}  # fmt: skip
    nan = producer.store.create(fields | {"chunk_seconds": "nan"})
    garbage = producer.store.create(
        fields | {"chunk_seconds": "ten", "output": str(root / "out" / "plan-2.mp4")}
    )
    for job_id in (nan, garbage):
        enqueue(producer.app, TASK_PLAN, [job_id], sent_at=time.time())
    bad = producer.wait(nan, timeout=60)
    assert (bad.state, bad.reason) == (FAILED, Reason.BAD_INPUT.value), bad.error
    crashed = producer.wait(garbage, timeout=60)
    assert (crashed.state, crashed.reason) == (FAILED, Reason.INTERNAL.value)
    assert "ten" in crashed.error
    assert run_cli("wait", nan, env=fleet.env).returncode == 2
    assert run_cli("wait", garbage, env=fleet.env).returncode == 1


def test_swap_and_wait_exit_alike_for_the_same_bad_input(
    fleet: Cluster, root: Path, models_dir: Path
) -> None:
    # Not a video, found only when the job is planned (the file was replaced after submit).
    target = root / "replaced.mp4"
    target.write_bytes((root / "tiny.mp4").read_bytes())
    producer = fleet.producer()
    job_id = producer.submit(root / "source.png", target, root / "out" / "replaced-out.mp4")
    target.write_text("not a video any more\n")
    fleet.start_worker("w1")
    waited = run_cli("wait", job_id, "--no-progress", env=fleet.env)
    local = run_cli("swap", root / "source.png", target, "-o", root / "out" / "local.mp4",
                    "--no-progress", env=local_env(models_dir))  # fmt: skip
    assert producer.status(job_id).reason == Reason.NOT_VIDEO.value
    assert waited.returncode == local.returncode == 2, (waited.stderr, local.stderr)
    # No face in the source image: found by a chunk, in distributed mode.
    noface = run_cli("swap", root / "noface.png", root / "tiny.mp4", "-o",
                     root / "out" / "noface.mp4", "--no-progress", env=fleet.env)  # fmt: skip
    noface_local = run_cli("swap", root / "noface.png", root / "tiny.mp4", "-o",
                           root / "out" / "noface-local.mp4", "--no-progress",
                           env=local_env(models_dir))  # fmt: skip
    assert noface.returncode == noface_local.returncode == 2, (noface.stderr, noface_local.stderr)
    assert not (root / "out" / "noface.mp4").exists()


def test_a_picture_that_changes_size_mid_stream_is_the_users_file_in_both_modes(
    fleet: Cluster, root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # tiny.mp4's first half, then its second half at 1.5 times the size, joined as they are.
    first, second = tmp_path / "first.mp4", tmp_path / "second.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(root / "tiny.mp4"), "-t", "0.6",
                    "-c:v", "libx264", "-an", str(first)], check=True, timeout=60)  # fmt: skip
    subprocess.run(["ffmpeg", "-v", "error", "-ss", "0.6", "-i", str(root / "tiny.mp4"),
                    "-vf", "scale=iw*3/2:-2", "-c:v", "libx264", "-an", str(second)],
                   check=True, timeout=60)  # fmt: skip
    (tmp_path / "list.txt").write_text(f"file '{first}'\nfile '{second}'\n")
    target = root / "resized.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i",
                    str(tmp_path / "list.txt"), "-map", "0:v", "-c", "copy", str(target)],
                   check=True, timeout=60)  # fmt: skip
    fleet.start_worker("w1")
    waited = run_cli("swap", root / "source.png", target, "-o", root / "out" / "resized.mp4",
                     "--no-progress", env=fleet.env)  # fmt: skip
    local = run_cli("swap", root / "source.png", target, "-o", root / "out" / "resized-local.mp4",
                    "--no-progress", env=local_env(models_dir))  # fmt: skip
    for done in (waited, local):
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "the picture changes size mid-stream" in errors[0], errors
    assert not (root / "out" / "resized.mp4").exists()
    assert not (root / "out" / "resized-local.mp4").exists()


def test_frames_the_container_gives_no_times_are_the_users_file(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    # H.264 with B-frames, as a swap writes it from an MPEG-TS source, stream-copied into AVI:
    # AVI stores no presentation times, and the decoder's guesses repeat one near the end.
    ts, swapped, avi = tmp_path / "in.ts", tmp_path / "swapped.mp4", tmp_path / "copied.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(root / "long.mp4"), "-t", "2",
                    "-c:v", "libx264", "-c:a", "aac", str(ts)], check=True, timeout=60)  # fmt: skip
    made = run_cli("swap", root / "source.png", ts, "-o", swapped, "--no-progress",
                   env=local_env(models_dir))  # fmt: skip
    assert made.returncode == 0, made.stderr
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(swapped), "-c", "copy", str(avi)],
                   check=True, timeout=60)  # fmt: skip
    done = run_cli("swap", root / "source.png", avi, "-o", tmp_path / "out.mp4", "--no-progress",
                   env=local_env(models_dir))  # fmt: skip
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "does not follow the one before" in line and "re-encode it" in line, line
    assert not (tmp_path / "out.mp4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_symlink_put_at_the_output_after_submit_is_replaced_not_written_through(
    fleet: Cluster, root: Path
) -> None:
    # The worker located the output again, following the link: the job wrote its result over
    # its own target (or over another job's input), and said SUCCEEDED.
    victim = root / "victim.mp4"
    victim.write_bytes((root / "tiny.mp4").read_bytes())
    before = victim.read_bytes()
    output = root / "out" / "linked.mp4"
    producer = fleet.producer()
    job_id = producer.submit(root / "source.png", victim, output)
    output.symlink_to(victim)
    fleet.start_worker("w1")
    status = producer.wait(job_id, timeout=90)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert victim.read_bytes() == before  # the target is as it was
    assert not output.is_symlink() and video_times(output) == video_times(victim)


def test_an_input_swapped_for_a_symlink_out_of_the_roots_is_the_users_path_not_the_fleets(
    fleet: Cluster, root: Path, tmp_path: Path
) -> None:
    # Refused, rightly, but as reason worker_config ("every worker needs the producer's
    # FACEFUSION_STORAGE_ROOTS"), exit 1, and retried first: the roots were the same.
    outside = tmp_path / "outside.mp4"
    outside.write_bytes((root / "tiny.mp4").read_bytes())
    target = root / "swapped-later.mp4"
    target.write_bytes(outside.read_bytes())
    producer = fleet.producer()
    output = root / "out" / "swapped-later.mp4"
    job_id = producer.submit(root / "source.png", target, output)
    target.unlink()
    target.symlink_to(outside)
    fleet.start_worker("w1")
    status = producer.wait(job_id, timeout=90)
    assert (status.state, status.reason) == (FAILED, Reason.PATH.value), status.error
    assert "a symlink leading outside the storage roots" in status.error
    assert not output.exists()


def test_a_missing_model_fails_the_job_without_retries(root: Path, tmp_path: Path) -> None:
    with cluster(root, tmp_path / "no-models") as fleet:
        fleet.start_worker("w1")
        producer = fleet.producer()
        job_id = producer.submit(root / "source.png", root / "tiny.mp4", root / "out" / "m.mp4")
        status = producer.wait(job_id, timeout=60)
        assert (status.state, status.reason) == (FAILED, Reason.MODEL.value)
        time.sleep(1.5)  # a retry would be back in line at once (no countdown)
        assert "retrying" not in fleet.log("w1")
        assert run_cli("wait", job_id, env=fleet.env).returncode == 1


# --- cancel against commit, in-process on a real store -----------------------------------------


def _run_chunks(root: Path, models_dir: Path, redis_url: str, output: Path):  # type: ignore[no-untyped-def]
    """Plan and swap every chunk of a job here (real store, models, ffmpeg); the job is then
    ready to stitch."""
    from facefusion_tasks import runner
    from facefusion_tasks.config import Settings
    from facefusion_tasks.producer import Producer

    settings = Settings.from_env(
        {}, broker_url=redis_url, storage_roots=str(root), models_dir=models_dir,
        execution_provider="cpu", batch_size=4, allow_standin_models=True,
    )  # fmt: skip
    producer = Producer(settings)
    job_id = producer.submit(root / "source.png", root / "tiny.mp4", output, chunk_seconds=0.5)
    indexes = runner.plan_job(producer.store, settings, job_id)
    assert indexes
    for index in indexes:
        runner.run_chunk(producer.store, settings, job_id, index, worker="here")
    return producer, settings, job_id


def test_a_cancel_mid_stitch_wins_and_leaves_the_old_output(
    root: Path, models_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facefusion_tasks import stitching

    output = root / "out" / "mid-stitch.mp4"
    output.write_bytes(b"the user's old file")
    producer, settings, job_id = _run_chunks(root, models_dir, redis_url, output)
    real = stitching.stitch_segments

    def stitch_then_cancel(*args, **kwargs):  # type: ignore[no-untyped-def]
        staged = real(*args, **kwargs)
        assert producer.cancel(job_id)  # lands after the stitch, before the commit
        return staged

    monkeypatch.setattr(stitching, "stitch_segments", stitch_then_cancel)
    assert stitching.stitch_job(producer.store, settings, job_id) is None
    assert producer.status(job_id).state == CANCELLED
    assert output.read_bytes() == b"the user's old file"
    assert temps(output.parent) == []
    assert not (root / ".facefusion-work" / job_id).exists()


def test_a_cancel_during_the_commit_is_refused_and_the_output_stays(
    root: Path, models_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facefusion_tasks import stitching
    from facefusion_tasks.video.stitch import StagedOutput

    output = root / "out" / "committing.mp4"
    producer, settings, job_id = _run_chunks(root, models_dir, redis_url, output)
    real = StagedOutput.commit
    answers: list[bool] = []

    def cancel_then_commit(self: StagedOutput) -> Path:
        answers.append(producer.cancel(job_id))
        return real(self)

    monkeypatch.setattr(StagedOutput, "commit", cancel_then_commit)
    assert stitching.stitch_job(producer.store, settings, job_id) == output
    assert answers == [False]
    assert producer.status(job_id).state == SUCCEEDED
    assert video_times(output) == video_times(root / "tiny.mp4")


# --- the user's files -------------------------------------------------------------------------


def test_output_equal_to_the_source_image_is_refused(root: Path, models_dir: Path) -> None:
    image = root / "face.mp4"  # an image under a video's name: opencv reads it by content
    image.write_bytes((root / "source.png").read_bytes())
    before = image.read_bytes()
    proc = run_cli("swap", image, root / "tiny.mp4", "-o", image, "--no-progress",
                   env=local_env(models_dir))  # fmt: skip
    assert proc.returncode == 2 and "overwrite an input image" in proc.stderr
    assert image.read_bytes() == before


def test_a_killed_swaps_temp_is_removed_by_the_next_run(
    root: Path, models_dir: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "killed.mp4"
    env = local_env(models_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "facefusion_tasks", "swap", str(root / "source.png"),
         str(root / "long.mp4"), "-o", str(destination), "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not temps(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    left = temps(tmp_path)
    assert len(left) == 1  # what a SIGKILL leaves: nothing can run in the killed process
    done = run_cli("swap", root / "source.png", root / "tiny.mp4", "-o", destination,
                   "--no-progress", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert temps(tmp_path) == []  # the writer's pid is gone: the next run swept its temp


def test_a_directory_gone_read_only_at_the_commit_says_so_and_its_temp_goes_later(
    tmp_path: Path,
) -> None:
    # The cleanup's own unlink failed too (EROFS) and raised over the commit's error: an
    # "internal" OSError where the output was refused, and the temp of a live worker stayed
    # beside the output for good (its pid is alive, so the sweep kept it).
    with small_disk(tmp_path / "out", "1m") as out:
        destination = out / "swapped.mp4"
        temp = staging.write_temp(destination, b"a verified video")
        subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
        with pytest.raises(OutputError, match="cannot move into place .Read-only file system"):
            staging.commit(temp, destination)
        assert temps(out) == [temp.name] and not destination.exists()
        subprocess.run(["mount", "-o", "remount,rw", str(out)], check=True)
        # This process is alive and wrote it, but no longer writes it: the next write sweeps.
        staging.commit(staging.write_temp(destination, b"the retry's video"), destination)
        assert temps(out) == [] and destination.read_bytes() == b"the retry's video"
