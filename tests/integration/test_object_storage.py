"""Object storage against a real S3 server: uploads that appear whole or not at all, signed
reads ffmpeg may open (and nothing else), errors without credentials in them."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from facefusion_tasks import liveness, objects
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, TransientError
from facefusion_tasks.jobids import new_job_id
from facefusion_tasks.reasons import Reason
from facefusion_tasks.store import JobStore
from facefusion_tasks.video.argv import plain_input_args
from facefusion_tasks.video.samples import make_sample_video
from tests.s3server import SECRET_KEY, client, keys, uploads

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def bucket(s3_env: dict[str, str], request: pytest.FixtureRequest) -> str:
    name = "obj-" + request.node.name.replace("_", "-")[:40].strip("-").lower()
    client(s3_env).create_bucket(Bucket=name)
    return name


def test_an_upload_of_many_parts_arrives_whole(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "PART_BYTES", 5 * 1024 * 1024)
    data = bytes(range(256)) * (11 * 1024 * 4)  # 11 MiB: three parts
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    ref = objects.ObjectRef(bucket, "out/big.bin")
    objects.upload(local, ref, metadata={"facefusion-commit": "f00d"})
    s3 = client(objects_env())
    assert s3.get_object(Bucket=bucket, Key="out/big.bin")["Body"].read() == data
    assert uploads(s3, bucket) == []
    # The commit token a stitch that resumes a commit recognises its upload by.
    assert objects.head(ref)["Metadata"] == {"facefusion-commit": "f00d"}


def objects_env() -> dict[str, str]:
    import os

    return {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                        "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}  # fmt: skip


def test_a_failed_upload_leaves_the_key_as_it_was(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = client(objects_env())
    s3.put_object(Bucket=bucket, Key="out.mp4", Body=b"the old output")
    monkeypatch.setattr(objects, "PART_BYTES", 5 * 1024 * 1024)
    local = tmp_path / "new.mp4"
    local.write_bytes(b"x" * (12 * 1024 * 1024))
    real = objects._put_part

    def shrinking(*args, **kwargs):  # type: ignore[no-untyped-def]
        if args[3] == 2:  # the second part: the file is cut short under the upload
            local.write_bytes(b"x" * 100)
        return real(*args, **kwargs)

    monkeypatch.setattr(objects, "_put_part", shrinking)
    with pytest.raises(OSError, match="changed while it was uploaded"):
        objects.upload(local, objects.ObjectRef(bucket, "out.mp4"))
    assert s3.get_object(Bucket=bucket, Key="out.mp4")["Body"].read() == b"the old output"
    assert uploads(s3, bucket) == []
    with pytest.raises(OSError):
        objects.upload(local.with_name("absent.mp4"), objects.ObjectRef(bucket, "new.mp4"))
    assert "new.mp4" not in keys(s3, bucket)


def test_ffmpeg_opens_a_signed_url_and_no_other(bucket: str, tmp_path: Path) -> None:
    clip = make_sample_video(tmp_path / "clip.mp4", seconds=1, width=160, height=120, faces=1)
    ref = objects.ObjectRef(bucket, "clips/clip.mp4")
    objects.upload(clip, ref)
    url = objects.presign(ref)
    argv = ["ffmpeg", "-v", "error", *plain_input_args(url), "-i", url, "-f", "null", "-"]
    assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    # The same address as plain text (a user's http:// URL) gets the file protocol only.
    text = str(url)
    refused = ["ffmpeg", "-v", "error", *plain_input_args(text), "-i", text, "-f", "null", "-"]
    done = subprocess.run(refused, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "not on whitelist" in done.stderr
    assert "X-Amz-Signature" not in repr(url)


def test_reads_are_ranged_and_missing_objects_are_the_users_error(bucket: str) -> None:
    s3 = client(objects_env())
    s3.put_object(Bucket=bucket, Key="digits", Body=b"0123456789")
    ref = objects.ObjectRef(bucket, "digits")
    assert objects.read_range(ref, 3, 4) == b"3456"
    assert objects.head(ref)["ContentLength"] == 10
    with pytest.raises(InputError) as missing:
        objects.head(objects.ObjectRef(bucket, "absent.mp4"))
    assert missing.value.reason is Reason.MISSING_FILE
    assert str(missing.value) == f"s3://{bucket}/absent.mp4: no such object"


def test_refused_credentials_name_no_secret(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + SECRET_KEY)
    objects._client.cache_clear()
    with pytest.raises(InputError) as refused:
        objects.head(objects.ObjectRef(bucket, "digits"))
    assert refused.value.reason is Reason.CONFIG
    assert SECRET_KEY not in str(refused.value) and "facefusion-test" not in str(refused.value)


def test_an_unreachable_endpoint_is_transient(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cluster import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    objects._client.cache_clear()
    with pytest.raises(TransientError):
        objects.head(objects.ObjectRef("any-bucket", "x.mp4"))


def test_delete_prefix_and_work_folders(bucket: str) -> None:
    s3 = client(objects_env())
    for key in (".facefusion-work/job-a/seg-00000.mp4", ".facefusion-work/job-a/seg-00001.mp4",
                ".facefusion-work/job-b/seg-00000.mp4", "keep.mp4"):  # fmt: skip
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert set(objects.work_folders(bucket)) == {"job-a", "job-b"}
    assert objects.delete_prefix(bucket, ".facefusion-work/job-a/") == 2
    assert sorted(keys(s3, bucket)) == [".facefusion-work/job-b/seg-00000.mp4", "keep.mp4"]
    # One object (a damaged segment the stitch removes), and one already gone: no error.
    objects.delete(objects.ObjectRef(bucket, ".facefusion-work/job-b/seg-00000.mp4"))
    objects.delete(objects.ObjectRef(bucket, ".facefusion-work/job-b/seg-00000.mp4"))
    assert keys(s3, bucket) == ["keep.mp4"]


def test_the_retention_sweep_removes_segments_of_jobs_over_or_gone(
    bucket: str, store: JobStore
) -> None:
    """After a crash nobody removed them: the sweep does, for jobs that are over or forgotten,
    and leaves a live job's (and a failed one's, for retry) alone."""
    from facefusion_tasks.store import FAILED, RUNNING, SUCCEEDED

    s3 = client(objects_env())
    jobs = {}
    for state in ("gone", SUCCEEDED, RUNNING, FAILED):
        job_id = new_job_id()
        if state != "gone":
            store.r.hset(f"facefusion:job:{job_id}", mapping={"state": state})
        s3.put_object(Bucket=bucket, Key=f".facefusion-work/{job_id}/seg-00000.mp4", Body=b"x")
        jobs[state] = job_id
    settings = Settings.from_env({}, s3_buckets=bucket)
    young = liveness.sweep_work_dirs(store, settings, now=time.time())
    assert young == []  # younger than stall_seconds: a job may be planning into it
    removed = liveness.sweep_work_dirs(
        store, settings, now=time.time() + 2 * settings.stall_seconds
    )
    assert sorted(removed) == sorted([jobs["gone"], jobs[SUCCEEDED]])
    left = {key.split("/")[1] for key in keys(s3, bucket, ".facefusion-work/")}
    assert left == {jobs[RUNNING], jobs[FAILED]}


def test_an_abort_says_whether_there_was_an_upload_to_abort(bucket: str, tmp_path: Path) -> None:
    """The fence `retry` puts up against a stopped stitcher (objects.abort_upload): an open
    upload is aborted, and its parts can no longer complete it; one completed or aborted
    already is no error (whether the storage says there was none differs: SeaweedFS, like AWS
    for a while after, answers success) and leaves a completed object as it is."""
    s3 = client(objects_env())
    ref = objects.ObjectRef(bucket, "fenced.mp4")
    opened = s3.create_multipart_upload(Bucket=bucket, Key="fenced.mp4")["UploadId"]
    part = s3.upload_part(
        Bucket=bucket, Key="fenced.mp4", UploadId=opened, PartNumber=1, Body=b"x" * 1024
    )
    assert objects.abort_upload(ref, opened) is True
    assert uploads(s3, bucket) == []
    with pytest.raises(Exception) as completing:  # the woken stitcher's complete
        s3.complete_multipart_upload(
            Bucket=bucket, Key="fenced.mp4", UploadId=opened,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )  # fmt: skip
    assert "NoSuchUpload" in str(completing.value)
    assert "fenced.mp4" not in keys(s3, bucket)
    objects.abort_upload(ref, opened)  # aborted already: no error
    done = tmp_path / "done.bin"
    done.write_bytes(b"y" * 2048)
    ids: list[str] = []
    objects.upload(done, ref, started=ids.append)
    assert len(ids) == 1
    objects.abort_upload(ref, ids[0])  # completed: no error, the object stays
    assert s3.get_object(Bucket=bucket, Key="fenced.mp4")["Body"].read() == done.read_bytes()
