"""The scripted check run on a lent GPU machine: which provider really ran, OOM text, NVML, fps.

Usage: python scripts/gpu_check.py OUTDIR. Every section is independent and records what it
saw (or the exception it got) in OUTDIR/gpu_check.json, so one failing step never hides the
rest. Nothing here is a test: it collects facts for the README and the issue notes.
"""

from __future__ import annotations

import contextlib
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
#: Where the results go; rewritten after every section, so a check cut short keeps what it saw.
REPORT: list[Path] = []
#: Sections to run (`--only a,b`); empty = all.
ONLY: set[str] = set()
#: Timed repetitions per paste case, and frames through the 6-thread pool.
PASTE_REPS = int(os.environ.get("GPU_CHECK_PASTE_REPS", "30"))
PASTE_POOL_FRAMES = int(os.environ.get("GPU_CHECK_PASTE_POOL_FRAMES", "240"))


def section(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Run the decorated step now, storing its result or its error under `name`."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        if ONLY and name not in ONLY and name != "environment":
            return fn
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            RESULTS[name] = fn()
        except BaseException as exc:  # noqa: BLE001 - a check records every failure
            RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
            traceback.print_exc()
        RESULTS[name + "_seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps(RESULTS[name], default=str)[:3000], flush=True)
        for path in REPORT:
            path.write_text(json.dumps(RESULTS, indent=2, default=str))
        return fn

    return wrap


def run(argv: list[str], timeout: float = 180, env: Any = None) -> dict[str, Any]:
    """A subprocess's exit code and the tail of its output."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        return {"argv": argv, "timeout": timeout, "out": str(exc.stdout)[-3000:]}
    return {"argv": argv, "rc": done.returncode, "out": (done.stdout + done.stderr)[-6000:]}


def bench_json(argv: list[str], timeout: float = 240) -> dict[str, Any]:
    """A `bench --json` run, kept whole (run() keeps only an output tail): its report, or the
    exit code and output tail when it did not produce one."""
    env = os.environ | {"FACEFUSION_ALLOW_STANDIN_MODELS": "1"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        return dict(json.loads(done.stdout))
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return {"argv": argv, "error": repr(exc)[-3000:]}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    REPORT.append(out / "gpu_check.json")
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

    env = os.environ | {"FACEFUSION_ALLOW_STANDIN_MODELS": "1"}

    @section("provider_proof")
    def _proof() -> Any:
        proof = run([sys.executable, "-m", "facefusion_tasks.faces.probe", "cuda"], env=env)
        return proof | {"gpus": run([sys.executable, "-m", "facefusion_tasks.gpus"], env=env)}

    @section("doctor")
    def _doctor() -> Any:
        base = [sys.executable, "-m", "facefusion_tasks", "doctor", "--execution-provider", "cuda"]
        return {"text": run(base, env=env), "json": run([*base, "--json"], env=env)}

    models = scratch / "models"

    @section("standin_models")
    def _models() -> Any:
        from facefusion_tasks.models.standin import make_test_models

        make_test_models(models, detector_gflops=10.0)
        return sorted(p.name for p in models.iterdir())

    def settings_for(provider: str, **changes: Any) -> Any:
        from facefusion_tasks.config import Settings

        return Settings.from_env(
            {}, models_dir=models, execution_provider=provider, allow_standin_models=True,
            **changes,
        )  # fmt: skip

    @section("worker_gate")
    def _gate() -> Any:
        from facefusion_tasks.gpus import detect_gpus, discover, gpu_worker_refusal

        found, how = discover()
        pins = detect_gpus() or ["0"]
        return {
            "discovered": [str(g) for g in found],
            "how": how,
            "refusal_by_pin": {p: gpu_worker_refusal(settings_for("cuda"), p) for p in pins},
        }

    bench = [sys.executable, "-m", "facefusion_tasks", "bench", "--execution-provider", "cuda",
             "--models-dir", str(models), "--json", "--repeats", "3"]  # fmt: skip

    @section("bench_cuda_fp32_720p")
    def _bench32() -> Any:
        return run([*bench, "--width", "1280", "--height", "720", "--seconds", "8"], env=env)

    @section("bench_cuda_fp16_iobinding_720p")
    def _bench16() -> Any:
        argv = [*bench, "--width", "1280", "--height", "720", "--seconds", "8",
                "--precision", "fp16", "--io-binding"]  # fmt: skip
        return run(argv, env=env)

    @section("bench_cuda_fp32_1080p_8faces")
    def _bench1080() -> Any:
        argv = [*bench, "--width", "1920", "--height", "1080", "--seconds", "6", "--faces", "8"]
        return run(argv, env=env)

    @section("bench_ceiling")
    def _ceiling() -> Any:
        argv = [sys.executable, "-m", "facefusion_tasks", "bench", "--ceiling", "--json",
                "--execution-provider", "cuda", "--repeats", "3"]  # fmt: skip
        return run(argv, env=env, timeout=240)

    @section("paste_graph_cuda")
    def _paste_graph() -> Any:
        return _paste_graph_facts(scratch)

    @section("swap_cli_cuda_hwaccel")
    def _swap() -> Any:
        from facefusion_tasks.video.samples import make_sample_video

        clip = scratch / "clip.mp4"
        make_sample_video(clip, seconds=10, width=1920, height=1080, faces=2, audio=True)
        source = source_image()
        argv = [sys.executable, "-m", "facefusion_tasks", "swap", str(source), str(clip), "-o",
                str(scratch / "out.mp4"), "--execution-provider", "cuda", "--hwaccel", "cuda",
                "--models-dir", str(models), "--json", "--no-progress"]  # fmt: skip
        started = time.perf_counter()
        done = run(argv, env=env)
        result = done | {"seconds": round(time.perf_counter() - started, 2)}
        # The same swap with the paste graph on the GPU (its summary names where it ran).
        started = time.perf_counter()
        graph = run([*argv[:7], str(scratch / "out-graph.mp4"), *argv[8:], "--paste", "onnx"],
                    env=env)  # fmt: skip
        return result | {"paste_onnx": graph | {"seconds": round(time.perf_counter() - started, 2)}}

    @section("paste_gpu_memory_oom")
    def _paste_memory() -> Any:
        return _paste_memory_and_oom()

    @section("cuda_sync")
    def _cuda_sync() -> Any:
        # Does the calling thread spin while the GPU works (CUDA's default when a process has
        # fewer contexts than cores)? Each mode in fresh processes, alternated, twice.
        probes: dict[str, Any] = {}
        for round_ in range(2):
            for mode in ("spin", "blocking"):
                argv = [sys.executable, __file__, "--sync-probe", mode, str(models)]
                done = run(argv, timeout=120, env=env)
                try:
                    probes[f"{mode} {round_}"] = json.loads(done["out"].strip().splitlines()[-1])
                except (KeyError, IndexError, json.JSONDecodeError):
                    probes[f"{mode} {round_}"] = done
        return probes

    @section("bench_ceiling_paste")
    def _ceiling_paste() -> Any:
        # The graph on CUDA, with OpenCV's paste in the same rounds for the gain.
        argv = [sys.executable, "-m", "facefusion_tasks", "bench", "--ceiling", "--json",
                "--execution-provider", "cuda", "--repeats", "3", "--paste", "onnx"]  # fmt: skip
        return bench_json(argv, timeout=300)

    # The CPU side of a GPU host, which sets the pace once the models run on the GPU: the
    # ceiling (negligible-compute models, so the provider does not matter) with more per-frame
    # pool threads, and several pipelines against one. No onnxruntime-gpu needed.
    @section("host_ceiling_cpu_threads")
    def _host_ceiling() -> Any:
        argv = [sys.executable, "-m", "facefusion_tasks", "bench", "--ceiling", "--json",
                "--execution-provider", "cpu", "--repeats", "3", "--cpu-threads"]  # fmt: skip
        return {threads: bench_json([*argv, str(threads)]) for threads in (2, 6)}

    @section("host_processes")
    def _host_processes() -> Any:
        argv = [sys.executable, "-m", "facefusion_tasks", "bench", "--json", "--repeats", "3",
                "--execution-provider", "cpu", "--inference-threads", "1", "--width", "1280",
                "--height", "720", "--seconds", "6", "--processes", "2"]  # fmt: skip
        return run(argv, env=env, timeout=240)

    @section("oom_engine_gpu_mem_limit")
    def _oom_engine() -> Any:
        from facefusion_tasks.faces.loader import load_models

        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        logging.getLogger("facefusion_tasks").addHandler(handler)
        try:
            loaded = load_models(settings_for("cuda", batch_size=32, gpu_mem_limit=1 << 30))
            engine = loaded.engine
            engine.set_source(source_image())
            batch = frames(32, 1280, 720, 2)
            swapped = sum(engine.process(batch))
        except Exception as exc:  # noqa: BLE001 - what happened is the finding
            return {
                "error": f"{type(exc).__name__}: {exc}"[:3000],
                "log": buffer.getvalue()[-3000:],
            }
        finally:
            logging.getLogger("facefusion_tasks").removeHandler(handler)
        return {"faces_swapped": swapped, "log": buffer.getvalue()[-3000:]}

    @section("oom_device_full")
    def _oom_full() -> Any:
        # Another process takes the GPU's memory while a worker's session is warm: the arena
        # must grow for a big batch and cannot; the back-off halves the batch until it fits.
        import torch

        from facefusion_tasks.faces.backoff import BatchBackoff
        from facefusion_tasks.metrics.oom import classify_oom

        session = _session(ort, _swapper_path(models), {})
        _run_swapper(session, 8)  # warm: cuDNN handle, arena, algorithms
        free, total = torch.cuda.mem_get_info()
        hog = torch.empty(int(free - (160 << 20)), dtype=torch.uint8, device="cuda")
        report: dict[str, Any] = {"left_free_mib": 160, "total_gib": round(total / 2**30, 2)}
        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        logging.getLogger("facefusion_tasks").addHandler(handler)
        try:
            try:
                _run_swapper(session, 1024)
                report["direct_1024"] = "no OOM"
            except Exception as exc:  # noqa: BLE001 - the OOM we are looking for
                report["direct_1024_text"] = str(exc)[:2000]
                report["direct_1024_kind"] = classify_oom(exc)
            backoff = BatchBackoff("inswapper_128", 1024)
            try:
                parts = backoff.run(1024, lambda a, b: _run_swapper(session, b - a))
                report["backoff"] = {"slices": len(parts), "final_cap": backoff.limit}
            except Exception as exc:  # noqa: BLE001 - GpuOutOfMemory at batch 1
                report["backoff_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            try:
                fresh = _session(ort, _swapper_path(models), {})
                _run_swapper(fresh, 8)
                report["new_session"] = "ran"
            except Exception as exc:  # noqa: BLE001 - a session started under pressure
                report["new_session_text"] = str(exc)[:2000]
                report["new_session_kind"] = classify_oom(exc)
        finally:
            logging.getLogger("facefusion_tasks").removeHandler(handler)
            report["log"] = buffer.getvalue()[-3000:]
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


def _paste_graph_facts(scratch: Path) -> dict[str, Any]:
    """The paste graph on CUDA: where each node ran (onnxruntime's profile), how far its frames
    are from paste_back's, and the CPU and wall time a frame costs either way, one thread and
    six (the per-frame pool's size on such a host)."""
    import concurrent.futures
    import functools

    import onnxruntime as ort

    from facefusion_tasks.faces.gpupaste import GpuPaster, paste_model
    from facefusion_tasks.faces.paste import (
        Feather,
        feather_mask,
        framed_source,
        paste_back,
        source_map,
    )

    feather = Feather.of(feather_mask(128))
    choice = _paste_choice()
    providers = list(choice.providers)
    paster = GpuPaster(choice, side=130)
    report: dict[str, Any] = {"provider": paster.provider}
    rng = np.random.default_rng(0)

    def case(width: int, height: int, count: int) -> tuple[Any, list[Any]]:
        return _paste_case(rng, width, height, count, turn=0.4)

    # Placement: a profiled session of the same graph, one run.
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / "paste_profile")
    profiled = ort.InferenceSession(
        paste_model(130).SerializeToString(), sess_options=options, providers=providers
    )
    frame, faces = case(1920, 1080, 8)
    profiled.run(["pasted"], {
        "frame": frame,
        "sources": np.stack([framed_source(c, feather) for c, _ in faces]),
        "maps": np.stack([source_map(m) for _, m in faces]).astype(np.float32),
    })  # fmt: skip
    events = json.loads(Path(profiled.end_profiling()).read_text())
    placed: dict[str, set[str]] = {}
    for event in events:
        provider = event.get("args", {}).get("provider")
        if event.get("cat") == "Node" and provider:
            placed.setdefault(provider, set()).add(event["args"].get("op_name", event["name"]))
    report["node_ops_by_provider"] = {k: sorted(v) for k, v in placed.items()}

    # Agreement with paste_back, frame by frame.
    counts = np.zeros(256, np.int64)
    for trial in range(12):
        frame, faces = case(1280, 720, 1 + trial % 8)
        expected, got = frame.copy(), frame.copy()
        for crop, matrix in faces:
            paste_back(expected, crop, matrix, feather)
        paster.paste(got, faces, feather)
        counts += np.bincount(np.abs(got.astype(int) - expected).ravel(), minlength=256)
    report["difference_histogram"] = {str(i): int(c) for i, c in enumerate(counts) if c}

    def pooled(fn: Callable[[Any], None], frame: Any, frames: int) -> float:
        # A frame of its own for each of the 6 threads, as the pipeline's pool has.
        own = [frame.copy() for _ in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: fn(own[i % 6]), range(6)))
            started = time.perf_counter()
            list(pool.map(lambda i: fn(own[i % 6]), range(frames)))
            return round(frames / (time.perf_counter() - started), 1)

    timings: dict[str, Any] = {}
    for width, height, count in ((1280, 720, 2), (1280, 720, 8), (1920, 1080, 2), (1920, 1080, 8)):
        frame, faces = case(width, height, count)
        work = frame.copy()

        def on_cpu(work: Any, faces: Any = faces) -> None:
            for crop, matrix in faces:
                paste_back(work, crop, matrix, feather)

        def on_graph(work: Any, faces: Any = faces) -> None:
            paster.paste(work, faces, feather)

        timings[f"{height}p {count} faces"] = {
            "opencv": _timed(functools.partial(on_cpu, work), PASTE_REPS)
            | {"fps_6_threads": pooled(on_cpu, frame, PASTE_POOL_FRAMES)},
            "graph": _timed(functools.partial(on_graph, work), PASTE_REPS)
            | {"fps_6_threads": pooled(on_graph, frame, PASTE_POOL_FRAMES)},
        }
    report["per_frame"] = timings
    report["process_gpu_mib"] = _own_gpu_mib()
    return report


def _paste_memory_and_oom() -> dict[str, Any]:
    """The paste graph's GPU memory as frames grow (NVML, this process), then a real CUDA
    out-of-memory in it: another allocation takes the device's free memory and a frame bigger
    than any before must grow the arena. The frame should come out as OpenCV's paste, counted
    under facefusion_gpu_oom_total{model="paste"}; the session should run again once memory is
    back."""
    import torch
    from prometheus_client import REGISTRY

    from facefusion_tasks.faces.gpupaste import GpuPaster
    from facefusion_tasks.faces.paste import Feather, feather_mask, paste_back

    rng = np.random.default_rng(1)
    feather = Feather.of(feather_mask(128))

    def case(width: int, height: int, count: int) -> tuple[Any, list[Any]]:
        return _paste_case(rng, width, height, count)

    def oom_count() -> float:
        total = 0.0
        for family in REGISTRY.collect():
            for sample in family.samples:
                if (
                    sample.name == "facefusion_gpu_oom_total"
                    and sample.labels.get("model") == "paste"
                ):
                    total += sample.value
        return total

    report: dict[str, Any] = {"before_session_mib": _own_gpu_mib()}
    paster = GpuPaster(_paste_choice(), side=130)
    report["provider"] = paster.provider
    report["after_session_mib"] = _own_gpu_mib()
    grown: dict[str, Any] = {}
    for width, height, count in ((1280, 720, 2), (1920, 1080, 8), (3840, 2160, 8), (4000, 3000, 8)):
        frame, faces = case(width, height, count)
        paster.paste(frame, faces, feather)
        grown[f"{width}x{height} {count} faces"] = _own_gpu_mib()
    report["process_mib_after_frame"] = grown

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logging.getLogger("facefusion_tasks").addHandler(handler)
    free, total = torch.cuda.mem_get_info()
    hog = torch.empty(int(free - (96 << 20)), dtype=torch.uint8, device="cuda")
    try:
        before = oom_count()
        frame, faces = case(7680, 4320, 8)
        expected, got = frame.copy(), frame.copy()
        for crop, matrix in faces:
            paste_back(expected, crop, matrix, feather)
        started = time.perf_counter()
        paster.paste(got, faces, feather)
        report["oom_frame_seconds"] = round(time.perf_counter() - started, 3)
        report["oom_counted"] = oom_count() - before
        report["oom_frame_max_difference"] = int(np.abs(got.astype(int) - expected).max())
    except Exception as exc:  # noqa: BLE001 - an OOM that escaped is the finding
        report["oom_escaped"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        logging.getLogger("facefusion_tasks").removeHandler(handler)
        report["log"] = buffer.getvalue()[-2000:]
        del hog
        torch.cuda.empty_cache()
    try:
        frame, faces = case(7680, 4320, 8)
        before = oom_count()
        paster.paste(frame, faces, feather)
        report["after_oom_8k_on_gpu"] = {"oom_counted": oom_count() - before,
                                         "process_mib": _own_gpu_mib()}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the session did not recover
        report["after_oom_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    return report


def _sync_probe(mode: str, models: Path) -> dict[str, Any]:
    """Wall and calling-thread CPU per call of the paste graph (1080p, 8 faces) and of the
    heavy stand-in detector (batch 8), with the device's primary context set to block on
    synchronisation (`blocking`, CU_CTX_SCHED_BLOCKING_SYNC through the driver API, before
    any context exists) or left at CUDA's default (`spin`)."""
    import ctypes

    report: dict[str, Any] = {"mode": mode}
    if mode == "blocking":
        cuda = ctypes.CDLL("libcuda.so.1")
        device = ctypes.c_int()
        report["cuInit"] = cuda.cuInit(0)
        report["cuDeviceGet"] = cuda.cuDeviceGet(ctypes.byref(device), 0)
        report["cuDevicePrimaryCtxSetFlags"] = cuda.cuDevicePrimaryCtxSetFlags(device, 4)
    import onnxruntime as ort

    from facefusion_tasks.faces.gpupaste import GpuPaster
    from facefusion_tasks.faces.loader import _dynamic_copy, batch_cache, model_paths
    from facefusion_tasks.faces.paste import Feather, feather_mask

    rng = np.random.default_rng(0)
    feather = Feather.of(feather_mask(128))
    paster = GpuPaster(_paste_choice(), side=130)
    frame, faces = _paste_case(rng, 1920, 1080, 8, radius=1080 / 4 * 0.8)
    detector = _session(ort, _dynamic_copy(model_paths(models)["detector"], batch_cache(models),
                                           folded_ok=True), {})  # fmt: skip

    paste = _timed(lambda: paster.paste(frame.copy(), faces, feather), PASTE_REPS, warm=2)
    report["paste_1080p_8_faces"] = paste
    report["detector_batch_8"] = _timed(lambda: _run_swapper(detector, 8), PASTE_REPS, warm=2)
    if mode == "blocking":
        flags, active = ctypes.c_uint(), ctypes.c_int()
        device = ctypes.c_int()
        cuda.cuDeviceGet(ctypes.byref(device), 0)
        cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active))
        report["primary_ctx_flags"], report["primary_ctx_active"] = flags.value, active.value
    return report


def _paste_choice() -> Any:
    """The paste sections' provider: CUDA (the CPU kept for the graph's shape arithmetic), or
    the CPU alone for a smoke run on a machine without a GPU (GPU_CHECK_PASTE_PROVIDER=cpu)."""
    from facefusion_tasks.faces.sessions import CPU, CUDA, ProviderChoice

    if os.environ.get("GPU_CHECK_PASTE_PROVIDER") == "cpu":
        return ProviderChoice("cpu", (CPU,))
    return ProviderChoice("cuda", (CUDA, CPU))


def _paste_case(
    rng: Any, width: int, height: int, count: int, *, turn: float = 0.0,
    radius: float | None = None,
) -> tuple[Any, list[Any]]:  # fmt: skip
    """A frame of noise and `count` faces of noise across its middle, as (crop, frame->crop
    affine) pairs; each tilted by up to `turn` radians either way."""
    from facefusion_tasks.faces import align

    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if radius is None:
        radius = min(height / 4, width / (2 * count + 2)) * 1.3
    faces = []
    for i in range(count):
        angle = rng.uniform(-turn, turn) if turn else 0.0
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        # The template spans about half the crop: a face of `radius` px is 2*radius/64 crops.
        centre = (width * (i + 1) / (count + 1), height / 2)
        kps = (align.ARCFACE_TEMPLATE - 64) @ rotation.T * (radius / 32) + centre
        crop = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        faces.append((crop, align.estimate_norm(kps.astype(np.float32), 128)))
    return frame, faces


def _timed(fn: Callable[[], Any], reps: int, *, warm: int = 1) -> dict[str, float]:
    """Wall and calling-thread CPU per call, in ms, after `warm` untimed calls."""
    for _ in range(warm):
        fn()
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(reps):
        fn()
    return {
        "wall_ms": round((time.perf_counter() - wall) / reps * 1000, 3),
        "cpu_ms": round((time.thread_time() - cpu) / reps * 1000, 3),
    }


def _own_gpu_mib() -> Any:
    """GPU memory NVML charges to this process (the paste sessions' arenas), or why unknown."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return sum((p.usedGpuMemory or 0) >> 20 for p in procs if p.pid == os.getpid())
    except Exception as exc:  # noqa: BLE001 - a fact we may not get in a container
        return f"{type(exc).__name__}: {exc}"


def _facts(loaded: Any) -> Any:
    facts = getattr(loaded, "facts", None)
    return facts() if callable(facts) else None


def _swapper_path(models: Path) -> Path:
    from facefusion_tasks.faces.loader import _dynamic_copy, batch_cache, model_paths

    path = model_paths(models)["swapper"]
    with contextlib.suppress(Exception):
        return _dynamic_copy(path, batch_cache(models))
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
    if len(sys.argv) == 4 and sys.argv[1] == "--sync-probe":
        print(json.dumps(_sync_probe(sys.argv[2], Path(sys.argv[3]))))
        sys.exit(0)
    if len(sys.argv) > 3 and sys.argv[2] == "--only":
        ONLY.update(sys.argv[3].split(","))
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check-out"))
