"""Dependencies the routes declare: the app's settings and its job store (both live on `app.state`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.jobs import JobStore
from service.settings import Settings


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def job_store(request: Request) -> JobStore:
    return request.app.state.store


AppSettings = Annotated[Settings, Depends(app_settings)]
Store = Annotated[JobStore, Depends(job_store)]


def public_base_url(request: Request) -> str:
    """Where clients reach this server: settings.public_url, else the scheme and host of the request."""
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


BaseUrl = Annotated[str, Depends(public_base_url)]
