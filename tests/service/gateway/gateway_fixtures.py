"""A real uvicorn server running the gateway in a background thread, for the HTTP tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from service.gateway.app import create_app
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
