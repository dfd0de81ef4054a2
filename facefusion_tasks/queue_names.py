"""The Celery queues' names, shared by the app, the workers, the sweep and the metrics."""

from __future__ import annotations

#: Chunk work (decode, models, encode): consumed by GPU workers.
GPU_QUEUE = "gpu"
#: Planning and stitching: cheap, no models; any worker with ffmpeg and the shared storage.
LIGHT_QUEUE = "light"
