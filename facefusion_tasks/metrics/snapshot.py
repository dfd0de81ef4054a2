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
    """Each read's reply, all from one instant (see unless_full), as redis-py gives it: a
    read WITHSCORES gives [member, score] pairs with float scores (Lua hands back a flat
    list, paired here, so both ways read alike), and a nil inside a list reads None."""
    if not reads:
        return []

    def in_transaction() -> list[Any]:
        pipe = client.pipeline(transaction=True)
        for read in reads:
            pipe.execute_command(*read)
        return list(pipe.execute())

    def in_script() -> list[Any]:
        arguments: list[Any] = []
        for command, _key, *rest in reads:
            arguments += [command, len(rest), *rest]
        script = client.register_script(_READS)
        replies = list(script(keys=[read[1] for read in reads], args=arguments))
        return [
            _paired(reply) if _with_scores(read) else reply
            for read, reply in zip(reads, replies, strict=True)
        ]

    return unless_full(in_transaction, in_script)


def _with_scores(read: Read) -> bool:
    return any(str(argument).upper() == "WITHSCORES" for argument in read[2:])


def _paired(flat: list[Any]) -> list[list[Any]]:
    """A flat [member, score, ...] reply as redis-py's [member, float score] pairs."""
    return [[member, float(score)] for member, score in zip(flat[::2], flat[1::2], strict=True)]
