"""Settings: CLI flag > FACEFUSION_* environment variable > default."""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "FACEFUSION_"
#: Largest video frame (width × height) a job may have: 8K UHD.
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320
#: Largest source or reference image: a 48-megapixel phone photo fits.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
#: Shortest chunk: each has fixed costs (model warm-up, encoder start, a keyframe, a record).
DEFAULT_MIN_CHUNK_SECONDS = 0.5
#: Most chunks one job may be cut into (each is a task message and a Redis record).
DEFAULT_MAX_CHUNKS = 10_000
#: Seconds a URL a worker signs for ffmpeg stays valid (ffmpeg asks again on every seek): past
#: any task's time limit, which validate() keeps below it.
SIGNED_URL_SECONDS = 6 * 3600
#: The settings a command-line flag may set. The worker launcher passes their values on to
#: the processes it starts, which read only their environment.
FLAG_SETTINGS = (
    "models_dir", "execution_provider", "inference_threads", "batch_size", "face_selector",
    "reference_distance", "video_encoder", "video_quality", "hwaccel", "ffmpeg",
    "cpu_threads", "detector_batch", "precision", "io_binding", "paste",
)  # fmt: skip
#: cpu_threads' "auto".
AUTO_CPU_THREADS = -1
#: Where paste-back may run (Settings.paste).
PASTES = ("cpu", "onnx", "auto")
#: Most frames one model call may take: far past any batch measured to pay here, and a bound
#: on what is allocated before the first frame (a batch of 99999999999 was a MemoryError, exit
#: 1 and a temp file left, where a usage error says exit 2).
MAX_BATCH = 256
#: Largest detector input side: 48 MB of float32 a frame (16384 asked for 768 GiB at once).
MAX_DETECTOR_SIZE = 2048
#: What "auto" means for the int settings that take it.
_AUTO_VALUES = {"cpu_threads": AUTO_CPU_THREADS, "detector_batch": 0}


def default_models_dir() -> Path:
    """Where models live when FACEFUSION_MODELS_DIR is unset (XDG cache convention)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "facefusion-tasks" / "models"


@dataclass(frozen=True)
class Settings:
    """Everything a local run or a worker needs; each field maps to FACEFUSION_<NAME>."""

    #: Directory holding det_10g.onnx, w600k_r50.onnx and inswapper_128.onnx.
    models_dir: Path = field(default_factory=default_models_dir)
    #: auto | cuda | cpu. auto = cuda when an NVIDIA GPU is present, else cpu.
    execution_provider: str = "auto"
    #: Let a worker whose CUDA session cannot start run on the CPU instead of refusing to serve
    #: (execution_provider=cpu is the other explicit way to run on the CPU).
    allow_cpu_fallback: bool = False
    #: Bytes the CUDA provider's memory arena may take per model session (0 = no cap).
    gpu_mem_limit: int = 0
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
    #: Unset = the output container's default (libx264; libvpx-vp9 for WebM) | auto (its nvenc
    #: when a trial encode works) | libx264 | libx265 | h264_nvenc | hevc_nvenc | libvpx-vp9 |
    #: libsvtav1 | libaom-av1 | av1_nvenc. One the container cannot hold is refused.
    video_encoder: str = ""
    #: x264/x265 preset (nvenc presets are mapped).
    video_preset: str = "veryfast"
    #: Constant quality (crf for x264/x265, cq for nvenc).
    video_quality: int = 18
    #: none | auto | cuda: ffmpeg -hwaccel for decoding.
    hwaccel: str = "none"
    #: Frames buffered between decode, inference and encode (bounds memory).
    queue_frames: int = 32
    #: Bytes each of those queues may hold: large frames get fewer slots (an 8K BGR frame is
    #: 100 MB, so 32 of them would be 3.2 GB), never fewer than 2.
    queue_bytes: int = 256 * 1024 * 1024
    #: Celery broker (and result backend) URL, redis:// or rediss://; empty = local mode.
    broker_url: str = ""
    #: Colon-separated directories every worker sees (a shared volume); job paths must be inside.
    storage_roots: str = ""
    #: Where chunk segments are written (shared); default: .facefusion-work in the first root.
    work_dir: str = ""
    #: Comma-separated buckets whose objects (s3://bucket/key) jobs may read and write: the
    #: storage roots' counterpart for object storage.
    s3_buckets: str = ""
    #: This host's own scratch directory (not shared): objects a task reads whole (images,
    #: segments to stitch) and files it writes before uploading them. Default: <tmp>/facefusion-scratch.
    scratch_dir: str = ""
    #: Target chunk length in seconds of video.
    chunk_seconds: float = 10.0
    #: Redis redelivers an unacknowledged task after this long, even if it still runs.
    visibility_timeout: int = 3600
    #: Hard limit for one chunk; must stay below the visibility timeout (see NOTES: celery#5935).
    chunk_time_limit: int = 1800
    #: Chunk attempts before the chunk (and its job) is marked failed.
    chunk_retries: int = 2
    #: Largest video frame in pixels (width × height), checked from the probe before decoding.
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    #: Largest source/reference image in pixels, read from its header before decoding.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    #: Floor for the chunk length (and --chunk-seconds).
    min_chunk_seconds: float = DEFAULT_MIN_CHUNK_SECONDS
    #: Most chunks one job may be cut into.
    max_chunks: int = DEFAULT_MAX_CHUNKS
    #: Load models that mark themselves as stand-ins (tests, demo) even though their digests
    #: match no published model. Off: a model's own metadata never vouches for it.
    allow_standin_models: bool = False
    #: File holding the Redis password (a mounted Secret), put into broker_url at start so the
    #: password is never in a manifest, a command line or the environment.
    broker_password_file: str = ""
    #: A running chunk with no frame progress for this long (or a job stuck queued, planning or
    #: stitching this long) is given back to the queue, or its job fails with reason `stalled`.
    stall_seconds: int = 300
    #: Deliveries of one chunk that never finished (worker SIGKILLed, OOM-killed, hung) before
    #: its job fails with reason `worker_lost` instead of trying again.
    max_deliveries: int = 3
    #: How often the light workers look for stalled chunks and jobs (one sweep per period for
    #: the whole fleet, whichever host gets there first).
    sweep_seconds: int = 30
    #: Seconds between a running chunk's progress heartbeats (frames done + time) in Redis.
    heartbeat_seconds: float = 2.0
    #: Celery worker processes per GPU on the gpu queue (on a host without a GPU: in total).
    gpu_processes: int = 1
    #: A Celery worker process that has had no pool process for this long is wedged (its pool
    #: died under it and it did not exit, so it takes nothing from its queue): the launcher
    #: kills it and starts it again.
    worker_wedged_seconds: int = 60
    #: A worker process writes metrics only while the metrics directory has this much free
    #: space: a write into a full tmpfs through prometheus_client's mmap kills it with SIGBUS.
    metrics_min_free_bytes: int = 8 * 1024 * 1024

    #: Seconds a finished job's records (job, chunks) stay in Redis; the stall sweep then
    #: removes the job's leftover work directory too. A failed job can be retried until then.
    record_ttl_seconds: int = 7 * 24 * 3600
    #: Threads for the per-frame CPU work beside inference (letterbox, box decoding, alignment
    #: warps, paste-back); 0 = all of it on the inference thread, in order; -1 ("auto") = from
    #: the cores this host lets the process use, shared by its pipelines (cores.py).
    cpu_threads: int = AUTO_CPU_THREADS
    #: Frames per detector call; 0 = auto: 1 on the CPU provider (batching buys no speed there
    #: and multiplies the activation memory), batch_size on a GPU (with the OOM back-off).
    detector_batch: int = 0
    #: fp32 | fp16: fp16 runs models converted to half precision (fp32 inputs and outputs kept,
    #: checked against fp32, cached beside the batched copies); for GPUs.
    precision: str = "fp32"
    #: Bind model outputs to buffers allocated once per shape (onnxruntime IO binding), so a
    #: call allocates no new output memory.
    io_binding: bool = False
    #: cpu | onnx | auto: where paste-back runs. cpu = OpenCV in the per-frame pool; onnx = a
    #: graph on the models' provider (the GPU of a CUDA worker: one trip of the frame to the
    #: device and back instead of CPU work that grows with each face's area); auto = onnx
    #: where the models run on CUDA, else cpu (the default: on an H100 the graph took 27-46 %
    #: of paste-back's CPU off each frame within a grey level of OpenCV's, see the README).
    paste: str = "auto"

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
        if values.get("broker_password_file"):
            values["broker_url"] = with_password_file(
                values.get("broker_url", ""), values["broker_password_file"]
            )
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse contradictory or out-of-range values with one clear message."""
        from facefusion_tasks.errors import InputError
        from facefusion_tasks.jobs import check_chunk_seconds

        if self.execution_provider == "tensorrt":
            raise InputError(
                "execution provider tensorrt is not offered: it needs shape profiles, an engine "
                "cache and TensorRT libraries this project does not ship; use cuda"
            )
        if self.execution_provider not in {"auto", "cuda", "cpu"}:
            raise InputError(f"unknown execution provider {self.execution_provider!r}")
        if self.gpu_mem_limit < 0:
            raise InputError("gpu_mem_limit must be 0 (no cap) or a number of bytes")
        if self.face_selector not in {"many", "one", "reference"}:
            raise InputError(f"unknown face selector {self.face_selector!r}")
        # Cosine distance between unit embeddings lies in [0, 2]; NaN would match no face.
        if not 0 < self.reference_distance <= 2:
            raise InputError("reference distance must be above 0 and at most 2")
        from facefusion_tasks.video.codecs import PRESET_NAMES, QUALITY_MAX

        if self.video_preset not in PRESET_NAMES:
            raise InputError(
                f"unknown video preset {self.video_preset!r} (one of {', '.join(PRESET_NAMES)})"
            )
        if not 0 <= self.video_quality <= max(QUALITY_MAX.values()):
            raise InputError(f"video quality must be 0 to {max(QUALITY_MAX.values())}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InputError(f"batch size must be 1 to {MAX_BATCH}")
        if self.detector_size % 32 or not 64 <= self.detector_size <= MAX_DETECTOR_SIZE:
            raise InputError(
                f"detector size must be a multiple of 32, from 64 to {MAX_DETECTOR_SIZE}"
            )
        if self.hwaccel not in {"none", "auto", "cuda"}:
            raise InputError(f"unknown hwaccel {self.hwaccel!r}")
        if self.queue_frames < 1 or self.queue_bytes < 1:
            raise InputError("queue size must be at least 1")
        if not self.min_chunk_seconds > 0:
            raise InputError(f"{ENV_PREFIX}MIN_CHUNK_SECONDS must be positive")
        # Each number in its own range first, so the checks across settings below (and the
        # chunk length against its floor) never blame one setting for another's value.
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                # Settings built in code: a TypeError in the comparisons below.
                raise InputError(f"{ENV_PREFIX}{name.upper()} must be a number, not {value!r}")
            if not (math.isfinite(value) and low <= value <= high):
                bound = (
                    f"at least {low:g}" if value < low
                    else f"at most {high:g}" if value > high
                    else f"a number from {low:g} to {high:g}"
                )  # fmt: skip
                raise InputError(f"{ENV_PREFIX}{name.upper()} must be {bound}, not {value!r}")
        check_chunk_seconds(self.chunk_seconds, min_chunk_seconds=self.min_chunk_seconds)
        for name in ("max_frame_pixels", "max_image_pixels", "max_chunks"):
            if getattr(self, name) < 1:
                raise InputError(f"{ENV_PREFIX}{name.upper()} must be at least 1")
        if self.chunk_time_limit >= self.visibility_timeout:
            raise InputError(
                "chunk time limit must be below the Redis visibility timeout, or Redis hands a "
                "still-running chunk to a second worker"
            )
        if self.heartbeat_seconds * 2 > self.stall_seconds:
            raise InputError("the stall time must be at least two heartbeat periods")
        if self.cpu_threads < AUTO_CPU_THREADS:
            raise InputError("cpu threads must be auto, 0 or more")
        if not 0 <= self.detector_batch <= MAX_BATCH:
            raise InputError(f"detector batch must be auto (0) or 1 to {MAX_BATCH}")
        if self.precision not in {"fp32", "fp16"}:
            raise InputError(f"unknown precision {self.precision!r} (fp32 or fp16)")
        if self.paste not in PASTES:
            raise InputError(f"unknown paste {self.paste!r} (auto, cpu or onnx)")
        if self.s3_buckets and self.chunk_time_limit >= SIGNED_URL_SECONDS:
            raise InputError(
                f"chunk time limit must be below {SIGNED_URL_SECONDS} s with object storage: "
                "the URLs workers sign for their reads expire then"
            )
        if self.broker_url and not self.broker_url.startswith(("redis://", "rediss://")):
            raise InputError("broker URL must be redis:// or rediss://")
        _check_broker_url(self.broker_url)

    def roots(self) -> list[Path]:
        """The allowed storage roots, resolved."""
        return [Path(r).expanduser().resolve() for r in self.storage_roots.split(":") if r]

    def buckets(self) -> list[str]:
        """The allowed buckets (FACEFUSION_S3_BUCKETS)."""
        return [b.strip() for b in self.s3_buckets.split(",") if b.strip()]

    def scratch(self) -> Path:
        """This host's scratch directory (created on first use by whoever writes there): the
        configured one, or one per user in the temp directory (a shared name there would be
        another user's to create, and to plant as a symlink)."""
        if self.scratch_dir:
            return Path(self.scratch_dir).expanduser().resolve()
        import tempfile

        return Path(tempfile.gettempdir()) / f"facefusion-scratch-{os.getuid()}"

    def as_env(self, names: Sequence[str]) -> dict[str, str]:
        """FACEFUSION_* variables that give a process started with them these settings."""
        env = {}
        for name in names:
            value = getattr(self, name)
            text = ("1" if value else "0") if isinstance(value, bool) else str(value)
            env[ENV_PREFIX + name.upper()] = text
        return env

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_DAY = 24 * 3600
#: The range each numeric setting must lie in (Settings.validate): NaN and values that overflow
#: what reads them (Redis's EXPIRE, threading's waits, the launcher's process list) passed
#: before. A heartbeat of NaN never beat; a sweep period of 1e30 killed the sweep.
_RANGES: dict[str, tuple[float, float]] = {
    "record_ttl_seconds": (60, 10 * 365 * _DAY),
    "stall_seconds": (1, 7 * _DAY),
    "sweep_seconds": (1, _DAY),
    "heartbeat_seconds": (0.01, 3600),
    "visibility_timeout": (2, 30 * _DAY),
    "chunk_time_limit": (1, 30 * _DAY),
    "worker_wedged_seconds": (1, _DAY),
    "chunk_retries": (0, 100),
    "max_deliveries": (1, 100),
    "gpu_processes": (1, 64),
    "inference_threads": (0, 1024),
    "min_chunk_seconds": (0.001, _DAY),
    "detector_score": (0, 1),
}


def _check_broker_url(url: str) -> None:
    """InputError for a broker URL redis-py would read wrongly or fail on later: a port that is
    not one, a host it cannot parse, a database that is not a number (redis-py fell back to
    database 0, someone else's). The URL itself is not shown: it may hold a password."""
    from urllib.parse import parse_qs, urlsplit

    from facefusion_tasks.errors import InputError

    if not url:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for one out of range or not a number
    except ValueError as exc:
        raise InputError(f"broker URL is not valid: {exc}") from None
    if not parts.hostname:
        raise InputError("broker URL is not valid: no host")
    database = parts.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise InputError(f"broker URL is not valid: database {database!r} is not a number")
    if "db" in parse_qs(parts.query):
        # redis-py takes ?db= over the path, Celery's transport refuses it: the job store and
        # the queues would be two databases (and every send an internal TypeError).
        raise InputError(
            "broker URL is not valid: give the database in its path (redis://host:6379/0), "
            "not as ?db="
        )
    _check_connection_options(url)


def _check_connection_options(url: str) -> None:
    """InputError for query options the two readers of this URL would not both take: the job
    store (redis-py) and the queues (kombu) each refused different ones, only when they first
    connected, as an internal error (?socket_timeout=5 passed redis-py and failed kombu; a job
    was recorded and then failed as broker_unavailable). Only ssl_* options, on rediss://, mean
    the same to both; their values are read by redis-py here, without connecting."""
    from urllib.parse import parse_qs, urlsplit

    from facefusion_tasks.errors import InputError

    parts = urlsplit(url)
    options = parse_qs(parts.query, keep_blank_values=True)
    other = sorted(name for name in options if not name.startswith("ssl_"))
    if other:
        raise InputError(
            f"broker URL is not valid: option {other[0]!r}: only ssl_* options are read "
            "(on rediss://)"
        )
    if not options:
        return
    twice = sorted(name for name, values in options.items() if len(values) > 1)
    if twice:
        # redis-py takes the first, kombu the last: the store and the queues would verify
        # certificates differently.
        raise InputError(f"broker URL is not valid: option {twice[0]!r} is given twice")
    if parts.scheme != "rediss":
        raise InputError("broker URL is not valid: ssl_* options need a rediss:// URL")
    try:
        from redis.connection import ConnectionPool
    except ImportError:  # doctor and the face engine run without redis
        return
    try:
        pool = ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)  # builds, does not connect
    except Exception as exc:  # noqa: BLE001 - ValueError, TypeError, RedisError alike
        raise InputError(f"broker URL is not valid: {exc}") from None


#: The exporter's port when neither --metrics-port nor FACEFUSION_METRICS_PORT says.
DEFAULT_METRICS_PORT = 9808


def metrics_port_from_env(environ: Mapping[str, str] | None = None) -> int:
    """FACEFUSION_METRICS_PORT, else DEFAULT_METRICS_PORT: the one reading the exporter and the
    worker launcher share. InputError (config) for a value that is not a port number."""
    from facefusion_tasks.errors import InputError
    from facefusion_tasks.reasons import Reason

    env = os.environ if environ is None else environ
    raw = env.get(ENV_PREFIX + "METRICS_PORT", "").strip()
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    if raw and not (raw.isascii() and raw.isdigit() and int(raw) <= 65535):
        raise InputError(
            f"FACEFUSION_METRICS_PORT must be a port number, not {raw!r}", reason=Reason.CONFIG
        )
    return int(raw or DEFAULT_METRICS_PORT)


def broker_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """FACEFUSION_BROKER_URL with the password from FACEFUSION_BROKER_PASSWORD_FILE, for
    processes that need the broker and no other setting (the metrics exporter)."""
    env = os.environ if environ is None else environ
    url = env.get(ENV_PREFIX + "BROKER_URL", "")
    password_file = env.get(ENV_PREFIX + "BROKER_PASSWORD_FILE", "")
    return with_password_file(url, password_file) if password_file else url


def with_password_file(url: str, password_file: str) -> str:
    """`url` with the password read from `password_file` (one line; a trailing newline is
    dropped). One source per secret: a URL that already carries a password is refused."""
    from urllib.parse import quote, urlsplit, urlunsplit

    from facefusion_tasks.errors import InputError
    from facefusion_tasks.reasons import Reason

    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        raise InputError(
            "the broker URL carries a password and FACEFUSION_BROKER_PASSWORD_FILE is set: "
            "keep the password in the file only",
            reason=Reason.CONFIG,
        )
    password = _read_secret(password_file, "the broker password file")
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


#: The most bytes a secret file may hold: a password, not whatever the path names.
MAX_SECRET_BYTES = 64 * 1024


def _read_secret(path: str, what: str) -> str:
    """The one line a secret file holds (a trailing newline dropped). Only a regular file of at
    most MAX_SECRET_BYTES: /dev/zero took 22 GB before the kernel killed the process, and a
    FIFO blocked it for good. Opened without blocking, so a FIFO is refused, not waited on."""
    from facefusion_tasks.errors import InputError
    from facefusion_tasks.reasons import Reason

    def refused(why: str) -> InputError:
        return InputError(f"cannot read {what} {path}: {why}", reason=Reason.CONFIG)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise refused(exc.strerror or str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused("not a regular file")
        data = b""
        while len(data) <= MAX_SECRET_BYTES:  # a short read (FUSE, NFS) is not the end
            more = os.read(fd, MAX_SECRET_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as exc:
        raise refused(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise refused(f"over {MAX_SECRET_BYTES // 1024} KiB, not a password")
    try:
        return data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise refused("not UTF-8 text") from None


#: How a boolean setting may be written ("" is unset: off).
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"", "0", "false", "no", "off"})


def _coerce(annotation: Any, raw: str, name: str) -> Any:
    from facefusion_tasks.errors import InputError

    kind = str(annotation)
    try:
        if kind == "int":
            if name in _AUTO_VALUES and raw.strip().lower() == "auto":
                return _AUTO_VALUES[name]
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            # Anything else was read as off: FACEFUSION_ALLOW_STANDIN_MODELS=2 then failed on
            # a model digest, far from its cause.
            word = raw.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(word)
            return word in _TRUE
        if kind == "Path":
            return Path(raw)
    except ValueError:
        also = " or auto" if name in _AUTO_VALUES else ""
        raise InputError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}{also}"
        ) from None
    return raw
