"""`facefusion-tasks doctor`: what this host can run, and what is misconfigured."""

from __future__ import annotations

import importlib.metadata as metadata
from typing import Any

from facefusion_tasks.config import Settings

_CLASHES = (
    # (the build that must win, the build that shadows it when both are installed, the fix)
    (
        "onnxruntime-gpu",
        "onnxruntime",
        "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu",
    ),
    (
        "opencv-python-headless",
        "opencv-python",
        "pip uninstall -y opencv-python && "
        "pip install --force-reinstall --no-deps opencv-python-headless",
    ),
)


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _ffmpeg(settings: Settings) -> dict[str, Any]:
    from facefusion_tasks.video import ffbin

    try:
        exe = ffbin.ffmpeg_exe(settings.ffmpeg)
    except Exception as exc:
        return {"ok": False, "error": str(exc)}
    encoders = ffbin.encoders(exe)
    hwaccels = ffbin.hwaccels(exe)
    wanted = ["libx264", "libx265", "h264_nvenc", "hevc_nvenc"]
    return {
        "ok": "libx264" in encoders,
        "path": exe,
        "version": ".".join(map(str, ffbin.ffmpeg_version(exe))),
        "ffprobe": ffbin.ffprobe_exe(),
        # Listed is not usable: Debian's ffmpeg lists nvenc on machines without NVIDIA GPUs.
        "encoders": {
            name: ("usable" if ffbin.encoder_works(exe, name) else "listed, fails")
            if name in encoders
            else "absent"
            for name in wanted
        },
        "hwaccels": sorted(hwaccels),
    }


def _onnxruntime() -> dict[str, Any]:
    import onnxruntime as ort

    from facefusion_tasks.faces.sessions import CUDA, choose_providers, gpu_present

    clashes = []
    for wanted, shadow, fix in _CLASHES:
        if _installed(wanted) and _installed(shadow):
            clashes.append(
                f"{shadow} {_installed(shadow)} shadows {wanted} {_installed(wanted)}: {fix}"
            )
    gpu_build = _installed("onnxruntime-gpu")
    if gpu_build and CUDA not in ort.get_available_providers():
        clashes.append(
            "onnxruntime-gpu is installed but the imported onnxruntime has no CUDA provider "
            "(another onnxruntime build wins the import)"
        )
    usable = choose_providers("auto").providers
    return {
        "ok": not clashes,
        "version": ort.__version__,
        "module": ort.__file__,
        "build": ort.get_device(),
        "available_providers": ort.get_available_providers(),
        "usable_providers": list(usable),
        "gpu_device_present": gpu_present(),
        "clashes": clashes,
    }


def _gpus() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return {"count": 0, "note": f"no NVIDIA driver/GPU visible ({type(exc).__name__})"}
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            devices.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total_bytes": int(memory.total),
                    "memory_used_bytes": int(memory.used),
                }
            )
        return {"count": len(devices), "devices": devices}
    finally:
        pynvml.nvmlShutdown()


def _models(settings: Settings) -> dict[str, Any]:
    from facefusion_tasks.models.download import verify_models
    from facefusion_tasks.models.standin import is_standin

    states = verify_models(settings.models_dir)
    standin = [n for n in states if is_standin(settings.models_dir / n)]
    for name in standin:
        # Stand-ins never match the real digests; that is what they are, not corruption.
        states[name] = "stand-in (tests and demos only; not the real model)"
    return {
        "ok": all(s in {"ok", "unpinned (recorded)"} or n in standin for n, s in states.items()),
        "dir": str(settings.models_dir),
        "files": states,
        "standin": standin,
    }


def diagnose(settings: Settings) -> dict[str, Any]:
    """Everything worth knowing before running a job, as a JSON-ready dict."""
    report: dict[str, Any] = {
        "ffmpeg": _ffmpeg(settings),
        "onnxruntime": _onnxruntime(),
        "gpus": _gpus(),
        "models": _models(settings),
    }
    report["ok"] = all(report[k]["ok"] for k in ("ffmpeg", "onnxruntime", "models"))
    return report


def render(report: dict[str, Any]) -> str:
    """The report for a terminal."""
    ff, rt, gpus, models = report["ffmpeg"], report["onnxruntime"], report["gpus"], report["models"]
    mark = {True: "ok ", False: "BAD"}
    lines = [
        f"[{mark[ff['ok']]}] ffmpeg {ff.get('version', '?')} at {ff.get('path', ff.get('error'))}"
        f" (ffprobe: {ff.get('ffprobe') or 'none'})",
    ]
    if "encoders" in ff:
        have = [
            n if s == "usable" else f"{n} ({s})" for n, s in ff["encoders"].items() if s != "absent"
        ]
        lines.append(
            f"      encoders: {', '.join(have)}; hwaccels: {', '.join(ff['hwaccels']) or 'none'}"
        )
    lines.append(
        f"[{mark[rt['ok']]}] onnxruntime {rt['version']} ({rt['build']}): "
        f"available {', '.join(rt['available_providers'])}; will use {', '.join(rt['usable_providers'])}"
    )
    lines += [f"      CLASH: {c}" for c in rt["clashes"]]
    if gpus["count"]:
        for d in gpus["devices"]:
            lines.append(
                f"[ok ] GPU {d['index']}: {d['name']}, {d['memory_total_bytes'] / 2**30:.1f} GiB"
            )
    else:
        lines.append(f"[-- ] GPUs: {gpus['note']}")
    lines.append(f"[{mark[models['ok']]}] models in {models['dir']}:")
    for name, state in models["files"].items():
        lines.append(f"      {name}: {state}")
    return "\n".join(lines)
