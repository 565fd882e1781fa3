"""The worker process: load and warm up the checkpoint, then run the loop with its probe server until
SIGTERM (`unclip worker`, or one thread of `unclip serve`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from service.settings import Settings
from service.worker.card import CardPublisher, checkpoint_card
from service.worker.executor import Executor
from service.worker.loop import Worker
from service.worker.metrics import WorkerMetrics
from service.worker.probe import Heartbeat, serve_worker_http
from service.worker.queue import WorkerQueue

if TYPE_CHECKING:
    from models.pipeline import UnCLIPPipeline

log = logging.getLogger("service.worker")


def consumer_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


def load_pipeline(settings: Settings) -> UnCLIPPipeline:
    """The pipeline on the configured checkpoint (the shipped default when none), device and dtype."""
    from models.attention import set_default_backend
    from models.checkpoint import default_checkpoint
    from models.pipeline import UnCLIPPipeline

    set_default_backend(settings.attention_backend)
    folder = settings.checkpoint or default_checkpoint()
    log.info("loading checkpoint", extra={"checkpoint": str(folder), "device": settings.device})
    pipeline = UnCLIPPipeline.from_checkpoint(folder, device=settings.device, dtype=settings.dtype)
    warm_up(pipeline)
    return pipeline


def served_card(settings: Settings) -> dict[str, Any]:
    """The model card of the checkpoint `load_pipeline` loads."""
    from models.checkpoint import default_checkpoint

    return checkpoint_card(settings.checkpoint or default_checkpoint())


def warm_up(pipeline: UnCLIPPipeline) -> None:
    """One image through every stage at one step each, before the first job: CUDA context, cuDNN and
    Triton autotuning (cached per shape class) happen here, not inside a client's request."""
    started = time.monotonic()
    steps = {name: 1 for name in ("prior_steps", "decoder_steps", "sr256_steps", "sr1024_steps")}
    pipeline.generate(["warm-up"], [0], pipeline.sampling(**steps))
    log.info("pipeline warmed up", extra={"seconds": round(time.monotonic() - started, 3)})


def run_worker(
    settings: Settings,
    pipeline: UnCLIPPipeline,
    stop: threading.Event,
    consumer: str | None = None,
    poll_seconds: float = 1.0,
    card: dict[str, Any] | None = None,
) -> None:
    """Runs a worker on `pipeline` until `stop` is set (then drains its batch). Serves /metrics and /healthz
    on `settings.worker_metrics_port` when set (after the checkpoint is loaded: the startup probe waits).
    Publishes `card` (`served_card`: what the checkpoint can do) while it runs; None publishes nothing,
    and the gateway then takes every op as it would with no worker up."""
    if not settings.redis_url:
        raise RuntimeError("the worker needs a Redis: set UNCLIP_REDIS_URL (or run `unclip serve`)")
    client = redis.Redis.from_url(settings.redis_url)
    metrics = WorkerMetrics()
    heartbeat = Heartbeat()
    server = None
    if settings.worker_metrics_port is not None:
        try:
            server = serve_worker_http(settings.worker_metrics_port, metrics.registry, heartbeat)
        except OSError as error:  # a busy port must not keep `unclip serve` from working
            log.warning("no worker metrics endpoint", extra={"port": settings.worker_metrics_port,
                                                              "error": str(error)})
    name = consumer or consumer_name(settings)
    queue = WorkerQueue(client, settings, name)
    publisher = None
    if card is not None:
        publisher = CardPublisher(client, settings.stream, name, card, settings.lease_seconds)
    executor = Executor(pipeline, settings.max_batch_size, (card or {}).get("refusals"))
    worker = Worker(queue, executor, settings, metrics, poll_seconds, heartbeat, publisher)
    try:
        worker.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        client.close()
