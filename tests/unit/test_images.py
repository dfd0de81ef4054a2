"""Still images from their bytes: format, completeness, animation; the output rules and the
verified write of an image target."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefusion_tasks.errors import InputError, MediaError, OutputError
from facefusion_tasks.images import check_image, check_image_target, is_image_target, read_header
from facefusion_tasks.inputs import check_output, read_image
from facefusion_tasks.reasons import Reason
from facefusion_tasks.still import encode_args, verify_image, write_image
from tests.media import face_photo, write_turned_photo

LIMIT = 50_000_000


def _write(path: Path, params: list[int] | None = None) -> Path:
    assert cv2.imwrite(str(path), face_photo(64, 48), params or [])
    return path


def _cut(path: Path, keep: float, name: str) -> Path:
    data = path.read_bytes()
    cut = path.with_name(name)
    cut.write_bytes(data[: int(len(data) * keep)])
    return cut


@pytest.mark.parametrize(
    ("name", "params", "fmt"),
    [
        ("a.png", [], "png"),
        ("a.jpg", [], "jpeg"),
        ("a.jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "jpeg"),
        ("a.webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "webp"),
        ("a.webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "webp"),
    ],
)
def test_a_whole_still_image_is_complete_and_not_animated(
    tmp_path: Path, name: str, params: list[int], fmt: str
) -> None:
    header = read_header(_write(tmp_path / name, params))
    assert (header.format, header.width, header.height) == (fmt, 64, 48)
    assert header.complete and not header.animated


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.webp"])
@pytest.mark.parametrize("keep", [0.98, 0.6, 0.2])
def test_a_cut_short_image_is_refused_as_truncated_before_decoding(
    tmp_path: Path, name: str, keep: float
) -> None:
    cut = _cut(_write(tmp_path / name), keep, f"cut-{name}")
    with pytest.raises(InputError) as caught:
        read_image(cut)
    assert caught.value.reason == Reason.NOT_AN_IMAGE
    assert "truncated" in str(caught.value) or "not a PNG, JPEG or WebP" in str(caught.value)


def test_stray_bytes_before_a_jpegs_end_marker_cost_no_pixel_and_are_no_damage(
    tmp_path: Path,
) -> None:
    # libjpeg says "Corrupt JPEG data: 3 extraneous bytes before marker 0xd9" of what many
    # cameras write, and decodes every pixel: unlike its other "Corrupt JPEG data" lines.
    whole = _write(tmp_path / "a.jpg").read_bytes()
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(whole[:-2] + b"\x12\x34\x56" + whole[-2:])
    assert np.array_equal(read_image(padded), read_image(tmp_path / "a.jpg"))


def _segments(jpeg: bytes) -> dict[int, int]:
    """Each marker's offset in a JPEG's header, up to its first scan."""
    offsets, at = {}, 2
    while jpeg[at + 1] != 0xDA:
        offsets.setdefault(jpeg[at + 1], at)
        at += 2 + struct.unpack(">H", jpeg[at + 2 : at + 4])[0]
    offsets[0xDA] = at
    return offsets


@pytest.mark.parametrize(
    ("marker", "stray"),
    [(0xDA, b"\x00\x00\x00"), (0xC0, b"\x12\x34"), (0xC0, b"\x01\xff\x00\x02")],
)
def test_stray_bytes_between_a_jpegs_header_segments_are_read_past_as_libjpeg_does(
    tmp_path: Path, marker: int, stray: bytes
) -> None:
    # A metadata segment whose stated length is short leaves bytes before the next marker;
    # libjpeg skips them ("extraneous bytes before marker 0xda") and decodes every pixel. The
    # header walk stopped there: "truncated JPEG" before the scan, "not a JPEG" before the frame.
    whole = _write(tmp_path / "a.jpg").read_bytes()
    at = _segments(whole)[marker]
    stray_file = tmp_path / "stray.jpg"
    stray_file.write_bytes(whole[:at] + stray + whole[at:])
    header = check_image(stray_file, max_pixels=LIMIT)
    assert (header.width, header.height, header.complete) == (64, 48, True)
    assert np.array_equal(read_image(stray_file), read_image(tmp_path / "a.jpg"))


def test_a_jpeg_cut_before_its_frame_header_is_called_truncated(tmp_path: Path) -> None:
    whole = _write(tmp_path / "a.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: _segments(whole)[0xC0] + 3])
    with pytest.raises(
        InputError, match="truncated JPEG image .*before its frame header"
    ) as caught:
        check_image(cut, max_pixels=LIMIT)
    assert caught.value.reason == Reason.NOT_AN_IMAGE


@pytest.mark.parametrize("name", ["a.png", "a.jpg"])
def test_a_file_far_larger_than_its_header_is_refused_without_reading_it(
    tmp_path: Path, name: str
) -> None:
    # A real header in front of a 3 GB hole (sparse: no disk used). The completeness search
    # read, and held, every page before the size limit applied: 3.3 GB resident, 11 s.
    image = _write(tmp_path / name)
    data = image.read_bytes()
    if name.endswith(".jpg"):
        data = data[:-2]  # no end marker: the search runs back over the whole hole
    huge = tmp_path / f"huge-{name}"
    huge.write_bytes(data)
    os.truncate(huge, 3 << 30)
    # VmHWM, this process's own peak: getrusage's maxrss keeps the forking pytest's past exec.
    probe = (
        "import re, sys\n"
        "from pathlib import Path\n"
        "from facefusion_tasks.errors import InputError\n"
        "from facefusion_tasks.images import check_image\n"
        "try:\n"
        "    check_image(Path(sys.argv[1]), max_pixels=50_000_000)\n"
        "except InputError as exc:\n"
        "    peak = re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())\n"
        "    print(exc.reason.value, peak.group(1))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(huge)], capture_output=True, text=True, check=True
    )
    reason, peak_kib = done.stdout.split()
    assert reason == Reason.TOO_LARGE.value
    assert int(peak_kib) < 200 << 10, done.stdout


def test_an_exif_thumbnail_does_not_make_a_cut_jpeg_look_complete(tmp_path: Path) -> None:
    # The EXIF block may hold a whole JPEG thumbnail, EOI included, before the main scan.
    _, thumbnail = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    body = b"Exif\x00\x00" + thumbnail.tobytes()
    main = _write(tmp_path / "main.jpg").read_bytes()
    whole = main[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + main[2:]
    (tmp_path / "whole.jpg").write_bytes(whole)
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) - 200])
    assert read_header(tmp_path / "whole.jpg").complete
    assert not read_header(tmp_path / "cut.jpg").complete


def test_empty_and_text_files_named_like_images_are_not_images(tmp_path: Path) -> None:
    (tmp_path / "empty.png").touch()
    (tmp_path / "notes.webp").write_text("just some text\n")
    for name, message in (("empty.png", "empty file"), ("notes.webp", "not a PNG, JPEG")):
        with pytest.raises(InputError, match=message) as caught:
            check_image_target(tmp_path / name, max_pixels=LIMIT)
        assert caught.value.reason == Reason.NOT_AN_IMAGE
    with pytest.raises(InputError, match="no such file") as missing:
        check_image_target(tmp_path / "gone.jpg", max_pixels=LIMIT)
    assert missing.value.reason == Reason.MISSING_FILE


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_animated_png_and_webp_targets_are_refused(tmp_path: Path) -> None:
    png = _write(tmp_path / "still.png").read_bytes()
    # An acTL chunk between IHDR (8 + 25 bytes) and the image data makes it an APNG.
    apng = png[:33] + _chunk(b"acTL", struct.pack(">II", 2, 0)) + png[33:]
    (tmp_path / "moving.png").write_bytes(apng)
    webp = bytearray(_write(tmp_path / "still.webp", [cv2.IMWRITE_WEBP_QUALITY, 80]).read_bytes())
    # A VP8X header with the animation flag (what every animated WebP starts with).
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x02, 0, 0, 0]) + (63).to_bytes(3, "little")
    vp8x += (47).to_bytes(3, "little")
    riff = vp8x + bytes(webp[12:])
    (tmp_path / "moving.webp").write_bytes(
        b"RIFF" + struct.pack("<I", 4 + len(riff)) + b"WEBP" + riff
    )
    for name in ("moving.png", "moving.webp"):
        assert read_header(tmp_path / name).animated
        with pytest.raises(InputError, match="animated .* not supported") as caught:
            check_image_target(tmp_path / name, max_pixels=LIMIT)
        assert caught.value.reason.user_input
    assert not read_header(tmp_path / "still.png").animated


def test_the_image_limit_is_checked_from_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.png")
    with pytest.raises(InputError, match="64x48 exceeds the limit of 3071") as caught:
        check_image(path, max_pixels=3071)
    assert caught.value.reason == Reason.TOO_LARGE


def test_only_image_names_make_image_targets() -> None:
    assert all(is_image_target(Path(n)) for n in ("a.png", "b.JPG", "c.jpeg", "d.webp"))
    assert not any(is_image_target(Path(n)) for n in ("a.mp4", "b.gif", "c.mkv", "png"))


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [("png", "o.png", "o.jpg"), ("jpeg", "o.JPEG", "o.webp"), ("webp", "o.webp", "o.mp4")],
)
def test_an_image_output_keeps_the_targets_format(
    tmp_path: Path, fmt: str, good: str, bad: str
) -> None:
    target = tmp_path / "t.img"
    check_output(tmp_path / good, target, image_format=fmt)
    with pytest.raises(OutputError, match="so the output is one too"):
        check_output(tmp_path / bad, target, image_format=fmt)
    with pytest.raises(OutputError, match="unsupported output type"):
        check_output(tmp_path / good, target)  # a video target's output must be a video


def test_encode_args_write_the_targets_format_without_metadata() -> None:
    assert encode_args("png") == (".png", [])
    assert encode_args("jpeg") == (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert encode_args("webp") == (".webp", [cv2.IMWRITE_WEBP_QUALITY, 95])
    with pytest.raises(ValueError):
        encode_args("gif")


@pytest.mark.parametrize(("fmt", "name"), [("png", "o.png"), ("jpeg", "o.jpg"), ("webp", "o.webp")])
def test_write_image_stages_a_verified_temp_and_commits_it(
    tmp_path: Path, fmt: str, name: str
) -> None:
    image = face_photo(64, 48)
    destination = tmp_path / name
    destination.write_bytes(b"the user's old file")
    staged = write_image(image, destination, image_format=fmt)
    assert staged.temp.parent == tmp_path and staged.temp.name.startswith(".")
    assert destination.read_bytes() == b"the user's old file"
    staged.commit()
    assert read_header(destination).format == fmt
    assert read_image(destination).shape == image.shape
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_written_image_that_does_not_verify_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / "o.png"
    real = cv2.imencode

    def cut_short(ext: str, image: np.ndarray, params: list[int]) -> tuple[bool, np.ndarray]:
        ok, data = real(ext, image, params)
        return ok, data[: len(data) // 2]

    monkeypatch.setattr(cv2, "imencode", cut_short)
    with pytest.raises(MediaError, match="does not verify"):
        write_image(face_photo(64, 48), destination, image_format="png")
    assert list(tmp_path.iterdir()) == []


def test_verify_refuses_another_format_or_size(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.png")
    verify_image(path, image_format="png", width=64, height=48, what="a.png")
    for fmt, width, height in (("jpeg", 64, 48), ("png", 48, 64)):
        with pytest.raises(MediaError):
            verify_image(path, image_format=fmt, width=width, height=height, what="a.png")


@pytest.mark.parametrize("name", ["turned.jpg", "turned.png", "turned.webp"])
def test_an_exif_orientation_is_applied_on_decode(tmp_path: Path, name: str) -> None:
    upright = face_photo(48, 64)
    path = write_turned_photo(tmp_path / name, upright)
    header = read_header(path)
    assert (header.width, header.height) == (64, 48)  # stored turned
    decoded = read_image(path)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright).mean() < 4  # lossy, but the same picture


def test_what_c_code_prints_on_stderr_is_caught_and_can_be_handed_back(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from facefusion_tasks.stderr_capture import captured_stderr, release

    with captured_stderr() as said:
        os.write(2, b"Corrupt JPEG data: premature end of data segment\nsomeone else's\n")
    assert said == ["Corrupt JPEG data: premature end of data segment", "someone else's"]
    assert capfd.readouterr().err == ""
    release(said[1:])
    assert capfd.readouterr().err == "someone else's\n"


def test_a_pipe_or_a_link_loop_is_named_for_what_it_is_in_or_out(tmp_path: Path) -> None:
    fifo = tmp_path / "face.png"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="face.png: is a pipe"):
        check_image(fifo, max_pixels=10**6)
    with pytest.raises(InputError, match="loop.png: is a symlink loop"):
        check_image(loop, max_pixels=10**6)
    # An output that is a pipe would be replaced by the finished file, not written to.
    with pytest.raises(OutputError, match="out.mp4: is a pipe"):
        os.mkfifo(tmp_path / "out.mp4")
        check_output(tmp_path / "out.mp4", tmp_path / "in.mp4")


def test_an_image_whose_name_is_not_utf8_decodes_without_handing_opencv_the_name(
    tmp_path: Path,
) -> None:
    # cv2.imread crashed the process (SIGSEGV) on such a name: run where a crash is an answer.
    import subprocess
    import sys

    path = tmp_path / os.fsdecode(b"src\xff.png")
    path.write_bytes(_write(tmp_path / "src.png").read_bytes())  # (cv2.imwrite crashes too)
    code = "import sys; from facefusion_tasks.inputs import read_image; " \
           "print(read_image(__import__('pathlib').Path(sys.argv[1])).shape)"  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "(48, 64, 3)\n"), done.stderr


def test_a_file_far_larger_than_its_picture_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.png")
    with path.open("r+b") as handle:
        handle.truncate(65 << 20)  # sparse: a 64x48 PNG followed by 65 MiB of nothing
    with pytest.raises(InputError, match="a.png: file is too large for a 64x48 image") as caught:
        read_image(path)
    assert caught.value.reason is Reason.TOO_LARGE
