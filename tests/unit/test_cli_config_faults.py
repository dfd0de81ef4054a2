"""A setting that cannot work is the user's config: one line, exit 2, before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facefusion_tasks import cli
from facefusion_tasks.faces.synthetic import write_source
from facefusion_tasks.video import ffbin
from facefusion_tasks.video.samples import make_sample_video


@pytest.fixture()
def swap_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A local swap of a real 2 s clip (no broker), which the settings below stop early."""
    monkeypatch.delenv("FACEFUSION_BROKER_URL", raising=False)
    target = make_sample_video(tmp_path / "in.mp4", seconds=2, width=160, height=120, faces=1)
    source = write_source(tmp_path)
    return ["swap", str(source), str(target), "-o", str(tmp_path / "out.mp4"), "--no-progress"]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_local_swap_refuses_the_chunking_a_submit_refuses(
    swap_argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both ran here with exit 0 and were refused, exit 2, once a broker was set.
    assert cli.main([*swap_argv, "--chunk-seconds", "0.1"]) == 2
    assert "chunk seconds must be a finite number of at least 0.5" in _one_line(capsys)
    monkeypatch.setenv("FACEFUSION_MAX_CHUNKS", "1")
    assert cli.main([*swap_argv, "--chunk-seconds", "1"]) == 2
    assert "over the limit of 1 (FACEFUSION_MAX_CHUNKS)" in _one_line(capsys)
    assert not any(Path(swap_argv[4]).parent.glob("*out*"))


def test_a_scratch_directory_nothing_can_be_made_in_is_config(
    swap_argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # /proc takes no new directory (ENOENT), even for root: an internal error, exit 1.
    monkeypatch.setenv("FACEFUSION_SCRATCH_DIR", "/proc")
    assert cli.main(swap_argv) == 2
    assert "scratch directory /proc: cannot make a directory in it" in _one_line(capsys)


@pytest.mark.parametrize("program", ["/bin/false", "ffprobe"])
def test_an_ffmpeg_setting_naming_another_program_is_config_not_the_users_video(
    program: str,
    swap_argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The valid clip was called "not a video file", exit 2, blaming the user's input.
    assert shutil.which(program), f"{program} is part of the test environment"
    ffbin.ffmpeg_exe.cache_clear()
    monkeypatch.setenv("FACEFUSION_FFMPEG", program)
    try:
        assert cli.main(swap_argv) == 2
    finally:
        ffbin.ffmpeg_exe.cache_clear()
    err = _one_line(capsys)
    assert f"{program}: not a working ffmpeg" in err and "not a video" not in err
