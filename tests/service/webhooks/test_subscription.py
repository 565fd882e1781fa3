"""What submit checks about a webhook request, and the settings it reads."""

from __future__ import annotations

import asyncio
import base64

import pytest
from pydantic import ValidationError

from service.settings import Settings
from service.webhooks.address_guard import AddressGuard
from service.webhooks.subscription import WebhookRequestError, check_subscription


async def public(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


GUARD = AddressGuard(resolver=public)


def subscribe(url: str, events: list[str] | None, secret_configured: bool = True) -> dict[str, str]:
    return asyncio.run(check_subscription(url, events, secret_configured, GUARD))


def test_a_valid_request_gives_the_job_hash_fields_in_a_fixed_event_order() -> None:
    assert subscribe("https://hooks.example.com/x", None) == {
        "webhook": "https://hooks.example.com/x", "webhook_events": "completed"}
    assert subscribe("https://hooks.example.com/x", ["completed", "start", "start"])["webhook_events"] == (
        "start,completed")


@pytest.mark.parametrize(
    ("url", "events", "secret_configured", "message"),
    [
        ("https://hooks.example.com/x", None, False, "UNCLIP_WEBHOOK_SECRET"),
        ("https://hooks.example.com/x", ["done"], True, r"unknown webhook_events \['done'\]"),
        ("https://hooks.example.com/x", [], True, "webhook_events is empty"),
        ("http://127.0.0.1:9000/x", None, True, "loopback address.*UNCLIP_WEBHOOK_ALLOW_HOSTS"),
        ("file:///etc/passwd", None, True, "must start with https:// or http://"),
    ],
)
def test_bad_requests_say_what_to_fix(url: str, events: list[str] | None, secret_configured: bool,
                                      message: str) -> None:
    with pytest.raises(WebhookRequestError, match=message):
        subscribe(url, events, secret_configured)


def test_settings_read_the_webhook_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    monkeypatch.setenv("UNCLIP_WEBHOOK_SECRET", secret)
    monkeypatch.setenv("UNCLIP_WEBHOOK_ALLOW_HOSTS", "localhost, 127.0.0.1,,receiver.internal")
    settings = Settings()
    assert settings.webhook_secret == secret
    assert settings.webhook_allow_hosts == ["localhost", "127.0.0.1", "receiver.internal"]


def test_a_malformed_secret_stops_the_start_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNCLIP_WEBHOOK_SECRET", "hunter2")
    with pytest.raises(ValidationError, match="starts with 'whsec_'"):
        Settings()
