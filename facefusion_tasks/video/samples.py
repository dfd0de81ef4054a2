"""Sample videos for tests, the demo and the benchmark: synthetic faces or a panned photo."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from facefusion_tasks.errors import MediaError
from facefusion_tasks.faces.synthetic import background, draw_face
from facefusion_tasks.video import codecs, ffbin
from facefusion_tasks.video.argv import (
    ENCODE_GLOBAL_ARGS,
    MOV_FAMILY,
    muxer_for,
    pix_fmt_for,
    ratio,
    video_codec_args,
)
from facefusion_tasks.video.argv import seconds as format_seconds
from facefusion_tasks.video.mkv import MatroskaRawWriter, pts_to_ns

#: Time base of variable-frame-rate samples (the MPEG 90 kHz clock many phones use).
VFR_TIME_BASE = Fraction(1, 90000)


def cfr_time_base(fps: Fraction) -> Fraction:
    """What ffmpeg's mp4 muxer would pick for a constant rate: 1/fps, doubled past 10 000 Hz."""
    scale = fps.numerator
    while scale < 10000:
        scale *= 2
    return Fraction(1, scale)


def vfr_steps(count: int) -> Iterator[int]:
    """Irregular frame durations in 1/90000 s: alternating 1/30 and 1/20 s with a few jitters."""
    for i in range(count):
        step = 3000 if i % 2 == 0 else 4500
        if i % 7 == 3:
            step += 450  # an occasional late frame
        elif i % 11 == 5:
            step -= 300  # and an early one
        yield step


def face_positions(
    width: int, height: int, faces: int, index: int
) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) of each face at frame `index`: one grid cell per face so centres stay
    well apart, a gentle orbit inside the cell, and the disc always fully inside the frame."""
    if faces <= 0:
        return []
    cols = math.ceil(math.sqrt(faces))
    rows = math.ceil(faces / cols)
    cell_w, cell_h = width / cols, height / rows
    radius = min(0.18 * min(width, height), 0.45 * min(cell_w, cell_h))
    placed = []
    for k in range(faces):
        col, row = k % cols, k // cols
        reach_x = max(cell_w / 2 - radius - 1, 0.0)
        reach_y = max(cell_h / 2 - radius - 1, 0.0)
        phase = 0.05 * index + 1.7 * k
        cx = (col + 0.5) * cell_w + 0.6 * reach_x * math.sin(phase)
        cy = (row + 0.5) * cell_h + 0.6 * reach_y * math.cos(0.8 * phase)
        placed.append((cx, cy, radius))
    return placed


def synthetic_frame(width: int, height: int, faces: int, index: int) -> np.ndarray:
    """One BGR frame: the moving background with `faces` synthetic faces on it."""
    image = background(width, height, index)
    for cx, cy, radius in face_positions(width, height, faces, index):
        draw_face(image, cx, cy, radius)
    return image


def _timeline(seconds_: float, fps: Fraction, variable: bool) -> tuple[list[int], Fraction]:
    """Frame pts and time base for a clip of the given length."""
    if variable:
        pts, t = [], 0
        limit = round(seconds_ / VFR_TIME_BASE)
        for step in vfr_steps(10**9):
            if t >= limit:
                break
            pts.append(t)
            t += step
        return pts, VFR_TIME_BASE
    time_base = cfr_time_base(fps)
    step = int(1 / (fps * time_base))
    count = max(1, round(seconds_ * fps))
    return [i * step for i in range(count)], time_base


def _encode_argv(
    exe: str,
    destination: Path,
    *,
    width: int,
    height: int,
    time_base: Fraction,
    audio_seconds: float | None,
    faststart: bool,
    muxer: str,
    keyframe_interval: int | None = None,
    video_encoder: str = "libx264",
    audio_encoder: str = "aac",
) -> list[str]:
    args = [exe, *ENCODE_GLOBAL_ARGS, "-y", "-f", "matroska", "-i", "pipe:0"]
    if audio_seconds is not None:
        sine = f"sine=frequency=440:sample_rate=44100:duration={format_seconds(audio_seconds)}"
        args += ["-f", "lavfi", "-i", sine]
    args += ["-map", "0:v:0"]
    if audio_seconds is not None:
        args += ["-map", "1:a:0", "-c:a", audio_encoder, "-b:a", "96k"]
    args += video_codec_args(video_encoder, preset="ultrafast", quality=18)
    if keyframe_interval:
        args += ["-g", str(keyframe_interval)]
    args += ["-pix_fmt", pix_fmt_for(width, height), "-fps_mode", "passthrough"]
    args += ["-enc_time_base:v", ratio(time_base)]
    if muxer in MOV_FAMILY:
        args += ["-video_track_timescale", str(time_base.denominator)]
        if faststart:
            args += ["-movflags", "+faststart"]
    return [*args, "-f", muxer, str(destination)]


def _pipe_frames(
    argv: list[str],
    frames: Iterator[np.ndarray],
    pts: list[int],
    time_base: Fraction,
    width: int,
    height: int,
) -> None:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stderr is not None
    stderr = proc.stderr
    stderr_chunks: list[bytes] = []

    def drain_stderr() -> None:
        stderr_chunks.append(stderr.read())

    # Drain stderr concurrently so a chatty ffmpeg can never block on it while we write.
    drain = threading.Thread(target=drain_stderr, daemon=True)
    drain.start()
    try:
        duration = pts_to_ns(pts[1] - pts[0], time_base) if len(pts) > 1 else 40_000_000
        writer = MatroskaRawWriter(proc.stdin, width, height, default_duration_ns=duration)
        for image, stamp in zip(frames, pts, strict=True):
            writer.write(image, pts_to_ns(stamp, time_base))
    except BrokenPipeError:
        pass  # ffmpeg died; its exit code and stderr say why, below
    except BaseException:
        proc.kill()
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        code = proc.wait()
        drain.join()
        proc.stderr.close()
    if code != 0:
        text = b"".join(stderr_chunks).decode(errors="replace")
        raise MediaError(f"sample encode failed (exit {code})", stderr=text[-4000:])


def _rotate_argv(
    exe: str, source: Path, destination: Path, rotation: int, muxer: str, *, faststart: bool
) -> list[str]:
    """Stream-copy with a display matrix: rotation is counter-clockwise degrees, as ffprobe
    reports it. ffmpeg 5.1 applies `-metadata:s:v rotate` only when stream copying (not when
    encoding); ffmpeg 6+ dropped that tag in favour of the -display_rotation input option."""
    args = [exe, *ENCODE_GLOBAL_ARGS, "-y"]
    new_style = ffbin.ffmpeg_version(exe) >= (6, 0)
    if new_style:
        args += ["-display_rotation:v:0", str(rotation)]
    args += ["-i", str(source), "-map", "0", "-c", "copy"]
    if not new_style:
        args += ["-metadata:s:v:0", f"rotate={rotation}"]
    if muxer in MOV_FAMILY and faststart:
        args += ["-movflags", "+faststart"]
    return [*args, "-f", muxer, str(destination)]


def _write_clip(
    path: Path,
    frames: Iterator[np.ndarray],
    pts: list[int],
    time_base: Fraction,
    *,
    width: int,
    height: int,
    audio_seconds: float | None,
    rotation: int = 0,
    faststart: bool = True,
    keyframe_interval: int | None = None,
    audio_codec: str | None = None,
    ffmpeg: str = "",
) -> Path:
    exe = ffbin.ffmpeg_exe(ffmpeg)
    muxer = muxer_for(path)
    video_encoder = codecs.default_encoder(muxer)
    audio_encoder = audio_codec or codecs.audio_encoder(muxer)
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, not {rotation}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def encode(destination: Path, *, faststart: bool) -> None:
        argv = _encode_argv(
            exe, destination, width=width, height=height, time_base=time_base,
            audio_seconds=audio_seconds, faststart=faststart, muxer=muxer,
            keyframe_interval=keyframe_interval, video_encoder=video_encoder,
            audio_encoder=audio_encoder,
        )  # fmt: skip
        _pipe_frames(argv, frames, pts, time_base, width, height)

    if rotation % 360 == 0:
        encode(path, faststart=faststart)
        return path
    # Rotation needs a second, stream-copy pass (see _rotate_argv); it is cheap.
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    plain = Path(name)
    try:
        encode(plain, faststart=False)
        argv = _rotate_argv(exe, plain, path, rotation % 360, muxer, faststart=faststart)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if done.returncode != 0:
            text = done.stderr.decode(errors="replace")
            raise MediaError(f"sample rotation failed (exit {done.returncode})", stderr=text)
    finally:
        plain.unlink(missing_ok=True)
    return path


def make_sample_video(
    path: str | Path,
    *,
    seconds: float,
    width: int = 320,
    height: int = 240,
    fps: Fraction | str = "25",
    faces: int = 1,
    audio: bool = True,
    variable_frame_rate: bool = False,
    rotation: int = 0,
    faststart: bool = True,
    keyframe_interval: int | None = None,
    audio_codec: str | None = None,
    ffmpeg: str = "",
) -> Path:
    """Write a clip of synthetic faces in the container its extension names, with that
    container's default codecs at their fastest: libx264 and AAC (mp4, mov, mkv), or
    libvpx-vp9 and Opus (webm). `audio_codec` names another audio encoder (libvorbis, …).

    width×height is the stored (coded) size; `rotation` adds a display matrix that turns it
    that many degrees counter-clockwise when shown, so 90/270 swap the display size.
    Variable frame rate uses irregular 1/30 s and 1/20 s steps in a 1/90000 time base.
    faststart=False leaves the index (moov) at the end, as a camera writes it;
    keyframe_interval (frames) makes seeking land inside the clip.
    """
    rate = Fraction(fps)
    pts, time_base = _timeline(seconds, rate, variable_frame_rate)
    frames = (synthetic_frame(width, height, faces, i) for i in range(len(pts)))
    return _write_clip(
        Path(path),
        frames,
        pts,
        time_base,
        width=width,
        height=height,
        audio_seconds=seconds if audio else None,
        rotation=rotation,
        faststart=faststart,
        keyframe_interval=keyframe_interval,
        audio_codec=audio_codec,
        ffmpeg=ffmpeg,
    )


def make_photo_video(
    path: str | Path,
    image: np.ndarray,
    *,
    seconds: float,
    width: int,
    height: int,
    fps: Fraction | str = "25",
    audio: bool = False,
    ffmpeg: str = "",
) -> Path:
    """A clip that pans a width×height window across a real photo (BGR, e.g. cv2.imread)."""
    import cv2  # only this helper needs OpenCV; keep it off the import path of the rest

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 BGR image, got shape {image.shape}")
    rate = Fraction(fps)
    pts, time_base = _timeline(seconds, rate, False)
    # Scale so the window sees about 80 % of the photo: room to pan, faces stay in view.
    photo_h, photo_w = image.shape[:2]
    scale = max(1.25 * width / photo_w, 1.25 * height / photo_h)
    size = (max(width, round(photo_w * scale)), max(height, round(photo_h * scale)))
    photo = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    span_x, span_y = size[0] - width, size[1] - height
    count = len(pts)

    def frames() -> Iterator[np.ndarray]:
        for i in range(count):
            # Ease in and out across the clip: left-top to right-bottom.
            t = 0.5 - 0.5 * math.cos(math.pi * i / max(count - 1, 1))
            x, y = round(span_x * t), round(span_y * t)
            yield np.ascontiguousarray(photo[y : y + height, x : x + width])

    return _write_clip(
        Path(path),
        frames(),
        pts,
        time_base,
        width=width,
        height=height,
        audio_seconds=seconds if audio else None,
        ffmpeg=ffmpeg,
    )
