"""The gateway: a FastAPI app that queues jobs in Redis and serves their status and images. Torch-free.

uvicorn service.gateway.app:create_app --factory      # settings from UNCLIP_* (UNCLIP_REDIS_URL required)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import redis.asyncio
from fastapi import FastAPI
from PIL import Image

from service.gateway.body_limit import BodyLimitMiddleware
from service.gateway.errors import install_error_handlers
from service.gateway.metrics import GatewayMetrics, RequestMetricsMiddleware
from service.gateway.playground import playground_router
from service.gateway.routes import images_openai, jobs, models, ops
from service.gateway.routes.submission import job_view
from service.gateway.store import JobStore
from service.logs import configure_json_logging
from service.settings import Settings, get_settings
from service.webhooks.dispatcher import Dispatcher

DESCRIPTION = """\
Text-to-image generation with the unCLIP (DALL·E 2) stack: CLIP → diffusion prior → 64×64 decoder →
two upsamplers, up to 1024×1024.

**Native API (asynchronous).** `POST /v1/jobs` queues one of five operations — `generate`, `variation`,
`interpolate`, `text_diff`, `inpaint` — and answers `202` at once. Poll `GET /v1/jobs/{id}`, or stream
`GET /v1/jobs/{id}/events` (server-sent events), then fetch `GET /v1/jobs/{id}/images/{i}`. Images
travel as base64 PNG/JPEG. Errors: `{"detail": ...}`; `422` for a bad field or image, `413` for a body
over the limit, `429` with `Retry-After` when the queue is full.

**OpenAI-compatible (synchronous).** `/v1/images/generations`, `/v1/images/edits` and
`/v1/images/variations` follow OpenAI's dall-e-2 image API, so the `openai` client works with
`base_url="http://host:port/v1"`. Errors there use OpenAI's `{"error": {...}}` shape.

**Models.** `GET /v1/models` lists the checkpoints the live workers serve, with their ops, largest size
and parameter counts. An op (or a size) that no live worker can run is refused at submit with `422`
(`400` on the OpenAI routes) saying what to import; with no worker up yet, jobs queue.

**Auth.** With API keys configured, send `Authorization: Bearer <key>`; a job is visible only to the key
that created it (others get 404).
"""
TAGS = [
    {"name": "jobs", "description": "Queue a job, follow it, fetch its images, cancel it."},
    {"name": "openai", "description": "OpenAI-compatible image endpoints; they wait for the result."},
    {"name": "models", "description": "The checkpoints the live workers serve (OpenAI-compatible)."},
    {"name": "operations", "description": "Probes and metrics for operators (no API key)."},
]


def package_version() -> str:
    try:
        return version("unclip-serve")
    except PackageNotFoundError:
        return "0+unknown"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.redis_url:
        raise RuntimeError("the gateway needs a Redis: set UNCLIP_REDIS_URL (or run `unclip serve`)")
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    app.state.redis = client
    app.state.store = store = JobStore(client, settings)
    dispatcher, task = None, None
    if settings.webhook_secret:
        base_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")

        async def render(job_id: str) -> bytes | None:
            """A delivery's body: the job as GET /v1/jobs/{id} shows it now (None once it expired)."""
            job = await store.get_any(job_id)
            return job_view(job, base_url).model_dump_json().encode() if job else None

        dispatcher = Dispatcher.from_settings(client, settings, render, app.state.metrics.registry)
        task = asyncio.create_task(dispatcher.run())
    try:
        yield
    finally:
        if task is not None and dispatcher is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await dispatcher.aclose()
        await client.aclose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_json_logging(settings.log_level)
    # Pillow's own bomb guard agrees with ours; service.gateway.images checks the header first anyway.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels

    app = FastAPI(
        title="unclip-serve",
        version=package_version(),
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = GatewayMetrics()
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(images_openai.router)
    app.include_router(models.router)
    app.include_router(ops.router)
    app.include_router(playground_router())
    # The last one added runs first: metrics see every answer, including the 413s of the body limit.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    return app
