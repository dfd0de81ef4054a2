"""The Celery queues' and tasks' names, shared by the app, the workers, the sweep and the metrics."""

from __future__ import annotations

#: Chunk work (decode, models, encode): consumed by GPU workers.
GPU_QUEUE = "gpu"
#: Planning and stitching: cheap, no models; any worker with ffmpeg and the shared storage.
LIGHT_QUEUE = "light"

#: The tasks, by the names their messages carry.
TASK_PLAN = "facefusion.plan"
TASK_CHUNK = "facefusion.chunk"
TASK_STITCH = "facefusion.stitch"
#: Count the end of a cancelled job whose waiting chunk messages its canceller withdrew.
TASK_CLOSE = "facefusion.close"
