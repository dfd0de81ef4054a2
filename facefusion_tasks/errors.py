"""The error hierarchy: what failed, and whether trying again can help."""

from __future__ import annotations


class FaceFusionError(Exception):
    """Base of every error this package raises on purpose."""

    #: Short, bounded, machine-readable reason (used as a metric label and job failure reason).
    reason: str = "internal"


class InputError(FaceFusionError, ValueError):
    """The user's input is unusable (bad file, no face, bad path); retrying cannot help."""

    reason = "bad_input"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class OutputError(InputError):
    """The requested destination cannot be written."""

    reason = "bad_output"


class MediaError(FaceFusionError):
    """ffmpeg failed on input that probed fine (decoder or encoder crash); keeps ffmpeg's stderr."""

    reason = "media"

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class ModelError(FaceFusionError):
    """A model file is missing, corrupt, or breaks the contract the pipeline relies on."""

    reason = "model"


class DownloadError(ModelError):
    """A model download failed or its digest did not match."""

    reason = "download"


class TransientError(FaceFusionError):
    """A failure another attempt (or another worker) may not hit: retry it."""

    reason = "transient"


class GpuOutOfMemory(TransientError):
    """The execution provider ran out of device memory even at batch size 1."""

    reason = "gpu_oom"


class Cancelled(BaseException):
    """The job was cancelled; a BaseException so `except Exception` cannot swallow it."""
