"""Job and chunk states, and the Redis keys that hold a job's records."""

from __future__ import annotations

import uuid

PREFIX = "facefusion"

# Job states. A job moves QUEUED -> PLANNING -> RUNNING -> STITCHING -> COMMITTING -> SUCCEEDED,
# or ends FAILED from any of them, or CANCELLED from any before COMMITTING.
QUEUED, PLANNING, RUNNING, STITCHING = "QUEUED", "PLANNING", "RUNNING", "STITCHING"
#: The stitched file is verified and about to be renamed over the output: too late to cancel.
COMMITTING = "COMMITTING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: States a cancel may end; from COMMITTING on the output belongs to the user.
CANCELLABLE = (QUEUED, PLANNING, RUNNING, STITCHING)
#: States that only move on while a task works on them (what a stalled job sits in).
ACTIVE = (QUEUED, PLANNING, RUNNING, STITCHING, COMMITTING)
# Chunk states (a chunk also ends FAILED or CANCELLED, as its job does).
PENDING, DONE = "PENDING", "DONE"
#: Job states with no chunk heartbeat of their own: a job in one of them is watched through the
#: `live` index (time it entered the state), so the sweep finds one stuck there.
WATCHED = frozenset({QUEUED, PLANNING, STITCHING, COMMITTING})


def new_token() -> str:
    """A fresh unique token (a delivery's, a state change's, a completer's)."""
    return uuid.uuid4().hex


def running_member(job_id: str, index: int) -> str:
    """A chunk's member in the running and pending sets."""
    return f"{job_id}:{index}"


def job_key(job_id: str) -> str:
    """The job's hash."""
    return f"{PREFIX}:job:{job_id}"


def chunk_key(job_id: str, index: int) -> str:
    """One chunk's hash."""
    return f"{job_key(job_id)}:chunk:{index}"


def running_key(job_id: str) -> str:
    """The set of chunk indexes a worker is executing right now."""
    return f"{job_key(job_id)}:running"


def done_key(job_id: str) -> str:
    """The set of chunk indexes that are DONE."""
    return f"{job_key(job_id)}:done"
