"""Where a distributed job's temporary segments live on the shared storage."""

from __future__ import annotations

from pathlib import Path

from facefusion_tasks.config import Settings
from facefusion_tasks.storage import work_dir
from facefusion_tasks.video.codecs import segment_muxer


def segment_dir(settings: Settings, job_id: str) -> Path:
    """The job's scratch directory on shared storage."""
    return work_dir(settings) / job_id


def segment_path(settings: Settings, job_id: str, index: int, *, muxer: str = "mp4") -> Path:
    """Where chunk `index` of a job whose output uses `muxer` writes its encoded frames
    (replaced atomically on a rerun), in the container segment_muxer() picks for it."""
    suffix = "webm" if segment_muxer(muxer) == "webm" else "mp4"
    return segment_dir(settings, job_id) / f"seg-{index:05d}.{suffix}"
