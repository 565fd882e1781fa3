"""The SSRF guard of webhooks: a webhook URL may only reach a public address.

Checked twice:
- at submit (`AddressGuard.check`): the URL's form, then every address its host resolves to; a refusal
  is a `WebhookAddressError` whose message says what to fix (the gateway answers it with a 422);
- at delivery (`AddressGuard.check` again, then `CheckedTarget.pinned_request`): the host is resolved
  and checked anew, and the request goes to the checked IP itself, with the original `Host` header and,
  for https, the original name for SNI and certificate checks. A name that resolved to a public address
  at submit and to 127.0.0.1 later (DNS rebinding) is refused, and no second lookup happens between the
  check and the connection.

A host is refused when ANY of its addresses is loopback, private, link-local (169.254.169.254, where
clouds serve instance metadata, among them), multicast, reserved, unspecified, or otherwise not globally
routable; IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) are judged by that
address too. Well-known metadata host names are refused by name. Hosts listed in
UNCLIP_WEBHOOK_ALLOW_HOSTS (exact names or IP literals, for local development) skip the address checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_CHARS = 2048
METADATA_HOSTNAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.internal", "metadata.tencentyun.com", "metadata.platformequinix.com",
})
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class WebhookAddressError(ValueError):
    """A webhook URL the service will not call; the message says why and what to change."""


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to. The event loop runs getaddrinfo in its thread pool."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # (server, client): the client is where traffic ends up
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why a webhook may not reach `address` (e.g. "a loopback address"), or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{reason} ({inner}, inside the IPv6 address)"
            return None
    for test, reason in (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (where cloud instance metadata lives)"),
        (address.is_private, "a private-network address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "an address that is not publicly routable"),
    ):
        if test:
            return reason
    return None


@dataclass(frozen=True)
class CheckedTarget:
    """A URL that passed the guard, and the addresses its host resolved to (empty: an allowed host)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    def pinned_request(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """(url, headers, httpx extensions) that connect to the checked address, not to a fresh lookup.

        An allowed host is called by its name as given."""
        if not self.addresses:
            return self.url, {}, {}
        parts = urlsplit(self.url)
        address = self.addresses[0]
        literal = f"[{address}]" if ":" in address else address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = parts.netloc.rsplit("@", 1)[-1]
        extensions = {"sni_hostname": self.host} if self.scheme == "https" else {}
        return url, {"Host": host_header}, extensions


class AddressGuard:
    def __init__(self, allow_hosts: Iterable[str] = (), resolver: Resolver = system_resolver):
        self.allow_hosts = frozenset(_normal_host(host) for host in allow_hosts if host.strip())
        self.resolver = resolver

    async def check(self, url: str) -> CheckedTarget:
        """The checked target of `url`; raises WebhookAddressError when a webhook may not call it."""
        scheme, host, port = self.parse(url)
        if host in self.allow_hosts:
            return CheckedTarget(url=url, scheme=scheme, host=host, port=port, addresses=())
        allow_hint = "(for local development, list it in UNCLIP_WEBHOOK_ALLOW_HOSTS)"
        if host in METADATA_HOSTNAMES or host == "localhost" or host.endswith((".localhost", ".internal")):
            raise WebhookAddressError(f"webhook host {host!r} is an internal name {allow_hint}")
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            addresses = await self._resolve(host, port)
        for address in addresses:
            reason = refusal_reason(address)
            if reason is not None:
                raise WebhookAddressError(
                    f"webhook host {host!r} resolves to {address}, {reason}; a webhook must reach a public "
                    f"address {allow_hint}"
                )
        return CheckedTarget(url=url, scheme=scheme, host=host, port=port,
                             addresses=tuple(str(address) for address in addresses))

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            resolved = await self.resolver(host, port)
        except OSError as error:
            raise WebhookAddressError(f"webhook host {host!r} does not resolve: {error}") from None
        if not resolved:
            raise WebhookAddressError(f"webhook host {host!r} resolves to no address")
        return [ipaddress.ip_address(address.split("%", 1)[0]) for address in resolved]

    @staticmethod
    def parse(url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of a well-formed http(s) URL; raises WebhookAddressError otherwise."""
        if len(url) > MAX_URL_CHARS:
            raise WebhookAddressError(f"the webhook URL is over {MAX_URL_CHARS} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise WebhookAddressError(f"the webhook URL is malformed: {error}") from None
        if parts.scheme not in ("http", "https"):
            raise WebhookAddressError("the webhook URL must start with https:// or http://")
        if not parts.hostname:
            raise WebhookAddressError("the webhook URL has no host")
        if parts.username is not None or parts.password is not None:
            raise WebhookAddressError(
                "the webhook URL must not carry credentials (user:password@); deliveries are signed instead"
            )
        if any(character.isspace() or ord(character) < 32 for character in url):
            raise WebhookAddressError("the webhook URL contains whitespace or control characters")
        default_port = 443 if parts.scheme == "https" else 80
        return parts.scheme, _normal_host(parts.hostname), port or default_port


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".").strip("[]")
