"""The host scratch directory is this user's own, and its stale sweep never follows a link."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from facefusion_tasks import workspace
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason


@pytest.fixture()
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private stand-in for the shared temp directory (TMPDIR)."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(shared))
    return shared


def _old(path: Path) -> None:
    stale = time.time() - workspace.STALE_SCRATCH_SECONDS - 60
    os.utime(path, (stale, stale), follow_symlinks=False)


def test_the_default_scratch_is_per_user_private_and_swept_of_stale_entries(
    temp_dir: Path,
) -> None:
    settings = Settings.from_env({})
    with workspace.scratch(settings, "job") as path:
        base = path.parent
        assert base == temp_dir / f"facefusion-scratch-{os.getuid()}"
        assert base.stat().st_mode & 0o777 == 0o700
        assert path.is_dir()
    assert not path.exists()
    (base / "left-by-a-killed-task").mkdir()
    (base / "left-by-a-killed-task" / "frames.mp4").write_bytes(b"x")
    (base / "a-file").write_bytes(b"x")
    (base / "fresh").mkdir()
    for entry in ("left-by-a-killed-task", "a-file"):
        _old(base / entry)
    with workspace.scratch(settings, "job"):
        pass
    assert sorted(p.name for p in base.iterdir()) == ["fresh"]


def test_a_planted_symlink_as_the_scratch_is_refused_and_nothing_behind_it_is_swept(
    temp_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    (victim / "old").mkdir(parents=True)
    _old(victim / "old")
    (temp_dir / f"facefusion-scratch-{os.getuid()}").symlink_to(victim)
    with (
        pytest.raises(InputError, match="not this user's own") as caught,
        workspace.scratch(Settings.from_env({}), "job"),
    ):
        pass
    assert caught.value.reason is Reason.CONFIG
    assert (victim / "old").is_dir() and [p.name for p in victim.iterdir()] == ["old"]


def test_a_scratch_writable_by_others_is_refused(temp_dir: Path) -> None:
    base = temp_dir / f"facefusion-scratch-{os.getuid()}"
    base.mkdir()
    base.chmod(0o777)
    with pytest.raises(InputError, match="writable by others"):
        workspace.scratch_base(Settings.from_env({}))


def test_a_link_inside_the_scratch_is_removed_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "old").mkdir(parents=True)
    _old(victim / "old")
    base = tmp_path / "configured"
    base.mkdir()
    link = base / "stale-link"
    link.symlink_to(victim)
    _old(link)
    with workspace.scratch(Settings.from_env({}, scratch_dir=str(base)), "job"):
        pass
    assert not link.is_symlink() and (victim / "old").is_dir()
