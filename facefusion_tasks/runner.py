"""What the distributed tasks do, without Celery: plan a job and run one chunk of it."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefusion_tasks import objects, policy
from facefusion_tasks.commits import commit
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import (
    Cancelled,
    FaceFusionError,
    InputError,
    MediaError,
    OutputError,
    Unconfined,
    WorkerConfigError,
)
from facefusion_tasks.faces.loader import LoadedModels
from facefusion_tasks.fingerprints import check_unchanged, fingerprints
from facefusion_tasks.images import check_image_target, is_image_target
from facefusion_tasks.jobs import Chunk, image_plan, plan_chunks
from facefusion_tasks.model_cache import MODELS
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.pipeline import SwapJob, SwapResult, run_swap
from facefusion_tasks.progress import WorkMeter, thread_ids
from facefusion_tasks.reasons import Reason
from facefusion_tasks.still import swap_image
from facefusion_tasks.storage import locate
from facefusion_tasks.store import (
    COMMITTING,
    PLANNING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobStore,
    job_inputs,
    job_sources,
)
from facefusion_tasks.video.argv import muxer_for
from facefusion_tasks.video.codecs import fleet_encoder
from facefusion_tasks.video.probe import VideoInfo, frame_timestamps, probe
from facefusion_tasks.workspace import (
    fleet_work_dir,
    for_job,
    local_copy,
    prepare,
    remove_segments,
    scratch,
    segment,
    work_bucket,
)

log = logging.getLogger(__name__)

#: How often a running chunk publishes progress and looks for a cancel.
WATCH_SECONDS = 0.5


@contextmanager
def beating(store: JobStore, settings: Settings, job_id: str) -> Iterator[threading.Event]:
    """While a plan or stitch works (reading every timestamp of a long video, or stitching it
    can take longer than stall_seconds): beat the job's clock in the stall index each
    heartbeat period in which it got somewhere, as running chunks beat on frames. Progress is
    the CPU this process's working threads and its ffmpeg use: a beat on a clock alone kept a
    stopped ffprobe's plan PLANNING for 600 s and a stopped stitch STITCHING for 1800 s, with
    `retry` refused, where the sweep now sends it again after stall_seconds. Yields an event
    to set where a wait with no CPU anywhere is normal (an object's upload being completed by
    the server, which can take minutes): from then on it beats every period, as a process
    that stopped altogether still does not."""
    stop, steady = threading.Event(), threading.Event()
    # Threads already running beside the task (a worker's own heartbeat, its stall sweep) do
    # their work whatever the task does: left out, or their ticks would beat for a hung one.
    # Threads the work starts (an upload's) count.
    beside = thread_ids() - {threading.get_native_id()}

    def beat() -> None:
        meter = WorkMeter(excluding=beside | {threading.get_native_id()})
        last: int | None = None
        while not stop.wait(settings.heartbeat_seconds):
            now = meter.read()
            if now is not None and now == last and not steady.is_set():
                continue  # nothing moved: no beat (None: /proc cannot tell, so beat)
            last = now
            try:
                store.job_alive(job_id)
            except Exception as exc:  # a Redis blip: the next beat, or the sweep, will tell
                log.warning("job heartbeat failed: %s", exc)

    thread = threading.Thread(target=beat, name="ff-job-alive", daemon=True)
    thread.start()
    try:
        yield steady
    finally:
        stop.set()
        thread.join(2)


def job_file(value: str, settings: Settings, *, what: str, output: bool = False) -> Location:
    """A job file, located as the producer located it when it accepted the job. Outside this
    worker's roots or buckets it is the worker's configuration that differs, not the user's
    input: WorkerConfigError, retried so that a worker configured right may take it. Unless
    the file the producer recorded, inside this worker's roots, is itself a symlink out of
    them now: one put in its place after the job was accepted, the user's doing. (A directory
    on its way that leads out is more likely this host's own layout, a mount elsewhere.)"""
    try:
        return locate(value, settings, what=what, output=output)
    except Unconfined as exc:
        recorded = None if value.startswith(objects.SCHEME) else Path(value)
        if (
            recorded is not None
            and recorded.is_symlink()
            and any(recorded.is_relative_to(root) for root in settings.roots())
        ):
            raise InputError(
                f"{value}: the {what} is now a symlink leading outside the storage roots (put "
                "in its place after the job was accepted)",
                reason=Reason.PATH,
            ) from None
        raise WorkerConfigError(
            f"this worker cannot use the job's {what}: {exc}; every worker needs the "
            "producer's FACEFUSION_STORAGE_ROOTS (and FACEFUSION_S3_BUCKETS)"
        ) from None


def plan_job(store: JobStore, settings: Settings, job_id: str) -> list[int]:
    """Read every frame timestamp (demux only, fast), cut chunks on them, store the plan.
    Returns the chunk indexes to enqueue; [] when the job is already past planning."""
    with beating(store, settings, job_id):
        return _plan_job(store, settings, job_id)


def _plan_job(store: JobStore, settings: Settings, job_id: str) -> list[int]:
    if store.state(job_id) == RUNNING and int(store.get(job_id).get("chunks_total") or 0):
        # Planned, but this plan task runs again (retried after a Redis error, or redelivered
        # after its process died) before every chunk message went out: send those no worker
        # has taken, or the job would wait for them for ever.
        return store.unsent_chunks(job_id)
    if not store.set_state(job_id, PLANNING, only_from=(QUEUED, PLANNING)):
        return []
    job = store.get(job_id)
    target = job_file(job["target"], settings, what="target")
    image = is_image_target(target)
    # Taken before anything is read: a file that changes from here on fails the job where
    # a chunk or the stitch finds it, instead of mixing two videos.
    prints = fingerprints(_inputs(settings, job))
    info: dict[str, Any] = {}
    if image:
        # A still image is one chunk of one frame: no probe, no timestamps, no segments.
        check_image_target(local_copy(settings, target), max_pixels=settings.max_image_pixels)
        chunks, frames = image_plan(), 1
    else:
        chunks, frames, info = _plan_video(job, target, settings)
    # Where every chunk, the stitch, retry and cancel will find the segments.
    shared = not image and work_bucket(job["output"]) is None
    if not store.set_plan(
        job_id, chunks, frames, info, fingerprints=prints,
        work_dir=str(fleet_work_dir(settings)) if shared else "",
    ):  # fmt: skip
        # Cancelled or failed by the sweep while the video was read, or planned by the
        # planner the sweep sent after this one stalled: nothing of this plan is written.
        return []
    if not store.set_state(job_id, RUNNING, only_from=(PLANNING,)):
        if store.state(job_id) in TERMINAL:
            # It ended meanwhile: the new chunk records say so, and expire with it. (Not when
            # another planner moved it on: its job runs, with these same records.)
            store.end_waiting_chunks(job_id)
            store.expire_job(job_id)
        return []
    if not image:
        prepare(settings, job_id, output=job["output"])
    return [c.index for c in chunks]


def _inputs(settings: Settings, job: dict[str, str]) -> list[Location]:
    """Everything a job reads (store.job_inputs), located."""
    return [job_file(where, settings, what=what) for where, what in job_inputs(job)]


def _plan_video(
    job: dict[str, str], target: Location, settings: Settings
) -> tuple[list[Chunk], int, dict[str, Any]]:
    """Chunks cut on the video's own timestamps, its frame count and its stored probe."""
    info = probe(target, ffmpeg=settings.ffmpeg, max_frame_pixels=settings.max_frame_pixels)
    timestamps, time_base = frame_timestamps(
        target, ffmpeg=settings.ffmpeg, stream=info.video_stream
    )
    if not timestamps:
        raise InputError(f"{target}: no video frames", reason=Reason.NO_FRAMES)
    chunk_seconds = float(job.get("chunk_seconds") or settings.chunk_seconds)
    if not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
        raise InputError(f"chunk seconds must be a positive number, not {chunk_seconds}")
    chunks = plan_chunks(
        timestamps,
        time_base,
        chunk_seconds=chunk_seconds,
        min_chunk_seconds=settings.min_chunk_seconds,
        max_chunks=settings.max_chunks,
    )
    return chunks, len(timestamps), info.to_json()


def job_video_info(store: JobStore, settings: Settings, job_id: str, target: Location) -> VideoInfo:
    """The probe the plan stored (one probe per job, not one per chunk and stitch); probes
    afresh only for a job planned without one."""
    raw = store.get(job_id).get("video_info")
    if raw:
        info = VideoInfo.from_json(json.loads(raw))
        if info.path == target:
            return info
    return probe(target, ffmpeg=settings.ffmpeg, max_frame_pixels=settings.max_frame_pixels)


@dataclass
class _Watch:
    """Publishes a running chunk's progress and turns a job cancel/failure into a stop."""

    store: JobStore
    job_id: str
    index: int
    frames: int = 0
    #: Seconds between progress heartbeats (sent only when frames advanced: a hung decoder,
    #: driver call or stopped process stops them, and the stall sweep notices).
    heartbeat_seconds: float = 2.0

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ff-watch", daemon=True)
        self._thread.start()

    def advance(self, count: int) -> None:
        self.frames += count

    def _run(self) -> None:
        published, beat_at = 0, time.monotonic()
        while not self.stop.wait(WATCH_SECONDS):
            try:
                if self.store.state(self.job_id) in TERMINAL:
                    self.cancel.set()
                if self.frames != published:
                    published = self.frames
                    # Frames for `status` at every tick; the stall clock every heartbeat.
                    if time.monotonic() - beat_at >= self.heartbeat_seconds:
                        beat_at = time.monotonic()
                        self.store.chunk_heartbeat(self.job_id, self.index, published)
                    else:
                        self.store.chunk_progress(self.job_id, self.index, published)
            except Exception as exc:  # Redis blips must not kill the chunk; the ack will tell
                log.warning("progress update failed: %s", exc)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(2)


def run_chunk(
    store: JobStore, settings: Settings, job_id: str, index: int, *, worker: str
) -> tuple[SwapResult | None, bool]:
    """Swap one chunk into its segment. Returns (result, this was the last chunk); (None, False)
    when the job is already over (cancelled or failed): the chunk is skipped."""
    job = store.get(job_id)
    if not job or job.get("state") in TERMINAL:
        return None, False
    settings = for_job(settings, job)
    chunk = store.chunk_plan(job_id, index)
    target = job_file(job["target"], settings, what="target")
    image = is_image_target(target)
    check_unchanged(job.get("fingerprints", ""), _inputs(settings, job))
    # Images (a still target too) are read whole, into this host's cache when they are
    # objects; a video is read where it lies (an object through a signed URL: only this
    # chunk's span is fetched).
    sources = tuple(
        local_copy(settings, job_file(s, settings, what="source image")) for s in job_sources(job)
    )
    reference = (
        local_copy(settings, job_file(job["reference"], settings, what="reference image"))
        if job.get("reference")
        else None
    )
    loaded = MODELS.get(settings, sources)
    # The face selection belongs to the job (the producer chose it), not to this worker's
    # settings; the cached engine is re-aimed for every chunk.
    engine = loaded.engine
    engine.selector = job.get("face_selector") or settings.face_selector
    engine.reference_distance = float(job.get("reference_distance") or settings.reference_distance)
    engine.reference = None
    if reference is not None:
        engine.set_reference(reference)
    if not store.chunk_started(job_id, index, worker):
        return None, False  # the job ended meanwhile
    output = job_file(job["output"], settings, what="output", output=True)
    destination = output if image else segment(settings, job_id, index, output=job["output"])
    try:
        with scratch(settings, job_id) as local:
            if image:
                return _swap_image_job(
                    store, settings, job_id, chunk, loaded, sources,
                    local_copy(settings, target), reference, destination=destination, local=local,
                )  # fmt: skip
            try:
                return _swap_chunk(
                    store, settings, job_id, chunk, loaded, sources, target, reference,
                    destination=destination, local=local,
                )  # fmt: skip
            except OutputError as exc:
                if not isinstance(destination, Path):
                    raise  # a segment in the output's own bucket
                # The segment is the fleet's file, in its work directory: not the user's output.
                raise FaceFusionError(f"the fleet's work directory: {exc}") from None
    finally:
        if store.chunk_left(job_id, index):
            # Cancelled, and this was the last chunk executing: its segments go.
            remove_segments(settings, job_id, output=job["output"])


def _swap_chunk(
    store: JobStore,
    settings: Settings,
    job_id: str,
    chunk: Chunk,
    loaded: LoadedModels,
    sources: tuple[Path, ...],
    target: Location,
    reference: Path | None,
    *,
    destination: Location,
    local: Path,
) -> tuple[SwapResult | None, bool]:
    index = chunk.index
    job = store.get(job_id)
    info = job_video_info(store, settings, job_id, target)
    # Every segment of a job is written in the codec its output container holds: the job's
    # own encoder choice, else this worker's when it fits, else the container's default.
    muxer = muxer_for(job["output"])
    encoder = fleet_encoder(
        job.get("video_encoder", ""),
        settings.video_encoder,
        muxer,
        width=info.width,
        height=info.height,
        frame_rate=info.frame_rate,
    )
    watch = _Watch(store, job_id, index, heartbeat_seconds=settings.heartbeat_seconds)
    # A segment object is encoded here first: verified as a file, then uploaded whole.
    output = destination if isinstance(destination, Path) else local / destination.name
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The segment must hold exactly its planned frames (checked, with the file re-counted,
        # before it replaces a previous attempt's).
        result = run_swap(
            SwapJob(
                sources=sources,
                target=target,
                output=output,
                reference=reference,
                start_pts=chunk.start_pts,
                end_pts=chunk.end_pts,
                audio=False,
                frames=chunk.frames,
            ),
            loaded.engine,
            settings.replace(video_encoder=encoder),
            info=info,
            progress=watch.advance,
            cancel=watch.cancel,
        )
        if isinstance(destination, ObjectRef):
            objects.upload(output, destination)
    except Cancelled:
        store.chunk_cancelled(job_id, index)
        return None, False
    except (InputError, MediaError):
        # A target rewritten in place while it was read looks damaged (cut short, frames
        # missing): say what happened to it, not that the user brought a corrupt file.
        check_unchanged(job.get("fingerprints", ""), [target])
        raise
    finally:
        watch.close()
    # Replaced while this span was decoded: the segment may hold frames of two files.
    check_unchanged(job.get("fingerprints", ""), [target])
    last = store.chunk_done(job_id, index, result.frames)
    return result, last


def _swap_image_job(
    store: JobStore,
    settings: Settings,
    job_id: str,
    chunk: Chunk,
    loaded: LoadedModels,
    sources: tuple[Path, ...],
    target: Path,
    reference: Path | None,
    *,
    destination: Location,
    local: Path,
) -> tuple[SwapResult | None, bool]:
    """An image job's one chunk swaps the image into a verified temp beside the output (an
    object output: beside a file in `local`) and commits it itself, through COMMITTING as a
    stitch does (a cancel before that wins; none after). The chunk is marked done only once
    the output is in place, so a job whose chunk is done has its output; there is nothing to
    stitch: (result, False)."""
    watch = _Watch(store, job_id, chunk.index, heartbeat_seconds=settings.heartbeat_seconds)
    output = destination if isinstance(destination, Path) else local / destination.name
    try:
        result, staged = swap_image(
            SwapJob(sources=sources, target=target, output=output, reference=reference, frames=1),
            loaded.engine,
            settings,
            progress=watch.advance,
            cancel=watch.cancel,
        )
    except Cancelled:
        store.chunk_cancelled(job_id, chunk.index)
        return None, False
    finally:
        watch.close()
    # COMMITTING already: an earlier delivery of this chunk got there and stopped (a Redis
    # error after it); no cancel can have landed since, so this one commits.
    if not store.set_state(job_id, COMMITTING, only_from=(RUNNING, COMMITTING)):
        staged.discard()  # cancelled (or failed) meanwhile: the user's file was never touched
        store.chunk_cancelled(job_id, chunk.index)
        return None, False
    commit(staged, destination)
    result.output = destination
    store.chunk_done(job_id, chunk.index, result.frames)
    store.set_state(job_id, SUCCEEDED, only_from=(COMMITTING,))
    return result, False


def fail_job(store: JobStore, job_id: str, error: BaseException, *, index: int | None) -> Reason:
    """Record a final failure with its bounded reason (the one policy decides it); running
    chunks stop on their next watch. Returns the reason."""
    reason = policy.reason_of(error)
    message = str(error) or type(error).__name__
    store.fail(job_id, reason, message, index=index)
    return reason
