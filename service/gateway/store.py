"""The gateway's view of jobs in Redis: submit, read, cancel and follow them (async, torch-free).

The layout is `service.jobs.layout`'s; every change goes through a `service.jobs.lua` script.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from pydantic_core import to_json  # a fifth of json.dumps's CPU for a job's params
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from service.gateway.live_models import LiveModels
from service.jobs.layout import (
    counts_key,
    decode_hash,
    events_channel,
    idempotency_key,
    job_key,
    owner_jobs_key,
    result_key,
    text,
)
from service.jobs.lua import CANCEL_LUA, SUBMIT_LUA
from service.jobs.states import STATUSES, TERMINAL, JobStatus
from service.settings import Settings

BACKLOG_RETRY_AFTER_SECONDS = 5
RESYNC_SECONDS = 5.0  # events() re-reads the hash after this long without a message (a dropped connection)
SEED_BOUND = 2**31


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
    scores: list[float] | None = None  # best_of: each kept image's CLIP cosine to the prompt
    revised_prompt: str | None = None  # the prompt the model drew, when it rewrote the given one


class Backlogged(Exception):
    """The queue holds `backlog_limit` jobs already; the client should retry after `retry_after` s."""

    def __init__(self, queued: int, retry_after: int = BACKLOG_RETRY_AFTER_SECONDS):
        super().__init__(f"{queued} jobs are queued; retry in {retry_after} s")
        self.queued = queued
        self.retry_after = retry_after


class IdempotencyConflict(Exception):
    """The idempotency key names a live job that was submitted with another request."""

    def __init__(self, job_id: str):
        super().__init__(f"the Idempotency-Key was used for job {job_id} with a different request")
        self.job_id = job_id


def request_fingerprint(op: str, params: Mapping[str, Any]) -> str:
    """sha256 of the canonical request (op and params as submitted, before a seed is drawn)."""
    canonical = json.dumps({"op": op, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class JobNotFound(LookupError):
    """No such job for this owner (missing, expired, or another owner's)."""


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
        scores=json.loads(state["scores"]) if state.get("scores") else None,
        revised_prompt=state.get("revised_prompt") or None,
    )


async def run_script(client: redis.asyncio.Redis, script: AsyncScript, keys: list, args: list) -> Any:
    """`script(keys, args)` by EVALSHA at once. redis-py's Script call does the same after per-call imports
    and type checks, and each argument costs ~9k instructions to pack: on the submit path, both count.
    A Redis that has lost its scripts (restarted) answers NOSCRIPT; then the Script call loads it."""
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await script(keys=keys, args=args)


class JobStore:
    """Submit, read, cancel and follow jobs. Async (redis.asyncio) and torch-free: the gateway's view."""

    def __init__(self, redis: redis.asyncio.Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self._submit = redis.register_script(SUBMIT_LUA)
        self._cancel = redis.register_script(CANCEL_LUA)
        self.models = LiveModels(redis, settings)  # what the live workers serve (GET /v1/models, refusals)

    async def submit(
        self,
        op: str,
        params: dict,
        owner: str,
        expected_images: int,
        idempotency: str | None = None,
        webhook: Mapping[str, str] | None = None,
    ) -> Job:
        """Queues a job; raises Backlogged when `backlog_limit` jobs are queued already.

        With an `idempotency` key: while the key's job lives, the same request returns that job (no second
        one, whoever races) and another request raises IdempotencyConflict. `webhook`: the checked
        {"webhook", "webhook_events"} fields (service.webhooks.subscription), stored with the job."""
        webhook = webhook or {}
        request = {**params, **webhook}
        fingerprint = request_fingerprint(op, request) if idempotency is not None else ""
        submitted, params = params, dict(params)
        if params.get("seed") is None:
            params["seed"] = secrets.randbelow(SEED_BOUND)  # stored, so a retried job is reproducible
        job_id = secrets.token_hex(16)
        stream = self.settings.stream
        keys = [job_key(job_id), stream, counts_key(stream), idempotency_key(owner, idempotency or ""),
                owner_jobs_key(owner)]
        args = [job_id, op, to_json(params), owner, expected_images, self.settings.backlog_limit]
        if fingerprint or webhook:  # the optional arguments, left off when empty (the script reads '')
            args += [fingerprint, webhook.get("webhook", ""), webhook.get("webhook_events", "")]
        outcome, value = await run_script(self.redis, self._submit, keys, args)
        if outcome == 0:
            raise Backlogged(int(value))
        if outcome == 3:
            raise IdempotencyConflict(text(value))
        if outcome == 2:
            existing = await self.get(text(value), owner)
            if existing is not None:
                return existing
            # it expired between the script and this read: the key is free again
            return await self.submit(op, submitted, owner, expected_images, idempotency, webhook)
        return Job(id=job_id, op=op, status="queued", params=params, owner=owner, created_at=float(value),
                   started_at=None, finished_at=None, progress=None, attempts=0, error=None, image_count=0,
                   expected_images=expected_images, warnings=[])

    async def list(self, owner: str, limit: int, after: str | None = None) -> tuple[list[Job], bool]:
        """The owner's jobs newest first, from just after job `after` (None: from the newest), at most
        `limit`, and whether more follow. Raises JobNotFound when `after` is not in the owner's list.
        Ids whose job expired are dropped from the list on the way."""
        index = owner_jobs_key(owner)
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                raise JobNotFound(after)
            start = rank + 1
        jobs: list[Job] = []
        while len(jobs) <= limit:
            ids = [text(i) for i in await self.redis.zrevrange(index, start, start + limit - len(jobs))]
            if not ids:
                break
            start += len(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(job_key(job_id))
                states = [decode_hash(raw) for raw in await pipe.execute()]
            expired = [job_id for job_id, state in zip(ids, states, strict=True) if "status" not in state]
            if expired:
                await self.redis.zrem(index, *expired)
                start -= len(expired)
            jobs += [job_from_state(s, json.loads(s["params"])) for s in states if "status" in s]
        return jobs[:limit], len(jobs) > limit

    async def get_any(self, job_id: str) -> Job | None:
        """The job whoever owns it (for the webhook dispatcher, which renders it for its own subscriber)."""
        state = decode_hash(await self.redis.hgetall(job_key(job_id)))
        return job_from_state(state, json.loads(state["params"])) if "status" in state else None

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
        if text(outcome) == "missing":
            return None
        return await self.get(job_id, owner)

    async def image(self, job_id: str, index: int, owner: str) -> bytes | None:
        """The PNG bytes of result `index`, or None (no such job for this owner, or no such image)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(job_key(job_id), "owner")
            pipe.get(result_key(job_id, index))
            stored_owner, png = await pipe.execute()
        if stored_owner is None or text(stored_owner) != owner:
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
