"""`unclip serve | gateway | worker` (DESIGN §6).

- serve: an embedded redis-server when no Redis URL is set, the gateway under uvicorn in the main thread,
  and one worker thread on the configured (or shipped default) checkpoint. SIGTERM / Ctrl-C: uvicorn stops
  taking requests, the worker finishes its batch, then Redis stops.
- gateway: uvicorn only. Never imports torch (nor does this module at import time).
- worker: the worker loop in the main thread; SIGTERM / Ctrl-C finish the current batch and exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn

from service.logs import configure_json_logging
from service.settings import Settings

log = logging.getLogger("service.serve")
GRACEFUL_HTTP_SHUTDOWN_SECONDS = 5  # open event streams must not hold a shutdown up forever


def settings_from(args: argparse.Namespace) -> Settings:
    """UNCLIP_* environment, overridden by the flags that were given."""
    flags = {name: getattr(args, name, None) for name in ("host", "port", "checkpoint", "redis_url")}
    return Settings(**{name: value for name, value in flags.items() if value is not None})


def playground_url(settings: Settings) -> str:
    """Where a browser opens the playground: the public URL, else the bound address (a wildcard bind
    is reached through the loopback)."""
    if settings.public_url:
        return settings.public_url.rstrip("/") + "/"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/"


class _Gateway(uvicorn.Server):
    """uvicorn that prints the playground's address once it listens, and tells the worker thread to stop
    when a signal asks the process to exit."""

    def __init__(self, config: uvicorn.Config, stop: threading.Event, playground: str):
        super().__init__(config)
        self._stop_worker = stop
        self._playground = playground

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"playground: {self._playground}", flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._stop_worker.set()
        super().handle_exit(sig, frame)


def _uvicorn_config(settings: Settings) -> uvicorn.Config:
    from service.gateway.app import create_app

    return uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
        lifespan="on", timeout_graceful_shutdown=GRACEFUL_HTTP_SHUTDOWN_SECONDS,
        access_log=False,  # the gateway logs every request itself, as JSON
    )


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(sig: int, frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(sig).name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_gateway(settings: Settings) -> int:
    _stop_on_signals(threading.Event())  # only so that uvicorn's re-raised signal ends in a clean exit
    uvicorn.Server(_uvicorn_config(settings)).run()
    return 0


def run_worker_command(settings: Settings) -> int:
    from service.worker.process import load_pipeline, run_worker, served_card

    stop = threading.Event()
    _stop_on_signals(stop)
    pipeline = load_pipeline(settings)
    if not stop.is_set():
        run_worker(settings, pipeline, stop, card=served_card(settings))
    return 0


def run_serve(settings: Settings) -> int:
    from service.redis_server import EmbeddedRedis

    stop = threading.Event()
    # uvicorn restores these after it stops and re-raises the signal it got: they make that harmless.
    _stop_on_signals(stop)
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis().start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
        log.info("embedded redis started", extra={"url": embedded.url, "pid": embedded.process.pid})
    try:
        gateway = _Gateway(_uvicorn_config(settings), stop, playground_url(settings))
        failures: list[BaseException] = []
        worker = threading.Thread(target=_worker_thread, args=(settings, stop, gateway, failures),
                                  name="worker")
        worker.start()
        try:
            gateway.run()
        finally:
            stop.set()
            worker.join()
        return 1 if failures else 0
    finally:
        if embedded is not None:
            embedded.stop()
            log.info("embedded redis stopped", extra={"pid": embedded.process.pid})


def _worker_thread(settings: Settings, stop: threading.Event, gateway: uvicorn.Server,
                   failures: list[BaseException]) -> None:
    """Loads the pipeline and runs the worker; if either fails, the whole `serve` goes down with it."""
    from service.worker.process import load_pipeline, run_worker, served_card

    try:
        pipeline = load_pipeline(settings)
        if not stop.is_set():
            # The gateway's /metrics already serves this process; the worker's go on their own port.
            run_worker(settings, pipeline, stop, card=served_card(settings))
    except BaseException as error:
        log.exception("worker failed; stopping")
        failures.append(error)
        gateway.should_exit = True


COMMANDS: dict[str, Any] = {"serve": run_serve, "gateway": run_gateway, "worker": run_worker_command}


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_json_logging(settings.log_level)
    return int(COMMANDS[args.command](settings))
