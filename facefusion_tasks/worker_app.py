"""The Celery app that worker processes load (`celery -A facefusion_tasks.worker_app`)."""

from __future__ import annotations

from facefusion_tasks.app import make_app
from facefusion_tasks.config import Settings
from facefusion_tasks.lifeline import follow_launcher

# The Celery main process imports this before it forks its pool: it stops with its launcher.
follow_launcher()
app = make_app(Settings.from_env())
