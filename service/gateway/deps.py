"""Dependencies the routes declare: the app's settings, its job store and its public URL. All `async def`:
FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request for a field read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.gateway.store import JobStore
from service.settings import Settings


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def job_store(request: Request) -> JobStore:
    return request.app.state.store


AppSettings = Annotated[Settings, Depends(app_settings)]
Store = Annotated[JobStore, Depends(job_store)]


async def public_base_url(request: Request) -> str:
    """Where clients reach this server: settings.public_url, else the scheme and host of the request."""
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


BaseUrl = Annotated[str, Depends(public_base_url)]


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
