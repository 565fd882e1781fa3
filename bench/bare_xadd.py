"""The floor bench/gateway.py measures the gateway against: a bare FastAPI app whose one route parses the
JSON body and queues it with one XADD, with no validation, auth, metrics, logging or job hash.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.bare_xadd:create_app --factory

POST /v1/jobs {"op": ..., ...} → 202 {"id": "<32 hex>", "status": "queued"}
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

STREAM = "bench:bare"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    try:
        yield
    finally:
        await app.state.redis.aclose()


async def submit(request: Request) -> JSONResponse:
    raw = await request.body()
    body = json.loads(raw)
    job_id = uuid.uuid4().hex
    await request.app.state.redis.xadd(STREAM, {"id": job_id, "op": body["op"], "body": raw})
    return JSONResponse({"id": job_id, "status": "queued"}, status_code=202)


def create_app() -> FastAPI:
    app = FastAPI(lifespan=lifespan, openapi_url=None)
    app.add_api_route("/v1/jobs", submit, methods=["POST"])
    return app
