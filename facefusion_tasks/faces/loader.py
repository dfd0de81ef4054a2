"""Open the three models once per process and wire them into a FaceEngine."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import GpuOutOfMemory, ModelError
from facefusion_tasks.faces.detector import Detector
from facefusion_tasks.faces.embedder import Embedder
from facefusion_tasks.faces.engine import FaceEngine
from facefusion_tasks.faces.gpupaste import GpuPaster
from facefusion_tasks.faces.iobinding import ModelSession
from facefusion_tasks.faces.sessions import (
    ProviderChoice,
    ProviderUnavailable,
    choose_providers,
    create_session,
)
from facefusion_tasks.faces.swapper import Swapper, read_emap
from facefusion_tasks.faces.tuning import detector_batch, tuned_model_path, tuned_session
from facefusion_tasks.metrics.oom import classify_oom
from facefusion_tasks.models.standin import DETECTOR_FILE, EMBEDDER_FILE, SWAPPER_FILE, is_standin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModels:
    """The engine plus facts worth reporting (provider, batching, stand-ins)."""

    engine: FaceEngine
    providers: ProviderChoice
    active_provider: str
    swapper_batched: bool
    detector_batched: bool
    standin: bool
    #: Where paste-back runs: "cpu", or "onnx on <provider>".
    paste: str = "cpu"

    def facts(self) -> dict[str, Any]:
        """What a run summary reports about the models."""
        return {
            "provider": self.active_provider,
            "swapper_batched": self.swapper_batched,
            "standin_models": self.standin,
            "paste": self.paste,
        }


def observe_worker_provider(*, requested: str, provider: str) -> None:
    """facefusion_worker_info: which provider this process really runs on, and on which GPU
    (this process's CUDA_VISIBLE_DEVICES, which the launcher sets to a UUID or an index)."""
    from facefusion_tasks import observe

    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    is_uuid = pinned.upper().startswith(("GPU-", "MIG-"))
    observe.worker_info(
        provider=provider,
        requested=requested,
        gpu_uuid=pinned if is_uuid else "",
        cuda_index=pinned if pinned.isdigit() else "",
    )


def model_paths(models_dir: Path) -> dict[str, Path]:
    """Where each model must be; raises ModelError naming what is missing and how to get it."""
    paths = {
        "detector": models_dir / DETECTOR_FILE,
        "embedder": models_dir / EMBEDDER_FILE,
        "swapper": models_dir / SWAPPER_FILE,
    }
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelError(
            f"models missing in {models_dir}: {', '.join(missing)} "
            "(run `facefusion-tasks models download`, or `models make-test` for stand-ins)"
        )
    return paths


def batch_cache(models_dir: Path) -> Path:
    """Where converted models go: beside the originals, else (a read-only model volume is
    common in clusters) the user's cache, else a per-user temp dir. Only a directory this user
    owns and nobody else may write is used, since whoever can write there chooses the model."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    candidates = (
        models_dir / ".batched",
        user_cache / "facefusion-tasks" / "batched",
        Path(tempfile.gettempdir()) / f"facefusion-tasks-{os.getuid()}" / "batched",
    )
    for candidate in candidates:
        if _private_dir(candidate):
            return candidate
        log.info(
            "%s: not a private writable directory; not caching converted models there", candidate
        )
    # Every fixed place is taken or shared: a fresh private one (mkdtemp makes it 0700).
    return Path(tempfile.mkdtemp(prefix="facefusion-tasks-batched-"))


def _private_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)  # lstat: a symlink planted here is not a directory
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        and os.access(path, os.W_OK | os.X_OK)
    )


def _verified(paths: dict[str, Path], settings: Settings) -> None:
    """Check model files against their trusted, pinned or first-use recorded digests, so a
    truncated or swapped file fails here with a clear message instead of mid-job. A stand-in
    is let through only when settings ask for stand-ins (its own metadata is no proof of
    anything), and never once it was trusted on purpose: that record is always checked."""
    from facefusion_tasks.models.digests import trusted_digests, trusted_model_path
    from facefusion_tasks.models.registry import spec_for

    trusted = trusted_digests(settings.models_dir)
    for key, path in paths.items():
        if settings.allow_standin_models and path.name not in trusted and is_standin(path):
            continue
        trusted_model_path(settings.models_dir, spec_for(key))


def _dynamic_copy(path: Path, cache: Path, *, folded_ok: bool = False) -> Path:
    """The model itself when its batch is free; else a verified dynamic-batch copy; else the
    original (per-item calls), logged."""
    from facefusion_tasks.faces.batching import batched_model_path, is_batch_dynamic

    if is_batch_dynamic(path):
        return path
    converted = batched_model_path(path, cache, folded_ok=folded_ok)
    if converted is None:
        log.info("%s: batch dimension fixed at 1 and not convertible; one call per item", path.name)
        return path
    log.info("%s: using dynamic-batch copy %s", path.name, converted.name)
    return converted


@contextlib.contextmanager
def _counted_oom(model: str, path: Path) -> Iterator[None]:
    """A GPU out-of-memory while `model` loads (a GPU another tenant filled: cuDNN or cuBLAS
    cannot create their handles) is counted as the OOMs of model calls are, so the OOM alert
    pages for it, and raised as GpuOutOfMemory (reason gpu_oom, retried); it was a plain model
    or provider error that no metric counted."""
    try:
        yield
    except Exception as exc:
        kind = classify_oom(exc)
        if kind is None:
            raise
        from facefusion_tasks import observe

        observe.gpu_oom(kind, model)
        raise GpuOutOfMemory(f"{path.name}: out of GPU memory while loading ({kind})") from exc


def load_models(settings: Settings) -> LoadedModels:
    """Open sessions for the detector, embedder and swapper as settings say."""
    paths = model_paths(settings.models_dir)
    _verified(paths, settings)
    choice = choose_providers(settings.execution_provider)
    if choice.reason and settings.allow_cpu_fallback:
        log.warning(
            "execution provider %s unavailable (%s): running on the CPU, as allowed",
            settings.execution_provider, choice.reason,
        )  # fmt: skip
    cache = batch_cache(settings.models_dir)
    threads = settings.inference_threads

    def session(model: str, path: Path) -> ModelSession:
        with _counted_oom(model, path):
            path = tuned_model_path(path, cache, settings, choice)
            try:
                return tuned_session(
                    create_session(
                        path,
                        choice,
                        threads=threads,
                        gpu_mem_limit=settings.gpu_mem_limit,
                        allow_cpu_fallback=settings.allow_cpu_fallback,
                    ),
                    settings,
                )
            except ProviderUnavailable:
                raise  # already one line naming the provider and the reason
            except Exception as exc:
                raise ModelError(f"{path.name}: cannot be loaded ({exc})") from exc

    # SCRFD exports flatten the batch into the anchor axis ("folded"); the detector splits it.
    detector_session = session("detector", _dynamic_copy(paths["detector"], cache, folded_ok=True))
    detector = Detector(
        detector_session,
        input_size=settings.detector_size,
        score_threshold=settings.detector_score,
        max_batch=detector_batch(settings, detector_session.get_providers()[0]),
    )
    embedder = Embedder(session("embedder", _dynamic_copy(paths["embedder"], cache)))
    swapper_session = session("swapper", _dynamic_copy(paths["swapper"], cache))
    swapper = Swapper(swapper_session, read_emap(str(paths["swapper"])))
    active = swapper_session.get_providers()[0]
    paster = _paster(settings, active)
    engine = FaceEngine(
        detector,
        embedder,
        swapper,
        selector=settings.face_selector,
        reference_distance=settings.reference_distance,
        paster=paster,
    )
    standin = any(is_standin(p) for p in paths.values())
    observe_worker_provider(requested=settings.execution_provider, provider=active)
    return LoadedModels(
        engine=engine,
        providers=choice,
        active_provider=active,
        swapper_batched=swapper.batched,
        detector_batched=detector.batched,
        standin=standin,
        paste=f"onnx on {paster.provider}" if paster is not None else "cpu",
    )


def _paster(settings: Settings, active: str) -> GpuPaster | None:
    """The paste graph on the provider the swapper really runs on, when settings.paste asks
    for it (auto: only on CUDA, where it takes the CPU's largest per-frame cost off it)."""
    from facefusion_tasks.faces.sessions import CPU, CUDA
    from facefusion_tasks.faces.swapper import SWAP_SIZE

    if settings.paste == "cpu" or (settings.paste == "auto" and active != CUDA):
        return None
    if active != CUDA:
        # Asked for by name (or a CUDA worker that fell back to the CPU, as allowed): it runs,
        # but say what it costs, since only the summary's "paste" field would show it.
        log.warning(
            "paste=onnx runs the paste graph on %s, where it is far slower than OpenCV's paste "
            "(paste=cpu or auto avoids it)", active,
        )  # fmt: skip
    # The CPU stays in the chain for the graph's shape arithmetic, as for the models.
    choice = (
        ProviderChoice("cuda", (CUDA, CPU)) if active == CUDA else ProviderChoice("cpu", (CPU,))
    )
    with _counted_oom("paste", Path("paste")):
        try:
            return GpuPaster(choice, gpu_mem_limit=settings.gpu_mem_limit, side=SWAP_SIZE + 2)
        except Exception as exc:
            if classify_oom(exc) is not None:
                raise
            if settings.paste == "auto":
                # OpenCV's paste gives the same frames: auto never fails a worker over a
                # graph that cannot load, but says so (the summary's "paste" then reads cpu).
                log.warning("paste graph: cannot be loaded (%s); pasting on the CPU", exc)
                return None
            raise ModelError(f"paste graph: cannot be loaded ({exc})") from exc
