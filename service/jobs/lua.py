"""Every job transition as one Lua script that checks the current status first, so that a terminal state is
written exactly once whoever races for it (two workers after a takeover, a worker and a cancel).

SUBMIT and CANCEL run in the gateway (`service.gateway.store`); START, PROGRESS, FINISH, RENEW and
NOTE_ERROR in the worker (`service.worker.queue`). The moves they make are those of
`service.jobs.states.TRANSITIONS` (tests/service/jobs/test_states.py drives each script from each status).
"""

from __future__ import annotations

import json

from service.jobs.layout import DEAD_LETTER_MAXLEN, OWNER_JOBS_MAX
from service.jobs.states import TRANSITIONS
from service.webhooks.outbox import WEBHOOK_LUA_HELPERS

_ALLOWED_JSON = json.dumps({status: {to: True for to in moves} for status, moves in TRANSITIONS.items()})

_HELPERS = """
local STATE_FIELDS = {'id', 'op', 'owner', 'status', 'created_at', 'started_at', 'finished_at', 'progress',
  'attempts', 'error', 'image_count', 'expected_images', 'warnings', 'cancel_requested', 'version', 'scores',
  'revised_prompt'}

local function now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', t[1], t[2])
end

-- states.TRANSITIONS: ALLOWED[from][to] is true for an allowed move
local ALLOWED = cjson.decode('ALLOWED_JSON')

local function allowed(from, to)
  return ALLOWED[from] ~= nil and ALLOWED[from][to] == true
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
  -- its idempotency key (if any) lives as long as the job it names
  local idempotency = redis.call('HGET', key, 'idempotency')
  if idempotency then redis.call('EXPIRE', idempotency, ttl) end
  move_count(counts, from, to)
end

local function job_id_of(key)
  return string.sub(key, 5)  -- 'job:' .. id
end
""".replace("ALLOWED_JSON", _ALLOWED_JSON) + WEBHOOK_LUA_HELPERS

# KEYS: job, stream, counts, idempotency key, owner's jobs (see layout).
# ARGV: id, op, params, owner, expected_images, backlog_limit, request fingerprint ('' = no idempotency key),
# webhook URL ('' = none), webhook events (comma-separated); the last three may be left off when all are ''.
# Returns {1, created_at} (queued) | {0, queued} (backlog full) | {2, job id} (the key's job, same request)
# | {3, job id} (the key's job, another request). A key whose job expired is taken over by the new job.
SUBMIT_LUA = _HELPERS + """
local fingerprint = ARGV[7] or ''
if fingerprint ~= '' then
  local f = redis.call('HMGET', KEYS[4], 'job', 'fingerprint')
  if f[1] and redis.call('EXISTS', 'job:' .. f[1]) == 1 then
    if f[2] == fingerprint then return {2, f[1]} end
    return {3, f[1]}
  end
end
local queued = tonumber(redis.call('HGET', KEYS[3], 'queued') or '0')
if queued >= tonumber(ARGV[6]) then return {0, tostring(queued)} end
local created_at = now()
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'op', ARGV[2], 'params', ARGV[3], 'owner', ARGV[4],
  'status', 'queued', 'created_at', created_at, 'attempts', 0, 'image_count', 0,
  'expected_images', ARGV[5], 'warnings', '[]', 'entry', entry, 'version', 0)
if (ARGV[8] or '') ~= '' then redis.call('HSET', KEYS[1], 'webhook', ARGV[8], 'webhook_events', ARGV[9]) end
if fingerprint ~= '' then
  -- no TTL while the job lives: terminate() gives the key the job's own
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], 'job', ARGV[1], 'fingerprint', fingerprint)
  redis.call('HSET', KEYS[1], 'idempotency', KEYS[4])
end
redis.call('ZADD', KEYS[5], created_at, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -OWNER_JOBS_MAX - 1)
redis.call('HINCRBY', KEYS[3], 'queued', 1)
return {1, created_at}
""".replace("OWNER_JOBS_MAX", str(OWNER_JOBS_MAX))

# KEYS: job, counts, stream. ARGV: owner, ttl. Returns the status the job has afterwards, or 'missing'.
# Queued → cancelled at once (its stream entry deleted); running → flagged for the worker.
CANCEL_LUA = _HELPERS + """
local f = redis.call('HMGET', KEYS[1], 'owner', 'status', 'entry', 'cancel_requested')
if not f[2] or f[1] ~= ARGV[1] then return 'missing' end
if f[2] == 'queued' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  terminate(KEYS[1], KEYS[2], 'queued', 'cancelled', ARGV[2])
  if f[3] then redis.call('XDEL', KEYS[3], f[3]) end
  publish(KEYS[1])
  webhook_notify(KEYS[1], job_id_of(KEYS[1]), 'completed', tonumber(ARGV[2]))
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
START_LUA = _HELPERS + """
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
    webhook_notify(KEYS[1], job_id_of(KEYS[1]), 'completed', tonumber(ARGV[3]))
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
webhook_notify(KEYS[1], job_id_of(KEYS[1]), 'start', tonumber(ARGV[3]))
return {'run', attempts}
"""

# KEYS: job. ARGV: progress JSON, ttl (of a webhook delivery). Returns 1 when the job was asked to cancel.
PROGRESS_LUA = _HELPERS + """
local f = redis.call('HMGET', KEYS[1], 'status', 'progress', 'cancel_requested')
if f[1] ~= 'running' then return 1 end
if f[2] ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
  publish(KEYS[1])
  webhook_notify(KEYS[1], job_id_of(KEYS[1]), 'progress', tonumber(ARGV[2]))
end
if f[3] then return 1 end
return 0
"""

# KEYS: job, counts, stream, dead-letter stream, result:{id}:0 .. result:{id}:{n-1}.
# ARGV: group, entry ('' = none), status, error ('' = none), ttl, warnings JSON, scores JSON ('' = none),
# revised prompt ('' = none), PNG 0 .. PNG n-1.
# Always acknowledges and deletes the entry; writes the terminal state only if the job has none yet
# (and may move there: a queued job can fail, but not succeed).
# Returns 1 when this call ended the job, 0 when it had ended already (or expired).
FINISH_LUA = _HELPERS + """
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
end
local f = redis.call('HMGET', KEYS[1], 'status', 'op', 'owner', 'attempts')
if not f[1] or not allowed(f[1], ARGV[3]) then return 0 end
local ttl = tonumber(ARGV[5])
local images = #ARGV - 8
for i = 1, images do
  redis.call('SET', KEYS[4 + i], ARGV[8 + i], 'EX', ttl)
end
redis.call('HSET', KEYS[1], 'image_count', images, 'warnings', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'scores', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'revised_prompt', ARGV[8]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
terminate(KEYS[1], KEYS[2], f[1], ARGV[3], ttl)
if ARGV[3] == 'failed' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', DEAD_LETTER_MAXLEN, '*', 'job', string.sub(KEYS[1], 5),
    'op', f[2], 'owner', f[3], 'attempts', f[4] or '0', 'error', ARGV[4], 'failed_at', now())
end
publish(KEYS[1])
webhook_notify(KEYS[1], job_id_of(KEYS[1]), 'completed', ttl)
return 1
""".replace("DEAD_LETTER_MAXLEN", str(DEAD_LETTER_MAXLEN))


# KEYS: stream. ARGV: group, consumer, entry ids... Resets the idle time of the entries this consumer still
# owns (one another worker took over stays theirs) and returns those ids.
RENEW_LUA = """
local held = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    held[#held + 1] = ARGV[i]
  end
end
return held
"""

# KEYS: job. ARGV: error. Keeps the last attempt's error on a running job that waits for its retry
# (START clears it when the retry begins; a job given up on after a lost worker reports it).
NOTE_ERROR_LUA = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then redis.call('HSET', KEYS[1], 'error', ARGV[1]) end
"""
