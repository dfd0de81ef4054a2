"""Several source photos of one person: local and distributed swaps use their mean identity, a
photo without a face is named, and a job recorded with one `source` field still runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefusion_tasks.app import TASK_PLAN
from facefusion_tasks.faces.synthetic import background
from facefusion_tasks.store import SUCCEEDED
from facefusion_tasks.tasks import enqueue
from facefusion_tasks.video.samples import face_positions, make_sample_video
from tests.cluster import Cluster, cluster
from tests.media import decode_frames, video_times, write_second_face, write_source_face

pytestmark = pytest.mark.timeout(240)

#: 2 s at 25 fps, one face, no audio: four chunks of 0.5 s.
CLIP = {"seconds": 2, "width": 160, "height": 120, "faces": 1, "audio": False}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root: two photos of "one person", a photo without a face, a clip."""
    base = tmp_path_factory.mktemp("sources")
    write_source_face(base / "a.png")
    write_second_face(base / "b.png")
    cv2.imwrite(str(base / "noface.png"), background(200, 200, 0))
    make_sample_video(base / "clip.mp4", **CLIP)  # type: ignore[arg-type]
    (base / "out").mkdir()
    return base


@pytest.fixture()
def fleet(root: Path, models_dir: Path) -> Iterator[Cluster]:
    with cluster(root, models_dir, visibility_timeout="12", chunk_time_limit="10") as c:
        yield c


def _cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facefusion_tasks", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _local_env(env: dict[str, str]) -> dict[str, str]:
    """The fleet's environment without a broker: local mode, the same models and settings."""
    return env | {"FACEFUSION_BROKER_URL": ""}


def _face_colours(path: Path) -> np.ndarray:
    """The mean BGR of a 5×5 patch at the face's centre, frame by frame: the stand-in swapper
    tints a face with a colour drawn from the source identity."""
    colours = []
    for index, frame in enumerate(decode_frames(path)):
        ((cx, cy, _),) = face_positions(CLIP["width"], CLIP["height"], 1, index)  # type: ignore[arg-type]
        x, y = int(cx), int(cy)
        colours.append(frame[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0))
    return np.array(colours)


def test_two_sources_locally_swap_in_neither_photo_alone(fleet: Cluster, root: Path) -> None:
    env = _local_env(fleet.env)
    outputs = {}
    for name, sources in (
        ("a", ["a.png"]),
        ("b", ["b.png"]),
        ("ab", ["a.png", "b.png"]),
    ):
        output = root / "out" / f"local-{name}.mp4"
        flags = [arg for source in sources for arg in ("--source", root / source)]
        proc = _cli("swap", *flags, root / "clip.mp4", "-o", output, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["faces_swapped"] == 50
        outputs[name] = _face_colours(output)
    # The positional form is the one-source form it always was.
    positional = root / "out" / "local-positional.mp4"
    proc = _cli("swap", root / "a.png", root / "clip.mp4", "-o", positional, env=env)
    assert proc.returncode == 0, proc.stderr
    assert np.abs(_face_colours(positional) - outputs["a"]).max() <= 2
    # The mean identity's tint is another colour than either photo's alone.
    for single in ("a", "b"):
        assert np.abs(outputs["ab"] - outputs[single]).max(axis=1).min() > 10


def test_a_source_without_a_face_is_named_and_nothing_is_written(
    fleet: Cluster, root: Path
) -> None:
    output = root / "out" / "noface.mp4"
    proc = _cli("swap", "--source", root / "a.png", "--source", root / "noface.png",
                root / "clip.mp4", "-o", output, env=_local_env(fleet.env))  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"facefusion-tasks: error: {root / 'noface.png'}: no face found in the source image"
    )
    assert not output.exists()
    assert [p.name for p in (root / "out").iterdir() if p.name.startswith(".")] == []


def test_submit_with_two_sources_runs_on_the_workers_as_locally(fleet: Cluster, root: Path) -> None:
    fleet.start_worker("w1")
    output = root / "out" / "fleet-ab.mp4"
    proc = _cli("submit", "--source", root / "a.png", "--source", root / "b.png",
                root / "clip.mp4", "-o", output, "--chunk-seconds", "0.5", env=fleet.env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    producer = fleet.producer()
    status = producer.wait(proc.stdout.strip(), timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert status.chunks_total == 4
    assert status.sources == [str(root / "a.png"), str(root / "b.png")]
    assert video_times(output) == video_times(root / "clip.mp4")
    local = root / "out" / "fleet-ab-local.mp4"
    proc = _cli("swap", "--source", root / "a.png", "--source", root / "b.png",
                root / "clip.mp4", "-o", local, env=_local_env(fleet.env))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # Each chunk is its own encode: the same tint, within codec noise (measured: up to 3.4
    # levels; another identity's tint is more than 10 away, see the local test).
    assert np.abs(_face_colours(output) - _face_colours(local)).max() <= 5


def test_a_job_recorded_with_one_source_field_still_runs(fleet: Cluster, root: Path) -> None:
    """A record (and its queued plan message) written before several sources existed: the
    fields the earlier producer stored, with no `sources`."""
    fleet.start_worker("w1")
    producer = fleet.producer()
    output = root / "out" / "legacy.mp4"
    job_id = producer.store.create(
        {
            "source": str(root / "a.png"),
            "target": str(root / "clip.mp4"),
            "output": str(output),
            "reference": "",
            "face_selector": "many",
            "reference_distance": 0.6,
            "priority": 5,
            "chunk_seconds": 1.0,
            "frames_total": 50,
        }
    )
    enqueue(producer.app, TASK_PLAN, [job_id], priority=5, sent_at=time.time())
    status = producer.wait(job_id, timeout=120)
    assert status.state == SUCCEEDED, (status.reason, status.error)
    assert status.sources == [str(root / "a.png")]
    local = root / "out" / "legacy-local.mp4"
    proc = _cli("swap", root / "a.png", root / "clip.mp4", "-o", local, env=_local_env(fleet.env))
    assert proc.returncode == 0, proc.stderr
    assert np.abs(_face_colours(output) - _face_colours(local)).max() <= 5
