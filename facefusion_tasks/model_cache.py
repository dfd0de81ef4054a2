"""Models load once per worker process, in the background; each chunk task waits for them."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, ModelError, TransientError
from facefusion_tasks.faces.loader import LoadedModels, load_models
from facefusion_tasks.metrics.oom import classify_oom
from facefusion_tasks.reasons import Reason


class _ModelCache:
    """Models load once per worker process, in the background, so Celery's start-up handshake
    is never blocked (a worker_process_init handler that takes > 4 s gets the child killed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loaded: LoadedModels | None = None
        self._error: BaseException | None = None
        self._sources: tuple[tuple[str, float], ...] = ()
        self._thread: threading.Thread | None = None

    def start(self, settings: Settings) -> None:
        """Begin loading in a daemon thread (idempotent)."""
        with self._lock:
            if self._thread is not None:  # loading, or loaded
                return
            self._thread = threading.Thread(target=self._load, args=(settings,), daemon=True)
            self._thread.start()

    def _load(self, settings: Settings) -> None:
        try:
            self._loaded = load_models(settings)
        except BaseException as exc:  # noqa: BLE001 - reported to the first task that waits
            self._error = exc
        finally:
            self._ready.set()

    def _failed(self) -> BaseException:
        """The load's error, for this task; the next task loads again, so a passing problem
        (GPU memory another tenant held, a blip of a network mount) does not fail every job
        this worker ever takes. A missing or corrupt model file stays the job's failure; out
        of memory, or any other trouble starting the models, is this worker's: transient, so
        the chunk is tried again (the delivery and retry bounds still apply)."""
        error = self._error
        assert error is not None
        with self._lock:
            self._thread, self._error, self._ready = None, None, threading.Event()
        if isinstance(error, TransientError):  # out of GPU memory while loading: counted
            return error
        if isinstance(error, ModelError) and classify_oom(error) is None:
            return error
        return TransientError(f"the models could not be started on this worker: {error}")

    def get(self, settings: Settings, sources: Sequence[Path]) -> LoadedModels:
        """The loaded models with the identity of `sources` set (re-embedded only when the
        images, or one's modification time, changed)."""
        self.start(settings)
        self._ready.wait()
        if self._error is not None:
            raise self._failed()
        assert self._loaded is not None
        key = tuple((str(path), _modified(path)) for path in sources)
        if self._sources != key:
            self._sources = ()  # a failed embedding must not leave a stale key behind
            self._loaded.engine.set_sources(sources)
            self._sources = key
        return self._loaded


def _modified(path: Path) -> float:
    """A source image's modification time; one gone since the job was submitted is the
    user's missing file, as check_image would call it."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        raise InputError(f"{path}: no such file", reason=Reason.MISSING_FILE) from None


MODELS = _ModelCache()
