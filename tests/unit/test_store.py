"""The job store's state machine on a real Redis database: transitions, races, cancel, reopen."""

from __future__ import annotations

import threading
import time
import uuid
from fractions import Fraction

import pytest

from facefusion_tasks.errors import InputError
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.reasons import Reason
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
    SUCCEEDED,
    JobStore,
    job_sources,
)
from facefusion_tasks.store_keys import chunk_key, job_key
from facefusion_tasks.store_outputs import OutputBusy


def _output() -> str:
    """An output of its own: unfinished jobs may not share one."""
    return f"o-{uuid.uuid4().hex}.mp4"


def _planned(store: JobStore, chunks: int = 3) -> str:
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": _output()})
    plan = [Chunk(i, i * 10, (i + 1) * 10, 10, Fraction(1, 2)) for i in range(chunks)]
    store.set_state(job_id, PLANNING)  # as the planner does
    store.set_plan(job_id, plan, 10 * chunks, {})
    assert store.set_state(job_id, RUNNING)
    return job_id


def _race(count: int, action) -> list:  # type: ignore[no-untyped-def]
    """Run `action(i)` in `count` threads released together; their results."""
    start = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        start.wait()
        results[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_a_terminal_state_is_never_left(store: JobStore) -> None:
    job_id = _planned(store)
    assert store.set_state(job_id, FAILED, reason=Reason.MEDIA, error="boom")
    assert not store.set_state(job_id, RUNNING)
    assert not store.set_state(job_id, SUCCEEDED)
    job = store.get(job_id)
    assert (job["state"], job["reason"], job["error"]) == (FAILED, "media", "boom")
    assert float(job["finished_at"]) > 0
    assert not store.set_state("no-such-job", RUNNING)


def test_only_from_limits_the_transition(store: JobStore) -> None:
    job_id = _planned(store)
    assert not store.set_state(job_id, COMMITTING, only_from=(STITCHING,))
    assert store.set_state(job_id, STITCHING, only_from=(RUNNING,))
    assert store.set_state(job_id, COMMITTING, only_from=(STITCHING,))
    assert store.state(job_id) == COMMITTING


def test_racing_writers_exactly_one_ends_the_job(store: JobStore) -> None:
    job_id = _planned(store)
    ends = [FAILED, CANCELLED, SUCCEEDED] * 4
    won = _race(len(ends), lambda i: store.set_state(job_id, ends[i]))
    assert won.count(True) == 1
    assert store.state(job_id) == ends[won.index(True)]


def test_chunk_done_reports_the_completed_set_exactly_once(store: JobStore) -> None:
    job_id = _planned(store, chunks=6)
    # Every chunk finishes, each twice (a redelivered duplicate), all at once.
    results = _race(12, lambda i: store.chunk_done(job_id, i % 6, 10))
    assert results.count(True) == 1
    assert {c["state"] for c in store.chunks(job_id)} == {DONE}
    assert store.undone_chunks(job_id) == []


def test_cancel_ends_the_job_and_every_unfinished_chunk(store: JobStore) -> None:
    job_id = _planned(store)
    assert store.chunk_done(job_id, 0, 10) is False
    assert store.chunk_started(job_id, 1, "w1")
    cancelled, idle = store.cancel(job_id)
    assert cancelled and not idle  # chunk 1 is still executing: it cleans up when it stops
    assert store.state(job_id) == CANCELLED
    assert store.get(job_id)["reason"] == Reason.CANCELLED.value
    assert [c["state"] for c in store.chunks(job_id)] == [DONE, CANCELLED, CANCELLED]
    assert not store.chunk_started(job_id, 2, "w2")  # a pending chunk that comes up is skipped
    assert store.chunk_left(job_id, 1) is True  # the last one out sees it idle and cancelled
    assert store.cancel(job_id) == (False, False)  # already over


def test_a_failed_jobs_chunks_no_worker_started_end_cancelled(store: JobStore) -> None:
    job_id = _planned(store, chunks=4)
    assert store.chunk_done(job_id, 0, 10) is False
    assert store.chunk_started(job_id, 1, "w1")  # still running: its watch stops it
    assert store.chunk_started(job_id, 2, "w2")
    assert store.fail(job_id, Reason.MEDIA, "boom", index=2)
    assert [c["state"] for c in store.chunks(job_id)] == [DONE, RUNNING, FAILED, CANCELLED]
    assert store.undone_chunks(job_id) == [1, 2, 3]  # what `retry` runs again
    assert not store.fail(job_id, Reason.MEDIA, "again")  # already over: nothing moves
    # Reopened by `retry` before a late fail() call of another chunk: its chunks stay as
    # retry left them.
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
    store.reset_chunk(job_id, 3)
    store._waiting_chunks_ended(keys=[job_key(job_id), chunk_key(job_id, 3)])
    assert store.chunks(job_id)[3]["state"] == PENDING


def test_a_chunk_whose_job_ended_as_it_was_to_be_retried_ends_cancelled(store: JobStore) -> None:
    job_id = _planned(store, chunks=3)
    assert store.chunk_started(job_id, 0, "w1")
    store.chunk_retrying(job_id, 0)  # a passing error: its retry waits in line
    assert store.chunks(job_id)[0]["state"] == PENDING
    assert store.chunk_started(job_id, 0, "w1") and store.chunk_started(job_id, 1, "w2")
    # Another chunk fails the job just before this one's retry is recorded: it was left
    # PENDING under the FAILED job for good (a read, then a write).
    assert store.fail(job_id, Reason.MEDIA, "boom", index=1)
    store.chunk_retrying(job_id, 0)
    assert [c["state"] for c in store.chunks(job_id)] == [CANCELLED, FAILED, CANCELLED]
    assert store.waiting_chunks(job_id, 3) == {}  # no message is awaited


def test_a_silent_chunk_of_a_failed_job_ends_cancelled_when_the_sweep_finds_it(
    store: JobStore,
) -> None:
    job_id = _planned(store, chunks=2)
    assert store.chunk_started(job_id, 0, "w1")
    store.chunk_heartbeat(job_id, 0, 3, now=100.0)  # then its worker died
    assert store.fail(job_id, Reason.MEDIA, "boom", index=1)
    assert store.claim_stalled_chunk(job_id, 0, cutoff=200.0, error="silent") is None
    assert store.chunks(job_id)[0]["state"] == CANCELLED  # it showed RUNNING for ever


def test_an_attempt_given_back_by_the_sweep_no_longer_holds_its_chunk(store: JobStore) -> None:
    job_id = _planned(store, chunks=1)
    first = store.chunk_delivered(job_id, 0, worker="w1", pid=11, now=100.0)
    assert store.chunk_started(job_id, 0, "w1")
    assert store.holds_chunk(job_id, 0, first.token)
    assert store.claim_stalled_chunk(job_id, 0, cutoff=200.0, error="silent") is not None
    assert not store.holds_chunk(job_id, 0, first.token)  # given back: it has no say now
    second = store.chunk_delivered(job_id, 0, worker="w2", pid=12)
    assert store.holds_chunk(job_id, 0, second.token)
    assert not store.holds_chunk(job_id, 0, first.token)


def test_cancel_with_nothing_executing_is_idle(store: JobStore) -> None:
    job_id = store.create({"output": _output()})
    assert store.cancel(job_id) == (True, True)


def test_a_committing_job_cannot_be_cancelled(store: JobStore) -> None:
    job_id = _planned(store)
    assert store.set_state(job_id, STITCHING)
    assert store.set_state(job_id, COMMITTING, only_from=(STITCHING,))
    assert store.cancel(job_id) == (False, False)
    assert store.set_state(job_id, SUCCEEDED, only_from=(COMMITTING,))


def test_a_commit_mark_is_recorded_with_the_move_to_committing_by_the_latest_stitch(
    store: JobStore,
) -> None:
    job_id = _planned(store)
    commit = {"commit": '{"temp": "t"}'}
    # RUNNING: no stitch began.
    assert not store.set_state(job_id, COMMITTING, only_from=(STITCHING,), also=commit)
    assert store.set_state(job_id, STITCHING, also={"stitch": "first"})
    assert store.set_state(job_id, STITCHING, also={"stitch": "second"})  # a duplicate began
    assert not store.set_state(
        job_id, COMMITTING, only_from=(STITCHING,), expect={"stitch": "first"}, also=commit
    )
    assert "commit" not in store.get(job_id) and store.state(job_id) == STITCHING
    assert store.set_state(
        job_id, COMMITTING, only_from=(STITCHING,), expect={"stitch": "second"}, also=commit
    )
    assert store.get(job_id)["commit"] == '{"temp": "t"}'
    # Redis lost the job (restarted without persistence) while its stitcher worked: the mark
    # made a record of one field, no state and no TTL, which `wait` followed for ever.
    store.r.delete(job_key(job_id))
    assert not store.set_state(job_id, COMMITTING, also=commit)
    assert not store.r.exists(job_key(job_id))


def test_a_job_record_without_a_state_is_no_job(store: JobStore) -> None:
    # A fragment a late writer left (any field but the state) reads as unknown: `wait` then
    # says the job vanished, where it waited on a state of "" for ever.
    store.r.hset(job_key("0123456789abcdef0123456789abcdef"), "commit", "{}")
    assert store.status("0123456789abcdef0123456789abcdef") is None


def test_cancel_and_commit_race_one_wins(store: JobStore) -> None:
    for _ in range(20):
        job_id = _planned(store, chunks=1)
        assert store.set_state(job_id, STITCHING)

        def cancel_or_commit(i: int, job_id: str = job_id) -> bool:
            if i:
                return store.cancel(job_id)[0]
            return store.set_state(job_id, COMMITTING, only_from=(STITCHING,))

        results = _race(2, cancel_or_commit)
        assert results.count(True) == 1
        assert store.state(job_id) in {CANCELLED, COMMITTING}


def test_chunk_left_cleans_only_after_a_cancel(store: JobStore) -> None:
    job_id = _planned(store)
    assert store.chunk_started(job_id, 0, "w1")
    assert store.chunk_left(job_id, 0) is False  # running job: segments are still needed
    assert store.chunk_started(job_id, 0, "w1")
    assert store.chunk_started(job_id, 1, "w2")
    store.set_state(job_id, FAILED, reason=Reason.MEDIA)
    assert store.chunk_left(job_id, 0) is False
    assert store.chunk_left(job_id, 1) is False  # failed, not cancelled: retry reuses them


def test_reopen_only_from_the_states_given(store: JobStore) -> None:
    job_id = _planned(store)
    store.set_state(job_id, FAILED, reason=Reason.NO_SPACE, error="disk full")
    assert store.claim_metering(job_id)
    assert not store.reopen(job_id, planned=True, from_states=(RUNNING,))
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
    job = store.get(job_id)
    assert (job["state"], job["reason"], job["error"]) == (RUNNING, "", "")
    assert store.claim_metering(job_id)  # its end is counted anew
    fresh = store.create({"output": _output()})
    store.set_state(fresh, PLANNING)
    assert store.reopen(fresh, planned=False, from_states=(PLANNING,))
    assert store.state(fresh) == QUEUED


def test_reopen_drops_the_last_stitch_token(store: JobStore) -> None:
    """A stitch of the run `retry` ended, stopped and then woken, must not find the job still
    its own: its failure would fail the new run, its COMMITTING step could win the race."""
    job_id = _planned(store)
    assert store.set_state(job_id, STITCHING, also={"stitch": "earlier"})
    store.set_state(job_id, FAILED, reason=Reason.STALLED)
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
    assert "stitch" not in store.get(job_id)
    assert not store.set_state(job_id, STITCHING, expect={"stitch": "earlier"})


def test_all_chunks_done_only_once_every_chunk_is(store: JobStore) -> None:
    assert not store.all_chunks_done(store.create({"output": _output()}))  # no plan yet
    job_id = _planned(store, chunks=2)
    store.chunk_done(job_id, 0, 10)
    assert not store.all_chunks_done(job_id)
    store.chunk_done(job_id, 1, 10)
    assert store.all_chunks_done(job_id)
    # By the chunks' records, as `retry` judges: a done set evicted on its own must not make
    # every stitch of the retried job stand aside (review).
    store.r.delete(f"{job_key(job_id)}:done")
    assert store.all_chunks_done(job_id)
    store.reset_chunk(job_id, 1)  # `retry` runs it again
    assert not store.all_chunks_done(job_id)


def test_reopen_only_while_the_expected_fields_hold(store: JobStore) -> None:
    """`retry` fences a stopped stitcher's upload, then reopens: only if no stitcher recorded
    another upload in between (it would complete that one unfenced)."""
    job_id = _planned(store)
    assert store.set_state(job_id, COMMITTING, also={"commit": "{}", "upload": "u1"})
    store.set_state(job_id, FAILED, reason=Reason.STALLED)
    assert not store.reopen(
        job_id, planned=True, from_states=(FAILED,), expect={"commit": "{}", "upload": None}
    )
    assert store.state(job_id) == FAILED
    assert store.reopen(
        job_id, planned=True, from_states=(FAILED,), expect={"commit": "{}", "upload": "u1"}
    )
    assert "upload" not in store.get(job_id)  # fenced already: no later retry aborts it again


def test_reset_chunk_returns_it_to_pending(store: JobStore) -> None:
    job_id = _planned(store, chunks=2)
    store.chunk_done(job_id, 0, 10)
    store.chunk_failed(job_id, 1, "boom")
    store.reset_chunk(job_id, 0)
    chunk = store.chunks(job_id)[0]
    assert (chunk["state"], chunk["frames_done"], chunk["error"]) == (PENDING, "0", "")
    assert store.undone_chunks(job_id) == [0, 1]
    assert store.chunk_done(job_id, 1, 10) is False  # chunk 0 is no longer counted done
    assert store.chunk_done(job_id, 0, 10) is True


def test_stalled_means_no_change_for_the_setting(store: JobStore) -> None:
    job_id = store.create({"output": _output()})
    store.set_state(job_id, PLANNING)
    now = time.time()
    assert not store.stalled(job_id, seconds=300, now=now)
    assert store.stalled(job_id, seconds=300, now=now + 301)
    store.set_state(job_id, FAILED, reason=Reason.INTERNAL)
    assert not store.stalled(job_id, seconds=300, now=now + 301)  # ended, not stalled


def test_a_job_recorded_before_several_sources_still_names_its_one_source(
    store: JobStore,
) -> None:
    old = store.create({"source": "/data/s.png", "target": "t.mp4", "output": _output()})
    new = store.create(
        {"source": "/data/a.png", "sources": ["/data/a.png", "/data/b.png"], "target": "t.mp4"}
    )
    assert job_sources(store.get(old)) == ["/data/s.png"]
    assert job_sources(store.get(new)) == ["/data/a.png", "/data/b.png"]
    status = store.status(new)
    assert status is not None and status.sources == ["/data/a.png", "/data/b.png"]
    assert status.source == "/data/a.png"


def test_an_unfinished_job_keeps_its_output_from_every_other_job(store: JobStore) -> None:
    first = store.create({"output": "/data/out.mp4"})
    for state in (RUNNING, STITCHING, COMMITTING):
        store.set_state(first, state)
        with pytest.raises(OutputBusy, match=f"job {first} \\({state}\\)") as refused:
            store.create({"output": "/data/out.mp4"})
        assert refused.value.reason is Reason.BAD_OUTPUT
    assert store.recent() == [first]  # the refused jobs recorded nothing
    assert store.create({"output": "/data/other.mp4"})  # another output is free
    claim = "facefusion:output:/data/out.mp4"
    assert store.r.ttl(claim) == -1  # held while the job runs, however long
    store.set_state(first, SUCCEEDED)
    assert 0 < store.r.ttl(claim) <= store.record_ttl  # let go with the job's records
    second = store.create({"output": "/data/out.mp4"})
    assert store.r.get(claim) == second and store.r.ttl(claim) == -1


def test_failed_and_cancelled_jobs_let_their_output_go(store: JobStore) -> None:
    failed = store.create({"output": "/data/a.mp4"})
    store.fail(failed, Reason.MEDIA, "boom")
    cancelled = store.create({"output": "/data/b.mp4"})
    assert store.cancel(cancelled) == (True, True)
    store.create({"output": "/data/a.mp4"})
    store.create({"output": "/data/b.mp4"})
    # A holder whose records expired has let go too.
    gone = store.create({"output": "/data/c.mp4"})
    store.r.delete(f"facefusion:job:{gone}")
    store.create({"output": "/data/c.mp4"})


def test_racing_submits_to_one_output_record_one_job(store: JobStore) -> None:
    def submit(i: int) -> str | None:
        try:
            return store.create({"output": "/data/raced.mp4"})
        except OutputBusy:
            return None

    made = [job for job in _race(6, submit) if job]
    assert len(made) == 1 and store.r.get("facefusion:output:/data/raced.mp4") == made[0]


def test_a_retried_job_takes_its_output_back_unless_another_job_holds_it(
    store: JobStore,
) -> None:
    old = _planned(store)
    output = store.get(old)["output"]
    store.set_state(old, FAILED, reason=Reason.MEDIA)
    newer = store.create({"output": output})
    with pytest.raises(OutputBusy, match=newer):
        store.reopen(old, planned=True, from_states=(FAILED,))
    assert store.state(old) == FAILED  # left as it was
    store.set_state(newer, FAILED, reason=Reason.MEDIA)
    assert store.reopen(old, planned=True, from_states=(FAILED,))
    assert store.r.get(f"facefusion:output:{output}") == old
    assert store.r.ttl(f"facefusion:output:{output}") == -1


def test_an_ended_jobs_late_release_leaves_the_next_holders_claim_alone(store: JobStore) -> None:
    old = store.create({"output": "/data/late.mp4"})
    store.fail(old, Reason.MEDIA, "boom")
    newer = store.create({"output": "/data/late.mp4"})
    store.expire_job(old)  # e.g. a plan that lost a race, tidying after the old job
    claim = "facefusion:output:/data/late.mp4"
    assert store.r.get(claim) == newer and store.r.ttl(claim) == -1


def test_a_worker_still_running_after_redis_lost_the_job_recreates_no_record(
    store: JobStore,
) -> None:
    job_id = _planned(store, chunks=2)
    assert store.chunk_started(job_id, 0, "w1")
    delivery = store.chunk_delivered(job_id, 0, worker="w1", pid=1)
    store.r.flushdb()  # Redis restarted without its data (no AOF), the worker goes on
    store.chunk_progress(job_id, 0, 5)
    store.chunk_heartbeat(job_id, 0, 6)
    store.chunk_attempt_ended(job_id, 0, delivery.token)
    store.chunk_failed(job_id, 0, "boom")
    store.chunk_cancelled(job_id, 1)
    assert store.chunk_done(job_id, 0, 10) is False
    # Nothing left that no TTL would ever remove, and nothing in the running index to sweep.
    assert store.r.keys("*") == []


def test_a_reopen_whose_exec_reply_was_lost_still_answers_that_it_reopened(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    job_id = _planned(store)
    store.set_state(job_id, FAILED, reason=Reason.MEDIA)
    execute = redis.client.Pipeline.execute
    lost: list[bool] = []

    def ran_then_lost(self, raise_on_error=True):  # type: ignore[no-untyped-def]
        transaction = self.explicit_transaction  # execute() resets the pipeline
        result = execute(self, raise_on_error)
        if transaction and not lost:
            lost.append(True)  # Redis ran it; the reply never came (redis-py: WatchError)
            raise redis.WatchError("connection lost while watching")
        return result

    monkeypatch.setattr(redis.client.Pipeline, "execute", ran_then_lost)
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
    assert lost and store.state(job_id) == RUNNING


def test_a_done_chunk_keeps_its_record_whatever_a_duplicate_delivery_does(
    store: JobStore,
) -> None:
    job_id = _planned(store, chunks=2)
    assert store.chunk_started(job_id, 0, "w1")
    store.chunk_done(job_id, 0, 10)
    done = store.chunks(job_id)[0]
    # A second copy of chunk 0 (re-sent, redelivered) that starts, reports, fails or stops:
    assert not store.chunk_started(job_id, 0, "w2")
    store.chunk_progress(job_id, 0, 3)
    store.chunk_heartbeat(job_id, 0, 4)
    store.chunk_failed(job_id, 0, "Error writing trailer")
    store.chunk_cancelled(job_id, 0)
    assert store.chunks(job_id)[0] == done
    assert done["state"] == DONE and done["frames_done"] == "10"
    assert store.r.zscore("facefusion:running", f"{job_id}:0") is None


def test_no_job_writes_what_another_unfinished_job_reads(store: JobStore) -> None:
    reader = store.create({"target": "/data/a.mp4", "sources": ["/data/face.png"],
                           "output": "/data/a-out.mp4"})  # fmt: skip
    for written in ("/data/a.mp4", "/data/face.png"):
        with pytest.raises(OutputBusy, match=f"is an input of job {reader} \\(QUEUED\\)"):
            store.create({"target": "/data/b.mp4", "output": written})
    # Nor does a job read what another unfinished job writes.
    with pytest.raises(InputError, match=f"is the output of job {reader}") as caught:
        store.create({"target": "/data/a-out.mp4", "output": "/data/c.mp4"})
    assert caught.value.reason is Reason.BAD_INPUT
    assert store.recent() == [reader]  # the refused jobs recorded nothing
    # Readers share an input; once the reader ends, its input may be written.
    other = store.create({"target": "/data/a.mp4", "output": "/data/d.mp4"})
    store.set_state(reader, SUCCEEDED)
    with pytest.raises(OutputBusy, match=f"is an input of job {other}"):
        store.create({"target": "/data/b.mp4", "output": "/data/a.mp4"})
    store.cancel(other)
    writer = store.create({"target": "/data/b.mp4", "output": "/data/a.mp4"})
    assert store.state(writer) == QUEUED
