"""The stall sweep: work with no progress is given back to the queue, or its job fails."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from facefusion_tasks import objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import FaceFusionError, InputError
from facefusion_tasks.fleet_clock import fleet_now
from facefusion_tasks.jobids import JOB_ID
from facefusion_tasks.metrics.keys import InLine, acknowledge, held_messages, note_held, waits_in
from facefusion_tasks.queue_names import TASK_CHUNK, TASK_PLAN, TASK_STITCH
from facefusion_tasks.reasons import Reason
from facefusion_tasks.storage import work_dir
from facefusion_tasks.store import (
    CANCELLED,
    COMMITTING,
    DONE,
    PLANNING,
    QUEUED,
    RUNNING,
    STITCHING,
    SUCCEEDED,
    TERMINAL,
    JobStore,
)
from facefusion_tasks.store_keys import chunk_key
from facefusion_tasks.workspace import work_prefix

log = logging.getLogger(__name__)

#: Job states (and "" for a job with no record) whose segments nothing will read again.
_DONE_WITH = frozenset({"", SUCCEEDED, CANCELLED})

#: What the sweep asks to send again: ("chunk", [job, index], priority), ("plan", [job], ...).
Enqueue = Callable[[str, list[Any], int], None]

#: One sweep per period for the whole fleet: whoever sets this key first sweeps. (Each claim
#: below is atomic on its own, so two sweeps at once would still act once per item.)
SWEEP_LOCK = "facefusion:sweep:lock"


@dataclass
class SweepReport:
    """What one sweep did (for logs, metrics and tests)."""

    requeued_chunks: list[tuple[str, int]] = field(default_factory=list)
    requeued_jobs: list[tuple[str, str]] = field(default_factory=list)
    failed_jobs: list[tuple[str, Reason]] = field(default_factory=list)
    removed_work_dirs: list[str] = field(default_factory=list)
    forgotten_jobs: int = 0
    #: Messages held unacknowledged for work that has ended, removed.
    acknowledged: int = 0


def sweep(
    store: JobStore,
    settings: Settings,
    *,
    enqueue: Enqueue,
    light_line: Callable[[float], InLine],
    gpu_line: Callable[[float], InLine],
    now: float | None = None,
) -> SweepReport:
    """Recover every chunk with no frame progress for `stall_seconds`, every chunk whose
    message has not reached a worker as long, and every job stuck in QUEUED, PLANNING,
    STITCHING or COMMITTING as long. Safe to run on many hosts at once, and idempotent: each
    item is claimed by one atomic script before anything is sent or failed. `light_line` and
    `gpu_line` read the messages in those queues (keys.messages_in_line; held ones only if
    taken since the time given), each only when something has waited long enough to be
    looked for there."""
    # Redis's clock judges what is stale (hosts' clocks may disagree); work directories are
    # judged by their mtimes, which this host's clock (or its file server's) wrote.
    local = time.time() if now is None else now
    now = fleet_now(store.r) if now is None else now
    one = _Sweep(store, settings, enqueue, now, now - settings.stall_seconds)
    # When each held message was first seen held, on Redis's clock, from this period on.
    note_held(store.r)
    for job_id, index, _beat in store.stale_chunks(one.cutoff):
        one.recover_chunk(job_id, index)
    # A chunk's message may simply be waiting behind others, however long the line: only a
    # chunk whose message is nowhere in it has lost it (Redis lost it, someone purged the
    # queue). A line too long to read may hold them all: they wait.
    unsent = store.stale_pending(one.cutoff)
    gpu = gpu_line(one.cutoff) if unsent else frozenset()
    for job_id, index, _sent in unsent:
        if not waits_in(gpu, job_id, index):
            one.resend_chunk(job_id, index)
    stale_jobs = store.stale_jobs(one.cutoff)
    light = light_line(one.cutoff) if stale_jobs else frozenset()
    for job_id, _since in stale_jobs:
        # Likewise a QUEUED job's plan, or a RUNNING job's stitch, may be waiting in line. (A
        # plan or stitch that runs beats its clock, so a stale PLANNING or STITCHING job has
        # really stopped.)
        if store.state(job_id) in (QUEUED, RUNNING) and waits_in(light, job_id):
            continue
        one.recover_job(job_id)
    report = one.report
    report.acknowledged = acknowledge_ended(store, one.cutoff)
    report.removed_work_dirs = sweep_work_dirs(store, settings, now=local)
    report.forgotten_jobs = store.forget_expired(now=now)
    return report


def acknowledge_ended(store: JobStore, cutoff: float) -> int:
    """Acknowledge the messages held since before `cutoff` for work that has ended (its chunk
    done, its job over or forgotten, its plan made); how many. A worker killed while holding
    one leaves it in kombu's `unacked` hash until the visibility timeout (an hour by default):
    the backlog would count it, and autoscaling keep a worker for it, all that time, only for
    it to be delivered again and skipped."""
    ended = []
    for tag, task, args in held_messages(store.r, cutoff):
        state = store.state(args[0]) if args else ""
        if task == TASK_CHUNK and len(args) == 2 and args[1].isdigit():
            chunk = store.r.hget(chunk_key(args[0], int(args[1])), "state")
            done = state in TERMINAL or not state or chunk == DONE
        elif task == TASK_PLAN and len(args) == 1:
            done = state not in (QUEUED, PLANNING)
        elif task == TASK_STITCH and len(args) == 1:
            done = state in TERMINAL or not state
        else:
            continue  # not ours, or unreadable: kombu's timeout deals with it
        if done:
            ended.append(tag)
    acknowledge(store.r, ended)
    if ended:
        log.info("acknowledged %d messages held for work that has ended", len(ended))
    return len(ended)


def sweep_work_dirs(store: JobStore, settings: Settings, *, now: float) -> list[str]:
    """Remove segment folders nothing will use again: their job succeeded or was cancelled,
    or its records are gone (expired, or Redis lost them in a restart without AOF). A failed
    job's segments stay while its record does, for `retry`. Folders younger than stall_seconds
    are left alone: a job may be planning into one right now. Both kinds: directories on the
    shared storage, and job prefixes in every allowed bucket."""
    return _sweep_directories(store, settings, now=now) + _sweep_buckets(store, settings, now=now)


def _sweep_directories(store: JobStore, settings: Settings, *, now: float) -> list[str]:
    try:
        base = work_dir(settings)
    except InputError:  # no storage roots configured: no shared work directory to sweep
        return []
    if not base.is_dir():
        return []
    removed: list[str] = []
    for entry in base.iterdir():
        if not JOB_ID.fullmatch(entry.name) or not entry.is_dir():
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:  # removed meanwhile by whoever saw its job end
            continue
        if age < settings.stall_seconds or store.state(entry.name) not in _DONE_WITH:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed the work directory of job %s (its job is over or gone)", entry.name)
        removed.append(entry.name)
    return removed


def _sweep_buckets(store: JobStore, settings: Settings, *, now: float) -> list[str]:
    removed: list[str] = []
    for bucket in settings.buckets():
        try:
            folders = objects.work_folders(bucket)
        except FaceFusionError as exc:  # storage away: the next sweep tries again
            log.warning("cannot list the work folders in bucket %s: %s", bucket, exc)
            continue
        for name, newest in folders.items():
            if not JOB_ID.fullmatch(name) or now - newest < settings.stall_seconds:
                continue
            if store.state(name) not in _DONE_WITH:
                continue
            try:
                objects.delete_prefix(bucket, work_prefix(name))
            except FaceFusionError as exc:
                log.warning("cannot remove the segments of job %s: %s", name, exc)
                continue
            log.info("removed the segments of job %s from bucket %s", name, bucket)
            removed.append(name)
    return removed


@dataclass
class _Sweep:
    """One sweep's claims: what each stale item becomes (sent again, or its job failed)."""

    store: JobStore
    settings: Settings
    enqueue: Enqueue
    now: float
    #: Work with no progress since before this is stale.
    cutoff: float
    report: SweepReport = field(default_factory=SweepReport)
    #: The messages workers held when this sweep first looked (None: not yet): read once,
    #: not once per chunk it sends again.
    _held: list[tuple[str, str, tuple[str, ...]]] | None = field(default=None, init=False)

    def recover_chunk(self, job_id: str, index: int) -> None:
        """A running chunk with no progress: sent again, or its job fails."""
        settings = self.settings
        claimed = self.store.claim_stalled_chunk(
            job_id, index, cutoff=self.cutoff, now=self.now,
            error=f"no progress for {settings.stall_seconds} s",
        )  # fmt: skip
        if claimed is None:
            return
        started, beat = claimed["started_at"], claimed["heartbeat_at"]
        # Still making progress when the hard time limit ran out (Celery SIGKILLed the process
        # and acknowledged the message): too slow, and another attempt would be as slow. A
        # chunk whose progress stopped well before the limit hung instead: worth redoing.
        limit = settings.chunk_time_limit
        margin = max(2 * settings.heartbeat_seconds, 0.1 * limit)
        if self.now - started >= limit and beat - started >= limit - margin:
            self._fail(job_id, index, Reason.TIMEOUT, "chunk hit the time limit")
            return
        lost = int(claimed["deliveries"] - claimed["finished"])
        if lost >= settings.max_deliveries:
            self._fail(
                job_id,
                index,
                Reason.STALLED,
                f"chunk {index} made no progress in {lost} deliveries",
            )
            return
        log.warning(
            "chunk %s/%s made no progress since %.0f s; requeued", job_id, index, self.now - beat
        )
        self._send_chunk(job_id, index, letting_go=self._held_tags(job_id, index))

    def _held_tags(self, job_id: str, index: int) -> list[str]:
        """The delivery tags of the chunk's messages workers hold: a stalled attempt's (its
        process stopped), or one taken and never started (a wedged consumer). Read before
        this sweep sends any chunk again, so no new message is among them; by tag, not by
        kombu's stamp, which is the holder's clock. [] when Redis cannot say (nothing is let
        go; asked again for the next chunk)."""
        if self._held is None:
            try:
                self._held = held_messages(self.store.r, float("inf"))
            except (redis.RedisError, OSError) as exc:
                log.warning("chunk %s/%s: the messages held for it could not be read: %s",
                            job_id, index, exc)  # fmt: skip
                return []
        chunk = (job_id, str(index))
        return [tag for tag, task, args in self._held if task == TASK_CHUNK and args == chunk]

    def resend_chunk(self, job_id: str, index: int) -> None:
        """A chunk whose message never reached a worker: sent again, or its job fails."""
        resent = self.store.claim_unsent_chunk(job_id, index, cutoff=self.cutoff, now=self.now)
        if resent is None:
            return
        if resent > self.settings.max_deliveries:
            message = f"chunk {index} was sent {resent} times and no worker took it"
            self._fail(job_id, index, Reason.STALLED, message)
            return
        log.warning("chunk %s/%s never reached a worker; sent again", job_id, index)
        self._send_chunk(job_id, index, letting_go=self._held_tags(job_id, index))

    def recover_job(self, job_id: str) -> None:
        """A job stuck in a state only a plan or stitch moves: that task sent again, or fail."""
        claimed = self.store.claim_stalled_job(job_id, cutoff=self.cutoff)
        if claimed is None:
            return
        state, recoveries = claimed
        if recoveries > self.settings.max_deliveries:
            message = f"stuck in {state} after {recoveries - 1} recoveries"
            self._fail(job_id, None, Reason.STALLED, message)
            return
        # RUNNING here means every chunk is done and no stitch has started (its message was
        # lost); COMMITTING, that the stitcher died after verifying its output: a stitch sent
        # now finishes that commit from the job's commit mark, or fails the job as stalled.
        task = "stitch" if state in {STITCHING, RUNNING, COMMITTING} else "plan"
        log.warning(
            "job %s stuck in %s for %d s; %s sent again",
            job_id, state, self.settings.stall_seconds, task,
        )  # fmt: skip
        self.enqueue(task, [job_id], 9 if task == "stitch" else self._priority(job_id))
        self.report.requeued_jobs.append((job_id, task))

    def _send_chunk(self, job_id: str, index: int, *, letting_go: Sequence[str] = ()) -> None:
        """Send the chunk again, then acknowledge the messages `letting_go` (their holders'),
        as kombu's own ack would: beside the new one they stayed in kombu's `unacked` hash
        until their process ended or the visibility timeout ran out, and the backlog (and
        autoscaling) counted the chunk twice for as long as the holder hung (a metrics
        probe's finding). Woken, a holder's ack is a no-op; killed, the requeue kombu does for
        a lost worker finds nothing to send twice. After the send: the chunk is never left
        with no message."""
        self.enqueue("chunk", [job_id, index], self._priority(job_id))
        self.report.requeued_chunks.append((job_id, index))
        try:
            acknowledge(self.store.r, letting_go)
        except (redis.RedisError, OSError) as exc:  # the ended work's ack (sweep) catches up
            log.warning("chunk %s/%s: its old message could not be let go: %s", job_id, index, exc)

    def _fail(self, job_id: str, index: int | None, reason: Reason, message: str) -> None:
        if self.store.fail(job_id, reason, message, index=index):
            log.error("job %s failed: %s (%s)", job_id, message, reason.value)
            self.report.failed_jobs.append((job_id, reason))

    def _priority(self, job_id: str) -> int:
        return int(self.store.get(job_id).get("priority") or 5)


def run_periodically(
    store: JobStore,
    settings: Settings,
    *,
    enqueue: Enqueue,
    light_line: Callable[[float], InLine],
    gpu_line: Callable[[float], InLine],
    on_report: Callable[[SweepReport], None],
    stop: threading.Event | None = None,
) -> threading.Thread:
    """Sweep every `sweep_seconds` in a daemon thread (one sweep per period fleet-wide).
    Every Redis call has a socket timeout, so the thread cannot hang on a hung broker."""
    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.wait(settings.sweep_seconds):
            try:
                ttl_ms = max(100, int(settings.sweep_seconds * 900))
                if store.r.set(SWEEP_LOCK, os.getpid(), nx=True, px=ttl_ms):
                    report = sweep(
                        store, settings, enqueue=enqueue, light_line=light_line,
                        gpu_line=gpu_line,
                    )  # fmt: skip
                    on_report(report)
            except (redis.RedisError, OSError) as exc:  # try again next period
                log.warning("stall sweep failed: %s", exc)
            except Exception:  # never let a bug end the thread: the sweep is the safety net
                log.exception("stall sweep failed")

    thread = threading.Thread(target=loop, name="ff-stall-sweep", daemon=True)
    thread.start()
    return thread
