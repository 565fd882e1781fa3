"""The worker: claim → group → execute → finish, in a loop (DESIGN §4, §7).

    while not stop: claims = queue.claim(); batch, rest = first_batch(claims); release(rest); run(batch)

A lease thread renews every entry the worker holds, so a long batch is not taken over; a worker that dies
stops renewing and its jobs go to another worker after `lease_seconds`. A failed batch leaves its jobs
running with the error noted and releases their entries for a retry (retries run alone), until the job's
`max_attempts`-th attempt fails it for good (FINISH puts it on the dead-letter stream). Progress goes to
Redis every step; a job whose cancel was asked is dropped from its batch, and a batch whose jobs all
were cancelled stops at its next step. `stop` (SIGTERM) ends the loop after the current batch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.executor import (
    Candidate,
    Executor,
    JobInputError,
    PreparedJob,
    first_batch,
    image_count,
    png_bytes,
)
from service.queue import QueuedJob, Terminal, WorkerQueue
from service.settings import Settings
from service.worker_http import Heartbeat, serve_worker_http

if TYPE_CHECKING:
    from models.pipeline import Progress, UnCLIPPipeline

log = logging.getLogger("service.worker")


class JobCancelled(Exception):
    """Raised from the progress callback to stop a batch whose jobs were all cancelled."""


class WorkerMetrics:
    """Prometheus metrics of one worker, in their own registry (several workers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "unclip_worker_stage_seconds",
            "Time in each stage: prepare (one job's inputs), the pipeline's stages per batch "
            "(prior, invert, decoder, sr256, sr1024), encode (a batch's PNGs), finish (a batch's writes).",
            ["stage"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.batch_images = Histogram(
            "unclip_worker_batch_images", "Images per batch.", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.batch_jobs = Histogram(
            "unclip_worker_batch_jobs", "Jobs per batch.", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32),
        )
        self.jobs = Counter(
            "unclip_worker_jobs",
            "Jobs this worker handled, by op and outcome (succeeded, failed, cancelled, retried).",
            ["op", "outcome"],
            registry=self.registry,
        )


class LeaseKeeper:
    """A thread that renews the lease of every entry the worker holds, three times per lease."""

    def __init__(self, queue: WorkerQueue, lease_seconds: float):
        self.queue = queue
        self.interval = max(0.05, lease_seconds / 3)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def add(self, entries: Iterable[str]) -> None:
        with self._lock:
            self._held.update(entries)

    def discard(self, entries: Iterable[str]) -> None:
        with self._lock:
            self._held.difference_update(entries)

    def renew(self) -> None:
        entries = sorted(self.held())
        kept = set(self.queue.renew(entries))
        lost = [entry for entry in entries if entry not in kept]
        if lost:
            # Another worker took these over (we were too slow to renew); it runs them now.
            log.warning("lease lost", extra={"entries": lost})
            self.discard(lost)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except redis.RedisError:
                log.exception("lease renewal failed")


@dataclass
class RunningJob:
    job: QueuedJob
    prepared: PreparedJob
    attempt: int
    started: float = field(default_factory=time.monotonic)


class BatchProgress:
    """The pipeline's progress callback for one batch: writes progress on every job still wanted, notes
    the ones that should stop, raises JobCancelled once none is wanted, and times the pipeline stages."""

    def __init__(
        self, queue: WorkerQueue, jobs: list[RunningJob], metrics: WorkerMetrics, heartbeat: Heartbeat
    ):
        self.queue = queue
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.wanted = [running.job.id for running in jobs]
        self.stopped: set[str] = set()
        self._stage_started = time.monotonic()

    def __call__(self, progress: Progress) -> None:
        self.heartbeat.beat()
        if progress.step == progress.total:
            now = time.monotonic()
            self.metrics.stage_seconds.labels(progress.stage).observe(now - self._stage_started)
            self._stage_started = now
        stops = self.queue.progress(self.wanted, progress.stage, progress.step, progress.total)
        self.stopped.update(job_id for job_id, stop in zip(self.wanted, stops, strict=True) if stop)
        self.wanted = [job_id for job_id in self.wanted if job_id not in self.stopped]
        if not self.wanted:
            raise JobCancelled


class Worker:
    def __init__(
        self,
        queue: WorkerQueue,
        executor: Executor,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
        poll_seconds: float = 1.0,
        heartbeat: Heartbeat | None = None,
    ):
        self.queue = queue
        self.heartbeat = heartbeat or Heartbeat()
        self.executor = executor
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.poll_seconds = poll_seconds
        self.lease = LeaseKeeper(queue, settings.lease_seconds)

    def run(self, stop: threading.Event) -> None:
        """The loop; returns after the batch that runs when `stop` is set."""
        self.queue.ensure_group()
        self.lease.start()
        log.info("worker started", extra={"consumer": self.queue.consumer})
        try:
            while not stop.is_set():
                self.heartbeat.beat()
                try:
                    self.step()
                except redis.RedisError:
                    log.exception("redis call failed; retrying")
                    stop.wait(self.poll_seconds)
        finally:
            self.lease.stop()
            log.info("worker stopped", extra={"consumer": self.queue.consumer})

    def step(self) -> int:
        """Claims up to a batch, runs the first compatible batch, releases the rest. Returns jobs run."""
        claims = self.queue.claim(self.settings.max_batch_size, self.poll_seconds, exclude=self.lease.held())
        self.lease.add(claim.entry for claim in claims)
        try:
            candidates = []
            for claim in claims:
                job = self.queue.load(claim)
                if job is None:
                    self._drop(claim.entry)
                    continue
                try:
                    key = self.executor.batch_key(job.op, job.params)
                except JobInputError as error:
                    self._end(job, "failed", error=str(error))
                    continue
                candidates.append(Candidate(job, key, image_count(job.op, job.params), solo=job.attempts > 0))
            batch, rest = first_batch(candidates, self.settings.max_batch_size)
            self._release([job.claim.entry for job in rest])
            return self.run_batch(batch)
        finally:
            # Every claim is ended, released or dropped by now; after an error (Redis gone mid-batch)
            # the rest simply stop being renewed, and a lease later any worker takes them over.
            self.lease.discard(claim.entry for claim in claims)

    def run_batch(self, jobs: list[QueuedJob]) -> int:
        running = [started for job in jobs if (started := self._start(job)) is not None]
        if not running:
            return 0
        self.metrics.batch_jobs.observe(len(running))
        self.metrics.batch_images.observe(sum(image_count(r.job.op, r.job.params) for r in running))
        progress = BatchProgress(self.queue, running, self.metrics, self.heartbeat)
        try:
            outputs = self.executor.run([r.prepared for r in running], progress)
        except JobCancelled:
            outputs = [[] for _ in running]
        except Exception as error:
            log.exception("batch failed", extra={"job_ids": [r.job.id for r in running]})
            for r in running:
                if r.job.id in progress.stopped:
                    self._end(r.job, "cancelled")
                else:
                    self._retry_or_fail(r, f"{type(error).__name__}: {error}")
            return len(running)
        encode_started = time.monotonic()
        results = [[png_bytes(image) for image in images] for images in outputs]
        self.metrics.stage_seconds.labels("encode").observe(time.monotonic() - encode_started)
        finish_started = time.monotonic()
        for r, pngs in zip(running, results, strict=True):
            if r.job.id in progress.stopped:
                self._end(r.job, "cancelled")
            else:
                self._end(r.job, "succeeded", images=pngs, warnings=r.prepared.warnings, attempt=r)
        self.metrics.stage_seconds.labels("finish").observe(time.monotonic() - finish_started)
        return len(running)

    # ---- one job -----------------------------------------------------------------------------------

    def _start(self, job: QueuedJob) -> RunningJob | None:
        """START; the job to run, or None (skipped, or ended here: out of attempts, bad input)."""
        outcome, value = self.queue.start(job.id)
        if outcome == "exhausted":
            last = self.queue.last_error(job.id) or "its worker stopped renewing the lease (died or hung)"
            self._end(job, "failed", error=f"gave up after {value} attempts; last error: {last}")
            return None
        if outcome != "run":
            log.info("job skipped", extra={"job_id": job.id, "status": value or outcome})
            self._drop(job.claim.entry)
            return None
        log.info("job started", extra={"job_id": job.id, "op": job.op, "attempt": int(value)})
        prepare_started = time.monotonic()
        try:
            prepared = self.executor.prepare(job.op, job.params)
        except JobInputError as error:
            self._end(job, "failed", error=str(error))
            return None
        self.metrics.stage_seconds.labels("prepare").observe(time.monotonic() - prepare_started)
        return RunningJob(job, prepared, int(value))

    def _retry_or_fail(self, running: RunningJob, error: str) -> None:
        job = running.job
        if running.attempt >= self.settings.max_attempts:
            self._end(job, "failed", error=f"failed {running.attempt} times; last error: {error}")
            return
        log.warning("job will be retried",
                    extra={"job_id": job.id, "attempt": running.attempt, "error": error})
        self.metrics.jobs.labels(job.op, "retried").inc()
        self.queue.note_error(job.id, error)
        self._release([job.claim.entry])

    def _end(
        self,
        job: QueuedJob,
        status: Terminal,
        images: Sequence[bytes] = (),
        error: str | None = None,
        warnings: Sequence[str] = (),
        attempt: RunningJob | None = None,
    ) -> None:
        ended = self.queue.finish(job.id, job.claim.entry, status, images, error, warnings)
        self.lease.discard([job.claim.entry])
        if ended:
            self.metrics.jobs.labels(job.op, status).inc()
        extra = {"job_id": job.id, "status": status, "images": len(images), "ended_here": ended}
        if attempt is not None:
            extra["seconds"] = round(time.monotonic() - attempt.started, 3)
        (log.warning if status == "failed" else log.info)(
            "job ended" + (f": {error}" if error else ""), extra=extra
        )

    def _release(self, entries: list[str]) -> None:
        self.queue.release(entries)
        self.lease.discard(entries)

    def _drop(self, entry: str) -> None:
        self.queue.acknowledge(entry)
        self.lease.discard([entry])


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
    warm_up(pipeline, settings)
    return pipeline


def warm_up(pipeline: UnCLIPPipeline, settings: Settings) -> None:
    """Before the first job: compile the denoising steps for the batch sizes served (or, compiling off,
    one image at one step: CUDA context, cuDNN and Triton autotuning), so no client request pays for it."""
    from models.pipeline.runtime import warm_up as warm_up_pipeline

    report = warm_up_pipeline(
        pipeline, settings.compile, settings.worker_compile_batch_sizes(), settings.compile_cache_dir
    )
    log.info("pipeline warmed up", extra=report)


def run_worker(
    settings: Settings,
    pipeline: UnCLIPPipeline,
    stop: threading.Event,
    consumer: str | None = None,
    poll_seconds: float = 1.0,
) -> None:
    """Runs a worker on `pipeline` until `stop` is set (then drains its batch). Serves /metrics and /healthz
    on `settings.worker_metrics_port` when set (after the checkpoint is loaded: the startup probe waits)."""
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
    queue = WorkerQueue(client, settings, consumer or consumer_name(settings))
    worker = Worker(queue, Executor(pipeline, settings.max_batch_size), settings, metrics, poll_seconds,
                    heartbeat)
    try:
        worker.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        client.close()
