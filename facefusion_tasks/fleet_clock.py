"""The fleet's one clock, Redis's own: hosts whose clocks disagree still agree on what is stale."""

from __future__ import annotations

import redis


def fleet_now(client: redis.Redis) -> float:
    """Redis's TIME, in seconds since the epoch.

    Every time one host writes and another compares (heartbeats, sends, job clocks, stall
    cutoffs, enqueue stamps) is read here, not from the local clock: judged on each host's own
    clock, a gpu host 10 minutes behind the sweeping host had every heartbeat look 600 s old,
    and each of its running chunks was taken back at the next sweep.
    """
    seconds, micros = client.time()
    return float(seconds) + micros / 1_000_000
