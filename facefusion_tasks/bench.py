"""`facefusion-tasks bench`: end-to-end vs transcode-only vs inference-only, in one run."""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facefusion_tasks.config import Settings
from facefusion_tasks.faces.engine import StageClock
from facefusion_tasks.faces.loader import load_models
from facefusion_tasks.local import _has_real_models
from facefusion_tasks.pipeline import SwapJob, run_swap

#: At most this many frames are held in memory for the inference-only measurement.
_INFERENCE_FRAMES = 240


class PassthroughEngine:
    """Same interface as FaceEngine, no models: measures the plumbing alone."""

    def __init__(self) -> None:
        self.clock = StageClock()

    def process(self, frames: Sequence[np.ndarray]) -> list[int]:
        return [0] * len(frames)


def _models_for(settings: Settings, scratch: Path) -> tuple[Settings, bool]:
    if _has_real_models(settings.models_dir):
        return settings, False
    from facefusion_tasks.models.standin import make_test_models

    make_test_models(scratch / "models")
    # The bench made these stand-ins itself: loading them is asked for here.
    return settings.replace(models_dir=scratch / "models", allow_standin_models=True), True


def _source_image(scratch: Path) -> Path:
    import cv2

    from facefusion_tasks.faces.synthetic import background, draw_face

    path = scratch / "source.png"
    image = background(256, 256, 0)
    draw_face(image, 128, 128, 90)
    cv2.imwrite(str(path), image)
    return path


def _inference_only(engine: Any, clip: Path, settings: Settings) -> tuple[int, float]:
    """Frames per second of the models alone, on frames decoded beforehand."""
    from facefusion_tasks.video.probe import probe
    from facefusion_tasks.video.reader import FrameReader

    frames = []
    with FrameReader(probe(clip, ffmpeg=settings.ffmpeg), ffmpeg=settings.ffmpeg) as reader:
        for frame in reader:
            frames.append(frame.image.copy())
            if len(frames) >= _INFERENCE_FRAMES:
                break
    started = time.perf_counter()
    for i in range(0, len(frames), settings.batch_size):
        engine.process(frames[i : i + settings.batch_size])
    return len(frames), time.perf_counter() - started


def _peak_rss_child(clip: str, source: str, settings: Settings, out: Any) -> None:
    models = load_models(settings)
    models.engine.set_source(Path(source))
    output = Path(clip).with_name(Path(clip).stem + "-swapped.mp4")
    result = run_swap(SwapJob(Path(source), Path(clip), output), models.engine, settings)
    out.put({"frames": result.frames, "peak_rss_bytes": peak_rss()})


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across fork and exec, so a spawned child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory(
    settings: Settings, scratch: Path, source: Path, width: int, height: int
) -> dict[str, Any]:
    """Peak RSS of an end-to-end run on a 1-minute and a 6-minute clip, each in a fresh process."""
    from facefusion_tasks.video.samples import make_sample_video

    ctx = mp.get_context("spawn")
    runs: dict[str, Any] = {}
    for minutes in (1, 6):
        clip = make_sample_video(
            scratch / f"long-{minutes}m.mp4", seconds=60 * minutes, width=width, height=height,
            faces=2, audio=True,
        )  # fmt: skip
        queue = ctx.Queue()
        child = ctx.Process(target=_peak_rss_child, args=(str(clip), str(source), settings, queue))
        child.start()
        runs[f"{minutes}min"] = queue.get()
        child.join()
        clip.unlink()
    growth = runs["6min"]["peak_rss_bytes"] - runs["1min"]["peak_rss_bytes"]
    return runs | {"growth_bytes": growth, "width": width, "height": height}


def run_bench(
    settings: Settings, *, seconds: float = 20.0, width: int = 640, height: int = 360,
    memory: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Measure the three throughputs on the same clip and models, and the overlap ratio."""
    from facefusion_tasks.video.samples import make_sample_video

    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        scratch = Path(tmp)
        settings, standin = _models_for(settings, scratch)
        clip = make_sample_video(
            scratch / "clip.mp4", seconds=seconds, width=width, height=height, faces=2, audio=True
        )
        source = _source_image(scratch)
        loaded = load_models(settings)
        loaded.engine.set_source(source)
        job = SwapJob(source, clip, scratch / "out.mp4")

        transcode = run_swap(job, PassthroughEngine(), settings)  # type: ignore[arg-type]
        n_inf, t_inf = _inference_only(loaded.engine, clip, settings)
        e2e = run_swap(job, loaded.engine, settings)
        inference_seconds = e2e.frames * t_inf / n_inf
        report: dict[str, Any] = {
            "machine": f"{platform.machine()} {mp.cpu_count()} cores, {platform.platform()}",
            "provider": loaded.active_provider,
            "standin_models": standin,
            "clip": {"seconds": seconds, "width": width, "height": height, "frames": e2e.frames},
            "batch_size": settings.batch_size,
            "swapper_batched": loaded.swapper_batched,
            "end_to_end_fps": e2e.fps,
            "transcode_only_fps": transcode.fps,
            "inference_only_fps": n_inf / t_inf,
            "end_to_end_seconds": e2e.seconds,
            "transcode_only_seconds": transcode.seconds,
            "inference_only_seconds": inference_seconds,
            "ratio": e2e.seconds / (transcode.seconds + inference_seconds),
            "stage_seconds": e2e.stage_seconds,
            "faces_swapped": e2e.faces_swapped,
            "peak_rss_bytes": peak_rss(),
        }
        if memory:
            report["memory"] = _memory(settings, scratch, source, 320, 240)
        return report


def render(report: dict[str, Any]) -> str:
    """A Markdown table, ready for the README."""
    rows = [
        ("machine", report["machine"]),
        ("models", "stand-in" if report["standin_models"] else "real")
        , ("provider", report["provider"]),
        ("clip", "{seconds:g} s, {width}x{height}, {frames} frames".format(**report["clip"])),
        ("batch size / swapper batched", f"{report['batch_size']} / {report['swapper_batched']}"),
        ("end-to-end", f"{report['end_to_end_fps']:.1f} fps ({report['end_to_end_seconds']:.2f} s)"),
        ("transcode only", f"{report['transcode_only_fps']:.1f} fps ({report['transcode_only_seconds']:.2f} s)"),
        ("inference only", f"{report['inference_only_fps']:.1f} fps ({report['inference_only_seconds']:.2f} s)"),
        ("end-to-end / (transcode + inference)", f"{report['ratio']:.3f}"),
        ("stage seconds (e2e)", ", ".join(f"{k} {v:.2f}" for k, v in sorted(report["stage_seconds"].items()))),
        ("peak RSS (bench process)", f"{report['peak_rss_bytes'] / 2**20:.0f} MiB"),
    ]  # fmt: skip
    if "memory" in report:
        mem = report["memory"]
        rows.append(
            (
                f"peak RSS, 1 min vs 6 min ({mem['width']}x{mem['height']})",
                f"{mem['1min']['peak_rss_bytes'] / 2**20:.0f} MiB vs "
                f"{mem['6min']['peak_rss_bytes'] / 2**20:.0f} MiB "
                f"(growth {mem['growth_bytes'] / 2**20:+.1f} MiB)",
            )
        )
    table = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(table) + "\n\n" + json.dumps(report, sort_keys=True)
