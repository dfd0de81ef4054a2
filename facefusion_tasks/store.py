"""Job and chunk state in Redis: the single source of truth producers and workers share."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from facefusion_tasks.jobids import new_job_id
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.metrics.keys import LIVE_KEY, PENDING_KEY, RUNNING_KEY
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store_outputs import read, release, take, watch_crossings, watch_free
from facefusion_tasks.store_scripts import (
    CHUNK_ATTEMPT_ENDED,
    CHUNK_DELIVERED,
    CHUNK_DONE,
    CHUNK_UPDATE,
    CLAIM_METERING,
    CLAIM_STALLED_CHUNK,
    CLAIM_STALLED_JOB,
    CLAIM_UNSENT_CHUNK,
)

PREFIX = "facefusion"

# Job states. A job moves QUEUED -> PLANNING -> RUNNING -> STITCHING -> COMMITTING -> SUCCEEDED,
# or ends FAILED from any of them, or CANCELLED from any before COMMITTING.
QUEUED, PLANNING, RUNNING, STITCHING = "QUEUED", "PLANNING", "RUNNING", "STITCHING"
#: The stitched file is verified and about to be renamed over the output: too late to cancel.
COMMITTING = "COMMITTING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: States a cancel may end; from COMMITTING on the output belongs to the user.
CANCELLABLE = (QUEUED, PLANNING, RUNNING, STITCHING)
#: States that only move on while a task works on them (what a stalled job sits in).
ACTIVE = (QUEUED, PLANNING, RUNNING, STITCHING, COMMITTING)
# Chunk states (a chunk also ends FAILED or CANCELLED, as its job does).
PENDING, DONE = "PENDING", "DONE"
#: Job states with no chunk heartbeat of their own: a job in one of them is watched through the
#: `live` index (time it entered the state), so the sweep finds one stuck there.
WATCHED = frozenset({QUEUED, PLANNING, STITCHING, COMMITTING})


def _token() -> str:
    return uuid.uuid4().hex


def running_member(job_id: str, index: int) -> str:
    """A chunk's member in the running and pending sets."""
    return f"{job_id}:{index}"


def connect(url: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A Redis client for the job store (same server as the broker). Commands retry with
    backoff for ~30 s, so a Redis restart pauses a job instead of failing it; every store call
    whose answer matters is safe to re-send (see the scripts above)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=4.0, base=0.2), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
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

    @property
    def lost(self) -> int:
        """Earlier deliveries that never ended: their process was killed or hung."""
        return self.deliveries - self.finished - 1


@dataclass
class JobStatus:
    """Everything `status` shows."""

    id: str
    state: str
    #: The first source image (all of them are in `sources`).
    source: str
    target: str
    output: str
    frames_total: int
    frames_done: int
    chunks_total: int
    chunks_done: int
    reason: str = ""
    error: str = ""
    created_at: float = 0.0
    finished_at: float = 0.0
    chunks: list[dict[str, Any]] = field(default_factory=list)
    #: Every source image, in the order given.
    sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


#: Seconds a finished job's records stay in Redis (a week: long enough to look at and retry).
RECORD_TTL = 7 * 24 * 3600


class JobStore:
    """Reads and writes job records; every multi-key change is one MULTI/EXEC transaction.
    A job's records expire `record_ttl` seconds after it ends, and last while it runs."""

    def __init__(self, client: redis.Redis, *, record_ttl: int = RECORD_TTL) -> None:
        self.r = client
        self.record_ttl = record_ttl
        self._chunk_done = client.register_script(CHUNK_DONE)
        self._chunk_update = client.register_script(CHUNK_UPDATE)
        self._claim_metering = client.register_script(CLAIM_METERING)
        self._chunk_delivered = client.register_script(CHUNK_DELIVERED)
        self._chunk_attempt_ended = client.register_script(CHUNK_ATTEMPT_ENDED)
        self._claim_stalled_chunk = client.register_script(CLAIM_STALLED_CHUNK)
        self._claim_stalled_job = client.register_script(CLAIM_STALLED_JOB)
        self._claim_unsent_chunk = client.register_script(CLAIM_UNSENT_CHUNK)

    @staticmethod
    def _job(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    def _chunk(self, job_id: str, index: int) -> str:
        return f"{self._job(job_id)}:chunk:{index}"

    def create(self, fields: dict[str, Any]) -> str:
        """Record a new job (state QUEUED); returns its id. The job claims its `output` and
        joins the readers of its inputs in the same transaction: OutputBusy (and nothing
        recorded) while another unfinished job writes to that output or reads it, InputError
        while one writes to an input."""
        job_id = new_job_id()
        output = str(fields.get("output") or "")
        encoded = {k: _encode(v) for k, v in fields.items()}
        inputs = sorted({where for where, _ in job_inputs(encoded)})
        while True:
            with self.r.pipeline() as pipe:
                try:
                    if output:
                        watch_free(pipe, PREFIX, output, job_id, ended=TERMINAL)
                    watch_crossings(pipe, PREFIX, output, inputs, job_id, ended=TERMINAL)
                    now = time.time()
                    record: dict[Any, Any] = encoded | {
                        "id": job_id,
                        "state": QUEUED,
                        "created_at": now,
                        "updated_at": now,
                    }
                    pipe.multi()
                    pipe.hset(self._job(job_id), mapping=record)
                    pipe.zadd(f"{PREFIX}:jobs", {job_id: now})
                    pipe.zadd(LIVE_KEY, {job_id: now})
                    if output:
                        take(pipe, PREFIX, output, job_id)
                    read(pipe, PREFIX, inputs, job_id, self.record_ttl)
                    pipe.execute()
                    return job_id
                except redis.WatchError:
                    continue

    def get(self, job_id: str) -> dict[str, str]:
        """The raw job hash ({} when unknown)."""
        return self.r.hgetall(self._job(job_id))  # type: ignore[return-value]

    def state(self, job_id: str) -> str:
        """Current state ('' when unknown)."""
        return self.r.hget(self._job(job_id), "state") or ""  # type: ignore[return-value]

    def _records(self, job_id: str, chunks_total: int) -> list[str]:
        """Every key that belongs to one job (its hash, sets and chunk hashes)."""
        job = self._job(job_id)
        chunks = [self._chunk(job_id, i) for i in range(chunks_total)]
        return [job, f"{job}:done", f"{job}:running", *chunks]

    def _expire(self, pipe: Any, job_id: str, chunks_total: int, output: str) -> None:
        """Queue, on `pipe`, what a job's end does to its records: the retention TTL on each
        and on its output claim, and its chunks out of the pending index (no message is
        awaited any more)."""
        for record in self._records(job_id, chunks_total):
            pipe.expire(record, self.record_ttl)
        release(pipe, PREFIX, output, job_id, self.record_ttl)
        if chunks_total:
            pipe.zrem(PENDING_KEY, *(running_member(job_id, i) for i in range(chunks_total)))

    def _running(self, job_id: str) -> str:
        """The set of chunk indexes a worker is executing right now."""
        return f"{self._job(job_id)}:running"

    def set_commit(self, job_id: str, mark: str) -> None:
        """Record what the stitch is about to put in place (runner's commit mark), so a stitch
        that dies while committing can be told apart from one that finished. Idempotent."""
        self.r.hset(self._job(job_id), "commit", mark)

    def set_state(
        self,
        job_id: str,
        state: str,
        *,
        reason: Reason | None = None,
        error: str = "",
        only_from: Sequence[str] = (),
    ) -> bool:
        """Move a job to `state`; a terminal state is never left (a late chunk cannot undo a
        cancel). With `only_from`, change only from those states. Returns whether it changed."""
        key = self._job(job_id)
        # Recorded with the change: when a Redis stall makes redis-py give up on the EXEC (a
        # WatchError here) after Redis did run it, the next round sees its own token and answers
        # True, not "someone else moved it" (stitch would take that for a cancel).
        token, broken = _token(), 0
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    current, applied, total, output = pipe.hmget(
                        key, ["state", "state_token", "chunks_total", "output"]
                    )
                    if current == state and applied == token:
                        pipe.unwatch()
                        return True
                    if (
                        current is None
                        or current in TERMINAL
                        or (only_from and current not in only_from)
                    ):
                        pipe.unwatch()
                        return False
                    now = time.time()
                    fields: dict[Any, Any] = {
                        "state": state,
                        "updated_at": now,
                        "state_token": token,
                    }
                    if reason is not None:
                        fields["reason"] = reason.value
                    if error:
                        fields["error"] = error[:500]
                    if state in TERMINAL:
                        fields["finished_at"] = now
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    if state in TERMINAL:  # retention: finished records go after a while
                        self._expire(pipe, job_id, int(total or 0), str(output or ""))
                    if state in WATCHED:  # the stall sweep's index (liveness.py)
                        pipe.zadd(LIVE_KEY, {job_id: now})
                    else:
                        pipe.zrem(LIVE_KEY, job_id)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
                except (redis.ConnectionError, redis.TimeoutError):
                    # redis-py's own retries gave up mid-round (its UNWATCH after a lost EXEC
                    # is not retried): look again a few times; the token says if it went in.
                    broken += 1
                    if broken > 3:
                        raise
                    time.sleep(0.5 * broken)

    def claim_metering(self, job_id: str) -> bool:
        """True exactly once per job end: whoever sets the flag counts the outcome (also when
        redis-py re-sends the call after a timeout: the flag holds the caller's token)."""
        return bool(self._claim_metering(keys=[self._job(job_id)], args=[_token()]))

    def reopen(self, job_id: str, *, planned: bool, from_states: Sequence[str]) -> bool:
        """For `retry`: from one of `from_states` back to RUNNING, or to QUEUED when the job
        has no plan yet. Its end is counted anew. WATCHed, so a job that moved meanwhile (a
        late stitch succeeded, a cancel landed) is left alone: returns whether it reopened.
        The job takes its output back: OutputBusy while another job has since claimed it."""
        key = self._job(job_id)
        # As in set_state: when a lost EXEC reply (a WatchError from redis-py) hides that Redis
        # ran the reopen, the next round finds its own token and answers True.
        token = _token()
        fields: dict[Any, Any] = {
            "state": RUNNING if planned else QUEUED,
            "reason": "",
            "error": "",
            "finished_at": 0,
            "state_token": token,
        }
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    current, total, output, applied = pipe.hmget(
                        key, ["state", "chunks_total", "output", "state_token"]
                    )
                    if current == fields["state"] and applied == token:
                        pipe.unwatch()
                        return True
                    if current not in from_states:
                        pipe.unwatch()
                        return False
                    if output:
                        watch_free(pipe, PREFIX, str(output), job_id, ended=TERMINAL)
                    pipe.multi()
                    if output:
                        take(pipe, PREFIX, str(output), job_id)
                    for record in self._records(job_id, int(total or 0)):
                        pipe.persist(record)  # running again: kept until it ends anew
                    now = time.time()
                    pipe.hset(key, mapping=fields | {"updated_at": now})
                    pipe.hdel(key, "metered", "stitch_token", "recoveries")
                    if planned:
                        pipe.zrem(LIVE_KEY, job_id)
                    else:
                        pipe.zadd(LIVE_KEY, {job_id: now})
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def reset_chunk(self, job_id: str, index: int) -> None:
        """A chunk about to be re-run by `retry` (one transaction: never half reset)."""
        # Deliveries count anew: a retry after worker_lost must not fail on the old count.
        fields: dict[Any, Any] = {"state": PENDING, "frames_done": 0, "error": "", "worker": ""}
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self._chunk(job_id, index), mapping=fields | {"deliveries": 0, "finished": 0})
            pipe.srem(f"{self._job(job_id)}:done", index)
            pipe.zrem(RUNNING_KEY, running_member(job_id, index))
            pipe.zadd(PENDING_KEY, {running_member(job_id, index): time.time()})
            pipe.execute()

    def stalled(self, job_id: str, *, seconds: float, now: float | None = None) -> bool:
        """Whether the job sits in an active state with no change for over `seconds` (a plan or
        stitch that runs beats its clock in the stall index: that counts as a change)."""
        job = self.get(job_id)
        if job.get("state") not in ACTIVE:
            return False
        updated = float(job.get("updated_at") or job.get("created_at") or 0)
        beat = float(self.r.zscore(LIVE_KEY, job_id) or 0)
        return (time.time() if now is None else now) - max(updated, beat) > seconds

    def busy_chunks(self, job_id: str, *, seconds: float, now: float | None = None) -> set[int]:
        """Chunks a worker is running right now: RUNNING with a heartbeat (or a start) within
        `seconds`. `retry` leaves them alone instead of starting a second copy."""
        now = time.time() if now is None else now
        busy: set[int] = set()
        for index, chunk in enumerate(self.chunks(job_id)):
            beat = float(chunk.get("heartbeat_at") or chunk.get("started_at") or 0)
            if chunk.get("state") == RUNNING and now - beat <= seconds:
                busy.add(index)
        return busy

    def cancel(self, job_id: str) -> tuple[bool, bool]:
        """Cancel in one transaction: the job and every chunk not yet DONE end CANCELLED.
        Returns (cancelled, idle): False when the job had ended or is committing its output;
        idle when no chunk is executing, so the caller removes the segments now (otherwise
        the last chunk to stop does: whoever sees the terminal state cleans up)."""
        key = self._job(job_id)
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key, self._running(job_id))
                    if pipe.hget(key, "state") not in CANCELLABLE:
                        pipe.unwatch()
                        return False, False
                    total = int(pipe.hget(key, "chunks_total") or 0)
                    output = pipe.hget(key, "output") or ""
                    chunk_keys = [self._chunk(job_id, i) for i in range(total)]
                    if chunk_keys:
                        pipe.watch(*chunk_keys)
                    states = [pipe.hget(k, "state") for k in chunk_keys]
                    idle = pipe.scard(self._running(job_id)) == 0
                    now = time.time()
                    pipe.multi()
                    pipe.hset(
                        key,
                        mapping={
                            "state": CANCELLED,
                            "reason": Reason.CANCELLED.value,
                            "updated_at": now,
                            "finished_at": now,
                        },
                    )
                    for chunk_key, state in zip(chunk_keys, states, strict=True):
                        if state != DONE:
                            pipe.hset(chunk_key, "state", CANCELLED)
                    pipe.zrem(LIVE_KEY, job_id)
                    self._expire(pipe, job_id, total, str(output))
                    pipe.execute()
                    return True, idle
                except redis.WatchError:
                    continue

    def set_plan(
        self,
        job_id: str,
        chunks: Sequence[Chunk],
        frames_total: int,
        video_info: dict[str, Any],
        *,
        fingerprints: str = "",
    ) -> None:
        """Store the chunk plan (idempotent: a re-run of planning writes the same plan), with
        the inputs' fingerprints the plan read. Each chunk waits in the pending index until a
        worker takes it, so the sweep can send again one whose message never arrives."""
        now = time.time()
        with self.r.pipeline() as pipe:
            pipe.delete(f"{self._job(job_id)}:done")
            if chunks:
                pipe.zadd(PENDING_KEY, {running_member(job_id, c.index): now for c in chunks})
            for chunk in chunks:
                data = chunk.to_json()
                pipe.hset(
                    self._chunk(job_id, chunk.index),
                    mapping={
                        "state": PENDING,
                        "frames": chunk.frames,
                        "frames_done": 0,
                        "attempts": 0,
                        "plan": json.dumps(data),
                        "worker": "",
                        "error": "",
                    },
                )
            pipe.hset(
                self._job(job_id),
                mapping={
                    "chunks_total": len(chunks),
                    "frames_total": frames_total,
                    "video_info": json.dumps(video_info),
                    "fingerprints": fingerprints,
                },
            )
            pipe.execute()

    def chunk_plan(self, job_id: str, index: int) -> Chunk:
        """The planned span of one chunk."""
        raw = self.r.hget(self._chunk(job_id, index), "plan")
        if raw is None:
            raise KeyError(f"job {job_id} has no chunk {index}")
        return Chunk.from_json(json.loads(raw))

    def chunk_started(self, job_id: str, index: int, worker: str) -> bool:
        """A worker takes the chunk (again, after a redelivery): progress restarts at 0 and the
        chunk joins the job's running set. False, and nothing changes, when the job has ended
        (WATCHed: a cancel either lands first and the chunk is skipped, or sees it running) or
        the chunk is DONE (a duplicate delivery that another one finished meanwhile)."""
        key = self._job(job_id)
        chunk = self._chunk(job_id, index)
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
                    pipe.sadd(self._running(job_id), index)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def chunk_left(self, job_id: str, index: int) -> bool:
        """This worker stopped executing the chunk (done, failed or stopped). True for the one
        caller that leaves a CANCELLED job with no chunk executing: it removes the segments."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.srem(self._running(job_id), index)
            pipe.scard(self._running(job_id))
            pipe.hget(self._job(job_id), "state")
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
                keys=[self._chunk(job_id, index), RUNNING_KEY],
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
        now = time.time() if now is None else now
        self._update_chunk(
            job_id, index, {"frames_done": frames_done, "heartbeat_at": now}, beat=now
        )

    def chunk_delivered(
        self, job_id: str, index: int, *, worker: str, pid: int, now: float | None = None
    ) -> Delivery:
        """A chunk task started (first delivery, retry or redelivery): count it in Redis
        before anything can kill the process, and start its heartbeat clock."""
        token = _token()
        now = time.time() if now is None else now
        deliveries, finished, state = self._chunk_delivered(
            keys=[self._chunk(job_id, index), RUNNING_KEY, PENDING_KEY],
            args=[token, now, worker, pid, running_member(job_id, index)],
        )
        return Delivery(token, int(deliveries), int(finished), str(state))

    def chunk_attempt_ended(self, job_id: str, index: int, token: str) -> None:
        """The delivery with `token` ended in the task's own code (not a lost delivery)."""
        self._chunk_attempt_ended(keys=[self._chunk(job_id, index)], args=[token])
        self.r.zrem(RUNNING_KEY, running_member(job_id, index))

    def fail(self, job_id: str, reason: Reason, error: str, *, index: int | None = None) -> bool:
        """The job ends FAILED with its reason, and the chunk that gave up (if one did) with it;
        True when this call ended the job. The job first: a process killed between the two
        writes leaves a FAILED job with its reason, never a FAILED chunk under a RUNNING job."""
        failed = self.set_state(job_id, FAILED, reason=reason, error=error)
        if index is not None:
            self.chunk_failed(job_id, index, error)
        return failed

    def chunk_failed(self, job_id: str, index: int, error: str) -> None:
        """The chunk gave up (after its retries, or on bad input); see fail()."""
        self._update_chunk(job_id, index, {"state": FAILED, "error": error[:500]})
        with self.r.pipeline() as pipe:
            pipe.zrem(RUNNING_KEY, running_member(job_id, index))
            pipe.zrem(PENDING_KEY, running_member(job_id, index))
            pipe.execute()

    def chunk_retrying(self, job_id: str, index: int, *, now: float | None = None) -> None:
        """The chunk's task is about to be sent again (a retry after a passing error): PENDING,
        and waiting in the pending index for that message, so the sweep resends it if the
        message is lost (a retry waits out its countdown in a worker's memory)."""
        now = time.time() if now is None else now
        if self.state(job_id) in TERMINAL:  # cancelled or failed meanwhile: no retry comes
            return
        with self.r.pipeline() as pipe:
            pipe.hset(self._chunk(job_id, index), "state", PENDING)
            pipe.zadd(PENDING_KEY, {running_member(job_id, index): now})
            pipe.execute()

    def chunk_cancelled(self, job_id: str, index: int) -> None:
        """The chunk stopped because its job ended (cancel, or another chunk failed it)."""
        self._update_chunk(job_id, index, {"state": CANCELLED})

    def chunk_done(self, job_id: str, index: int, frames: int) -> bool:
        """Mark a chunk done; True for exactly one caller: the one that completed the set.

        One script, so two chunks finishing at once cannot both see the set full, and a chunk
        that completes twice (a redelivery) is counted once. The completer's token is recorded
        with the answer, so redis-py re-sending the call after a timeout gets the same True."""
        last = self._chunk_done(
            keys=[
                self._chunk(job_id, index),
                f"{self._job(job_id)}:done",
                self._job(job_id),
                RUNNING_KEY,
                LIVE_KEY,
            ],
            args=[index, frames, _token(), running_member(job_id, index), job_id, time.time()],
        )
        return bool(last)

    def stale_chunks(self, cutoff: float, *, limit: int = 1000) -> list[tuple[str, int, float]]:
        """Running chunks whose last progress is older than `cutoff`: (job, index, heartbeat)."""
        return self._stale_members(RUNNING_KEY, cutoff, limit)

    def _stale_members(self, key: str, cutoff: float, limit: int) -> list[tuple[str, int, float]]:
        """(job, index, score) of the chunk members of `key` scored before `cutoff`; a member
        that names no chunk is dropped."""
        stale: list[tuple[str, float]] = self.r.zrangebyscore(  # type: ignore[assignment]
            key, "-inf", cutoff, start=0, num=limit, withscores=True
        )
        found: list[tuple[str, int, float]] = []
        for member, score in stale:
            job_id, _, index = str(member).rpartition(":")
            if job_id and index.isdigit():
                found.append((job_id, int(index), float(score)))
            else:
                self.r.zrem(key, member)
        return found

    def claim_stalled_chunk(
        self, job_id: str, index: int, *, cutoff: float, error: str, now: float | None = None
    ) -> dict[str, float] | None:
        """Take a chunk with no progress since `cutoff` out of the running set and back to
        PENDING; None when another sweeper got it first, or it moved on, or its job is over."""
        claimed = self._claim_stalled_chunk(
            keys=[self._chunk(job_id, index), RUNNING_KEY, self._job(job_id), PENDING_KEY],
            args=[
                running_member(job_id, index),
                cutoff,
                error[:500],
                time.time() if now is None else now,
            ],
        )
        if not claimed:
            return None
        deliveries, finished, started_at, heartbeat_at = claimed
        return {
            "deliveries": float(deliveries),
            "finished": float(finished),
            "started_at": float(started_at),
            "heartbeat_at": float(heartbeat_at),
        }

    def stale_pending(self, cutoff: float, *, limit: int = 1000) -> list[tuple[str, int, float]]:
        """Chunks waiting for their message since before `cutoff`: (job, index, sent at)."""
        return self._stale_members(PENDING_KEY, cutoff, limit)

    def claim_unsent_chunk(
        self, job_id: str, index: int, *, cutoff: float, now: float | None = None
    ) -> int | None:
        """Claim a chunk whose message was sent before `cutoff` and never reached a worker (its
        clock restarts: one sweeper wins); returns how often the sweep has sent it, this time
        included, or None when there is nothing to do."""
        resent = self._claim_unsent_chunk(
            keys=[self._chunk(job_id, index), PENDING_KEY, self._job(job_id)],
            args=[running_member(job_id, index), cutoff, time.time() if now is None else now],
        )
        return None if not resent else int(resent)

    def stale_jobs(self, cutoff: float, *, limit: int = 1000) -> list[tuple[str, float]]:
        """Jobs in QUEUED, PLANNING or STITCHING since before `cutoff`: (job, since)."""
        stale: list[tuple[str, float]] = self.r.zrangebyscore(  # type: ignore[assignment]
            LIVE_KEY, "-inf", cutoff, start=0, num=limit, withscores=True
        )
        return [(str(job_id), float(score)) for job_id, score in stale]

    def claim_stalled_job(self, job_id: str, *, cutoff: float) -> tuple[str, int] | None:
        """Claim a job stuck in QUEUED, PLANNING, RUNNING (all chunks done, no stitch),
        STITCHING or COMMITTING since before `cutoff` (its clock restarts); (state, recoveries so far) or None when another sweeper got it first."""
        claimed = self._claim_stalled_job(
            keys=[LIVE_KEY, self._job(job_id)], args=[job_id, cutoff, time.time()]
        )
        if not claimed:
            return None
        state, recoveries = claimed
        return str(state), int(recoveries)

    def chunks(self, job_id: str) -> list[dict[str, str]]:
        """Every chunk's record, in order."""
        total = int(self.r.hget(self._job(job_id), "chunks_total") or 0)
        with self.r.pipeline() as pipe:
            for index in range(total):
                pipe.hgetall(self._chunk(job_id, index))
            return list(pipe.execute())

    def status(self, job_id: str) -> JobStatus | None:
        """A consistent-enough snapshot for humans and scripts."""
        job = self.get(job_id)
        if not job:
            return None
        chunks = self.chunks(job_id)
        shown: list[dict[str, Any]] = [
            {
                "index": i,
                "state": c.get("state", ""),
                "worker": c.get("worker", ""),
                "frames": int(c.get("frames", 0)),
                "frames_done": int(c.get("frames_done", 0)),
                "attempts": int(c.get("attempts", 0)),
                "deliveries": int(c.get("deliveries", 0) or 0),
                "pid": int(c.get("pid", 0) or 0),
                "heartbeat_at": float(c.get("heartbeat_at", 0) or 0),
                "error": c.get("error", ""),
            }
            for i, c in enumerate(chunks)
        ]
        return JobStatus(
            id=job_id,
            state=job.get("state", ""),
            source=job.get("source", ""),
            target=job.get("target", ""),
            output=job.get("output", ""),
            frames_total=int(job.get("frames_total", 0) or 0),
            frames_done=sum(c["frames_done"] for c in shown),
            chunks_total=len(shown),
            chunks_done=sum(1 for c in shown if c["state"] == DONE),
            reason=job.get("reason", ""),
            error=job.get("error", ""),
            created_at=float(job.get("created_at", 0) or 0),
            finished_at=float(job.get("finished_at", 0) or 0),
            chunks=shown,
            sources=job_sources(job),
        )

    def job_alive(self, job_id: str, *, now: float | None = None) -> None:
        """A plan or stitch is still working on the job: restart its clock in the stall index
        (only if it is there), so the sweep never sends running work again."""
        self.r.zadd(LIVE_KEY, {job_id: time.time() if now is None else now}, xx=True)

    def expire_job(self, job_id: str) -> None:
        """Give every record of a job that has ended the retention TTL (records written after
        the job ended, e.g. a plan that lost the race with a cancel, would otherwise stay)."""
        total, output = self.r.hmget(self._job(job_id), ["chunks_total", "output"])
        with self.r.pipeline() as pipe:
            self._expire(pipe, job_id, int(total or 0), str(output or ""))
            pipe.execute()

    def unsent_chunks(self, job_id: str) -> list[int]:
        """Chunks no worker has taken yet (PENDING, never delivered): what a plan that ran
        again after its job moved on must still send."""
        return [
            i
            for i, c in enumerate(self.chunks(job_id))
            if c.get("state") == PENDING and int(c.get("deliveries") or 0) == 0
        ]

    def forget_expired(self, *, now: float | None = None, limit: int = 1000) -> int:
        """Drop the jobs index's entries for jobs whose records have expired (their `list`
        rows); returns how many went."""
        now = time.time() if now is None else now
        old: list[str] = self.r.zrangebyscore(  # type: ignore[assignment]
            f"{PREFIX}:jobs", "-inf", now - self.record_ttl, start=0, num=limit
        )
        gone = [job_id for job_id in old if not self.r.exists(self._job(job_id))]
        if gone:
            self.r.zrem(f"{PREFIX}:jobs", *gone)
        return len(gone)

    def recent(self, limit: int = 50) -> list[str]:
        """Most recent job ids first."""
        return list(self.r.zrevrange(f"{PREFIX}:jobs", 0, limit - 1))  # type: ignore[arg-type]

    def waiting_chunks(self, job_id: str, chunks_total: int) -> set[int]:
        """Chunks sent and not yet taken by a worker (in the pending index): their messages
        may still be in line."""
        members = [running_member(job_id, i) for i in range(chunks_total)]
        if not members:
            return set()
        scores = self.r.zmscore(PENDING_KEY, members)
        return {i for i, score in enumerate(scores) if score is not None}

    def undone_chunks(self, job_id: str) -> list[int]:
        """Chunks that failed or never finished (what `retry` re-runs)."""
        return [i for i, c in enumerate(self.chunks(job_id)) if c.get("state") != DONE]


def job_inputs(job: dict[str, Any]) -> list[tuple[str, str]]:
    """Everything a job reads, as (location, what it is): its target, source images and
    reference image (a record as stored, or as create() encodes it)."""
    inputs = [(str(job["target"]), "target")] if job.get("target") else []
    inputs += [(source, "source image") for source in job_sources(job)]
    if job.get("reference"):
        inputs.append((str(job["reference"]), "reference image"))
    return inputs


def job_sources(job: dict[str, Any]) -> list[str]:
    """A job's source images: its `sources` list (JSON), or the single `source` of a job
    recorded before several sources were possible (such a record, or its queued message,
    still runs)."""
    raw = job.get("sources")
    if raw:
        return [str(path) for path in json.loads(raw)]
    return [job["source"]] if job.get("source") else []


def _encode(value: Any) -> str | int | float:
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return ""
    return json.dumps(value)
