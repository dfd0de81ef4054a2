"""Finding the ffmpeg/ffprobe binaries and what they can do (version, encoders, hwaccels)."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from facefusion_tasks.errors import InputError, MediaError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import process

log = logging.getLogger(__name__)

#: Seconds a capability query (-version, -encoders, a trial encode) may take.
QUERY_TIMEOUT = 30.0


@functools.lru_cache(maxsize=8)
def ffmpeg_exe(configured: str = "") -> str:
    """The ffmpeg to run: the configured path, else `ffmpeg` on PATH, else imageio-ffmpeg's.
    A configured one must answer `-version` as ffmpeg does: any other program (ffprobe,
    /bin/false) failed every probe, and the user's valid video was called "not a video"."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise InputError(f"{configured}: ffmpeg executable not found", reason=Reason.CONFIG)
        # One that cannot be run now, or does not answer in time, is the host's state (a
        # MediaError, exit 1); one that runs and is not ffmpeg is the setting (exit 2).
        text = _query(found, "-version")
        if parse_version(text) is None or "ffmpeg version" not in text:
            said = text.strip().splitlines()[:1] or ["nothing"]
            raise InputError(
                f"{configured}: not a working ffmpeg (`-version` said {said[0][:80]!r})",
                reason=Reason.CONFIG,
            )
        return found
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError:
        raise MediaError("ffmpeg not found: not on PATH and imageio-ffmpeg is missing") from None
    try:
        exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise MediaError(f"ffmpeg not found: {exc}") from None
    log.info("using the ffmpeg bundled with imageio-ffmpeg: %s", exe)
    return exe


@functools.lru_cache(maxsize=8)
def ffprobe_exe(ffmpeg: str = "") -> str | None:
    """The ffprobe beside the chosen ffmpeg, else on PATH; None when there is none (the
    imageio-ffmpeg wheel ships ffmpeg only), in which case probing parses `ffmpeg -i`."""
    exe = Path(ffmpeg_exe(ffmpeg))
    sibling = exe.with_name(exe.name.replace("ffmpeg", "ffprobe", 1))
    if sibling != exe and sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("ffprobe")


def _query(exe: str, *args: str) -> str:
    done = process.run(
        [exe, "-hide_banner", *args], timeout=QUERY_TIMEOUT, what=f"{exe} {' '.join(args)}"
    )
    return done.stdout + done.stderr


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `ffmpeg -version`; git snapshots ("N-12345-g…") count as newest."""
    match = re.search(r"version\s+n?(\d+)\.(\d+)", text)
    if match:
        return int(match.group(1)), int(match.group(2))
    if re.search(r"version\s+N-", text):
        return 99, 0
    return None


@functools.lru_cache(maxsize=8)
def ffmpeg_version(exe: str) -> tuple[int, int]:
    """(major, minor) of this ffmpeg; decides between option spellings (-fps_mode/-vsync)."""
    text = _query(exe, "-version")
    version = parse_version(text)
    if version is None or "ffmpeg version" not in text:
        # ffprobe answers "ffprobe version": it runs, but takes none of ffmpeg's arguments.
        raise MediaError(f"{exe}: cannot read the ffmpeg version", stderr=text[-2000:])
    return version


def parse_encoders(text: str) -> set[str]:
    """Encoder names from `ffmpeg -encoders` (lines like ' V....D libx264  …')."""
    names: set[str] = set()
    for line in text.splitlines():
        match = re.match(r"^\s*([VASD][A-Z.]{5})\s+(\S+)\s", line)
        if match and match.group(2) != "=":
            names.add(match.group(2))
    return names


def parse_hwaccels(text: str) -> set[str]:
    """Method names from `ffmpeg -hwaccels` (one per line after the heading)."""
    _, _, rest = text.partition("Hardware acceleration methods:")
    return {line.strip() for line in rest.splitlines() if line.strip()}


@functools.lru_cache(maxsize=8)
def encoders(exe: str) -> set[str]:
    """Encoders compiled into this ffmpeg (listed is not usable: nvenc also needs a GPU)."""
    return parse_encoders(_query(exe, "-encoders"))


@functools.lru_cache(maxsize=8)
def hwaccels(exe: str) -> set[str]:
    """Hardware decoding methods compiled into this ffmpeg."""
    return parse_hwaccels(_query(exe, "-hwaccels"))


@functools.lru_cache(maxsize=16)
def encoder_works(exe: str, encoder: str) -> bool:
    """Whether a one-frame trial encode succeeds: Debian's ffmpeg lists h264_nvenc even on
    machines without an NVIDIA GPU, so being listed is not enough to choose it."""
    if encoder not in encoders(exe):
        return False
    try:
        done = subprocess.run(
            [
                exe,
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-f",
                "lavfi",
                "-i",
                "color=black:s=256x256:r=25",
                "-frames:v",
                "1",
                "-c:v",
                encoder,
                "-f",
                "null",
                "-",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=QUERY_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=8)
def hwaccel_works(exe: str, method: str = "cuda") -> bool:
    """Whether ffmpeg really decodes on the GPU with `-hwaccel method`: plain `-hwaccel cuda`
    falls back to software decoding when the device cannot start, so the trial keeps the
    decoded frames on the GPU (`-hwaccel_output_format`) and downloads them in a filter, which
    fails unless the GPU decoded them."""
    if method not in hwaccels(exe) or "libx264" not in encoders(exe):
        return False
    sample = h264_sample(exe)
    if not sample:
        return False
    try:
        done = subprocess.run(
            [exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-hwaccel", method,
             "-hwaccel_output_format", method, "-f", "h264", "-i", "pipe:0",
             "-vf", "hwdownload,format=nv12", "-f", "null", "-"],
            input=sample, capture_output=True, timeout=QUERY_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def h264_sample(exe: str) -> bytes:
    """Two frames of H.264 (Annex B) for decoder trials; empty when ffmpeg cannot make them."""
    try:
        done = subprocess.run(
            [exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi",
             "-i", "color=gray:s=256x256:r=25", "-frames:v", "2", "-c:v", "libx264",
             "-pix_fmt", "yuv420p", "-f", "h264", "pipe:1"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=QUERY_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return b""
    return done.stdout if done.returncode == 0 else b""


def effective_hwaccel(exe: str, requested: str) -> str:
    """The -hwaccel to pass: `requested` only when a trial decode proved it; else "none", so
    nothing reports GPU decoding that ffmpeg would silently have done on the CPU."""
    if requested == "none":
        return "none"
    if hwaccel_works(exe, "cuda"):
        return "cuda"
    log.info("hwaccel %s: ffmpeg cannot decode on the GPU here; decoding on the CPU", requested)
    return "none"
