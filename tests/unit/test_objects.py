"""s3:// locations, the bucket allow-list, and the one network input ffmpeg may open."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest

from facefusion_tasks import objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason
from facefusion_tasks.video.argv import decode_argv, encode_argv, plain_input_args
from facefusion_tasks.video.signed import SignedUrl, redact

SIGNED = SignedUrl(
    "https://s3.example.com/media/in.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=0123456789abcdef"
)


def test_locations_are_objects_or_paths() -> None:
    assert objects.location("s3://media/in/clip.mp4") == objects.ObjectRef("media", "in/clip.mp4")
    assert objects.location("/data/clip.mp4") == Path("/data/clip.mp4")
    ref = objects.parse("s3://media/in/clip.mp4")
    assert (ref.name, ref.suffix, str(ref)) == ("clip.mp4", ".mp4", "s3://media/in/clip.mp4")
    for bad in ("s3://media", "s3://media/", "s3://media/folder/", "s3://Bad_Bucket/x.mp4"):
        with pytest.raises(InputError) as refused:
            objects.parse(bad)
        assert refused.value.reason is Reason.PATH


def test_only_allowed_buckets_pass() -> None:
    settings = Settings.from_env({}, s3_buckets="media, outputs")
    ref = objects.ObjectRef("outputs", "x.mp4")
    assert objects.confine(ref, settings, what="output") == ref
    with pytest.raises(InputError) as refused:
        objects.confine(objects.ObjectRef("other", "x.mp4"), settings, what="target video")
    assert refused.value.reason is Reason.PATH
    assert "outside the allowed buckets (media, outputs)" in str(refused.value)
    with pytest.raises(InputError) as unset:
        objects.confine(ref, Settings.from_env({}), what="output")
    assert unset.value.reason is Reason.CONFIG


def test_a_signed_url_alone_opens_the_network_and_only_its_scheme() -> None:
    assert plain_input_args(SIGNED)[:2] == ["-protocol_whitelist", "https,tls,tcp"]
    plain_http = SignedUrl("http://127.0.0.1:8333/media/in.mp4?X-Amz-Signature=ab")
    assert plain_input_args(plain_http)[:2] == ["-protocol_whitelist", "http,tcp"]
    # The same text from a user is a path: the file protocol only.
    assert plain_input_args(str(SIGNED))[:2] == ["-protocol_whitelist", "file"]
    assert plain_input_args(Path("/data/in.mp4"))[:2] == ["-protocol_whitelist", "file"]
    # A signed read keeps little in flight past where the reader stops.
    assert "-recv_buffer_size" in plain_input_args(SIGNED)
    assert "-recv_buffer_size" not in plain_input_args(Path("/data/in.mp4"))
    argv = decode_argv(SIGNED, seek_seconds=10.0)
    assert argv[argv.index("-protocol_whitelist") + 1] == "https,tls,tcp"
    assert argv[argv.index("-format_whitelist") + 1].startswith("mov,")
    user = decode_argv("http://evil.example.com/playlist.m3u8")
    assert user[user.index("-protocol_whitelist") + 1] == "file"
    encode = encode_argv(
        "/tmp/out.mp4", width=64, height=64, time_base=Fraction(1, 25), audio_source=SIGNED
    )
    assert encode[encode.index("-protocol_whitelist") + 1] == "https,tls,tcp"


def test_redact_removes_signatures_and_credential_scopes() -> None:
    line = f"[https @ 0x55] [error] HTTP error 403 Forbidden for '{SIGNED}': Invalid data"
    cleaned = redact(line)
    assert "X-Amz" not in cleaned and "AKIAEXAMPLE" not in cleaned
    assert "https://s3.example.com/media/in.mp4" in cleaned
    assert "AKIAEXAMPLE" not in repr(SIGNED)


def test_a_name_that_is_not_utf8_is_refused_as_typed_and_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bytes that are not UTF-8 (held as surrogate escapes) crashed OpenCV and ffmpeg-python;
    # the message shows the byte itself, so the file can be found.
    bad = os.fsdecode(b"in/src\xff.png")
    for value in (bad, Path(bad), os.fsdecode(b"s3://media/src\xff.png")):
        with pytest.raises(InputError, match=r"src\\xff\.png: name is not valid UTF-8; rename it"):
            objects.location(value)
    # A plain name in a folder whose own name is not UTF-8: the absolute path is what goes on.
    folder = tmp_path / os.fsdecode(b"dir\xff")
    folder.mkdir()
    monkeypatch.chdir(folder)
    with pytest.raises(InputError, match=r"dir\\xff/clip\.mp4: name is not valid UTF-8") as refused:
        objects.location("clip.mp4")
    assert refused.value.reason is Reason.PATH
    assert objects.location(tmp_path / "clip.mp4") == tmp_path / "clip.mp4"


def test_a_path_ending_in_a_slash_names_a_directory() -> None:
    # Checked as typed: a Path drops the slash, and `-o out/new.mp4/` wrote out/new.mp4.
    for text in ("out/new.mp4/", "out/new.mp4/.", "out/..", "/", ""):
        with pytest.raises(InputError, match="names a directory, not a file") as refused:
            objects.location(text)
        assert refused.value.reason is Reason.PATH
    assert objects.location("out/new.mp4") == Path("out/new.mp4")


def test_a_fence_the_storage_refuses_leaves_the_job_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials without s3:AbortMultipartUpload: `retry` fences a stopped stitcher's upload
    first, and a refusal there made every retry of the job fail for good (review)."""
    from facefusion_tasks.commits import fence_stale
    from facefusion_tasks.errors import OutputError

    def refused(ref: objects.ObjectRef, _upload: str) -> bool:
        raise OutputError(f"{ref}: the storage refused this request (AccessDenied)")

    monkeypatch.setattr(objects, "abort_upload", refused)
    out = objects.ObjectRef("media", "out.mp4")
    assert fence_stale(out, {"token": "t"}, upload="u1") is False
    assert fence_stale(out, {"token": "t"}) is False  # nothing recorded: nothing to abort
