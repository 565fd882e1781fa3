"""A real uvicorn server running the gateway in a background thread, for the HTTP tests."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import redis.asyncio
import uvicorn
from PIL import Image

from service.app import create_app
from service.redis_server import free_port
from service.settings import Settings


def gateway_settings(redis_url: str, **overrides: Any) -> Settings:
    return Settings(redis_url=redis_url, **overrides)


class LiveGateway:
    """The app served by uvicorn on a free port, in a background thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 10.0) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def live_gateway(settings: Settings) -> Iterator[LiveGateway]:
    gateway = LiveGateway(settings).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def rendered_result(op: str, params: dict[str, Any], index: int) -> Image.Image:
    """What the test executor makes, so tests can tell it reached the worker intact: generate → a solid
    colour whose red channel is (seed + index) % 256; inpaint → its mask (white = repaint); the other ops
    → their (first) input image. Always `params["size"]` square."""
    size = params["size"]
    if op == "generate":
        return Image.new("RGB", (size, size), ((params["seed"] + index) % 256, 0, 0))
    source = params["mask"] if op == "inpaint" else params.get("image") or params["image_a"]
    picture = Image.open(io.BytesIO(base64.b64decode(source)))
    return picture.convert("RGB").resize((size, size), Image.Resampling.NEAREST)


@contextmanager
def background_worker(settings: Settings, step_delay: float = 0.0) -> Iterator[None]:
    from service.jobs import JobStore, stub_work_one

    stop = threading.Event()

    def encode(job: Any, index: int) -> bytes:
        buffer = io.BytesIO()
        rendered_result(job.op, job.params, index).save(buffer, format="PNG")
        return buffer.getvalue()

    async def loop() -> None:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        store = JobStore(client, settings)
        while not stop.is_set():
            if await stub_work_one(store, encode) is None:
                await asyncio.sleep(0.02)
        await client.aclose()

    thread = threading.Thread(target=asyncio.run, args=(loop(),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def wait_for_job(client: httpx.Client, job_url: str, timeout: float = 20.0) -> dict[str, Any]:
    """Polls a job until it is final; returns its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(job_url).raise_for_status().json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job['status']} after {timeout} s: {job}")
        time.sleep(0.05)
