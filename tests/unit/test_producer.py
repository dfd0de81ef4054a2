"""Producer.retry/cancel and path confinement against a real Redis database (no workers)."""

from __future__ import annotations

import json
import os
import time
import uuid
from fractions import Fraction
from pathlib import Path

import pytest
import redis

from facefusion_tasks.app import GPU_QUEUE, LIGHT_QUEUE, TASK_CHUNK, TASK_CLOSE, TASK_PLAN
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import FaceFusionError, InputError, OutputError
from facefusion_tasks.inputs import source_paths
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.metrics.keys import PENDING_KEY
from facefusion_tasks.metrics.queues import priority_keys
from facefusion_tasks.objects import location
from facefusion_tasks.producer import Producer, Retried
from facefusion_tasks.reasons import Reason
from facefusion_tasks.storage import confine
from facefusion_tasks.store import (
    CANCELLED,
    COMMITTING,
    DONE,
    FAILED,
    PENDING,
    PLANNING,
    QUEUED,
    RUNNING,
    STITCHING,
)
from facefusion_tasks.store_keys import job_key
from facefusion_tasks.video.samples import make_sample_video
from facefusion_tasks.workspace import segment, segment_dir


def _output() -> str:
    """An output of its own: unfinished jobs may not share one."""
    return f"o-{uuid.uuid4().hex}.mp4"


@pytest.fixture()
def producer(redis_url: str, tmp_path: Path) -> Producer:
    settings = Settings.from_env(
        {}, broker_url=redis_url, storage_roots=str(tmp_path), stall_seconds=60.0
    )
    return Producer(settings)


def _messages(redis_url: str, queue: str) -> list[tuple[str, list]]:
    client = redis.Redis.from_url(redis_url)
    found = []
    for key in priority_keys(queue):
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            found.append((message["headers"]["task"], json.loads(_body(message))[0]))
    return found


def _body(message: dict) -> str:
    import base64

    return base64.b64decode(message["body"]).decode()


def _job(producer: Producer, state: str, *, chunks: int = 0) -> str:
    store = producer.store
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": _output()})
    if chunks:
        plan = [Chunk(i, i * 10, (i + 1) * 10, 10, Fraction(1, 2)) for i in range(chunks)]
        store.set_state(job_id, PLANNING)  # as the planner does
        store.set_plan(job_id, plan, 10 * chunks, {})
    if state != QUEUED:
        store.set_state(job_id, state, reason=Reason.MEDIA if state == FAILED else None)
    return job_id


def _done(producer: Producer, job_id: str, index: int) -> None:
    """Chunk `index` finished: its segment written where the stitch will look, and DONE."""
    where = segment(producer.settings, job_id, index, output=producer.store.get(job_id)["output"])
    assert isinstance(where, Path)
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(b"a verified segment")
    producer.store.chunk_done(job_id, index, 10)


def _finished(producer: Producer, chunks: int) -> str:
    """A RUNNING job whose every chunk is done, its segments written."""
    job_id = _job(producer, RUNNING, chunks=chunks)
    for index in range(chunks):
        _done(producer, job_id, index)
    return job_id


def test_retry_of_a_failed_job_reruns_only_unfinished_chunks(
    producer: Producer, redis_url: str
) -> None:
    job_id = _job(producer, RUNNING, chunks=3)
    _done(producer, job_id, 0)
    producer.store.chunk_failed(job_id, 1, "no space")
    producer.store.set_state(job_id, FAILED, reason=Reason.NO_SPACE)
    assert producer.retry(job_id).chunks == [1, 2]
    assert producer.store.state(job_id) == RUNNING
    assert sorted(_messages(redis_url, GPU_QUEUE)) == [
        (TASK_CHUNK, [job_id, 1]),
        (TASK_CHUNK, [job_id, 2]),
    ]


def test_a_retry_whose_first_chunk_fails_the_job_at_once_leaves_no_chunk_pending(
    producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunk `retry` sends fails the job straight away (its input changed again):
    a failure ends only the chunks waiting by then, and those `retry` reset after it stayed
    PENDING under the FAILED job for good (a fault probe's finding)."""
    job_id = _job(producer, RUNNING, chunks=4)
    _done(producer, job_id, 0)
    producer.store.set_state(job_id, FAILED, reason=Reason.INPUT_CHANGED)
    real_send = producer._send

    def send(task: str, args: list, **kwargs: object) -> None:  # type: ignore[type-arg]
        real_send(task, args, **kwargs)  # type: ignore[arg-type]
        if task == TASK_CHUNK and producer.store.state(job_id) != FAILED:
            producer.store.fail(job_id, Reason.INPUT_CHANGED, "t.mp4 changed", index=args[1])

    monkeypatch.setattr(producer, "_send", send)
    assert producer.retry(job_id).chunks == [1, 2, 3]
    assert producer.store.state(job_id) == FAILED
    assert [c["state"] for c in producer.store.chunks(job_id)] == [
        DONE, FAILED, CANCELLED, CANCELLED,
    ]  # fmt: skip


def test_retry_takes_back_a_job_stalled_in_planning(producer: Producer, redis_url: str) -> None:
    job_id = _job(producer, PLANNING)
    with pytest.raises(InputError, match="only failed, stuck or stalled"):
        producer.retry(job_id)  # planning right now: not stalled yet
    producer.store.r.hset(f"facefusion:job:{job_id}", "updated_at", time.time() - 61)
    # Its clock in the stall index too (a running plan would have beaten it since).
    producer.store.r.zadd("facefusion:live", {job_id: time.time() - 61})
    assert producer.retry(job_id).action == "plan"
    assert producer.store.state(job_id) == QUEUED
    assert _messages(redis_url, LIGHT_QUEUE) == [(TASK_PLAN, [job_id])]


def test_retry_of_a_job_stalled_queued_behind_a_long_light_queue_sends_no_second_plan(
    producer: Producer, redis_url: str, tmp_path: Path
) -> None:
    # Its plan message still waits in line: a second one planned the job twice, and the
    # second plan sent every chunk not yet taken again (each ran twice).
    from tests.media import TINY, write_source_face

    root = tmp_path  # the producer's storage root
    source = write_source_face(root / "s.png")
    job_id = producer.submit(source, make_sample_video(root / "t.mp4", **TINY), root / "o.mp4")
    producer.store.r.hset(f"facefusion:job:{job_id}", "updated_at", time.time() - 61)
    producer.store.r.zadd("facefusion:live", {job_id: time.time() - 61})
    assert producer.retry(job_id).action == "waiting"
    assert _messages(redis_url, LIGHT_QUEUE) == [(TASK_PLAN, [job_id])]
    # Lost from the line (a Redis restarted without its queue), it is sent again.
    producer.store.r.delete(LIGHT_QUEUE, *[f"{LIGHT_QUEUE}\x06\x16{p}" for p in (3, 6, 9)])
    assert producer.retry(job_id).action == "plan"
    assert _messages(redis_url, LIGHT_QUEUE) == [(TASK_PLAN, [job_id])]


def test_retry_refuses_a_cancelled_job(producer: Producer) -> None:
    job_id = _job(producer, RUNNING, chunks=1)
    assert producer.cancel(job_id)
    with pytest.raises(InputError) as caught:
        producer.retry(job_id)
    assert caught.value.reason is Reason.BAD_INPUT


def test_cancel_is_immediate_and_the_idle_canceller_cleans_up(producer: Producer) -> None:
    job_id = _job(producer, RUNNING, chunks=2)
    segments = segment_dir(producer.settings, job_id)
    segments.mkdir(parents=True)
    (segments / "seg-00000.mp4").write_bytes(b"segment")
    begun = time.monotonic()
    assert producer.cancel(job_id)
    assert time.monotonic() - begun < 0.5  # the old cancel slept a second
    assert not segments.exists()
    assert [c["state"] for c in producer.status(job_id).chunks] == [CANCELLED, CANCELLED]
    assert not producer.cancel(job_id)  # already ended


def test_cancel_leaves_segments_to_the_chunk_still_executing(producer: Producer) -> None:
    job_id = _job(producer, RUNNING, chunks=2)
    assert producer.store.chunk_started(job_id, 0, "w1")
    segments = segment_dir(producer.settings, job_id)
    segments.mkdir(parents=True)
    assert producer.cancel(job_id)
    assert segments.exists()  # chunk 0 may still be writing there
    assert producer.store.chunk_left(job_id, 0)  # ... and it is the one that removes them


def test_cancel_never_touches_a_committing_output(producer: Producer, tmp_path: Path) -> None:
    job_id = _job(producer, RUNNING, chunks=1)
    producer.store.set_state(job_id, STITCHING)
    producer.store.set_state(job_id, COMMITTING, only_from=(STITCHING,))
    output = tmp_path / "o.mp4"
    output.write_bytes(b"the committed video")
    assert not producer.cancel(job_id)
    assert producer.store.state(job_id) == COMMITTING
    assert output.read_bytes() == b"the committed video"


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), -1.0, 0.0, True, "2", b"2"])
def test_submit_refuses_chunk_seconds_that_are_not_a_positive_number(
    producer: Producer, redis_url: str, seconds: object, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="chunk seconds"):
        producer.submit(tmp_path / "s.png", tmp_path / "t.mp4", tmp_path / "o.mp4",
                        chunk_seconds=seconds)  # fmt: skip
    assert redis.Redis.from_url(redis_url).keys("*") == []


@pytest.mark.parametrize("priority", [5.5, True, "5", None, -1, 10])
def test_submit_refuses_a_priority_that_is_not_a_whole_number_0_to_9(
    producer: Producer, redis_url: str, priority: object, tmp_path: Path
) -> None:
    # 5.5 was recorded and enqueued, and the job failed on a worker (internal: int('5.5'));
    # True and "5" were raw redis or type errors.
    with pytest.raises(InputError, match="priority must be a whole number 0..9"):
        producer.submit(tmp_path / "s.png", tmp_path / "t.mp4", tmp_path / "o.mp4",
                        priority=priority)  # type: ignore[arg-type]  # fmt: skip
    assert redis.Redis.from_url(redis_url).keys("*") == []


@pytest.mark.parametrize("name", [None, 5, 2.5])
def test_a_job_file_that_is_not_a_name_is_one_clear_error(
    producer: Producer, redis_url: str, name: object, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="not a file name"):
        producer.submit(tmp_path / "s.png", name, tmp_path / "o.mp4")  # type: ignore[arg-type]
    assert redis.Redis.from_url(redis_url).keys("*") == []


def test_bytes_names_are_names(tmp_path: Path) -> None:
    # A bytes source was iterated byte by byte, a bytes target had no .encode.
    assert source_paths(os.fsencode(tmp_path / "s.png")) == (tmp_path / "s.png",)
    assert location(os.fsencode(tmp_path / "t.mp4")) == tmp_path / "t.mp4"
    with pytest.raises(InputError, match="not valid UTF-8"):
        location(os.fsencode(tmp_path) + b"/t\xff.mp4")


def test_unknown_job_is_the_users_input(producer: Producer) -> None:
    with pytest.raises(InputError) as caught:
        producer.status("0123456789abcdef")
    assert caught.value.reason is Reason.UNKNOWN_JOB


def test_paths_are_confined_to_the_storage_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"")
    (root / "in" / "link.mp4").symlink_to(outside)
    settings = Settings.from_env({}, storage_roots=str(root))
    assert confine(root / "in" / "a.mp4", settings, what="t") == (root / "in" / "a.mp4").resolve()
    for escape in (root / "in" / ".." / ".." / "outside.mp4", root / "in" / "link.mp4", outside):
        with pytest.raises(InputError) as caught:
            confine(escape, settings, what="target video")
        assert caught.value.reason is Reason.PATH
    with pytest.raises(InputError) as unset:
        confine(root, Settings.from_env({}), what="t")
    assert unset.value.reason is Reason.CONFIG


def test_retry_of_a_running_job_leaves_chunks_that_are_running_to_their_worker(
    producer: Producer, redis_url: str
) -> None:
    job_id = _job(producer, RUNNING, chunks=3)
    store = producer.store
    _done(producer, job_id, 0)
    assert store.chunk_started(job_id, 1, "w1@host")
    store.chunk_heartbeat(job_id, 1, 4)  # chunk 1 is running: a fresh heartbeat
    # Chunk 2 was sent long ago (past stall_seconds) and its message is nowhere: lost.
    store.r.zadd(PENDING_KEY, {f"{job_id}:2": time.time() - 3600}, xx=True)
    assert producer.retry(job_id).chunks == [2]  # only it goes again
    assert _messages(redis_url, GPU_QUEUE) == [(TASK_CHUNK, [job_id, 2])]
    assert store.chunks(job_id)[1]["state"] == RUNNING
    # Again, now that chunk 2 is running too: nothing is sent, and retry says so.
    assert store.chunk_started(job_id, 2, "w2@host")
    store.chunk_heartbeat(job_id, 2, 1)
    assert producer.retry(job_id) == Retried("running")
    assert _messages(redis_url, GPU_QUEUE) == [(TASK_CHUNK, [job_id, 2])]


def test_retry_of_a_job_stitching_right_now_is_refused(producer: Producer) -> None:
    job_id = _job(producer, STITCHING, chunks=1)
    with pytest.raises(InputError, match="only failed, stuck or stalled"):
        producer.retry(job_id)  # a second stitch beside the running one would race it


def test_submit_records_every_source_image(producer: Producer, tmp_path: Path) -> None:
    from tests.media import TINY, write_second_face, write_source_face

    first = write_source_face(tmp_path / "a.png")
    second = write_second_face(tmp_path / "b.png")
    target = make_sample_video(tmp_path / "t.mp4", **TINY)
    job_id = producer.submit([first, second], target, tmp_path / "o.mp4")
    status = producer.status(job_id)
    assert status.sources == [str(first), str(second)]
    assert status.source == str(first)  # what a reader of one source still finds


def test_every_source_is_checked_like_the_one_source(
    producer: Producer, redis_url: str, tmp_path: Path
) -> None:
    from tests.media import write_source_face

    first = write_source_face(tmp_path / "a.png")
    outside = write_source_face(tmp_path.parent / f"{tmp_path.name}-outside.png")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    target, output = tmp_path / "t.mp4", tmp_path / "o.mp4"
    with pytest.raises(InputError, match="outside.png: source image is outside") as caught:
        producer.submit([first, outside], target, output)
    assert caught.value.reason is Reason.PATH
    with pytest.raises(InputError, match="notes.png: not a PNG") as caught:
        producer.submit([first, not_an_image], target, output)
    assert caught.value.reason is Reason.NOT_AN_IMAGE
    with pytest.raises(InputError, match="no source image"):
        producer.submit([], target, output)
    assert redis.Redis.from_url(redis_url).keys("*") == []


def test_submit_records_the_encoder_choice_the_workers_will_use(
    redis_url: str, tmp_path: Path
) -> None:
    from tests.media import write_source_face

    write_source_face(tmp_path / "s.png")
    make_sample_video(tmp_path / "t.webm", seconds=0.4, width=160, height=120, audio=False)
    settings = Settings.from_env(
        {}, broker_url=redis_url, storage_roots=str(tmp_path), video_encoder="libaom-av1"
    )
    producer = Producer(settings)
    job_id = producer.submit(tmp_path / "s.png", tmp_path / "t.webm", tmp_path / "o.webm")
    assert producer.store.get(job_id)["video_encoder"] == "libaom-av1"
    # Unset, the job leaves the choice to each worker (fitted to the container there).
    unset = Producer(settings.replace(video_encoder=""))
    job_id = unset.submit(tmp_path / "s.png", tmp_path / "t.webm", tmp_path / "o2.webm")
    assert unset.store.get(job_id)["video_encoder"] == ""


def test_a_second_job_for_an_output_still_being_written_is_refused_and_sends_nothing(
    producer: Producer, redis_url: str, tmp_path: Path
) -> None:
    from tests.media import TINY, write_source_face

    source = write_source_face(tmp_path / "s.png")
    target = make_sample_video(tmp_path / "t.mp4", **TINY)
    # The same output spelled another way resolves to the same claim.
    first = producer.submit(source, target, tmp_path / "o.mp4")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match=f"already being written by job {first}") as refused:
        producer.submit(source, target, tmp_path / "sub" / ".." / "o.mp4")
    assert refused.value.reason is Reason.BAD_OUTPUT and "\n" not in str(refused.value)
    assert _messages(redis_url, LIGHT_QUEUE) == [(TASK_PLAN, [first])]
    assert producer.cancel(first)
    second = producer.submit(source, target, tmp_path / "o.mp4")
    # The cancel of a job nothing runs asks a light worker to count its end.
    assert sorted(_messages(redis_url, LIGHT_QUEUE)) == sorted(
        [(TASK_PLAN, [first]), (TASK_CLOSE, [first]), (TASK_PLAN, [second])]
    )


def test_a_job_whose_plan_could_not_be_sent_ends_failed_and_lets_its_output_go(
    producer: Producer, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facefusion_tasks import producer as producer_module
    from tests.media import TINY, write_source_face

    source = write_source_face(tmp_path / "s.png")
    target = make_sample_video(tmp_path / "t.mp4", **TINY)

    def lost(*_args: object, **_kwargs: object) -> None:  # the broker going away mid-submit
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(producer_module, "enqueue", lost)
    with pytest.raises(FaceFusionError) as caught:
        producer.submit(source, target, tmp_path / "o.mp4")
    assert caught.value.reason is Reason.BROKER_UNAVAILABLE
    (orphan,) = producer.store.recent()
    job = producer.store.get(orphan)
    assert (job["state"], job["reason"]) == (FAILED, Reason.BROKER_UNAVAILABLE.value)
    monkeypatch.undo()
    again = producer.submit(source, target, tmp_path / "o.mp4")  # not refused as busy
    assert _messages(redis_url, LIGHT_QUEUE) == [(TASK_PLAN, [again])]


def test_retry_of_a_running_job_leaves_chunks_whose_messages_wait_in_line_and_sends_lost_ones(
    producer: Producer, redis_url: str
) -> None:
    job_id = _job(producer, RUNNING, chunks=3)
    client = redis.Redis.from_url(redis_url)

    def sent_long_ago() -> None:  # past stall_seconds (60 s here) since they were sent
        members = {f"{job_id}:{i}": time.time() - 3600 for i in range(3)}
        client.zadd(PENDING_KEY, members, xx=True)

    for index in range(3):  # as the plan sends them: the messages wait for a gpu worker
        producer._send(TASK_CHUNK, [job_id, index], priority=5)
    assert producer.retry(job_id) == Retried("running")  # sent again they would run twice
    sent_long_ago()
    assert producer.retry(job_id) == Retried("running")  # still in line: still waiting
    assert len(_messages(redis_url, GPU_QUEUE)) == 3
    # One message lost while the line stays busy with other work: that one goes again.
    producer._send(TASK_CHUNK, ["another-job", 0], priority=5)
    for key in priority_keys(GPU_QUEUE):
        for raw in client.lrange(key, 0, -1):
            if json.loads(_body(json.loads(raw)))[0] == [job_id, 1]:
                client.lrem(key, 1, raw)
    assert producer.retry(job_id) == Retried("chunks", [1])
    assert len(_messages(redis_url, GPU_QUEUE)) == 4
    # The queue lost them all (purged, or Redis lost its last writes). Chunk 1 was sent just
    # now: its message may still be on its way, so it waits out stall_seconds as the sweep
    # does; the others go again.
    client.delete(*priority_keys(GPU_QUEUE))
    assert producer.retry(job_id).chunks == [0, 2]
    sent_long_ago()
    client.delete(*priority_keys(GPU_QUEUE))
    assert producer.retry(job_id).chunks == [0, 1, 2]
    assert len(_messages(redis_url, GPU_QUEUE)) == 3


def test_retry_runs_a_done_chunk_again_when_its_segment_is_gone(
    producer: Producer, redis_url: str
) -> None:
    job_id = _finished(producer, 3)
    output = producer.store.get(job_id)["output"]
    lost = segment(producer.settings, job_id, 1, output=output)
    assert isinstance(lost, Path)
    lost.unlink()  # deleted after its chunk finished: the stitch fails on it
    producer.store.set_state(job_id, FAILED, reason=Reason.MEDIA, error="segments missing")
    assert producer.retry(job_id) == Retried("chunks", [1])
    assert _messages(redis_url, GPU_QUEUE) == [(TASK_CHUNK, [job_id, 1])]
    assert [c["state"] for c in producer.store.chunks(job_id)] == [DONE, PENDING, DONE]


def test_a_retry_that_fails_before_it_sends_anything_leaves_the_job_as_it_was(
    producer: Producer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking for the segments of an object output may fail for now (a 503): that came after
    the reopen, so the job sat RUNNING with nothing sent, out of the sweep's sight, and `wait`
    followed it for ever. Everything that may fail now comes first."""
    from facefusion_tasks import producer as module
    from facefusion_tasks.errors import TransientError

    job_id = _finished(producer, 2)
    producer.store.set_state(job_id, FAILED, reason=Reason.MEDIA, error="segments missing")

    def unavailable(*_args: object, **_kwargs: object) -> bool:
        raise TransientError("s3://media/out.mp4: object storage failed (SlowDown)")

    monkeypatch.setattr(module, "segment_present", unavailable)
    with pytest.raises(TransientError):
        producer.retry(job_id)
    assert producer.store.state(job_id) == FAILED  # as it was: the next retry may succeed
    assert _messages(redis_url, GPU_QUEUE) == [] and _messages(redis_url, LIGHT_QUEUE) == []
    monkeypatch.undo()
    assert producer.retry(job_id) == Retried("stitch")


def test_a_retry_whose_busy_chunk_finishes_before_the_reopen_sends_the_stitch(
    producer: Producer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk `retry` found running finishes between its reads and the reopen: it completed
    the set (and sent a stitch), and the reopen took the job out of the sweep's watch. The
    stitch is sent from here too, so a lost one cannot leave the job RUNNING for ever (review)."""
    job_id = _job(producer, RUNNING, chunks=2)
    _done(producer, job_id, 0)
    assert producer.store.chunk_started(job_id, 1, "w1")
    producer.store.chunk_heartbeat(job_id, 1, 5)  # a fresh heartbeat: busy
    real_reopen = producer.store.reopen

    def finishes_first(*args: object, **kwargs: object) -> bool:
        _done(producer, job_id, 1)
        return real_reopen(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(producer.store, "reopen", finishes_first)
    assert producer.retry(job_id) == Retried("stitch")
    assert _messages(redis_url, LIGHT_QUEUE) == [("facefusion.stitch", [job_id])]


def test_a_stitcher_that_records_an_upload_while_retry_fences_makes_retry_look_again(
    producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped stitcher wakes between `retry`'s fence and its reopen and records the upload
    it is about to complete: reopened, the job's fence would have missed it (review). The
    retry refuses instead; the next one fences that upload."""
    from facefusion_tasks import producer as module

    job_id = _finished(producer, 1)
    producer.store.set_state(job_id, COMMITTING, also={"commit": '{"token": "t"}'})
    producer.store.set_state(job_id, FAILED, reason=Reason.STALLED)
    fenced: list[str] = []

    def fence(_output: object, _mark: object, *, upload: str = "") -> bool:
        fenced.append(upload)
        if len(fenced) == 1:  # the stitcher wakes now
            producer.store.r.hset(job_key(job_id), "upload", "u1")
        return bool(upload)

    monkeypatch.setattr(module, "fence_stale", fence)
    with pytest.raises(InputError, match="changed state meanwhile"):
        producer.retry(job_id)
    assert producer.store.state(job_id) == FAILED
    assert producer.retry(job_id) == Retried("stitch")
    assert fenced == ["", "u1"]


def test_no_job_file_may_lie_in_the_work_directory_whose_files_go_when_jobs_end(
    producer: Producer, redis_url: str, tmp_path: Path
) -> None:
    from tests.media import TINY, write_source_face

    source = write_source_face(tmp_path / "a.png")
    target = make_sample_video(tmp_path / "t.mp4", **TINY)
    work = tmp_path / ".facefusion-work"
    (work / "0123456789abcdef").mkdir(parents=True)
    (tmp_path / "w").symlink_to(work)
    # A job's folder, the folder itself, and a link into it: the stitch's cleanup or the sweep
    # removed such an output after its job succeeded.
    for output in (
        work / "0123456789abcdef" / "victim.mp4",
        work / "x.mp4",
        tmp_path / "w" / "x.mp4",
    ):
        with pytest.raises(OutputError, match="output is inside the work directory") as caught:
            producer.submit(source, target, output)
        assert caught.value.reason is Reason.BAD_OUTPUT
    inside = write_source_face(work / "s.png")
    with pytest.raises(InputError, match="s.png: source image is inside the work") as caught:
        producer.submit(inside, target, tmp_path / "o.mp4")
    assert caught.value.reason is Reason.PATH
    assert redis.Redis.from_url(redis_url).keys("*") == []


def test_the_configured_work_directory_and_a_buckets_work_prefix_are_refused_too(
    tmp_path: Path,
) -> None:
    from facefusion_tasks.objects import ObjectRef
    from facefusion_tasks.storage import locate

    roots = f"{tmp_path / 'a'}:{tmp_path / 'b'}"
    settings = Settings.from_env(
        {}, storage_roots=roots, work_dir=str(tmp_path / "a" / "segments"), s3_buckets="media"
    )
    for where in (
        tmp_path / "a" / "segments" / "o.mp4",
        tmp_path / "b" / ".facefusion-work" / "o.mp4",  # the default name under any root
        "s3://media/.facefusion-work/0123456789abcdef/o.mp4",  # the segments' prefix
    ):
        with pytest.raises(OutputError, match="inside the work directory"):
            locate(where, settings, what="output", output=True)
        with pytest.raises(InputError, match="target is inside the work directory") as caught:
            locate(where, settings, what="target")
        assert caught.value.reason is Reason.PATH
    assert locate(tmp_path / "b" / "o.mp4", settings, what="output", output=True) == (
        tmp_path / "b" / "o.mp4"
    )
    assert locate("s3://media/out/o.mp4", settings, what="output") == ObjectRef(
        "media", "out/o.mp4"
    )


def test_a_stitch_sent_by_retry_is_sent_again_by_the_sweep_when_its_message_is_lost(
    producer: Producer, redis_url: str
) -> None:
    from facefusion_tasks.liveness import sweep

    job_id = _finished(producer, 2)
    producer.store.set_state(job_id, FAILED, reason=Reason.NO_SPACE, error="disk full")
    assert producer.retry(job_id) == Retried("stitch")
    redis.Redis.from_url(redis_url).delete(*priority_keys(LIGHT_QUEUE))  # the message is lost
    sent: list[tuple[str, list]] = []
    sweep(
        producer.store,
        producer.settings,
        enqueue=lambda kind, args, priority: sent.append((kind, args)),
        light_line=lambda held_since: frozenset(),
        gpu_line=lambda held_since: frozenset(),
        now=time.time() + producer.settings.stall_seconds + 1,
    )
    # The job was nowhere in the sweep's indexes: RUNNING for ever, and seen as stalled by none.
    assert sent == [("stitch", [job_id])]


def test_a_job_whose_records_vanish_while_waited_on_is_the_systems_fault(
    producer: Producer, redis_url: str
) -> None:
    from facefusion_tasks import policy

    job_id = _job(producer, RUNNING, chunks=1)
    client = redis.Redis.from_url(redis_url)
    # Redis restarted without persistence mid-job: the job was seen, then is gone.
    with pytest.raises(FaceFusionError) as caught:
        producer.wait(job_id, poll=0.01, on_progress=lambda _: client.flushdb())
    assert not isinstance(caught.value, InputError)
    assert policy.exit_code(caught.value.reason) == policy.EXIT_INTERNAL
    assert "vanished from Redis while it ran" in str(caught.value)
    # An id never seen stays the user's mistake.
    with pytest.raises(InputError, match="no such job"):
        producer.wait(job_id)


def test_a_job_lost_with_a_late_writers_fragment_left_is_vanished_too(
    producer: Producer, redis_url: str
) -> None:
    job_id = _job(producer, STITCHING, chunks=1)
    client = redis.Redis.from_url(redis_url)

    def lost_then_marked(_: object) -> None:
        # Redis restarted empty during the stitch; the stitcher then records its commit mark.
        client.flushdb()
        producer.store.set_state(job_id, COMMITTING, also={"commit": "{}"})
        client.hset(job_key(job_id), "updated_at", "1")  # or any other late field

    with pytest.raises(FaceFusionError, match="vanished from Redis while it ran"):
        producer.wait(job_id, poll=0.01, timeout=5, on_progress=lost_then_marked)


def test_retry_and_cancel_look_for_segments_where_the_plan_recorded_them(
    producer: Producer, redis_url: str, tmp_path: Path
) -> None:
    from facefusion_tasks.store_keys import job_key
    from facefusion_tasks.workspace import for_job

    # The fleet's FACEFUSION_WORK_DIR, which this producer does not set (the README says it
    # needs only the broker and the roots): it re-ran every finished chunk, and cancel left
    # the fleet's segments behind.
    fleet_work = tmp_path / "fleet-work"
    job_id = _job(producer, RUNNING, chunks=2)
    producer.store.r.hset(job_key(job_id), "work_dir", str(fleet_work))
    job = producer.store.get(job_id)
    fleet = for_job(producer.settings, job)
    for index in range(2):
        where = segment(fleet, job_id, index, output=job["output"])
        assert isinstance(where, Path) and where.is_relative_to(fleet_work)
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(b"a verified segment")
        producer.store.chunk_done(job_id, index, 10)
    producer.store.set_state(job_id, FAILED, reason=Reason.NO_SPACE, error="disk full")
    assert producer.retry(job_id) == Retried("stitch")
    producer.store.set_state(job_id, FAILED, reason=Reason.NO_SPACE, error="disk full")
    other = _job(producer, RUNNING, chunks=1)
    producer.store.r.hset(job_key(other), "work_dir", str(fleet_work))
    (fleet_work / other).mkdir()
    assert producer.cancel(other)
    assert not (fleet_work / other).exists() and (fleet_work / job_id).exists()
    # A work directory this host's roots leave out is the host's configuration, not the job's.
    from facefusion_tasks.errors import WorkerConfigError

    with pytest.raises(WorkerConfigError, match="outside the storage roots"):
        for_job(producer.settings, {"work_dir": "/elsewhere/work"})


def test_the_api_answers_misuse_with_one_clear_input_error(
    producer: Producer, redis_url: str, tmp_path: Path
) -> None:
    # Each was a bare TypeError, ValueError or OverflowError (exit 1 on a CLI built on it), or
    # worse: wait(timeout=nan) never returned, list(0) listed every job.
    from decimal import Decimal

    from tests.media import TINY, write_source_face

    source = write_source_face(tmp_path / "s.png")
    target = make_sample_video(tmp_path / "t.mp4", **TINY)
    job_id = producer.submit(source, target, tmp_path / "o.mp4")
    calls = [
        lambda: producer.submit(5, target, tmp_path / "x.mp4"),  # type: ignore[arg-type]
        lambda: producer.submit(str(source) + "\0", target, tmp_path / "x.mp4"),
        lambda: producer.submit(source, target, tmp_path / "x.mp4", chunk_seconds=Decimal("sNaN")),
        lambda: producer.submit(source, target, tmp_path / "x.mp4", chunk_seconds=10**400),
        lambda: producer.status(123),  # type: ignore[arg-type]
        lambda: producer.status(job_id.encode()),  # type: ignore[arg-type]
        lambda: producer.cancel(None),  # type: ignore[arg-type]
        lambda: producer.retry([job_id]),  # type: ignore[arg-type]
        lambda: producer.wait(job_id, timeout=float("nan")),
        lambda: producer.wait(job_id, timeout="3"),  # type: ignore[arg-type]
        lambda: producer.wait(job_id, poll=-1),
        lambda: producer.list(0),
        lambda: producer.list(-3),
        lambda: producer.list("5"),  # type: ignore[arg-type]
        lambda: producer.list(2.5),  # type: ignore[arg-type]
        lambda: Producer(Settings(broker_url=redis_url, reference_distance=float("nan"))),
        lambda: Producer(Settings(broker_url=redis_url, face_selector="bogus")),
        lambda: Producer(Settings(broker_url=redis_url, stall_seconds="5")),  # type: ignore[arg-type]
        lambda: producer.wait(job_id, timeout=True),
    ]
    for number, call in enumerate(calls):
        with pytest.raises(InputError) as caught:
            call()
        assert "\n" not in str(caught.value), number
    assert producer.status(job_id).state == QUEUED  # none of it touched the good job


def test_only_an_ended_jobs_waiting_chunks_are_withdrawn_never_what_a_retry_sent(
    producer: Producer, redis_url: str
) -> None:
    job_id = _job(producer, RUNNING, chunks=3)
    other = _job(producer, RUNNING, chunks=1)
    for index in range(3):
        producer._send(TASK_CHUNK, [job_id, index], priority=index * 4)  # three priority lines
    producer._send(TASK_CHUNK, [other, 0], priority=5)
    assert producer.store.withdraw_chunks(job_id) == 0  # still running: nothing goes
    assert producer.store.fail(job_id, Reason.MEDIA, "bad frame", index=0)
    assert producer.store.withdraw_chunks(job_id) == 3
    assert _messages(redis_url, GPU_QUEUE) == [(TASK_CHUNK, [other, 0])]
    # Once per end: the canceller and the worker counting the end both try; the second does
    # not scan the lines again (each text it had read cost Redis a scan of the whole line).
    producer._send(TASK_CHUNK, [job_id, 1], priority=5)  # a late resend
    assert producer.store.withdraw_chunks(job_id) == 0  # left to be skipped, as before
    # A retry reopens the job before it sends: the withdrawal a worker counting the failed
    # end makes at that moment takes none of what the retry sent.
    assert producer.retry(job_id).chunks == [0, 1, 2]
    assert producer.store.withdraw_chunks(job_id) == 0
    assert len(_messages(redis_url, GPU_QUEUE)) == 5  # the retry's 3, the late one, the other
