"""Every metric of the project: worker-side instruments and the exporter's scrape-time names."""

from __future__ import annotations

import math

from prometheus_client import Counter, Gauge, Histogram

from facefusion_tasks import __version__
from facefusion_tasks.metrics import multiproc
from facefusion_tasks.metrics.oom import OOM_KINDS
from facefusion_tasks.queue_names import GPU_QUEUE, LIGHT_QUEUE
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.codecs import ENCODERS

# Safe in worker processes in multiprocess mode: only Counter, Histogram and Gauge with an
# explicit multiprocess_mode (no Info, Enum, set_function or custom collectors here).
# Take this pid's liveness lock before the first metric below opens a file, so the exporter's
# compactor can never mistake this process for a dead one whose pid number was reused.
multiproc.register_process()

#: Pipeline stages timed per frame batch.
STAGES = ("decode", "detect", "embed", "swap", "paste", "encode")
#: Models (the `model` label): the registry's keys.
MODELS = ("detector", "embedder", "swapper")
#: What a GPU out-of-memory is counted against: the models, and the paste graph.
OOM_MODELS = (*MODELS, "paste")
#: Celery queues (the `queue` label).
QUEUES = (GPU_QUEUE, LIGHT_QUEUE)
#: How a job ends.
JOB_OUTCOMES = ("succeeded", "failed", "cancelled")
#: How one chunk attempt ends: retried = failed but requeued, failed = given up.
CHUNK_OUTCOMES = ("succeeded", "retried", "failed")
#: `status` of the seed's facefusion_face_swap_requests_total.
SWAP_STATUSES = ("success", "error")

#: The only values the `reason` label takes: every Reason, "none" for success and "other" for
#: text from outside the package (bounded cardinality). Derived, so it cannot drift from the enum.
REASONS = frozenset({"none", "other"} | {reason.value for reason in Reason})


def bounded_reason(reason: str | None) -> str:
    """`reason` if it is a known reason, "none" when empty, else "other" (bounded cardinality)."""
    normalised = (reason or "").strip().lower()
    if not normalised:
        return "none"
    return normalised if normalised in REASONS else "other"


# Buckets. Video work spans milliseconds (one model call) to hours (one long job).
#: One stage over one frame batch: ~1 ms (a small decode) to tens of seconds (a stalled encoder).
STAGE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: One frame end to end; 0.5 s is the slow-frames alert threshold, so it is a bucket edge.
FRAME_BUCKETS = (
    0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: One chunk attempt (and the seed's swap run): seconds to an hour (the visibility timeout).
CHUNK_BUCKETS = (
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
)  # fmt: skip
#: One whole job: tens of seconds to a working day.
JOB_BUCKETS = (
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
)  # fmt: skip
#: Time from enqueue to a worker starting the task.
WAIT_BUCKETS = (
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


build_info = Gauge(
    "facefusion_build_info",
    "Always 1; the version label says which code the live worker processes run.",
    ["version"],
    multiprocess_mode="livemax",
)
build_info.labels(version=__version__).set(1)

jobs_total = Counter(
    "facefusion_jobs_total",
    "Jobs finished, by outcome (succeeded|failed|cancelled) and bounded reason.",
    ["outcome", "reason"],
)
chunks_total = Counter(
    "facefusion_chunks_total",
    "Chunk attempts finished, by outcome (succeeded|retried|failed) and bounded reason; an "
    "attempt whose process died (worker_lost) or that the sweep gave back (stalled) counts "
    "when the chunk is next delivered.",
    ["outcome", "reason"],
)
face_swap_requests_total = Counter(
    "facefusion_face_swap_requests_total",
    "Swap runs (one per chunk attempt or local run), by status (success|error).",
    ["status"],
)
face_swap_duration_seconds = Histogram(
    "facefusion_face_swap_duration_seconds",
    "Wall time of one swap run (a chunk attempt or a local run).",
    buckets=CHUNK_BUCKETS,
)
job_duration_seconds = Histogram(
    "facefusion_job_duration_seconds",
    "Wall time of a job from submission to its final state.",
    buckets=JOB_BUCKETS,
)
chunk_duration_seconds = Histogram(
    "facefusion_chunk_duration_seconds",
    "Wall time of one chunk attempt on a worker.",
    buckets=CHUNK_BUCKETS,
)
frames_processed_total = Counter(
    "facefusion_frames_processed_total",
    "Frames written by the pipeline (swapped or passed through).",
)
faces_swapped_total = Counter(
    "facefusion_faces_swapped_total",
    "Faces swapped.",
)
stage_duration_seconds = Histogram(
    "facefusion_stage_duration_seconds",
    "Time one pipeline stage spent on one frame batch.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
frame_duration_seconds = Histogram(
    "facefusion_frame_duration_seconds",
    "Processing time per frame (a batch's time divided over its frames).",
    buckets=FRAME_BUCKETS,
)
model_batch_size = Histogram(
    "facefusion_model_batch_size",
    "Inputs per model call.",
    ["model"],
    buckets=BATCH_BUCKETS,
)
queue_wait_seconds = Histogram(
    "facefusion_queue_wait_seconds",
    "Time from enqueue (ff_enqueued_at header) to a worker starting the task.",
    ["queue"],
    buckets=WAIT_BUCKETS,
)
# livesum: each process sets 0/1; the sum of live processes is how many are busy, and a dead
# process drops out instead of staying "busy" forever. No pid label: it would churn with
# every recycled worker.
worker_busy = Gauge(
    "facefusion_worker_busy",
    "Worker processes running a task from this queue right now (each reports 0 or 1).",
    ["queue"],
    multiprocess_mode="livesum",
)
# livemin: a busy process stamps its task start and every frame batch with the host's monotonic
# clock, and +Inf when it goes idle; the oldest stamp of the live processes is the one that
# stopped. Only the exporter reads it (it serves facefusion_worker_progress_age_seconds on the
# same clock): one process, not a host's sum, so a hung process beside working ones shows.
worker_progress_monotonic = Gauge(
    "facefusion_worker_progress_monotonic_seconds",
    "Internal: the oldest last-progress time (the host's CLOCK_MONOTONIC) of the live processes "
    "busy with this queue, +Inf when none is; served as facefusion_worker_progress_age_seconds.",
    ["queue"],
    multiprocess_mode="livemin",
)
for _queue in QUEUES:
    # +Inf from the start: a process that reused a dead one's pid (and so its files) would show
    # that one's last stamp, an old one, as if it had hung.
    worker_progress_monotonic.labels(queue=_queue).set(math.inf)
worker_processes = Gauge(
    "facefusion_worker_processes",
    "Live worker processes (each sets 1 at start); busy / processes = utilisation.",
    multiprocess_mode="livesum",
)
stall_recoveries_total = Counter(
    "facefusion_stall_recoveries_total",
    "Work with no progress for stall_seconds that the stall sweep requeued (kind chunk, plan, "
    "stitch; action requeued) or whose job it failed (kind job; action failed).",
    ["kind", "action"],
)
gpu_oom_total = Counter(
    "facefusion_gpu_oom_total",
    "GPU out-of-memory errors caught at a model call, by kind and model.",
    ["kind", "model"],
)
# livemin: when any live process has halved its cap, the dashboard shows the tightest one.
model_batch_limit = Gauge(
    "facefusion_model_batch_limit",
    "Current batch cap per model after OOM halving (lowest over live processes).",
    ["model"],
    multiprocess_mode="livemin",
)

# Start the series alerts depend on at 0: a series born at 1 shows no increase(), so the first
# OOM would go unseen and the first finished chunk would not count as progress (the OOM alert
# also catches series born non-zero, for labels outside these lists).
for _kind in OOM_KINDS:
    for _model in OOM_MODELS:
        gpu_oom_total.labels(kind=_kind, model=_model)
for _status in SWAP_STATUSES:
    face_swap_requests_total.labels(status=_status)
chunks_total.labels(outcome="succeeded", reason="none")
jobs_total.labels(outcome="succeeded", reason="none")
# Every failure too (the reasons are a closed set): the first chunk failure after a start
# was invisible to rate(), so the failure-ratio alert and the dashboard's failure panels read 0.
for _reason in sorted(REASONS - {"none"}):
    for _outcome in ("retried", "failed"):
        chunks_total.labels(outcome=_outcome, reason=_reason)
    jobs_total.labels(outcome="failed", reason=_reason)
jobs_total.labels(outcome="cancelled", reason="cancelled")
for _kind, _action in (("chunk", "requeued"), ("plan", "requeued"), ("stitch", "requeued"),
                       ("job", "failed")):  # fmt: skip
    stall_recoveries_total.labels(kind=_kind, action=_action)


#: Labels of the NVML series: the CUDA index in the exporter's (the host's) numbering, and the
#: GPU-… / MIG-… UUID, the one name that means the same device in every container.
GPU_LABELS = ("gpu", "gpu_uuid")

#: Exporter-side metrics, computed at scrape time by the exporter's collectors (never in
#: workers): name -> (type, help, label names). The collectors take their help text from here.
EXPORTER_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "facefusion_queue_length": (
        "gauge",
        "Messages waiting in the queue, all priority sub-queues summed.",
        ("queue",),
    ),
    "facefusion_queue_unacked": (
        "gauge",
        "Messages delivered to a worker (prefetched or running) and not yet acknowledged.",
        ("queue",),
    ),
    "facefusion_queue_backlog": (
        "gauge",
        "Waiting plus unacknowledged messages: work not finished yet.",
        ("queue",),
    ),
    "facefusion_queue_oldest_age_seconds": (
        "gauge",
        "Age of the oldest waiting message (from its ff_enqueued_at header); 0 when empty.",
        ("queue",),
    ),
    "facefusion_redis_used_memory_bytes": (
        "gauge",
        "Memory the broker's Redis uses (INFO memory); absent where INFO is not allowed.",
        (),
    ),
    "facefusion_redis_maxmemory_bytes": (
        "gauge",
        "The broker's Redis maxmemory (0: no limit), by its maxmemory-policy; past it, with "
        "noeviction (or a volatile-* policy with nothing to evict), Redis refuses writes: "
        "heartbeats expire (workers read as gone) and jobs stop moving.",
        ("policy",),
    ),
    "facefusion_workers_alive": (
        "gauge",
        "Workers whose heartbeat key (facefusion:worker:*) has not expired.",
        (),
    ),
    "facefusion_queue_workers": (
        "gauge",
        "Live worker processes (unexpired heartbeats) that consume this queue.",
        ("queue",),
    ),
    "facefusion_chunks_running": (
        "gauge",
        "Chunks a worker has started and not finished (in the running set).",
        (),
    ),
    "facefusion_chunks_stalled": (
        "gauge",
        "Running chunks with no frame progress for stall_seconds (the sweep gives them back).",
        (),
    ),
    "facefusion_jobs_stalled": (
        "gauge",
        "Unfinished jobs with no progress for stall_seconds: a stalled chunk, a chunk whose "
        "message was lost (waiting that long with the gpu queue empty), or stuck queued, "
        "planning or stitching.",
        (),
    ),
    "facefusion_worker_progress_age_seconds": (
        "gauge",
        "Seconds since the busy process (on this host, consuming this queue) that progressed "
        "least recently started its task or wrote a frame batch; 0 when none is busy.",
        ("queue",),
    ),
    "facefusion_chunk_progress_oldest_age_seconds": (
        "gauge",
        "Seconds since the running chunk that progressed least recently last did; 0 if none.",
        (),
    ),
    "facefusion_metrics_disabled_processes_total": (
        "counter",
        "Worker processes of this launcher that stopped writing metrics (storage full or gone); "
        "they keep working.",
        (),
    ),
    "facefusion_exporter_collector_up": (
        "gauge",
        "1 if this collector's part of the scrape worked, else 0 (the rest is still served; "
        "the queues collector reads 0 while Redis is unreachable).",
        ("collector",),
    ),
    "facefusion_exporter_redis_up": (
        "gauge",
        "1 if the exporter could read the broker at this scrape, else 0.",
        (),
    ),
    "facefusion_gpu_memory_used_bytes": (
        "gauge",
        "GPU memory in use (NVML); gpu is the CUDA index, gpu_uuid the GPU or MIG UUID.",
        GPU_LABELS,
    ),
    "facefusion_gpu_memory_total_bytes": ("gauge", "GPU memory installed (NVML).", GPU_LABELS),
    "facefusion_gpu_utilization_ratio": (
        "gauge",
        "Fraction of the last sample period the GPU was busy (NVML), 0..1; absent on MIG.",
        GPU_LABELS,
    ),
    "facefusion_exporter_multiproc_files": (
        "gauge",
        "Metric files in the multiprocess directory after compaction.",
        (),
    ),
    "facefusion_exporter_compacted_processes_total": (
        "counter",
        "Dead processes whose metric files were folded into the archive by this exporter.",
        (),
    ),
    "facefusion_exporter_compaction_seconds": (
        "gauge",
        "Duration of the last compaction run.",
        (),
    ),
}

# GPU workers (issue 8): which provider a worker process really runs on, and which encoder.
EXPORTER_METRICS["facefusion_gpu_process_memory_used_bytes"] = (
    "gauge",
    "GPU memory used by one process (NVML's compute processes), by CUDA index, UUID and pid.",
    (*GPU_LABELS, "pid"),
)

#: The `provider` label of facefusion_worker_info: what onnxruntime really ran the models on.
WORKER_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

# livemax: one series per distinct label set of the live processes; a process that exits drops
# out. The labels are bounded: providers, the requested choice, and one UUID/index per GPU.
worker_info = Gauge(
    "facefusion_worker_info",
    "Always 1 per model-loading process: provider it really runs on, the provider requested "
    "(auto|cuda|cpu), and the GPU it is pinned to (gpu_uuid, or cuda_index when pinned by index).",
    ["provider", "requested", "gpu_uuid", "cuda_index"],
    multiprocess_mode="livemax",
)

#: The `encoder` label of facefusion_video_encodes_total (anything else counts as "other").
VIDEO_ENCODERS = (*ENCODERS, "other")

video_encodes_total = Counter(
    "facefusion_video_encodes_total",
    "Video writers started (one per chunk attempt or local run), by the encoder really used.",
    ["encoder"],
)


def bounded_encoder(encoder: str) -> str:
    """`encoder` if it is one this project chooses, else "other" (bounded cardinality)."""
    return encoder if encoder in VIDEO_ENCODERS else "other"
