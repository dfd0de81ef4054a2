"""Redis keys and message layout shared by workers and the exporter.

Workers import this module, never queues.py or definitions.py directly: importing the metric
definitions creates this process's metric files, which only observe.py may decide to do (a full
metrics filesystem turns the first write into a SIGBUS)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from facefusion_tasks.metrics.snapshot import read_together, unless_full

# kombu's Redis transport (read in kombu/transport/redis.py): a queue is a LIST, LPUSH adds at
# the head and consumers pop from the tail (so the tail is the next to run); a message with
# priority p goes to the list named by the priority step at or below p, where step 0 is the
# plain queue name and any other step is `queue + "\x06\x16" + step`. Prefetched messages are
# moved to the hash `unacked` (tag -> JSON [message, exchange, routing_key]) until acked. So
# LLEN of the plain name alone misses both prioritised and prefetched work.
KOMBU_SEP = "\x06\x16"
#: kombu's default `priority_steps` transport option.
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
#: Worker heartbeat keys: one per worker, expiring unless refreshed.
HEARTBEAT_PREFIX = "facefusion:worker:"
#: Hash launcher (metrics_disabled_field) -> its worker processes that disabled their metrics
#: (storage full or gone).
METRICS_DISABLED_KEY = "facefusion:metrics:disabled"
#: Hash launcher (metrics_disabled_field) -> when it started (epoch seconds): that count's
#: `_created`, so an alert can tell a launcher born with processes disabled from a gap.
METRICS_LAUNCHED_KEY = "facefusion:metrics:launched"
#: The job store's running chunks: sorted set "job_id:index" -> time of its last frame progress.
RUNNING_KEY = "facefusion:running"
#: The job store's jobs in QUEUED, PLANNING or STITCHING: sorted set job_id -> since when.
LIVE_KEY = "facefusion:live"
#: The job store's chunks waiting for their message to reach a worker: sorted set
#: "job_id:index" -> when it was (last) sent.
PENDING_KEY = "facefusion:pending"
#: kombu's hash of the messages workers hold and have not acknowledged (delivery tag -> JSON
#: [message, exchange, routing key]), and its sorted set of delivery tag -> when taken.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
#: When each message in `unacked` was first seen held, on Redis's clock (delivery tag ->
#: seconds): kombu's own index stamps it with the holding worker's clock.
HELD_SEEN_KEY = "facefusion:held_seen"
#: The most messages messages_in_line reads; a longer line is left unread.
LINE_LIMIT = 10_000

#: The arguments of every task message in a line, as strings (("job", "3") for a chunk, ("job",)
#: for a plan or stitch); None when the line was too long to read.
InLine = frozenset[tuple[str, ...]] | None


def metrics_disabled_field(directory: str | os.PathLike[str]) -> str:
    """One launcher's field of METRICS_DISABLED_KEY: its host and the metrics directory it
    claims (no two live launchers share one), as its worker processes and its exporter both
    know them. Per host, every launcher's exporter served the whole host's count, and the
    alert named a launcher whose processes all wrote their metrics."""
    return f"{socket.gethostname()}:{os.path.abspath(directory)}"


def priority_keys(queue: str, steps: Sequence[int] = DEFAULT_PRIORITY_STEPS) -> list[str]:
    """The Redis lists holding `queue`'s waiting messages, one per priority step."""
    return [f"{queue}{KOMBU_SEP}{step}" if step else queue for step in steps]


def heartbeat(client: redis.Redis, name: str, info: Mapping[str, Any], ttl: int = 30) -> None:
    """Say `name` is alive for `ttl` seconds (workers call this every ttl/3 or so)."""
    payload = {**info, "ts": time.time()}
    client.set(f"{HEARTBEAT_PREFIX}{name}", json.dumps(payload, default=str), ex=max(1, ttl))


def forget_heartbeat(client: redis.Redis, name: str) -> None:
    """Say `name` is gone now (a process that exits cleanly), not when its heartbeat expires:
    under recycling (max tasks per child) the live-worker count read 15 for 2 processes."""
    client.delete(f"{HEARTBEAT_PREFIX}{name}")


#: The held messages first seen since ARGV[1] (Redis time), as their `unacked` entries.
#: Records when each held message was first seen held, on Redis's clock, as "seen|stamp" with
#: kombu's stamp of that take: a message given back and taken again keeps its delivery tag but
#: gets a new stamp, and so a new first sighting (the stamp is compared for equality only,
#: never as a time). Forgets acknowledged ones. Its writes are pcalls: on a read-only replica,
#: or a Redis refusing writes, the line is still read (sightings then wait for a writable one).
#: Returns {held entries, then each of the lines' messages}: the lines are read here only
#: while Redis is past maxmemory (snapshot.unless_full); else beside it, in a MULTI.
#: KEYS: unacked, unacked_index, held_seen, then the lines to read (queue lists).
HELD_SINCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HGETALL', KEYS[1])
local present, recent = {}, {}
for i = 1, #held, 2 do
  local tag = held[i]
  present[tag] = true
  local stamp = tostring(redis.call('ZSCORE', KEYS[2], tag))
  local record = redis.call('HGET', KEYS[3], tag)
  local seen
  if record then
    local bar = string.find(record, '|', 1, true)
    if bar and string.sub(record, bar + 1) == stamp then
      seen = tonumber(string.sub(record, 1, bar - 1))
    end
  end
  if not seen then
    seen = now
    redis.pcall('HSET', KEYS[3], tag, string.format('%.6f', now) .. '|' .. stamp)
  end
  if seen >= tonumber(ARGV[1]) then
    table.insert(recent, held[i + 1])
  end
end
for _, tag in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not present[tag] then
    redis.pcall('HDEL', KEYS[3], tag)
  end
end
local replies = {recent}
for i = 4, #KEYS do
  table.insert(replies, redis.call('LRANGE', KEYS[i], 0, -1))
end
return replies
"""


#: A held_since no sighting reaches (Lua's tonumber may not read "inf").
_NEVER = 1e18


def note_held(client: redis.Redis, *, key_prefix: str = "") -> None:
    """Record the first sighting of every message held now (the sweep does, every period):
    the line readers only look when something has waited `stall_seconds`, and a first
    sighting that late would leave a dead holder's message counted as held for twice that."""
    _held_since(client, _NEVER, key_prefix, lines=[])


def _held_since(
    client: redis.Redis,
    held_since: float,
    key_prefix: str,
    *,
    lines: Sequence[str],
    runner: Any = None,
) -> list[Any]:
    """HELD_SINCE, run on `runner` (the client, or a transaction pipeline of it): [held
    entries first seen since `held_since`, then each of `lines`' messages]."""
    script = client.register_script(HELD_SINCE)
    keys = [key_prefix + UNACKED_KEY, key_prefix + UNACKED_INDEX_KEY, key_prefix + HELD_SEEN_KEY]
    replies: list[Any] = script(keys=[*keys, *lines], args=[held_since], client=runner or client)
    return replies


def messages_in_line(
    client: redis.Redis, queue: str, *, held_since: float, key_prefix: str = ""
) -> InLine:
    """The arguments of every task message waiting in `queue`, or held by a worker (taken and
    not acknowledged: prefetched for a free pool process) and first seen so since `held_since`:
    work whose message is not among them has none that will ever start it. A message held
    longer is left out: a live worker starts what it takes at once, so its holder is dead or
    stuck, and kombu would give it back only after its visibility timeout (an hour). How long
    is judged on Redis's clock, from the first read that saw it held (HELD_SEEN_KEY): kombu's
    own stamp is the holder's clock, and a worker 10 minutes behind had every chunk it took
    but had not yet started sent once more. Read in one atomic step; None when more than
    LINE_LIMIT messages would have to be read."""
    keys = [key_prefix + key for key in priority_keys(queue)]
    sizes = read_together(
        client, [*(("LLEN", k) for k in keys), ("HLEN", key_prefix + UNACKED_KEY)]
    )
    if sum(int(n or 0) for n in sizes) > LINE_LIMIT:
        return None

    def in_transaction() -> list[Any]:
        pipe = client.pipeline(transaction=True)
        _held_since(client, held_since, key_prefix, lines=[], runner=pipe)
        for key in keys:
            pipe.lrange(key, 0, -1)
        [recent], *waiting = pipe.execute()
        return [recent, *waiting]

    recent, *waiting = unless_full(
        in_transaction, lambda: _held_since(client, held_since, key_prefix, lines=keys)
    )
    found: set[tuple[str, ...]] = set()
    for raw in itertools.chain(*waiting):
        found.add(_task_args(_json(raw)))
    for entry in recent:
        found.add(_task_args(_held(entry)))
    found.discard(())
    return frozenset(found)


def waits_in(line: InLine, *args: object) -> bool:
    """Whether the work with these task arguments may have its message in `line`: found in
    it, or the line was too long to read (it may hold them all). The one rule the sweep,
    `retry` and the exporter's stalled counts apply."""
    return line is None or tuple(str(arg) for arg in args) in line


def held_messages(
    client: redis.Redis, before: float, *, limit: int = 1000
) -> list[tuple[str, str, tuple[str, ...]]]:
    """(delivery tag, task name, arguments) of the messages workers took before `before` and
    still hold unacknowledged."""
    taken: list[Any] = client.zrangebyscore(UNACKED_INDEX_KEY, "-inf", before, 0, limit)
    tags = [as_text(tag) for tag in taken]
    if not tags:
        return []
    held = []
    for tag, raw in zip(tags, client.hmget(UNACKED_KEY, tags), strict=True):
        message = _held(raw)
        held.append((tag, _task_name(message), _task_args(message)))
    return held


def waiting_messages(
    client: redis.Redis, queue: str, task: str, first_arg: str
) -> list[tuple[str, str]]:
    """(line, exact message text) of every `task` message whose first argument is
    `first_arg` (a job's chunks) waiting in `queue`, every priority line; [] when the lines
    hold more than LINE_LIMIT messages in all (reading them would cost more than the skips a
    withdrawal saves). Messages workers already hold are not in any line."""
    keys = priority_keys(queue)
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.llen(key)
    if sum(int(n or 0) for n in pipe.execute()) > LINE_LIMIT:
        return []
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.lrange(key, 0, -1)
    found = []
    for key, line in zip(keys, pipe.execute(), strict=True):
        for raw in line:
            message = _json(raw)
            if _task_name(message) == task and _task_args(message)[:1] == (first_arg,):
                found.append((key, as_text(raw)))
    return found


def acknowledge(client: redis.Redis, tags: Sequence[str]) -> None:
    """Remove held messages as kombu's own acknowledgement does (a later ack of one is a no-op)."""
    if tags:
        with client.pipeline(transaction=True) as pipe:
            pipe.zrem(UNACKED_INDEX_KEY, *tags)
            pipe.hdel(UNACKED_KEY, *tags)
            pipe.execute()


def as_text(value: bytes | str) -> str:
    """A Redis reply as text, from clients with or without decode_responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(raw: bytes | str | None) -> Any:
    try:
        return json.loads(raw)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


def _held(raw: bytes | str | None) -> Any:
    """The message in one `unacked` entry (JSON [message, exchange, routing key])."""
    entry = _json(raw)
    return entry[0] if isinstance(entry, list) and entry else None


def _task_name(message: Any) -> str:
    """A kombu message's task name (Celery's protocol 2 header); "" when it has none."""
    try:
        return str(message["headers"]["task"])
    except (KeyError, TypeError):
        return ""


def _task_args(message: Any) -> tuple[str, ...]:
    """A kombu message's task arguments as strings; () when it is not a readable task."""
    try:
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        payload = json.loads(body)
        # Celery's message protocol 2: [args, kwargs, embed]; protocol 1: {"args": [...]}.
        args: Any = payload.get("args") if isinstance(payload, dict) else payload[0]
        return tuple(str(arg) for arg in args)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return ()
