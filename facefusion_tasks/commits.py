"""Putting a verified output in place, and telling later whether a given commit put it there."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from facefusion_tasks import objects
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.video.staging import StagedOutput

log = logging.getLogger(__name__)

#: The object metadata key carrying a stitch's commit token (S3 lower-cases it).
COMMIT_METADATA = "facefusion-commit"


def commit(staged: StagedOutput, output: Location, *, token: str | None = None) -> None:
    """Put a verified output in place: renamed onto a file, or uploaded to an object (completed
    at the key only now, aborted on failure, so the key holds what it held before), carrying
    the commit's `token` in its metadata."""
    try:
        if isinstance(output, ObjectRef):
            metadata = {COMMIT_METADATA: token} if token else None
            objects.upload(staged.temp, output, metadata=metadata)
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


def fence_stale(output: Location, mark: dict[str, Any]) -> bool:
    """Remove the verified temp a stitcher stopped in COMMITTING left beside `output` (its
    commit `mark`), for `retry`, which reopens such a job: were that stitcher to wake between
    its last look at the job and its rename, the rename now finds nothing, and cannot put an
    older stitch over this job's next output or a later job's. An object's upload has no such
    fence (see the README). Returns whether a temp was removed."""
    if not isinstance(output, Path) or not mark.get("temp"):
        return False
    temp = output.with_name(str(mark["temp"]))
    if not marked(temp, mark):
        return False
    log.warning("%s: removing the verified file a stopped stitch left", temp)
    StagedOutput(temp, output).discard()
    return True
