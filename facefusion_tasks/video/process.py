"""One way to run ffmpeg: spawn with stderr drained, a bounded tail, error lines, a timeout, a re-count."""

from __future__ import annotations

import collections
import contextlib
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

from facefusion_tasks.errors import FaceFusionError, MediaError, TransientError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.signed import redact

#: Lines of stderr kept per process (bounded memory however long ffmpeg talks).
TAIL_LINES = 60
#: A level-prefixed line ("-loglevel level+…"): "[mp4 @ 0x55…] [error] text" or "[error] text".
LEVEL_PREFIX = re.compile(r"^(\[[^\]]* @ 0x[0-9a-f]+\] )?\[(\w+)\] ?")
#: Levels that mean ffmpeg failed, whatever its exit code: ffmpeg 5.1 exits 0 after
#: "Error writing trailer: No space left on device".
ERROR_LEVELS = frozenset({"error", "fatal", "panic"})
#: What a full disk looks like in ffmpeg's messages (strerror(ENOSPC)).
NO_SPACE_TEXT = "no space left on device"
#: Seconds the demux-only re-count of a written file may take (it reads, decodes nothing).
VERIFY_TIMEOUT = 300.0


def strip_level(line: str) -> str:
    """The message without ffmpeg's "[ctx @ 0x…] [level]" prefix."""
    return LEVEL_PREFIX.sub("", line, count=1)


def level_of(line: str) -> str | None:
    """The level word of a level-prefixed line (None when unprefixed)."""
    match = LEVEL_PREFIX.match(line)
    return match.group(2) if match else None


def context_of(line: str) -> str:
    """The name of the component a level-prefixed line comes from ("h264" for "[h264 @ 0x…]
    [error] …"); "" for ffmpeg's own lines."""
    match = LEVEL_PREFIX.match(line)
    return match.group(1)[1:].split(" @ ", 1)[0] if match and match.group(1) else ""


class StderrLog:
    """The last lines of one ffmpeg's stderr, and its error lines, both bounded. Error lines
    from the components named in `quiet` are kept in the tail but are no errors: a writer that
    reads only a source's sound still has its video decoded while the input is probed, and a
    damaged first frame there (a recording cut mid-GOP: "no frame!") failed the whole encode,
    exit 1, where the same source without sound went through (its picture is read elsewhere,
    and its damage judged there)."""

    def __init__(self, limit: int = TAIL_LINES, *, quiet: frozenset[str] = frozenset()) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=limit)
        self.errors: collections.deque[str] = collections.deque(maxlen=limit)
        self.quiet = quiet
        #: Set once any line reported a full disk (kept even when the line scrolls away).
        self.no_space = False

    def add(self, line: str) -> None:
        """Record one line (a URL's signature removed: ffmpeg names its input in errors)."""
        line = redact(line)
        self.tail.append(line)
        if level_of(line) in ERROR_LEVELS and context_of(line) not in self.quiet:
            self.errors.append(strip_level(line))
        if NO_SPACE_TEXT in line.lower():
            self.no_space = True

    def feed(self, text: str) -> StderrLog:
        """Record a whole captured stderr."""
        for line in text.splitlines():
            self.add(line.rstrip())
        return self

    def last_error(self, limit: int = 200) -> str:
        """The last error line, else the last line, shortened."""
        line = self.errors[-1] if self.errors else (self.tail[-1] if self.tail else "no message")
        return line[:limit]

    def text(self) -> str:
        """The kept lines, for MediaError.stderr."""
        return "\n".join(self.tail)

    def failure(self, what: str, returncode: int | None) -> FaceFusionError | None:
        """A MediaError when ffmpeg failed (non-zero exit or any error line), killed() when a
        signal ended it, else None."""
        if returncode is not None and signalled(returncode, self.errors):
            return killed(what, returncode)
        if returncode == 0 and not self.errors:
            return None
        how = "" if returncode in (0, None) else f" (ffmpeg exit {returncode})"
        if self.no_space:
            return MediaError(
                f"{what}: no space left on device{how}", stderr=self.text(), reason=Reason.NO_SPACE
            )
        return MediaError(f"{what}: {self.last_error()}{how}", stderr=self.text())


#: Signals that end ffmpeg or ffprobe from outside (the kernel's OOM killer, someone on the
#: host, a service manager; ffprobe does not catch SIGTERM or SIGINT): the host's trouble, not
#: the file's. Others (SIGSEGV, SIGABRT from an assertion, SIGBUS, SIGFPE) are a crash, which
#: would come again on the same input.
_OUTSIDE_SIGNALS = frozenset(
    {signal.SIGKILL, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT}
)
#: ffmpeg's exit code after it caught SIGTERM or SIGINT and stopped, saying nothing at error
#: level (5.1 and 9.0). This process never sends either (it stops ffmpeg with SIGKILL), so
#: they came from outside: a service manager stopping the worker's whole process group
#: (systemd's default KillMode, a supervisor's stopasgroup), a terminal's Ctrl-C. The
#: decoder's read as a corrupt video (the user's file blamed, the job failed for good), the
#: encoder's as a media failure. ffmpeg 7 and later also exit 255 for their own EPERM (an
#: immutable output, some demuxers' damage), after an error line: that is not a stop.
STOPPED_EXIT = 255
#: AVERROR_EXIT's text: ffmpeg 9, stopped while reading its input, says so at error level
#: ("Error during demuxing: Immediate exit requested").
_STOPPED_TEXT = "Immediate exit requested"


def signalled(returncode: int, errors: Collection[str] = ()) -> bool:
    """Whether a signal ended ffmpeg (or ffprobe, which catches none): killed by it, or
    caught it and stopped (STOPPED_EXIT, with no error line in `errors` but the stop's own)."""
    if returncode < 0:
        return True
    return returncode == STOPPED_EXIT and all(_STOPPED_TEXT in line for line in errors)


def killed(what: str, returncode: int, *, program: str = "ffmpeg") -> FaceFusionError:
    """The error for a `program` a signal ended (signalled(`returncode`)) that this process
    did not send. From outside: TransientError, as another attempt, maybe on another worker,
    may get through (the failure policy retries it). A crash: MediaError, the system's fault."""
    if returncode == STOPPED_EXIT:
        return TransientError(
            f"{what}: {program} was stopped (SIGTERM or SIGINT from outside: a service "
            "manager or a terminal stopping this worker)"
        )
    try:
        number: signal.Signals | None = signal.Signals(-returncode)
    except ValueError:
        number = None
    name = number.name if number is not None else f"signal {-returncode}"
    if number in _OUTSIDE_SIGNALS:
        return TransientError(
            f"{what}: {program} was killed ({name}: out of memory, or from outside)"
        )
    return MediaError(f"{what}: {program} crashed ({name})")


class Process:
    """A running ffmpeg whose stderr a daemon thread drains (an unread pipe fills up and
    stalls ffmpeg mid-video). `on_line` sees each line first and returns True to keep it out
    of the log (the reader's per-frame showinfo lines); `on_end` runs when stderr closes."""

    def __init__(
        self,
        argv: list[str],
        *,
        stdin: int | None,
        stdout: int | None,
        name: str,
        on_line: Callable[[str], bool] | None = None,
        on_end: Callable[[], None] | None = None,
        quiet: frozenset[str] = frozenset(),
    ) -> None:
        self.argv = argv
        self.log = StderrLog(quiet=quiet)
        self._on_line = on_line
        self._on_end = on_end
        try:
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        except OSError as exc:
            raise MediaError(f"cannot start {argv[0]}: {exc.strerror}") from None
        assert self.proc.stderr is not None
        self._thread = threading.Thread(
            target=self._drain,
            args=(self.proc.stderr,),
            daemon=True,
            name=f"{name}-{self.proc.pid}",
        )
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                if self._on_line is not None and self._on_line(line):
                    continue
                self.log.add(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us (kill)
        finally:
            if self._on_end is not None:
                self._on_end()

    def wait(self, timeout: float | None, *, what: str) -> int:
        """ffmpeg's exit code once it and its stderr are done; killed, and MediaError with
        reason timeout, when it takes longer than `timeout` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise MediaError(
                f"{what}: ffmpeg took over {timeout:.0f} s", stderr=self.log.text(),
                reason=Reason.TIMEOUT,
            ) from None  # fmt: skip
        self._thread.join()
        return code

    def kill(self) -> None:
        """Stop ffmpeg now (idempotent) and collect it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._thread.join()

    def close_pipes(self) -> None:
        """Release the pipe ends this side holds."""
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                # Unflushed bytes to a dead ffmpeg fail the close: nothing left to do with them.
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()


@dataclass(frozen=True)
class Completed:
    """A finished short-lived run."""

    returncode: int
    stdout: str
    stderr: str

    def log(self, *, quiet: frozenset[str] = frozenset()) -> StderrLog:
        """Its stderr as a StderrLog (error lines picked out, but those of `quiet`)."""
        return StderrLog(quiet=quiet).feed(self.stderr)


def run(argv: list[str], *, timeout: float, what: str) -> Completed:
    """Run ffmpeg/ffprobe to the end with output captured; MediaError when it cannot start or
    takes longer than `timeout` (then it is killed)."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise MediaError(f"{what}: took over {timeout:.0f} s", reason=Reason.TIMEOUT) from None
    except OSError as exc:
        raise MediaError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    return Completed(done.returncode, done.stdout, redact(done.stderr))


# --- verifying a written file -------------------------------------------------------------------


@dataclass(frozen=True)
class Counted:
    """What a demux-only pass finds in a file's first video stream."""

    frames: int
    #: First frame's start to the last frame's end (pts span plus the last packet's duration).
    duration: Fraction
    #: First frame's start to the last frame's start: the muxer's guess at the last frame's
    #: length left out.
    span: Fraction = Fraction(0)
    #: The widest gap between two frames next to each other in time.
    widest: Fraction = Fraction(0)


def count_argv(path: Path, *, ffmpeg: str) -> list[str]:
    """Stream-copy the first video stream into framecrc (one line per packet: pts, duration):
    reads the file through, decodes nothing."""
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+error",
        "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-",
    ]  # fmt: skip


_TB_LINE = re.compile(r"^#tb 0:\s*(\d+)/(\d+)")


def parse_framecrc(text: str) -> Counted:
    """Frames and duration from framecrc output (pure, for tests)."""
    time_base = Fraction(0)
    end = 0
    times: list[int] = []
    for line in text.splitlines():
        if line.startswith("#"):
            match = _TB_LINE.match(line)
            if match and int(match.group(2)):
                time_base = Fraction(int(match.group(1)), int(match.group(2)))
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6 or fields[0] != "0":
            continue
        pts, length = int(fields[2]), max(int(fields[3]), 0)
        end = pts + length if not times else max(end, pts + length)
        times.append(pts)
    if not times:
        return Counted(0, Fraction(0))
    times.sort()  # first, last and the gaps between neighbours, in time order
    widest = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0)
    return Counted(
        len(times),
        (end - times[0]) * time_base,
        (times[-1] - times[0]) * time_base,
        widest * time_base,
    )


def count_video(path: Path, *, ffmpeg: str, timeout: float = VERIFY_TIMEOUT) -> Counted:
    """Re-read a written file (demux only) and count what it really holds; MediaError when it
    does not open (a missing moov atom: an mp4 whose trailer was never written)."""
    done = run(count_argv(path, ffmpeg=ffmpeg), timeout=timeout, what=f"verifying {path.name}")
    failure = done.log().failure(f"{path.name} does not read back", done.returncode)
    if failure is not None:
        raise failure
    return parse_framecrc(done.stdout)


def length_tolerance(frame: Fraction, last: Fraction, widest: Fraction) -> Fraction:
    """How far a written video's length may be from its span plus its `last` frame's: a frame,
    or that last frame, or the widest gap between two frames, and a millisecond of rounding.
    The muxer decides the last frame's length: ffmpeg 5.1 reads no packet durations back from
    an mp4 and shows the last one as a decode-order gap, seconds long where the source's
    frames are seconds apart (the span and the frame count are checked exactly apart from
    it). One rule for the local writer and the stitch."""
    return max(frame, last, widest) + Fraction(1, 1000)


def verify_video(
    path: Path,
    *,
    ffmpeg: str,
    frames: int,
    duration: Fraction,
    tolerance: Fraction,
    what: str,
    span: tuple[Fraction, Fraction] | None = None,
) -> Counted:
    """MediaError unless `path` holds exactly `frames` video frames lasting `duration`
    (± `tolerance`, about one frame), and, when `span` (expected, tolerance) is given, with
    its first and last frames that far apart: checked before a file is committed."""
    counted = count_video(path, ffmpeg=ffmpeg)
    if counted.frames != frames:
        raise MediaError(f"{what}: wrote {frames} frames but the file holds {counted.frames}")
    checks = [("lasts", counted.duration, duration, tolerance)]
    if span is not None:
        checks.insert(0, ("spans", counted.span, *span))
    for verb, found, expected, allowed in checks:
        if abs(found - expected) > allowed:
            raise MediaError(
                f"{what}: the file {verb} {float(found):.3f} s, expected {float(expected):.3f} s"
            )
    return counted
