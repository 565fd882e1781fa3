"""The Redis layout of jobs (Contract C).

Layout (DESIGN §4):
- `job:{id}` hash — id, op, params (JSON), owner, status, created_at/started_at/finished_at (Redis TIME,
  absent = None), progress (JSON), attempts, error, image_count, expected_images, warnings (JSON list),
  scores (JSON list, best_of), revised_prompt (the prompt the model drew when it rewrote the given one),
  cancel_requested ("1"), worker (last consumer), entry (its stream entry id), version (bumped on every
  published change). Terminal jobs expire after `result_ttl_seconds`.
- `{stream}` — one entry `{job: id}` per queued job, read by the consumer group "workers". Finished
  entries are acknowledged and deleted, so the stream holds only queued and in-flight jobs.
- `{stream}:counts` — hash status → jobs: `queued` and `running` are current, the terminal ones are
  totals since Redis started (terminal hashes expire silently). `queued` is the backlog that submit
  checks, inside the same script that enqueues, so concurrent submitters cannot overshoot the limit.
- `{stream}:dead` — a copy of every failed job (id, op, owner, attempts, error).
- `result:{id}:{i}` — PNG bytes, same TTL.
- `owner:{owner}:jobs` — sorted set job id → created_at, the owner's jobs for listing; written by the submit
  script, capped at OWNER_JOBS_MAX (oldest dropped); ids whose hash expired are dropped when listed.
- `idempotency:{owner}:{sha256(key)}` — hash {job, fingerprint (sha256 of the canonical request)}, written
  by the submit script with the job (so one key makes one job) and expiring with it; the job's hash names
  it in its `idempotency` field.
- `job:{id}:events` — pub/sub channel; every change publishes the job's fields (without params) and its
  version, in the same script that makes the change.
- `{stream}:workers` — set of the names of the workers that published a model card (below). A name whose
  card has expired is stale: readers skip it and may remove it.
- `{stream}:workers:{name}` — the model card (JSON) of the checkpoint worker `name` serves, written when
  it starts, its TTL (`lease_seconds`) renewed by the lease thread, deleted when it stops; a killed
  worker's card expires with its lease. `{"id", "created", "owned_by", "ops": [...], "max_size",
  "shipped", "imported_from", "parameters": {component: count}, "refusals": {op: why it cannot run}}`
  (`service.worker.card` writes it, `service.gateway.live_models` reads it).

Every transition is one Lua script that checks the current status first, so a terminal state is written
exactly once whoever races for it (two workers after a takeover, a worker and a cancel).
The client must return bytes (`decode_responses=False`, redis-py's default): results are PNG.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

GROUP = "workers"  # the stream's consumer group
DEAD_LETTER_MAXLEN = 10_000
OWNER_JOBS_MAX = 10_000  # newest jobs an owner's listing keeps


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def events_channel(job_id: str) -> str:
    return f"job:{job_id}:events"


def result_key(job_id: str, index: int) -> str:
    return f"result:{job_id}:{index}"


def owner_jobs_key(owner: str) -> str:
    return f"owner:{owner}:jobs"


def idempotency_key(owner: str, key: str) -> str:
    """Per owner, so two API keys never share one; hashed, so any header value makes a tidy key."""
    return f"idempotency:{owner}:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def counts_key(stream: str) -> str:
    return f"{stream}:counts"


def dead_letter_key(stream: str) -> str:
    return f"{stream}:dead"


def workers_key(stream: str) -> str:
    return f"{stream}:workers"


def worker_card_key(stream: str, name: str) -> str:
    return f"{stream}:workers:{name}"


def text(value: bytes | str) -> str:
    """A Redis reply as str (the clients return bytes: results are PNG)."""
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {text(name): text(value) for name, value in raw.items()}
