"""Output claims: one unfinished job per output, taken and let go inside the job store's transactions."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from facefusion_tasks.errors import OutputError

#: Let the claim go with the job's other records, unless a later job holds it by then.
#: KEYS: the claim. ARGV: job id, seconds.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class OutputBusy(OutputError):
    """Another job that has not ended writes to the same output: both would be reported
    SUCCEEDED, and the file would hold whichever committed last."""


def claim_key(prefix: str, output: str) -> str:
    """The key that names the job writing `output` (a resolved path or an s3:// object)."""
    return f"{prefix}:output:{output}"


def watch_free(pipe: Any, prefix: str, output: str, job_id: str, *, ended: Collection[str]) -> None:
    """WATCH `output`'s claim and its holder's state on `pipe` (before MULTI); OutputBusy when
    a job other than `job_id` holds it and is in no `ended` state (a holder whose record
    expired, or that ended, has let it go)."""
    key = claim_key(prefix, output)
    pipe.watch(key)
    holder = pipe.get(key)
    if not holder or holder == job_id:
        return
    holder_key = f"{prefix}:job:{holder}"
    pipe.watch(holder_key)
    state = pipe.hget(holder_key, "state")
    if state is not None and state not in ended:
        pipe.unwatch()
        raise OutputBusy(
            f"output {output} is already being written by job {holder} ({state}): wait for "
            "that job or cancel it first"
        )


def take(pipe: Any, prefix: str, output: str, job_id: str) -> None:
    """Queue, inside MULTI, `job_id`'s claim on `output` (kept until the job ends)."""
    pipe.set(claim_key(prefix, output), job_id)


def release(pipe: Any, prefix: str, output: str, job_id: str, ttl: int) -> None:
    """Queue, inside MULTI, the end of `job_id`'s claim: it expires with the job's records
    (a job retried within them takes it again unless another job has)."""
    if output:
        pipe.eval(_RELEASE, 1, claim_key(prefix, output), job_id, ttl)
