"""What the throughput settings do to a model as it is loaded: fp16 copy, IO binding, batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facefusion_tasks.config import Settings
from facefusion_tasks.faces.iobinding import BoundSession, ModelSession
from facefusion_tasks.faces.sessions import CPU, ProviderChoice


def tuned_model_path(path: Path, cache: Path, settings: Settings, choice: ProviderChoice) -> Path:
    """The file to open: with precision fp16 the verified fp16 copy (fp32 when conversion or
    verification failed, logged), else `path` itself."""
    if settings.precision != "fp16":
        return path
    from facefusion_tasks.faces.precision import fp16_model_path
    from facefusion_tasks.faces.sessions import CUDA, preload_cuda_libraries

    if CUDA in choice.providers:
        preload_cuda_libraries()  # the check's own CUDA sessions come before the workers' ones

    # Checked on the provider that will run it, at the detector's real input size: on an H100
    # an fp16 stand-in detector agreed with fp32 at 128×128 yet found no face at 640×640.
    spatial = settings.detector_size
    return fp16_model_path(path, cache, providers=choice.providers, spatial=spatial) or path


def tuned_session(session: Any, settings: Settings) -> ModelSession:
    """The session, its outputs bound to preallocated buffers when io_binding is on. The ring
    holds a batch of results: the detector keeps one per frame until it decodes them."""
    if not settings.io_binding:
        session_as_is: ModelSession = session
        return session_as_is
    return BoundSession(session, depth=max(settings.batch_size, settings.detector_batch))


def detector_batch(settings: Settings, provider: str) -> int:
    """Frames per detector call. Auto (0) is 1 on the CPU provider: a batch runs no faster there
    (`bench` measures it) but holds every activation of every frame at once, which with a real
    detector's compute is most of the peak memory. A GPU takes the whole batch."""
    if settings.detector_batch:
        return settings.detector_batch
    return 1 if provider == CPU else settings.batch_size
