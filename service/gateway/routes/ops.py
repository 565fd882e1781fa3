"""Operations: liveness, readiness (Redis reachable) and Prometheus metrics. No API key needed."""

from __future__ import annotations

import asyncio

import redis.exceptions
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])
READY_TIMEOUT_SECONDS = 2.0  # a Redis that accepts connections but does not answer is not ready either


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis answers",
    responses={
        503: {
            "description": "Redis is unreachable.",
            "content": {
                "application/json": {"example": {"status": "unavailable", "redis": "ConnectionError: ..."}}
            },
        }
    },
)
async def readyz(request: Request) -> JSONResponse:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await request.app.state.redis.ping()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as error:
        reason = f"{type(error).__name__}: {error}"
        return JSONResponse({"status": "unavailable", "redis": reason}, status_code=503)
    return JSONResponse({"status": "ok", "redis": "ok"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
async def metrics(request: Request) -> Response:
    """Queue depth and jobs by status are read from Redis now; HTTP counters are this process's."""
    gateway_metrics, store = request.app.state.metrics, request.app.state.store
    try:
        gateway_metrics.set_queue(await store.queue_depth(), await store.counts_by_status())
    except (redis.exceptions.RedisError, OSError):
        pass  # still serve the HTTP metrics; /readyz reports the outage
    return Response(generate_latest(gateway_metrics.registry), media_type=CONTENT_TYPE_LATEST)
