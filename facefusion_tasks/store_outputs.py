"""Output claims: one unfinished job per output, and none writing what another reads, checked inside the job store's transactions."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NoReturn

from facefusion_tasks.errors import InputError, OutputError

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


def _unfinished(pipe: Any, prefix: str, job_id: str, ended: Collection[str]) -> str | None:
    """WATCH `job_id`'s record and return its state while it has not ended (None after)."""
    key = f"{prefix}:job:{job_id}"
    pipe.watch(key)
    state = pipe.hget(key, "state")
    return state if state is not None and state not in ended else None


def watch_free(pipe: Any, prefix: str, output: str, job_id: str, *, ended: Collection[str]) -> None:
    """WATCH `output`'s claim and its holder's state on `pipe` (before MULTI); OutputBusy when
    a job other than `job_id` holds it and is in no `ended` state (a holder whose record
    expired, or that ended, has let it go)."""
    found = _writer(pipe, prefix, output, job_id, ended)
    if found is not None:
        _refuse(pipe, OutputBusy(
            f"output {output} is already being written by job {found[0]} ({found[1]}): wait "
            "for that job or cancel it first"
        ))  # fmt: skip


def _writer(
    pipe: Any, prefix: str, path: str, job_id: str, ended: Collection[str]
) -> tuple[str, str] | None:
    """WATCH `path`'s claim: (the job, its state) when a job other than `job_id` holds it and
    has not ended."""
    key = claim_key(prefix, path)
    pipe.watch(key)
    holder = pipe.get(key)
    state = _unfinished(pipe, prefix, holder, ended) if holder and holder != job_id else None
    return None if state is None else (holder, state)


def _refuse(pipe: Any, error: Exception) -> NoReturn:
    """Stop watching (nothing will be written) and raise `error`."""
    pipe.unwatch()
    raise error


def _readers_key(prefix: str, path: str) -> str:
    return f"{prefix}:readers:{path}"


def watch_crossings(
    pipe: Any,
    prefix: str,
    output: str,
    inputs: Collection[str],
    job_id: str,
    *,
    ended: Collection[str],
) -> None:
    """WATCH what makes a new job's output another unfinished job's input, or one of its
    inputs another unfinished job's output, and refuse either (before MULTI): the job reading
    would find its file replaced under it (its fingerprints would fail it, late)."""
    if output:
        readers_key = _readers_key(prefix, output)
        pipe.watch(readers_key)
        for reader in sorted(pipe.smembers(readers_key)):
            state = _unfinished(pipe, prefix, reader, ended) if reader != job_id else None
            if state is not None:
                _refuse(pipe, OutputBusy(
                    f"output {output} is an input of job {reader} ({state}): wait for that "
                    "job or cancel it first"
                ))  # fmt: skip
    for path in inputs:
        found = _writer(pipe, prefix, path, job_id, ended)
        if found is not None:
            _refuse(pipe, InputError(
                f"{path} is the output of job {found[0]} ({found[1]}), still being written: "
                "wait for that job or cancel it first"
            ))  # fmt: skip


def read(pipe: Any, prefix: str, inputs: Collection[str], job_id: str, ttl: int) -> None:
    """Queue, inside MULTI, `job_id` among the readers of each input. The sets last `ttl`
    from the latest reader; members that have ended are ignored when checked, and a reader
    that outlives its set is still protected by its fingerprints."""
    for path in inputs:
        pipe.sadd(_readers_key(prefix, path), job_id)
        pipe.expire(_readers_key(prefix, path), ttl)


def take(pipe: Any, prefix: str, output: str, job_id: str) -> None:
    """Queue, inside MULTI, `job_id`'s claim on `output` (kept until the job ends)."""
    pipe.set(claim_key(prefix, output), job_id)


def release(pipe: Any, prefix: str, output: str, job_id: str, ttl: int) -> None:
    """Queue, inside MULTI, the end of `job_id`'s claim: it expires with the job's records
    (a job retried within them takes it again unless another job has)."""
    if output:
        pipe.eval(_RELEASE, 1, claim_key(prefix, output), job_id, ttl)
