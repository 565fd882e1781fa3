"""The outbox's scripts on a real Redis: records, claims with leases, retries, death, coalescing, TTLs,
and the Lua helper the job transitions call."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio

from service.webhooks.outbox import (
    DEAD_KEY,
    DUE_KEY,
    WEBHOOK_LUA_HELPERS,
    Outbox,
    backoff_seconds,
    delivery_key,
    progress_key,
)

T = TypeVar("T")
TTL = 600


def with_outbox(redis_url: str, body: Callable[[Outbox, redis.asyncio.Redis], Awaitable[T]],
                max_attempts: int = 3) -> T:
    async def go() -> T:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await body(Outbox(client, ttl_seconds=TTL, max_attempts=max_attempts), client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_enqueue_writes_a_due_record_with_a_ttl(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        first = await outbox.enqueue("job1", "completed", "https://example.com/a")
        second = await outbox.enqueue("job1", "start", "https://example.com/a")
        assert first != second and first.startswith("msg_job1_completed_") and "." not in first
        record = await client.hgetall(delivery_key(first))
        assert record[b"job"] == b"job1" and record[b"event"] == b"completed"
        assert record[b"url"] == b"https://example.com/a" and record[b"attempts"] == b"0"
        assert 0 < await client.ttl(delivery_key(first)) <= TTL
        due = await client.zscore(DUE_KEY, first)
        assert abs(due - time.time()) < 5
        assert await outbox.pending() == 2
        with pytest.raises(ValueError, match="unknown webhook event"):
            await outbox.enqueue("job1", "finished", "https://example.com/a")  # type: ignore[arg-type]

    with_outbox(redis_url, body)


def test_a_claim_holds_a_delivery_for_its_lease_then_it_comes_due_again(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        delivery_id = await outbox.enqueue("job1", "completed", "https://example.com/a")
        [first] = await outbox.claim_due(10, lease_seconds=0.3)
        assert (first.id, first.job_id, first.event, first.attempt) == (delivery_id, "job1", "completed", 1)
        assert await outbox.claim_due(10, lease_seconds=0.3) == []  # held: nobody else gets it
        await asyncio.sleep(0.4)  # the holder "crashed": the lease ran out
        [again] = await outbox.claim_due(10, lease_seconds=30)
        assert (again.id, again.attempt) == (delivery_id, 2)
        # The crashed holder wakes up: it may not settle the attempt that took over.
        assert await outbox.failed(first, "late", delay_seconds=0) == "stale"
        assert await client.hget(delivery_key(delivery_id), "attempts") == b"2"
        assert await outbox.succeeded(again)
        assert await outbox.pending() == 0 and not await client.exists(delivery_key(delivery_id))

    with_outbox(redis_url, body)


def test_failed_reschedules_with_the_delay_then_dies_after_max_attempts(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        delivery_id = await outbox.enqueue("job1", "completed", "https://example.com/a")
        for attempt in (1, 2):
            [delivery] = await outbox.claim_due(10, lease_seconds=30)
            assert delivery.attempt == attempt
            before = time.time()
            assert await outbox.failed(delivery, f"answered 500 #{attempt}", delay_seconds=0.2) == "retry"
            assert (await client.zscore(DUE_KEY, delivery_id)) >= before + 0.15
            last_error = await client.hget(delivery_key(delivery_id), "last_error")
            assert last_error == f"answered 500 #{attempt}".encode()
            assert await outbox.claim_due(10, lease_seconds=30) == []  # not due before the delay
            await asyncio.sleep(0.25)
        [last] = await outbox.claim_due(10, lease_seconds=30)
        assert await outbox.failed(last, "answered 500 #3", delay_seconds=0) == "dead"
        assert not await client.exists(delivery_key(delivery_id)) and await outbox.pending() == 0
        [dead] = await outbox.dead()
        assert (dead.id, dead.job_id, dead.attempts) == (delivery_id, "job1", 3)
        assert dead.error == "answered 500 #3"

    with_outbox(redis_url, body)


def test_a_final_failure_dies_at_once(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        await outbox.enqueue("job1", "completed", "https://example.com/a")
        [delivery] = await outbox.claim_due(10, lease_seconds=30)
        assert await outbox.failed(delivery, "410 Gone", delay_seconds=5, final=True) == "dead"
        assert [d.error for d in await outbox.dead()] == ["410 Gone"]

    with_outbox(redis_url, body, max_attempts=10)


def test_claims_of_dispatchers_that_keep_dying_end_in_the_dead_stream(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        delivery_id = await outbox.enqueue("job1", "completed", "https://example.com/a")
        for _ in range(3):
            assert len(await outbox.claim_due(10, lease_seconds=0)) == 1  # claimed, never settled
        assert await outbox.claim_due(10, lease_seconds=0) == []
        [dead] = await outbox.dead()
        assert dead.id == delivery_id and dead.attempts == 3 and "stopped" in dead.error
        assert await outbox.pending() == 0

    with_outbox(redis_url, body)


def test_claim_due_takes_at_most_count_oldest_first_and_skips_expired_records(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        ids = [await outbox.enqueue(f"job{i}", "completed", "https://example.com/a") for i in range(5)]
        await client.delete(delivery_key(ids[0]))  # as if its TTL ran out
        claimed = await outbox.claim_due(2, lease_seconds=30)  # the dangling id counts against `count`
        assert [d.id for d in claimed] == ids[1:2]
        assert await client.zscore(DUE_KEY, ids[0]) is None  # and was dropped
        assert [d.id for d in await outbox.claim_due(2, lease_seconds=30)] == ids[2:4]

    with_outbox(redis_url, body)


def test_progress_deliveries_coalesce_while_one_waits(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        url = "https://example.com/a"
        waiting = await outbox.enqueue("job1", "progress", url)
        assert await outbox.enqueue("job1", "progress", url) == waiting  # absorbed
        assert await outbox.enqueue("job2", "progress", url) != waiting  # per job
        assert await outbox.pending() == 2
        [claimed, _] = await outbox.claim_due(10, lease_seconds=30)
        assert claimed.id == waiting and await client.get(progress_key("job1")) is None
        # Progress while the first is in flight makes a new delivery (the first may carry older data)...
        newer = await outbox.enqueue("job1", "progress", url)
        assert newer != waiting
        # ...and the failed first one is dropped: the newer one will carry the latest view.
        assert await outbox.failed(claimed, "answered 500", delay_seconds=0) == "superseded"
        assert not await client.exists(delivery_key(waiting))
        assert await outbox.enqueue("job1", "progress", url) == newer
        assert 0 < await client.ttl(progress_key("job1")) <= TTL

    with_outbox(redis_url, body)


def test_a_failed_progress_delivery_with_no_newer_one_waits_for_its_retry(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        url = "https://example.com/a"
        waiting = await outbox.enqueue("job1", "progress", url)
        [claimed] = await outbox.claim_due(10, lease_seconds=30)
        assert await outbox.failed(claimed, "answered 500", delay_seconds=60) == "retry"
        assert await outbox.enqueue("job1", "progress", url) == waiting  # the retry absorbs new progress
        assert await outbox.pending() == 1

    with_outbox(redis_url, body)


NOTIFY_LUA = WEBHOOK_LUA_HELPERS + """
redis.call('HSET', KEYS[1], 'status', ARGV[2])  -- stands for a job transition
return webhook_notify(KEYS[1], ARGV[1], ARGV[3], 600)
"""


def test_webhook_notify_enqueues_in_the_transition_only_the_events_the_job_asked_for(redis_url: str) -> None:
    async def body(outbox: Outbox, client: redis.asyncio.Redis) -> None:
        transition = client.register_script(NOTIFY_LUA)
        await client.hset("job:a", mapping={"webhook": "https://example.com/a",
                                            "webhook_events": "start,completed"})
        await client.hset("job:b", mapping={"webhook": "https://example.com/b"})  # events left out
        await client.hset("job:c", mapping={"status": "queued"})  # no webhook

        async def notify(job: str, status: str, event: str) -> str | None:
            reply = await transition(keys=[f"job:{job}"], args=[job, status, event])
            return reply.decode() if reply else None

        started = await notify("a", "running", "start")
        assert started and started.startswith("msg_a_start_")
        assert await notify("a", "running", "progress") is None  # not asked for
        completed = await notify("a", "succeeded", "completed")
        assert await notify("b", "running", "start") is None
        default = await notify("b", "succeeded", "completed")  # `completed` is the default
        assert await notify("c", "succeeded", "completed") is None
        claimed = await outbox.claim_due(10, lease_seconds=30)
        assert {(d.id, d.url) for d in claimed} == {
            (started, "https://example.com/a"), (completed, "https://example.com/a"),
            (default, "https://example.com/b"),
        }
        assert await client.hget("job:a", "status") == b"succeeded"

    with_outbox(redis_url, body)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 5), (2, 10), (3, 20), (4, 40), (10, 60), (30, 60)):
        delays = [backoff_seconds(attempt, base=5, cap=60, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay < ceiling for delay in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one value


def test_dead_stream_key_is_namespaced() -> None:
    assert DEAD_KEY.startswith("webhook:") and DUE_KEY.startswith("webhook:")
