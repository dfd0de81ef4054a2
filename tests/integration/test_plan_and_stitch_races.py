"""Plans and stitches that run again, run long or lose a race, on a real Redis and real ffmpeg."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from facefusion_tasks import objects, runner, stitching
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import MediaError, TransientError
from facefusion_tasks.faces.synthetic import background, draw_face
from facefusion_tasks.liveness import sweep
from facefusion_tasks.metrics.keys import LIVE_KEY
from facefusion_tasks.pipeline import SwapJob, run_swap
from facefusion_tasks.producer import Producer
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import (
    CANCELLED,
    COMMITTING,
    FAILED,
    PLANNING,
    RUNNING,
    STITCHING,
    SUCCEEDED,
    JobStore,
)
from facefusion_tasks.video.probe import probe
from facefusion_tasks.video.samples import make_sample_video
from facefusion_tasks.workspace import segment_path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("races")
    image = background(200, 200, 0)
    draw_face(image, 100, 100, 70)
    cv2.imwrite(str(root / "source.png"), image)
    make_sample_video(root / "clip.mp4", seconds=2, faces=1, audio=False)
    return root


def _settings(media: Path, models: Path, **changes: object) -> Settings:
    return Settings.from_env(
        {},
        storage_roots=str(media),
        models_dir=models,
        execution_provider="cpu",
        allow_standin_models=True,
        chunk_seconds=0.5,
        **changes,  # type: ignore[arg-type]
    )


def _job(store: JobStore, media: Path) -> str:
    return store.create(
        {
            "source": str(media / "source.png"),
            "target": str(media / "clip.mp4"),
            "output": str(media / "out.mp4"),
        }
    )


def test_a_plan_that_runs_again_sends_the_chunks_no_worker_took(
    store: JobStore, media: Path, models_dir: Path
) -> None:
    """The plan task is retried (a Redis error after the plan was stored) or redelivered (its
    process died while sending): the job is RUNNING already, and its chunks must still go out."""
    settings = _settings(media, models_dir)
    job_id = _job(store, media)
    first = runner.plan_job(store, settings, job_id)
    assert len(first) >= 3 and store.state(job_id) == RUNNING
    store.chunk_delivered(job_id, first[0], worker="w", pid=1)  # one a worker already took
    assert runner.plan_job(store, settings, job_id) == first[1:]


def test_a_cancel_while_planning_sends_nothing_and_leaves_nothing_forever(
    store: JobStore, media: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(media, models_dir)
    job_id = _job(store, media)
    real = runner.plan_chunks

    def cancel_then_plan(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert store.cancel(job_id)[0]  # lands while the plan reads the video
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "plan_chunks", cancel_then_plan)
    assert runner.plan_job(store, settings, job_id) == []
    assert store.state(job_id) == CANCELLED
    keys = list(store.r.scan_iter(f"facefusion:job:{job_id}*"))
    assert keys and all(store.r.ttl(k) > 0 for k in keys), {k: store.r.ttl(k) for k in keys}


def _swept(store: JobStore, settings: Settings, job_id: str, *, later: float = 60) -> None:
    """A sweep, `later` seconds from now (past stall_seconds), finds the job silent in
    STITCHING or COMMITTING and sends it a stitch, and nothing else."""
    sent: list[object] = []
    sweep(
        store,
        settings,
        enqueue=lambda *c: sent.append(c),
        light_line=lambda _: frozenset(),
        gpu_line=lambda _: frozenset(),
        now=time.time() + later,
    )
    assert sent == [("stitch", [job_id], 9)]


#: A stitch's process on its own, as a light worker's pool process is: this test process has
#: children of its own (a session's S3 server) whose CPU would pass for the stitch's progress.
_STITCHER = """
import signal, subprocess, sys, threading, time
from facefusion_tasks import runner
from facefusion_tasks.config import Settings
from facefusion_tasks.store import JobStore, connect
from facefusion_tasks.video import ffbin

url, job_id = sys.argv[1:3]
settings = Settings.from_env({}, stall_seconds=2, heartbeat_seconds=0.2, sweep_seconds=1)


def background():  # a worker's own heartbeat and stall sweep: work beside the task's
    while True:
        end = time.thread_time() + 0.03
        while time.thread_time() < end:
            pass
        time.sleep(0.1)


threading.Thread(target=background, daemon=True).start()
ffmpeg = subprocess.Popen(
    [ffbin.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi",
     "-i", "testsrc2=s=640x360", "-t", "60", "-f", "null", "-"],
    stdin=subprocess.DEVNULL,
)
with runner.beating(JobStore(connect(url)), settings, job_id) as steady:
    print("working", flush=True)
    sys.stdin.readline()
    ffmpeg.send_signal(signal.SIGSTOP)
    print("stopped", flush=True)
    sys.stdin.readline()
    steady.set()  # committing: an upload's completion waits on the server
    print("steady", flush=True)
    sys.stdin.readline()
ffmpeg.kill()
"""


def test_a_long_stitch_beats_its_clock_so_the_sweep_leaves_it_alone(
    store: JobStore, redis_url: str
) -> None:
    settings = Settings.from_env({}, stall_seconds=2, heartbeat_seconds=0.2, sweep_seconds=1)
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    assert store.set_state(job_id, RUNNING) and store.set_state(job_id, STITCHING)
    store.r.zadd(LIVE_KEY, {job_id: time.time() - 60})  # entered STITCHING long ago
    sent: list[object] = []

    def swept() -> list[object]:
        report = sweep(
            store,
            settings,
            enqueue=lambda *c: sent.append(c),
            light_line=lambda _: frozenset(),
            gpu_line=lambda _: frozenset(),
        )
        return [*sent, *report.failed_jobs]

    stitcher = subprocess.Popen(
        [sys.executable, "-c", _STITCHER, redis_url, job_id],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert stitcher.stdin is not None and stitcher.stdout is not None
        # Its ffmpeg working: the CPU it uses is the progress the clock beats on.
        assert stitcher.stdout.readline() == "working\n"
        time.sleep(0.6)
        assert swept() == []
        # Stopped (SIGSTOP; a hung mount alike), it makes no progress while the stitch waits
        # on it: no beats, so the sweep sends the stitch again after stall_seconds. A clock
        # beaten regardless kept such a job STITCHING for the stitch's whole time limit
        # (1800 s), with `retry` refused; the process's other threads, busy with their own
        # work (a review's finding), must not beat for it either.
        stitcher.stdin.write("\n")
        stitcher.stdin.flush()
        assert stitcher.stdout.readline() == "stopped\n"
        time.sleep(settings.stall_seconds + 3 * settings.heartbeat_seconds)
        assert swept() == [("stitch", [job_id], 9)]
        # Committing, where a wait with no CPU anywhere is normal: it beats on regardless.
        stitcher.stdin.write("\n")
        stitcher.stdin.flush()
        assert stitcher.stdout.readline() == "steady\n"
        time.sleep(settings.stall_seconds + 3 * settings.heartbeat_seconds)
        assert swept() == [("stitch", [job_id], 9)]  # nothing more
        stitcher.stdin.write("\n")
        stitcher.stdin.flush()
        assert stitcher.wait(timeout=30) == 0
    finally:
        stitcher.kill()


def test_a_chunk_that_finishes_after_a_cancel_stays_cancelled_and_expires(
    store: JobStore,
) -> None:
    from fractions import Fraction

    from facefusion_tasks.jobs import Chunk

    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    store.set_state(job_id, PLANNING)  # as the planner does
    store.set_plan(job_id, [Chunk(i, i, i + 1, 1, Fraction(1, 25)) for i in range(2)], 2, {})
    assert store.set_state(job_id, PLANNING) and store.set_state(job_id, RUNNING)
    assert store.cancel(job_id)[0]
    assert store.chunk_done(job_id, 0, 1) is False  # the running chunk finished just after
    assert store.chunks(job_id)[0]["state"] == CANCELLED
    assert store.r.ttl(f"facefusion:job:{job_id}:done") in (-2, *range(1, store.record_ttl + 1))


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                found.add(int(entry.name))
    return found


def test_a_writer_that_cannot_start_leaves_no_decoder_behind(media: Path, models_dir: Path) -> None:
    """nvenc asked for where it cannot encode: the writer refuses after the decoder started."""
    from facefusion_tasks.errors import FaceFusionError
    from facefusion_tasks.faces.loader import load_models

    settings = _settings(media, models_dir, video_encoder="h264_nvenc")
    engine = load_models(settings.replace(video_encoder="libx264")).engine
    engine.set_source(media / "source.png")
    before = _children()
    job = SwapJob((media / "source.png",), media / "clip.mp4", media / "never.mp4")
    with pytest.raises(FaceFusionError):
        run_swap(job, engine, settings)
    deadline = time.monotonic() + 5
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children() - before == set()
    assert not (media / "never.mp4").exists()
    assert threading.active_count() < 50


def _stitchable(store: JobStore, settings: Settings, media: Path, name: str) -> str:
    """A job whose every chunk is swapped into its segment, waiting for its stitch; `name`
    is a file in `media` or an s3:// object."""
    job_id = store.create(
        {
            "source": str(media / "source.png"),
            "target": str(media / "clip.mp4"),
            "output": name if name.startswith("s3://") else str(media / name),
        }
    )
    for index in runner.plan_job(store, settings, job_id):
        runner.run_chunk(store, settings, job_id, index, worker="w")
    assert store.state(job_id) == RUNNING and not store.undone_chunks(job_id)
    return job_id


def test_a_stitcher_lost_while_committing_is_finished_by_the_next_stitch(
    store: JobStore, media: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stitcher killed after its rename, or between COMMITTING and the rename, leaves a job
    in COMMITTING; the sweep sends a stitch, which recognises the committed file (or renames
    the verified temp still waiting beside it) by the job's commit mark and records the
    success. The kill is injected at the two points a SIGKILL cannot be timed to hit."""
    settings = _settings(media, models_dir, stall_seconds=10)
    frames = probe(media / "clip.mp4").frame_count
    real_set_state = store.set_state

    def die_before_success(job: str, state: str, **kwargs: object) -> bool:
        if state == SUCCEEDED:
            raise SystemExit("killed after the rename")
        return real_set_state(job, state, **kwargs)  # type: ignore[arg-type]

    def die_before_rename(*_args: object, **_kwargs: object) -> None:
        raise SystemExit("killed before the rename")

    # Killed after the rename: the file in place is the one the mark names.
    after = _stitchable(store, settings, media, "after.mp4")
    monkeypatch.setattr(store, "set_state", die_before_success)
    with pytest.raises(SystemExit):
        stitching.stitch_job(store, settings, after)
    monkeypatch.undo()
    assert store.state(after) == COMMITTING
    committed = (media / "after.mp4").stat()
    # Before a sweep has found its stitcher silent, a duplicate stitch message leaves the
    # commit alone (the stitcher may still be uploading).
    assert stitching.stitch_job(store, settings, after) is None
    assert store.state(after) == COMMITTING
    _swept(store, settings, after)
    assert stitching.stitch_job(store, settings, after) == media / "after.mp4"
    assert store.state(after) == SUCCEEDED
    assert (media / "after.mp4").stat().st_ino == committed.st_ino
    assert probe(media / "after.mp4").frame_count == frames

    # Killed between COMMITTING and the rename: the verified temp waits beside the output.
    before = _stitchable(store, settings, media, "before.mp4")
    monkeypatch.setattr(stitching, "commit", die_before_rename)
    with pytest.raises(SystemExit):
        stitching.stitch_job(store, settings, before)
    monkeypatch.undo()
    temp = media / json.loads(store.get(before)["commit"])["temp"]
    assert store.state(before) == COMMITTING and temp.exists()
    assert not (media / "before.mp4").exists()
    _swept(store, settings, before)
    assert stitching.stitch_job(store, settings, before) == media / "before.mp4"
    assert store.state(before) == SUCCEEDED and not temp.exists()
    assert probe(media / "before.mp4").frame_count == frames

    # Neither in place nor waiting (an older file at the output is not mistaken for it): the
    # job fails as stalled, with the segments kept for `retry`.
    gone = _stitchable(store, settings, media, "after.mp4")
    monkeypatch.setattr(stitching, "commit", die_before_rename)
    with pytest.raises(SystemExit):
        stitching.stitch_job(store, settings, gone)
    monkeypatch.undo()
    (media / json.loads(store.get(gone)["commit"])["temp"]).unlink()
    _swept(store, settings, gone)
    with pytest.raises(MediaError) as failed:
        stitching.stitch_job(store, settings, gone)
    assert failed.value.reason == Reason.STALLED
    assert (media / "after.mp4").stat().st_ino == committed.st_ino


@pytest.mark.parametrize(
    ("wakes", "retried"),
    [("at_the_rename", "stalled"), ("before_the_rename", "stalled"), ("at_the_rename", "failed")],
)
def test_a_stitcher_stopped_in_committing_and_retried_never_replaces_a_later_output(
    store: JobStore,
    media: Path,
    models_dir: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    wakes: str,
    retried: str,
) -> None:
    """A stitcher stopped in COMMITTING (a frozen process, a suspended host), its verified
    temp beside the output; `retry` reopens the stalled job, a new stitch succeeds, and a
    later job writes the same output. The stopped one wakes: its rename put the old stitch
    over the later job's output, both jobs SUCCEEDED (found by a fault probe with SIGSTOP).
    Now `retry` removes the stopped one's temp (its rename finds nothing), and a stitcher that
    wakes before its rename first looks whether the commit is still its own."""
    settings = _settings(
        media, models_dir, broker_url=redis_url, stall_seconds=1, heartbeat_seconds=0.5
    )
    job_id = _stitchable(store, settings, media, "fenced.mp4")
    output = media / "fenced.mp4"
    stopped, thaw = threading.Event(), threading.Event()
    real_commit, real_still_ours = stitching.commit, stitching._still_ours
    first = threading.current_thread()

    def stop_here() -> None:
        if threading.current_thread() is not first:  # the stopped stitcher, not the retry's
            stopped.set()
            assert thaw.wait(60)

    def commit(*args: Any, **kwargs: Any) -> None:
        if wakes == "at_the_rename":  # after its last look at the job
            stop_here()
        real_commit(*args, **kwargs)

    def still_ours(*args: Any) -> bool:
        if wakes == "before_the_rename":
            stop_here()
        return real_still_ours(*args)

    monkeypatch.setattr(stitching, "commit", commit)
    monkeypatch.setattr(stitching, "_still_ours", still_ours)
    # A stopped process beats no clock: the job stalls.
    monkeypatch.setattr(stitching, "beating", lambda *_: contextlib.nullcontext(threading.Event()))
    results: list[object] = []
    stale = threading.Thread(
        target=lambda: results.append(stitching.stitch_job(store, settings, job_id))
    )
    stale.start()
    assert stopped.wait(60) and store.state(job_id) == COMMITTING
    temp = media / json.loads(store.get(job_id)["commit"])["temp"]
    assert temp.exists()
    time.sleep(1.5)  # past stall_seconds
    if retried == "failed":  # as the sweep fails a job stuck in COMMITTING too long
        assert store.set_state(job_id, FAILED, reason=Reason.STALLED, only_from=(COMMITTING,))
    assert Producer(settings).retry(job_id).action == "stitch"
    assert not temp.exists()  # fenced: the stopped stitcher's rename finds nothing
    assert stitching.stitch_job(store, settings, job_id) == output
    assert store.state(job_id) == SUCCEEDED
    # A later job writes the same output.
    output.write_bytes(b"a later job's output")
    thaw.set()
    stale.join(60)
    assert results == [None]  # it stood down, nothing raised or recorded
    assert output.read_bytes() == b"a later job's output"
    assert store.state(job_id) == SUCCEEDED
    assert not [p.name for p in media.iterdir() if p.name.startswith(".") and "fenced" in p.name]


def test_a_stitch_that_began_before_another_stands_down_when_it_wakes(
    store: JobStore, media: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stitches of one job (a redelivered duplicate; one stopped, then superseded by a
    retry's): only the one that began last may commit. The earlier one, woken while the later
    one stitches, moved the job to COMMITTING under it; and their two steps (record the mark,
    then move) once interleaved so that each stood down for the other, and the job sat in
    COMMITTING until the sweep failed it as stalled (review)."""
    settings = _settings(media, models_dir)
    job_id = _stitchable(store, settings, media, "twice.mp4")
    paused = {name: threading.Event() for name in ("earlier", "later")}
    resume = {name: threading.Event() for name in ("earlier", "later")}
    real_mark = stitching.commit_mark

    def commit_mark(*args: Any) -> dict[str, Any]:
        name = threading.current_thread().name
        paused[name].set()  # verified, about to commit
        assert resume[name].wait(60)
        return real_mark(*args)

    monkeypatch.setattr(stitching, "commit_mark", commit_mark)
    results: dict[str, object] = {}

    def stitch(name: str) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: results.update({name: stitching.stitch_job(store, settings, job_id)}),
            name=name,
        )
        thread.start()
        assert paused[name].wait(60)
        return thread

    earlier = stitch("earlier")
    later = stitch("later")
    resume["earlier"].set()
    earlier.join(60)
    assert results == {"earlier": None} and store.state(job_id) == STITCHING
    resume["later"].set()
    later.join(60)
    assert results == {"earlier": None, "later": media / "twice.mp4"}
    assert store.state(job_id) == SUCCEEDED
    assert probe(media / "twice.mp4").frame_count == probe(media / "clip.mp4").frame_count
    assert not [p.name for p in media.iterdir() if p.name.startswith(".") and "twice" in p.name]


def test_a_commit_that_fails_for_now_is_stitched_again_by_its_retry(
    store: JobStore, media: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload to object storage failing for now (a 503, a lost connection) is aborted and
    retried. Left in COMMITTING, the retry took the job for a commit in progress and stood
    aside, and the sweep, finding no upload, failed the job as stalled (review). Injected at
    the commit: the storage's own failure is the object tests' to make."""
    settings = _settings(media, models_dir)
    job_id = _stitchable(store, settings, media, "again.mp4")
    real_commit = stitching.commit

    def unavailable(staged: Any, *_args: Any, **_kwargs: Any) -> None:
        staged.discard()  # as commit() leaves it: the temp gone, the key untouched
        raise TransientError("again.mp4: object storage failed (SlowDown)")

    monkeypatch.setattr(stitching, "commit", unavailable)
    with pytest.raises(TransientError):
        stitching.stitch_job(store, settings, job_id)
    assert store.state(job_id) == STITCHING
    monkeypatch.setattr(stitching, "commit", real_commit)
    assert stitching.stitch_job(store, settings, job_id) == media / "again.mp4"  # the retry
    assert store.state(job_id) == SUCCEEDED
    assert probe(media / "again.mp4").frame_count == probe(media / "clip.mp4").frame_count


def test_a_stitch_that_fails_after_a_later_one_began_leaves_the_job_to_it(
    store: JobStore, media: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped stitcher, superseded by the sweep's new stitch, wakes and fails (its ffmpeg
    timed out while it was stopped, its scratch was swept): that failure failed the job the
    later stitch was finishing. Now only the latest stitch's failure counts."""
    settings = _settings(media, models_dir)
    job_id = _stitchable(store, settings, media, "superseded.mp4")
    paused, resume = threading.Event(), threading.Event()
    real_stitch = stitching.stitch_segments

    def stopped_then_broken(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "earlier":
            paused.set()
            assert resume.wait(60)
            raise MediaError("ffmpeg timed out", reason=Reason.TIMEOUT)
        return real_stitch(*args, **kwargs)

    monkeypatch.setattr(stitching, "stitch_segments", stopped_then_broken)
    results: dict[str, object] = {}

    def stitch() -> None:
        name = threading.current_thread().name
        try:
            results[name] = stitching.stitch_job(store, settings, job_id)
        except Exception as exc:  # the task would fail the job with it
            results[name] = exc

    earlier = threading.Thread(target=stitch, name="earlier")
    earlier.start()
    assert paused.wait(60)
    real_commit = stitching.commit

    def commit(*args: Any, **kwargs: Any) -> None:
        resume.set()  # the earlier one wakes and fails before the later one commits
        earlier.join(60)
        real_commit(*args, **kwargs)

    monkeypatch.setattr(stitching, "commit", commit)
    later = threading.Thread(target=stitch, name="later")
    later.start()
    later.join(60)
    assert results == {"earlier": None, "later": media / "superseded.mp4"}
    assert store.state(job_id) == SUCCEEDED
    assert probe(media / "superseded.mp4").frame_count == probe(media / "clip.mp4").frame_count


def test_a_stitch_message_for_a_job_with_chunks_to_run_does_nothing(
    store: JobStore, media: Path, models_dir: Path
) -> None:
    """A stitch message that arrives when the job has chunks left to run: one sent before
    `retry` reopened the job to redo a chunk whose segment was lost (a recovery's stitch still
    in line, a stitch's own retry). It moved the job to STITCHING and failed it on the missing
    segment, under the chunk `retry` had just sent."""
    settings = _settings(media, models_dir)
    job_id = _stitchable(store, settings, media, "early.mp4")
    store.reset_chunk(job_id, 1)  # as `retry` does for a chunk whose segment was lost
    segment_path(settings, job_id, 1).unlink()
    assert store.undone_chunks(job_id) == [1]
    assert stitching.stitch_job(store, settings, job_id) is None
    assert store.state(job_id) == RUNNING
    assert store.undone_chunks(job_id) == [1]
    runner.run_chunk(store, settings, job_id, 1, worker="w")
    assert stitching.stitch_job(store, settings, job_id) == media / "early.mp4"
    assert store.state(job_id) == SUCCEEDED


def test_a_damaged_segment_is_named_and_removed_so_retry_runs_its_chunk_again(
    store: JobStore, media: Path, models_dir: Path
) -> None:
    """A segment cut short after its chunk was done (a disk's fault, a stray write). The
    stitch failed on the concat list, and `retry`, which runs again only chunks whose segment
    is gone, stitched the same segment and failed the same way, for ever (a fault probe's
    finding)."""
    settings = _settings(media, models_dir)
    job_id = _stitchable(store, settings, media, "damaged.mp4")
    damaged = segment_path(settings, job_id, 1)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    kept = segment_path(settings, job_id, 0).read_bytes()
    with pytest.raises(MediaError, match=r"segments damaged \(chunk 1: ") as caught:
        stitching.stitch_job(store, settings, job_id)
    assert "`retry` runs those chunks again" in str(caught.value)
    assert not damaged.exists()  # so `retry` sees it gone, and runs chunk 1 again
    assert segment_path(settings, job_id, 0).read_bytes() == kept
    assert not (media / "damaged.mp4").exists()
    # What `retry` then does: chunk 1 again, and the stitch succeeds.
    store.fail(job_id, Reason.MEDIA, str(caught.value))
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
    store.reset_chunk(job_id, 1)
    runner.run_chunk(store, settings, job_id, 1, worker="w")
    assert stitching.stitch_job(store, settings, job_id) == media / "damaged.mp4"
    assert probe(media / "damaged.mp4").frame_count == probe(media / "clip.mp4").frame_count


@pytest.mark.parametrize("taken_back_by", ["retry", "sweep"])
def test_a_stitcher_stopped_mid_upload_cannot_complete_it_once_taken_back(
    store: JobStore,
    media: Path,
    models_dir: Path,
    redis_url: str,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    taken_back_by: str,
) -> None:
    """An object output's stitcher stopped in the middle of its upload (a frozen process); the
    job is taken back, by `retry` (then stitched again) or by the sweep's stitch (which fails
    it as stalled), and a later job writes the same key. Woken, the stopped one completed its
    multipart upload over the later output. Now its upload's id is recorded before any part
    goes up, and whoever takes the job back aborts it: the woken stitcher's upload fails."""
    from facefusion_tasks.objects import ObjectRef
    from tests.s3server import client, uploads

    s3, bucket = client(s3_env), f"fence-{taken_back_by}"
    s3.create_bucket(Bucket=bucket)
    settings = _settings(
        media, models_dir, broker_url=redis_url, stall_seconds=1, heartbeat_seconds=0.5,
        s3_buckets=bucket,
    )  # fmt: skip
    job_id = _stitchable(store, settings, media, f"s3://{bucket}/out.mp4")
    stopped, thaw = threading.Event(), threading.Event()
    real_put = objects._put_part

    def put_part(*args: Any) -> Any:
        if not stopped.is_set():  # the first upload's part: the stitcher stops here
            stopped.set()
            assert thaw.wait(60)
        return real_put(*args)

    monkeypatch.setattr(objects, "_put_part", put_part)
    monkeypatch.setattr(stitching, "beating", lambda *_: contextlib.nullcontext(threading.Event()))
    results: list[object] = []
    stale = threading.Thread(
        target=lambda: results.append(stitching.stitch_job(store, settings, job_id)), name="stale"
    )
    stale.start()
    assert stopped.wait(60) and store.state(job_id) == COMMITTING
    assert store.get(job_id)["upload"] and len(uploads(s3, bucket)) == 1
    time.sleep(1.5)  # past stall_seconds
    if taken_back_by == "retry":
        assert Producer(settings).retry(job_id).action == "stitch"
        assert uploads(s3, bucket) == []  # aborted
        assert stitching.stitch_job(store, settings, job_id) == ObjectRef(bucket, "out.mp4")
        assert store.state(job_id) == SUCCEEDED
    else:
        _swept(store, settings, job_id)
        with pytest.raises(MediaError) as failed:
            stitching.stitch_job(store, settings, job_id)
        assert failed.value.reason == Reason.STALLED
        runner.fail_job(store, job_id, failed.value, index=None)  # as the stitch task does
        assert uploads(s3, bucket) == []  # aborted
    s3.put_object(Bucket=bucket, Key="out.mp4", Body=b"a later job's output")
    thaw.set()
    stale.join(60)
    assert results == [None]  # it stood down, nothing raised
    assert s3.get_object(Bucket=bucket, Key="out.mp4")["Body"].read() == b"a later job's output"
    assert uploads(s3, bucket) == []


def test_an_upload_whose_id_could_not_be_recorded_is_stitched_again_by_its_retry(
    store: JobStore,
    media: Path,
    models_dir: Path,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis lost just as the stitcher records its upload's id: the upload is aborted, and the
    job goes back to STITCHING for the retry (left in COMMITTING, the retry took it for a
    commit in progress, and the sweep failed it as stalled)."""
    import redis

    from facefusion_tasks.objects import ObjectRef
    from tests.s3server import client, keys, uploads

    s3, bucket = client(s3_env), "fence-lost"
    s3.create_bucket(Bucket=bucket)
    settings = _settings(media, models_dir, s3_buckets=bucket)
    job_id = _stitchable(store, settings, media, f"s3://{bucket}/out.mp4")
    real_set_state = store.set_state

    def lost(job: str, state: str, **kwargs: Any) -> bool:
        if "upload" in (kwargs.get("also") or {}):
            raise redis.ConnectionError("Connection reset by peer")
        return real_set_state(job, state, **kwargs)

    monkeypatch.setattr(store, "set_state", lost)
    with pytest.raises(redis.ConnectionError):
        stitching.stitch_job(store, settings, job_id)
    assert store.state(job_id) == STITCHING
    assert uploads(s3, bucket) == [] and "out.mp4" not in keys(s3, bucket)
    monkeypatch.undo()
    assert stitching.stitch_job(store, settings, job_id) == ObjectRef(bucket, "out.mp4")
    assert store.state(job_id) == SUCCEEDED
