"""One bounded set of reasons drives stored reasons, exit codes and metric labels; one policy
decides retry or failure for every task."""

from __future__ import annotations

import ast
import errno
import subprocess
from pathlib import Path

import pytest
import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError
from redis.exceptions import MasterDownError, TryAgainError

from facefusion_tasks import errors, policy
from facefusion_tasks.metrics.definitions import REASONS, bounded_reason
from facefusion_tasks.reasons import Reason, parse

PACKAGE = Path(__file__).resolve().parents[2] / "facefusion_tasks"


def _error_classes() -> list[type[errors.FaceFusionError]]:
    pending: list[type[errors.FaceFusionError]] = [errors.FaceFusionError]
    seen = []
    while pending:
        cls = pending.pop()
        seen.append(cls)
        pending.extend(cls.__subclasses__())
    return seen


def _reason_arguments() -> list[tuple[str, int, ast.expr]]:
    """Every `reason=` keyword of a call anywhere in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "reason":
                        found.append((f"{path.relative_to(PACKAGE)}", node.lineno, keyword.value))
    return found


def test_every_raise_site_names_a_reason_member() -> None:
    """No bare strings: a reason is `Reason.X`, or a name bound to one (checked by mypy)."""
    arguments = _reason_arguments()
    assert len(arguments) > 20
    for where, line, value in arguments:
        if (
            isinstance(value, ast.Attribute)
            and isinstance(value.value, ast.Name)
            and value.value.id == "Reason"
        ):
            assert value.attr in Reason.__members__, (where, line, value.attr)
            continue
        # Labels of the metrics module pass bounded strings through bounded_reason/"none".
        assert not isinstance(value, ast.Constant) or where.startswith("metrics/"), (where, line)


def test_every_error_class_carries_a_reason_member() -> None:
    for cls in _error_classes():
        assert isinstance(cls.reason, Reason), cls


def test_metric_label_set_is_the_enum() -> None:
    assert {"none", "other"} | {r.value for r in Reason} == REASONS
    for reason in Reason:
        assert bounded_reason(reason) == reason.value  # never folded into "other"


def test_stored_text_parses_back_and_unknown_is_internal() -> None:
    for reason in Reason:
        assert parse(reason.value) is reason
    assert parse("not_a_video") is Reason.INTERNAL
    assert parse("") is Reason.INTERNAL


@pytest.mark.parametrize("reason", list(Reason))
def test_exit_code_follows_the_user_input_flag(reason: Reason) -> None:
    expected = 2 if reason.user_input else 1
    if reason is Reason.BROKER_UNAVAILABLE:
        expected = 69  # EX_UNAVAILABLE: scripts can wait for the broker and try again
    assert policy.exit_code(reason) == expected
    assert policy.exit_code(reason.value) == policy.exit_code(reason)


def test_the_users_input_reasons_are_the_ones_a_user_can_fix() -> None:
    user = {r for r in Reason if r.user_input}
    assert Reason.CORRUPT_VIDEO in user and Reason.NO_SOURCE_FACE in user
    assert Reason.UNKNOWN_JOB in user and Reason.CONFIG in user and Reason.NO_FRAMES in user
    assert not ({Reason.NO_SPACE, Reason.MODEL, Reason.TIMEOUT, Reason.INTERNAL} & user)


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    """`error`, raised from `cause` (as kombu re-raises redis-py's errors)."""
    try:
        raise error from cause
    except BaseException as raised:  # noqa: BLE001 - handed back
        return raised


@pytest.mark.parametrize(
    ("error", "reason", "retried"),
    [
        (errors.TransientError("flaky"), Reason.TRANSIENT, True),
        (errors.GpuOutOfMemory("oom at batch 1"), Reason.GPU_OOM, True),
        (redis.ConnectionError("gone"), Reason.TRANSIENT, True),
        # Refusing for now: full, unable to persist, a replica after a failover. A chunk whose
        # report met one failed its job as `internal`, with no retry.
        (
            redis.OutOfMemoryError(
                "Command # 1 (SREM facefusion:job:x:running 1) of pipeline caused error: "
                "command not allowed when used memory > 'maxmemory'."
            ),
            Reason.TRANSIENT,
            True,
        ),
        (
            redis.ResponseError(
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable "
                "to persist to disk."
            ),
            Reason.TRANSIENT,
            True,
        ),
        (
            redis.ReadOnlyError("You can't write against a read only replica."),
            Reason.TRANSIENT,
            True,
        ),
        # redis-py 8 has classes of their own for these, with the code taken off the text.
        (MasterDownError("Link with MASTER is down"), Reason.TRANSIENT, True),
        (TryAgainError("Multiple keys request during rehashing of slot"), Reason.TRANSIENT, True),
        # As kombu wraps them on a send, and as Celery's Reject carries a refused retry's.
        (
            _raised_from(OperationalError("maxmemory"), redis.OutOfMemoryError("oom")),
            Reason.TRANSIENT,
            True,
        ),  # fmt: skip
        (Reject(redis.OutOfMemoryError("oom")), Reason.TRANSIENT, True),
        (redis.AuthenticationError("invalid password"), Reason.INTERNAL, False),
        (redis.ResponseError("WRONGTYPE Operation against a key"), Reason.INTERNAL, False),
        # The words in a command's arguments, echoed by redis-py, or in a script's own error,
        # are not Redis's answer.
        (
            redis.ResponseError(
                "Command # 1 (HSET facefusion:job:x output /out/TRYAGAIN-MISCONF.mp4) of "
                "pipeline caused error: WRONGTYPE Operation against a key"
            ),
            Reason.INTERNAL,
            False,
        ),
        (redis.ResponseError("Error running script: job MISCONF failed"), Reason.INTERNAL, False),
        (_raised_from(OperationalError("bad"), ValueError("not redis")), Reason.INTERNAL, False),
        (errors.ModelError("det_10g.onnx missing"), Reason.MODEL, False),
        (errors.InputError("bad", reason=Reason.CORRUPT_VIDEO), Reason.CORRUPT_VIDEO, False),
        (errors.MediaError("full", reason=Reason.NO_SPACE), Reason.NO_SPACE, False),
        (OSError(errno.ENOSPC, "No space left on device"), Reason.NO_SPACE, False),
        (OSError(errno.ENAMETOOLONG, "File name too long", "a" * 300), Reason.PATH, False),
        (PermissionError(errno.EACCES, "Permission denied", "/data/x.mp4"), Reason.PATH, False),
        (OSError(errno.ELOOP, "Too many levels of symbolic links"), Reason.PATH, False),
        (OSError(errno.EIO, "Input/output error"), Reason.INTERNAL, False),
        (SoftTimeLimitExceeded(), Reason.TIMEOUT, False),
        (TimeLimitExceeded(10), Reason.TIMEOUT, False),
        (subprocess.TimeoutExpired("ffmpeg", 5), Reason.TIMEOUT, False),
        (ValueError("could not convert string to float: 'x'"), Reason.INTERNAL, False),
    ],
)
def test_one_policy_decides_retry_or_failure(
    error: BaseException, reason: Reason, retried: bool
) -> None:
    outcome = policy.decide(error, attempt=0, max_retries=2)
    assert (outcome.reason, outcome.retry) == (reason, retried)
    assert outcome.message
    # Retries are bounded: the last attempt fails with the same reason.
    assert policy.decide(error, attempt=2, max_retries=2).retry is False


def test_an_os_error_on_a_path_is_described_in_one_short_line() -> None:
    long = OSError(errno.ENAMETOOLONG, "File name too long", "/in/" + "a" * 300 + ".mp4")
    line = policy.describe(long)
    assert line.endswith(": File name too long") and len(line) < 110 and "…" in line
    odd = PermissionError(errno.EACCES, "Permission denied", "/in/new\nline.mp4")
    assert policy.describe(odd) == "/in/new\\nline.mp4: Permission denied"
    assert policy.describe(ValueError("two\nlines")) == "two lines"
    # Celery's time limits say nothing by themselves ("SoftTimeLimitExceeded()").
    for limit in (SoftTimeLimitExceeded(), TimeLimitExceeded(10)):
        assert policy.describe(limit) == "ran past its time limit (FACEFUSION_CHUNK_TIME_LIMIT)"


def test_a_message_shows_control_characters_and_stays_short() -> None:
    # A name may hold escape sequences that would rewrite the user's terminal when echoed.
    assert policy.one_line("a\x1b[31mred\rb\nc\x7f\x9bd\te.mp4: no such file") == (
        "a\\x1b[31mred\\rb\\nc\\x7f\\x9bd\\te.mp4: no such file"
    )
    assert policy.one_line("ünïcode ok") == "ünïcode ok"
    assert policy.one_line("a\u2028b") == "a\\u2028b"  # a line break to str.splitlines
    cut = policy.one_line("\x1b" * 2000)
    assert cut.count("\\x1b") == cut.count("\\") and " … " in cut  # no escape cut in two
    # A 100 KB argument was echoed whole.
    long = policy.one_line("unknown encoder " + "x" * 100_000 + " (use libx264)")
    assert len(long) <= policy.MESSAGE_LIMIT + 3  # " … " in the middle
    assert long.startswith("unknown encoder xxx") and long.endswith("(use libx264)")
