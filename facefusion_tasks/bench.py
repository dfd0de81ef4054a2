"""`facefusion-tasks bench`: the swap pipeline measured in interleaved, repeated rounds."""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facefusion_tasks.bench_rounds import (
    Run,
    interleave,
    measured,
    median_cpu,
    per_round,
    spread,
)
from facefusion_tasks.config import Settings
from facefusion_tasks.cores import pool_threads
from facefusion_tasks.faces.engine import FrameSwap, StageClock
from facefusion_tasks.faces.loader import LoadedModels, load_models
from facefusion_tasks.faces.pool import SERIAL, CpuPool
from facefusion_tasks.pipeline import SwapJob, run_swap

#: At most this many frames are held in memory for the inference-only measurement.
_INFERENCE_FRAMES = 240
#: The ceiling's cases: (width, height, faces per frame).
CEILING_CASES = ((1280, 720, 2), (1280, 720, 8), (1920, 1080, 2), (1920, 1080, 8))
#: GFLOPs of the heavy stand-in detector (about det_10g's compute) in the memory comparison.
HEAVY_DETECTOR_GFLOPS = 10.0


class _NoRing:
    """No detector inputs to hold."""

    def slot(self, index: int) -> None:
        return None


class PassthroughEngine:
    """Same interface as FaceEngine, no models: measures the plumbing alone."""

    def __init__(self) -> None:
        self.clock = StageClock()

    def blob_ring(self, batch: int, depth: int) -> _NoRing:
        return _NoRing()

    def prepare(self, frame: np.ndarray, slot: object = None) -> None:
        return None

    def infer(
        self, frames: Sequence[np.ndarray], prepared: Sequence[None], pool: CpuPool = SERIAL
    ) -> list[FrameSwap]:
        return [FrameSwap(frame, []) for frame in frames]

    def paste(self, work: FrameSwap) -> int:
        return 0

    def process(self, frames: Sequence[np.ndarray], pool: CpuPool = SERIAL) -> list[int]:
        return [0] * len(frames)


def describe_models(models_dir: Path) -> str:
    """Which models a run used: real, or stand-ins and how much compute their detector carries."""
    import onnx

    from facefusion_tasks.models.standin import DETECTOR_FILE, is_standin

    detector = models_dir / DETECTOR_FILE
    if not is_standin(detector):
        return f"real ({models_dir})"
    graph = onnx.load(str(detector), load_external_data=False).graph
    ballast = sum(1 for init in graph.initializer if init.name.startswith("ballast_w"))
    if not ballast:
        return f"stand-in, light detector ({models_dir})"
    # _ballast's layers: 16→16 channel 3×3 convolutions on 640×640 (the first takes 3 channels).
    gflops = ballast * 2 * 640 * 640 * 16 * 16 * 9 / 1e9
    return f"stand-in, detector with ~{gflops:.1f} GFLOPs ({models_dir})"


def _models_for(settings: Settings, scratch: Path) -> tuple[Settings, bool]:
    """The models in settings.models_dir when all three are there (real or stand-ins, with their
    compute); otherwise light stand-ins made for this run. Returns (settings, made_here)."""
    from facefusion_tasks.errors import ModelError
    from facefusion_tasks.faces.loader import model_paths

    try:
        model_paths(settings.models_dir)
        return settings, False
    except ModelError:
        pass
    from facefusion_tasks.models.standin import make_test_models

    make_test_models(scratch / "models")
    # The bench made these stand-ins itself: loading them is asked for here.
    return settings.replace(models_dir=scratch / "models", allow_standin_models=True), True


def _made_here(settings: Settings, models_dir: Path) -> Settings:
    """Settings aimed at stand-ins this run made: where a setting refuses stand-ins unless
    asked (they vouch for nothing in production), these were made on purpose, so ask."""
    changes: dict[str, Any] = {"models_dir": models_dir}
    if any(f.name == "allow_standin_models" for f in dataclasses.fields(settings)):
        changes["allow_standin_models"] = True
    return settings.replace(**changes)


def _source_image(scratch: Path) -> Path:
    from facefusion_tasks.faces.synthetic import write_source

    return write_source(scratch)


def _decoded_frames(clip: Path, settings: Settings) -> list[np.ndarray]:
    from facefusion_tasks.video.probe import probe
    from facefusion_tasks.video.reader import FrameReader

    frames = []
    with FrameReader(probe(clip, ffmpeg=settings.ffmpeg), ffmpeg=settings.ffmpeg) as reader:
        for frame in reader:
            frames.append(frame.image.copy())
            if len(frames) >= _INFERENCE_FRAMES:
                break
    return frames


def _pipeline_run(job: SwapJob, engine: Any, settings: Settings, info: Any) -> Callable[[], Run]:
    def run() -> Run:
        kept: dict[str, Any] = {}

        def go() -> int:
            kept["result"] = run_swap(job, engine, settings, info=info)
            return int(kept["result"].frames)

        base = measured(go)
        return Run(
            frames=base.frames,
            seconds=base.seconds,
            cpu_self=base.cpu_self,
            cpu_children=base.cpu_children,
            stage_cpu=kept["result"].stage_cpu_seconds,
        )

    return run


def _inference_run(engine: Any, frames: list[np.ndarray], settings: Settings) -> Callable[[], Run]:
    def run() -> Run:
        # Fresh copies each round: the engine pastes in place.
        batch_frames = [f.copy() for f in frames]

        def go() -> int:
            with CpuPool(pool_threads(settings.cpu_threads)) as pool:
                for i in range(0, len(batch_frames), settings.batch_size):
                    engine.process(batch_frames[i : i + settings.batch_size], pool)
            return len(batch_frames)

        return measured(go)

    return run


def _machine() -> str:
    return f"{platform.machine()} {mp.cpu_count()} cores, {platform.platform()}"


def _settings_facts(settings: Settings, loaded: LoadedModels) -> dict[str, Any]:
    return {
        "provider": loaded.active_provider,
        "batch_size": settings.batch_size,
        "swapper_batched": loaded.swapper_batched,
        "detector_batched": loaded.detector_batched,
        "precision": settings.precision,
        "io_binding": settings.io_binding,
        "cpu_threads": pool_threads(settings.cpu_threads),
        "inference_threads": settings.inference_threads,
        "paste": loaded.paste,
    }


def run_bench(
    settings: Settings, *, seconds: float = 20.0, width: int = 640, height: int = 360,
    faces: int = 2, repeats: int = 3, memory: bool = False, processes: int = 0,
    growth: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """End-to-end, transcode-only and inference-only on the same clip and the given models,
    interleaved over `repeats` rounds; the overlap ratio is computed inside each round."""
    from facefusion_tasks.video.probe import probe
    from facefusion_tasks.video.samples import make_sample_video

    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        scratch = Path(tmp)
        settings, made = _models_for(settings, scratch)
        clip = make_sample_video(
            scratch / "clip.mp4", seconds=seconds, width=width, height=height, faces=faces,
            audio=True,
        )  # fmt: skip
        info = probe(clip, ffmpeg=settings.ffmpeg)
        source = _source_image(scratch)
        loaded = load_models(settings)
        loaded.engine.set_source(source)
        job = SwapJob((source,), clip, scratch / "out.mp4")
        frames = _decoded_frames(clip, settings)
        rounds = interleave(
            {
                "transcode": _pipeline_run(job, PassthroughEngine(), settings, info),
                "inference": _inference_run(loaded.engine, frames, settings),
                "end_to_end": _pipeline_run(job, loaded.engine, settings, info),
            },
            repeats=repeats,
        )
        del frames

        def overlap(r: Any) -> float:
            e2e, inf = r["end_to_end"], r["inference"]
            inference_seconds = e2e.frames * inf.seconds / inf.frames
            return float(e2e.seconds / (r["transcode"].seconds + inference_seconds))

        report: dict[str, Any] = {
            "mode": "pipeline",
            "machine": _machine(),
            "models": describe_models(settings.models_dir) + (" (made for this run)" if made else ""),
            "standin_models": loaded.standin,
            **_settings_facts(settings, loaded),
            "clip": {"seconds": seconds, "width": width, "height": height, "faces": faces,
                     "frames": rounds[0]["end_to_end"].frames},
            "repeats": repeats,
            "fps": {name: spread([r[name].fps for r in rounds]) for name in rounds[0]},
            "ratio": per_round(rounds, overlap),
            "cpu_per_frame": median_cpu([r["end_to_end"] for r in rounds]),
            "peak_rss_bytes": peak_rss(),
        }  # fmt: skip
        if processes > 1:
            report["processes"] = _processes(settings, clip, source, processes, repeats)
        if memory:
            report["memory"] = _memory(settings, scratch, source, clip, repeats)
        if growth:
            report["growth"] = _growth(settings, scratch, source)
        return report


def run_ceiling(
    settings: Settings, *, seconds: float = 4.0, repeats: int = 3,
    cases: Sequence[tuple[int, int, int]] = CEILING_CASES,
) -> dict[str, Any]:  # fmt: skip
    """The pipeline's ceiling: ceiling stand-ins (the real models' I/O contracts, the light
    stand-ins' results, negligible compute) against transcode-only, per case, interleaved; ratio = ceiling fps ÷ transcode fps
    of the same round. Whatever the models dir holds, this measures the glue, not models."""
    from facefusion_tasks.bench_models import make_ceiling_models
    from facefusion_tasks.video.probe import probe
    from facefusion_tasks.video.samples import make_sample_video

    with tempfile.TemporaryDirectory(prefix="ff-ceiling-") as tmp:
        scratch = Path(tmp)
        make_ceiling_models(scratch / "models")
        # One inference thread unless told otherwise: on a GPU the models occupy no CPU thread
        # pool, while onnxruntime's default pool spin-waits on every core between calls (about
        # 10 ms of CPU per frame here), which would be charged to the glue this measures.
        threads = settings.inference_threads or 1
        settings = _made_here(settings, scratch / "models").replace(inference_threads=threads)
        source = _source_image(scratch)
        loaded = load_models(settings)
        loaded.engine.set_source(source)
        # With the paste graph, the same engine pasting with OpenCV runs in the same rounds,
        # so the graph's gain is a same-round ratio too.
        cpu_paste = copy.copy(loaded.engine) if loaded.engine.paster is not None else None
        if cpu_paste is not None:
            cpu_paste.paster = None
        measures: dict[str, Callable[[], Run]] = {}
        for width, height, faces in cases:
            name = f"{height}p {faces} faces"
            clip = make_sample_video(
                scratch / f"{height}p-{faces}.mp4", seconds=seconds, width=width, height=height,
                faces=faces, audio=True,
            )  # fmt: skip
            info = probe(clip, ffmpeg=settings.ffmpeg)
            job = SwapJob((source,), clip, scratch / f"out-{height}p-{faces}.mp4")
            measures[f"{name}|transcode"] = _pipeline_run(job, PassthroughEngine(), settings, info)
            measures[f"{name}|ceiling"] = _pipeline_run(job, loaded.engine, settings, info)
            if cpu_paste is not None:
                measures[f"{name}|cpu_paste"] = _pipeline_run(job, cpu_paste, settings, info)
        rounds = interleave(measures, repeats=repeats)
        table: dict[str, Any] = {}
        for width, height, faces in cases:
            name = f"{height}p {faces} faces"
            t, c = f"{name}|transcode", f"{name}|ceiling"
            table[name] = {
                "width": width,
                "height": height,
                "faces": faces,
                "frames": rounds[0][c].frames,
                "transcode_fps": spread([r[t].fps for r in rounds]),
                "ceiling_fps": spread([r[c].fps for r in rounds]),
                "ratio": per_round(rounds, _ratio_of(t, c)),
                "cpu_ratio": per_round(rounds, _cpu_ratio_of(t, c)),
                "cpu_per_frame": median_cpu([r[c] for r in rounds]),
                "transcode_cpu_per_frame": median_cpu([r[t] for r in rounds]),
            }
            if cpu_paste is not None:
                p = f"{name}|cpu_paste"
                table[name] |= {
                    "cpu_paste_fps": spread([r[p].fps for r in rounds]),
                    "cpu_paste_ratio": per_round(rounds, _ratio_of(t, p)),
                    "cpu_paste_cpu_per_frame": median_cpu([r[p] for r in rounds]),
                    # The graph's gain: ceiling fps ÷ the same pipeline's with OpenCV's paste.
                    "paste_gain": per_round(rounds, _ratio_of(p, c)),
                }
        return {
            "mode": "ceiling",
            "machine": _machine(),
            "models": "ceiling stand-ins (real I/O contracts, negligible compute)",
            **_settings_facts(settings, loaded),
            "seconds": seconds,
            "repeats": repeats,
            "cases": table,
        }


def _ratio_of(transcode: str, ceiling: str) -> Callable[[Mapping[str, Run]], float]:
    """Ceiling fps ÷ transcode fps of one round (same frames, so transcode s ÷ ceiling s)."""
    return lambda r: r[transcode].seconds / r[ceiling].seconds


def _cpu_ratio_of(transcode: str, ceiling: str) -> Callable[[Mapping[str, Run]], float]:
    """Transcode CPU ÷ ceiling CPU per frame of one round: what the fps ratio tends to when the
    machine is saturated, and far steadier than wall time on a shared one."""
    return lambda r: r[transcode].cpu_per_frame()["total"] / r[ceiling].cpu_per_frame()["total"]


def _child(clip: str, source: str, settings: Settings, ready: Any, go: Any, out: Any) -> None:
    """One pipeline in a fresh process: load, say ready, wait for the start, run, report."""
    models = load_models(settings)
    models.engine.set_source(Path(source))
    output = Path(clip).with_name(f"{Path(clip).stem}-{mp.current_process().pid}.mp4")
    ready.put(True)
    go.wait()
    result = run_swap(SwapJob((Path(source),), Path(clip), output), models.engine, settings)
    output.unlink(missing_ok=True)
    out.put({"frames": result.frames, "seconds": result.seconds, "peak_rss_bytes": peak_rss()})


def _spawned(settings: Settings, clip: Path, source: Path, count: int) -> tuple[float, list[Any]]:
    """`count` pipelines in their own processes, started together once all have loaded their
    models; returns the wall seconds until all finished and each one's report."""
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    # "auto" pool threads shared among the pipelines, as the launcher shares them.
    settings = settings.replace(cpu_threads=pool_threads(settings.cpu_threads, pipelines=count))
    children = [
        ctx.Process(target=_child, args=(str(clip), str(source), settings, ready, go, out))
        for _ in range(count)
    ]
    for child in children:
        child.start()
    for _ in children:
        ready.get()
    started = time.perf_counter()
    go.set()
    reports = [out.get() for _ in children]
    seconds = time.perf_counter() - started
    for child in children:
        child.join()
    return seconds, reports


def _processes(
    settings: Settings, clip: Path, source: Path, count: int, repeats: int
) -> dict[str, Any]:
    """Aggregate fps of `count` pipelines side by side against one, interleaved rounds."""

    def run(n: int) -> Callable[[], Run]:
        def go() -> Run:
            seconds, reports = _spawned(settings, clip, source, n)
            return Run(frames=sum(r["frames"] for r in reports), seconds=seconds)

        return go

    rounds = interleave({"1": run(1), str(count): run(count)}, repeats=repeats)
    return {
        "count": count,
        "fps_1": spread([r["1"].fps for r in rounds]),
        f"fps_{count}": spread([r[str(count)].fps for r in rounds]),
        "speedup": per_round(rounds, lambda r: r[str(count)].fps / r["1"].fps),
    }


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across fork and exec, so a spawned child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory(
    settings: Settings, scratch: Path, source: Path, clip: Path, repeats: int
) -> dict[str, Any]:
    """Peak RSS and fps of end-to-end runs, each in a fresh process, interleaved over rounds:
    the light stand-in detector and one carrying a real detector's compute under the settings
    given, and the heavy one again with the detector batched (batch_size frames per call), so
    the table shows what batching costs in memory and buys in speed on this provider."""
    from facefusion_tasks.models.standin import make_test_models

    batch = settings.batch_size
    variants = {
        "light": (0.0, settings),
        "heavy": (HEAVY_DETECTOR_GFLOPS, settings),
        f"heavy, detector batch {batch}": (
            HEAVY_DETECTOR_GFLOPS,
            settings.replace(detector_batch=batch),
        ),
    }
    peaks: dict[str, list[int]] = {name: [] for name in variants}

    def run(name: str) -> Callable[[], Run]:
        gflops, chosen = variants[name]
        models = scratch / f"memory-{gflops:g}"
        if not models.is_dir():
            make_test_models(models, detector_gflops=gflops)

        def go() -> Run:
            seconds, (report,) = _spawned(_made_here(chosen, models), clip, source, 1)
            peaks[name].append(report["peak_rss_bytes"])
            return Run(frames=report["frames"], seconds=seconds)

        return go

    rounds = interleave({name: run(name) for name in variants}, repeats=repeats)
    batched = f"heavy, detector batch {batch}"
    return {
        "runs": {
            name: {
                "gflops": variants[name][0],
                "detector_batch": variants[name][1].detector_batch,
                "fps": spread([r[name].fps for r in rounds]),
                "peak_rss_bytes": max(peaks[name]),
            }
            for name in variants
        },
        "heavy_fps_vs_batched": per_round(rounds, lambda r: r["heavy"].fps / r[batched].fps),
    }


def _growth(settings: Settings, scratch: Path, source: Path) -> dict[str, Any]:
    """Peak RSS of an end-to-end run on a 1-minute and a 6-minute 320x240 clip, each in a fresh
    process: memory must not depend on the video's length."""
    from facefusion_tasks.video.samples import make_sample_video

    runs: dict[str, Any] = {}
    for minutes in (1, 6):
        clip = make_sample_video(
            scratch / f"long-{minutes}m.mp4", seconds=60 * minutes, width=320, height=240,
            faces=2, audio=True,
        )  # fmt: skip
        _, (runs[f"{minutes}min"],) = _spawned(settings, clip, source, 1)
        clip.unlink()
    growth = runs["6min"]["peak_rss_bytes"] - runs["1min"]["peak_rss_bytes"]
    return runs | {"growth_bytes": growth}
