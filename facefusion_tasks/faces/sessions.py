"""onnxruntime sessions on an explicitly chosen provider; CPU only when that was the choice."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from facefusion_tasks.errors import ModelError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: What each --execution-provider choice asks onnxruntime for, best first. TensorRT is not
#: offered: it needs per-model shape profiles, engine caches and its own libraries, none of
#: which this project ships or has run (config.validate says so).
_CHAINS: dict[str, list[str]] = {
    "cpu": [CPU],
    "cuda": [CUDA, CPU],
}


class ProviderUnavailable(ModelError):
    """The requested GPU provider cannot run here and running on the CPU was not allowed."""


@dataclass(frozen=True)
class ProviderChoice:
    """What was asked for and what onnxruntime actually runs on."""

    requested: str
    providers: tuple[str, ...]
    reason: str = ""


def gpu_present() -> bool:
    """Whether this process may see an NVIDIA GPU: a device node exists and CUDA_VISIBLE_DEVICES
    does not hide every device (the launcher's CPU-profile worker gets it empty). Cheap, and
    initialises neither CUDA nor NVML, so it is safe in a parent process that will fork."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in {"", "-1"}:
        return False
    from facefusion_tasks.gpus import device_nodes

    return device_nodes()


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries() -> tuple[str, ...]:
    """Load the CUDA and cuDNN libraries from the nvidia-* pip packages (onnxruntime-gpu's
    `cuda`/`cudnn` extras, or torch's) before the first CUDA session: without it the CUDA provider
    only finds them on LD_LIBRARY_PATH. Returns what onnxruntime printed (it prints, it does not
    log), which names any library it could not load."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime < 1.21, or a CPU build
        return ()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # a broken nvidia-* install must not stop a CPU fallback report
        printed.write(f"onnxruntime.preload_dlls() failed: {exc}\n")
    lines = tuple(line.strip() for line in printed.getvalue().splitlines() if line.strip())
    for line in lines:
        log.debug("preload_dlls: %s", line)
    return lines


def choose_providers(requested: str) -> ProviderChoice:
    """Resolve `auto|cuda|cpu` against this onnxruntime build and this machine (a listed
    provider is only a candidate: create_session proves it starts)."""
    if requested not in _CHAINS and requested != "auto":
        raise ModelError(f"execution provider {requested!r} is not offered (use auto, cuda or cpu)")
    available = set(ort.get_available_providers())
    if requested == "auto":
        requested = "cuda" if CUDA in available and gpu_present() else "cpu"
        if requested == "cpu":
            why = "no NVIDIA GPU" if CUDA in available else "onnxruntime has no CUDA provider"
            log.info("execution provider auto -> cpu (%s)", why)
            return ProviderChoice("cpu", (CPU,), why)
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
        # Only a note: load_models either refuses to start (one error line) or, when running
        # on the CPU is allowed, warns that it does.
        log.info("execution provider %s unavailable: %s", requested, reason)
    return ProviderChoice(requested, tuple(usable or [CPU]), reason)


def provider_options(name: str, *, gpu_mem_limit: int = 0) -> dict[str, Any]:
    """onnxruntime options for one provider."""
    if name == CUDA:
        # Grow the arena only by what is asked for, so memory follows the batch size; the default
        # power-of-two growth reserves far more than a batch needs and OOMs earlier.
        options: dict[str, Any] = {
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
        }
        if gpu_mem_limit > 0:
            # Caps this session's arena, so models sharing a GPU (or a worker beside another
            # tenant) stop at a known size and the OOM back-off halves the batch instead.
            options["gpu_mem_limit"] = int(gpu_mem_limit)
        return options
    return {}


def create_session(
    path: Path | bytes,
    choice: ProviderChoice,
    *,
    threads: int = 0,
    gpu_mem_limit: int = 0,
    allow_cpu_fallback: bool = False,
) -> ort.InferenceSession:
    """Open a model on the chosen providers. When the first choice is a GPU provider and
    onnxruntime drops it (it does so silently, with a log line), raise ProviderUnavailable with
    the reason, unless running on the CPU was explicitly allowed; then say so in the log.
    `path` may be a serialized model instead (a graph built here, such as the paste's)."""
    wanted = choice.providers[0]
    source = str(path) if isinstance(path, Path) else path
    name = path.name if isinstance(path, Path) else "built-in graph"
    if choice.requested != "cpu" and not allow_cpu_fallback and wanted == CPU:
        raise ProviderUnavailable(_refusal(choice.requested, choice.reason))
    if wanted == CUDA:
        preload_cuda_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = [(p, provider_options(p, gpu_mem_limit=gpu_mem_limit)) for p in choice.providers]
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises plain Exception subclasses
        if wanted == CPU:
            raise
        if not allow_cpu_fallback:
            raise ProviderUnavailable(_refusal(choice.requested, str(exc))) from exc
        log.warning("%s: %s failed to start (%s); running on CPU as allowed", name, wanted, exc)
        session = ort.InferenceSession(source, sess_options=options, providers=[CPU])
    active = session.get_providers()
    if active and active[0] != wanted:
        if not allow_cpu_fallback:
            raise ProviderUnavailable(_refusal(choice.requested, _why_cuda_failed()))
        log.warning("%s: asked for %s, runs on %s (CPU allowed)", name, wanted, active[0])
    return session


def _why_cuda_failed() -> str:
    """onnxruntime printed the reason on the C++ side of stderr; a fresh process captures it."""
    from facefusion_tasks.faces.probe import prove

    return prove("cuda").reason or "onnxruntime dropped the CUDA provider"


def _refusal(requested: str, reason: str) -> str:
    return (
        f"execution provider {requested} cannot run here: {reason}; set "
        "FACEFUSION_ALLOW_CPU_FALLBACK=1 (or FACEFUSION_EXECUTION_PROVIDER=cpu) to run on the CPU"
    )
