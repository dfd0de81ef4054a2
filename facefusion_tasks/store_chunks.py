"""A chunk's record as its task moves it: taken, progressing, retried, failed, cancelled, done."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from facefusion_tasks.fleet_clock import fleet_now
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.metrics.keys import LIVE_KEY, PENDING_KEY, RUNNING_KEY
from facefusion_tasks.store_keys import (
    CANCELLED,
    DONE,
    FAILED,
    RUNNING,
    TERMINAL,
    chunk_key,
    done_key,
    job_key,
    new_token,
    running_key,
    running_member,
)
from facefusion_tasks.store_scripts import (
    CHUNK_ATTEMPT_ENDED,
    CHUNK_CANCELLED,
    CHUNK_DELIVERED,
    CHUNK_DONE,
    CHUNK_RETRYING,
    CHUNK_UPDATE,
)


@dataclass(frozen=True)
class Delivery:
    """One start of a chunk task, as counted in Redis."""

    #: Identifies this delivery (chunk_attempt_ended takes it).
    token: str
    #: Starts of this chunk so far, this one included.
    deliveries: int
    #: Starts that ended in the task's own code (done, failed, retried).
    finished: int
    #: The chunk's state when this delivery started.
    state: str
    #: Earlier deliveries that never ended, first seen by this one: their process died...
    newly_lost: int = 0
    #: ...or the stall sweep gave them back.
    newly_stalled: int = 0

    @property
    def lost(self) -> int:
        """Earlier deliveries that never ended: their process was killed or hung."""
        return self.deliveries - self.finished - 1


class ChunkRecords:
    """The chunk half of JobStore (a base class of it): what a chunk task writes as it runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._chunk_done = client.register_script(CHUNK_DONE)
        self._chunk_update = client.register_script(CHUNK_UPDATE)
        self._chunk_delivered = client.register_script(CHUNK_DELIVERED)
        self._chunk_attempt_ended = client.register_script(CHUNK_ATTEMPT_ENDED)
        self._chunk_retrying = client.register_script(CHUNK_RETRYING)
        self._chunk_cancelled = client.register_script(CHUNK_CANCELLED)

    def chunk_plan(self, job_id: str, index: int) -> Chunk:
        """The planned span of one chunk."""
        raw = self.r.hget(chunk_key(job_id, index), "plan")
        if raw is None:
            raise KeyError(f"job {job_id} has no chunk {index}")
        return Chunk.from_json(json.loads(raw))

    def chunk_started(self, job_id: str, index: int, worker: str) -> bool:
        """A worker takes the chunk (again, after a redelivery): progress restarts at 0 and the
        chunk joins the job's running set. False, and nothing changes, when the job has ended
        (WATCHed: a cancel either lands first and the chunk is skipped, or sees it running) or
        the chunk is DONE (a duplicate delivery that another one finished meanwhile)."""
        key = job_key(job_id)
        chunk = chunk_key(job_id, index)
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key, chunk)
                    if pipe.hget(key, "state") in TERMINAL or pipe.hget(chunk, "state") == DONE:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(
                        chunk,
                        mapping={"state": RUNNING, "worker": worker, "frames_done": 0, "error": ""},
                    )
                    pipe.hincrby(chunk, "attempts", 1)
                    pipe.sadd(running_key(job_id), index)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def chunk_left(self, job_id: str, index: int) -> bool:
        """This worker stopped executing the chunk (done, failed or stopped). True for the one
        caller that leaves a CANCELLED job with no chunk executing: it removes the segments."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.srem(running_key(job_id), index)
            pipe.scard(running_key(job_id))
            pipe.hget(job_key(job_id), "state")
            _, left, state = pipe.execute()
        return int(left) == 0 and state == CANCELLED

    def _update_chunk(
        self, job_id: str, index: int, fields: dict[str, Any], *, beat: float | None = None
    ) -> bool:
        """Write a chunk's fields (and with `beat`, its clock in the running index) only if its
        record still exists; returns whether it did."""
        pairs = [item for pair in fields.items() for item in pair]
        return bool(
            self._chunk_update(
                keys=[chunk_key(job_id, index), RUNNING_KEY],
                args=[running_member(job_id, index), "" if beat is None else beat, *pairs],
            )
        )

    def chunk_progress(self, job_id: str, index: int, frames_done: int) -> None:
        """Frames of this chunk encoded so far (no heartbeat: see chunk_heartbeat)."""
        self._update_chunk(job_id, index, {"frames_done": frames_done})

    def chunk_heartbeat(
        self, job_id: str, index: int, frames_done: int, *, now: float | None = None
    ) -> None:
        """The chunk made progress: frames done so far and the time, which the stall sweep
        reads. Sent only when frames advance, so a hung process stops it by itself."""
        now = fleet_now(self.r) if now is None else now
        self._update_chunk(
            job_id, index, {"frames_done": frames_done, "heartbeat_at": now}, beat=now
        )

    def chunk_delivered(
        self, job_id: str, index: int, *, worker: str, pid: int, now: float | None = None
    ) -> Delivery:
        """A chunk task started (first delivery, retry or redelivery): count it in Redis
        before anything can kill the process, and start its heartbeat clock."""
        token = new_token()
        now = fleet_now(self.r) if now is None else now
        deliveries, finished, state, lost, stalled = self._chunk_delivered(
            keys=[chunk_key(job_id, index), RUNNING_KEY, PENDING_KEY],
            args=[token, now, worker, pid, running_member(job_id, index)],
        )
        return Delivery(token, int(deliveries), int(finished), str(state), int(lost), int(stalled))

    def chunk_attempt_ended(self, job_id: str, index: int, token: str) -> None:
        """The delivery with `token` ended in the task's own code (not a lost delivery); the
        chunk leaves the running index unless a later delivery has it."""
        self._chunk_attempt_ended(
            keys=[chunk_key(job_id, index), RUNNING_KEY],
            args=[token, running_member(job_id, index)],
        )

    def chunk_failed(self, job_id: str, index: int, error: str) -> None:
        """The chunk gave up (after its retries, or on bad input); see fail()."""
        self._update_chunk(job_id, index, {"state": FAILED, "error": error[:500]})
        with self.r.pipeline() as pipe:
            pipe.zrem(RUNNING_KEY, running_member(job_id, index))
            pipe.zrem(PENDING_KEY, running_member(job_id, index))
            pipe.execute()

    def holds_chunk(self, job_id: str, index: int, token: str) -> bool:
        """Whether the delivery with `token` still answers for the chunk: no later delivery
        took it, and the stall sweep has not given it back. A process that stalled past the
        sweep and woke (a SIGSTOP, a host frozen for minutes) fails on its time limits; that
        must not fail a job whose chunk runs again elsewhere."""
        current, given_back = self.r.hmget(
            chunk_key(job_id, index), ["delivery_token", "given_back"]
        )
        return current == token and given_back != token

    def chunk_retrying(self, job_id: str, index: int, *, now: float | None = None) -> None:
        """The chunk's task is about to be sent again (a retry after a passing error): PENDING,
        and waiting in the pending index for that message, so the sweep resends it if the
        message is lost; CANCELLED instead when its job ended meanwhile (no retry comes)."""
        now = fleet_now(self.r) if now is None else now
        self._chunk_retrying(
            keys=[job_key(job_id), chunk_key(job_id, index), PENDING_KEY],
            args=[running_member(job_id, index), now],
        )

    def chunk_cancelled(self, job_id: str, index: int) -> None:
        """The chunk stopped because its job ended (cancel, or another chunk failed it):
        CANCELLED, unless the job has been reopened since (see CHUNK_CANCELLED)."""
        self._chunk_cancelled(keys=[job_key(job_id), chunk_key(job_id, index)])

    def chunk_done(self, job_id: str, index: int, frames: int) -> bool:
        """Mark a chunk done; True for exactly one caller: the one that completed the set.

        One script, so two chunks finishing at once cannot both see the set full, and a chunk
        that completes twice (a redelivery) is counted once. The completer's token is recorded
        with the answer, so redis-py re-sending the call after a timeout gets the same True."""
        last = self._chunk_done(
            keys=[
                chunk_key(job_id, index),
                done_key(job_id),
                job_key(job_id),
                RUNNING_KEY,
                LIVE_KEY,
            ],
            args=[
                index,
                frames,
                new_token(),
                running_member(job_id, index),
                job_id,
                fleet_now(self.r),
            ],
        )
        return bool(last)
