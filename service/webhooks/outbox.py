"""Durable webhook deliveries in Redis: the outbox that the dispatcher drains.

Layout (next to the jobs' `job:{id}`, `result:{id}:{i}`):
- `webhook:delivery:{id}` — hash: id (the `webhook-id`, `msg_{job}_{event}_{n}`, the same on every retry),
  job, event (`start` | `progress` | `completed`), url, attempts (claims made so far), created_at,
  last_error. Expires `ttl` seconds after it was written (the jobs' result TTL: after that the job view
  a delivery carries is gone too).
- `webhook:due` — ZSET delivery id → Unix time (Redis TIME, one clock for every replica) it is due at.
  A claim moves the score forward by the lease; success and death remove it.
- `webhook:progress:{job}` — id of the job's progress delivery that has not been sent yet. Progress
  coalesces: while one waits, a new progress event adds nothing, as the body is rendered when it is
  sent and so carries the latest progress anyway. A claim clears the pointer (later progress makes a new
  delivery); a failed progress delivery that a newer one replaced meanwhile is dropped.
- `webhook:dead` — stream (capped at DEAD_MAXLEN) of deliveries given up on: id, job, event, url,
  attempts, error, dead_at.
- `webhook:seq` — counter that makes delivery ids unique.

Enqueueing in a job transition: prepend `WEBHOOK_LUA_HELPERS` to the transition's script and call
    webhook_notify(job_key, job_id, event, ttl)
after the change (same script, so the event is recorded exactly when the transition commits). It reads
the job hash's `webhook` (URL) and `webhook_events` (comma-separated, absent = `completed`) fields and
enqueues only when the job asked for that event; it returns the delivery id or false. Scripts build these
key names themselves, as the jobs' scripts do for `job:{id}:events`.

Claims are leases: `claim_due` moves each due entry's score `lease` seconds ahead and counts an attempt,
in one script, so two dispatchers never hold one delivery at once; a dispatcher that dies holding a claim
lets it come due again when the lease ends (at least once). `succeeded` / `failed` name the attempt they
settle, so a dispatcher whose lease ran out cannot settle the attempt that took over.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import redis.asyncio

Event = Literal["start", "progress", "completed"]
EVENTS: tuple[Event, ...] = ("start", "progress", "completed")
DEFAULT_EVENTS: tuple[Event, ...] = ("completed",)
FailOutcome = Literal["retry", "dead", "superseded", "stale"]

DUE_KEY = "webhook:due"
DEAD_KEY = "webhook:dead"
DEAD_MAXLEN = 10_000


def delivery_key(delivery_id: str) -> str:
    return f"webhook:delivery:{delivery_id}"


def progress_key(job_id: str) -> str:
    return f"webhook:progress:{job_id}"


# Shared Lua: prepend to any script that enqueues (the jobs' transitions, ENQUEUE_LUA below).
WEBHOOK_LUA_HELPERS = """
local function webhook_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- a delivery of `event` for job `job_id` to `url`, due now; a waiting progress delivery absorbs a new one
local function webhook_enqueue(job_id, event, url, ttl)
  local pointer = 'webhook:progress:' .. job_id
  if event == 'progress' then
    local waiting = redis.call('GET', pointer)
    if waiting and redis.call('EXISTS', 'webhook:delivery:' .. waiting) == 1 then return waiting end
  end
  local id = 'msg_' .. job_id .. '_' .. event .. '_' .. redis.call('INCR', 'webhook:seq')
  local key = 'webhook:delivery:' .. id
  local now = webhook_now()
  redis.call('HSET', key, 'id', id, 'job', job_id, 'event', event, 'url', url, 'attempts', 0,
    'created_at', string.format('%.6f', now))
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', 'webhook:due', string.format('%.6f', now), id)
  if event == 'progress' then redis.call('SET', pointer, id, 'EX', ttl) end
  return id
end

-- enqueue `event` if the job hash at `job_key` has a webhook that asked for it
local function webhook_notify(job_key, job_id, event, ttl)
  local hook = redis.call('HMGET', job_key, 'webhook', 'webhook_events')
  if not hook[1] or hook[1] == '' then return false end
  local wanted = ',' .. (hook[2] or 'completed') .. ','
  if not string.find(wanted, ',' .. event .. ',', 1, true) then return false end
  return webhook_enqueue(job_id, event, hook[1], ttl)
end
"""

# ARGV: job id, event, url, ttl. Returns the delivery id.
ENQUEUE_LUA = WEBHOOK_LUA_HELPERS + """
return webhook_enqueue(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
"""

# KEYS: due, dead. ARGV: count, lease seconds, max attempts.
# Returns {id, job, event, url, attempts} per claimed delivery. Drops ids whose hash expired; a delivery
# already claimed max-attempts times (its dispatchers died) goes dead instead.
CLAIM_LUA = WEBHOOK_LUA_HELPERS + """
local now = webhook_now()
local claimed = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now),
  'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  local key = 'webhook:delivery:' .. id
  local f = redis.call('HMGET', key, 'job', 'event', 'url', 'attempts', 'last_error')
  if not f[1] then
    redis.call('ZREM', KEYS[1], id)
  elseif tonumber(f[4]) >= tonumber(ARGV[3]) then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', DEAD_MAXLEN, '*', 'id', id, 'job', f[1], 'event', f[2],
      'url', f[3], 'attempts', f[4], 'error', f[5] or 'the dispatcher holding the last attempt stopped',
      'dead_at', string.format('%.6f', now))
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
  else
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), id)
    local pointer = 'webhook:progress:' .. f[1]
    if f[2] == 'progress' and redis.call('GET', pointer) == id then redis.call('DEL', pointer) end
    claimed[#claimed + 1] = {id, f[1], f[2], f[3], attempts}
  end
end
return claimed
""".replace("DEAD_MAXLEN", str(DEAD_MAXLEN))

# KEYS: delivery, due. ARGV: id, attempt. Returns 1 when it removed the delivery, 0 if it was gone.
SUCCEEDED_LUA = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: delivery, due, dead.
# ARGV: id, attempt, error, max attempts, delay seconds, ttl, final ('1' = no retry).
# Returns 'retry' | 'dead' | 'superseded' | 'stale' (the attempt is not the current one, or it is gone).
FAILED_LUA = WEBHOOK_LUA_HELPERS + """
local f = redis.call('HMGET', KEYS[1], 'job', 'event', 'url', 'attempts')
if not f[1] or f[4] ~= ARGV[2] then return 'stale' end
local pointer = 'webhook:progress:' .. f[1]
if f[2] == 'progress' then
  local waiting = redis.call('GET', pointer)
  if waiting and waiting ~= ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 'superseded'
  end
end
local now = webhook_now()
if ARGV[7] == '1' or tonumber(f[4]) >= tonumber(ARGV[4]) then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', DEAD_MAXLEN, '*', 'id', ARGV[1], 'job', f[1], 'event', f[2],
    'url', f[3], 'attempts', f[4], 'error', ARGV[3], 'dead_at', string.format('%.6f', now))
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'dead'
end
redis.call('HSET', KEYS[1], 'last_error', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('ZADD', KEYS[2], string.format('%.6f', now + tonumber(ARGV[5])), ARGV[1])
if f[2] == 'progress' then redis.call('SET', pointer, ARGV[1], 'EX', tonumber(ARGV[6])) end
return 'retry'
""".replace("DEAD_MAXLEN", str(DEAD_MAXLEN))


@dataclass(frozen=True)
class Delivery:
    """One claimed attempt: `attempt` is 1 for the first try."""

    id: str
    job_id: str
    event: Event
    url: str
    attempt: int


@dataclass(frozen=True)
class DeadDelivery:
    id: str
    job_id: str
    event: str
    url: str
    attempts: int
    error: str


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait after failed attempt `attempt` (1, 2, …): base·2^(attempt-1), capped, times a random
    factor in [0.5, 1) ("equal jitter"), so receivers that failed together are not retried together."""
    exponential = min(cap, base * 2 ** (attempt - 1))
    return exponential * (0.5 + 0.5 * (rng or random).random())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Outbox:
    """The outbox's operations, each one atomic script (redis.asyncio, bytes or str replies)."""

    def __init__(self, client: redis.asyncio.Redis, ttl_seconds: int, max_attempts: int):
        self.redis = client
        self.ttl_seconds = ttl_seconds
        self.max_attempts = max_attempts
        self._enqueue = client.register_script(ENQUEUE_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._succeeded = client.register_script(SUCCEEDED_LUA)
        self._failed = client.register_script(FAILED_LUA)

    async def enqueue(self, job_id: str, event: Event, url: str) -> str:
        """Records a delivery due now and returns its id (a waiting progress delivery's, for progress)."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}; one of {', '.join(EVENTS)}")
        if "." in job_id:
            raise ValueError("a job id in a webhook-id may not contain '.' (it delimits the signed content)")
        return _text(await self._enqueue(args=[job_id, event, url, self.ttl_seconds]))

    async def claim_due(self, count: int, lease_seconds: float) -> list[Delivery]:
        """Up to `count` due deliveries, each held for `lease_seconds` (then it comes due again)."""
        rows = await self._claim(keys=[DUE_KEY, DEAD_KEY], args=[count, lease_seconds, self.max_attempts])
        return [
            Delivery(id=_text(row[0]), job_id=_text(row[1]), event=_text(row[2]),  # type: ignore[arg-type]
                     url=_text(row[3]), attempt=int(row[4]))
            for row in rows
        ]

    async def succeeded(self, delivery: Delivery) -> bool:
        """Removes a delivered record; False when it was gone already."""
        done = await self._succeeded(keys=[delivery_key(delivery.id), DUE_KEY], args=[delivery.id])
        return bool(int(done))

    async def failed(
        self, delivery: Delivery, error: str, delay_seconds: float, final: bool = False
    ) -> FailOutcome:
        """Schedules the next try in `delay_seconds`, or kills the delivery (`final`, or out of tries)."""
        outcome = await self._failed(
            keys=[delivery_key(delivery.id), DUE_KEY, DEAD_KEY],
            args=[delivery.id, delivery.attempt, error[:1000], self.max_attempts, delay_seconds,
                  self.ttl_seconds, "1" if final else "0"],
        )
        return _text(outcome)  # type: ignore[return-value]

    async def pending(self) -> int:
        """Deliveries waiting or being attempted."""
        return int(await self.redis.zcard(DUE_KEY))

    async def dead(self, count: int = 100) -> list[DeadDelivery]:
        """The latest deliveries given up on, newest first."""
        entries = await self.redis.xrevrange(DEAD_KEY, count=count)
        dead = []
        for _, raw in entries:
            fields = {_text(name): _text(value) for name, value in raw.items()}
            dead.append(DeadDelivery(
                id=fields["id"], job_id=fields["job"], event=fields["event"], url=fields["url"],
                attempts=int(fields["attempts"]), error=fields["error"],
            ))
        return dead
