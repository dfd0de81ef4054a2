"""Job and chunk state in Redis: the single source of truth producers and workers share."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from facefusion_tasks.fleet_clock import fleet_now
from facefusion_tasks.jobids import new_job_id
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.metrics.keys import (
    LIVE_KEY,
    PENDING_KEY,
    RUNNING_KEY,
    as_text,
    waiting_messages,
)
from facefusion_tasks.queue_names import GPU_QUEUE, TASK_CHUNK
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store_chunks import ChunkRecords, Delivery
from facefusion_tasks.store_keys import (
    ACTIVE,
    CANCELLABLE,
    CANCELLED,
    COMMITTING,
    DONE,
    FAILED,
    PENDING,
    PLANNING,
    PREFIX,
    QUEUED,
    RUNNING,
    STITCHING,
    SUCCEEDED,
    TERMINAL,
    WATCHED,
    chunk_key,
    done_key,
    job_key,
    new_token,
    running_key,
    running_member,
)
from facefusion_tasks.store_outputs import read, release, take, watch_crossings, watch_free
from facefusion_tasks.store_records import JobStatus, job_inputs, job_sources
from facefusion_tasks.store_scripts import (
    CLAIM_METERING,
    WAITING_CHUNKS_ENDED,
    WITHDRAW_MESSAGES,
)
from facefusion_tasks.store_sweep import StallIndex

log = logging.getLogger(__name__)

#: Messages one withdrawal script takes out at most (each LREM scans its line from the tail).
_WITHDRAW_BATCH = 200

# The names callers take from here: states and keys live in store_keys, chunk writes in
# store_chunks, the sweep's indexes in store_sweep, the status view in store_records.
__all__ = [
    "ACTIVE", "CANCELLABLE", "CANCELLED", "COMMITTING", "DONE", "FAILED", "PENDING", "PLANNING",
    "PREFIX", "QUEUED", "RECORD_TTL", "RUNNING", "STITCHING", "SUCCEEDED", "TERMINAL", "WATCHED",
    "Delivery", "JobStatus", "JobStore", "connect", "job_inputs", "job_sources", "running_member",
]  # fmt: skip


def connect(url: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A Redis client for the job store (same server as the broker). Commands retry with
    backoff for ~30 s, so a Redis restart pauses a job instead of failing it; every store call
    whose answer matters is safe to re-send (see store_scripts)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=4.0, base=0.2), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


#: Seconds a finished job's records stay in Redis (a week: long enough to look at and retry).
RECORD_TTL = 7 * 24 * 3600


class JobStore(ChunkRecords, StallIndex):
    """Reads and writes job records; every multi-key change is one MULTI/EXEC transaction.
    A job's records expire `record_ttl` seconds after it ends, and last while it runs. What a
    chunk task writes is in ChunkRecords, what the liveness sweep reads in StallIndex."""

    def __init__(self, client: redis.Redis, *, record_ttl: int = RECORD_TTL) -> None:
        ChunkRecords.__init__(self, client)
        StallIndex.__init__(self, client)
        self.record_ttl = record_ttl
        self._claim_metering = client.register_script(CLAIM_METERING)
        self._waiting_chunks_ended = client.register_script(WAITING_CHUNKS_ENDED)
        self._withdraw_messages = client.register_script(WITHDRAW_MESSAGES)

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
                    now = fleet_now(self.r)
                    record: dict[Any, Any] = encoded | {
                        "id": job_id,
                        "state": QUEUED,
                        "created_at": now,
                        "updated_at": now,
                    }
                    pipe.multi()
                    pipe.hset(job_key(job_id), mapping=record)
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
        return self.r.hgetall(job_key(job_id))  # type: ignore[return-value]

    def state(self, job_id: str) -> str:
        """Current state ('' when unknown)."""
        return self.r.hget(job_key(job_id), "state") or ""  # type: ignore[return-value]

    def _records(self, job_id: str, chunks_total: int) -> list[str]:
        """Every key that belongs to one job (its hash, sets and chunk hashes)."""
        job = job_key(job_id)
        chunks = [chunk_key(job_id, i) for i in range(chunks_total)]
        return [job, done_key(job_id), f"{job}:running", *chunks]

    def _expire(self, pipe: Any, job_id: str, chunks_total: int, output: str) -> None:
        """Queue, on `pipe`, what a job's end does to its records: the retention TTL on each
        and on its output claim, and its chunks out of the pending index (no message is
        awaited any more)."""
        for record in self._records(job_id, chunks_total):
            pipe.expire(record, self.record_ttl)
        release(pipe, PREFIX, output, job_id, self.record_ttl)
        if chunks_total:
            pipe.zrem(PENDING_KEY, *(running_member(job_id, i) for i in range(chunks_total)))

    def set_state(
        self,
        job_id: str,
        state: str,
        *,
        reason: Reason | None = None,
        error: str = "",
        only_from: Sequence[str] = (),
        expect: Mapping[str, str] | None = None,
        also: Mapping[str, str] | None = None,
    ) -> bool:
        """Move a job to `state`; a terminal state is never left (a late chunk cannot undo a
        cancel). With `only_from`, change only from those states; with `expect`, only while
        those fields hold those values. `also` sets more fields in the same step (a lost job
        is never recreated by them). Returns whether it changed."""
        key = job_key(job_id)
        expected = dict(expect or {})
        # Recorded with the change: when a Redis stall makes redis-py give up on the EXEC (a
        # WatchError here) after Redis did run it, the next round sees its own token and answers
        # True, not "someone else moved it" (stitch would take that for a cancel).
        token, broken = new_token(), 0
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    current, applied, total, output, *found = pipe.hmget(
                        key, ["state", "state_token", "chunks_total", "output", *expected]
                    )
                    if current == state and applied == token:
                        pipe.unwatch()
                        return True
                    if (
                        current is None
                        or current in TERMINAL
                        or (only_from and current not in only_from)
                        or found != list(expected.values())
                    ):
                        pipe.unwatch()
                        return False
                    now = fleet_now(self.r)
                    fields: dict[Any, Any] = {
                        **(also or {}),
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

    def withdraw_chunks(self, job_id: str) -> int:
        """Take a FAILED or CANCELLED job's chunk messages still waiting out of the gpu queue
        (they would only be skipped, after holding the backlog, and the autoscaler, up until a
        worker came to them); how many went. Best effort: on a Redis error they stay, to be
        skipped as before."""
        token, removed = new_token(), 0
        try:
            if self.r.hget(job_key(job_id), "withdrawn"):
                return 0  # another caller withdrew them for this end: no need to read the lines
            found = waiting_messages(self.r, GPU_QUEUE, TASK_CHUNK, job_id)
            # In batches, so no one script holds Redis long.
            for start in range(0, len(found), _WITHDRAW_BATCH):
                lines, texts = zip(*found[start : start + _WITHDRAW_BATCH], strict=True)
                removed += int(
                    self._withdraw_messages(keys=[job_key(job_id), *lines], args=[token, *texts])
                )
            return removed
        except (redis.RedisError, OSError) as exc:
            log.warning("job %s: its waiting chunks could not be withdrawn: %s", job_id, exc)
            return 0

    def claim_metering(self, job_id: str) -> bool:
        """True exactly once per job end: whoever sets the flag counts the outcome (also when
        redis-py re-sends the call after a timeout: the flag holds the caller's token)."""
        return bool(self._claim_metering(keys=[job_key(job_id)], args=[new_token()]))

    def reopen(
        self,
        job_id: str,
        *,
        planned: bool,
        from_states: Sequence[str],
        expect: Mapping[str, str | None] | None = None,
    ) -> bool:
        """For `retry`: from one of `from_states` back to RUNNING, or to QUEUED when the job
        has no plan yet. Its end is counted anew. WATCHed, so a job that moved meanwhile (a
        late stitch succeeded, a cancel landed), or whose `expect` fields no longer hold
        those values (None: absent), is left alone: returns whether it reopened.
        The job takes its output back: OutputBusy while another job has since claimed it."""
        expected = dict(expect or {})
        key = job_key(job_id)
        # As in set_state: when a lost EXEC reply (a WatchError from redis-py) hides that Redis
        # ran the reopen, the next round finds its own token and answers True.
        token = new_token()
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
                    current, total, output, applied, *found = pipe.hmget(
                        key, ["state", "chunks_total", "output", "state_token", *expected]
                    )
                    if current == fields["state"] and applied == token:
                        pipe.unwatch()
                        return True
                    if current not in from_states or found != list(expected.values()):
                        pipe.unwatch()
                        return False
                    if output:
                        watch_free(pipe, PREFIX, str(output), job_id, ended=TERMINAL)
                    pipe.multi()
                    if output:
                        take(pipe, PREFIX, str(output), job_id)
                    for record in self._records(job_id, int(total or 0)):
                        pipe.persist(record)  # running again: kept until it ends anew
                    now = fleet_now(self.r)
                    pipe.hset(key, mapping=fields | {"updated_at": now})
                    # The last stitch's token too: one of the old run, stopped, stands down;
                    # and its upload's id, fenced by `retry` already (commits.fence_stale).
                    pipe.hdel(
                        key, "metered", "withdrawn", "stitch_token", "stitch", "upload",
                        "recoveries",
                    )  # fmt: skip
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
        # Deliveries count anew: a retry after worker_lost must not fail on the old count (nor
        # leave the lost ones already reported hiding the next).
        fields: dict[Any, Any] = {"state": PENDING, "frames_done": 0, "error": "", "worker": ""}
        counts = {"deliveries": 0, "finished": 0, "lost_report": "0 0"}
        key = chunk_key(job_id, index)
        now = fleet_now(self.r)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # Attempts of the failed run still stopping belong to it: ending late, or
                    # never, they must not count in the new one (as finished, or as lost).
                    # Watched: a delivery landing between the read and the reset restarts it.
                    pipe.watch(key)
                    earlier = [f for f in map(as_text, pipe.hkeys(key)) if f.startswith("open:")]
                    pipe.multi()
                    pipe.hset(key, mapping=fields | counts)
                    if earlier:
                        pipe.hdel(key, *earlier)
                    pipe.srem(f"{job_key(job_id)}:done", index)
                    pipe.zrem(RUNNING_KEY, running_member(job_id, index))
                    pipe.zadd(PENDING_KEY, {running_member(job_id, index): now})
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def stalled(self, job_id: str, *, seconds: float, now: float | None = None) -> bool:
        """Whether the job sits in an active state with no change for over `seconds` (a plan or
        stitch that runs beats its clock in the stall index: that counts as a change)."""
        job = self.get(job_id)
        if job.get("state") not in ACTIVE:
            return False
        updated = float(job.get("updated_at") or job.get("created_at") or 0)
        beat = float(self.r.zscore(LIVE_KEY, job_id) or 0)
        return (fleet_now(self.r) if now is None else now) - max(updated, beat) > seconds

    def busy_chunks(self, job_id: str, *, seconds: float, now: float | None = None) -> set[int]:
        """Chunks a worker is running right now: RUNNING with a heartbeat (or a start) within
        `seconds`. `retry` leaves them alone instead of starting a second copy."""
        now = fleet_now(self.r) if now is None else now
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
        key = job_key(job_id)
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key, running_key(job_id))
                    if pipe.hget(key, "state") not in CANCELLABLE:
                        pipe.unwatch()
                        return False, False
                    total = int(pipe.hget(key, "chunks_total") or 0)
                    output = pipe.hget(key, "output") or ""
                    chunk_keys = [chunk_key(job_id, i) for i in range(total)]
                    if chunk_keys:
                        pipe.watch(*chunk_keys)
                    states = [pipe.hget(k, "state") for k in chunk_keys]
                    idle = pipe.scard(running_key(job_id)) == 0
                    now = fleet_now(self.r)
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
                    for record, state in zip(chunk_keys, states, strict=True):
                        if state != DONE:
                            pipe.hset(record, "state", CANCELLED)
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
        work_dir: str = "",
    ) -> bool:
        """Store the chunk plan (idempotent: a re-run of planning writes the same plan), with
        the inputs' fingerprints the plan read and the work directory its segments go to.
        Each chunk waits in the pending index until a worker takes it, so the sweep can send
        again one whose message never arrives. Only while the job is PLANNING (WATCHed), and
        says whether it wrote: a planner that stalled past the sweep and woke after another
        had planned the job reset chunks already done to PENDING, and nothing stitched it."""
        key = job_key(job_id)
        now = fleet_now(self.r)
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "state") != PLANNING:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    self._write_plan(pipe, job_id, chunks, now)
                    pipe.hset(
                        key,
                        mapping={
                            "chunks_total": len(chunks),
                            "frames_total": frames_total,
                            "video_info": json.dumps(video_info),
                            "fingerprints": fingerprints,
                            "work_dir": work_dir,
                        },
                    )
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    @staticmethod
    def _write_plan(pipe: Any, job_id: str, chunks: Sequence[Chunk], now: float) -> None:
        """Queue, on `pipe`, each chunk's fresh record and its place in the pending index."""
        pipe.delete(f"{job_key(job_id)}:done")
        if chunks:
            pipe.zadd(PENDING_KEY, {running_member(job_id, c.index): now for c in chunks})
        for chunk in chunks:
            pipe.hset(
                chunk_key(job_id, chunk.index),
                mapping={
                    "state": PENDING,
                    "frames": chunk.frames,
                    "frames_done": 0,
                    "attempts": 0,
                    "plan": json.dumps(chunk.to_json()),
                    "worker": "",
                    "error": "",
                },
            )

    def fail(self, job_id: str, reason: Reason, error: str, *, index: int | None = None) -> bool:
        """The job ends FAILED with its reason, and the chunk that gave up (if one did) with it;
        True when this call ended the job. The job first: a process killed between the two
        writes leaves a FAILED job with its reason, never a FAILED chunk under a RUNNING job.
        Its chunks still waiting for a worker end CANCELLED: nothing will run them now."""
        failed = self.set_state(job_id, FAILED, reason=reason, error=error)
        if index is not None:
            self.chunk_failed(job_id, index, error)
        if failed:
            self.end_waiting_chunks(job_id)
        return failed

    def end_waiting_chunks(self, job_id: str) -> None:
        """A FAILED or CANCELLED job's chunks that no worker started end CANCELLED (nothing
        will run them now); nothing changes once `retry` has reopened it."""
        total = int(self.r.hget(job_key(job_id), "chunks_total") or 0)
        chunks = [chunk_key(job_id, i) for i in range(total)]
        self._waiting_chunks_ended(keys=[job_key(job_id), *chunks])

    def chunks(self, job_id: str) -> list[dict[str, str]]:
        """Every chunk's record, in order (each whole; no MULTI around them: Redis 7 past
        maxmemory refuses a MULTI even of reads, and `status` of a job failed on a full
        Redis while every read it makes still works)."""
        total = int(self.r.hget(job_key(job_id), "chunks_total") or 0)
        with self.r.pipeline(transaction=False) as pipe:
            for index in range(total):
                pipe.hgetall(chunk_key(job_id, index))
            return list(pipe.execute())

    def status(self, job_id: str) -> JobStatus | None:
        """A consistent-enough snapshot for humans and scripts."""
        job = self.get(job_id)
        if "state" not in job:
            # None, or a fragment no job writes alone (a late write after Redis lost the job).
            return None
        return JobStatus.of(job_id, job, self.chunks(job_id))

    def stitch_sent(self, job_id: str, *, now: float | None = None) -> None:
        """`retry` sends a job's stitch: the job enters the live index, as the last chunk
        done puts it there, so the sweep sends the stitch again if this message is lost."""
        self.r.zadd(LIVE_KEY, {job_id: fleet_now(self.r) if now is None else now})

    def job_alive(self, job_id: str, *, now: float | None = None) -> None:
        """A plan or stitch is still working on the job: restart its clock in the stall index
        (only if it is there), so the sweep never sends running work again."""
        self.r.zadd(LIVE_KEY, {job_id: fleet_now(self.r) if now is None else now}, xx=True)

    def expire_job(self, job_id: str) -> None:
        """Give every record of a job that has ended the retention TTL (records written after
        the job ended, e.g. a plan that lost the race with a cancel, would otherwise stay)."""
        total, output = self.r.hmget(job_key(job_id), ["chunks_total", "output"])
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
        now = fleet_now(self.r) if now is None else now
        old: list[str] = self.r.zrangebyscore(  # type: ignore[assignment]
            f"{PREFIX}:jobs", "-inf", now - self.record_ttl, start=0, num=limit
        )
        gone = [job_id for job_id in old if not self.r.exists(job_key(job_id))]
        if gone:
            self.r.zrem(f"{PREFIX}:jobs", *gone)
        return len(gone)

    def recent(self, limit: int = 50) -> list[str]:
        """Most recent job ids first."""
        return list(self.r.zrevrange(f"{PREFIX}:jobs", 0, limit - 1))  # type: ignore[arg-type]

    def waiting_chunks(self, job_id: str, chunks_total: int) -> dict[int, float]:
        """Chunks sent and not yet taken by a worker (in the pending index), with when they
        were sent: their messages may still be in line."""
        members = [running_member(job_id, i) for i in range(chunks_total)]
        if not members:
            return {}
        scores = self.r.zmscore(PENDING_KEY, members)
        return {i: float(score) for i, score in enumerate(scores) if score is not None}

    def all_chunks_done(self, job_id: str) -> bool:
        """Whether the job has a plan and every chunk of it is DONE (ready to stitch), by the
        chunks' own records, as `retry` judges (undone_chunks): a done set lost on its own (a
        volatile-* eviction) must not make every stitch of a retried job stand aside."""
        chunks = self.chunks(job_id)
        return bool(chunks) and all(c.get("state") == DONE for c in chunks)

    def undone_chunks(self, job_id: str) -> list[int]:
        """Chunks that failed or never finished (what `retry` re-runs)."""
        return [i for i, c in enumerate(self.chunks(job_id)) if c.get("state") != DONE]


def _encode(value: Any) -> str | int | float:
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return ""
    return json.dumps(value)
