"""Encoding frames to a video file that appears at its destination only when complete."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from facefusion_tasks import objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, MediaError, OutputError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import codecs, ffbin, process, staging
from facefusion_tasks.video.argv import encode_argv, muxer_for
from facefusion_tasks.video.colour import UNTAGGED, Colour
from facefusion_tasks.video.damage import extras_damage
from facefusion_tasks.video.mkv import MatroskaRawWriter, pts_to_ns
from facefusion_tasks.video.probe import VideoInfo
from facefusion_tasks.video.signed import redact

log = logging.getLogger(__name__)

#: Seconds ffmpeg may take to flush and close the file after the last frame.
FLUSH_TIMEOUT = 600.0


def resolve_encoder(
    requested: str,
    exe: str,
    muxer: str = "mp4",
    *,
    width: int | None = None,
    height: int | None = None,
    quality: int | None = None,
    frame_rate: Fraction | None = None,
) -> str:
    """The encoder to use for this container: unset = the container's default (libx264, or
    libvpx-vp9 for WebM); `auto` = its NVENC encoder (h264_nvenc, or av1_nvenc for WebM) when
    a trial encode works here, else that default; an explicit one the container cannot hold,
    this ffmpeg lacks, or an nvenc that cannot encode here is refused (InputError, one line).
    Cheap after the first call (ffmpeg's answers are cached): local mode asks before any model
    loads, the writer again when it starts."""
    codecs.check_encoder(requested, muxer, width=width, height=height, frame_rate=frame_rate)
    if requested == "auto":
        # Debian's ffmpeg lists nvenc without a GPU, and H100/H200/A100 have no NVENC at all,
        # so a one-frame trial decides.
        nvenc = codecs.auto_nvenc(muxer)
        chosen = nvenc if ffbin.encoder_works(exe, nvenc) else codecs.default_encoder(muxer)
    else:
        chosen = requested or codecs.default_encoder(muxer)
    if chosen not in ffbin.encoders(exe):
        raise InputError(f"video encoder {chosen} is not available in {exe}", reason=Reason.CONFIG)
    if quality is not None:
        codecs.check_quality(chosen, quality)
    if chosen.endswith("_nvenc") and not ffbin.encoder_works(exe, chosen):
        raise InputError(
            f"video encoder {chosen} is listed by {exe} but cannot encode here (no NVENC: "
            "no NVIDIA GPU, or one without a video encoder such as H100/H200/A100); use "
            f"{codecs.default_encoder(muxer)} or auto",
            reason=Reason.CONFIG,
        )
    return chosen


def choose_encoder(
    requested: str,
    exe: str,
    muxer: str = "mp4",
    *,
    width: int | None = None,
    height: int | None = None,
    quality: int | None = None,
    frame_rate: Fraction | None = None,
) -> str:
    """resolve_encoder() for a writer that is starting: logs and counts
    (facefusion_video_encodes_total{encoder}) what it really uses."""
    chosen = resolve_encoder(
        requested, exe, muxer, width=width, height=height, quality=quality,
        frame_rate=frame_rate,
    )  # fmt: skip
    log.info("video encoder %s -> %s", requested or "(unset)", chosen)
    from facefusion_tasks import observe

    observe.video_encode(chosen)
    return chosen


def check_destination(destination: Path) -> None:
    """Refuse, with one line, a destination that cannot be written (before ffmpeg starts)."""
    parent = destination.parent
    if destination.is_dir():
        raise OutputError(f"{destination}: is a directory")
    if not parent.exists():
        raise OutputError(f"{destination}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{destination}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{destination}: directory {parent} is not writable")
    try:
        muxer_for(destination)
    except ValueError as exc:
        raise OutputError(f"{destination}: {exc}") from None


#: The shortest last frame given its own length when the source's rate is slower: ffmpeg
#: takes the raw track's rate from that length, and encoders refuse fast ones (SVT-AV1 above
#: 240 fps; ffmpeg 5.1 reads no rate at 1000 fps and up, and its packets lose their lengths).
MIN_OWN_LAST_FRAME = Fraction(1, 240)
#: The longest: ffmpeg 5.1 is told the rate outright below 5 fps (rate_args), and its
#: SVT-AV1 (1.4) refuses one under 1/256 fps. A GIF held on its last frame for its longest
#: delay (655.35 s) comes out with a 255 s last frame, not the 1/rate it had before.
MAX_OWN_LAST_FRAME = Fraction(255)


def last_frame_length(own: Fraction | None, rate: Fraction | None) -> Fraction:
    """Seconds the written last frame lasts (0 = unknown): the source's own last frame's
    `own` length where it is known, so a GIF's or a slideshow's long last picture and a
    variable-rate video's short one keep their time; else one frame at `rate`. Not where
    that would declare a faster rate than both the source's own and 240 fps; at most
    MAX_OWN_LAST_FRAME."""
    step = 1 / rate if rate else Fraction(0)
    if not own or own <= 0:
        return step
    if own < min(step or MIN_OWN_LAST_FRAME, MIN_OWN_LAST_FRAME):
        return step
    return min(own, MAX_OWN_LAST_FRAME)


class FrameWriter:
    """Encode BGR frames with their own pts into `destination`, atomically.

    Frames go to ffmpeg as Matroska on its stdin; ffmpeg writes a hidden temp file beside the
    destination; commit() checks ffmpeg's error lines and re-counts the file (frames and
    duration must be what was written) before renaming it into place; abort() deletes it. The output starts at 0:
    pts are taken relative to the first frame written, their spacing kept exactly. Leaving
    the `with` block normally commits; leaving it with an exception aborts.
    """

    def __init__(
        self,
        destination: Path,
        *,
        width: int,
        height: int,
        time_base: Fraction,
        audio_source: VideoInfo | None,
        settings: Settings,
        frame_rate: Fraction | None = None,
        colour: Colour = UNTAGGED,
        sample_aspect: str = "",
        field_order: str = "",
        last_frame: Fraction | None = None,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"bad frame size {width}x{height}")
        self.destination = Path(destination).absolute()
        check_destination(self.destination)
        self.width = width
        self.height = height
        self.time_base = time_base
        self.frames_written = 0
        self._first_pts: int | None = None
        self._last_pts: int | None = None
        self._previous_pts: int | None = None
        #: The longest time between two written frames, in time_base ticks.
        self._widest_gap = 0
        self._done = False

        exe = ffbin.ffmpeg_exe(settings.ffmpeg)
        muxer = muxer_for(self.destination)
        rate = frame_rate or (audio_source.frame_rate if audio_source is not None else None)
        self._rate = Fraction(rate) if rate else None
        self.encoder = choose_encoder(
            settings.video_encoder, exe, muxer, width=width, height=height,
            quality=settings.video_quality, frame_rate=self._rate,
        )  # fmt: skip
        # The source's audio and subtitles are muxed in, if it has any.
        audio = audio_source if audio_source is not None and audio_source.carries_streams else None
        #: How long the last frame lasts: nothing follows it to end it.
        self._last_frame = last_frame_length(last_frame, self._rate)
        self.temp = staging.create_temp(self.destination, hold_dir=True)
        try:
            argv = encode_argv(
                self.temp,
                width=width,
                height=height,
                time_base=time_base,
                encoder=self.encoder,
                preset=settings.video_preset,
                quality=settings.video_quality,
                muxer=muxer,
                audio_source=objects.ffmpeg_input(audio.path) if audio else None,
                audio_codecs=audio.audio_codecs if audio else (),
                subtitle_codecs=audio.subtitle_codecs if audio else (),
                audio_seconds=audio.duration if audio and audio.duration > 0 else None,
                audio_skip=audio.video_delay if audio else 0.0,
                audio_container=audio.container if audio else "",
                colour=colour,
                sample_aspect=sample_aspect,
                field_order=field_order,
                frame_rate=1 / self._last_frame if self._last_frame else None,
                ffmpeg=exe,
                version=ffbin.ffmpeg_version(exe),
            )
            log.debug("encoding: %s", redact(" ".join(argv)))
            self._ffmpeg = process.Process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, name="ffmpeg-encode",
                quiet=audio.picture_decoders if audio else frozenset(),
            )  # fmt: skip
        except BaseException:
            staging.remove(self.temp)
            raise
        self._exe = exe
        #: The source whose audio and subtitles this encoder reads, for blaming its damage.
        self._extras = audio.path if audio else None
        self._proc = self._ffmpeg.proc
        assert self._proc.stdin is not None
        self._stdin: IO[bytes] = self._proc.stdin
        # The raw track's default duration is what ffmpeg gives the last frame.
        last_duration = round(self._last_frame * 10**9) or None
        try:
            self._mkv = MatroskaRawWriter(
                self._stdin, width, height, default_duration_ns=last_duration
            )
        except BrokenPipeError:
            self._fail("ffmpeg exited before the first frame")

    def write(self, image: np.ndarray, pts: int) -> None:
        """Append a frame (height×width×3 uint8 BGR); pts strictly increase, in time_base."""
        if self._done:
            raise ValueError("the writer is already committed or aborted")
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected a {self.height}x{self.width}x3 uint8 image, got "
                f"{image.shape} {image.dtype}"
            )
        if self._first_pts is None:
            self._first_pts = pts
        self._previous_pts, self._last_pts = self._last_pts, pts
        if self._previous_pts is not None:
            self._widest_gap = max(self._widest_gap, pts - self._previous_pts)
        try:
            self._mkv.write(image, pts_to_ns(pts - self._first_pts, self.time_base))
        except BrokenPipeError:
            self._fail(f"ffmpeg stopped after {self.frames_written} frames")
        self.frames_written += 1

    def commit(self) -> Path:
        """Finish the encode, verify the file and move it into place. MediaError (the
        destination untouched, the temp removed) if ffmpeg reported any error, even with exit
        code 0 (a full disk while writing the trailer), or if the file does not hold exactly
        the frames written over their duration."""
        if self._done:
            raise ValueError("the writer is already committed or aborted")
        if self.frames_written == 0:
            self.abort()
            raise MediaError(f"{self.destination.name}: no frames were written")
        with contextlib.suppress(BrokenPipeError):  # ffmpeg already gone: its exit code says why
            self._stdin.close()
        try:
            code = self._ffmpeg.wait(FLUSH_TIMEOUT, what=f"encoding {self.destination.name}")
            failure = self._ffmpeg.log.failure(f"encoding {self.destination.name}", code)
            if failure is not None:
                raise self._source_damage() or failure
            self._verify()
        except BaseException as exc:
            gone = isinstance(exc, MediaError) and staging.moved(self.temp)
            self.abort()
            if gone:
                raise self._folder_gone() from exc
            raise
        self._ffmpeg.close_pipes()
        self._done = True
        staging.commit(self.temp, self.destination)
        log.info("wrote %s (%d frames, %s)", self.destination, self.frames_written, self.encoder)
        return self.destination

    def expected_span(self) -> tuple[Fraction, Fraction]:
        """(span, tolerance): first pts to last pts of the written frames, give or take one
        frame (and a millisecond of rounding)."""
        assert self._first_pts is not None and self._last_pts is not None
        span = (self._last_pts - self._first_pts) * self.time_base
        return span, (self._frame() or Fraction(1, 25)) + Fraction(1, 1000)

    def expected_duration(self) -> tuple[Fraction, Fraction]:
        """(duration, tolerance): the span plus the last frame's length, give or take one
        frame, or the widest gap between two frames if that is longer. The muxer decides the
        last frame's length: with B-frames and a variable rate, mp4's is a decode-order gap,
        seconds long where the source's frames are seconds apart. The span is checked
        tightly apart from it (expected_span)."""
        span, _ = self.expected_span()
        last = self._last_frame or self._frame()
        # The file's packets show mp4's last frame as its decode-order gap (one tick in a
        # coarse clock), its edit list the length it plays: only the span is exact there.
        frame = self._frame() or Fraction(1, 25)
        return span + last, process.length_tolerance(frame, last, self._widest_gap * self.time_base)

    def _frame(self) -> Fraction:
        """One frame's length: at the given rate, else the last two frames' distance."""
        step = self._rate and 1 / self._rate
        if not step and self._previous_pts is not None and self._last_pts is not None:
            step = (self._last_pts - self._previous_pts) * self.time_base
        return Fraction(step or 0)

    def _verify(self) -> None:
        duration, tolerance = self.expected_duration()
        process.verify_video(
            self.temp,
            ffmpeg=self._exe,
            frames=self.frames_written,
            duration=duration,
            tolerance=tolerance,
            what=self.destination.name,
            span=self.expected_span(),
        )

    def abort(self) -> None:
        """Stop ffmpeg and delete the temp file; the destination is left untouched. Idempotent."""
        if self._done:
            return
        self._done = True
        self._ffmpeg.kill()
        self._ffmpeg.close_pipes()
        staging.remove(self.temp)

    def _source_damage(self) -> InputError | None:
        """The source's audio or subtitles damaged, when that is what stopped the encoder."""
        return extras_damage(list(self._ffmpeg.log.errors), self._extras)

    def _fail(self, what: str) -> None:
        # How the encoder ended on its own, before abort() kills it: the broken pipe may come
        # a moment before its exit can be collected.
        try:
            code: int | None = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        gone = staging.moved(self.temp)
        self.abort()
        if gone:
            raise self._folder_gone()
        failure = self._source_damage() or self._ffmpeg.log.failure(
            f"{self.destination.name}: {what}", code
        )
        raise failure or MediaError(
            f"{self.destination.name}: {what}: {self._ffmpeg.log.last_error()}",
            stderr=self.stderr_tail(),
        )

    def _folder_gone(self) -> OutputError:
        """The encode failed because the output's folder was moved or removed meanwhile: the
        user's doing (exit 2, bad_output), not a media failure (the temp went with it, and
        abort() removed it there)."""
        return OutputError(
            f"{self.destination}: its folder was moved or removed while the output was written"
        )

    def stderr_tail(self) -> str:
        """The last lines ffmpeg printed."""
        return self._ffmpeg.log.text()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()
