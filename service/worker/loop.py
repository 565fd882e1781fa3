"""The worker: claim → group → execute → finish, in a loop (DESIGN §4, §7).

    while not stop: claims = queue.claim(); batch, rest = first_batch(claims); release(rest); run(batch)

A lease thread renews every entry the worker holds, so a long batch is not taken over; a worker that dies
stops renewing and its jobs go to another worker after `lease_seconds`, where they batch again. A failed
batch leaves its jobs running with the error noted and releases their entries for a retry (a job whose
attempt raised runs alone), until the job's `max_attempts`-th attempt fails it for good (FINISH puts it
on the dead-letter stream). Progress goes to Redis every step; a job whose cancel was asked is dropped
from its batch, and a batch whose jobs all were cancelled stops at its next step. `stop` (SIGTERM) ends
the loop after the current batch.
An op the checkpoint cannot run (`UnsupportedOperation`, e.g. no CLIP image encoder) fails its jobs at
once with the reason: a retry would fail the same way. While it runs, the worker's model card (what it
serves) is in Redis (`service.worker.card`), renewed with the leases and withdrawn when it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from models.capabilities import UnsupportedOperation
from models.contract import SCORE_KEY, image_count, revised_prompt
from service.jobs.codec import png_bytes
from service.jobs.states import Terminal
from service.settings import Settings
from service.worker.batching import Candidate, first_batch
from service.worker.card import CardPublisher
from service.worker.executor import Executor, JobInputError, PreparedJob
from service.worker.leases import LeaseKeeper
from service.worker.metrics import WorkerMetrics
from service.worker.probe import Heartbeat
from service.worker.progress import BatchProgress, JobCancelled
from service.worker.queue import QueuedJob, WorkerQueue

log = logging.getLogger("service.worker")


@dataclass
class RunningJob:
    job: QueuedJob
    prepared: PreparedJob
    attempt: int
    started: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(
        self,
        queue: WorkerQueue,
        executor: Executor,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
        poll_seconds: float = 1.0,
        heartbeat: Heartbeat | None = None,
        card: CardPublisher | None = None,
    ):
        self.queue = queue
        self.card = card
        self.heartbeat = heartbeat or Heartbeat()
        self.executor = executor
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.poll_seconds = poll_seconds
        self.lease = LeaseKeeper(queue, settings.lease_seconds, card.publish if card else None)

    def run(self, stop: threading.Event) -> None:
        """The loop; returns after the batch that runs when `stop` is set."""
        self.queue.ensure_group()
        if self.card is not None:
            self.card.publish()
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
            self._withdraw_card()
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
                # a job whose attempt raised runs alone; one taken over from a dead worker batches again
                images = image_count(job.op, job.params) * key.sampling.best_of  # candidates, with best_of
                candidates.append(Candidate(job, key, images, solo=job.failed_before))
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
        progress = BatchProgress(self.queue, [r.job.id for r in running], self.metrics, self.heartbeat)
        try:
            outputs = self.executor.run([r.prepared for r in running], progress)
        except JobCancelled:
            outputs = [[] for _ in running]
        except UnsupportedOperation as error:
            for r in running:
                if r.job.id in progress.stopped:
                    self._end(r.job, "cancelled")
                else:
                    self._end(r.job, "failed", error=str(error))
            return len(running)
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
        scores = [[image.info.get(SCORE_KEY) for image in images] for images in outputs]
        revised = [revised_prompt(images) for images in outputs]
        self.metrics.stage_seconds.labels("encode").observe(time.monotonic() - encode_started)
        finish_started = time.monotonic()
        for r, pngs, job_scores, job_revised in zip(running, results, scores, revised, strict=True):
            if r.job.id in progress.stopped:
                self._end(r.job, "cancelled")
            else:
                self._end(r.job, "succeeded", images=pngs, warnings=r.prepared.warnings, attempt=r,
                          scores=job_scores if any(score is not None for score in job_scores) else None,
                          revised_prompt=job_revised)
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
        scores: Sequence[float | None] | None = None,
        revised_prompt: str | None = None,
    ) -> None:
        ended = self.queue.finish(job.id, job.claim.entry, status, images, error, warnings, scores,
                                  revised_prompt)
        self.lease.discard([job.claim.entry])
        if ended:
            self.metrics.jobs.labels(job.op, status).inc()
        extra = {"job_id": job.id, "status": status, "images": len(images), "ended_here": ended}
        if attempt is not None:
            extra["seconds"] = round(time.monotonic() - attempt.started, 3)
        (log.warning if status == "failed" else log.info)(
            "job ended" + (f": {error}" if error else ""), extra=extra
        )

    def _withdraw_card(self) -> None:
        if self.card is None:
            return
        try:
            self.card.withdraw()
        except redis.RedisError:
            log.exception("could not withdraw the model card; it expires with the lease")

    def _release(self, entries: list[str]) -> None:
        self.queue.release(entries)
        self.lease.discard(entries)

    def _drop(self, entry: str) -> None:
        self.queue.acknowledge(entry)
        self.lease.discard([entry])
