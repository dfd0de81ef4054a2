"""What an error means, decided once for plan, chunk, stitch and the CLI: reason, retry, exit code."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from dataclasses import dataclass

from facefusion_tasks.errors import FaceFusionError, TransientError
from facefusion_tasks.reasons import Reason, parse

#: Exit codes: done, internal error, the user's input, and the broker unusable (sysexits'
#: EX_UNAVAILABLE: scripts can wait and try again).
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 69
#: `wait --timeout` ran out while the job goes on (coreutils' `timeout` says so with 124): a
#: script tells "still running" from "failed".
EXIT_TIMED_OUT = 124

#: Celery's time-limit exceptions come from billiard; matched by name so this module (and the
#: pipeline, which uses it through the runner) never imports Celery.
_TIME_LIMIT_NAMES = frozenset({"SoftTimeLimitExceeded", "TimeLimitExceeded"})


#: What the OS says of a path the user named, wherever it is first touched: too long, a
#: symlink loop, a folder in the way, or no permission to reach it. Another try cannot help.
_PATH_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.EPERM}
)


def _is_time_limit(error: BaseException) -> bool:
    """Celery's soft or hard time limit (matched by name: policy does not import Celery)."""
    return any(cls.__name__ in _TIME_LIMIT_NAMES for cls in type(error).__mro__)


#: Longest message a terminal gets: past it, the middle goes (a 100 KB argument was echoed
#: whole).
MESSAGE_LIMIT = 1000
#: Control characters (C0, DEL, C1) as a message shows them: a file name may hold escape
#: sequences that would rewrite the user's terminal, or a line break that would split the line.
_SHOWN = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029",
}  # fmt: skip


def one_line(text: str, *, limit: int = MESSAGE_LIMIT) -> str:
    """`text` as one printable line whatever a path in it holds: control characters shown
    escaped (a newline as \\n), and its middle cut out past `limit` characters."""
    if len(text) > limit:  # cut before escaping, so no escape is cut in two
        text = text[: limit * 2 // 3] + " … " + text[-(limit // 3) :]
    return text.translate(_SHOWN)


def describe(error: BaseException, *, limit: int = 80) -> str:
    """One line for an error: an OSError as "path: what the OS said" (a long path's middle
    cut out, a newline in it shown as \\n), anything else as its text."""
    if _is_time_limit(error):  # Celery's own text is only "SoftTimeLimitExceeded()"
        return "ran past its time limit (FACEFUSION_CHUNK_TIME_LIMIT)"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        name = one_line(str(error.filename))
        if len(name) > limit:
            name = name[: limit // 2] + "…" + name[-(limit // 2) :]
        return f"{name}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True)
class Outcome:
    """How one failed attempt ends: retried, or the job fails with `reason`."""

    reason: Reason
    retry: bool
    message: str


#: Redis's replies for "not now" that redis-py may raise as plain ResponseErrors, its code
#: first: it cannot persist and refuses writes (MISCONF), a replica has no master
#: (MASTERDOWN), a slot is moving (TRYAGAIN). From a pipeline, redis-py puts the command (and
#: its arguments: a path may hold these words) first, then "of pipeline caused error: ".
_REFUSING = re.compile(r"(?:^|of pipeline caused error: )(MISCONF|MASTERDOWN|TRYAGAIN)\b")
#: redis-py's classes for the same refusals (some only in recent versions, hence by name).
_REFUSING_CLASSES = ("OutOfMemoryError", "ReadOnlyError", "MasterDownError", "TryAgainError")


def refusal_code(error: BaseException) -> str | None:
    """MISCONF, MASTERDOWN or TRYAGAIN when Redis answered `error` with that code."""
    found = _REFUSING.search(str(error))
    return found.group(1) if found else None


def broker_refused(error: BaseException) -> bool:
    """Whether `error` is Redis gone or refusing for now, not a mistake in the command: its
    connection lost or timed out, or a reply that says try later (full under maxmemory, unable
    to persist, a read-only replica after a failover, no master), also as the cause kombu's
    OperationalError carries or the reason of Celery's Reject (a retry whose send was
    refused). The job goes on once Redis is back, so the work is retried and a waiting client
    waits. Checked only when redis-py is loaded: a local `swap` or `doctor` must not need it,
    and no Redis error exists without it."""
    exceptions = sys.modules.get("redis.exceptions")
    if exceptions is None:
        return False
    refusing = tuple(getattr(exceptions, name) for name in _REFUSING_CLASSES
                     if hasattr(exceptions, name))  # fmt: skip
    for _ in range(4):  # a wrapper of a wrapper at most
        if isinstance(error, exceptions.AuthenticationError):
            return False  # a refused password is no blip (a ConnectionError in redis-py)
        if isinstance(error, (exceptions.ConnectionError, exceptions.TimeoutError, *refusing)):
            return True
        if isinstance(error, exceptions.ResponseError) and refusal_code(error):
            return True
        inner = _wrapped(error)
        if inner is None:
            return False
        error = inner
    return False


def _wrapped(error: BaseException) -> BaseException | None:
    """The error a broker wrapper carries: kombu's OperationalError (raised from redis-py's
    own), or Celery's Reject(reason). Only these: an error merely raised while handling a
    Redis error is not one."""
    kombu = sys.modules.get("kombu.exceptions")
    if kombu is not None and isinstance(error, kombu.OperationalError):
        return error.__cause__ or error.__context__
    celery = sys.modules.get("celery.exceptions")
    if celery is not None and isinstance(error, celery.Reject):
        reason = getattr(error, "reason", None)
        return reason if isinstance(reason, BaseException) else None
    return None


def reason_of(error: BaseException) -> Reason:
    """The bounded reason for any exception, ours or not."""
    if isinstance(error, FaceFusionError):
        return parse(error.reason)
    if _is_time_limit(error):
        return Reason.TIMEOUT
    if isinstance(error, subprocess.TimeoutExpired):
        return Reason.TIMEOUT
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return Reason.NO_SPACE
    if isinstance(error, OSError) and error.errno in _PATH_ERRNOS:
        return Reason.PATH
    if broker_refused(error):
        return Reason.TRANSIENT
    return Reason.INTERNAL


def retryable(error: BaseException) -> bool:
    """Only errors that say another attempt may not hit them: TransientError (a GPU OOM at
    batch 1 included) and Redis gone or refusing for now (broker_refused). A missing model,
    bad input, a full disk or a time limit would fail the same way again."""
    return isinstance(error, TransientError) or broker_refused(error)


def decide(error: BaseException, *, attempt: int, max_retries: int) -> Outcome:
    """Retry `error` (attempt counts from 0) or give up with its reason: dramatiq's
    retry_when, written once for every task."""
    message = str(error) or type(error).__name__
    reason = reason_of(error)
    return Outcome(reason=reason, retry=retryable(error) and attempt < max_retries, message=message)


def exit_code(reason: Reason | str | None) -> int:
    """The CLI's exit code for a failure with `reason`: 2 when it is the user's input, 69 when
    the broker cannot be used, else 1."""
    parsed = parse(reason)
    if parsed is Reason.BROKER_UNAVAILABLE:
        return EXIT_UNAVAILABLE
    return EXIT_BAD_INPUT if parsed.user_input else EXIT_INTERNAL
