"""The Celery app that worker processes load (`celery -A facefusion_tasks.worker_app`)."""

from __future__ import annotations

from facefusion_tasks.app import make_app
from facefusion_tasks.config import Settings

app = make_app(Settings.from_env())
