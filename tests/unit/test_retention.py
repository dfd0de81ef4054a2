"""Retention on a real Redis database: finished records expire, retried ones stay, leftovers go."""

from __future__ import annotations

import os
import time
import uuid
from fractions import Fraction
from pathlib import Path

from facefusion_tasks.config import Settings
from facefusion_tasks.jobs import Chunk
from facefusion_tasks.liveness import sweep_work_dirs
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import FAILED, PLANNING, RUNNING, SUCCEEDED, JobStore

TTL = 3600


def _output() -> str:
    """An output of its own: unfinished jobs may not share one."""
    return f"o-{uuid.uuid4().hex}.mp4"


def _planned(store: JobStore, chunks: int = 2) -> tuple[JobStore, str]:
    store = JobStore(store.r, record_ttl=TTL)
    job_id = store.create({"source": "s.png", "target": "t.mp4", "output": _output()})
    plan = [Chunk(i, i * 10, (i + 1) * 10, 10, Fraction(1, 2)) for i in range(chunks)]
    store.set_state(job_id, PLANNING)  # as the planner does
    store.set_plan(job_id, plan, 10 * chunks, {})
    assert store.set_state(job_id, RUNNING)
    store.chunk_done(job_id, 0, 10)
    return store, job_id


def _ttls(store: JobStore, job_id: str) -> dict[str, int]:
    keys = [k for k in store.r.scan_iter(f"facefusion:job:{job_id}*")]
    return {str(k): int(store.r.ttl(k)) for k in keys}


def test_a_running_job_never_expires(store: JobStore) -> None:
    store, job_id = _planned(store)
    ttls = _ttls(store, job_id)
    assert ttls and all(ttl == -1 for ttl in ttls.values()), ttls


def test_a_finished_job_expires_with_every_chunk(store: JobStore) -> None:
    store, job_id = _planned(store)
    assert store.set_state(job_id, SUCCEEDED)
    ttls = _ttls(store, job_id)
    assert f"facefusion:job:{job_id}" in ttls and f"facefusion:job:{job_id}:chunk:1" in ttls
    assert all(TTL - 5 <= ttl <= TTL for ttl in ttls.values()), ttls


def test_a_cancelled_job_expires_too(store: JobStore) -> None:
    store, job_id = _planned(store)
    assert store.cancel(job_id)[0]
    assert all(TTL - 5 <= ttl <= TTL for ttl in _ttls(store, job_id).values())


def test_a_retried_job_is_kept_again_until_it_ends(store: JobStore) -> None:
    store, job_id = _planned(store)
    assert store.set_state(job_id, FAILED, reason=Reason.MEDIA, error="boom")
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
    assert all(ttl == -1 for ttl in _ttls(store, job_id).values())


def test_the_index_forgets_only_jobs_whose_records_are_gone(store: JobStore) -> None:
    store, kept = _planned(store)
    _, gone = _planned(store)
    store.r.delete(f"facefusion:job:{gone}")  # what an expiry does
    later = time.time() + TTL + 1
    assert store.forget_expired(now=later) == 1
    assert store.recent() == [kept]


def test_work_dirs_go_when_nothing_will_read_them(store: JobStore, tmp_path: Path) -> None:
    settings = Settings.from_env({}, storage_roots=str(tmp_path), stall_seconds=60)
    store, running = _planned(store)
    _, failed = _planned(store)
    _, succeeded = _planned(store)
    store.set_state(failed, FAILED, reason=Reason.MEDIA, error="boom")
    store.set_state(succeeded, SUCCEEDED)
    orphan = "0123456789abcdef"  # its record is gone (Redis restarted without AOF)
    base = tmp_path / ".facefusion-work"
    for name in (running, failed, succeeded, orphan, "not-a-job"):
        (base / name).mkdir(parents=True)
        (base / name / "seg-00000.mp4").write_bytes(b"x")
    fresh = "fedcba9876543210"  # no record yet, but too young to judge
    (base / fresh).mkdir()
    old = time.time() - 3600
    for name in (running, failed, succeeded, orphan, "not-a-job"):
        os.utime(base / name, (old, old))
    removed = sweep_work_dirs(store, settings, now=time.time())
    assert sorted(removed) == sorted([succeeded, orphan])
    # A failed job keeps its segments for `retry`; a running one and strangers are untouched.
    assert sorted(p.name for p in base.iterdir()) == sorted([running, failed, fresh, "not-a-job"])


def test_a_job_stuck_committing_gets_a_stitch_to_finish_its_commit(store: JobStore) -> None:
    """The stitcher died between verifying its file and recording success: the sweep sends a
    stitch, which finishes the commit from the job's commit mark or fails the job as stalled
    (both in test_plan_and_stitch_races); past max_deliveries recoveries the sweep fails it."""
    from facefusion_tasks.liveness import sweep
    from facefusion_tasks.store import COMMITTING, STITCHING

    store, job_id = _planned(store)
    assert store.set_state(job_id, STITCHING) and store.set_state(job_id, COMMITTING)
    settings = Settings.from_env({}, stall_seconds=10)
    sent: list[tuple[str, list[object], int]] = []
    later = time.time() + 60
    for round_ in range(settings.max_deliveries + 1):
        report = sweep(
            store,
            settings,
            enqueue=lambda *call: sent.append(call),
            light_line=lambda _: frozenset(),
            gpu_line=lambda _: frozenset(),
            now=later + 60 * round_,
        )
    assert sent == [("stitch", [job_id], 9)] * settings.max_deliveries
    assert report.failed_jobs == [(job_id, Reason.STALLED)]
    assert store.state(job_id) == FAILED
    assert store.reopen(job_id, planned=True, from_states=(FAILED,))
