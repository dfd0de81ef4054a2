"""The job store's Lua scripts: each is one atomic step in the life of a job or a chunk."""

from __future__ import annotations

# The scripts that record an outcome (a chunk done, a job metered, a delivery counted) answer
# the same when redis-py re-sends them after a timeout (the first run may have happened while
# the client stopped waiting): the caller's token, recorded in the same atomic step, tells "my
# earlier run did it" from "someone else did it". The sweep's claims (CLAIM_*) need no token: a
# claim whose answer was lost that way restarts its item's clock, and a later sweep claims it
# again one stall period on.

#: KEYS: chunk, done set, job, running set, live set. ARGV: index, frames, token, running
#: member, job id, now. The job that completes its set enters the live index: if the stitch
#: message is lost before the stitch starts, the sweep sends it again.
CHUNK_DONE = """
local job_state = redis.call('HGET', KEYS[3], 'state')
redis.call('ZREM', KEYS[4], ARGV[4])
if not job_state or job_state == 'CANCELLED' or job_state == 'SUCCEEDED' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'DONE', 'frames_done', ARGV[2], 'error', '')
redis.call('SADD', KEYS[2], ARGV[1])
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
local total = tonumber(redis.call('HGET', KEYS[3], 'chunks_total') or '0')
if total == 0 or redis.call('SCARD', KEYS[2]) ~= total then
  return 0
end
if redis.call('HSETNX', KEYS[3], 'stitch_token', ARGV[3]) == 1
   and redis.call('HGET', KEYS[3], 'state') == 'RUNNING' then
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5])
end
if redis.call('HGET', KEYS[3], 'stitch_token') == ARGV[3] then
  return 1
end
return 0
"""

#: KEYS: job. ARGV: token.
CLAIM_METERING = """
redis.call('HSETNX', KEYS[1], 'metered', ARGV[1])
if redis.call('HGET', KEYS[1], 'metered') == ARGV[1] then
  return 1
end
return 0
"""

#: The opening of a script that acts only on a job that ended FAILED or CANCELLED (KEYS[1]),
#: checked in the same step as its writes: a `retry` may have reopened it since.
_ONLY_ENDED = """
local job_state = redis.call('HGET', KEYS[1], 'state')
if job_state ~= 'FAILED' and job_state ~= 'CANCELLED' then
  return 0
end
"""

#: KEYS: job, then its chunks. The chunks of a job that ended FAILED (or CANCELLED while it
#: was being planned) that no worker had started end CANCELLED, as a cancel leaves them:
#: PENDING would say that something is still to come. Started ones stop by themselves (their
#: watch sees the job end), or the sweep finds them silent. Nothing changes when a `retry` has
#: reopened the job since.
WAITING_CHUNKS_ENDED = (
    _ONLY_ENDED
    + """
local ended = 0
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'state') == 'PENDING' then
    redis.call('HSET', KEYS[i], 'state', 'CANCELLED')
    ended = ended + 1
  end
end
return ended
"""
)

#: KEYS: job, chunk, pending set. ARGV: member, now. A chunk about to be sent again after a
#: passing error waits PENDING for that message, unless its job ended meanwhile (checked in the
#: same step: a job failed by another chunk between a read and this write left it PENDING for
#: good): then no retry comes, and the chunk ends CANCELLED, as its job's others did.
CHUNK_RETRYING = """
local job_state = redis.call('HGET', KEYS[1], 'state')
if not job_state or job_state == 'SUCCEEDED' or job_state == 'FAILED' or job_state == 'CANCELLED' then
  local state = redis.call('HGET', KEYS[2], 'state')
  if (job_state == 'FAILED' or job_state == 'CANCELLED') and state
     and state ~= 'DONE' and state ~= 'FAILED' then
    redis.call('HSET', KEYS[2], 'state', 'CANCELLED')
  end
  return 0
end
if redis.call('HGET', KEYS[2], 'state') == 'DONE' then
  -- Another delivery finished it meanwhile: the retry, when it comes, is skipped.
  return 0
end
redis.call('HSET', KEYS[2], 'state', 'PENDING')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

#: KEYS: chunk, running set, pending set. ARGV: token, now, worker, pid, member. Returns
#: {deliveries, finished, state, lost, stalled}; a re-sent call with the same token counts once
#: and answers as the first did. A chunk with no record (its job is gone) is not created. Its
#: message arrived: it waits no longer. Each delivery stays `open:<token>` until it ends in its
#: own code (CHUNK_ATTEMPT_ENDED, or its retry); one still open when the next arrives never
#: will (its process was SIGKILLed or OOM-killed, or the sweep gave it back): each is reported
#: once, `stalled` if the sweep gave that one back, else `lost`, and marked so.
CHUNK_DELIVERED = """
redis.call('ZREM', KEYS[3], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {1, 0, '', 0, 0}
end
if redis.call('HGET', KEYS[1], 'delivery_token') ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  local given_back = redis.call('HGET', KEYS[1], 'given_back')
  local lost, stalled = 0, 0
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if fields[i + 1] == 'open' and string.sub(fields[i], 1, 5) == 'open:' then
      redis.call('HSET', KEYS[1], fields[i], 'lost')
      if given_back and string.sub(fields[i], 6) == given_back then
        stalled = stalled + 1
      else
        lost = lost + 1
      end
    end
  end
  redis.call('HSET', KEYS[1], 'delivery_token', ARGV[1], 'started_at', ARGV[2],
             'heartbeat_at', ARGV[2], 'worker', ARGV[3], 'pid', ARGV[4],
             'open:' .. ARGV[1], 'open', 'lost_report', lost .. ' ' .. stalled)
  if redis.call('HGET', KEYS[1], 'state') ~= 'DONE' then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
  end
end
local report = redis.call('HGET', KEYS[1], 'lost_report') or '0 0'
local gap = string.find(report, ' ')
return {tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0'),
        tonumber(redis.call('HGET', KEYS[1], 'finished') or '0'),
        redis.call('HGET', KEYS[1], 'state') or '',
        tonumber(string.sub(report, 1, gap - 1)), tonumber(string.sub(report, gap + 1))}
"""

#: KEYS: chunk, running index. ARGV: running member, heartbeat time ('' for none), then field,
#: value pairs. A chunk's fields are written only while its record exists: a worker still
#: running after Redis lost the job (restarted without persistence, or the record expired)
#: would otherwise make a record with no TTL that nothing ever reads or removes. A DONE chunk
#: keeps its record: a duplicate delivery still running (or failing, or cancelled with its
#: job) must not turn a finished chunk's frames or state back.
CHUNK_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'state') == 'DONE' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return 1
"""


#: KEYS: chunk, running set. ARGV: token (the delivery's), member. An attempt that ended in the
#: task's own code (success, failure, retry) is not a lost delivery; once per token, whatever
#: the order of the calls (a retry ends its attempt before it is sent, and again in the task's
#: `finally`). The chunk leaves the running index only while this delivery is its latest: the
#: entry is the chunk's, not the delivery's, and an older attempt ending after a newer one
#: started (its retry taken at once, or given back by the sweep and woken) took the newer
#: one's entry with it, hiding it from the sweep if it hung.
CHUNK_ATTEMPT_ENDED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
if redis.call('HDEL', KEYS[1], 'open:' .. ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'finished', 1)
end
if redis.call('HGET', KEYS[1], 'delivery_token') == ARGV[1] then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return 1
"""

#: KEYS: job, then each message's line. ARGV: the caller's token, then the messages' exact
#: texts, one per line key. A job's chunk messages still waiting leave their lines only while
#: the job is FAILED or CANCELLED, checked in the same step: a `retry` reopens the job before
#: it sends anything, so what it sends is never withdrawn. Once per job end: the first caller's
#: token claims it (the canceller and the worker counting the end both try; `reopen` clears
#: it), and its batches go on under that token. LREM from the tail, where a job's older
#: messages sit (LPUSH adds at the head): from the head, a text another caller had already
#: taken cost a scan of the whole line, Redis blocked meanwhile. One a worker popped is not
#: found (that worker skips it).
WITHDRAW_MESSAGES = (
    _ONLY_ENDED
    + """
redis.call('HSETNX', KEYS[1], 'withdrawn', ARGV[1])
if redis.call('HGET', KEYS[1], 'withdrawn') ~= ARGV[1] then
  return 0
end
local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('LREM', KEYS[i], -1, ARGV[i])
end
return removed
"""
)

#: KEYS: job, chunk. A chunk that stopped because its job ended ends CANCELLED, only while the
#: job is FAILED or CANCELLED (and the chunk neither DONE nor FAILED): an attempt that stopped
#: for a job `retry` has reopened since must not cancel the chunk its successor runs (the sweep
#: passes over CANCELLED chunks, so a hang of that successor went unseen).
CHUNK_CANCELLED = (
    _ONLY_ENDED
    + """
local state = redis.call('HGET', KEYS[2], 'state')
if not state or state == 'DONE' or state == 'FAILED' then
  return 0
end
redis.call('HSET', KEYS[2], 'state', 'CANCELLED')
return 1
"""
)

#: KEYS: chunk, running set, job, pending set. ARGV: member, cutoff, error, now. Takes a stale
#: chunk (RUNNING, or still PENDING when it hung before its first frame, e.g. loading models)
#: out of the running set (one sweeper wins) and puts it back to PENDING, waiting for the
#: message the sweep sends; returns {deliveries, finished, started_at, heartbeat_at} or false
#: when there is nothing to do (a stale chunk of a job that ended FAILED or CANCELLED ends
#: CANCELLED).
CLAIM_STALLED_CHUNK = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then
  return false
end
redis.call('ZREM', KEYS[2], ARGV[1])
local job_state = redis.call('HGET', KEYS[3], 'state')
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'DONE' or state == 'FAILED' or state == 'CANCELLED' or not job_state
   or job_state == 'SUCCEEDED' then
  return false
end
if job_state == 'FAILED' or job_state == 'CANCELLED' then
  -- Its job is over and its worker silent (gone): it will never say it stopped.
  redis.call('HSET', KEYS[1], 'state', 'CANCELLED')
  return false
end
-- The delivery taken back: should it wake (a SIGSTOPped process continued), its end has no say.
redis.call('HSET', KEYS[1], 'state', 'PENDING', 'error', ARGV[3],
           'given_back', redis.call('HGET', KEYS[1], 'delivery_token') or '')
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return {redis.call('HGET', KEYS[1], 'deliveries') or '0',
        redis.call('HGET', KEYS[1], 'finished') or '0',
        redis.call('HGET', KEYS[1], 'started_at') or '0',
        score}
"""

#: KEYS: live set, job. ARGV: job id, cutoff, now. Claims a job stuck in QUEUED, PLANNING or
#: STITCHING, or RUNNING with every chunk done and no stitch started (one sweeper wins; the
#: clock restarts); returns {state, recoveries} or false.
CLAIM_STALLED_JOB = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then
  return false
end
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'QUEUED' and state ~= 'PLANNING' and state ~= 'STITCHING' and state ~= 'RUNNING'
   and state ~= 'COMMITTING' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return {state, redis.call('HINCRBY', KEYS[2], 'recoveries', 1)}
"""

#: KEYS: chunk, pending set, job. ARGV: member, cutoff, now. Claims a chunk whose message was
#: sent before `cutoff` and never arrived (one sweeper wins; its clock restarts) and returns how
#: often the sweep has sent it again, this time included; false when another sweeper got it, or
#: it has started or ended since (then it leaves the index). A job not RUNNING yet keeps it.
CLAIM_UNSENT_CHUNK = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then
  return false
end
local job_state = redis.call('HGET', KEYS[3], 'state')
if redis.call('HGET', KEYS[1], 'state') ~= 'PENDING' or not job_state
   or job_state == 'SUCCEEDED' or job_state == 'FAILED' or job_state == 'CANCELLED' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
if job_state ~= 'RUNNING' then
  return false
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'resent', 1)
"""
