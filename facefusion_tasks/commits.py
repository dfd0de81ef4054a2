"""Putting a verified output in place, and telling later whether a given commit put it there."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facefusion_tasks import objects
from facefusion_tasks.errors import OutputError
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.video.staging import StagedOutput

log = logging.getLogger(__name__)

#: The object metadata key carrying a stitch's commit token (S3 lower-cases it).
COMMIT_METADATA = "facefusion-commit"


def commit(
    staged: StagedOutput,
    output: Location,
    *,
    token: str | None = None,
    started: Callable[[str], None] | None = None,
) -> None:
    """Put a verified output in place: renamed onto a file, or uploaded to an object (completed
    at the key only now, aborted on failure, so the key holds what it held before), carrying
    the commit's `token` in its metadata; `started` is told the upload's id first (see
    objects.upload)."""
    try:
        if isinstance(output, ObjectRef):
            metadata = {COMMIT_METADATA: token} if token else None
            objects.upload(staged.temp, output, metadata=metadata, started=started)
            staged.discard()
        else:
            staged.commit()
    except BaseException:
        staged.discard()
        raise


def commit_mark(staged: StagedOutput, output: Location) -> dict[str, Any]:
    """How a later stitch tells this commit apart from anything else at the output: a file
    keeps its inode, size and mtime through the rename; an object carries a token in its
    metadata."""
    if isinstance(output, ObjectRef):
        return {"token": uuid.uuid4().hex}
    st = staged.temp.stat()
    return {"temp": staged.temp.name, "ino": st.st_ino, "size": st.st_size, "mtime": st.st_mtime_ns}


def marked(path: Path, mark: dict[str, Any]) -> bool:
    """Whether `path` is the file `mark` describes (see commit_mark)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_ino, st.st_size, st.st_mtime_ns) == (
        mark.get("ino"),
        mark.get("size"),
        mark.get("mtime"),
    )


def fence_stale(output: Location, mark: dict[str, Any], *, upload: str = "") -> bool:
    """Take away what a stitcher stopped in COMMITTING (its commit `mark`) would put in place
    on waking, for `retry`, which reopens such a job, and for the stitch that fails it as
    stalled: the verified temp it left beside a file `output`, or its multipart `upload` of an
    object (aborted). Woken between its last look at the job and its rename (or the upload's
    complete), the stitcher then finds nothing, and cannot put an older stitch over this job's
    next output or a later job's. Returns whether there was something to take away."""
    if isinstance(output, ObjectRef):
        if not upload:
            return False
        try:
            aborted = objects.abort_upload(output, upload)
        except OutputError as exc:
            # Refused (credentials without s3:AbortMultipartUpload) or the bucket is gone: a
            # fence this fleet cannot put up must not make the job unretryable.
            log.warning("%s: the upload a stopped stitch left could not be aborted: %s",
                        output, exc)  # fmt: skip
            return False
        if aborted:
            log.warning("%s: aborted the upload a stopped stitch may have left open", output)
        return aborted
    if not mark.get("temp"):
        return False
    temp = output.with_name(str(mark["temp"]))
    if not marked(temp, mark):
        return False
    log.warning("%s: removing the verified file a stopped stitch left", temp)
    StagedOutput(temp, output).discard()
    return True
