"""Settings: CLI flag > FACEFUSION_* environment variable > default."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "FACEFUSION_"


def default_models_dir() -> Path:
    """Where models live when FACEFUSION_MODELS_DIR is unset (XDG cache convention)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "facefusion-tasks" / "models"


@dataclass(frozen=True)
class Settings:
    """Everything a local run or a worker needs; each field maps to FACEFUSION_<NAME>."""

    #: Directory holding det_10g.onnx, w600k_r50.onnx and inswapper_128.onnx.
    models_dir: Path = field(default_factory=default_models_dir)
    #: auto | cuda | tensorrt | cpu. auto = best available, with the fallback logged.
    execution_provider: str = "auto"
    #: Threads onnxruntime may use per model (0 = onnxruntime's default).
    inference_threads: int = 0
    #: Frames per inference batch.
    batch_size: int = 8
    #: many | one | reference
    face_selector: str = "many"
    #: Cosine distance under which a face matches the reference identity.
    reference_distance: float = 0.6
    #: Detector input size (square, multiple of 32).
    detector_size: int = 640
    #: Detector score threshold.
    detector_score: float = 0.5
    #: ffmpeg executable; empty = PATH, then the imageio-ffmpeg wheel's binary.
    ffmpeg: str = ""
    #: libx264 | libx265 | h264_nvenc | hevc_nvenc | auto (nvenc when present).
    video_encoder: str = "libx264"
    #: x264/x265 preset (nvenc presets are mapped).
    video_preset: str = "veryfast"
    #: Constant quality (crf for x264/x265, cq for nvenc).
    video_quality: int = 18
    #: none | auto | cuda: ffmpeg -hwaccel for decoding.
    hwaccel: str = "none"
    #: Frames buffered between decode, inference and encode (bounds memory).
    queue_frames: int = 32
    #: Celery broker (and result backend) URL, redis:// or rediss://; empty = local mode.
    broker_url: str = ""
    #: Colon-separated directories every worker sees (a shared volume); job paths must be inside.
    storage_roots: str = ""
    #: Where chunk segments are written (shared); default: .facefusion-work in the first root.
    work_dir: str = ""
    #: Target chunk length in seconds of video.
    chunk_seconds: float = 10.0
    #: Redis redelivers an unacknowledged task after this long, even if it still runs.
    visibility_timeout: int = 3600
    #: Hard limit for one chunk; must stay below the visibility timeout (see NOTES: celery#5935).
    chunk_time_limit: int = 1800
    #: Chunk attempts before the chunk (and its job) is marked failed.
    chunk_retries: int = 2
    #: Threads for the per-frame CPU work beside inference (letterbox, box decoding, alignment
    #: warps, paste-back); 0 = all of it on the inference thread, in order.
    cpu_threads: int = 2
    #: Frames per detector call; 0 = auto: 1 on the CPU provider (batching buys no speed there
    #: and multiplies the activation memory), batch_size on a GPU (with the OOM back-off).
    detector_batch: int = 0
    #: fp32 | fp16: fp16 runs models converted to half precision (fp32 inputs and outputs kept,
    #: checked against fp32, cached beside the batched copies); for GPUs.
    precision: str = "fp32"
    #: Bind model outputs to buffers allocated once per shape (onnxruntime IO binding), so a
    #: call allocates no new output memory.
    io_binding: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply non-None overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.type, raw, f.name)
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        if "models_dir" in values:
            values["models_dir"] = Path(values["models_dir"]).expanduser()
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse contradictory or out-of-range values with one clear message."""
        from facefusion_tasks.errors import InputError

        if self.execution_provider not in {"auto", "cuda", "tensorrt", "cpu"}:
            raise InputError(f"unknown execution provider {self.execution_provider!r}")
        if self.face_selector not in {"many", "one", "reference"}:
            raise InputError(f"unknown face selector {self.face_selector!r}")
        if self.batch_size < 1:
            raise InputError("batch size must be at least 1")
        if self.detector_size % 32 or self.detector_size < 64:
            raise InputError("detector size must be a multiple of 32, at least 64")
        if self.hwaccel not in {"none", "auto", "cuda"}:
            raise InputError(f"unknown hwaccel {self.hwaccel!r}")
        if self.queue_frames < 1:
            raise InputError("queue size must be at least 1")
        if self.chunk_seconds <= 0:
            raise InputError("chunk seconds must be positive")
        if self.chunk_time_limit >= self.visibility_timeout:
            raise InputError(
                "chunk time limit must be below the Redis visibility timeout, or Redis hands a "
                "still-running chunk to a second worker"
            )
        if self.cpu_threads < 0 or self.detector_batch < 0:
            raise InputError("cpu threads and detector batch cannot be negative")
        if self.precision not in {"fp32", "fp16"}:
            raise InputError(f"unknown precision {self.precision!r} (fp32 or fp16)")
        if self.broker_url and not self.broker_url.startswith(("redis://", "rediss://")):
            raise InputError("broker URL must be redis:// or rediss://")

    def roots(self) -> list[Path]:
        """The allowed storage roots, resolved."""
        return [Path(r).expanduser().resolve() for r in self.storage_roots.split(":") if r]

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _coerce(annotation: Any, raw: str, name: str) -> Any:
    from facefusion_tasks.errors import InputError

    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind == "Path":
            return Path(raw)
    except ValueError:
        raise InputError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
