"""Decoded frames from an ffmpeg pipe, each with its pts, in display orientation."""

from __future__ import annotations

import logging
import queue
import re
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType
from typing import IO

import numpy as np

from facefusion_tasks import objects
from facefusion_tasks.errors import InputError, MediaError
from facefusion_tasks.filekind import require_file
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import ffbin, process
from facefusion_tasks.video.argv import decode_argv
from facefusion_tasks.video.damage import damage_line
from facefusion_tasks.video.probe import VideoInfo
from facefusion_tasks.video.signed import redact

log = logging.getLogger(__name__)

#: Seek this many seconds before a span's start: the pts → seconds conversion must never land
#: after the keyframe that precedes the first wanted frame.
SEEK_MARGIN = 0.05
#: Seconds before the span's start to seek again when a seek landed past it, each try further
#: back, then from the file's start. A file with no index (MPEG-TS, MPEG program streams) is
#: seeked by bisecting on timestamps, and decoding starts at the first keyframe after where
#: that lands, which can be seconds past the span's start: its first frames would be lost.
RESEEK_MARGINS = (2.0, 10.0, 60.0)
#: How long to wait for a frame's showinfo line once its pixels arrived (it is printed first).
PTS_TIMEOUT = 60.0
#: Seconds ffmpeg may take to exit once its output has ended.
EXIT_TIMEOUT = 60.0

_SHOWINFO = re.compile(r"\] \[info\] n:\s*(\d+)\s+pts:\s*(-?\d+|NOPTS)")
_KEY = re.compile(r" iskey:1\b")
_FRAME_SIZE = re.compile(r" s:(\d+)x(\d+) ")
_CONFIG_TB = re.compile(r"Parsed_showinfo.*config in time_base: (\d+)/(\d+)")
_HWACCEL_HINTS = ("hwaccel", "device creation", "cuda", "hwdevice", "no device available")


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame: H×W×3 uint8 BGR, C-contiguous, upright as displayed."""

    #: Position in this reader's output (0 = the first frame of the span).
    index: int
    #: Presentation timestamp in the video stream's time base (as frame_timestamps() gives).
    pts: int
    image: np.ndarray


class FrameReader:
    """Iterate a video's frames from one ffmpeg process; optionally only a pts span.

    `with FrameReader(info) as frames: for frame in frames: ...`. The span is
    [start_pts, end_pts): ffmpeg seeks to the keyframe before start_pts and frames outside
    the span are dropped here, so consecutive spans yield every frame exactly once.
    """

    def __init__(
        self,
        info: VideoInfo,
        *,
        ffmpeg: str = "",
        hwaccel: str = "none",
        start_pts: int | None = None,
        end_pts: int | None = None,
    ) -> None:
        self.info = info
        self.time_base: Fraction = info.time_base
        self.start_pts = start_pts
        self.end_pts = end_pts
        self.hwaccel = hwaccel
        self._shape = (info.height, info.width, 3)
        self._frame_bytes = info.width * info.height * 3
        self._yielded = 0
        self._decoded = 0
        self._last_pts: int | None = None
        self._finished = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._margins = list(RESEEK_MARGINS)

        require_file(info.path)
        self._exe = ffbin.ffmpeg_exe(ffmpeg)
        self._seek: float | None = None
        if start_pts is not None and start_pts > info.start_pts:
            self._seek = max(float(start_pts * info.time_base) - SEEK_MARGIN, 0.0)
        self._start()

    def _start(self) -> None:
        """Start ffmpeg at self._seek, with the per-process state fresh."""
        #: Each frame's (pts, whether it is a keyframe), as showinfo prints them; None: the end.
        self._pts: queue.Queue[tuple[int, bool] | None] = queue.Queue()
        #: Whether a keyframe came since this process started (only asked after a seek).
        self._keyed = False
        self._previous_pts = -1
        self._decoded_pts: int | None = None  # the last frame's, dropped ones included
        self._filter_tb: Fraction | None = None
        self._size_error: str | None = None
        #: Whether a frame came at the probed size: a change after one is the file's doing.
        self._sized = False
        #: The first frame's pts (where the seek landed), None before it.
        self._first_pts: int | None = None
        argv = decode_argv(
            # An object is read through a URL signed here: ffmpeg seeks with ranged reads, so
            # a chunk fetches about its own span, never the whole file.
            objects.ffmpeg_input(self.info.path),
            ffmpeg=self._exe,
            hwaccel=self.hwaccel,
            seek_seconds=self._seek,
            version=ffbin.ffmpeg_version(self._exe),
            stream=self.info.video_stream,
        )
        log.debug("decoding: %s", redact(" ".join(argv)))
        ended = self._pts  # this process's queue: a later one's is not its to end
        self._ffmpeg = process.Process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            name="ffmpeg-decode",
            on_line=self._on_line,
            on_end=lambda: ended.put(None),
        )
        self._proc = self._ffmpeg.proc
        assert self._proc.stdout is not None
        self._stdout: IO[bytes] = self._proc.stdout

    def _overshot(self, pts: int | None) -> bool:
        """Whether a frame before the first keyframe after a seek, or that keyframe, comes
        after the span's start (so its first frames would be lost), or the stream ended
        before any keyframe (`pts` None)."""
        return (
            not self._keyed
            and self._seek is not None
            and self.start_pts is not None
            and (pts is None or pts > self.start_pts)
        )

    def _seek_earlier(self) -> None:
        """Start ffmpeg again further before the span (RESEEK_MARGINS), at last from the
        file's start, which always reaches it."""
        with self._close_lock:
            if self._closed:
                return
            # kill() joins the stderr thread: nothing of this process reaches the next's state.
            self._ffmpeg.kill()
            self._ffmpeg.close_pipes()
            assert self.start_pts is not None
            start = float(self.start_pts * self.time_base)
            margin = self._margins.pop(0) if self._margins else None
            landed = self._seek
            self._seek = None if margin is None or start - margin <= 0 else start - margin
            log.info(
                "%s: the seek to %.3f s began after the span's start (%.3f s); seeking %s",
                self.info.path.name, landed, start,
                "from the start" if self._seek is None else f"to {self._seek:.3f} s",
            )  # fmt: skip
            self._start()

    # --- iteration ------------------------------------------------------------------------

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> Frame:
        while True:
            if self._finished or self._closed:
                raise StopIteration
            image = np.empty(self._shape, np.uint8)
            got = self._read_into(image)
            if self._closed:
                raise StopIteration  # close() from another thread (the consumer gave up)
            if got < self._frame_bytes:
                if got == 0 and self._overshot(None):
                    self._seek_earlier()  # no keyframe at all after where the seek landed
                    continue
                self._finish(partial_bytes=got)
                raise StopIteration
            pts, key = self._next_pts()
            if self._seek is not None and not self._keyed:
                if self._overshot(pts):
                    self._seek_earlier()
                    continue
                if not key:
                    # After a seek a decoder may emit frames before the first keyframe with
                    # their references missing (HEVC paints them grey): never kept. They all
                    # come before that keyframe, which is at or before the span's start.
                    continue
                self._keyed = True
            self._decoded += 1
            if self.start_pts is not None and pts < self.start_pts:
                continue  # decoded from the keyframe before the span: not ours
            if self.end_pts is not None and pts >= self.end_pts:
                # Decoders emit frames in presentation order: nothing later belongs here.
                self._finished = True
                self.close()
                raise StopIteration
            self._last_pts = pts
            frame = Frame(index=self._yielded, pts=pts, image=image)
            self._yielded += 1
            return frame

    def _read_into(self, image: np.ndarray) -> int:
        view = image.data.cast("B")
        filled = 0
        while filled < self._frame_bytes:
            try:
                n = self._stdout.readinto(view[filled:])  # type: ignore[attr-defined]
            except (OSError, ValueError):
                if self._closed:
                    break  # the pipe was closed by close() while we waited on it
                raise
            if not n:
                break
            filled += n
        return filled

    def _next_pts(self) -> tuple[int, bool]:
        """The next frame's pts and whether it is a keyframe."""
        try:
            shown = self._pts.get(timeout=PTS_TIMEOUT)
        except queue.Empty:
            shown = None
        if shown is None and self._closed:
            raise StopIteration
        if shown is None or self._size_error is not None:
            self.close()
            problem = self._size_error or "ffmpeg sent a frame without its timestamp"
            if self._size_error and self._mid_file():
                raise InputError(f"{self.info.path.name}: {problem}", reason=Reason.BAD_INPUT)
            raise MediaError(f"{self.info.path.name}: {problem}", stderr=self.stderr_tail())
        pts, key = shown
        if self._decoded_pts is not None and pts <= self._decoded_pts:
            # The decoder guessed times the container does not store (AVI or ASF holding
            # B-frames): the pipeline keeps every frame's own time, and these are not the file's.
            self.close()
            raise InputError(
                f"{self.info.path.name}: a frame's timestamp ({pts}) does not follow the one "
                f"before ({self._decoded_pts}): the container stores no presentation times for "
                "some frames; re-encode it, e.g. ffmpeg -i IN -c:v libx264 -c:a copy OUT.mkv",
                reason=Reason.BAD_INPUT,
            )
        self._decoded_pts = pts
        return pts, key

    # --- stderr -----------------------------------------------------------------------------

    def _on_line(self, line: str) -> bool:
        """Take showinfo's per-frame lines (their pts feed the frames); True = consumed, the
        rest go to the process's log (tail and error lines)."""
        match = _SHOWINFO.search(line)
        if match:
            pts = self._parse_pts(match.group(2), self._previous_pts)
            if self._first_pts is None:
                self._first_pts = pts
            self._check_size(line)
            self._previous_pts = pts
            self._pts.put((pts, _KEY.search(line) is not None))
            return True
        match = _CONFIG_TB.search(line)
        if match and self._filter_tb is None and int(match.group(2)):
            self._filter_tb = Fraction(int(match.group(1)), int(match.group(2)))
            return True
        # Per-frame side data and colour lines: noise.
        return "Parsed_showinfo" in line

    def _check_size(self, line: str) -> None:
        size = _FRAME_SIZE.search(line)
        if size is None or self._size_error is not None:
            return
        width, height = int(size.group(1)), int(size.group(2))
        probed = f"{self.info.width}x{self.info.height}"
        if (width, height) == (self.info.width, self.info.height):
            self._sized = True
        elif self._mid_file():
            # Reading on would slice the byte stream at the wrong places: stop at the first.
            # Frames of the probed size came first, or this read began past the frames the
            # probe measured (a chunk's seek landed after a change of size: an MPEG-TS joined
            # from two sizes failed its job as the system's fault, exit 1, where a local swap
            # refused the file): the file itself changes size.
            self._size_error = (
                f"the picture changes size mid-stream ({probed} to {width}x{height}); "
                f"re-encode it at one size, e.g. ffmpeg -i IN -vf scale={self.info.width}:"
                f"{self.info.height} OUT"
            )
        else:
            self._size_error = f"ffmpeg decodes {width}x{height} frames, the probe said {probed}"

    def _mid_file(self) -> bool:
        """Whether this read has passed frames the probe measured: one came at the probed
        size, or its first frame (where a seek landed) comes after the file's first."""
        return self._sized or (
            self._first_pts is not None and self._first_pts > self.info.start_pts
        )

    def _parse_pts(self, text: str, previous: int) -> int:
        if text == "NOPTS":
            return previous + 1  # no timestamp at all: keep order, never repeat
        pts = int(text)
        if self._filter_tb is not None and self._filter_tb != self.time_base:
            # Some builds hand the filter graph another time base; bring pts back exactly.
            pts = round(pts * self._filter_tb / self.time_base)
        return pts

    @property
    def frames_decoded(self) -> int:
        """Frames ffmpeg delivered so far, including those dropped for preceding the span."""
        return self._decoded

    def stderr_tail(self) -> str:
        """The last lines ffmpeg printed (errors included), for error reports."""
        return self._ffmpeg.log.text()

    # --- ending ---------------------------------------------------------------------------

    def _finish(self, *, partial_bytes: int) -> None:
        """At end of stream: wait for ffmpeg and decide whether the video was whole."""
        self._finished = True
        code = self._ffmpeg.wait(EXIT_TIMEOUT, what=f"decoding {self.info.path.name}")
        stopped_by_close = self._closed
        self.close()
        if stopped_by_close:
            return  # killed on request: its exit status says nothing about the file
        name = self.info.path.name
        # ffmpeg names the file by its full path; the message names it once, at the front.
        errors = [line.replace(str(self.info.path), name) for line in self._ffmpeg.log.errors]
        detail = errors[-1] if errors else ""
        if code != 0:
            lowered = " ".join(errors).lower()
            if self.hwaccel != "none" and any(h in lowered for h in _HWACCEL_HINTS):
                raise MediaError(
                    f"{name}: hardware decoding ({self.hwaccel}) failed: {detail}",
                    stderr=self.stderr_tail(),
                )
            if process.signalled(code, errors):
                raise process.killed(f"decoding {name}", code)
            raise InputError(
                f"{name}: truncated or corrupt video (ffmpeg exit {code}: {_short(detail)})",
                reason=Reason.CORRUPT_VIDEO,
            )
        if partial_bytes:
            raise InputError(
                f"{name}: truncated or corrupt video (last frame incomplete)",
                reason=Reason.CORRUPT_VIDEO,
            )
        if errors and self._came_short():
            marker = damage_line("\n".join(errors)) or _short(detail)
            if self.start_pts is None and self.end_pts is None:
                got = f"decoded {self._decoded} of {self.info.frame_count} frames"
            else:
                got = f"the stream ends before the span does, after pts {self._last_pts}"
            raise InputError(
                f"{name}: truncated or corrupt video ({got}; {marker})", reason=Reason.CORRUPT_VIDEO
            )

    def _came_short(self) -> bool:
        if self.start_pts is None and self.end_pts is None:
            return self._decoded < self.info.frame_count
        # A span: short if the stream ended well before the span's end (or the video's).
        tb = self.time_base
        video_end = self.info.start_pts + round(self.info.duration / tb)
        wanted_end = video_end if self.end_pts is None else min(self.end_pts, video_end)
        slack = round(2 / (self.info.frame_rate * tb)) if self.info.frame_rate else 0
        reached = self._last_pts if self._last_pts is not None else (self.start_pts or 0)
        return reached + slack < wanted_end

    def close(self) -> None:
        """Stop ffmpeg (if still running) and release its pipes; safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            # Killed first: a read blocked in another thread returns, releasing the pipe.
            self._ffmpeg.kill()
            self._ffmpeg.close_pipes()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
