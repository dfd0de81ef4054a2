"""The job store's liveness parts on a real Redis: retry-safe answers, deliveries, the stall sweep."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from facefusion_tasks.config import Settings
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.liveness import SweepReport, sweep
from facefusion_tasks.metrics import keys
from facefusion_tasks.metrics.keys import InLine, messages_in_line
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import (
    CANCELLED,
    DONE,
    FAILED,
    LIVE_KEY,
    PENDING,
    PENDING_KEY,
    PLANNING,
    QUEUED,
    RUNNING,
    RUNNING_KEY,
    STITCHING,
    JobStore,
    connect,
)
from facefusion_tasks.store_keys import chunk_key
from tests.cluster import SHARED_REDIS, RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def store() -> Iterator[JobStore]:
    """A store on the tests' own database, flushed before and after."""
    client = connect(SHARED_REDIS)
    client.flushdb()
    try:
        yield JobStore(client)
    finally:
        client.flushdb()


def _settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {"stall_seconds": 10, "max_deliveries": 3, "chunk_time_limit": 60}
    return Settings.from_env({}, **(values | changes))


def _job(store: JobStore, chunks: int = 2) -> str:
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    plan = [
        Chunk(index=i, start_pts=i * 10, end_pts=(i + 1) * 10, frames=10, span=None)
        for i in range(chunks)
    ]
    store.set_state(job_id, PLANNING)  # as the planner does
    store.set_plan(job_id, plan, 10 * chunks, {})
    store.set_state(job_id, RUNNING)
    return job_id


class _Sent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any], int]] = []

    def __call__(self, kind: str, args: list[Any], priority: int) -> None:
        self.calls.append((kind, args, priority))


def _sweep(
    store: JobStore,
    settings: Settings,
    sent: _Sent,
    now: float,
    *,
    light: InLine = frozenset(),
    gpu: InLine = frozenset(),
) -> SweepReport:
    """One sweep at `now`, with the arguments of the messages in the light and gpu queues."""
    return sweep(
        store, settings, enqueue=sent, light_line=lambda _: light, gpu_line=lambda _: gpu, now=now
    )


def test_the_last_chunk_done_across_a_redis_pause_queues_the_stitch_exactly_once(
    tmp_path: Path,
) -> None:
    # redis-py gives up waiting after the socket timeout and re-sends the script; the first
    # run happens anyway when Redis resumes. The answer must be the same True, not "not last".
    server = RedisServer(tmp_path)
    server.start()
    try:
        assert server.proc is not None
        store = JobStore(connect(server.url, socket_timeout=0.5))
        job_id = _job(store, chunks=2)
        assert store.chunk_done(job_id, 0, 10) is False
        answers: list[bool] = []
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            caller = threading.Thread(
                target=lambda: answers.append(store.chunk_done(job_id, 1, 10))
            )
            caller.start()
            time.sleep(1.5)  # the client times out at least once and re-sends
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        caller.join(30)
        # A redelivered duplicate of the last chunk, finishing later, is not last either.
        answers.append(store.chunk_done(job_id, 1, 10))
        assert answers == [True, False]
        assert store.status(job_id).chunks_done == 2  # type: ignore[union-attr]
    finally:
        server.stop()


def test_claim_metering_across_a_redis_pause_counts_the_job_once(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        assert server.proc is not None
        store = JobStore(connect(server.url, socket_timeout=0.5))
        job_id = _job(store)
        answers: list[bool] = []
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            caller = threading.Thread(target=lambda: answers.append(store.claim_metering(job_id)))
            caller.start()
            time.sleep(1.5)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        caller.join(30)
        answers.append(store.claim_metering(job_id))
        assert answers == [True, False]
        store.reopen(
            job_id, planned=True, from_states=(store.state(job_id),)
        )  # retry: the job's next end is counted anew
        assert store.claim_metering(job_id) is True
    finally:
        server.stop()


def test_a_state_change_across_a_redis_pause_answers_that_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stitch_job takes False from set_state(SUCCEEDED, only_from=STITCHING) for a cancel and
    # deletes the output it just wrote: a re-run after a timeout must not answer False.
    server = RedisServer(tmp_path)
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        store = JobStore(connect(server.url, socket_timeout=0.5))
        job_id = _job(store)
        store.set_state(job_id, STITCHING)
        # Redis stops between the read and the EXEC (the narrowest seam: MULTI is buffered and
        # goes out with the EXEC), for longer than the socket timeout.
        original = redis.client.Pipeline.multi
        paused: list[bool] = []

        def multi_then_pause(pipe: redis.client.Pipeline) -> None:
            original(pipe)
            if not paused:
                paused.append(True)
                os.kill(pid, signal.SIGSTOP)
                threading.Timer(1.5, os.kill, (pid, signal.SIGCONT)).start()

        monkeypatch.setattr(redis.client.Pipeline, "multi", multi_then_pause)
        try:
            first = store.set_state(job_id, "SUCCEEDED", only_from=(STITCHING,))
        finally:
            time.sleep(1.6)
            os.kill(pid, signal.SIGCONT)
        assert paused
        assert first is True
        assert store.set_state(job_id, "SUCCEEDED", only_from=(STITCHING,)) is False
        assert store.state(job_id) == "SUCCEEDED"
    finally:
        server.stop()


def test_two_chunks_finishing_at_once_queue_one_stitch(store: JobStore) -> None:
    job_id = _job(store, chunks=8)
    answers: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: answers.append(store.chunk_done(job_id, i, 10)))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [False] * 7 + [True]


def test_deliveries_are_counted_at_start_and_lost_ones_are_those_that_never_ended(
    store: JobStore,
) -> None:
    job_id = _job(store)
    first = store.chunk_delivered(job_id, 0, worker="w1@h", pid=11)
    assert (first.deliveries, first.finished, first.lost) == (1, 0, 0)
    store.chunk_attempt_ended(job_id, 0, first.token)  # ended in the task (a retry)
    store.chunk_attempt_ended(job_id, 0, first.token)  # a re-sent call counts once
    second = store.chunk_delivered(job_id, 0, worker="w1@h", pid=11)  # then SIGKILLed
    third = store.chunk_delivered(job_id, 0, worker="w2@h", pid=12)
    assert (third.deliveries, third.finished, third.lost) == (3, 1, 1)
    assert second.token != third.token
    chunk = store.status(job_id).chunks[0]  # type: ignore[union-attr]
    assert (chunk["worker"], chunk["pid"], chunk["deliveries"]) == ("w2@h", 12, 3)
    assert store.r.zscore(RUNNING_KEY, f"{job_id}:0") is not None


def test_each_attempt_that_never_ended_is_reported_once_with_its_cause(store: JobStore) -> None:
    # What chunks_total counts for attempts no code of theirs ended (a SIGKILL leaves no other
    # trace): the delivery after them says how many are new, and why. Attempts are tracked by
    # token, so an attempt that ends late neither counts nor hides a later one.
    job_id = _job(store)

    def deliver(pid: int, now: float) -> Any:
        return store.chunk_delivered(job_id, 0, worker=f"w{pid}@h", pid=pid, now=now)

    first = deliver(1, 1000.0)
    assert (first.newly_lost, first.newly_stalled) == (0, 0)
    store.chunk_attempt_ended(job_id, 0, first.token)  # a retry ends its attempt before...
    second = deliver(2, 1001.0)  # ...it is sent: the retry finds nothing lost
    assert (second.newly_lost, second.newly_stalled) == (0, 0)
    store.chunk_attempt_ended(job_id, 0, first.token)  # its `finally`, again: counts once
    third = deliver(3, 1002.0)  # the second was SIGKILLed
    assert (third.newly_lost, third.newly_stalled) == (1, 0)
    # A re-sent call (redis-py after a timeout) answers as the first did.
    again = store._chunk_delivered(
        keys=[chunk_key(job_id, 0), RUNNING_KEY, PENDING_KEY],
        args=[third.token, 1002.0, "w3@h", 3, f"{job_id}:0"],
    )
    assert again[3:] == [1, 0]
    # Stopped, then given back by the sweep: its successor reports it as stalled.
    assert store.claim_stalled_chunk(job_id, 0, cutoff=1500.0, error="no progress", now=1500.0)
    fourth = deliver(4, 1501.0)
    assert (fourth.newly_lost, fourth.newly_stalled) == (0, 1)
    # The stopped one wakes and ends late; the fourth is SIGKILLed: the fifth reports the
    # fourth, and nothing of the third again.
    store.chunk_attempt_ended(job_id, 0, third.token)
    fifth = deliver(5, 1502.0)
    assert (fifth.newly_lost, fifth.newly_stalled) == (1, 0)
    assert (fifth.deliveries, fifth.finished) == (5, 2)
    # `retry` starts the count anew; the fifth, still stopping, belongs to the failed run.
    store.reset_chunk(job_id, 0)
    sixth = deliver(6, 1600.0)
    assert (sixth.deliveries, sixth.newly_lost, sixth.newly_stalled) == (1, 0, 0)
    store.chunk_attempt_ended(job_id, 0, fifth.token)  # ends late: not this run's
    seventh = deliver(7, 1601.0)  # the sixth was SIGKILLed
    assert (seventh.deliveries, seventh.finished) == (2, 0)
    assert (seventh.newly_lost, seventh.newly_stalled) == (1, 0)


def test_a_chunk_with_no_progress_is_requeued_once_whoever_sweeps(store: JobStore) -> None:
    settings = _settings()
    job_id = _job(store)
    store.chunk_delivered(job_id, 0, worker="w1@h", pid=11, now=1000.0)
    store.chunk_started(job_id, 0, "w1@h")
    store.chunk_heartbeat(job_id, 0, 4, now=1003.0)
    store.chunk_delivered(job_id, 1, worker="w2@h", pid=12, now=1000.0)
    store.chunk_heartbeat(job_id, 1, 4, now=1012.0)  # still moving
    sent = _Sent()
    early = _sweep(store, settings, sent, 1012.0)
    assert early.requeued_chunks == [] and sent.calls == []
    # Two sweepers on two hosts at once: one claim wins.
    reports = [_sweep(store, settings, sent, 1014.0) for _ in range(2)]
    assert [r.requeued_chunks for r in reports] == [[(job_id, 0)], []]
    assert sent.calls == [("chunk", [job_id, 0], 5)]
    chunk = store.status(job_id).chunks[0]  # type: ignore[union-attr]
    assert chunk["state"] == PENDING and "no progress" in chunk["error"]
    assert store.state(job_id) == RUNNING


def test_a_chunk_that_keeps_stalling_fails_its_job_as_stalled(store: JobStore) -> None:
    settings = _settings(max_deliveries=2)
    job_id = _job(store)
    sent = _Sent()
    for attempt in range(2):
        store.chunk_delivered(job_id, 0, worker="w1@h", pid=11, now=1000.0 + 100 * attempt)
        report = _sweep(store, settings, sent, 1050 + 100 * attempt)
    assert len(sent.calls) == 1
    assert report.failed_jobs == [(job_id, Reason.STALLED)]
    job = store.get(job_id)
    assert (job["state"], job["reason"]) == (FAILED, "stalled")
    assert store.status(job_id).chunks[0]["state"] == FAILED  # type: ignore[union-attr]


def test_a_chunk_killed_by_the_hard_time_limit_while_progressing_fails_as_timeout(
    store: JobStore,
) -> None:
    # Celery SIGKILLs the pool process at the hard limit and acknowledges the message: only
    # the heartbeat says it was still working when the clock ran out.
    settings = _settings(chunk_time_limit=60, stall_seconds=10)
    job_id = _job(store)
    store.chunk_delivered(job_id, 0, worker="w1@h", pid=11, now=1000.0)
    store.chunk_heartbeat(job_id, 0, 9, now=1059.0)
    sent = _Sent()
    report = _sweep(store, settings, sent, 1070.0)
    assert report.failed_jobs == [(job_id, Reason.TIMEOUT)] and sent.calls == []
    assert store.get(job_id)["reason"] == "timeout"


def test_jobs_stuck_planning_or_stitching_are_sent_again_then_failed(store: JobStore) -> None:
    settings = _settings(max_deliveries=1)
    planning = store.create({"priority": 7})
    store.set_state(planning, PLANNING)
    stitching = _job(store)
    store.set_state(stitching, STITCHING)
    queued = store.create({})
    store.r.zadd(LIVE_KEY, {planning: 100.0, stitching: 100.0, queued: 100.0})
    sent = _Sent()
    # The QUEUED job's plan waits in the light queue (behind other work): it is not lost.
    _sweep(store, settings, sent, 200.0, light=frozenset({(queued,), ("other",)}))
    assert sorted(sent.calls) == [("plan", [planning], 7), ("stitch", [stitching], 9)]
    sent.calls.clear()
    _sweep(store, settings, sent, 205.0)
    assert sent.calls == [("plan", [queued], 5)]  # the others' clocks restarted at the claim
    report = _sweep(
        store,
        settings,
        sent,
        time.time() + 60,
    )
    assert sorted(report.failed_jobs) == sorted(
        [(planning, Reason.STALLED), (stitching, Reason.STALLED), (queued, Reason.STALLED)]
    )
    assert store.r.zcard(LIVE_KEY) == 0  # terminal jobs leave the index


def test_a_lost_stitch_message_is_sent_again(store: JobStore) -> None:
    settings = _settings()
    job_id = _job(store, chunks=1)
    store.chunk_done(job_id, 0, 10)  # the completer died before it could enqueue the stitch
    sent = _Sent()
    _sweep(
        store,
        settings,
        sent,
        time.time() + 60,
    )
    assert sent.calls == [("stitch", [job_id], 9)]
    store.set_state(job_id, STITCHING)
    store.set_state(job_id, "SUCCEEDED")
    assert store.r.zcard(LIVE_KEY) == 0


def test_chunks_whose_messages_are_nowhere_in_the_gpu_queue_are_sent_again(
    store: JobStore,
) -> None:
    # Planned and sent, then the messages were lost (Redis lost its last writes, or the queue
    # was purged): nothing else would ever move this RUNNING job.
    settings = _settings()
    job_id = _job(store, chunks=3)
    later = time.time() + 60
    store.chunk_delivered(job_id, 2, worker="w1@h", pid=11, now=later)  # this one did arrive
    sent = _Sent()
    # Their messages are in line (waiting, or held by a worker): wait for them.
    _sweep(store, settings, sent, later, gpu=frozenset({(job_id, "0"), (job_id, "1")}))
    assert sent.calls == []
    # A line too long to read may hold them too.
    _sweep(store, settings, sent, later, gpu=None)
    assert sent.calls == []
    # A busy queue, but holding other jobs' chunks only: these two are lost, not waiting.
    sent.calls.clear()
    busy = frozenset({("other", "0"), ("other", "1"), (job_id, "2")})
    # Two sweepers on two hosts at once: each chunk is sent once.
    reports = [_sweep(store, settings, sent, later, gpu=busy) for _ in range(2)]
    assert [sorted(r.requeued_chunks) for r in reports] == [[(job_id, 0), (job_id, 1)], []]
    assert sorted(sent.calls) == [("chunk", [job_id, 0], 5), ("chunk", [job_id, 1], 5)]
    assert store.state(job_id) == RUNNING
    # One arrives this time; the other is sent again after another stall period.
    store.chunk_delivered(job_id, 0, worker="w1@h", pid=12, now=later + 11)
    store.chunk_heartbeat(job_id, 2, 5, now=later + 11)
    sent.calls.clear()
    _sweep(store, settings, sent, later + 11)
    assert sent.calls == [("chunk", [job_id, 1], 5)]


def test_the_line_holds_every_waiting_message_and_those_a_worker_took_and_holds(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facefusion_tasks.app import TASK_CHUNK, TASK_PLAN, make_app
    from facefusion_tasks.tasks import enqueue

    app = make_app(Settings.from_env({"FACEFUSION_BROKER_URL": SHARED_REDIS}))
    # Real messages, as the producer sends them: two priorities (two kombu lists) and a plan.
    enqueue(app, TASK_CHUNK, ["job1", 0], priority=9, sent_at=time.time())
    enqueue(app, TASK_CHUNK, ["job1", 1], priority=1, sent_at=time.time())
    enqueue(app, TASK_CHUNK, ["job1", 2], priority=5, sent_at=time.time())
    enqueue(app, TASK_PLAN, ["job2"], sent_at=time.time())
    with app.connection_for_write() as connection:
        # A worker takes one and holds it unacknowledged (prefetched, or counting down a retry):
        # kombu moves it from its list to the `unacked` hash.
        held = connection.default_channel.basic_get("gpu", no_ack=False)
        assert held is not None
        assert store.r.hlen(keys.UNACKED_KEY) == 1
        since = time.time() - 60
        gpu = messages_in_line(store.r, "gpu", held_since=since)
        light = messages_in_line(store.r, "light", held_since=since)
        assert gpu is not None and light is not None
        assert {("job1", "0"), ("job1", "1"), ("job1", "2")} <= gpu and ("job2",) not in gpu
        assert ("job2",) in light
        # kombu stamped it with the holder's clock; a holder 10 minutes behind stamps it 600 s
        # ago. Its age counts from the first read that saw it held, on Redis's clock: in line.
        [tag] = store.r.zrange(keys.UNACKED_INDEX_KEY, 0, -1)
        store.r.zadd(keys.UNACKED_INDEX_KEY, {tag: time.time() - 600})
        assert messages_in_line(store.r, "gpu", held_since=since) == gpu
        seen, stamp = str(store.r.hget(keys.HELD_SEEN_KEY, tag)).split("|")
        assert float(seen) > since
        # Seen held since long before: a live worker starts what it takes at once, so its
        # holder is dead or stuck and kombu would give it back only after an hour. Not in line.
        store.r.hset(keys.HELD_SEEN_KEY, tag, f"{since - 1}|{stamp}")
        stale = messages_in_line(store.r, "gpu", held_since=since)
        assert stale is not None and len(gpu - stale) == 1 and len(stale) == 2
        # Given back and taken again (a worker's warm shutdown): kombu keeps the delivery tag
        # and stamps the new take. A new sighting: in line again, and its holder is alive.
        channel = connection.default_channel
        channel.basic_recover(requeue=True)
        assert channel.basic_get("gpu", no_ack=False) is not None
        assert store.r.zrange(keys.UNACKED_INDEX_KEY, 0, -1) == [tag]
        assert messages_in_line(store.r, "gpu", held_since=since) == gpu
        # Acknowledged: the next read forgets when it was seen.
        keys.acknowledge(store.r, [tag])
        messages_in_line(store.r, "gpu", held_since=since)
        assert not store.r.hexists(keys.HELD_SEEN_KEY, tag)
        monkeypatch.setattr(keys, "LINE_LIMIT", 1)  # two in the gpu line: too many to read
        assert messages_in_line(store.r, "gpu", held_since=since) is None


def test_the_line_is_read_on_a_redis_that_refuses_writes(tmp_path: Path) -> None:
    # Recording a first sighting is the line reader's only write: on a Redis that cannot save
    # (MISCONF; a read-only replica answers alike) the exporter's and the sweep's reads failed.
    from facefusion_tasks.app import TASK_CHUNK, make_app
    from facefusion_tasks.tasks import enqueue
    from tests.cluster import PROTECTED_CONFIGS, private_redis, unable_to_save

    with private_redis(tmp_path, extra=PROTECTED_CONFIGS) as server:
        client = connect(server.url)
        app = make_app(Settings.from_env({"FACEFUSION_BROKER_URL": server.url}))
        enqueue(app, TASK_CHUNK, ["job1", 0], sent_at=time.time())
        enqueue(app, TASK_CHUNK, ["job1", 1], sent_at=time.time())
        with app.connection_for_write() as connection:
            assert connection.default_channel.basic_get("gpu", no_ack=False) is not None
            with unable_to_save(client, tmp_path):
                with pytest.raises(redis.ResponseError, match="MISCONF"):
                    client.set("probe", "1")
                line = messages_in_line(client, "gpu", held_since=time.time() - 60)
        assert line == {("job1", "0"), ("job1", "1")}


def test_messages_held_for_ended_work_are_acknowledged_by_the_sweep(store: JobStore) -> None:
    from facefusion_tasks.app import TASK_CHUNK, TASK_PLAN, make_app
    from facefusion_tasks.tasks import enqueue

    settings = _settings()
    job_id = _job(store, chunks=2)
    app = make_app(Settings.from_env({"FACEFUSION_BROKER_URL": SHARED_REDIS}))
    enqueue(app, TASK_CHUNK, [job_id, 0], sent_at=time.time())
    enqueue(app, TASK_CHUNK, [job_id, 1], sent_at=time.time())
    enqueue(app, TASK_PLAN, [job_id], sent_at=time.time())
    with app.connection_for_write() as connection:
        # Workers took them, then were SIGKILLed (this connection stays open: a closing one
        # gives its messages back): kombu keeps them held until its visibility timeout (an
        # hour), and the backlog counts them all that while.
        channel = connection.default_channel
        for queue in ("gpu", "gpu", "light"):
            assert channel.basic_get(queue, no_ack=False) is not None
        assert store.r.hlen(keys.UNACKED_KEY) == 3
        store.chunk_done(job_id, 0, 10)  # chunk 0 was done since (sent again, by the sweep)
        # Chunk 1 runs elsewhere, beating its clock (its message came back and went again).
        assert store.chunk_started(job_id, 1, "w2")
        store.chunk_heartbeat(job_id, 1, 5, now=time.time() + 60)
        sent = _Sent()
        # Taken just now: not looked at yet.
        assert _sweep(store, settings, sent, time.time()).acknowledged == 0
        report = _sweep(store, settings, sent, time.time() + 60)
        # Chunk 0 is done and the job was planned long ago; chunk 1 is work still to do.
        assert report.acknowledged == 2 and report.requeued_chunks == []
        [(_tag, task, args)] = keys.held_messages(store.r, time.time())
        assert (task, args) == (TASK_CHUNK, (job_id, "1"))
        assert store.r.zcard(keys.UNACKED_INDEX_KEY) == 1
        # The job ends: its last held message goes too.
        store.fail(job_id, Reason.MEDIA, "ended")
        assert _sweep(store, settings, sent, time.time() + 60).acknowledged == 1
        assert store.r.hlen(keys.UNACKED_KEY) == 0


def test_a_chunk_whose_holder_died_before_starting_it_is_sent_again_and_let_go(
    store: JobStore,
) -> None:
    """A worker took a chunk's message and was SIGKILLed before starting it: the sweep sends
    the chunk again, and lets go of the dead holder's message with it (kombu kept it held
    until its visibility timeout, an hour, counted in the backlog, then delivered it twice;
    a review's finding)."""
    from facefusion_tasks.app import TASK_CHUNK, make_app
    from facefusion_tasks.tasks import enqueue

    settings = _settings()
    job_id = _job(store, chunks=1)
    app = make_app(Settings.from_env({"FACEFUSION_BROKER_URL": SHARED_REDIS}))
    enqueue(app, TASK_CHUNK, [job_id, 0], sent_at=time.time())
    with app.connection_for_write() as connection:
        assert connection.default_channel.basic_get("gpu", no_ack=False) is not None
        assert store.r.hlen(keys.UNACKED_KEY) == 1
        sent = _Sent()
        report = _sweep(store, settings, sent, time.time() + 60)
        assert report.requeued_chunks == [(job_id, 0)]
        assert keys.held_messages(store.r, float("inf")) == []


def test_a_chunk_no_worker_ever_takes_fails_its_job_as_stalled(store: JobStore) -> None:
    settings = _settings(max_deliveries=2)
    job_id = _job(store, chunks=1)
    sent = _Sent()
    for period in range(1, 4):
        report = _sweep(store, settings, sent, time.time() + 11 * period,
        )  # fmt: skip
    assert len(sent.calls) == 2
    assert report.failed_jobs == [(job_id, Reason.STALLED)]
    job = store.get(job_id)
    assert (job["state"], job["reason"]) == (FAILED, "stalled")
    assert "no worker took it" in job["error"]
    assert store.r.zcard(PENDING_KEY) == 0  # an ended job's chunks wait for nothing


def test_finished_work_leaves_the_indexes(store: JobStore) -> None:
    job_id = _job(store, chunks=1)
    assert store.r.zscore(LIVE_KEY, job_id) is None  # RUNNING is watched through its chunks
    assert store.r.zscore(PENDING_KEY, f"{job_id}:0") is not None  # until a worker takes it
    delivery = store.chunk_delivered(job_id, 0, worker="w1@h", pid=11)
    assert store.r.zcard(PENDING_KEY) == 0
    assert store.chunk_done(job_id, 0, 10) is True
    assert store.r.zcard(RUNNING_KEY) == 0
    assert store.r.zscore(LIVE_KEY, job_id) is not None  # until its stitch starts
    store.chunk_attempt_ended(job_id, 0, delivery.token)
    again = store.chunk_delivered(job_id, 0, worker="w1@h", pid=11)
    assert again.state == "DONE" and store.r.zcard(RUNNING_KEY) == 0


def test_the_shared_redis_is_reachable() -> None:
    assert redis.Redis.from_url(SHARED_REDIS).ping()


def test_a_retry_counts_deliveries_anew(store: JobStore) -> None:
    settings = _settings(max_deliveries=1)
    job_id = _job(store)
    store.chunk_delivered(job_id, 0, worker="w1@h", pid=11)  # died
    assert store.chunk_delivered(job_id, 0, worker="w1@h", pid=12).lost >= settings.max_deliveries
    store.set_state(job_id, FAILED, reason=Reason.WORKER_LOST)
    assert store.r.zcard(PENDING_KEY) == 0  # chunk 1 waited for a message no longer expected
    store.reopen(job_id, planned=True, from_states=(FAILED,))
    store.reset_chunk(job_id, 0)
    assert store.r.zscore(PENDING_KEY, f"{job_id}:0") is not None  # its new message is awaited
    again = store.chunk_delivered(job_id, 0, worker="w2@h", pid=13)
    assert (again.deliveries, again.lost) == (1, 0)
    assert store.state(job_id) == RUNNING


def test_a_failure_is_recorded_on_the_job_before_its_chunk(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process killed between the two writes: the job must already say FAILED and why.
    job_id = _job(store)

    def killed(*_args: Any) -> None:
        raise SystemExit("killed between the two writes")

    monkeypatch.setattr(store, "chunk_failed", killed)
    with pytest.raises(SystemExit):
        store.fail(job_id, Reason.TIMEOUT, "chunk hit the time limit", index=0)
    job = store.get(job_id)
    assert (job["state"], job["reason"]) == (FAILED, "timeout")


def test_a_chunk_waiting_for_its_retry_is_sent_again_if_that_message_is_lost(
    store: JobStore,
) -> None:
    settings = _settings()
    job_id = _job(store, chunks=1)
    later = time.time() + 60
    delivery = store.chunk_delivered(job_id, 0, worker="w1@h", pid=11, now=later)
    store.chunk_started(job_id, 0, "w1@h")
    store.chunk_retrying(job_id, 0, now=later)  # a passing error: Celery sends a retry
    store.chunk_attempt_ended(job_id, 0, delivery.token)
    assert store.status(job_id).chunks[0]["state"] == PENDING  # type: ignore[union-attr]
    sent = _Sent()
    # The retry's message never comes (lost, or its worker died holding it).
    _sweep(store, settings, sent, later + 11)
    assert sent.calls == [("chunk", [job_id, 0], 5)]


def test_stamps_and_cutoffs_are_on_redis_clock_whatever_the_host_clock_says(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process plays a host whose clock runs 10 minutes behind: what it stamps (deliveries,
    # heartbeats) and what it judges (the sweep's cutoff) must both come from Redis.
    redis_now = float(store.r.time()[0])
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 600)
    settings = _settings()
    job_id = _job(store)
    store.chunk_delivered(job_id, 0, worker="w1@h", pid=11)
    store.chunk_heartbeat(job_id, 0, 4)
    beat = store.status(job_id).chunks[0]["heartbeat_at"]  # type: ignore[union-attr]
    assert abs(float(beat) - redis_now) < 5
    sent = _Sent()
    report = sweep(
        store, settings, enqueue=sent, light_line=lambda _: frozenset(),
        gpu_line=lambda _: frozenset(),
    )  # fmt: skip
    assert report.requeued_chunks == [] and sent.calls == []
    assert store.state(job_id) == RUNNING


def test_an_older_attempt_ending_after_a_newer_one_started_leaves_it_to_the_sweep(
    store: JobStore,
) -> None:
    # Attempt A retries after a passing error; an idle process takes the retry at once (B),
    # then A's task unwinds and ends its attempt again in its `finally`. Its removal from the
    # running index took B's entry: B hanging before its first frame was never given back.
    settings = _settings()
    job_id = _job(store, chunks=1)
    first = store.chunk_delivered(job_id, 0, worker="a@h", pid=11, now=1000.0)
    store.chunk_started(job_id, 0, "a@h")
    store.chunk_attempt_ended(job_id, 0, first.token)  # tasks._settle, before the retry
    store.chunk_retrying(job_id, 0, now=1001.0)
    second = store.chunk_delivered(job_id, 0, worker="b@h", pid=12, now=1001.0)
    store.chunk_attempt_ended(job_id, 0, first.token)  # A's `finally`, after B began
    store.chunk_started(job_id, 0, "b@h")
    sent = _Sent()
    assert _sweep(store, settings, sent, 1020.0).requeued_chunks == [(job_id, 0)]
    assert sent.calls == [("chunk", [job_id, 0], 5)]
    # The latest attempt's own end still takes the chunk out.
    third = store.chunk_delivered(job_id, 0, worker="c@h", pid=13, now=1021.0)
    store.chunk_attempt_ended(job_id, 0, second.token)
    assert store.r.zscore(RUNNING_KEY, f"{job_id}:0") is not None
    store.chunk_attempt_ended(job_id, 0, third.token)
    assert store.r.zscore(RUNNING_KEY, f"{job_id}:0") is None


def test_an_attempt_stopping_for_a_job_retry_reopened_does_not_cancel_its_successor(
    store: JobStore,
) -> None:
    # A runs chunk 0 when chunk 1 fails the job; `retry` reopens it and B takes chunk 0
    # before A has unwound. A's "cancelled" marked B's chunk CANCELLED under a RUNNING job,
    # and the sweep passes CANCELLED chunks by: B hanging was never seen.
    settings = _settings()
    job_id = _job(store, chunks=2)
    store.chunk_delivered(job_id, 0, worker="a@h", pid=11, now=1000.0)
    store.chunk_started(job_id, 0, "a@h")
    store.fail(job_id, Reason.INTERNAL, "boom", index=1)
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
    for index in store.undone_chunks(job_id):
        store.reset_chunk(job_id, index)
    store.chunk_delivered(job_id, 0, worker="b@h", pid=12, now=1005.0)
    assert store.chunk_started(job_id, 0, "b@h")
    store.chunk_cancelled(job_id, 0)  # A, stopping for the FAILED it saw
    assert store.status(job_id).chunks[0]["state"] == RUNNING  # type: ignore[union-attr]
    sent = _Sent()
    assert _sweep(store, settings, sent, 1020.0).requeued_chunks == [(job_id, 0)]
    # Under a job that did end, a stopping chunk still ends CANCELLED.
    assert store.cancel(job_id)[0]
    store.chunk_cancelled(job_id, 0)
    assert store.status(job_id).chunks[0]["state"] == CANCELLED  # type: ignore[union-attr]


def test_a_planner_that_wakes_after_another_planned_the_job_writes_nothing(
    store: JobStore,
) -> None:
    # The sweep sent the plan again while planner A was frozen past stall_seconds; B planned
    # the job and chunk 0 finished. A woke: its plan reset chunk 0 to PENDING and emptied the
    # done set, so no stitch was ever sent, and its "ended meanwhile" branch gave the RUNNING
    # job's records and output claim their retention TTL.
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": "o.mp4"})
    plan = [Chunk(i, i * 10, (i + 1) * 10, 10, None) for i in range(2)]
    assert store.set_state(job_id, PLANNING, only_from=(QUEUED, PLANNING))  # A, then frozen
    assert store.set_state(job_id, PLANNING, only_from=(QUEUED, PLANNING))  # B
    assert store.set_plan(job_id, plan, 20, {})
    assert store.set_state(job_id, RUNNING, only_from=(PLANNING,))
    delivery = store.chunk_delivered(job_id, 0, worker="w@h", pid=11)
    store.chunk_started(job_id, 0, "w@h")
    store.chunk_done(job_id, 0, 10)
    store.chunk_attempt_ended(job_id, 0, delivery.token)
    assert store.set_plan(job_id, plan, 20, {}) is False  # A
    assert store.status(job_id).chunks[0]["state"] == DONE  # type: ignore[union-attr]
    assert store.r.ttl(f"facefusion:job:{job_id}") == -1
    store.chunk_delivered(job_id, 1, worker="w@h", pid=11)
    store.chunk_started(job_id, 1, "w@h")
    assert store.chunk_done(job_id, 1, 10)  # the last: its stitch is sent


def test_a_retrying_attempt_leaves_a_chunk_another_delivery_finished_done(
    store: JobStore,
) -> None:
    # A, given back by the sweep and woken, meets a passing error after B finished the chunk:
    # its retry set the DONE chunk back to PENDING (status said undone, and it ran again).
    job_id = _job(store, chunks=2)
    store.chunk_delivered(job_id, 0, worker="a@h", pid=11, now=1000.0)
    store.chunk_delivered(job_id, 0, worker="b@h", pid=12, now=1020.0)
    store.chunk_done(job_id, 0, 10)
    store.chunk_retrying(job_id, 0, now=1030.0)  # A
    assert store.status(job_id).chunks[0]["state"] == DONE  # type: ignore[union-attr]
    assert store.r.zscore(PENDING_KEY, f"{job_id}:0") is None
