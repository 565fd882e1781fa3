"""The webhook dispatcher: an asyncio loop that drains the outbox (service.webhooks.outbox).

It runs as a background task of each gateway (torch-free, I/O bound); replicas share the work through
the outbox's claim leases. Each claimed delivery is one task: render the body (the job view of
GET /v1/jobs/{id}, through the injected `render`), check the URL's addresses again (DNS rebinding),
sign it, POST it to the checked address. A 2xx settles it; anything else, a timeout or a refused address
is retried with exponential backoff and jitter (a `Retry-After` is honoured, up to the backoff cap) until
`max_attempts`, then it is dead; `410 Gone` kills it at once, as the spec advises. No redirect is
followed. At most `concurrency` POSTs are in flight and each is cut at `timeout_seconds`, so a slow or
dead receiver holds one slot for a bounded time and never holds up the others (or any job: jobs only
write the outbox).

Deliveries are always signed: UNCLIP_WEBHOOK_SECRET is required for webhooks, and a job that asks for
one without it is refused at submit (see service.webhooks.subscription).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import redis.asyncio
from prometheus_client import CollectorRegistry

from service.settings import Settings
from service.webhooks.address_guard import AddressGuard
from service.webhooks.metrics import WebhookMetrics
from service.webhooks.outbox import Delivery, Outbox, backoff_seconds
from service.webhooks.signature import parse_secret, signed_headers

log = logging.getLogger("service.webhooks")

Render = Callable[[str], Awaitable[bytes | None]]  # job id -> JSON body, or None when the job is gone
USER_AGENT = "unclip-serve-webhooks/1"
LEASE_MARGIN_SECONDS = 10.0  # a claim outlives the attempt's timeout by this much (render, Redis)


class Dispatcher:
    def __init__(
        self,
        outbox: Outbox,
        render: Render,
        key: bytes,
        guard: AddressGuard,
        metrics: WebhookMetrics,
        timeout_seconds: float = 15.0,
        backoff_seconds: float = 5.0,
        backoff_max_seconds: float = 3600.0,
        concurrency: int = 32,
        poll_seconds: float = 0.5,
        lease_seconds: float | None = None,
        client: httpx.AsyncClient | None = None,
    ):
        self.outbox = outbox
        self.render = render
        self.key = key
        self.guard = guard
        self.metrics = metrics
        self.timeout_seconds = timeout_seconds
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        # A claim must outlive the attempt it covers, or a second dispatcher would start a duplicate.
        self.lease_seconds = lease_seconds or timeout_seconds + LEASE_MARGIN_SECONDS
        # No keep-alive: requests go to pinned IPs, and a pooled TLS connection opened for one host name
        # must not carry a request for another name on the same IP. trust_env=False: no proxy from the
        # environment, which would connect by name and undo the pinning.
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds), follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),
        )

    @classmethod
    def from_settings(
        cls, client: redis.asyncio.Redis, settings: Settings, render: Render, registry: CollectorRegistry
    ) -> Dispatcher:
        """The gateway's dispatcher; needs `settings.webhook_secret` (see check at submit)."""
        if not settings.webhook_secret:
            raise ValueError("webhooks need UNCLIP_WEBHOOK_SECRET (whsec_<base64>)")
        outbox = Outbox(client, ttl_seconds=settings.result_ttl_seconds,
                        max_attempts=settings.webhook_max_attempts)
        return cls(
            outbox, render, parse_secret(settings.webhook_secret), AddressGuard(settings.webhook_allow_hosts),
            WebhookMetrics(registry), timeout_seconds=settings.webhook_timeout_seconds,
            backoff_seconds=settings.webhook_backoff_seconds,
            backoff_max_seconds=settings.webhook_backoff_max_seconds,
        )

    async def run(self) -> None:
        """Claims and delivers until cancelled; Redis outages are logged and waited out."""
        in_flight: set[asyncio.Task[None]] = set()
        this_task = asyncio.current_task()
        try:
            while True:
                # On Python 3.11, asyncio.wait_for (redis-py uses it for socket timeouts) can swallow a
                # cancellation that lands as its command completes; the task still counts it.
                if this_task is not None and this_task.cancelling():
                    raise asyncio.CancelledError
                free = self.concurrency - len(in_flight)
                claimed: list[Delivery] = []
                if free > 0:
                    try:
                        claimed = await self.outbox.claim_due(free, self.lease_seconds)
                    except (redis.RedisError, OSError) as error:
                        log.warning("webhook claim failed", extra={"error": str(error)})
                for delivery in claimed:
                    task = asyncio.create_task(self.attempt(delivery))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if len(claimed) < free:  # nothing more due now
                    await asyncio.sleep(self.poll_seconds)
                elif in_flight:  # every slot busy: wait for one
                    await asyncio.wait(in_flight, timeout=self.poll_seconds,
                                       return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def run_once(self) -> int:
        """Claims what is due now (up to `concurrency`) and delivers it; returns how many were claimed."""
        claimed = await self.outbox.claim_due(self.concurrency, self.lease_seconds)
        await asyncio.gather(*(self.attempt(delivery) for delivery in claimed))
        return len(claimed)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def attempt(self, delivery: Delivery) -> None:
        """One try of one delivery, settled in the outbox. Never raises (but for cancellation): an
        unsettled attempt comes due again when its lease ends."""
        self.metrics.attempts.labels(delivery.event).inc()
        try:
            error, retry_after, final = await self._post(delivery)
            if error is None:
                await self.outbox.succeeded(delivery)
                outcome = "succeeded"
            else:
                delay = backoff_seconds(delivery.attempt, self.backoff_seconds, self.backoff_max_seconds)
                if retry_after is not None:
                    delay = min(max(delay, retry_after), self.backoff_max_seconds)
                outcome = await self.outbox.failed(delivery, error, delay, final=final)
                if outcome == "retry":
                    outcome = "failed"
                log.info("webhook attempt failed", extra={
                    "job_id": delivery.job_id, "webhook_id": delivery.id, "attempt": delivery.attempt,
                    "error": error, "outcome": outcome,
                })
        except Exception as error:  # Redis down while settling: the lease brings it back
            log.warning("webhook attempt not settled", extra={"webhook_id": delivery.id, "error": str(error)})
            return
        if outcome != "stale":
            self.metrics.outcomes.labels(delivery.event, outcome).inc()

    async def _post(self, delivery: Delivery) -> tuple[str | None, float | None, bool]:
        """(error or None, Retry-After seconds, final) of one POST."""
        try:
            body = await self.render(delivery.job_id)
        except Exception as error:
            return f"could not render the job view: {error}", None, False
        if body is None:
            return f"job {delivery.job_id} no longer exists", None, True
        timestamp = int(time.time())
        try:
            async with asyncio.timeout(self.timeout_seconds):
                target = await self.guard.check(delivery.url)
                url, pinned_headers, extensions = target.pinned_request()
                headers = {
                    "content-type": "application/json", "user-agent": USER_AGENT,
                    **signed_headers(self.key, delivery.id, timestamp, body), **pinned_headers,
                }
                async with self.client.stream("POST", url, content=body, headers=headers,
                                              extensions=extensions) as response:
                    status = response.status_code
                    retry_after = _retry_after_seconds(response.headers.get("retry-after"))
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.timeout_seconds:g} s", None, False
        except (httpx.HTTPError, OSError, ValueError) as error:  # ValueError: WebhookAddressError
            return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__, None, False
        if 200 <= status < 300:
            return None, None, False
        if status == 410:
            return "the receiver answered 410 Gone: it wants no more deliveries", None, True
        return f"the receiver answered {status}", retry_after, False


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (its delta-seconds form; an HTTP date is ignored)."""
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, float(value))  # type: ignore[arg-type]
    return None
