"""Whether an input is a plain, readable video file ffmpeg may open, and one line when it is not."""

from __future__ import annotations

import os
import re
from pathlib import Path

from facefusion_tasks import objects
from facefusion_tasks.errors import InputError
from facefusion_tasks.filekind import require_file
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import process
from facefusion_tasks.video.argv import PLAIN_DEMUXERS, plain_input_args
from facefusion_tasks.video.signed import redact

#: Seconds a probe or a demux-only pass may take (a pass reads the file, nothing is decoded).
PROBE_TIMEOUT = 600.0
#: Demuxers that read one still image; a single picture is not a video.
IMAGE_FORMATS = {"image2", "image2pipe"}
#: Box types an ISO-BMFF (mp4/mov) file can begin with: such a file that no demuxer accepts
#: is a damaged video, not some other kind of file.
MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
#: ftyp major brands of HEIF still pictures (an iPhone's .HEIC is "heic"): ISO-BMFF files that
#: the mp4 demuxer cannot read ("moov atom not found"), yet are no damaged videos.
HEIF_STILL_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"mif2"}
#: Magic numbers of other video containers (Matroska/WebM EBML, RIFF/AVI, FLV).
VIDEO_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV")
#: MPEG-TS: a 0x47 sync byte every 188 bytes (one alone could be the letter G).
TS_PACKET = 188
#: Demuxers that read other files or URLs a file names (playlists, lists, references).
_OPENS_OTHER_FILES = frozenset({"hls", "applehttp", "concat", "dash", "mov_ref", "ffmetadata",
                                "sdp", "rtsp", "image2", "tee", "data", "subfile", "imf"})  # fmt: skip
#: Audio-only formats, named so that such a file is called what it is.
_AUDIO_FORMATS = frozenset({"mp3", "wav", "flac", "aac", "ac3", "eac3", "w64", "aiff", "amr",
                            "ape", "dts", "tta", "wv", "mpc", "mpc8", "caf", "au", "opus"})  # fmt: skip
#: What ffmpeg says when the demuxer it sniffed is not one of PLAIN_DEMUXERS.
_NOT_WHITELISTED = re.compile(r"\[([\w,]+) @ 0x[0-9a-f]+\] (?:\[\w+\] )?Format not on whitelist")


def input_args(source: Location) -> list[str]:
    """An input's confinement options and its name for ffmpeg: the path, or a URL signed now."""
    target = objects.ffmpeg_input(source)
    return [*plain_input_args(target), str(target)]


def check_file(path: str | Path | ObjectRef) -> Location:
    """The input's location once it is a readable, non-empty file (or stored object)."""
    where = objects.location(path) if isinstance(path, str) else path
    if isinstance(where, ObjectRef):
        if int(objects.head(where).get("ContentLength") or 0) == 0:
            raise InputError(f"{where.name}: empty file")
        return where
    source = where.absolute()
    name = source.name or str(source)
    if source.is_dir():
        raise InputError(f"{name}: is a directory, not a video file")
    require_file(source, shown=name)
    if source.stat().st_size == 0:
        raise InputError(f"{name}: empty file")
    if not os.access(source, os.R_OK):
        raise InputError(f"{name}: not readable (permission denied)")
    return source


def _head(source: Location) -> bytes:
    """The first bytes of a file or object: enough to tell containers apart."""
    if isinstance(source, ObjectRef):
        return objects.read_range(source, 0, 2 * TS_PACKET + 1)
    with source.open("rb") as handle:
        return handle.read(2 * TS_PACKET + 1)


def looks_like_video_container(source: Location) -> bool:
    """Whether the first bytes are an mp4/mov box, another container's magic, or MPEG-TS sync."""
    return _video_magic(_head(source))


def _video_magic(head: bytes) -> bool:
    """looks_like_video_container() on first bytes already read."""
    transport_stream = len(head) > 2 * TS_PACKET and head[::TS_PACKET] == b"GGG"
    return head[4:8] in MP4_BOXES or head.startswith(VIDEO_MAGIC) or transport_stream


def check_plain(source: Location, container: str) -> None:
    """Refuse a container no plain-file demuxer read (InputError, one line)."""
    # The whitelist already kept ffmpeg from opening anything else; this guards the decision
    # should a probe path ever run without it.
    if not set(container.split(",")) & set(PLAIN_DEMUXERS):
        raise not_plain(source, container)


def not_plain(source: Location, container: str) -> InputError:
    """The one line for a container that is not a plain video file: what it is instead."""
    if still_image(container):
        return InputError(
            f"{source.name}: not a video file (a still image)", reason=Reason.NOT_VIDEO
        )
    names = set(container.split(","))
    if names & _OPENS_OTHER_FILES:
        return InputError(
            f"{source.name}: not a plain video file (format {container.split(',')[0]!r} is "
            "refused: it can make ffmpeg open other files)",
            reason=Reason.NOT_PLAIN_FILE,
        )
    if names & _AUDIO_FORMATS:
        return InputError(f"{source.name}: no video stream (an audio file)", reason=Reason.NO_VIDEO)
    return InputError(
        f"{source.name}: not a video file this accepts (format {container.split(',')[0]!r})",
        reason=Reason.NOT_VIDEO,
    )


def open_failure(source: Location, stderr: str) -> InputError:
    """One line for a file no demuxer would open."""
    refused = _NOT_WHITELISTED.search(stderr)
    if refused is not None:
        return not_plain(source, refused.group(1))
    if "moov atom not found" in stderr:
        # Text renamed .mp4 gets the same complaint from the mp4 demuxer: tell them apart.
        # So does a phone's HEIF photo (ffmpeg 5.1 reads none of its items): not a damaged video.
        head = _head(source)
        if head[4:8] == b"ftyp" and head[8:12] in HEIF_STILL_BRANDS:
            return InputError(
                f"{source.name}: not a video file (a still image: HEIF/HEIC)",
                reason=Reason.NOT_VIDEO,
            )
        if _video_magic(head):
            return InputError(
                f"{source.name}: truncated or corrupt video (moov atom not found)",
                reason=Reason.CORRUPT_VIDEO,
            )
        return InputError(f"{source.name}: not a video file", reason=Reason.NOT_VIDEO)
    if "End of file" in stderr and looks_like_video_container(source):
        # A header and no frame after it: the stream parameters never arrive.
        return InputError(
            f"{source.name}: video stream has no frames (the file ends before the first)",
            reason=Reason.NO_FRAMES,
        )
    if "Invalid data found" in stderr and looks_like_video_container(source):
        return InputError(f"{source.name}: truncated or corrupt video", reason=Reason.CORRUPT_VIDEO)
    if "Permission denied" in stderr:
        return InputError(f"{source.name}: not readable (permission denied)")
    return InputError(f"{source.name}: not a video file", reason=Reason.NOT_VIDEO)


def run_probe(argv: list[str]) -> process.Completed:
    """Run a probe or demux pass under PROBE_TIMEOUT, named for the file it reads. One a
    signal ended raises process.killed: read as the file's failure, the OOM killer's SIGKILL
    or a service manager's SIGTERM failed the job as "not a video file"."""
    program = Path(argv[0]).name
    what = f"{program} on {redact(argv[-1])}"
    done = process.run(argv, timeout=PROBE_TIMEOUT, what=what)
    if process.signalled(done.returncode, done.log().errors):
        raise process.killed(what, done.returncode, program=program)
    return done


def still_image(container: str) -> bool:
    """Whether `container` names a demuxer of one still picture."""
    # png_pipe, jpeg_pipe, webp_pipe, …: one picture read by an image demuxer. (An animated
    # GIF has its own demuxer and counts as a video.)
    names = set(container.split(","))
    return bool(names & IMAGE_FORMATS) or any(name.endswith("_pipe") for name in names)
