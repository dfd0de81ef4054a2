"""Several Redis reads answered from one instant, even while Redis refuses writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

#: One read: its command, its key, then the command's other arguments.
Read = tuple[Any, ...]

T = TypeVar("T")

#: Runs the reads in order and returns their replies (a nil as nil), as one atomic step.
#: KEYS[i]: read i's key. ARGV: per read, its command, its count of other arguments, them.
_READS = """
local replies, at = {}, 1
for i = 1, #KEYS do
  local count = tonumber(ARGV[at + 1])
  replies[i] = redis.call(ARGV[at], KEYS[i], unpack(ARGV, at + 2, at + 1 + count))
  at = at + 2 + count
end
return replies
"""


def unless_full(in_transaction: Callable[[], T], in_script: Callable[[], T]) -> T:
    """`in_transaction` (reads in a MULTI/EXEC), or `in_script` (the same reads as one Lua
    script) while Redis is past maxmemory: Redis 7 then refuses every command queued in a
    MULTI, reads included, and the exporter showed a full Redis as down, with an empty
    backlog. Not the script always: replies cross into Lua and back, and a 10,000-message line
    held Redis 8 times as long (160 ms)."""
    try:
        return in_transaction()
    except redis.exceptions.OutOfMemoryError:
        return in_script()


def read_together(client: redis.Redis, reads: Sequence[Read]) -> list[Any]:
    """Each read's reply, all from one instant (see unless_full). For the reads this project
    makes (lengths, list items and ranges, hash values, sorted-set ranges) both ways give the
    same shapes; a read WITHSCORES gives [member, float score] pairs whatever the protocol
    (RESP3 pairs them, RESP2 and Lua give a flat list: redis-py 8 speaks RESP3, 5 to 7 and a
    `?protocol=2` URL RESP2), and a nil inside a list reads None."""
    if not reads:
        return []

    def in_transaction() -> list[Any]:
        pipe = client.pipeline(transaction=True)
        for read in reads:
            pipe.execute_command(*read)
        return _scored(reads, list(pipe.execute()))

    def in_script() -> list[Any]:
        arguments: list[Any] = []
        for command, _key, *rest in reads:
            arguments += [command, len(rest), *rest]
        script = client.register_script(_READS)
        return _scored(reads, list(script(keys=[read[1] for read in reads], args=arguments)))

    return unless_full(in_transaction, in_script)


def _scored(reads: Sequence[Read], replies: list[Any]) -> list[Any]:
    """`replies` with each WITHSCORES one as [member, float score] pairs."""
    return [
        _paired(reply) if _with_scores(read) else reply
        for read, reply in zip(reads, replies, strict=True)
    ]


def _with_scores(read: Read) -> bool:
    return any(str(argument).upper() == "WITHSCORES" for argument in read[2:])


def _paired(reply: list[Any]) -> list[list[Any]]:
    """A WITHSCORES reply, flat [member, score, ...] or already pairs, as pairs."""
    if reply and isinstance(reply[0], (list, tuple)):
        return [[member, float(score)] for member, score in reply]
    return [[member, float(score)] for member, score in zip(reply[::2], reply[1::2], strict=True)]
