"""`facefusion-tasks doctor`: what this host really runs on, and what is misconfigured.

Nothing here imports Celery, Redis or ffmpeg-python: a bare GPU box with onnxruntime-gpu,
numpy, onnx and OpenCV can run `python -m facefusion_tasks doctor --execution-provider cuda`."""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

from facefusion_tasks.config import Settings

_CLASHES = (
    # (the build that must win, the build that shadows it, their shared import name, the fix)
    (
        "onnxruntime-gpu",
        "onnxruntime",
        "onnxruntime",
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'facefusion-tasks[gpu]'",
    ),
    (
        "opencv-python-headless",
        "opencv-python",
        "cv2",
        "pip uninstall -y opencv-python && "
        "pip install --force-reinstall --no-deps opencv-python-headless",
    ),
)

#: The onnxruntime builds one of which must be installed (the `cpu` or `gpu` extra).
_ORT_BUILDS = ("onnxruntime-gpu", "onnxruntime")

#: Frames per engine check batch, and how many timed batches after one warm-up.
_ENGINE_FRAMES, _ENGINE_ROUNDS = 8, 3


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _ffmpeg(settings: Settings) -> dict[str, Any]:
    from facefusion_tasks.video import ffbin
    from facefusion_tasks.video.codecs import ENCODERS

    try:
        exe = ffbin.ffmpeg_exe(settings.ffmpeg)
        encoders = ffbin.encoders(exe)
        hwaccels = ffbin.hwaccels(exe)
        version = ".".join(map(str, ffbin.ffmpeg_version(exe)))
    except Exception as exc:
        return {"ok": False, "error": str(exc)}
    wanted = ENCODERS
    return {
        "ok": "libx264" in encoders,
        "path": exe,
        "version": version,
        "ffprobe": ffbin.ffprobe_exe(),
        # Listed is not usable: Debian's ffmpeg lists nvenc on machines without NVIDIA GPUs, and
        # H100/H200/A100 have no NVENC at all. Only a trial encode says "usable".
        "encoders": {
            name: ("usable" if ffbin.encoder_works(exe, name) else "listed, fails")
            if name in encoders
            else "absent"
            for name in wanted
        },
        "hwaccels": sorted(hwaccels),
        # `-hwaccel cuda` silently decodes on the CPU when it cannot start; a trial decode that
        # keeps frames on the GPU is the only proof.
        "hwaccel_cuda": ("usable" if ffbin.hwaccel_works(exe, "cuda") else "listed, fails")
        if "cuda" in hwaccels
        else "absent",
    }


def _clashes() -> list[str]:
    found = []
    for wanted, shadow, module, fix in _CLASHES:
        if _installed(wanted) and _installed(shadow) and _shadows(shadow, wanted, module):
            found.append(
                f"{shadow} {_installed(shadow)} shadows {wanted} {_installed(wanted)}: {fix}"
            )
    return found


def _shadows(shadow: str, wanted: str, module: str) -> bool:
    """Whether two builds of one import name really collide: installed in the same directory
    (their files overwrite each other, and uninstalling one breaks the other) or the shadow is
    what `import` finds. A build put first on sys.path in its own directory (a --target install
    beside a preinstalled CPU build) is not a clash."""
    try:
        shadow_dir = Path(str(metadata.distribution(shadow).locate_file(""))).resolve()
        wanted_dir = Path(str(metadata.distribution(wanted).locate_file(""))).resolve()
        spec = importlib.util.find_spec(module)
    except (metadata.PackageNotFoundError, ImportError, ValueError):
        return True  # cannot tell: say so rather than miss it
    if shadow_dir == wanted_dir or spec is None or spec.origin is None:
        return True
    return Path(spec.origin).resolve().is_relative_to(shadow_dir)


def _onnxruntime(settings: Settings) -> dict[str, Any]:
    """The build, clashes, and proof: a session per provider on a tiny model, really run."""
    from facefusion_tasks.faces.probe import prove

    clashes = _clashes()
    builds = {b: _installed(b) for b in _ORT_BUILDS if _installed(b)}
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {
            "ok": False,
            "error": f"no onnxruntime installed ({exc}): reinstall facefusion-tasks (it brings "
            "onnxruntime-gpu); on an NVIDIA host 'facefusion-tasks[gpu]' adds its CUDA libraries",
            "clashes": clashes,
            "proofs": {},
        }
    available = ort.get_available_providers()
    if _installed("onnxruntime-gpu") and "CUDAExecutionProvider" not in available:
        clashes.append(
            "onnxruntime-gpu is installed but the imported onnxruntime has no CUDA provider "
            "(another onnxruntime build wins the import)"
        )
    proofs = {"cpu": prove("cpu")}
    if "CUDAExecutionProvider" in available or settings.execution_provider == "cuda":
        proofs["cuda"] = prove("cuda", gpu_mem_limit=settings.gpu_mem_limit)
    notes = []
    if "TensorrtExecutionProvider" in available:
        notes.append(
            "TensorrtExecutionProvider is in this build but not offered by facefusion-tasks "
            "(no shape profiles, engine cache or TensorRT libraries); workers use CUDA"
        )
    return {
        "ok": not clashes and proofs["cpu"].ok,
        "version": ort.__version__,
        "module": ort.__file__,
        "build": ort.get_device(),
        "installed_builds": builds,
        "available_providers": available,
        "proofs": {name: proof.as_dict() for name, proof in proofs.items()},
        "clashes": clashes,
        "notes": notes,
    }


def _gpus() -> dict[str, Any]:
    from facefusion_tasks.gpus import discover

    gpus, note = discover()
    if not gpus:
        return {"count": 0, "note": note or "no NVIDIA GPU visible"}
    devices = [
        {"cuda_index": g.cuda_index, "uuid": g.uuid, "name": g.name, "mig": g.mig} for g in gpus
    ]
    return {"count": len(devices), "devices": devices, "note": note}


def _models(settings: Settings) -> dict[str, Any]:
    try:
        from facefusion_tasks.models.digests import (
            GOOD_STATUSES,
            TRUSTED,
            trusted_digests,
            verify_models,
        )
        from facefusion_tasks.models.standin import is_standin
    except ImportError as exc:
        return {"ok": False, "dir": str(settings.models_dir), "files": {}, "error": str(exc)}

    states = verify_models(settings.models_dir)
    trusted = trusted_digests(settings.models_dir)
    # A file trusted on purpose is judged by that record, even a stand-in.
    standin = [n for n, s in states.items() if s != TRUSTED and is_standin(settings.models_dir / n)]
    allowed = settings.allow_standin_models
    for name in standin:
        # Stand-ins never match the real digests; that is what they are, not corruption. They
        # load only where asked for, and doctor says which way this host is set.
        states[name] = (
            "stand-in (tests and demos only; not the real model)"
            if allowed
            else "stand-in: refused (FACEFUSION_ALLOW_STANDIN_MODELS=1 is for tests and demos)"
        )
    return {
        "ok": all(s in GOOD_STATUSES or (n in standin and allowed) for n, s in states.items()),
        "dir": str(settings.models_dir),
        "files": states,
        "standin": standin,
        # Apart from the pinned files: digests the user chose with `models trust`.
        "trusted": trusted,
    }


def _engine(settings: Settings) -> dict[str, Any]:
    """The three models loaded as a worker loads them, one frame batch through detect and swap,
    timed: which provider really ran the face engine (stand-ins when the real files are absent)."""
    import numpy as np

    from facefusion_tasks.faces.loader import load_models
    from facefusion_tasks.faces.synthetic import background, draw_face
    from facefusion_tasks.models.standin import DETECTOR_FILE, make_test_models

    with tempfile.TemporaryDirectory(prefix="ff-doctor-") as scratch:
        standin = not (settings.models_dir / DETECTOR_FILE).is_file()
        if standin:
            make_test_models(Path(scratch))
            # Stand-ins doctor wrote itself, only to time the engine: trusted for that alone.
            settings = settings.replace(models_dir=Path(scratch), allow_standin_models=True)
        try:
            loaded = load_models(settings)
        except Exception as exc:
            return {"ok": False, "standin_models": standin, "error": str(exc)}
        engine = loaded.engine
        rng = np.random.default_rng(0)
        engine.set_source_embedding(rng.standard_normal(512).astype(np.float32))
        frames = []
        for i in range(_ENGINE_FRAMES):
            frame = background(640, 360, i)
            draw_face(frame, 200 + 20 * i, 180, 60)
            frames.append(frame)
        crops = rng.integers(0, 255, (_ENGINE_FRAMES, 128, 128, 3), dtype=np.uint8)
        assert engine.latent is not None
        try:
            engine.process([f.copy() for f in frames])  # warm-up: arenas, cuDNN algorithms
            started = time.perf_counter()
            for _ in range(_ENGINE_ROUNDS):
                engine.process([f.copy() for f in frames])
                engine.swapper.swap(crops, engine.latent)
            seconds = time.perf_counter() - started
        except Exception as exc:
            return {"ok": False, "provider": loaded.active_provider, "error": str(exc)}
        return {
            "ok": True,
            "provider": loaded.active_provider,
            "paste": loaded.paste,
            "standin_models": standin,
            "batch": _ENGINE_FRAMES,
            "frames_per_second": _ENGINE_ROUNDS * _ENGINE_FRAMES / seconds,
        }


def verdict(settings: Settings, rt: dict[str, Any], gpus: dict[str, Any]) -> dict[str, Any]:
    """Whether the GPU is usable, and whether that is a failure for what was asked."""
    cuda = rt.get("proofs", {}).get("cuda")
    usable = bool(cuda and cuda["ok"])
    if usable:
        line = f"GPU usable: the test model ran on {cuda['ran_on']}"
    else:
        why = [] if gpus["count"] else [gpus["note"]]
        why.append(cuda["reason"] if cuda else "this onnxruntime build has no CUDA provider")
        line = "no usable GPU: " + "; ".join(why)
    requested = settings.execution_provider
    # auto with a GPU present is a GPU request: a worker would refuse to start on it.
    wants_gpu = requested == "cuda" or (requested == "auto" and gpus["count"] > 0)
    failing = wants_gpu and not usable and not settings.allow_cpu_fallback
    return {"ok": not failing, "gpu_usable": usable, "requested": requested, "line": line}


def diagnose(settings: Settings, *, engine: bool = True) -> dict[str, Any]:
    """Everything worth knowing before running a job, as a JSON-ready dict."""
    rt = _onnxruntime(settings)
    gpus = _gpus()
    report: dict[str, Any] = {
        "ffmpeg": _ffmpeg(settings),
        "onnxruntime": rt,
        "gpus": gpus,
        "gpu": verdict(settings, rt, gpus),
        "models": _models(settings),
    }
    sections = ["onnxruntime", "gpu", "models"]
    if engine and "version" in rt:
        report["engine"] = _engine(settings)
        sections.append("engine")
    # A worker without ffmpeg cannot encode: that fails the report too, but `gpu` keeps its own
    # verdict for scripts that only ask about the GPU (`doctor --json | jq .gpu`).
    report["ok"] = all(report[k]["ok"] for k in [*sections, "ffmpeg"])
    return report


def render(report: dict[str, Any]) -> str:
    """The report for a terminal."""
    ff, rt, gpus, models = report["ffmpeg"], report["onnxruntime"], report["gpus"], report["models"]
    mark = {True: "ok ", False: "BAD"}
    gpu = report["gpu"]
    state = "BAD" if not gpu["ok"] else "ok " if gpu["gpu_usable"] else "-- "
    lines = [f"[{state}] {gpu['line']} (requested: {gpu['requested']})"]
    lines.append(
        f"[{mark[ff['ok']]}] ffmpeg {ff.get('version', '?')} at {ff.get('path', ff.get('error'))}"
        f" (ffprobe: {ff.get('ffprobe') or 'none'})"
    )
    if "encoders" in ff:
        have = [
            n if s == "usable" else f"{n} ({s})" for n, s in ff["encoders"].items() if s != "absent"
        ]
        lines.append(
            f"      encoders: {', '.join(have)}; hwaccels: {', '.join(ff['hwaccels']) or 'none'}"
            f"; -hwaccel cuda: {ff['hwaccel_cuda']}"
        )
    if "version" in rt:
        lines.append(
            f"[{mark[rt['ok']]}] onnxruntime {rt['version']} ({rt['build']}): "
            f"listed {', '.join(rt['available_providers'])}"
        )
    else:
        lines.append(f"[BAD] onnxruntime: {rt['error']}")
    for name, proof in rt["proofs"].items():
        if proof["ok"]:
            where = f" (CUDA libraries from {', '.join(proof['libraries'])})"
            lines.append(
                f"      {name}: test model ran on {proof['ran_on']}"
                + (where if proof["libraries"] else "")
            )
        else:
            lines.append(f"      {name}: FAILED: {proof['reason']}")
    lines += [f"      CLASH: {c}" for c in rt["clashes"]]
    lines += [f"      note: {n}" for n in rt.get("notes", [])]
    if gpus["count"]:
        for d in gpus["devices"]:
            kind = "MIG instance" if d["mig"] else "GPU"
            lines.append(f"[ok ] CUDA device {d['cuda_index']}: {kind} {d['name']} {d['uuid']}")
        if gpus["note"]:
            lines.append(f"      note: {gpus['note']}")
    else:
        lines.append(f"[-- ] GPUs: {gpus['note']}")
    engine = report.get("engine")
    if engine:
        if engine["ok"]:
            what = "stand-in models" if engine["standin_models"] else "the real models"
            lines.append(
                f"[ok ] face engine ({what}) ran on {engine['provider']}, paste-back "
                f"{engine['paste']}: {engine['frames_per_second']:.1f} frames/s at batch "
                f"{engine['batch']}"
            )
        else:
            lines.append(f"[BAD] face engine: {engine['error']}")
    lines.append(f"[{mark[models['ok']]}] models in {models['dir']}:")
    for name, state in models["files"].items():
        lines.append(f"      {name}: {state}")
    for name, digest in sorted(models.get("trusted", {}).items()):
        lines.append(f"      trusted on purpose (`models trust`), not the published file: {name}")
        lines.append(f"        sha256 {digest}")
    if "error" in models:
        lines.append(f"      {models['error']}")
    return "\n".join(lines)
