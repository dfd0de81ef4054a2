"""Job ids have one format, checked before any Redis access."""

from __future__ import annotations

import re
import uuid

from facefusion_tasks.errors import InputError
from facefusion_tasks.reasons import Reason

#: 16 lowercase hex digits (64 random bits): nothing else names a job, so no other key in
#: Redis (`<id>:chunk:0`, `<id>:done`, a queue) can be reached through status, wait, cancel or
#: retry.
JOB_ID = re.compile(r"[0-9a-f]{16}")
#: How much of a refused id the message repeats (it is user input: keep the line short).
_SHOWN = 40


def new_job_id() -> str:
    """A fresh id in the one format."""
    return uuid.uuid4().hex[: len("0123456789abcdef")]


def check_job_id(text: str) -> str:
    """`text` when it is a job id; else InputError "no such job" (exit 2) without touching
    Redis."""
    if not isinstance(text, str):  # an API caller's int, bytes or None: TypeError in the regex
        raise InputError(f"no such job: {text!r:.{_SHOWN}}", reason=Reason.UNKNOWN_JOB)
    if JOB_ID.fullmatch(text):
        return text
    shown = text[:_SHOWN] + ("…" if len(text) > _SHOWN else "")
    raise InputError(f"no such job: {shown!r}", reason=Reason.UNKNOWN_JOB)
