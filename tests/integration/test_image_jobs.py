"""An image job's plan, chunk and commit on a real Redis and real onnxruntime, races included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pytest

from facefusion_tasks import runner, stitching
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import MediaError
from facefusion_tasks.store import CANCELLED, COMMITTING, DONE, RUNNING, SUCCEEDED, JobStore
from facefusion_tasks.workspace import segment_dir
from tests.media import face_photo, write_source_face


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write_source_face(tmp_path / "source.png")
    cv2.imwrite(str(tmp_path / "photo.png"), face_photo(160, 120))
    return tmp_path


def _settings(root: Path, models: Path) -> Settings:
    return Settings.from_env(
        {},
        storage_roots=str(root),
        models_dir=models,
        execution_provider="cpu",
        allow_standin_models=True,
    )


def _planned_job(store: JobStore, settings: Settings, root: Path) -> str:
    job_id = store.create(
        {
            "source": str(root / "source.png"),
            "target": str(root / "photo.png"),
            "output": str(root / "out.png"),
        }
    )
    assert runner.plan_job(store, settings, job_id) == [0]
    return job_id


def test_an_image_job_is_planned_as_one_chunk_of_one_frame_without_segments(
    store: JobStore, root: Path, models_dir: Path
) -> None:
    settings = _settings(root, models_dir)
    job_id = _planned_job(store, settings, root)
    status = store.status(job_id)
    assert status is not None and status.state == RUNNING
    assert (status.chunks_total, status.frames_total) == (1, 1)
    assert store.chunk_plan(job_id, 0).frames == 1
    assert not segment_dir(settings, job_id).exists()


def test_a_cancel_that_lands_during_the_swap_leaves_the_users_file_alone(
    store: JobStore, root: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(root, models_dir)
    job_id = _planned_job(store, settings, root)
    (root / "out.png").write_bytes(b"the user's old file")
    real = runner.swap_image

    def swap_then_cancel(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        assert store.cancel(job_id)[0]  # before COMMITTING: the cancel wins
        return done

    monkeypatch.setattr(runner, "swap_image", swap_then_cancel)
    assert runner.run_chunk(store, settings, job_id, 0, worker="w") == (None, False)
    assert store.state(job_id) == CANCELLED
    assert (root / "out.png").read_bytes() == b"the user's old file"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_a_worker_lost_between_commit_and_success_is_finished_by_the_stitch(
    store: JobStore, root: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk renamed the output into place and marked itself done, then died before
    recording success; a stitch (sent by the sweep, or by `retry` as here) finds the
    committed output and records the success."""
    settings = _settings(root, models_dir)
    job_id = _planned_job(store, settings, root)
    real = store.set_state

    def die_before_success(job: str, state: str, **kwargs: Any) -> bool:
        if state == SUCCEEDED:
            raise SystemExit("killed")
        return real(job, state, **kwargs)

    monkeypatch.setattr(store, "set_state", die_before_success)
    with pytest.raises(SystemExit):
        runner.run_chunk(store, settings, job_id, 0, worker="w")
    monkeypatch.undo()
    assert store.state(job_id) == COMMITTING and store.chunks(job_id)[0]["state"] == DONE
    written = (root / "out.png").read_bytes()
    assert store.reopen(job_id, planned=True, from_states=(COMMITTING,))
    assert stitching.stitch_job(store, settings, job_id) == root / "out.png"
    assert store.state(job_id) == SUCCEEDED
    assert (root / "out.png").read_bytes() == written

    # Had the output gone meanwhile, the stitch says so rather than claim success.
    other = _planned_job(store, settings, root)
    monkeypatch.setattr(store, "set_state", die_before_success)
    with pytest.raises(SystemExit):
        runner.run_chunk(store, settings, other, 0, worker="w")
    monkeypatch.undo()
    (root / "out.png").unlink()
    assert store.reopen(other, planned=True, from_states=(COMMITTING,))
    with pytest.raises(MediaError, match="the committed image is gone"):
        stitching.stitch_job(store, settings, other)
