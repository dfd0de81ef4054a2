"""The scripted check run on a lent GPU machine: which provider really ran, OOM text, NVML, fps.

Usage: python scripts/gpu_check.py OUTDIR. Every section is independent and records what it
saw (or the exception it got) in OUTDIR/gpu_check.json, so one failing step never hides the
rest. Nothing here is a test: it collects facts for the README and the issue notes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS: dict[str, Any] = {}


def section(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Run the decorated step now, storing its result or its error under `name`."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            RESULTS[name] = fn()
        except BaseException as exc:  # noqa: BLE001 - a check records every failure
            RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
            traceback.print_exc()
        RESULTS[name + "_seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps(RESULTS[name], default=str)[:3000], flush=True)
        return fn

    return wrap


def run(argv: list[str], timeout: float = 180) -> dict[str, Any]:
    """A subprocess's exit code and the tail of its output."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return {"argv": argv, "timeout": timeout, "out": str(exc.stdout)[-3000:]}
    return {"argv": argv, "rc": done.returncode, "out": (done.stdout + done.stderr)[-6000:]}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    import onnxruntime as ort

    @section("environment")
    def _env() -> Any:
        preload = None
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
            maps = Path("/proc/self/maps").read_text()
            preload = sorted({line.split()[-1] for line in maps.splitlines()
                              if "/nvidia/" in line and ".so" in line})  # fmt: skip
        smi = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,uuid",
                   "--format=csv,noheader"])  # fmt: skip
        return {
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "onnxruntime_file": ort.__file__,
            "device": ort.get_device(),
            "available_providers": ort.get_available_providers(),
            "preload_dlls": preload,
            "nvidia_smi": smi.get("out", "").strip(),
            "cpu_count": os.cpu_count(),
        }

    @section("doctor")
    def _doctor() -> Any:
        base = [sys.executable, "-m", "facefusion_tasks", "doctor"]
        return {
            "cuda": run([*base, "--execution-provider", "cuda"]),
            "json": run([*base, "--execution-provider", "cuda", "--json"]),
        }

    models = scratch / "models"

    @section("standin_models")
    def _models() -> Any:
        from facefusion_tasks.models.standin import make_test_models

        make_test_models(models, detector_gflops=10.0)
        return sorted(p.name for p in models.iterdir())

    def engine_for(provider: str, batch: int = 8) -> Any:
        from facefusion_tasks.config import Settings
        from facefusion_tasks.faces.loader import load_models

        settings = Settings.from_env(
            {}, models_dir=models, execution_provider=provider, batch_size=batch
        )
        return load_models(settings)

    def frames(count: int, width: int, height: int, faces: int) -> list[np.ndarray]:
        from facefusion_tasks.faces.synthetic import background, draw_face

        result = []
        for i in range(count):
            image = background(width, height, i)
            for f in range(faces):
                x = int(width * (f + 1) / (faces + 1))
                draw_face(image, x, height // 2, min(height // 4, width // (2 * faces + 2)))
            result.append(image)
        return result

    def source_image() -> Path:
        import cv2

        from facefusion_tasks.faces.synthetic import background, draw_face

        path = scratch / "source.png"
        image = background(256, 256, 0)
        draw_face(image, 128, 128, 90)
        cv2.imwrite(str(path), image)
        return path

    @section("inference_fps")
    def _fps() -> Any:
        report: dict[str, Any] = {}
        source = source_image()
        for provider, count in (("cuda", 240), ("cpu", 32)):
            loaded = engine_for(provider)
            engine = loaded.engine
            engine.set_source(source)
            active = {
                name: getattr(engine, name).session.get_providers()
                for name in ("detector", "embedder", "swapper")
                if hasattr(getattr(engine, name, None), "session")
            }
            for width, height, faces in ((1280, 720, 2), (1920, 1080, 8)):
                batch = frames(8, width, height, faces)
                engine.process(batch)  # warm-up: arena growth, cuDNN algorithm choice
                started = time.perf_counter()
                done = 0
                swapped = 0
                while done < count:
                    swapped += sum(engine.process(batch))
                    done += len(batch)
                elapsed = time.perf_counter() - started
                report[f"{provider} {width}x{height} {faces} faces"] = {
                    "fps": round(done / elapsed, 1),
                    "frames": done,
                    "faces_swapped": swapped,
                }
            report[f"{provider} facts"] = {"active": active, "facts": _facts(loaded)}
        return report

    @section("bench_cuda")
    def _bench() -> Any:
        argv = [sys.executable, "-m", "facefusion_tasks", "bench", "--execution-provider", "cuda",
                "--width", "1280", "--height", "720", "--seconds", "12", "--json"]  # fmt: skip
        return run(argv, timeout=240)

    @section("oom_arena_limit")
    def _oom_arena() -> Any:
        from facefusion_tasks.faces.backoff import BatchBackoff
        from facefusion_tasks.metrics.oom import classify_oom

        path = _swapper_path(models)
        report: dict[str, Any] = {}
        for limit_mb in (8, 16, 32, 64, 128, 256):
            session = _session(ort, path, {"gpu_mem_limit": limit_mb << 20})
            try:
                _run_swapper(session, 1)
            except Exception:  # noqa: BLE001 - too small even for one
                continue
            try:
                _run_swapper(session, 64)
                continue
            except Exception as exc:  # noqa: BLE001 - the OOM we are looking for
                report["gpu_mem_limit_mb"] = limit_mb
                report["text"] = str(exc)[:2000]
                report["kind"] = classify_oom(exc)
            backoff = BatchBackoff("inswapper_128", 64)
            buffer = io.StringIO()
            handler = logging.StreamHandler(buffer)
            logging.getLogger("facefusion_tasks").addHandler(handler)
            try:
                parts = backoff.run(64, functools.partial(_slice, session))
                report["backoff"] = {
                    "slices": len(parts),
                    "final_cap": backoff.limit,
                    "log": buffer.getvalue()[-2000:],
                }
            finally:
                logging.getLogger("facefusion_tasks").removeHandler(handler)
            return report
        report["note"] = "no limit gave batch 1 OK and batch 64 OOM"
        return report

    @section("oom_device_full")
    def _oom_full() -> Any:
        import torch

        from facefusion_tasks.metrics.oom import classify_oom

        free, total = torch.cuda.mem_get_info()
        hog = torch.empty(int(free - (96 << 20)), dtype=torch.uint8, device="cuda")
        report: dict[str, Any] = {"hogged_gib": round(hog.numel() / 2**30, 2),
                                  "total_gib": round(total / 2**30, 2)}  # fmt: skip
        try:
            session = _session(ort, _swapper_path(models), {})
            report["providers"] = session.get_providers()
            _run_swapper(session, 256)
            report["result"] = "no OOM"
        except Exception as exc:  # noqa: BLE001 - the OOM we are looking for
            report["text"] = str(exc)[:2000]
            report["kind"] = classify_oom(exc)
        finally:
            del hog
            torch.cuda.empty_cache()
        return report

    @section("nvml")
    def _nvml() -> Any:
        import pynvml

        pynvml.nvmlInit()
        report: dict[str, Any] = {"driver": pynvml.nvmlSystemGetDriverVersion()}
        session = _session(ort, _swapper_path(models), {})
        _run_swapper(session, 8)  # this process now holds CUDA memory
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            devices.append(
                {
                    "name": pynvml.nvmlDeviceGetName(handle),
                    "uuid": pynvml.nvmlDeviceGetUUID(handle),
                    "memory_used_mib": memory.used >> 20,
                    "memory_total_mib": memory.total >> 20,
                    "utilization": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                    "processes": [
                        {
                            "pid": p.pid,
                            "used_mib": (p.usedGpuMemory or 0) >> 20,
                            "self": p.pid == os.getpid(),
                        }
                        for p in procs
                    ],
                }
            )
        report["devices"] = devices
        from prometheus_client import CollectorRegistry, generate_latest

        from facefusion_tasks.metrics.gpu import GpuCollector

        registry = CollectorRegistry()
        registry.register(GpuCollector())
        report["exporter_text"] = generate_latest(registry).decode()[-3000:]
        return report

    @section("ffmpeg")
    def _ffmpeg() -> Any:
        from facefusion_tasks.video import ffbin

        exe = ffbin.ffmpeg_exe("")
        clip = scratch / "clip.mp4"
        make = run([exe, "-hide_banner", "-y", "-f", "lavfi", "-i", "testsrc2=s=1920x1080:r=30",
                    "-t", "10", "-c:v", "libx264", "-preset", "veryfast", str(clip)])  # fmt: skip
        started = time.perf_counter()
        hw = run([exe, "-hide_banner", "-loglevel", "verbose", "-hwaccel", "cuda",
                  "-hwaccel_output_format", "cuda", "-i", str(clip), "-f", "null", "-"])  # fmt: skip
        hw_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sw = run([exe, "-hide_banner", "-i", str(clip), "-f", "null", "-"])
        sw_seconds = time.perf_counter() - started
        started = time.perf_counter()
        x264 = run([exe, "-hide_banner", "-i", str(clip), "-c:v", "libx264", "-preset",
                    "veryfast", "-crf", "18", "-f", "null", "-"])  # fmt: skip
        x264_seconds = time.perf_counter() - started
        return {
            "exe": exe,
            "make_rc": make.get("rc"),
            "hwaccel_cuda": {
                "rc": hw.get("rc"),
                "seconds": round(hw_seconds, 2),
                "out": hw.get("out", "")[-2500:],
            },  # fmt: skip
            "software_decode_seconds_300_frames_1080p": round(sw_seconds, 2),
            "software_rc": sw.get("rc"),
            "libx264_veryfast_seconds_300_frames_1080p": round(x264_seconds, 2),
            "libx264_rc": x264.get("rc"),
            "h264_nvenc_works": ffbin.encoder_works(exe, "h264_nvenc"),
            "nvenc_trial": run(
                [
                    exe,
                    "-hide_banner",
                    "-f",
                    "lavfi",
                    "-i",
                    "color=black:s=256x256",
                    "-frames:v",
                    "1",
                    "-c:v",
                    "h264_nvenc",
                    "-f",
                    "null",
                    "-",
                ]
            ),  # fmt: skip
        }

    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    print(f"wrote {out / 'gpu_check.json'}")


def _facts(loaded: Any) -> Any:
    facts = getattr(loaded, "facts", None)
    return facts() if callable(facts) else None


def _swapper_path(models: Path) -> Path:
    from facefusion_tasks.faces.loader import _batch_cache, _dynamic_copy, model_paths

    path = model_paths(models)["swapper"]
    with contextlib.suppress(Exception):
        return _dynamic_copy(path, _batch_cache(models))
    return path


def _session(ort: Any, path: Path, extra: dict[str, Any]) -> Any:
    options = {"arena_extend_strategy": "kSameAsRequested", **extra}
    return ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", options)])


def _slice(session: Any, start: int, stop: int) -> Any:
    return _run_swapper(session, stop - start)


def _run_swapper(session: Any, batch: int) -> Any:
    feeds = {}
    for node in session.get_inputs():
        shape = [batch if not isinstance(d, int) or i == 0 else d for i, d in enumerate(node.shape)]
        feeds[node.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    return session.run(None, feeds)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check-out"))
