"""Several Redis reads answered from one instant, even while Redis refuses writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

#: One read: its command, its key, then the command's other arguments.
Read = tuple[Any, ...]

#: Runs the reads in order and returns their replies (a nil as nil). A script, not MULTI/EXEC:
#: Redis 7 refuses every command queued in a MULTI once it is past maxmemory, reads included,
#: so the exporter read nothing and showed a full Redis as down (redis_up 0, backlog 0),
#: while a script of reads still runs. Both are one atomic step.
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


def read_together(client: redis.Redis, reads: Sequence[Read]) -> list[Any]:
    """Each read's raw reply, all from one instant. Raw: ZRANGE's WITHSCORES gives a flat
    [member, score, ...] list, and a nil inside a list reply reads as None."""
    if not reads:
        return []
    arguments: list[Any] = []
    for command, _key, *rest in reads:
        arguments += [command, len(rest), *rest]
    script = client.register_script(_READS)
    replies: list[Any] = script(keys=[read[1] for read in reads], args=arguments)
    return replies
