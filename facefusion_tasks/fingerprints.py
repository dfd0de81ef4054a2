"""What identifies an input's content when its job is planned, so every later reader can tell that it changed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

from facefusion_tasks.errors import InputError
from facefusion_tasks.objects import Location, ObjectRef
from facefusion_tasks.reasons import Reason


def fingerprint(where: Location) -> str:
    """A file's device, inode, size and modification time (an atomic rename over it gives a
    new inode; a write in place, a new size or time); an object's ETag and size."""
    if isinstance(where, ObjectRef):
        from facefusion_tasks import objects

        meta = objects.head(where)
        return f"etag:{meta.get('ETag', '')}:{meta.get('ContentLength', '')}"
    try:
        st = os.stat(where)
    except OSError as exc:
        raise InputError(f"{where}: {exc.strerror}", reason=Reason.MISSING_FILE) from None
    return f"file:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def fingerprints(inputs: Iterable[Location]) -> str:
    """The job record's field: every input's fingerprint, by its name."""
    return json.dumps({str(where): fingerprint(where) for where in inputs}, sort_keys=True)


def check_unchanged(recorded: str, inputs: Iterable[Location]) -> None:
    """InputError (input_changed) for the first of `inputs` whose content is no longer what
    the plan read: chunks cut on one file and decoded from another would be stitched into a
    video that is neither. A job planned before fingerprints were recorded is not checked."""
    if not recorded:
        return
    known: Mapping[str, str] = json.loads(recorded)
    for where in inputs:
        expected = known.get(str(where))
        if expected is not None and fingerprint(where) != expected:
            raise InputError(
                f"{where} changed after the job was planned (replaced or rewritten); "
                "submit the job again",
                reason=Reason.INPUT_CHANGED,
            )
