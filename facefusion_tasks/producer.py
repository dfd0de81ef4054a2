"""The producer API: submit, status, wait, cancel, retry, list. Imports no model code."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from facefusion_tasks import broker, objects
from facefusion_tasks.app import (
    GPU_QUEUE,
    LIGHT_QUEUE,
    TASK_CHUNK,
    TASK_CLOSE,
    TASK_PLAN,
    TASK_STITCH,
    make_app,
)
from facefusion_tasks.commits import fence_stale
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import FaceFusionError, InputError, WaitTimeout
from facefusion_tasks.fleet_clock import fleet_now
from facefusion_tasks.images import check_image_target, is_image_target
from facefusion_tasks.inputs import Source, Sources, check_output, read_image, source_paths
from facefusion_tasks.jobids import check_job_id
from facefusion_tasks.jobs import check_chunking, job_options
from facefusion_tasks.metrics.keys import messages_in_line, waits_in
from facefusion_tasks.reasons import Reason
from facefusion_tasks.storage import locate
from facefusion_tasks.store import (
    COMMITTING,
    FAILED,
    PLANNING,
    QUEUED,
    RUNNING,
    STITCHING,
    SUCCEEDED,
    TERMINAL,
    JobStatus,
    JobStore,
)
from facefusion_tasks.tasks import enqueue
from facefusion_tasks.video.argv import muxer_for
from facefusion_tasks.video.codecs import check_encoder
from facefusion_tasks.video.probe import probe
from facefusion_tasks.workspace import for_job, local_copy, remove_segments, segment_present

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retried:
    """What `retry` did."""

    #: chunks: `chunks` sent again; plan: planning again; stitch: every chunk was done, the
    #: stitch sent again; running: every unfinished chunk is running or waiting in line,
    #: nothing sent; waiting: its plan is still waiting in line, nothing sent; none: the job
    #: had already succeeded.
    action: str
    chunks: list[int] = field(default_factory=list)


#: How long `wait` keeps trying a broker it lost after seeing the job, before exit 69.
WAIT_RECONNECT_SECONDS = 60.0


def _seconds(value: object) -> bool:
    """Whether an API caller's value is a number of seconds (not a bool, not NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


class Producer:
    """Talks to Redis (job records) and Celery (task messages); never loads a model."""

    def __init__(self, settings: Settings) -> None:
        settings.validate()  # Settings built in code never passed from_env's checks
        if not settings.broker_url:
            raise InputError(
                "no broker configured (set FACEFUSION_BROKER_URL)", reason=Reason.CONFIG
            )
        self.settings = settings
        # Fail fast with one line (exit 69) when Redis is away or refuses us; workers keep
        # store.connect's patient retries instead.
        self.store = JobStore(
            broker.connect(settings.broker_url), record_ttl=settings.record_ttl_seconds
        )
        self.app = make_app(settings)

    def submit(
        self,
        source: Sources,
        target: Source,
        output: Source,
        *,
        reference: Source | None = None,
        priority: int = 5,
        chunk_seconds: float | None = None,
    ) -> str:
        """Validate everything that can be checked here (so bad input enqueues nothing), record
        the job and enqueue its planning. Returns the job id. `source`: one image, or several
        photos of the same person (the workers average their identities). Each location is a
        path inside the storage roots or an s3://bucket/key object in an allowed bucket."""
        priority, chunk_seconds = job_options(priority, chunk_seconds)
        limits = self.settings
        sources = [locate(s, self.settings, what="source image") for s in source_paths(source)]
        target_at = locate(target, self.settings, what="target")
        output_at = locate(output, self.settings, what="output", output=True)
        # Every name is checked before any file is read.
        reference_at = (
            None if reference is None else locate(reference, self.settings, what="reference image")
        )
        for where in sources:
            read_image(local_copy(self.settings, where), max_pixels=limits.max_image_pixels)
        selector = self.settings.face_selector
        if reference_at is not None:
            read_image(local_copy(self.settings, reference_at), max_pixels=limits.max_image_pixels)
            selector = "reference"
        elif selector == "reference":
            raise InputError("--face-selector reference needs --reference-face IMAGE")
        if is_image_target(target_at):
            # One chunk of one frame: nothing to probe or cut (an object is fetched whole).
            header = check_image_target(
                local_copy(self.settings, target_at), max_pixels=limits.max_image_pixels
            )
            check_output(
                output_at, target_at, inputs=(*sources, reference_at), image_format=header.format
            )
            frames_total = 1
        else:
            info = probe(target_at, ffmpeg=limits.ffmpeg, max_frame_pixels=limits.max_frame_pixels)
            check_chunking(
                info.duration,
                chunk_seconds or limits.chunk_seconds,
                min_chunk_seconds=limits.min_chunk_seconds,
                max_chunks=limits.max_chunks,
            )
            check_output(output_at, target_at, inputs=(*sources, reference_at))
            # The job carries its encoder choice to the workers; one its container (or frame
            # size) cannot take is refused here, before anything is recorded or enqueued.
            check_encoder(
                limits.video_encoder,
                muxer_for(str(output_at)),
                width=info.width,
                height=info.height,
                frame_rate=info.frame_rate,
            )
            frames_total = info.frame_count
        job_id = self.store.create(
            {
                # `source` stays the first image: records and readers from before several
                # sources keep their meaning; `sources` (see store.job_sources) has them all.
                "source": str(sources[0]),
                "sources": [str(where) for where in sources],
                "target": str(target_at),
                "output": str(output_at),
                "reference": str(reference_at) if reference_at else "",
                "face_selector": selector,
                "reference_distance": self.settings.reference_distance,
                "priority": priority,
                "chunk_seconds": chunk_seconds or self.settings.chunk_seconds,
                "frames_total": frames_total,
                "video_encoder": limits.video_encoder,
            }
        )
        try:
            self._send(TASK_PLAN, [job_id], priority=priority)
        except BaseException:
            # Not submitted, as the error will say: the record must not go on holding the
            # output (a resubmit would be refused) nor be planned later by the stall sweep.
            self._abandon(job_id)
            raise
        return job_id

    def _abandon(self, job_id: str) -> None:
        """Fail a job whose plan could not be sent; best effort (Redis may be what failed)."""
        try:
            self.store.fail(job_id, Reason.BROKER_UNAVAILABLE, "its plan could not be sent")
        except Exception as exc:  # the send's error is the one to report
            log.warning("job %s could not be marked failed: %s", job_id, exc)

    def _send(self, name: str, args: list[Any], *, priority: int) -> None:
        """Enqueue through Celery; a broker that goes away after the first PING is the same one
        line and exit 69 as one that was never there, not an internal error."""
        try:
            enqueue(self.app, name, args, priority=priority, sent_at=fleet_now(self.store.r))
        except Exception as exc:
            if broker.lost(exc):
                raise broker.explain(exc, self.settings.broker_url) from exc
            raise

    def status(self, job_id: str) -> JobStatus:
        """The job's state, progress and per-chunk workers; InputError for an unknown id."""
        # The id's format is checked before Redis is asked: `<id>:chunk:0` or `<id>:done` must
        # never be read as a job.
        status = self.store.status(check_job_id(job_id))
        if status is None:
            raise InputError(f"no such job: {job_id}", reason=Reason.UNKNOWN_JOB)
        return status

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        on_progress: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Block until the job ends (or `timeout` passes; then TimeoutError). A broker that
        goes away once the job was seen (a restart, a failover) is waited out for
        WAIT_RECONNECT_SECONDS: the job goes on meanwhile, and a script must not read a blip
        as its failure (exit 69)."""
        if timeout is not None and not (_seconds(timeout) and timeout >= 0):
            raise InputError(f"wait: timeout must be a number of seconds ≥ 0, not {timeout!r}")
        if not (_seconds(poll) and 0 < poll <= 3600):
            raise InputError(f"wait: poll must be a number of seconds in (0, 3600], not {poll!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        lost_since: float | None = None
        seen = False
        while True:
            try:
                status = self.status(job_id)
            except InputError as exc:
                if seen and exc.reason is Reason.UNKNOWN_JOB:
                    # Not the user's mistake (exit 2): the job was there a moment ago.
                    raise FaceFusionError(
                        f"job {job_id} vanished from Redis while it ran (Redis restarted "
                        "without persistence, or was flushed); submit it again"
                    ) from None
                raise
            except redis.RedisError as exc:
                # Gone, or refusing for now (full, unable to persist, a failover): the job goes
                # on meanwhile. A refused password or a bad command is no blip.
                if not broker.lost(exc):
                    raise
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise WaitTimeout(
                        f"timed out waiting for job {job_id} after {timeout:g} s (the broker "
                        "is unreachable)"
                    ) from exc
                lost_since = lost_since or now
                if now - lost_since > WAIT_RECONNECT_SECONDS:
                    raise
                time.sleep(max(poll, 1.0))
                continue
            lost_since, seen = None, True
            if on_progress is not None:
                on_progress(status)
            if status.state in TERMINAL:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(
                    f"timed out waiting for job {job_id}: still {status.state} after {timeout:g} s"
                )
            time.sleep(poll)

    def cancel(self, job_id: str) -> bool:
        """Cancel; False when the job had already ended or is committing its output (a cancel
        never deletes a finished file). The job and its unfinished chunks become CANCELLED in
        one transaction; chunk messages still in line are withdrawn (any a worker took is
        skipped when it comes up), running ones stop within a watch interval, and the segments
        are removed by whoever sees the job idle and cancelled: here when nothing is
        executing, else the last chunk to stop. No waiting."""
        self.status(job_id)
        cancelled, idle = self.store.cancel(job_id)
        if cancelled and idle:
            job = self.store.get(job_id)
            remove_segments(for_job(self.settings, job), job_id, output=job.get("output", ""))
        if cancelled and (not idle or self._close(job_id)):
            # Its chunks still in line leave it now, not when a worker comes to skip each
            # (they held the backlog up, and with it the autoscaler).
            self.store.withdraw_chunks(job_id)
        return cancelled

    def _close(self, job_id: str) -> bool:
        """Ask a light worker to count the end of a cancelled job none of whose chunks runs
        (a running chunk counts it as it stops; a withdrawn one never comes to). False when
        that could not be sent: its chunks then stay in line, and the first skipped counts."""
        try:
            self._send(TASK_CLOSE, [job_id], priority=9)
        except Exception as exc:  # the cancel itself is done; say it, do not fail it
            log.warning("job %s: cancelled, but its end could not be sent for counting: %s",
                        job_id, exc)  # fmt: skip
            return False
        return True

    def retry(self, job_id: str) -> Retried:
        """Re-run only the chunks that failed or never finished; says what it sent.
        Retries a FAILED job, a RUNNING one (its chunks that are not running right now: a
        chunk with a fresh heartbeat is left to its worker), and a QUEUED/PLANNING/STITCHING/
        COMMITTING one that has stalled (no change, and no heartbeat, for `stall_seconds`)."""
        status = self.status(job_id)
        if status.state == SUCCEEDED:
            return Retried("none")
        stalled = self.store.stalled(job_id, seconds=self.settings.stall_seconds)
        retryable = {FAILED, RUNNING} | (
            {QUEUED, PLANNING, STITCHING, COMMITTING} if stalled else set()
        )
        if status.state not in retryable:
            raise InputError(
                f"job {job_id} is {status.state}; only failed, stuck or stalled jobs retry "
                f"(stalled: no progress for {self.settings.stall_seconds:g} s)"
            )
        job = self.store.get(job_id)
        priority = int(job.get("priority") or 5)
        if status.chunks_total == 0:
            if status.state in (QUEUED, PLANNING) and self._plan_in_line(job_id):
                # Stalled only behind a long light queue: sent again, it would be planned
                # twice, and the second plan sends every chunk not yet taken once more.
                return Retried("waiting")
            if not self.store.reopen(job_id, planned=False, from_states=(status.state,)):
                raise InputError(f"job {job_id} changed state meanwhile; look again")
            self._send(TASK_PLAN, [job_id], priority=priority)
            return Retried("plan")
        # Everything that may fail (object storage, a lost connection) comes before the
        # reopen: after it, a job whose retry stopped half way sat RUNNING out of the sweep's
        # sight with nothing sent, and `wait` followed it for ever.
        if job.get("commit"):
            # A stitcher reached COMMITTING (the job is stuck there, or the sweep failed it
            # there) and may have stopped with a verified file beside the output, or its upload
            # open: woken, it would put it over whatever is there by then (this job's next
            # output, a later job's).
            fence_stale(
                objects.location(status.output),
                json.loads(job["commit"]),
                upload=job.get("upload", ""),
            )
        undone = self.store.undone_chunks(job_id)
        # A done chunk whose segment is gone (deleted, a wiped disk) runs again: the stitch
        # would only fail on it once more.
        output = status.output
        settings = for_job(self.settings, job)  # where the fleet wrote them
        lost = [
            index
            for index in range(status.chunks_total)
            if index not in undone and not segment_present(settings, job_id, index, output=output)
        ]
        undone = sorted(undone + lost)
        # In a RUNNING job a chunk with a fresh heartbeat is running: leave it to its worker;
        # so is one sent and not yet taken, within stall_seconds (its message may be on its
        # way to a worker, or still being sent) or with its message in line, or maybe in it
        # (a line too long to read): sent again, it would run twice. One waiting longer whose
        # message is nowhere in line has lost it, and is sent, as the sweep would. A FAILED
        # job's chunks have all stopped (or are stopping): each undone one runs again.
        busy: set[int] = set()
        if status.state == RUNNING:
            busy = self.store.busy_chunks(job_id, seconds=self.settings.stall_seconds)
            cutoff = fleet_now(self.store.r) - self.settings.stall_seconds
            waiting = self.store.waiting_chunks(job_id, status.chunks_total)
            busy |= {i for i, sent in waiting.items() if sent > cutoff}
            stale = set(waiting) - busy
            line = (
                messages_in_line(self.store.r, GPU_QUEUE, held_since=cutoff)
                if stale
                else frozenset()
            )
            busy |= {i for i in stale if waits_in(line, job_id, i)}
        # Only if no stitcher recorded another upload (or mark) since it was fenced: one that
        # woke in between would complete that one unfenced.
        fenced = {"commit": job.get("commit"), "upload": job.get("upload")}
        if not self.store.reopen(job_id, planned=True, from_states=(status.state,), expect=fenced):
            raise InputError(f"job {job_id} changed state meanwhile; look again")
        rerun = [index for index in undone if index not in busy]
        # Every chunk reset before any is sent: the first sent may fail the job at once (its
        # input changed again), and the chunks reset after that stayed PENDING under the
        # FAILED job for good (a fault probe's finding; a failure ends only waiting chunks).
        for index in rerun:
            self.store.reset_chunk(job_id, index)
        for index in rerun:
            self._send(TASK_CHUNK, [job_id, index], priority=priority)
        # A busy chunk that finished between the reads and the reopen completed the set, and
        # the reopen took its stitch's watch away: stitched from here, as for none undone.
        if not undone or (not rerun and self.store.all_chunks_done(job_id)):
            self.store.stitch_sent(job_id)
            self._send(TASK_STITCH, [job_id], priority=9)
            return Retried("stitch")
        return Retried("chunks", rerun) if rerun else Retried("running")

    def _plan_in_line(self, job_id: str) -> bool:
        """Whether the job's plan message waits in the light queue, or a live worker took it
        within stall_seconds (or may have: a line too long to read), as the sweep judges."""
        cutoff = fleet_now(self.store.r) - self.settings.stall_seconds
        return waits_in(messages_in_line(self.store.r, LIGHT_QUEUE, held_since=cutoff), job_id)

    def list(self, limit: int = 20) -> list[JobStatus]:
        """Most recent jobs first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
            # 0 listed every job, and a negative limit all but the oldest.
            raise InputError(f"list: limit must be a whole number from 1 to 100000, not {limit!r}")
        found = (self.store.status(job_id) for job_id in self.store.recent(limit))
        return [s for s in found if s is not None]
