"""What a job's records say: its status as shown, and the inputs it reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from facefusion_tasks.store_keys import DONE


@dataclass
class JobStatus:
    """Everything `status` shows."""

    id: str
    state: str
    #: The first source image (all of them are in `sources`).
    source: str
    target: str
    output: str
    frames_total: int
    frames_done: int
    chunks_total: int
    chunks_done: int
    reason: str = ""
    error: str = ""
    created_at: float = 0.0
    finished_at: float = 0.0
    chunks: list[dict[str, Any]] = field(default_factory=list)
    #: Every source image, in the order given.
    sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)

    @classmethod
    def of(cls, job_id: str, job: dict[str, str], chunks: list[dict[str, str]]) -> JobStatus:
        """The status of a job and its chunks' records as stored."""
        shown: list[dict[str, Any]] = [
            {
                "index": i,
                "state": c.get("state", ""),
                "worker": c.get("worker", ""),
                "frames": int(c.get("frames", 0)),
                "frames_done": int(c.get("frames_done", 0)),
                "attempts": int(c.get("attempts", 0)),
                "deliveries": int(c.get("deliveries", 0) or 0),
                "pid": int(c.get("pid", 0) or 0),
                "heartbeat_at": float(c.get("heartbeat_at", 0) or 0),
                "error": c.get("error", ""),
            }
            for i, c in enumerate(chunks)
        ]
        return cls(
            id=job_id,
            state=job.get("state", ""),
            source=job.get("source", ""),
            target=job.get("target", ""),
            output=job.get("output", ""),
            frames_total=int(job.get("frames_total", 0) or 0),
            frames_done=sum(c["frames_done"] for c in shown),
            chunks_total=len(shown),
            chunks_done=sum(1 for c in shown if c["state"] == DONE),
            reason=job.get("reason", ""),
            error=job.get("error", ""),
            created_at=float(job.get("created_at", 0) or 0),
            finished_at=float(job.get("finished_at", 0) or 0),
            chunks=shown,
            sources=job_sources(job),
        )


def job_inputs(job: dict[str, Any]) -> list[tuple[str, str]]:
    """Everything a job reads, as (location, what it is): its target, source images and
    reference image (a record as stored, or as create() encodes it)."""
    inputs = [(str(job["target"]), "target")] if job.get("target") else []
    inputs += [(source, "source image") for source in job_sources(job)]
    if job.get("reference"):
        inputs.append((str(job["reference"]), "reference image"))
    return inputs


def job_sources(job: dict[str, Any]) -> list[str]:
    """A job's source images: its `sources` list (JSON), or the single `source` of a job
    recorded before several sources were possible (such a record, or its queued message,
    still runs)."""
    raw = job.get("sources")
    if raw:
        return [str(path) for path in json.loads(raw)]
    return [job["source"]] if job.get("source") else []
