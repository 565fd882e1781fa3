"""The dispatcher against a real Redis and a real receiver on 127.0.0.1 (allow-listed). The pinned-IP
path is checked with httpx's MockTransport, so no test ever connects beyond loopback."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

from service.webhooks.address_guard import AddressGuard
from service.webhooks.dispatcher import Dispatcher
from service.webhooks.metrics import WebhookMetrics
from service.webhooks.outbox import Outbox, delivery_key
from service.webhooks.signature import parse_secret, verify
from tests.service.webhooks.receiver import Receiver

KEY = parse_secret("whsec_" + base64.b64encode(bytes(range(32))).decode())
TIMEOUT = 1.0


def job_view_body(job_id: str) -> bytes:
    return json.dumps({"id": job_id, "status": "succeeded"}).encode()


async def render_job_view(job_id: str) -> bytes | None:
    return None if job_id.startswith("gone") else job_view_body(job_id)


def make_dispatcher(
    client: redis.asyncio.Redis,
    registry: CollectorRegistry | None = None,
    max_attempts: int = 3,
    concurrency: int = 4,
    lease_seconds: float | None = None,
    guard: AddressGuard | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> Dispatcher:
    return Dispatcher(
        Outbox(client, ttl_seconds=600, max_attempts=max_attempts), render_job_view, KEY,
        guard or AddressGuard(allow_hosts=["127.0.0.1"]), WebhookMetrics(registry or CollectorRegistry()),
        timeout_seconds=TIMEOUT, backoff_seconds=0.05, backoff_max_seconds=0.2, concurrency=concurrency,
        poll_seconds=0.02, lease_seconds=lease_seconds, client=http_client,
    )


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


def outcome(registry: CollectorRegistry, event: str, name: str) -> float:
    return registry.get_sample_value("unclip_webhook_outcomes_total", {"event": event, "outcome": name}) or 0


@pytest.fixture
def receiver() -> Receiver:
    with Receiver(KEY) as running:
        yield running


def run_async(redis_url: str, body: Callable[[redis.asyncio.Redis], Awaitable[None]]) -> None:
    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await body(client)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_a_delivery_arrives_signed_and_carries_the_job_view(redis_url: str, receiver: Receiver) -> None:
    async def body(client: redis.asyncio.Redis) -> None:
        registry = CollectorRegistry()
        dispatcher = make_dispatcher(client, registry)
        delivery_id = await dispatcher.outbox.enqueue("job1", "completed", receiver.base_url + "/ok")
        assert await dispatcher.run_once() == 1
        await dispatcher.aclose()
        [request] = receiver.received("/ok")
        assert request.verified
        verify(KEY, request.headers, request.body)  # what a user's receiver runs
        assert request.headers["webhook-id"] == delivery_id
        assert request.headers["content-type"] == "application/json"
        assert request.body == job_view_body("job1")
        assert not await client.exists(delivery_key(delivery_id)) and await dispatcher.outbox.pending() == 0
        assert registry.get_sample_value("unclip_webhook_attempts_total", {"event": "completed"}) == 1
        assert outcome(registry, "completed", "succeeded") == 1

    run_async(redis_url, body)


def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_try(
    redis_url: str, receiver: Receiver
) -> None:
    async def body(client: redis.asyncio.Redis) -> None:
        registry = CollectorRegistry()
        dispatcher = make_dispatcher(client, registry)
        # The enqueueing side (a job transition) only writes Redis: nothing was sent, nothing waited on.
        delivery_id = await dispatcher.outbox.enqueue("job1", "completed", receiver.base_url + "/fail-twice")
        assert receiver.requests == []
        task = asyncio.create_task(dispatcher.run())
        await until(lambda: _gone(client, delivery_id))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dispatcher.aclose()
        requests = receiver.received("/fail-twice")
        assert len(requests) == 3
        assert {r.headers["webhook-id"] for r in requests} == {delivery_id}  # stable across retries
        assert all(r.verified for r in requests)
        assert outcome(registry, "completed", "failed") == 2
        assert outcome(registry, "completed", "succeeded") == 1
        assert await dispatcher.outbox.dead() == []

    run_async(redis_url, body)


async def _gone(client: redis.asyncio.Redis, delivery_id: str) -> bool:
    return not await client.exists(delivery_key(delivery_id))


def test_a_receiver_that_never_answers_does_not_hold_up_another(redis_url: str, receiver: Receiver) -> None:
    async def body(client: redis.asyncio.Redis) -> None:
        dispatcher = make_dispatcher(client, max_attempts=5)
        hung = await dispatcher.outbox.enqueue("job1", "completed", receiver.base_url + "/hang")
        task = asyncio.create_task(dispatcher.run())
        await until(lambda: asyncio.to_thread(receiver.hang_started.wait, 0.01))
        quick = await dispatcher.outbox.enqueue("job2", "completed", receiver.base_url + "/ok")
        await until(lambda: _gone(client, quick))
        [hang_request] = receiver.received("/hang")
        assert hang_request.finished == 0.0  # still hanging when the other was delivered
        # The hung attempt is cut at the timeout and scheduled again.
        await until(lambda: _has_error(client, hung), timeout=TIMEOUT + 10)
        error = await client.hget(delivery_key(hung), "last_error")
        assert error == f"no answer within {TIMEOUT:g} s".encode()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dispatcher.aclose()

    run_async(redis_url, body)


async def _has_error(client: redis.asyncio.Redis, delivery_id: str) -> bool:
    return bool(await client.hget(delivery_key(delivery_id), "last_error"))


@pytest.mark.parametrize(
    ("path", "job_id", "attempts", "error"),
    [
        ("/always-500", "job1", 3, "the receiver answered 500"),
        ("/gone", "job1", 1, "the receiver answered 410 Gone: it wants no more deliveries"),
        ("/ok", "gone1", 1, "job gone1 no longer exists"),
    ],
)
def test_failures_end_in_the_dead_stream_with_the_error(
    redis_url: str, receiver: Receiver, path: str, job_id: str, attempts: int, error: str
) -> None:
    async def body(client: redis.asyncio.Redis) -> None:
        registry = CollectorRegistry()
        dispatcher = make_dispatcher(client, registry, max_attempts=3)
        delivery_id = await dispatcher.outbox.enqueue(job_id, "completed", receiver.base_url + path)
        task = asyncio.create_task(dispatcher.run())
        await until(lambda: _gone(client, delivery_id))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dispatcher.aclose()
        [dead] = await dispatcher.outbox.dead()
        assert (dead.id, dead.attempts, dead.error) == (delivery_id, attempts, error)
        assert len(receiver.received(path)) == (0 if job_id.startswith("gone") else attempts)
        assert outcome(registry, "completed", "dead") == 1
        assert outcome(registry, "completed", "failed") == attempts - 1

    run_async(redis_url, body)


def test_deliveries_pending_at_a_restart_are_delivered_by_the_next_dispatcher(
    redis_url: str, receiver: Receiver
) -> None:
    async def first_life(client: redis.asyncio.Redis) -> list[str]:
        dispatcher = make_dispatcher(client, lease_seconds=TIMEOUT + 0.5)
        ids = [await dispatcher.outbox.enqueue("job1", "completed", receiver.base_url + "/hang")]
        task = asyncio.create_task(dispatcher.run())
        await until(lambda: asyncio.to_thread(receiver.hang_started.wait, 0.01))
        ids += [await dispatcher.outbox.enqueue(f"job{i}", "completed", receiver.base_url + "/ok")
                for i in (2, 3)]
        task.cancel()  # the gateway stops with one attempt in flight and two deliveries waiting
        await asyncio.gather(task, return_exceptions=True)
        await dispatcher.aclose()
        return ids

    async def second_life(client: redis.asyncio.Redis) -> None:
        dispatcher = make_dispatcher(client)
        task = asyncio.create_task(dispatcher.run())
        for delivery_id in ids:
            await until(lambda delivery_id=delivery_id: _gone(client, delivery_id))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await dispatcher.aclose()

    ids: list[str] = []

    async def both() -> None:
        nonlocal ids
        for life in (first_life, second_life):
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                if life is first_life:
                    ids = await first_life(client)
                    receiver.hang_release.set()  # the receiver answers from now on
                else:
                    await second_life(client)
            finally:
                await client.aclose()

    asyncio.run(both())
    delivered = {r.headers["webhook-id"] for r in receiver.requests if r.finished}
    assert set(ids) <= delivered
    assert [r.headers["webhook-id"] for r in receiver.received("/hang")] == [ids[0], ids[0]]  # at least once


def test_two_dispatchers_never_deliver_one_record_twice(redis_url: str, receiver: Receiver) -> None:
    async def body(client: redis.asyncio.Redis) -> None:
        other_client = redis.asyncio.Redis.from_url(redis_url)
        registries = [CollectorRegistry(), CollectorRegistry()]
        dispatchers = [make_dispatcher(client, registries[0]), make_dispatcher(other_client, registries[1])]
        ids = [await dispatchers[0].outbox.enqueue(f"job{i}", "completed", receiver.base_url + "/slow")
               for i in range(16)]
        tasks = [asyncio.create_task(dispatcher.run()) for dispatcher in dispatchers]
        await until(lambda: _all_gone(client, ids))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for dispatcher in dispatchers:
            await dispatcher.aclose()
        await other_client.aclose()
        received = sorted(r.headers["webhook-id"] for r in receiver.received("/slow"))
        assert received == sorted(ids)  # each exactly once
        shares = [outcome(registry, "completed", "succeeded") for registry in registries]
        assert sum(shares) == 16 and min(shares) > 0  # both did work

    run_async(redis_url, body)


async def _all_gone(client: redis.asyncio.Redis, ids: list[str]) -> bool:
    return not await client.exists(*(delivery_key(delivery_id) for delivery_id in ids))


PUBLIC = "93.184.215.14"


def test_delivery_connects_to_the_checked_address_and_refuses_a_rebound_name(redis_url: str) -> None:
    answers = [[PUBLIC], [PUBLIC], ["127.0.0.1"]]  # submit check, first delivery, then the name rebinds

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "hooks.example.com"
        return answers.pop(0)

    sent: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    async def body(client: redis.asyncio.Redis) -> None:
        guard = AddressGuard(resolver=resolver)
        url = "https://hooks.example.com/unclip"
        await guard.check(url)  # what submit does
        dispatcher = make_dispatcher(client, guard=guard,
                                     http_client=httpx.AsyncClient(transport=httpx.MockTransport(transport)))
        await dispatcher.outbox.enqueue("job1", "completed", url)
        await dispatcher.run_once()
        [request] = sent
        assert str(request.url) == f"https://{PUBLIC}/unclip"
        assert request.headers["host"] == "hooks.example.com"
        assert request.extensions["sni_hostname"] == "hooks.example.com"
        verify(KEY, dict(request.headers), request.content)

        rebound = await dispatcher.outbox.enqueue("job2", "completed", url)
        await dispatcher.run_once()
        assert len(sent) == 1  # nothing was sent to the rebound address
        error = (await client.hget(delivery_key(rebound), "last_error")).decode()
        assert "resolves to 127.0.0.1, a loopback address" in error
        await dispatcher.aclose()

    run_async(redis_url, body)


def test_from_settings_needs_a_secret_and_takes_the_webhook_settings(redis_url: str) -> None:
    from service.settings import Settings

    async def body(client: redis.asyncio.Redis) -> None:
        with pytest.raises(ValueError, match="UNCLIP_WEBHOOK_SECRET"):
            Dispatcher.from_settings(client, Settings(webhook_secret=None), render_job_view,
                                     CollectorRegistry())
        settings = Settings(
            webhook_secret="whsec_" + base64.b64encode(bytes(range(32))).decode(),
            webhook_allow_hosts=["127.0.0.1"], webhook_timeout_seconds=2.5, webhook_max_attempts=4,
            result_ttl_seconds=1234,
        )
        dispatcher = Dispatcher.from_settings(client, settings, render_job_view, CollectorRegistry())
        assert dispatcher.key == KEY and dispatcher.guard.allow_hosts == {"127.0.0.1"}
        outbox = dispatcher.outbox
        assert (dispatcher.timeout_seconds, outbox.max_attempts, outbox.ttl_seconds) == (2.5, 4, 1234)
        assert dispatcher.lease_seconds > dispatcher.timeout_seconds
        await dispatcher.aclose()

    run_async(redis_url, body)
