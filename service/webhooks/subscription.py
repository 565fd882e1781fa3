"""What submit checks about a job's `webhook` and `webhook_events`, and the job-hash fields it stores.

The submit path calls `check_subscription` before queueing; a WebhookRequestError (WebhookAddressError
is one) becomes a 422 with its message. The returned fields go into the job hash in the submit script,
where the transitions' `webhook_notify` (service.webhooks.outbox) reads them.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.webhooks.address_guard import AddressGuard, WebhookAddressError
from service.webhooks.outbox import DEFAULT_EVENTS, EVENTS


class WebhookRequestError(ValueError):
    """A webhook request the service refuses; the message says what to fix."""


async def check_subscription(
    url: str, events: Iterable[str] | None, secret_configured: bool, guard: AddressGuard
) -> dict[str, str]:
    """The job-hash fields {"webhook": url, "webhook_events": "start,completed"} of a valid request."""
    if not secret_configured:
        raise WebhookRequestError(
            "this server sends no webhooks: its operator must set UNCLIP_WEBHOOK_SECRET (whsec_<base64>) "
            "so that deliveries can be signed"
        )
    wanted = list(DEFAULT_EVENTS) if events is None else list(events)
    unknown = sorted(set(wanted) - set(EVENTS))
    if unknown:
        raise WebhookRequestError(f"unknown webhook_events {unknown}; choose from {list(EVENTS)}")
    if not wanted:
        raise WebhookRequestError(f"webhook_events is empty; choose from {list(EVENTS)} or leave it out")
    try:
        await guard.check(url)
    except WebhookAddressError as error:
        raise WebhookRequestError(str(error)) from None
    return {"webhook": url, "webhook_events": ",".join(event for event in EVENTS if event in wanted)}
