"""The error hierarchy: what failed, and whether trying again can help."""

from __future__ import annotations

from facefusion_tasks.reasons import Reason


class FaceFusionError(Exception):
    """Base of every error this package raises on purpose."""

    #: Bounded, machine-readable reason: the job's stored reason, the CLI exit code (through
    #: Reason.user_input) and the metric label. A raise site may name a narrower member.
    reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InputError(FaceFusionError, ValueError):
    """The user's input is unusable (bad file, no face, bad path); retrying cannot help."""

    reason = Reason.BAD_INPUT


class Unconfined(InputError):
    """A job path outside the storage roots or an object outside the allowed buckets, or none
    configured (reason path or config)."""

    reason = Reason.PATH


class OutputError(InputError):
    """The requested destination cannot be written."""

    reason = Reason.BAD_OUTPUT


class MediaError(FaceFusionError):
    """ffmpeg failed on input that probed fine (decoder or encoder crash, a written file that
    does not verify, a full disk); keeps ffmpeg's stderr."""

    reason = Reason.MEDIA

    def __init__(self, message: str, *, stderr: str = "", reason: Reason | None = None) -> None:
        super().__init__(message, reason=reason)
        self.stderr = stderr


class ModelError(FaceFusionError):
    """A model file is missing, corrupt, or breaks the contract the pipeline relies on."""

    reason = Reason.MODEL


class DownloadError(ModelError):
    """A model download failed or its digest did not match."""

    reason = Reason.DOWNLOAD


class TransientError(FaceFusionError):
    """A failure another attempt (or another worker) may not hit: the only kind that retries."""

    reason = Reason.TRANSIENT


class WorkerConfigError(TransientError):
    """This worker cannot reach a job file the producer accepted (its storage roots or buckets
    differ): retried, so a worker configured right may take it."""

    reason = Reason.WORKER_CONFIG


class GpuOutOfMemory(TransientError):
    """The execution provider ran out of device memory even at batch size 1."""

    reason = Reason.GPU_OOM


class WaitTimeout(FaceFusionError):
    """`wait --timeout` ran out before the job ended (the job itself goes on)."""

    reason = Reason.TIMEOUT


class Cancelled(BaseException):
    """The job was cancelled; a BaseException so `except Exception` cannot swallow it."""
