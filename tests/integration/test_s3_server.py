"""The test S3 server is a real one: SigV4 checked, ranged reads, presigned URLs, multipart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import botocore.exceptions
import pytest

from facefusion_tasks.video.samples import make_sample_video
from tests.s3server import S3Server, client, keys, uploads

pytestmark = pytest.mark.timeout(120)


def test_requests_are_signed_and_checked(s3_server: S3Server) -> None:
    s3 = client(s3_server.env())
    s3.create_bucket(Bucket="server-auth")
    s3.put_object(Bucket="server-auth", Key="a.txt", Body=b"0123456789")
    forged = client(s3_server.env() | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        forged.get_object(Bucket="server-auth", Key="a.txt")
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_ranged_get_returns_only_the_range(s3_server: S3Server) -> None:
    s3 = client(s3_server.env())
    s3.create_bucket(Bucket="server-range")
    s3.put_object(Bucket="server-range", Key="digits", Body=b"0123456789" * 100)
    got = s3.get_object(Bucket="server-range", Key="digits", Range="bytes=15-24")
    assert got["Body"].read() == b"5678901234"
    assert got["ContentRange"] == "bytes 15-24/1000"


def test_a_presigned_url_is_readable_by_ffmpeg(s3_server: S3Server, tmp_path: Path) -> None:
    s3 = client(s3_server.env())
    s3.create_bucket(Bucket="server-presign")
    clip = make_sample_video(tmp_path / "clip.mp4", seconds=2, width=160, height=120, faces=1)
    s3.upload_file(str(clip), "server-presign", "clip.mp4")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "server-presign", "Key": "clip.mp4"}, ExpiresIn=60
    )
    argv = ["ffprobe", "-v", "error", "-protocol_whitelist", "http,tcp", "-count_packets",
            "-select_streams", "v:0", "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0",
            url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == 50
    # Unsigned, the same address is refused.
    unsigned = subprocess.run([*argv[:-1], url.split("?")[0]], capture_output=True, timeout=60)
    assert unsigned.returncode != 0


def test_multipart_upload_appears_only_when_completed(s3_server: S3Server) -> None:
    s3 = client(s3_server.env())
    s3.create_bucket(Bucket="server-multipart")
    started = s3.create_multipart_upload(Bucket="server-multipart", Key="big.bin")
    upload_id = started["UploadId"]
    parts = []
    for number, body in ((1, b"a" * (5 * 1024 * 1024)), (2, b"b" * 1000)):
        part = s3.upload_part(
            Bucket="server-multipart", Key="big.bin", UploadId=upload_id, PartNumber=number,
            Body=body,
        )  # fmt: skip
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    assert keys(s3, "server-multipart") == []
    assert uploads(s3, "server-multipart") == ["big.bin"]
    s3.complete_multipart_upload(
        Bucket="server-multipart", Key="big.bin", UploadId=upload_id,
        MultipartUpload={"Parts": parts},
    )  # fmt: skip
    assert s3.head_object(Bucket="server-multipart", Key="big.bin")["ContentLength"] == (
        5 * 1024 * 1024 + 1000
    )
    assert uploads(s3, "server-multipart") == []
