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
from facefusion_tasks.faces.detector import Detector
from facefusion_tasks.faces.embedder import Embedder
from facefusion_tasks.faces.paste import feather_mask, paste_back
from facefusion_tasks.faces.swapper import SWAP_SIZE, Swapper
from facefusion_tasks.faces.types import Face
from facefusion_tasks.inputs import read_image


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
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.swapper = swapper
        self.selector = selector
        self.reference_distance = reference_distance
        self.latent: np.ndarray | None = None
        self.reference: np.ndarray | None = None
        self.mask = feather_mask(SWAP_SIZE)
        self.clock = StageClock()

    def _largest_face(self, image: np.ndarray, what: str, path: Path) -> Face:
        faces = self.detector.detect([image])[0]
        if not faces:
            raise InputError(f"{path}: no face found in the {what} image", reason=f"no_{what}_face")
        return max(faces, key=lambda f: f.area)

    def set_source(self, path: Path) -> None:
        """Embed the source identity once; every swapped face gets it."""
        image = read_image(path)
        face = self._largest_face(image, "source", path)
        self.set_source_embedding(self.embedder.embed([(image, face)])[0])

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

    def process(self, frames: Sequence[np.ndarray]) -> list[int]:
        """Swap the selected faces of every frame in place; returns the count swapped per frame."""
        if self.latent is None:
            raise RuntimeError("set_source() must run before process()")
        started = mark()
        found = self.detector.detect(frames)
        self.clock.add("detect", started)
        selected = self._select(frames, found)
        started = mark()
        jobs = [
            (i, *align.crop(frames[i], face.kps, SWAP_SIZE))
            for i, faces in enumerate(selected)
            for face in faces
        ]
        counts = [len(faces) for faces in selected]
        if not jobs:
            return counts
        crops = np.stack([crop for _, crop, _ in jobs])
        swapped = self.swapper.swap(crops, self.latent)
        started = self.clock.add("swap", started)
        for (frame_index, _, matrix), face_crop in zip(jobs, swapped, strict=True):
            paste_back(frames[frame_index], face_crop, matrix, self.mask)
        self.clock.add("paste", started)
        return counts
