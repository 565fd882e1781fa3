"""Jobs in Redis (Contract C): the layout, the atomic state transitions, and the gateway's JobStore.

Layout (DESIGN §4):
- `job:{id}` hash — id, op, params (JSON), owner, status, created_at/started_at/finished_at (Redis TIME,
  absent = None), progress (JSON), attempts, error, image_count, expected_images, warnings (JSON list),
  cancel_requested ("1"), worker (last consumer), entry (its stream entry id), version (bumped on every
  published change). Terminal jobs expire after `result_ttl_seconds`.
- `{stream}` — one entry `{job: id}` per queued job, read by the consumer group "workers". Finished
  entries are acknowledged and deleted, so the stream holds only queued and in-flight jobs.
- `{stream}:counts` — hash status → jobs: `queued` and `running` are current, the terminal ones are
  totals since Redis started (terminal hashes expire silently). `queued` is the backlog that submit
  checks, inside the same script that enqueues, so concurrent submitters cannot overshoot the limit.
- `{stream}:dead` — a copy of every failed job (id, op, owner, attempts, error).
- `result:{id}:{i}` — PNG bytes, same TTL.
- `job:{id}:events` — pub/sub channel; every change publishes the job's fields (without params) and its
  version, in the same script that makes the change.

Every transition is one Lua script that checks the current status first, so a terminal state is written
exactly once whoever races for it (two workers after a takeover, a worker and a cancel).
The client must return bytes (`decode_responses=False`, redis-py's default): results are PNG.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio

from service.settings import Settings

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
GROUP = "workers"
BACKLOG_RETRY_AFTER_SECONDS = 5
RESYNC_SECONDS = 5.0  # events() re-reads the hash after this long without a message (a dropped connection)
DEAD_LETTER_MAXLEN = 10_000
SEED_BOUND = 2**31


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def events_channel(job_id: str) -> str:
    return f"job:{job_id}:events"


def result_key(job_id: str, index: int) -> str:
    return f"result:{job_id}:{index}"


def counts_key(stream: str) -> str:
    return f"{stream}:counts"


def dead_letter_key(stream: str) -> str:
    return f"{stream}:dead"


@dataclass
class JobProgress:
    stage: str
    step: int
    total: int


@dataclass
class Job:
    id: str
    op: str
    status: JobStatus
    params: dict
    owner: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: JobProgress | None
    attempts: int
    error: str | None
    image_count: int
    expected_images: int
    warnings: list[str] = field(default_factory=list)
    cancel_requested: bool = False  # a running job asked to stop; it turns `cancelled` at its next step


class Backlogged(Exception):
    """The queue holds `backlog_limit` jobs already; the client should retry after `retry_after` s."""

    def __init__(self, queued: int, retry_after: int = BACKLOG_RETRY_AFTER_SECONDS):
        super().__init__(f"{queued} jobs are queued; retry in {retry_after} s")
        self.queued = queued
        self.retry_after = retry_after


class JobNotFound(LookupError):
    """No such job for this owner (missing, expired, or another owner's)."""


# ---- Lua: shared helpers, prepended to every script ------------------------------------------------

_LUA_HELPERS = """
local STATE_FIELDS = {'id', 'op', 'owner', 'status', 'created_at', 'started_at', 'finished_at', 'progress',
  'attempts', 'error', 'image_count', 'expected_images', 'warnings', 'cancel_requested', 'version'}

local function now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', t[1], t[2])
end

local function is_terminal(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled'
end

-- bump the version and publish every field but params (which never change and may be megabytes)
local function publish(key)
  redis.call('HINCRBY', key, 'version', 1)
  local values = redis.call('HMGET', key, unpack(STATE_FIELDS))
  local state = {}
  for i, name in ipairs(STATE_FIELDS) do
    if values[i] then state[name] = values[i] end
  end
  redis.call('PUBLISH', key .. ':events', cjson.encode(state))
end

local function move_count(counts, from, to)
  redis.call('HINCRBY', counts, from, -1)
  redis.call('HINCRBY', counts, to, 1)
end

local function terminate(key, counts, from, to, ttl)
  redis.call('HSET', key, 'status', to, 'finished_at', now())
  redis.call('EXPIRE', key, ttl)
  move_count(counts, from, to)
end
"""

# KEYS: job, stream, counts. ARGV: id, op, params, owner, expected_images, backlog_limit.
# Returns {1, created_at} or {0, queued}.
SUBMIT_LUA = _LUA_HELPERS + """
local queued = tonumber(redis.call('HGET', KEYS[3], 'queued') or '0')
if queued >= tonumber(ARGV[6]) then return {0, tostring(queued)} end
local created_at = now()
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'op', ARGV[2], 'params', ARGV[3], 'owner', ARGV[4],
  'status', 'queued', 'created_at', created_at, 'attempts', 0, 'image_count', 0,
  'expected_images', ARGV[5], 'warnings', '[]', 'entry', entry, 'version', 0)
redis.call('HINCRBY', KEYS[3], 'queued', 1)
return {1, created_at}
"""

# KEYS: job, counts, stream. ARGV: owner, ttl. Returns the status the job has afterwards, or 'missing'.
# Queued → cancelled at once (its stream entry deleted); running → flagged for the worker.
CANCEL_LUA = _LUA_HELPERS + """
local f = redis.call('HMGET', KEYS[1], 'owner', 'status', 'entry', 'cancel_requested')
if not f[2] or f[1] ~= ARGV[1] then return 'missing' end
if f[2] == 'queued' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  terminate(KEYS[1], KEYS[2], 'queued', 'cancelled', ARGV[2])
  if f[3] then redis.call('XDEL', KEYS[3], f[3]) end
  publish(KEYS[1])
  return 'cancelled'
end
if f[2] == 'running' and not f[4] then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  publish(KEYS[1])
end
return f[2]
"""

# KEYS: job, counts. ARGV: worker, max_attempts, ttl.
# Returns {'run', attempts} | {'skip', status} | {'exhausted', attempts} (Python fails it) | {'missing'}.
START_LUA = _LUA_HELPERS + """
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'cancel_requested')
local status = f[1]
if not status then return {'missing'} end
if status ~= 'queued' and status ~= 'running' then return {'skip', status} end
local attempts = tonumber(f[2] or '0')
if status == 'running' then
  -- a takeover: the previous worker stopped renewing its lease while running this job
  if f[3] then
    terminate(KEYS[1], KEYS[2], 'running', 'cancelled', ARGV[3])
    publish(KEYS[1])
    return {'skip', 'cancelled'}
  end
  if attempts >= tonumber(ARGV[2]) then return {'exhausted', attempts} end
else
  move_count(KEYS[2], 'queued', 'running')
end
attempts = attempts + 1
redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts, 'started_at', now(), 'worker', ARGV[1])
redis.call('HDEL', KEYS[1], 'progress', 'error')
publish(KEYS[1])
return {'run', attempts}
"""

# KEYS: job. ARGV: progress JSON. Returns 1 when the job was asked to cancel, else 0.
PROGRESS_LUA = _LUA_HELPERS + """
local f = redis.call('HMGET', KEYS[1], 'status', 'progress', 'cancel_requested')
if f[1] ~= 'running' then return 1 end
if f[2] ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
  publish(KEYS[1])
end
if f[3] then return 1 end
return 0
"""

# KEYS: job, counts, stream, dead-letter stream, result:{id}:0 .. result:{id}:{n-1}.
# ARGV: group, entry ('' = none), status, error ('' = none), ttl, warnings JSON, PNG 0 .. PNG n-1.
# Always acknowledges and deletes the entry; writes the terminal state only if the job has none yet.
# Returns 1 when this call ended the job, 0 when it had ended already (or expired).
FINISH_LUA = _LUA_HELPERS + """
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
end
local f = redis.call('HMGET', KEYS[1], 'status', 'op', 'owner', 'attempts')
if not f[1] or is_terminal(f[1]) then return 0 end
local ttl = tonumber(ARGV[5])
local images = #ARGV - 6
for i = 1, images do
  redis.call('SET', KEYS[4 + i], ARGV[6 + i], 'EX', ttl)
end
redis.call('HSET', KEYS[1], 'image_count', images, 'warnings', ARGV[6])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
terminate(KEYS[1], KEYS[2], f[1], ARGV[3], ttl)
if ARGV[3] == 'failed' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', DEAD_LETTER_MAXLEN, '*', 'job', string.sub(KEYS[1], 5),
    'op', f[2], 'owner', f[3], 'attempts', f[4] or '0', 'error', ARGV[4], 'failed_at', now())
end
publish(KEYS[1])
return 1
""".replace("DEAD_LETTER_MAXLEN", str(DEAD_LETTER_MAXLEN))


# ---- decoding ---------------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional_float(state: Mapping[str, str], name: str) -> float | None:
    value = state.get(name)
    return float(value) if value else None


def job_from_state(state: Mapping[str, str], params: dict[str, Any]) -> Job:
    """A Job from the hash fields (or a published state, which carries all of them but params)."""
    progress = json.loads(state["progress"]) if state.get("progress") else None
    return Job(
        id=state["id"], op=state["op"], status=state["status"], params=params, owner=state["owner"],
        created_at=float(state["created_at"]), started_at=_optional_float(state, "started_at"),
        finished_at=_optional_float(state, "finished_at"),
        progress=JobProgress(**progress) if progress else None, attempts=int(state.get("attempts", 0)),
        error=state.get("error") or None, image_count=int(state.get("image_count", 0)),
        expected_images=int(state["expected_images"]), warnings=json.loads(state.get("warnings", "[]")),
        cancel_requested=bool(state.get("cancel_requested")),
    )


def decode_hash(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in raw.items()}


# ---- the gateway's side -----------------------------------------------------------------------------


class JobStore:
    """Submit, read, cancel and follow jobs. Async (redis.asyncio) and torch-free: the gateway's view."""

    def __init__(self, redis: redis.asyncio.Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self._submit = redis.register_script(SUBMIT_LUA)
        self._cancel = redis.register_script(CANCEL_LUA)

    async def submit(self, op: str, params: dict, owner: str, expected_images: int) -> Job:
        """Queues a job; raises Backlogged when `backlog_limit` jobs are queued already."""
        params = dict(params)
        if params.get("seed") is None:
            params["seed"] = secrets.randbelow(SEED_BOUND)  # stored, so a retried job is reproducible
        job_id = uuid.uuid4().hex
        stream = self.settings.stream
        accepted, value = await self._submit(
            keys=[job_key(job_id), stream, counts_key(stream)],
            args=[job_id, op, json.dumps(params), owner, expected_images, self.settings.backlog_limit],
        )
        if not accepted:
            raise Backlogged(int(value))
        return Job(id=job_id, op=op, status="queued", params=params, owner=owner, created_at=float(value),
                   started_at=None, finished_at=None, progress=None, attempts=0, error=None, image_count=0,
                   expected_images=expected_images, warnings=[])

    async def get(self, job_id: str, owner: str) -> Job | None:
        """The job, or None when it is missing, expired or another owner's."""
        loaded = await self._load(job_id, owner)
        return loaded[0] if loaded else None

    async def cancel(self, job_id: str, owner: str) -> Job | None:
        """Queued → cancelled now; running → flagged (the worker stops at its next step); ended → as is."""
        outcome = await self._cancel(
            keys=[job_key(job_id), counts_key(self.settings.stream), self.settings.stream],
            args=[owner, self.settings.result_ttl_seconds],
        )
        if _text(outcome) == "missing":
            return None
        return await self.get(job_id, owner)

    async def image(self, job_id: str, index: int, owner: str) -> bytes | None:
        """The PNG bytes of result `index`, or None (no such job for this owner, or no such image)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(job_key(job_id), "owner")
            pipe.get(result_key(job_id, index))
            stored_owner, png = await pipe.execute()
        if stored_owner is None or _text(stored_owner) != owner:
            return None
        return png

    async def events(self, job_id: str, owner: str) -> AsyncIterator[Job]:
        """The job now, then once per change; ends after a terminal state (or at once if not found).

        Subscribes before reading the snapshot, and skips messages older than the snapshot (each carries
        the hash's version), so no change between the two is lost or replayed."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(events_channel(job_id))
            loaded = await self._load(job_id, owner)
            if loaded is None:
                return
            job, version = loaded
            yield job
            while job.status not in TERMINAL:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=RESYNC_SECONDS)
                if message is None:
                    loaded = await self._load(job_id, owner)
                    if loaded is None:
                        return
                    fresh, fresh_version = loaded
                else:
                    state = json.loads(message["data"])
                    fresh, fresh_version = job_from_state(state, job.params), int(state["version"])
                if fresh_version > version:
                    job, version = fresh, fresh_version
                    yield job
        finally:
            await pubsub.aclose()

    async def wait(self, job_id: str, owner: str, timeout: float) -> Job:
        """The job once it has ended. Raises TimeoutError after `timeout` s, JobNotFound if it is not
        (or no longer) there."""
        try:
            async with asyncio.timeout(timeout):
                async for job in self.events(job_id, owner):
                    if job.status in TERMINAL:
                        return job
        except TimeoutError:
            raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s") from None
        raise JobNotFound(job_id)

    async def queue_depth(self) -> int:
        """Jobs waiting for a worker."""
        return int(await self.redis.hget(counts_key(self.settings.stream), "queued") or 0)

    async def counts_by_status(self) -> dict[str, int]:
        """queued/running now; succeeded/failed/cancelled in total since Redis started."""
        raw = decode_hash(await self.redis.hgetall(counts_key(self.settings.stream)))
        return {status: int(raw.get(status, 0)) for status in STATUSES}

    async def _load(self, job_id: str, owner: str) -> tuple[Job, int] | None:
        state = decode_hash(await self.redis.hgetall(job_key(job_id)))
        if "status" not in state or state.get("owner") != owner:
            return None
        return job_from_state(state, json.loads(state["params"])), int(state.get("version", 0))
