"""Open the three models once per process and wire them into a FaceEngine."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import ModelError
from facefusion_tasks.faces.detector import Detector
from facefusion_tasks.faces.embedder import Embedder
from facefusion_tasks.faces.engine import FaceEngine
from facefusion_tasks.faces.iobinding import ModelSession
from facefusion_tasks.faces.sessions import ProviderChoice, choose_providers, create_session
from facefusion_tasks.faces.swapper import Swapper, read_emap
from facefusion_tasks.faces.tuning import detector_batch, tuned_model_path, tuned_session
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

    def facts(self) -> dict[str, Any]:
        """What a run summary reports about the models."""
        return {
            "provider": self.active_provider,
            "swapper_batched": self.swapper_batched,
            "standin_models": self.standin,
        }


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


def _batch_cache(models_dir: Path) -> Path:
    """Converted models go beside the originals, or to a temp dir when that is read-only
    (a shared read-only model volume is common in clusters)."""
    cache = models_dir / ".batched"
    try:
        cache.mkdir(exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "facefusion-tasks-batched"
    fallback.mkdir(exist_ok=True)
    return fallback


def _verified(paths: dict[str, Path], models_dir: Path) -> None:
    """Check real model files against their pinned (or first-use recorded) digests, so a
    truncated or swapped file fails here with a clear message instead of mid-job."""
    from facefusion_tasks.models.download import trusted_model_path
    from facefusion_tasks.models.registry import spec_for

    for key, path in paths.items():
        if not is_standin(path):
            trusted_model_path(models_dir, spec_for(key))


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


def load_models(settings: Settings) -> LoadedModels:
    """Open sessions for the detector, embedder and swapper as settings say."""
    paths = model_paths(settings.models_dir)
    _verified(paths, settings.models_dir)
    choice = choose_providers(settings.execution_provider)
    cache = _batch_cache(settings.models_dir)
    threads = settings.inference_threads

    def session(path: Path) -> ModelSession:
        path = tuned_model_path(path, cache, settings, choice)
        try:
            return tuned_session(create_session(path, choice, threads=threads), settings)
        except Exception as exc:
            raise ModelError(f"{path.name}: cannot be loaded ({exc})") from exc

    # SCRFD exports flatten the batch into the anchor axis ("folded"); the detector splits it.
    detector_session = session(_dynamic_copy(paths["detector"], cache, folded_ok=True))
    detector = Detector(
        detector_session,
        input_size=settings.detector_size,
        score_threshold=settings.detector_score,
        max_batch=detector_batch(settings, detector_session.get_providers()[0]),
    )
    embedder = Embedder(session(_dynamic_copy(paths["embedder"], cache)))
    swapper_session = session(_dynamic_copy(paths["swapper"], cache))
    swapper = Swapper(swapper_session, read_emap(str(paths["swapper"])))
    engine = FaceEngine(
        detector,
        embedder,
        swapper,
        selector=settings.face_selector,
        reference_distance=settings.reference_distance,
    )
    standin = any(is_standin(p) for p in paths.values())
    return LoadedModels(
        engine=engine,
        providers=choice,
        active_provider=swapper_session.get_providers()[0],
        swapper_batched=swapper.batched,
        detector_batched=detector.batched,
        standin=standin,
    )
