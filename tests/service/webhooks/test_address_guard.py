"""The SSRF guard: form checks, address checks (stub resolvers; nothing is ever connected to), the
allow list, and the pinned request that defeats DNS rebinding."""

from __future__ import annotations

import asyncio
import socket

import pytest

from service.webhooks.address_guard import (
    AddressGuard,
    CheckedTarget,
    WebhookAddressError,
    refusal_reason,
    system_resolver,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700:4700::1111"


def stub_resolver(table: dict[str, list[str]]):
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def check(guard: AddressGuard, url: str) -> CheckedTarget:
    return asyncio.run(guard.check(url))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://127.8.9.10/", "loopback"),
        ("http://[::1]:9000/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://[fd00:ec2::254]/", "private"),
        ("http://100.64.0.1/", "not publicly routable"),
        ("http://224.0.1.1/", "multicast"),
        ("http://[::ffff:127.0.0.1]/", "loopback address (127.0.0.1, inside the IPv6 address)"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[2002:7f00:1::1]/", "loopback address (127.0.0.1"),  # 6to4
        ("http://[64:ff9b::a00:1]/", "private-network address (10.0.0.1"),  # NAT64
        ("http://localhost:8000/", "internal name"),
        ("http://LocalHost./", "internal name"),
        ("http://metadata.google.internal/computeMetadata/v1/", "internal name"),
        ("http://instance-data/", "internal name"),
    ],
)
def test_internal_addresses_are_refused(url: str, reason: str) -> None:
    resolver = stub_resolver({})
    with pytest.raises(WebhookAddressError, match="UNCLIP_WEBHOOK_ALLOW_HOSTS") as refused:
        check(AddressGuard(resolver=resolver), url)
    assert reason in str(refused.value)
    assert resolver.calls == []  # literals and internal names need no lookup


def test_a_name_is_refused_when_any_of_its_addresses_is_internal() -> None:
    resolver = stub_resolver({"hooks.example.com": [PUBLIC_V4, "10.0.0.5"]})
    with pytest.raises(WebhookAddressError, match=r"resolves to 10\.0\.0\.5, a private-network address"):
        check(AddressGuard(resolver=resolver), "https://hooks.example.com/unclip")


def test_a_public_name_passes_with_its_addresses() -> None:
    resolver = stub_resolver({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6]})
    target = check(AddressGuard(resolver=resolver), "https://Hooks.Example.com./unclip?x=1")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert target.addresses == (PUBLIC_V4, PUBLIC_V6)
    assert resolver.calls == ["hooks.example.com"]


def test_public_literals_pass_without_a_lookup() -> None:
    resolver = stub_resolver({})
    assert check(AddressGuard(resolver=resolver), f"http://{PUBLIC_V4}:8080/x").addresses == (PUBLIC_V4,)
    assert check(AddressGuard(resolver=resolver), f"http://[{PUBLIC_V6}]/x").addresses == (PUBLIC_V6,)
    assert resolver.calls == []


def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(WebhookAddressError, match=r"'nowhere\.example' does not resolve"):
        check(AddressGuard(resolver=stub_resolver({})), "https://nowhere.example/")


def test_the_allow_list_lets_listed_hosts_through_and_only_them() -> None:
    guard = AddressGuard(allow_hosts=["127.0.0.1", " LocalHost ", "receiver.internal"],
                         resolver=stub_resolver({}))
    for url in ("http://127.0.0.1:8000/hook", "http://localhost:9/", "http://receiver.internal/x"):
        target = check(guard, url)
        assert target.addresses == ()  # called by name, unchecked
        assert target.pinned_request() == (url, {}, {})
    for url in ("http://127.0.0.2/", "http://[::1]/", "http://10.0.0.1/"):
        with pytest.raises(WebhookAddressError):
            check(guard, url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file", "must start with https:// or http://"),
        ("example.com/hook", "must start with https:// or http://"),
        ("http:///hook", "has no host"),
        ("https://user:pw@example.com/", "must not carry credentials"),
        ("https://example.com:99999/", "malformed"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com/" + "a" * 2100, "over 2048 characters"),
    ],
)
def test_malformed_urls_are_refused_with_what_to_fix(url: str, message: str) -> None:
    with pytest.raises(WebhookAddressError, match=message):
        check(AddressGuard(resolver=stub_resolver({"example.com": [PUBLIC_V4]})), url)


def test_the_pinned_request_connects_to_the_checked_address_under_the_original_name() -> None:
    resolver = stub_resolver({"hooks.example.com": [PUBLIC_V6, PUBLIC_V4]})
    target = check(AddressGuard(resolver=resolver), "https://hooks.example.com:8443/in?a=1#frag")
    url, headers, extensions = target.pinned_request()
    assert url == f"https://[{PUBLIC_V6}]:8443/in?a=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}  # TLS checks the name, not the IP

    plain = check(AddressGuard(resolver=stub_resolver({"h.example.org": [PUBLIC_V4]})), "http://h.example.org")
    assert plain.pinned_request() == (f"http://{PUBLIC_V4}/", {"Host": "h.example.org"}, {})


def test_refusal_reason_passes_public_addresses() -> None:
    import ipaddress

    for address in (PUBLIC_V4, PUBLIC_V6, "8.8.8.8", "64:ff9b::808:808"):
        assert refusal_reason(ipaddress.ip_address(address)) is None


def test_the_system_resolver_runs_off_the_event_loop() -> None:
    async def resolve_while_ticking() -> tuple[list[str], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        addresses = await system_resolver("127.0.0.1", 80)
        ticker.cancel()
        return addresses, ticks

    addresses, ticks = asyncio.run(resolve_while_ticking())
    assert addresses == ["127.0.0.1"]
    assert ticks >= 1
