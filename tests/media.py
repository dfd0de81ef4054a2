"""Test media: the inputs tests share (written with the project's sample generator), and
helpers that inspect real media files with plain ffprobe/ffmpeg (no project code)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from facefusion_tasks.faces.synthetic import background, draw_face
from facefusion_tasks.video.samples import make_sample_video, synthetic_frame

#: A tenth of a job: 10 frames, one small face, no audio.
TINY: Mapping[str, Any] = {"seconds": 0.4, "width": 160, "height": 120, "faces": 1, "audio": False}
#: Long enough for several chunks: 8 s, two faces, audio.
LONG: Mapping[str, Any] = {"seconds": 8, "faces": 2, "audio": True}


def write_source_face(path: Path) -> Path:
    """The source image of every swap: one drawn face on a plain background."""
    image = background(200, 200, 0)
    draw_face(image, 100, 100, 70)
    cv2.imwrite(str(path), image)
    return path


def face_photo(width: int, height: int) -> np.ndarray:
    """A still target: two drawn faces, side by side, on the textured background."""
    image = background(width, height, 1)
    side = min(width, height)
    draw_face(image, width * 3 // 10, height // 2, side * 9 // 40)
    draw_face(image, width * 7 // 10, height // 2, side * 6 // 40)
    return image


#: EXIF orientation 6: turn the stored picture 90 degrees clockwise to show it (a phone held
#: upright stores its sensor's landscape picture and this tag).
ORIENTATION_TAG, TURN_CLOCKWISE = 0x0112, 6


def write_turned_photo(path: Path, upright: np.ndarray) -> Path:
    """`upright` stored as a phone does: turned a quarter counter-clockwise, with EXIF
    orientation 6 (written by Pillow, not by the code under test) to turn it back."""
    from PIL import Image

    stored = cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = TURN_CLOCKWISE
    picture = Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB))
    picture.save(path, exif=exif.tobytes(), quality=95)
    return path


def write_second_face(path: Path) -> Path:
    """A source of "another photo": a smaller face off centre in a wider image, which the
    stand-in embedder tells apart from write_source_face's (cosine similarity about 0.5)."""
    image = background(240, 200, 0)
    draw_face(image, 120, 100, 60)
    cv2.imwrite(str(path), image)
    return path


def storage_root(base: Path, clips: Mapping[str, Mapping[str, Any]]) -> Path:
    """`base` as a storage root: source.png, each named sample clip (make_sample_video's
    options), and an empty out/ folder for the outputs."""
    write_source_face(base / "source.png")
    for name, options in clips.items():
        make_sample_video(base / name, **options)
    (base / "out").mkdir()
    return base


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


def video_track_seconds(path: Path) -> float:
    """The video stream's length as its container's header declares it (an mp4's stts), which
    players show and which nothing in the packets has to agree with."""
    data = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "stream=duration")
    return float(data["streams"][0]["duration"])


def video_length(path: Path) -> Fraction:
    """How long a file without audio plays: its first frame's start to its last frame's end,
    as ffprobe tells the file's duration (microseconds). mp4's own stream duration leaves out
    part of a B-frame edit list, and its packets' durations read N/A, so neither would do."""
    assert not [s for s in streams(path) if s["codec_type"] != "video"], f"{path}: not video only"
    return Fraction(ffprobe_json(path, "-show_entries", "format=duration")["format"]["duration"])


def write_gif(path: Path, delays_ms: Sequence[int], *, width: int = 160, height: int = 120) -> Path:
    """An animated GIF of one synthetic face, frame i shown for delays_ms[i] (10 ms steps: GIF
    counts centiseconds), written by Pillow, which keeps every delay, the last included."""
    frames = [
        Image.fromarray(cv2.cvtColor(synthetic_frame(width, height, 1, i), cv2.COLOR_BGR2RGB))
        for i in range(len(delays_ms))
    ]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=list(delays_ms),
                   loop=0, optimize=False)  # fmt: skip
    return path


def write_beeping_flv(path: Path, seconds: int = 3) -> Path:
    """H.264 with B-frames and AAC in FLV, as ffmpeg and OBS write it (the picture starts 21 ms
    after the sound), 320x240 at 25 fps, with WITH_BEEPS for its sound."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
         f"testsrc=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i",
         f"{WITH_BEEPS}:d={seconds}", "-c:v", "libx264", "-c:a", "aac", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path


def streams(path: Path) -> list[dict]:
    return ffprobe_json(path, "-show_streams")["streams"]


def audio_duration(path: Path) -> float | None:
    """The first audio stream's duration; Matroska/WebM keep it only as a DURATION tag."""
    audio = [s for s in streams(path) if s["codec_type"] == "audio"]
    if not audio:
        return None
    if "duration" in audio[0]:
        return float(audio[0]["duration"])
    hours, minutes, secs = audio[0]["tags"]["DURATION"].split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(secs)


def decoded_audio_seconds(path: Path, stream: int = 0) -> float:
    """How long an audio stream really plays: its samples decoded, not its container's duration
    (Opus packets encoded in a millisecond time base once kept their length and decoded to
    almost nothing)."""
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:a:{stream}", "-ac", "1",
         "-ar", "48000", "-f", "s16le", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    return len(pcm) / 2 / 48000


def beep_onsets(path: Path) -> list[float]:
    """Where each sound after a silence starts in the first audio stream, in seconds after the
    first video frame (ffmpeg's silencedetect over the file's own timestamps)."""
    stderr = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-copyts", "-i", str(path), "-map", "0:a:0",
         "-af", "silencedetect=n=-30dB:d=0.1", "-f", "null", "-"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stderr  # fmt: skip
    data = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time")
    first = min(float(p["pts_time"]) for p in data["packets"] if "pts_time" in p)
    events = re.findall(r"silence_(start|end): (-?[0-9.]+)", stderr)
    # A sound is a silence's end followed by the next silence's start (the stream's end also
    # ends a silence).
    return [
        float(at) - first
        for (kind, at), (after, _) in zip(events, events[1:], strict=False)
        if kind == "end" and after == "start"
    ]


#: A lavfi audio source: a 1 kHz beep from 0.5 s to 0.6 s of every second (add :d=SECONDS).
WITH_BEEPS = "aevalsrc=if(between(mod(t\\,1)\\,0.5\\,0.6)\\,sin(2*PI*1000*t)\\,0):s=48000"


def audio_codec(path: Path) -> str | None:
    """The first audio stream's codec name (None without audio)."""
    audio = [s for s in streams(path) if s["codec_type"] == "audio"]
    return str(audio[0]["codec_name"]) if audio else None


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
