"""onnxruntime sessions on an explicitly chosen provider, with an honest, logged fallback."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: What each --execution-provider choice asks onnxruntime for, best first.
_CHAINS: dict[str, list[str]] = {
    "cpu": [CPU],
    "cuda": [CUDA, CPU],
    "tensorrt": [TENSORRT, CUDA, CPU],
}


@dataclass(frozen=True)
class ProviderChoice:
    """What was asked for and what onnxruntime actually runs on."""

    requested: str
    providers: tuple[str, ...]
    reason: str = ""


def gpu_present() -> bool:
    """Whether an NVIDIA device node exists; cheap and initialises neither CUDA nor NVML,
    so it is safe in a parent process that will fork workers."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def choose_providers(requested: str) -> ProviderChoice:
    """Resolve `auto|cuda|tensorrt|cpu` against this onnxruntime build and this machine."""
    available = set(ort.get_available_providers())
    if requested == "auto":
        requested = "cuda" if CUDA in available and gpu_present() else "cpu"
        if requested == "cpu":
            why = "no NVIDIA GPU" if CUDA in available else "onnxruntime has no CUDA provider"
            log.info("execution provider auto -> cpu (%s)", why)
    chain = _CHAINS[requested]
    usable = [p for p in chain if p in available]
    reason = ""
    if chain[0] not in available:
        reason = (
            f"{chain[0]} is not in this onnxruntime build ({ort.__version__}, {ort.get_device()})"
        )
    elif chain[0] != CPU and not gpu_present():
        reason = "no NVIDIA GPU device on this host"
        usable = [CPU]
    if reason:
        log.warning(
            "execution provider %s unavailable: %s; falling back to %s",
            requested,
            reason,
            usable[0],
        )
    return ProviderChoice(requested, tuple(usable or [CPU]), reason)


def _provider_options(name: str) -> dict[str, Any]:
    if name == CUDA:
        # Grow the arena only by what is asked for, so memory follows the batch size; the default
        # power-of-two growth reserves far more than a batch needs and OOMs earlier.
        return {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}
    if name == TENSORRT:
        cache = os.environ.get(
            "FACEFUSION_TRT_CACHE", str(Path.home() / ".cache/facefusion-tasks/trt")
        )
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_fp16_enable": True,
        }
    return {}


def create_session(path: Path, choice: ProviderChoice, *, threads: int = 0) -> ort.InferenceSession:
    """Open a model on the chosen providers; if onnxruntime silently dropped the first choice,
    say so in the log instead of pretending."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = [(p, _provider_options(p)) for p in choice.providers]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises plain Exception subclasses
        if choice.providers[0] == CPU:
            raise
        log.warning(
            "%s: %s failed to start (%s); falling back to CPU", path.name, choice.providers[0], exc
        )
        session = ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
    active = session.get_providers()
    if active and active[0] != choice.providers[0]:
        log.warning(
            "%s: asked for %s, onnxruntime runs it on %s", path.name, choice.providers[0], active[0]
        )
    return session
