"""The worker's side of the job queue (DESIGN §4): claim stream entries, hold them with a lease, and move
jobs through START / PROGRESS / FINISH (the Lua scripts in service.jobs.lua).

Delivery is at-least-once. A worker reads new entries with XREADGROUP and first takes over entries whose
lease ran out (XAUTOCLAIM with min-idle = lease_seconds: their worker died or was cut off). While it holds
an entry it renews the lease by resetting the entry's idle time (XCLAIM ... JUSTID, only if it still owns
it). An entry it claimed but will not run now, or a job that failed and may be retried, is *released*: its
idle time is set past the lease, so the next XAUTOCLAIM of any worker redelivers it at once. FINISH sets
the terminal state exactly once and acknowledges and deletes the entry.

Synchronous redis-py: the worker loop and the lease thread are plain threads around blocking torch calls.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from service.jobs.layout import GROUP, counts_key, dead_letter_key, job_key, result_key, text
from service.jobs.lua import FINISH_LUA, NOTE_ERROR_LUA, PROGRESS_LUA, RENEW_LUA, START_LUA
from service.jobs.states import Terminal
from service.settings import Settings

StartOutcome = Literal["run", "skip", "exhausted", "missing"]


@dataclass(frozen=True)
class Claim:
    """A stream entry this worker now holds; `job_id` is None when the entry was deleted meanwhile."""

    entry: str
    job_id: str | None


@dataclass
class QueuedJob:
    """A claimed job as loaded from its hash (before START)."""

    claim: Claim
    op: str
    params: dict[str, Any]
    status: str
    attempts: int  # attempts made so far; > 0 means this delivery is a retry or a takeover
    failed_before: bool = False  # its last attempt raised (a retry), rather than lost its worker (a takeover)

    @property
    def id(self) -> str:
        assert self.claim.job_id is not None
        return self.claim.job_id


class WorkerQueue:
    def __init__(self, client: redis.Redis, settings: Settings, consumer: str):
        self.redis = client
        self.settings = settings
        self.consumer = consumer
        self.stream = settings.stream
        self.lease_ms = max(1, int(settings.lease_seconds * 1000))
        self._cursor = "0-0"  # where the next XAUTOCLAIM scan of the pending list starts
        self._start = client.register_script(START_LUA)
        self._progress = client.register_script(PROGRESS_LUA)
        self._finish = client.register_script(FINISH_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._note_error = client.register_script(NOTE_ERROR_LUA)

    def ensure_group(self) -> None:
        """Creates the consumer group at the stream's start (so jobs queued before any worker ran count)."""
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # ---- claiming ----------------------------------------------------------------------------------

    def claim(self, count: int, block_seconds: float, exclude: Collection[str] = ()) -> list[Claim]:
        """Up to `count` entries: first ones whose lease ran out, then new ones (waiting up to
        `block_seconds` for some when there were none). `exclude`: entries this worker runs already."""
        claims = self.take_over(count, exclude)
        if len(claims) < count:
            block = None if claims else max(1, int(block_seconds * 1000))
            reply = self.redis.xreadgroup(
                GROUP, self.consumer, {self.stream: ">"}, count=count - len(claims), block=block
            )
            for _, entries in reply or []:
                claims.extend(self._claim_of(entry, fields) for entry, fields in entries)
        return claims

    def take_over(self, count: int, exclude: Collection[str] = ()) -> list[Claim]:
        """Entries idle longer than the lease (their worker died, or they were released), now ours."""
        reply = self.redis.xautoclaim(self.stream, GROUP, self.consumer, self.lease_ms, self._cursor,
                                      count=count)
        # [next cursor, [(id, fields) | (id, None) for a deleted entry on Redis 6.2], deleted ids (Redis 7)]
        # One call scans a bounded stretch of the pending list; the cursor carries on there next time
        # ("0-0" once it wrapped around).
        self._cursor = text(reply[0])
        return [
            self._claim_of(entry, fields)
            for entry, fields in reply[1]
            if text(entry) not in exclude
        ]

    @staticmethod
    def _claim_of(entry: bytes | str, fields: dict | None) -> Claim:
        job_id = (fields or {}).get(b"job") or (fields or {}).get("job")
        return Claim(entry=text(entry), job_id=text(job_id) if job_id else None)

    def renew(self, entries: list[str]) -> list[str]:
        """Resets the lease of `entries`; returns those still held (the rest were taken over)."""
        if not entries:
            return []
        held = self._renew(keys=[self.stream], args=[GROUP, self.consumer, *entries])
        return [text(entry) for entry in held]

    def release(self, entries: list[str]) -> None:
        """Hands entries back: idle past the lease, so the next XAUTOCLAIM (any worker's) takes them."""
        if entries:
            self.redis.xclaim(self.stream, GROUP, self.consumer, 0, entries,
                              idle=self.lease_ms + 1000, justid=True)

    # ---- job state ---------------------------------------------------------------------------------

    def load(self, claim: Claim) -> QueuedJob | None:
        """The job behind a claim; None when it is gone (deleted entry, expired hash)."""
        if claim.job_id is None:
            return None
        names = ("op", "params", "status", "attempts", "error")
        values = self.redis.hmget(job_key(claim.job_id), *names)
        fields = {name: text(value) for name, value in zip(names, values, strict=True) if value is not None}
        if not fields.get("status") or not fields.get("params"):
            return None
        return QueuedJob(claim=claim, op=fields["op"], params=json.loads(fields["params"]),
                         status=fields["status"], attempts=int(fields.get("attempts") or 0),
                         failed_before=fields["status"] == "running" and bool(fields.get("error")))

    def start(self, job_id: str) -> tuple[StartOutcome, str]:
        """queued/running → running (attempts + 1). Returns ("run", attempts), ("skip", status),
        ("exhausted", attempts) after a takeover of a job out of attempts, or ("missing", "")."""
        reply = self._start(
            keys=[job_key(job_id), counts_key(self.stream)],
            args=[self.consumer, self.settings.max_attempts, self.settings.result_ttl_seconds],
        )
        outcome = text(reply[0])
        return outcome, str(text(reply[1])) if len(reply) > 1 else ""  # type: ignore[return-value]

    def last_error(self, job_id: str) -> str | None:
        value = self.redis.hget(job_key(job_id), "error")
        return text(value) if value else None

    def progress(self, job_ids: list[str], stage: str, step: int, total: int) -> list[bool]:
        """Writes (and publishes) progress on each job; True for a job that should stop (cancel asked,
        or it is no longer running here)."""
        value = json.dumps({"stage": stage, "step": step, "total": total})
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                ttl = self.settings.result_ttl_seconds  # of a webhook delivery it enqueues
                self._progress(keys=[job_key(job_id)], args=[value, ttl], client=pipe)
            return [bool(int(stop)) for stop in pipe.execute()]

    def note_error(self, job_id: str, error: str) -> None:
        self._note_error(keys=[job_key(job_id)], args=[error])

    def finish(
        self,
        job_id: str,
        entry: str | None,
        status: Terminal,
        images: Sequence[bytes] = (),
        error: str | None = None,
        warnings: Sequence[str] = (),
        scores: Sequence[float | None] | None = None,
        revised_prompt: str | None = None,
    ) -> bool:
        """Ends the job (results, TTL, dead letter when failed) and acknowledges its entry. False when
        it had ended already (a cancel or another worker got there first). `scores`: best_of's, per image;
        `revised_prompt`: the prompt the pipeline drew instead of the given one (None: drawn as given)."""
        keys = [job_key(job_id), counts_key(self.stream), self.stream, dead_letter_key(self.stream)]
        keys += [result_key(job_id, index) for index in range(len(images))]
        args = [GROUP, entry or "", status, error or "", self.settings.result_ttl_seconds,
                json.dumps(list(warnings)), json.dumps(list(scores)) if scores is not None else "",
                revised_prompt or "", *images]
        return bool(int(self._finish(keys=keys, args=args)))

    def acknowledge(self, entry: str) -> None:
        """Drops an entry whose job is gone or already ended."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, entry)
            pipe.xdel(self.stream, entry)
            pipe.execute()
