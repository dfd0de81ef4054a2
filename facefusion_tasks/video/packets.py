"""A demux-only pass over a video stream: every packet's pts and duration, nothing decoded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from facefusion_tasks.errors import InputError, MediaError
from facefusion_tasks.objects import Location
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.damage import corrupt, damage_line
from facefusion_tasks.video.plainfile import input_args, open_failure, run_probe

#: Frame flag that marks a packet the decoder drops (e.g. before an mp4 edit list's start).
DISCARD_FLAG = 0x4


@dataclass
class Packets:
    """The video packets a demux pass saw, in file order, with the stream's clock."""

    pts: list[int]
    time_base: Fraction
    #: Sum of packet durations (ticks), for the frame rate of a variable-rate video.
    span: int
    stderr: str
    #: The duration (ticks) of the packet shown last; 0 when the file gives none.
    last_duration: int = 0
    #: Packets without a pts of their own (their dts was taken).
    guessed: int = 0

    def frame_rate(self) -> Fraction:
        """The rate for a regular step; else frames per second of duration, as ffprobe's
        avg_frame_rate counts it."""
        ordered = sorted(self.pts)
        steps = {b - a for a, b in zip(ordered, ordered[1:], strict=False)}
        if len(steps) == 1 and 0 not in steps:
            return 1 / (steps.pop() * self.time_base)
        if self.span <= 0 or not self.time_base:
            return Fraction(0)
        return Fraction(len(ordered)) / (self.span * self.time_base)

    def length(self, frame_rate: Fraction) -> float:
        """Seconds from the first frame to the end of the last: the pts span plus the last
        frame's own duration (else one frame at `frame_rate`); 0 when unknown. Not the summed
        durations: a Matroska track's default duration gives every packet of a variable-rate
        video the same one."""
        if not self.pts or not self.time_base:
            return 0.0
        last = self.last_frame()
        step = last if last > 0 else (1 / frame_rate if frame_rate else Fraction(0))
        return float((max(self.pts) - min(self.pts)) * self.time_base + step)

    def last_frame(self) -> Fraction:
        """Seconds the frame shown last lasts, by its own packet; 0 when the file gives none."""
        return self.last_duration * self.time_base

    def variable(self) -> bool:
        ordered = sorted(self.pts)
        return len({b - a for a, b in zip(ordered, ordered[1:], strict=False)}) > 1


_TB_LINE = re.compile(r"^#tb 0:\s*(\d+)/(\d+)")
_NOPTS = -(2**63)


def demux_pass(source: Location, exe: str, stream: int = 0) -> Packets:
    """Stream-copy video stream `stream` (ffmpeg's v:N) into framecrc: one line per packet
    with its pts, duration and flags. -copyts keeps the file's own timestamps."""
    packets = _demux(source, exe, stream)
    if packets.guessed and _repeated(packets.pts):
        # MPEG program streams (.mpg, .vob) stamp only some packets, and a missing pts read
        # as the dts is another frame's pts: genpts fills them in from their decode times, as
        # the decoder does. Only then: for H.264 in AVI it gives each packet the next one's
        # dts, one frame off the decoder's, and chunks lost their first frame.
        packets = _demux(source, exe, stream, genpts=True)
    repeated = _repeated(packets.pts)
    if repeated:
        # The pipeline keeps every frame's own time; made-up times would not be the file's.
        raise InputError(
            f"{source.name}: {repeated} of {len(packets.pts)} frames repeat another's timestamp "
            "(a raw stream without timestamps, or a frame rate finer than its container's "
            "clock); remux it with a frame rate, e.g. ffmpeg -r 25 -i IN -c copy OUT.mkv",
            reason=Reason.BAD_INPUT,
        )
    return packets


def _repeated(pts: list[int]) -> int:
    return len(pts) - len(set(pts))


def _demux(source: Location, exe: str, stream: int, *, genpts: bool = False) -> Packets:
    argv = [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info", "-copyts"]
    *options, target = input_args(source)
    argv += [*options, *(["-fflags", "+genpts"] if genpts else []), "-i", target]
    argv += ["-map", f"0:v:{stream}", "-c", "copy", "-f", "framecrc", "-"]
    done = run_probe(argv)
    if done.returncode != 0:
        if "Input #0" not in done.stderr:
            raise open_failure(source, done.stderr)
        if "matches no streams" in done.stderr:
            raise InputError(f"{source.name}: no video stream", reason=Reason.NO_VIDEO)
        damage = damage_line(done.stderr)
        if damage is not None:
            raise corrupt(source, damage)
        raise MediaError(
            f"{source.name}: ffmpeg could not demux the video stream", stderr=done.stderr[-4000:]
        )
    damage = damage_line(done.stderr)
    if damage is not None:
        raise corrupt(source, damage)
    return read_packets(done.stdout, done.stderr)


def read_packets(framecrc: str, stderr: str = "") -> Packets:
    """The packets of stream 0 in a framecrc listing, those the decoder drops left out."""
    time_base = Fraction(0)
    pts: list[int] = []
    span = 0
    max_pts, last_duration, guessed = _NOPTS, 0, 0
    for line in framecrc.splitlines():
        if line.startswith("#"):
            match = _TB_LINE.match(line)
            if match:
                time_base = Fraction(int(match.group(1)), int(match.group(2)))
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6 or fields[0] != "0":
            continue
        flags = 0
        for extra in fields[6:]:
            if extra.startswith("F=0x"):
                flags = int(extra[4:], 16)
        if flags & DISCARD_FLAG:
            continue
        stamp = int(fields[2])
        guessed += stamp == _NOPTS
        pts.append(int(fields[1]) if stamp == _NOPTS else stamp)
        span += max(int(fields[3]), 0)
        if pts[-1] >= max_pts:
            max_pts, last_duration = pts[-1], max(int(fields[3]), 0)
    return Packets(
        pts=pts, time_base=time_base, span=span, stderr=stderr, last_duration=last_duration,
        guessed=guessed,
    )  # fmt: skip
