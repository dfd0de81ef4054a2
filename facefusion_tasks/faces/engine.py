"""Swap faces in a batch of frames: detect, select, swap all selected faces together, paste back."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facefusion_tasks.errors import InputError
from facefusion_tasks.faces import align
from facefusion_tasks.faces.detector import BlobRing, Detector, Letterboxed, Slot
from facefusion_tasks.faces.embedder import Embedder
from facefusion_tasks.faces.gpupaste import GpuPaster
from facefusion_tasks.faces.paste import Feather, feather_mask, paste_back
from facefusion_tasks.faces.pool import SERIAL, CpuPool
from facefusion_tasks.faces.swapper import SWAP_SIZE, Swapper
from facefusion_tasks.faces.types import Face
from facefusion_tasks.inputs import read_image
from facefusion_tasks.reasons import Reason

#: A stage's start: (wall clock, this thread's CPU clock).
Mark = tuple[float, float]


def mark() -> Mark:
    """Now, on both clocks a StageClock charges."""
    return time.perf_counter(), time.thread_time()


@dataclass
class StageClock:
    """Seconds spent per pipeline stage, wall and CPU; the engine, its pool and the video threads
    add to it. CPU is the calling thread's own (time.thread_time): onnxruntime's intra-op threads
    are not in it, so the rest of the process's CPU is what the models used."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, started: Mark) -> Mark:
        """Charge the time since `started` to `stage`; returns now, to chain measurements."""
        now = mark()
        # Pool threads charge the same stage concurrently; `+=` on a dict item is not atomic.
        with self._lock:
            self.seconds[stage] += now[0] - started[0]
            self.cpu_seconds[stage] += now[1] - started[1]
        return now

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the body's time to `name`."""
        started = mark()
        try:
            yield
        finally:
            self.add(name, started)

    def clear(self) -> None:
        """Start counting from zero (a new run)."""
        with self._lock:
            self.seconds.clear()
            self.cpu_seconds.clear()


def mean_identity(embeddings: np.ndarray) -> np.ndarray:
    """The identity of (N, 512) unit embeddings of one person: their mean, L2-normalised, as
    FaceFusion's get_average_face averages insightface's normed embeddings; the swapper takes a
    unit vector. One embedding comes back unchanged."""
    mean = np.asarray(embeddings, np.float32).reshape(-1, embeddings.shape[-1]).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


class FaceEngine:
    """Holds the models and the source identity; swaps faces in frame batches in place."""

    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        swapper: Swapper,
        *,
        selector: str = "many",
        reference_distance: float = 0.6,
        paster: GpuPaster | None = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.swapper = swapper
        self.selector = selector
        self.reference_distance = reference_distance
        self.latent: np.ndarray | None = None
        self.reference: np.ndarray | None = None
        self.feather = Feather.of(feather_mask(SWAP_SIZE))
        #: Pastes on the models' provider when set (settings.paste); paste_back otherwise.
        self.paster = paster
        self.clock = StageClock()

    def _largest_face(self, image: np.ndarray, what: str, path: Path) -> Face:
        faces = self.detector.detect([image])[0]
        if not faces:
            reason = Reason.NO_REFERENCE_FACE if what == "reference" else Reason.NO_SOURCE_FACE
            raise InputError(f"{path}: no face found in the {what} image", reason=reason)
        return max(faces, key=lambda f: f.area)

    def set_source(self, path: Path) -> None:
        """Embed the source identity once; every swapped face gets it."""
        self.set_sources([path])

    def set_sources(self, paths: Sequence[Path]) -> None:
        """One identity from several photos of the same person: the largest face of each,
        embedded in one model call, averaged (mean_identity). A photo without a face is named."""
        if not paths:
            raise InputError("no source image given")
        pairs = []
        for path in paths:
            image = read_image(path)
            pairs.append((image, self._largest_face(image, "source", path)))
        self.set_source_embedding(mean_identity(self.embedder.embed(pairs)))

    def set_source_embedding(self, embedding: np.ndarray) -> None:
        """Use an identity embedding computed elsewhere (e.g. once by the job planner)."""
        self.latent = self.swapper.latent(embedding)

    def set_reference(self, path: Path) -> None:
        """With the `reference` selector, only faces near this identity are swapped."""
        image = read_image(path)
        face = self._largest_face(image, "reference", path)
        self.reference = self.embedder.embed([(image, face)])[0]

    def _select(self, frames: Sequence[np.ndarray], found: list[list[Face]]) -> list[list[Face]]:
        if self.selector == "one":
            return [[max(faces, key=lambda f: f.area)] if faces else [] for faces in found]
        if self.selector == "reference":
            if self.reference is None:
                raise InputError("the reference selector needs --reference-face IMAGE")
            started = mark()
            flat = [(i, face) for i, faces in enumerate(found) for face in faces]
            distances = (
                1.0 - self.embedder.embed([(frames[i], f) for i, f in flat]) @ self.reference
            )
            self.clock.add("embed", started)
            chosen: list[list[Face]] = [[] for _ in found]
            for (frame_index, face), distance in zip(flat, distances, strict=True):
                if distance < self.reference_distance:
                    chosen[frame_index].append(face)
            return chosen
        return found

    def blob_ring(self, batch: int, depth: int) -> BlobRing:
        """Reusable detector input buffers for prepare's `slot` (see BlobRing)."""
        return self.detector.ring(batch, depth)

    def prepare(self, frame: np.ndarray, slot: Slot | None = None) -> Letterboxed:
        """The detector input for one frame (runs in the CPU pool, ahead of the model), into
        `slot` of a blob_ring when given."""
        with self.clock.stage("letterbox"):
            return self.detector.letterbox(frame, slot)

    def infer(
        self,
        frames: Sequence[np.ndarray],
        prepared: Sequence[Letterboxed],
        pool: CpuPool = SERIAL,
    ) -> list[FrameSwap]:
        """Detect, select, align and swap: every model call for a batch, the per-frame CPU work
        between them in `pool`. Frames are not changed yet: paste() each result for that."""
        if self.latent is None:
            raise RuntimeError("set_source() must run before process()")
        latent = self.latent
        with self.clock.stage("detect"):
            outs = self.detector.infer(prepared)

        def boxes(index: int) -> list[Face]:
            with self.clock.stage("boxes"):
                return self.detector.decode(outs[index], prepared[index])

        found = pool.map(boxes, range(len(frames)))
        selected = self._select(frames, found)
        work = [FrameSwap(frame, []) for frame in frames]
        flat = [(i, face) for i, faces in enumerate(selected) for face in faces]
        if not flat:
            return work
        with self.clock.stage("align"):
            matrices = align.estimate_norms(np.stack([face.kps for _, face in flat]), SWAP_SIZE)

        def cut(index: int) -> np.ndarray:
            with self.clock.stage("align"):
                return align.warp(frames[flat[index][0]], matrices[index], SWAP_SIZE)

        crops = np.stack(pool.map(cut, range(len(flat))))
        with self.clock.stage("swap"):
            swapped = self.swapper.swap(crops, latent)
        for (frame_index, _), face_crop, matrix in zip(flat, swapped, matrices, strict=True):
            work[frame_index].faces.append((face_crop, matrix))
        return work

    def paste(self, work: FrameSwap) -> int:
        """Blend one frame's swapped faces back in place, in detection order (faces may overlap,
        so one frame's faces are never split across threads); returns how many."""
        with self.clock.stage("paste"):
            if self.paster is not None:
                self.paster.paste(work.frame, work.faces, self.feather)
            else:
                for face_crop, matrix in work.faces:
                    paste_back(work.frame, face_crop, matrix, self.feather)
        return len(work.faces)

    def process(self, frames: Sequence[np.ndarray], pool: CpuPool = SERIAL) -> list[int]:
        """Swap the selected faces of every frame in place; returns the count swapped per frame."""
        if self.latent is None:
            raise RuntimeError("set_source() must run before process()")
        prepared = pool.map(self.prepare, frames)
        return pool.map(self.paste, self.infer(frames, prepared, pool))


@dataclass(frozen=True)
class FrameSwap:
    """One frame's swap, ready to paste: the frame and its (swapped crop, frame->crop affine)."""

    frame: np.ndarray
    faces: list[tuple[np.ndarray, np.ndarray]]
