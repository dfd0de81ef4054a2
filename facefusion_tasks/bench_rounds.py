"""Benchmark rounds for a noisy machine: interleaved, min and median, ratios within a round."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Run:
    """One measured run: frames, wall seconds and CPU of this process and of its children."""

    frames: int
    seconds: float
    #: CPU seconds of this process (all its threads, onnxruntime's included).
    cpu_self: float = 0.0
    #: CPU seconds of child processes that ended during the run (the ffmpeg decoder and encoder).
    cpu_children: float = 0.0
    #: CPU seconds per pipeline stage, of the Python threads that ran it.
    stage_cpu: Mapping[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        """Frames per wall-clock second."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def cpu_per_frame(self) -> dict[str, float]:
        """CPU seconds per frame: each stage, ffmpeg, what no stage claims, and the total."""
        if not self.frames:
            return {}
        staged = sum(self.stage_cpu.values())
        per = {f"stage:{k}": v / self.frames for k, v in self.stage_cpu.items()}
        per["ffmpeg processes"] = self.cpu_children / self.frames
        # onnxruntime's intra-op threads, pipe reads that no stage times, GC, the interpreter.
        per["unstaged (models' threads, rest)"] = max(self.cpu_self - staged, 0.0) / self.frames
        per["total"] = (self.cpu_self + self.cpu_children) / self.frames
        return per


def measured(run: Callable[[], int]) -> Run:
    """Time `run` (which returns its frame count) on the wall clock and on CPU clocks."""
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    frames = run()
    seconds = time.perf_counter() - started
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Run(
        frames=frames,
        seconds=seconds,
        cpu_self=_cpu(self_after) - _cpu(self_before),
        cpu_children=_cpu(children_after) - _cpu(children_before),
    )


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def interleave(measures: Mapping[str, Callable[[], Run]], *, repeats: int) -> list[dict[str, Run]]:
    """Run every measure once per round, `repeats` rounds. The order rotates each round so a
    measure is not always the one that follows (or suffers) the same neighbour."""
    names = list(measures)
    rounds: list[dict[str, Run]] = []
    for index in range(repeats):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        rounds.append({name: measures[name]() for name in order})
    return rounds


def spread(values: Sequence[float]) -> dict[str, float]:
    """Min and median (and max, for the record) of a measure over rounds."""
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def per_round(
    rounds: Sequence[Mapping[str, Run]], value: Callable[[Mapping[str, Run]], float]
) -> dict[str, Any]:
    """A quantity computed inside each round (a ratio of two runs of that round), and its spread."""
    values = [value(r) for r in rounds]
    return {"rounds": values, **spread(values)}


def median_cpu(runs: Sequence[Run]) -> dict[str, float]:
    """Median over rounds of each CPU-per-frame entry."""
    tables = [r.cpu_per_frame() for r in runs]
    keys = sorted({k for t in tables for k in t})
    return {k: statistics.median(t.get(k, 0.0) for t in tables) for k in keys}
