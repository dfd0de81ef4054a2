"""decode → detect → swap → paste → encode: bounded queues and a CPU pool, no Celery here."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facefusion_tasks import heap, observe
from facefusion_tasks.config import Settings
from facefusion_tasks.cores import pool_threads
from facefusion_tasks.errors import Cancelled, InputError
from facefusion_tasks.faces.engine import FaceEngine, StageClock, mark
from facefusion_tasks.faces.pool import CpuPool
from facefusion_tasks.inputs import check_output
from facefusion_tasks.objects import Location
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.colour import written_colour
from facefusion_tasks.video.fields import written_field_order
from facefusion_tasks.video.probe import VideoInfo, check_frame_size, probe
from facefusion_tasks.video.reader import FrameReader
from facefusion_tasks.video.writer import FrameWriter

log = logging.getLogger(__name__)

_END = object()
#: Batches of letterboxed frames that may wait for the model: the ring's buffers, and the
#: look-ahead semaphore's permits in batches (the ring is safe only while the two are equal).
_AHEAD_BATCHES = 2
#: How often blocked queue operations wake up to notice a failure or cancellation elsewhere.
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class SwapJob:
    """One swap over a target video (or one span of it, for a chunk)."""

    #: The source images (one identity: their embeddings averaged).
    sources: tuple[Path, ...]
    #: The video: a file, or an object read through a URL the reader signs (ranged reads); a
    #: still image is always a file (an object one is fetched first).
    target: Location
    output: Path
    reference: Path | None = None
    #: Decode only frames with start_pts <= pts < end_pts (a chunk); None = whole video.
    start_pts: int | None = None
    end_pts: int | None = None
    #: Copy the target's audio into the output (off for chunk segments; the stitcher adds it).
    audio: bool = True
    #: Frames the output must hold (a chunk's planned span; the probed count of a whole
    #: video): anything else fails before the file is committed. None = not known.
    frames: int | None = None


@dataclass
class SwapResult:
    """What a run did, for the CLI summary and for metrics."""

    #: Where the result went: a file, or the object it was uploaded to.
    output: Location
    frames: int = 0
    faces_swapped: int = 0
    frames_with_faces: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: The video encoder this run really used (after `auto` and the nvenc trial); for a still
    #: image, its format.
    encoder: str = ""
    #: The -hwaccel really passed to the decoder ("none" unless a GPU trial decode proved it).
    hwaccel: str = "none"
    #: CPU seconds of the threads that ran each stage (onnxruntime's own threads excluded).
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        """Frames per wall-clock second over the whole run."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "output": str(self.output),
            "frames": self.frames,
            "faces_swapped": self.faces_swapped,
            "frames_with_faces": self.frames_with_faces,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "stage_seconds": {k: round(v, 3) for k, v in sorted(self.stage_seconds.items())},
            "encoder": self.encoder,
            "hwaccel": self.hwaccel,
        }


class _Stop(Exception):
    """Another stage failed or the job was cancelled; unwind quietly."""


class _Stages:
    """Shared failure/cancel state for the three threads of one run."""

    def __init__(self, cancel: threading.Event | None) -> None:
        self.failed = threading.Event()
        self.cancel = cancel or threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.failed.set()

    def check(self) -> None:
        if self.failed.is_set():
            raise _Stop
        if self.cancel.is_set():
            self.fail(Cancelled("cancelled"))
            raise _Stop

    def put(self, q: queue.Queue[Any], item: Any) -> None:
        while True:
            self.check()
            try:
                q.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue[Any]) -> Any:
        while True:
            self.check()
            try:
                return q.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue

    def acquire(self, slots: threading.Semaphore) -> None:
        while not slots.acquire(timeout=_POLL_SECONDS):
            self.check()

    def wait(self, future: Future[Any]) -> Any:
        """The pool's result; its error is raised here, in the stage that needs the result."""
        while True:
            self.check()
            try:
                return future.result(timeout=_POLL_SECONDS)
            except FutureTimeout:
                continue


def _timed(iterator: Iterator[Any], clock: StageClock, stage: str) -> Iterator[Any]:
    """Charge the time spent waiting on `iterator` to `stage`."""
    while True:
        started = mark()
        try:
            item = next(iterator)
        except StopIteration:
            clock.add(stage, started)
            return
        clock.add(stage, started)
        yield item


def _proven_hwaccel(settings: Settings) -> str:
    """-hwaccel only where a trial decode proved ffmpeg decodes on the GPU (it silently falls
    back to the CPU otherwise, and the claim would be false)."""
    if settings.hwaccel == "none":
        return "none"
    from facefusion_tasks.video import ffbin

    return ffbin.effective_hwaccel(ffbin.ffmpeg_exe(settings.ffmpeg), settings.hwaccel)


def queue_slots(settings: Settings, width: int, height: int) -> int:
    """Frames each stage queue may hold: queue_frames, fewer when that many frames of this size
    would pass queue_bytes (BGR, 3 bytes a pixel), never fewer than 2 (decode and encode keep
    overlapping)."""
    frame_bytes = max(1, width * height * 3)
    return max(2, min(settings.queue_frames, settings.queue_bytes // frame_bytes))


def run_swap(
    job: SwapJob,
    engine: FaceEngine,
    settings: Settings,
    *,
    info: VideoInfo | None = None,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> SwapResult:
    """Swap faces through a whole video (or a span): decode, infer and encode run concurrently,
    joined by queues of at most `queue_slots` frames, so memory stays flat however
    long the video is; letterbox, box decoding, warps and paste-back run in a pool of
    `settings.cpu_threads` beside the model calls. Nothing appears at `job.output` unless every
    frame made it."""
    check_output(job.output, job.target)
    heap.keep_freed_buffers()
    info = info or probe(
        job.target, ffmpeg=settings.ffmpeg, max_frame_pixels=settings.max_frame_pixels
    )
    # Also for a probe stored by the plan: a job planned before a lower limit decodes nothing.
    check_frame_size(info, max_frame_pixels=settings.max_frame_pixels)
    started = time.perf_counter()
    clock = engine.clock
    clock.clear()
    result = SwapResult(output=job.output)
    stages = _Stages(cancel)
    slots = queue_slots(settings, info.width, info.height)
    decoded: queue.Queue[Any] = queue.Queue(maxsize=slots)
    swapped: queue.Queue[Any] = queue.Queue(maxsize=slots)
    # Letterboxed detector inputs (4.9 MB each at 640 px) wait for the model: at most
    # _AHEAD_BATCHES batches of them, whatever the queue length, so memory stays bounded. They
    # live in the ring's buffers: a frame takes its permit before it is letterboxed, and a
    # batch gives its permits back only once inferred, so no frame overwrites a waiting batch.
    # Made before the decoder and the encoder start: its bookkeeping for an absurd batch was
    # a MemoryError that left the encoder's temp file beside the output. (Its buffers come
    # with the first frames; a failure there aborts the writer as any stage's does.)
    ahead = threading.Semaphore(_AHEAD_BATCHES * settings.batch_size)
    ring = engine.blob_ring(settings.batch_size, _AHEAD_BATCHES)
    result.hwaccel = _proven_hwaccel(settings)
    reader = FrameReader(
        info,
        ffmpeg=settings.ffmpeg,
        hwaccel=result.hwaccel,
        start_pts=job.start_pts,
        end_pts=job.end_pts,
    )
    try:
        writer = FrameWriter(
            job.output,
            width=info.width,
            height=info.height,
            time_base=info.time_base,
            audio_source=info if job.audio else None,
            settings=settings,
            frame_rate=info.frame_rate,
            colour=written_colour(info.colour, info.pix_fmt),
            sample_aspect=info.sample_aspect,
            field_order=written_field_order(info),
            # Where the output runs to the source's end (a local swap, a job's last chunk), its
            # last frame keeps the source's own length (a GIF's long last delay); the stitch's
            # copy keeps it from ffmpeg 6.0 on, and sets it again before (stitch.py).
            last_frame=info.last_frame if job.end_pts is None else None,
        )
    except BaseException:
        # The decoder is already running: a writer that cannot start (a full disk, a refused
        # encoder) must not leave it blocked on a full pipe for the life of the worker.
        reader.close()
        raise
    result.encoder = writer.encoder

    pool = CpuPool(pool_threads(settings.cpu_threads))

    def decode() -> None:
        try:
            for index, frame in enumerate(_timed(iter(reader), clock, "decode")):
                stages.acquire(ahead)
                image = _writable(frame.image)
                prepared = pool.submit(engine.prepare, image, ring.slot(index))
                stages.put(decoded, (image, frame.pts, prepared))
            stages.put(decoded, _END)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            stages.fail(exc)

    def encode() -> None:
        try:
            while (item := stages.get(swapped)) is not _END:
                pasted, image, pts = item
                stages.wait(pasted)
                begun = mark()
                writer.write(image, pts)
                clock.add("encode", begun)
                if progress is not None:
                    progress(1)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            stages.fail(exc)

    threads = [
        threading.Thread(target=decode, name="ff-decode", daemon=True),
        threading.Thread(target=encode, name="ff-encode", daemon=True),
    ]
    for thread in threads:
        thread.start()
    seen = dict(clock.seconds)
    try:
        ended = False
        while not ended:
            batch: list[tuple[np.ndarray, int, Future[Any]]] = []
            while len(batch) < settings.batch_size:
                item = stages.get(decoded)
                if item is _END:
                    ended = True
                    break
                batch.append(item)
            if not batch:
                break
            begun = time.perf_counter()
            images = [image for image, _, _ in batch]
            prepared = [stages.wait(future) for _, _, future in batch]
            work = engine.infer(images, prepared, pool)
            del prepared
            ahead.release(len(batch))
            counts = [len(w.faces) for w in work]
            result.faces_swapped += sum(counts)
            result.frames_with_faces += sum(1 for c in counts if c)
            now = dict(clock.seconds)
            observe.batch(
                metric_stages({k: v - seen.get(k, 0.0) for k, v in now.items()}),
                frames=len(batch),
                faces=sum(counts),
                seconds=time.perf_counter() - begun,
            )
            seen = now
            result.frames += len(batch)
            # Paste-back runs in the pool while the next batch is inferred; the encoder waits
            # for each frame's paste, in order.
            for one, (image, pts, _) in zip(work, batch, strict=True):
                stages.put(swapped, (pool.submit(engine.paste, one), image, pts))
        stages.put(swapped, _END)
        for thread in threads:
            while thread.is_alive():
                thread.join(_POLL_SECONDS)
                if stages.failed.is_set():
                    break
    except _Stop:
        pass
    except BaseException as exc:
        stages.fail(exc)
    finally:
        if stages.error is not None:
            stages.failed.set()
            reader.close()
            writer.abort()
            for thread in threads:
                thread.join(5)
        pool.close(cancel=stages.error is not None)
    if stages.error is not None:
        raise stages.error
    reader.close()
    committing = mark()
    if job.frames is not None and result.frames != job.frames:
        writer.abort()
        # The count came from demuxed packets, the frames from decoding: a file that
        # decodes differently than it demuxes is damaged in the middle.
        raise InputError(
            f"{job.target.name}: decoded {result.frames} frames, expected {job.frames}",
            reason=Reason.CORRUPT_VIDEO,
        )
    writer.commit()
    clock.add("encode", committing)
    result.seconds = time.perf_counter() - started
    result.stage_seconds = dict(clock.seconds)
    result.stage_cpu_seconds = dict(clock.cpu_seconds)
    return result


#: The clock's finer stages, folded into the metric's stage label (a fixed set: the dashboards
#: and alerts name it).
_METRIC_STAGE = {"letterbox": "detect", "boxes": "detect", "align": "swap"}


def metric_stages(seconds: dict[str, float]) -> dict[str, float]:
    """Clock seconds per metric stage label (video batches and still images alike)."""
    folded: dict[str, float] = {}
    for stage, spent in seconds.items():
        name = _METRIC_STAGE.get(stage, stage)
        folded[name] = folded.get(name, 0.0) + spent
    return folded


def _writable(image: np.ndarray) -> np.ndarray:
    """Frames from a pipe may be read-only views of a bytes object; the engine pastes in place."""
    return image if image.flags.writeable else image.copy()
