"""The one ffmpeg process helper: error lines, timeouts, the re-count, and temp files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import MediaError, OutputError, TransientError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import ffbin, process, staging
from facefusion_tasks.video.writer import FrameWriter

TRAILER_ENOSPC = (
    "[mp4 @ 0x55d0c0a1b2c0] [error] Error writing trailer of out.mp4: No space left on device"
)


def test_error_lines_fail_a_run_even_with_exit_code_zero() -> None:
    log = process.StderrLog().feed(
        "[info] Stream mapping:\n[warning] deprecated pixel format used\n" + TRAILER_ENOSPC
    )
    assert list(log.errors) == ["Error writing trailer of out.mp4: No space left on device"]
    failure = log.failure("encoding out.mp4", 0)
    assert isinstance(failure, MediaError) and failure.reason is Reason.NO_SPACE
    assert "no space left on device" in str(failure)
    assert process.StderrLog().feed("[warning] only a warning").failure("x", 0) is None
    other = process.StderrLog().feed("[fatal] Invalid argument").failure("x", 0)
    assert other is not None and other.reason is Reason.MEDIA
    assert process.StderrLog().failure("x", 1) is not None  # a bare exit code fails too


def test_exit_255_is_a_stop_from_outside_only_when_ffmpeg_said_nothing_wrong() -> None:
    # ffmpeg catches SIGTERM and SIGINT, stops and exits 255 quietly; from 7.0 its own EPERM
    # exits 255 too, after an error line (an immutable output, some demuxers' damage).
    stopped = process.StderrLog().feed("[info] Exiting normally, received signal 15.")
    failure = stopped.failure("encoding out.mp4", 255)
    assert isinstance(failure, TransientError) and "ffmpeg was stopped (SIGTERM" in str(failure)
    refused = process.StderrLog().feed(
        "[error] Error opening output out.mp4: Operation not permitted"
    )
    failure = refused.failure("encoding out.mp4", 255)
    assert failure is not None and not isinstance(failure, TransientError)
    assert "Operation not permitted (ffmpeg exit 255)" in str(failure)
    assert process.signalled(-9) and not process.signalled(1)
    assert not process.signalled(255, ["Operation not permitted"])
    # ffmpeg 9 stopped while reading its input says so, at error level.
    assert process.signalled(255, ["Error during demuxing: Immediate exit requested"])


def test_the_tail_is_bounded() -> None:
    log = process.StderrLog(limit=5)
    for i in range(1000):
        log.add(f"[error] line {i}")
    assert len(log.tail) == 5 and len(log.errors) == 5 and log.last_error() == "line 999"


def test_a_run_past_its_timeout_is_killed_with_reason_timeout() -> None:
    exe = ffbin.ffmpeg_exe()
    argv = [exe, "-hide_banner", "-nostdin", "-re", "-f", "lavfi", "-i", "color=black:s=16x16"]
    begun = time.monotonic()
    with pytest.raises(MediaError) as caught:
        process.run([*argv, "-f", "null", "-"], timeout=0.5, what="an endless encode")
    assert caught.value.reason is Reason.TIMEOUT
    assert time.monotonic() - begun < 5


def test_parse_framecrc_counts_frames_and_their_span() -> None:
    text = (
        "#tb 0: 1/12800\n#media_type 0: video\n"
        "0,          0,          0,      512,     1234, 0x1\n"
        "0,        512,       1024,      512,      234, 0x2\n"
        "0,       1024,        512,      512,      234, 0x3\n"
    )
    counted = process.parse_framecrc(text)
    assert counted.frames == 3 and counted.duration == Fraction(1536, 12800)
    assert counted.span == Fraction(1024, 12800)  # first frame's start to the last one's
    assert counted.widest == Fraction(512, 12800)  # in time order, not decode order
    assert process.parse_framecrc("#tb 0: 1/25\n") == process.Counted(0, Fraction(0))


def _write(path: Path, frames: int) -> Path:
    with FrameWriter(
        path, width=64, height=48, time_base=Fraction(1, 25), audio_source=None,
        settings=Settings.from_env({}), frame_rate=Fraction(25),
    ) as writer:  # fmt: skip
        for i in range(frames):
            writer.write(np.full((48, 64, 3), i * 9, np.uint8), i)
    return path


def test_verify_accepts_the_file_as_written_and_refuses_anything_else(tmp_path: Path) -> None:
    video = _write(tmp_path / "ten.mp4", 10)
    exe = ffbin.ffmpeg_exe()
    tolerance = Fraction(1, 25)
    counted = process.verify_video(
        video, ffmpeg=exe, frames=10, duration=Fraction(10, 25), tolerance=tolerance, what="t"
    )
    assert counted.frames == 10
    with pytest.raises(MediaError, match="holds 10"):
        process.verify_video(
            video, ffmpeg=exe, frames=11, duration=Fraction(11, 25), tolerance=tolerance, what="t"
        )
    with pytest.raises(MediaError, match="lasts"):
        process.verify_video(
            video, ffmpeg=exe, frames=10, duration=Fraction(1), tolerance=tolerance, what="t"
        )
    # An mp4 cut short (its moov never written) does not read back at all.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(MediaError, match="does not read back"):
        process.count_video(cut, ffmpeg=exe)


def test_temps_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        temp = staging.create_temp(tmp_path / "out.mp4")
    finally:
        os.umask(previous)
    assert temp.name.startswith(".out.") and temp.name.endswith(".partial.mp4")
    assert temp.stat().st_mode & 0o777 == 0o644
    video = _write(tmp_path / "written.mp4", 3)
    assert video.stat().st_mode & 0o777 == 0o666 & ~previous


def test_a_replaced_file_keeps_its_permission_bits(tmp_path: Path) -> None:
    # The temp has the umask's 0644: a private photo swapped in place came out world-readable.
    private = tmp_path / "private.png"
    private.write_bytes(b"the user's old file")
    private.chmod(0o600)
    staging.commit(staging.write_temp(private, b"its swapped copy"), private)
    assert (private.read_bytes(), private.stat().st_mode & 0o777) == (b"its swapped copy", 0o600)
    previous = os.umask(0o022)
    try:
        fresh = staging.commit(
            staging.write_temp(tmp_path / "new.png", b"new"), tmp_path / "new.png"
        )
    finally:
        os.umask(previous)
    assert fresh.stat().st_mode & 0o777 == 0o644


def test_abandoned_temps_are_swept_live_ones_kept(tmp_path: Path) -> None:
    destination = tmp_path / "out.mp4"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = staging.create_temp(destination)  # ours: this process is alive
    host = live.name.split(".")[2].rsplit("-", 2)[0]
    abandoned = tmp_path / f".out.{host}-{dead.pid}-0123abcd.partial.mp4"
    abandoned.write_bytes(b"half a video")
    elsewhere = tmp_path / ".out.otherhost-1-0123abcd.partial.mp4"
    elsewhere.write_bytes(b"another host's, still being written")
    ancient = tmp_path / ".out.otherhost-2-0123abcd.partial.mp4"
    ancient.write_bytes(b"left a week ago")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(ancient, (week_ago, week_ago))
    unrelated = tmp_path / ".other.x-1-0123abcd.partial.mp4"
    unrelated.write_bytes(b"")
    removed = staging.sweep(destination)
    assert sorted(removed) == sorted([abandoned, ancient])
    assert live.exists() and elsewhere.exists() and unrelated.exists()


def test_a_name_near_the_limit_gets_temps_within_it_that_the_sweep_still_finds(
    tmp_path: Path,
) -> None:
    destination = tmp_path / ("é" * 120 + "x" * 10 + ".mp4")  # 254 bytes: a valid name
    temp = staging.create_temp(destination)
    assert len(temp.name.encode()) <= staging.NAME_MAX and temp.name.endswith(".partial.mp4")
    assert staging.create_temp(destination).name[:40] == temp.name[:40]  # cut the same way
    host = temp.name.split(".")[2].rsplit("-", 2)[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = temp.with_name(temp.name.replace(f"{host}-{os.getpid()}-", f"{host}-{dead.pid}-"))
    temp.rename(abandoned)
    assert staging.sweep(destination) == [abandoned]


def test_an_output_folder_moved_mid_encode_is_the_users_doing_and_its_temp_goes(
    tmp_path: Path,
) -> None:
    # A local swap whose output folder was moved during the encode failed as media (exit 1)
    # and left the half-written temp in the moved folder; removed, "ffmpeg stopped".
    for how in ("moved", "removed"):
        folder = tmp_path / how
        folder.mkdir()
        writer = FrameWriter(
            folder / "out.mp4", width=64, height=48, time_base=Fraction(1, 25),
            audio_source=None, settings=Settings.from_env({}), frame_rate=Fraction(25),
        )  # fmt: skip
        for i in range(5):
            writer.write(np.full((48, 64, 3), i * 9, np.uint8), i)
        assert not staging.moved(writer.temp)
        elsewhere = tmp_path / f"{how}-elsewhere"
        folder.rename(elsewhere)
        if how == "removed":
            for entry in elsewhere.iterdir():
                entry.unlink()
            elsewhere.rmdir()
        assert staging.moved(writer.temp)
        with pytest.raises(OutputError, match="folder was moved or removed") as caught:
            writer.commit()
        assert caught.value.reason == Reason.BAD_OUTPUT
        if how == "moved":
            assert list(elsewhere.iterdir()) == []  # the temp went with it, and was removed
