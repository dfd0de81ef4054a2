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

from facefusion_tasks.jobs import Chunk

PREFIX = "facefusion"

# Job states. A job moves QUEUED -> PLANNING -> RUNNING -> STITCHING -> SUCCEEDED, or ends in
# FAILED / CANCELLED from any of them.
QUEUED, PLANNING, RUNNING, STITCHING = "QUEUED", "PLANNING", "RUNNING", "STITCHING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
# Chunk states.
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
        job_id = uuid.uuid4().hex[:16]
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

    def set_state(
        self,
        job_id: str,
        state: str,
        *,
        reason: str = "",
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
                    if reason:
                        fields["reason"] = reason
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

    def reopen(self, job_id: str, *, planned: bool = True) -> None:
        """Out of FAILED for `retry`: back to RUNNING, or to QUEUED when the job failed before
        it had a plan. Its end is counted anew."""
        fields: dict[Any, Any] = {
            "state": RUNNING if planned else QUEUED,
            "reason": "",
            "error": "",
            "finished_at": 0,
        }
        with self.r.pipeline() as pipe:
            pipe.hset(self._job(job_id), mapping=fields)
            pipe.hdel(self._job(job_id), "metered")
            pipe.execute()

    def reset_chunk(self, job_id: str, index: int) -> None:
        """A chunk about to be re-run by `retry`."""
        key = self._chunk(job_id, index)
        self.r.hset(key, mapping={"state": PENDING, "frames_done": 0, "error": "", "worker": ""})
        self.r.srem(f"{self._job(job_id)}:done", index)

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

    def chunk_started(self, job_id: str, index: int, worker: str) -> None:
        """A worker took the chunk (again, after a redelivery): progress restarts at 0."""
        key = self._chunk(job_id, index)
        with self.r.pipeline() as pipe:
            pipe.hset(
                key, mapping={"state": RUNNING, "worker": worker, "frames_done": 0, "error": ""}
            )
            pipe.hincrby(key, "attempts", 1)
            pipe.execute()

    def chunk_progress(self, job_id: str, index: int, frames_done: int) -> None:
        """Frames of this chunk encoded so far."""
        self.r.hset(self._chunk(job_id, index), "frames_done", frames_done)

    def chunk_failed(self, job_id: str, index: int, error: str) -> None:
        """The chunk gave up (after its retries, or on bad input)."""
        self.r.hset(self._chunk(job_id, index), mapping={"state": FAILED, "error": error[:500]})

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
