"""Where a distributed job's temporary segments live on the shared storage."""

from __future__ import annotations

from pathlib import Path

from facefusion_tasks.config import Settings
from facefusion_tasks.storage import work_dir


def segment_dir(settings: Settings, job_id: str) -> Path:
    """The job's scratch directory on shared storage."""
    return work_dir(settings) / job_id


def segment_path(settings: Settings, job_id: str, index: int) -> Path:
    """Where chunk `index` writes its encoded frames (replaced atomically on a rerun)."""
    return segment_dir(settings, job_id) / f"seg-{index:05d}.mp4"
