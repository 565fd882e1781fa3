"""What the routes declare besides their own parameters: the call's context and the Idempotency-Key header.

FastAPI solves every declared dependency on every request, at a price (about 75k instructions, 15 µs of a
2-core machine's CPU, each), so a route gets its whole context from one: `Caller` (service.gateway.auth),
the API-key check, which answers a `CallContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header, Request

from service.gateway.store import JobStore
from service.settings import Settings


@dataclass(frozen=True)
class CallContext:
    """Who calls (the owner id of the API key, "" with no keys configured) and what the routes need of the
    app: its settings, its job store and the base URL clients reach it at."""

    owner: str
    request: Request

    @property
    def settings(self) -> Settings:
        return self.request.app.state.settings

    @property
    def store(self) -> JobStore:
        return self.request.app.state.store

    @property
    def base_url(self) -> str:
        """settings.public_url, else the scheme and host of the request."""
        return (self.settings.public_url or request_base_url(self.request)).rstrip("/")


REMEMBERED_BASE_URLS = 64
_base_urls: dict[tuple[Any, ...], str] = {}


def request_base_url(request: Request) -> str:
    """str(request.base_url), remembered per what Starlette builds it from (scheme, server, root path, Host
    header): building it costs ~3 µs, a few % of a submission. Host headers are the client's to choose,
    so the memory is emptied when full."""
    scope = request.scope
    roots = (scope.get("root_path"), scope.get("app_root_path"))
    key = (scope.get("scheme"), scope.get("server"), roots, request.headers.get("host"))
    found = _base_urls.get(key)
    if found is None:
        if len(_base_urls) >= REMEMBERED_BASE_URLS:
            _base_urls.clear()
        found = _base_urls[key] = str(request.base_url)
    return found


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="Any printable ASCII string (a UUID, say). Within the result TTL, the same key and the "
        "same request return the same job instead of a new one; the same key with another request is "
        "refused. Keys are per API key.",
    ),
]
