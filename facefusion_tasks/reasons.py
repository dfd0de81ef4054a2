"""Why a job or chunk ended: one bounded set that drives stored reasons, exit codes and labels."""

from __future__ import annotations

import enum


class Reason(str, enum.Enum):
    """Every failure reason the package records. `user_input` says whether the user's input or
    request caused it (the CLI exits 2, a retry cannot help); the value is what Redis stores and
    what the `reason` metric label carries."""

    user_input: bool

    def __new__(cls, value: str, user_input: bool) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.user_input = user_input
        return member

    # The user's input or request (exit 2).
    BAD_INPUT = ("bad_input", True)
    BAD_OUTPUT = ("bad_output", True)
    MISSING_FILE = ("missing_file", True)
    NOT_AN_IMAGE = ("not_an_image", True)
    NOT_VIDEO = ("not_video", True)
    NO_VIDEO = ("no_video", True)
    NO_FRAMES = ("no_frames", True)
    CORRUPT_VIDEO = ("corrupt_video", True)
    NO_SOURCE_FACE = ("no_source_face", True)
    NO_REFERENCE_FACE = ("no_reference_face", True)
    PATH = ("path", True)
    CONFIG = ("config", True)
    UNKNOWN_JOB = ("unknown_job", True)
    NOT_PLAIN_FILE = ("not_plain_file", True)
    INPUT_CHANGED = ("input_changed", True)
    TOO_LARGE = ("too_large", True)
    # The system (exit 1): another attempt, another worker or an operator may fix it.
    INTERNAL = ("internal", False)
    MEDIA = ("media", False)
    NO_SPACE = ("no_space", False)
    MODEL = ("model", False)
    DOWNLOAD = ("download", False)
    TRANSIENT = ("transient", False)
    GPU_OOM = ("gpu_oom", False)
    TIMEOUT = ("timeout", False)
    STALLED = ("stalled", False)
    WORKER_LOST = ("worker_lost", False)
    #: A worker's own settings do not fit the job: its storage roots or buckets leave out a
    #: path the producer's accepted (every host must mount and allow the same ones).
    WORKER_CONFIG = ("worker_config", False)
    CANCELLED = ("cancelled", False)
    #: Redis cannot be reached or refuses the credentials (the CLI exits 69, EX_UNAVAILABLE).
    BROKER_UNAVAILABLE = ("broker_unavailable", False)

    def __str__(self) -> str:
        return self.value


def parse(value: str | None) -> Reason:
    """The Reason stored as `value`; unknown or empty text reads as INTERNAL."""
    member = Reason._value2member_map_.get((value or "").strip().lower())
    return member if isinstance(member, Reason) else Reason.INTERNAL
