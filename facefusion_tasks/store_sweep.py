"""The liveness sweep's indexes: chunks and jobs with no progress, claimed by one sweeper."""

from __future__ import annotations

import redis

from facefusion_tasks.fleet_clock import fleet_now
from facefusion_tasks.metrics.keys import LIVE_KEY, PENDING_KEY, RUNNING_KEY
from facefusion_tasks.store_keys import chunk_key, job_key, running_member
from facefusion_tasks.store_scripts import (
    CLAIM_STALLED_CHUNK,
    CLAIM_STALLED_JOB,
    CLAIM_UNSENT_CHUNK,
)


class StallIndex:
    """The sweep half of JobStore (a base class of it): who is stale, and claiming them."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._claim_stalled_chunk = client.register_script(CLAIM_STALLED_CHUNK)
        self._claim_stalled_job = client.register_script(CLAIM_STALLED_JOB)
        self._claim_unsent_chunk = client.register_script(CLAIM_UNSENT_CHUNK)

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
        PENDING; None when another sweeper got it first, or it moved on, or its job is over
        (then, its job FAILED or CANCELLED, it ends CANCELLED: its silent worker never will)."""
        claimed = self._claim_stalled_chunk(
            keys=[chunk_key(job_id, index), RUNNING_KEY, job_key(job_id), PENDING_KEY],
            args=[
                running_member(job_id, index),
                cutoff,
                error[:500],
                fleet_now(self.r) if now is None else now,
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
            keys=[chunk_key(job_id, index), PENDING_KEY, job_key(job_id)],
            args=[running_member(job_id, index), cutoff, fleet_now(self.r) if now is None else now],
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
            keys=[LIVE_KEY, job_key(job_id)], args=[job_id, cutoff, fleet_now(self.r)]
        )
        if not claimed:
            return None
        state, recoveries = claimed
        return str(state), int(recoveries)
