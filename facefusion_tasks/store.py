"""Job and chunk state in Redis: the single source of truth producers and workers share."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from facefusion_tasks.jobids import new_job_id
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.reasons import Reason

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


def connect(url: str) -> redis.Redis:
    """A Redis client for the job store (same server as the broker). Commands retry with
    backoff for ~30 s, so a Redis restart pauses a job instead of failing it."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=4.0, base=0.2), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@dataclass
class JobStatus:
    """Everything `status` shows."""

    id: str
    state: str
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

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


class JobStore:
    """Reads and writes job records; every multi-key change is one MULTI/EXEC transaction."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    @staticmethod
    def _job(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    def _chunk(self, job_id: str, index: int) -> str:
        return f"{self._job(job_id)}:chunk:{index}"

    def create(self, fields: dict[str, Any]) -> str:
        """Record a new job (state QUEUED); returns its id."""
        job_id = new_job_id()
        now = time.time()
        record: dict[Any, Any] = {k: _encode(v) for k, v in fields.items()} | {
            "id": job_id,
            "state": QUEUED,
            "created_at": now,
            "updated_at": now,
        }
        with self.r.pipeline() as pipe:
            pipe.hset(self._job(job_id), mapping=record)
            pipe.zadd(f"{PREFIX}:jobs", {job_id: now})
            pipe.execute()
        return job_id

    def get(self, job_id: str) -> dict[str, str]:
        """The raw job hash ({} when unknown)."""
        return self.r.hgetall(self._job(job_id))  # type: ignore[return-value]

    def state(self, job_id: str) -> str:
        """Current state ('' when unknown)."""
        return self.r.hget(self._job(job_id), "state") or ""  # type: ignore[return-value]

    def _running(self, job_id: str) -> str:
        """The set of chunk indexes a worker is executing right now."""
        return f"{self._job(job_id)}:running"

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
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    current = pipe.hget(key, "state")
                    if (
                        current is None
                        or current in TERMINAL
                        or (only_from and current not in only_from)
                    ):
                        pipe.unwatch()
                        return False
                    now = time.time()
                    fields: dict[Any, Any] = {"state": state, "updated_at": now}
                    if reason is not None:
                        fields["reason"] = reason.value
                    if error:
                        fields["error"] = error[:500]
                    if state in TERMINAL:
                        fields["finished_at"] = now
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def claim_metering(self, job_id: str) -> bool:
        """True exactly once per job end: whoever sets the flag counts the outcome."""
        return bool(self.r.hsetnx(self._job(job_id), "metered", 1))

    def reopen(self, job_id: str, *, planned: bool, from_states: Sequence[str]) -> bool:
        """For `retry`: from one of `from_states` back to RUNNING, or to QUEUED when the job
        has no plan yet. Its end is counted anew. WATCHed, so a job that moved meanwhile (a
        late stitch succeeded, a cancel landed) is left alone: returns whether it reopened."""
        key = self._job(job_id)
        fields: dict[Any, Any] = {
            "state": RUNNING if planned else QUEUED,
            "reason": "",
            "error": "",
            "finished_at": 0,
        }
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "state") not in from_states:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping=fields | {"updated_at": time.time()})
                    pipe.hdel(key, "metered")
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def reset_chunk(self, job_id: str, index: int) -> None:
        """A chunk about to be re-run by `retry` (one transaction: never half reset)."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._chunk(job_id, index),
                mapping={"state": PENDING, "frames_done": 0, "error": "", "worker": ""},
            )
            pipe.srem(f"{self._job(job_id)}:done", index)
            pipe.execute()

    def stalled(self, job_id: str, *, seconds: float, now: float | None = None) -> bool:
        """Whether the job sits in an active state with no change for over `seconds`."""
        job = self.get(job_id)
        if job.get("state") not in ACTIVE:
            return False
        updated = float(job.get("updated_at") or job.get("created_at") or 0)
        return (time.time() if now is None else now) - updated > seconds

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
                    pipe.execute()
                    return True, idle
                except redis.WatchError:
                    continue

    def set_plan(
        self, job_id: str, chunks: Sequence[Chunk], frames_total: int, video_info: dict[str, Any]
    ) -> None:
        """Store the chunk plan (idempotent: a re-run of planning writes the same plan)."""
        with self.r.pipeline() as pipe:
            pipe.delete(f"{self._job(job_id)}:done")
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
        (WATCHed: a cancel either lands first and the chunk is skipped, or sees it running)."""
        key = self._job(job_id)
        chunk = self._chunk(job_id, index)
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "state") in TERMINAL:
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

    def chunk_progress(self, job_id: str, index: int, frames_done: int) -> None:
        """Frames of this chunk encoded so far."""
        self.r.hset(self._chunk(job_id, index), "frames_done", frames_done)

    def chunk_failed(self, job_id: str, index: int, error: str) -> None:
        """The chunk gave up (after its retries, or on bad input)."""
        self.r.hset(self._chunk(job_id, index), mapping={"state": FAILED, "error": error[:500]})

    def chunk_cancelled(self, job_id: str, index: int) -> None:
        """The chunk stopped because its job ended (cancel, or another chunk failed it)."""
        self.r.hset(self._chunk(job_id, index), "state", CANCELLED)

    def chunk_done(self, job_id: str, index: int, frames: int) -> bool:
        """Mark a chunk done; True for exactly one caller: the one that completed the set.

        SADD and SCARD run in one transaction, so two chunks finishing at once cannot both see
        the set full, and a chunk that completes twice (a redelivery) is counted once."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._chunk(job_id, index),
                mapping={"state": DONE, "frames_done": frames, "error": ""},
            )
            pipe.sadd(f"{self._job(job_id)}:done", index)
            pipe.scard(f"{self._job(job_id)}:done")
            pipe.hget(self._job(job_id), "chunks_total")
            _, added, done, total = pipe.execute()
        return bool(added) and int(total or 0) == int(done)

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
        )

    def recent(self, limit: int = 50) -> list[str]:
        """Most recent job ids first."""
        return list(self.r.zrevrange(f"{PREFIX}:jobs", 0, limit - 1))  # type: ignore[arg-type]

    def undone_chunks(self, job_id: str) -> list[int]:
        """Chunks that failed or never finished (what `retry` re-runs)."""
        return [i for i, c in enumerate(self.chunks(job_id)) if c.get("state") != DONE]


def _encode(value: Any) -> str | int | float:
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return ""
    return json.dumps(value)
