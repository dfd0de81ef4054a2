"""Hostile inputs: playlists that reach outside the roots, and files sized to exhaust memory."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video import ffbin
from facefusion_tasks.video.argv import decode_argv
from facefusion_tasks.video.probe import probe
from facefusion_tasks.video.samples import make_sample_video
from tests.cluster import SHARED_REDIS
from tests.media import write_source_face

#: The issue's bar for refusing a hostile file.
REFUSE_SECONDS = 2.0
REFUSE_RSS_BYTES = 1 << 30


@dataclass(frozen=True)
class Finished:
    """A CLI run with the peak resident memory of its whole process tree."""

    returncode: int
    stderr: str
    seconds: float
    peak_rss_bytes: int


def run_measured(*args: str | Path, env: dict[str, str]) -> Finished:
    """Run the CLI; wait4 reports the largest RSS of the child and every child it waited for
    (ffprobe, ffmpeg), which is what a worker's memory limit would see."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEFUSION_")}
    environment |= env
    started = time.monotonic()
    with (
        open(os.devnull, "wb") as devnull,
        subprocess.Popen(
            [sys.executable, "-m", "facefusion_tasks", *map(str, args)],
            stdout=devnull,
            stderr=subprocess.PIPE,
            env=environment,
        ) as proc,
    ):
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Finished(
        returncode=proc.returncode,
        stderr=stderr,
        seconds=time.monotonic() - started,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
    )


def huge_png(path: Path, side: int) -> Path:
    """A real, valid grey PNG of side² pixels, a few hundred KB on disk (rows of zeros)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + one grey byte per pixel
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A storage root holding playlists named like videos, and a video outside that root."""
    base = tmp_path_factory.mktemp("hostile")
    outside = base / "outside"
    outside.mkdir()
    secret = make_sample_video(outside / "secret.mp4", seconds=1, faces=1, audio=True)
    root = base / "root"
    root.mkdir()
    source = root / "source.png"
    write_source_face(source)
    hls = root / "evil.mp4"
    hls.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n"
    )
    # A relative symlink inside the root, so even the concat demuxer's "safe" mode accepts it.
    (root / "link.mp4").symlink_to(Path("..") / "outside" / "secret.mp4")
    ffconcat = root / "joined.mp4"
    ffconcat.write_text("ffconcat version 1.0\nfile link.mp4\n")
    big = root / "big.mp4"
    subprocess.run(
        [ffbin.ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "color=black:s=8192x8192:r=1", "-frames:v", "1", "-c:v", "libx264",
         "-preset", "ultrafast", str(big)],
        check=True,
    )  # fmt: skip
    return {
        "root": root,
        "secret": secret,
        "source": source,
        "hls": hls,
        "ffconcat": ffconcat,
        "big": big,
        "huge_png": huge_png(root / "huge.png", 30000),
    }


@pytest.mark.parametrize("name", ["hls", "ffconcat"])
def test_a_playlist_named_like_a_video_is_refused_by_the_probe(
    hostile: dict[str, Path], name: str
) -> None:
    with pytest.raises(InputError, match="not a plain video file") as caught:
        probe(hostile[name])
    assert caught.value.reason == Reason.NOT_PLAIN_FILE


@pytest.mark.parametrize("name", ["hls", "ffconcat"])
def test_the_decoder_opens_no_playlist_even_without_the_probe(
    hostile: dict[str, Path], name: str
) -> None:
    # The decoder's own argv refuses it too, should the file change after the probe.
    argv = decode_argv(hostile[name], ffmpeg=ffbin.ffmpeg_exe(), max_frames=1)
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert done.stdout == b""
    assert b"not on whitelist" in done.stderr


def test_a_plain_video_still_probes_and_decodes(hostile: dict[str, Path]) -> None:
    info = probe(hostile["secret"])
    argv = decode_argv(info.path, ffmpeg=ffbin.ffmpeg_exe(), max_frames=1)
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout) == info.width * info.height * 3


@pytest.mark.parametrize("name", ["hls", "ffconcat"])
def test_swap_exits_2_on_a_playlist(hostile: dict[str, Path], name: str) -> None:
    out = hostile["root"] / f"out-{name}.mp4"
    done = run_measured("swap", hostile["source"], hostile[name], "-o", out, env={})
    assert done.returncode == 2, done.stderr
    assert "not a plain video file" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("source", "big", "exceed the limit of 33177600 pixels"),
        ("huge_png", "secret", "exceeds the limit of 50000000 pixels"),
        ("source", "huge_png", "exceeds the limit of 50000000 pixels"),  # a target image
    ],
)
def test_swap_refuses_oversized_input_fast_and_small(
    hostile: dict[str, Path], source: str, target: str, message: str
) -> None:
    out = hostile["root"] / "out-big.mp4"
    done = run_measured("swap", hostile[source], hostile[target], "-o", out, env={})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.seconds < REFUSE_SECONDS
    assert done.peak_rss_bytes < REFUSE_RSS_BYTES


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("source", "hls", "not a plain video file"),
        ("source", "ffconcat", "not a plain video file"),
        ("source", "big", "exceed the limit of 33177600 pixels"),
        ("huge_png", "secret", "exceeds the limit of 50000000 pixels"),
        ("source", "huge_png", "exceeds the limit of 50000000 pixels"),
    ],
)
def test_submit_refuses_hostile_input_before_anything_is_queued(
    hostile: dict[str, Path], source: str, target: str, message: str
) -> None:
    client = redis.Redis.from_url(SHARED_REDIS)
    client.flushdb()
    # The outside video is within this run's roots only as a target for the PNG case.
    roots = f"{hostile['root']}:{hostile['secret'].parent}"
    env = {"FACEFUSION_BROKER_URL": SHARED_REDIS, "FACEFUSION_STORAGE_ROOTS": roots}
    out = hostile["root"] / "out-submit.mp4"
    try:
        done = run_measured("submit", hostile[source], hostile[target], "-o", out, env=env)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert done.seconds < REFUSE_SECONDS
        assert done.peak_rss_bytes < REFUSE_RSS_BYTES
        assert client.dbsize() == 0
    finally:
        client.flushdb()


#: What a swap of an accepted 4K clip may peak at (models, a detector batch of 4K frames, the
#: stage queues under FACEFUSION_QUEUE_BYTES). Measured here: 1.05 GiB for 1 s of 4K; 1.10 GiB
#: for 3 s, against 1.26 GiB before the queues were bounded in bytes.
ACCEPTED_4K_RSS_BYTES = 1536 << 20


def test_an_accepted_4k_clip_swaps_in_bounded_memory(
    hostile: dict[str, Path], models_dir: Path
) -> None:
    target = make_sample_video(
        hostile["root"] / "uhd.mp4", seconds=1.5, width=3840, height=2160, faces=2, audio=True
    )
    out = hostile["root"] / "out-uhd.mp4"
    env = {
        "FACEFUSION_MODELS_DIR": str(models_dir),
        "FACEFUSION_EXECUTION_PROVIDER": "cpu",
        "FACEFUSION_ALLOW_STANDIN_MODELS": "1",
    }
    done = run_measured("swap", hostile["source"], target, "-o", out, "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    assert done.peak_rss_bytes < ACCEPTED_4K_RSS_BYTES, done.peak_rss_bytes


def _not_utf8(original: Path, stem: str) -> Path:
    """A copy of `original` whose name holds a byte that is not UTF-8 (`stem` + 0xff)."""
    copy = original.with_name(os.fsdecode(stem.encode() + b"\xff" + original.suffix.encode()))
    copy.write_bytes(original.read_bytes())
    return copy


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("source", "src\\xff.png: name is not valid UTF-8; rename it"),
        ("reference", "src\\xff.png: name is not valid UTF-8; rename it"),
        ("target", "clip\\xff.mp4: name is not valid UTF-8; rename it"),
        ("output", "out\\xff.mp4: name is not valid UTF-8; rename it"),
        ("trailing_slash", "out-named.mp4/: names a directory, not a file"),
        ("work_dir", "victim.mp4: output is inside the work directory"),
    ],
)
def test_submit_refuses_names_it_could_not_carry_through_before_anything_is_queued(
    hostile: dict[str, Path], case: str, message: str
) -> None:
    """Real files under each name: before, an image segfaulted OpenCV, a video or output was
    an internal UnicodeEncodeError, a trailing slash wrote out-named.mp4, and an output in
    the work directory was deleted by the job's own cleanup once it had succeeded."""
    client = redis.Redis.from_url(SHARED_REDIS)
    client.flushdb()
    root = hostile["root"]
    env = {"FACEFUSION_BROKER_URL": SHARED_REDIS, "FACEFUSION_STORAGE_ROOTS": str(root)}
    target = root / "clip.mp4"
    target.write_bytes(hostile["secret"].read_bytes())
    source, out, extra = hostile["source"], root / "out-named.mp4", []
    out_arg: str | Path = out
    if case == "source":
        source = _not_utf8(source, "src")
    elif case == "reference":
        extra = ["--reference-face", _not_utf8(source, "src")]
    elif case == "target":
        target = _not_utf8(target, "clip")
    elif case == "output":
        out_arg = root / os.fsdecode(b"out\xff.mp4")
    elif case == "trailing_slash":
        out_arg = f"{out}/"
    elif case == "work_dir":
        out = out_arg = root / ".facefusion-work" / "0123456789abcdef" / "victim.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = run_measured("submit", source, target, "-o", out_arg, *extra, env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr
        assert client.dbsize() == 0
        assert not os.path.exists(out) and not os.path.exists(out_arg)
    finally:
        client.flushdb()
