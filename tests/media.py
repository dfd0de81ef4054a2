"""Test helpers that inspect real media files with ffprobe/ffmpeg (no project code)."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np


def ffprobe_json(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def video_times(path: Path) -> list[Fraction]:
    """Every video frame's presentation time relative to the first, exactly (from packets)."""
    data = ffprobe_json(
        path, "-select_streams", "v:0", "-show_entries", "packet=pts:stream=time_base"
    )
    tb = Fraction(data["streams"][0]["time_base"])
    pts = sorted(int(p["pts"]) for p in data["packets"])
    return [(p - pts[0]) * tb for p in pts]


def streams(path: Path) -> list[dict]:
    return ffprobe_json(path, "-show_streams")["streams"]


def audio_duration(path: Path) -> float | None:
    audio = [s for s in streams(path) if s["codec_type"] == "audio"]
    return float(audio[0]["duration"]) if audio else None


def decode_frames(path: Path) -> list[np.ndarray]:
    """All frames as BGR arrays (display orientation), via a plain ffmpeg command."""
    info = [s for s in streams(path) if s["codec_type"] == "video"][0]
    width, height = int(info["width"]), int(info["height"])
    rotation = 0
    for side in info.get("side_data_list", []):
        rotation = int(side.get("rotation", 0))
    if rotation % 180:
        width, height = height, width
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo",
         "-pix_fmt", "bgr24", "pipe:1"],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    return list(frames)
