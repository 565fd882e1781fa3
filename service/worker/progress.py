"""The pipeline's progress callback for one batch: progress to Redis, cancels back to the batch."""

from __future__ import annotations

import time

from models.contract import Progress
from service.worker.metrics import WorkerMetrics
from service.worker.probe import Heartbeat
from service.worker.queue import WorkerQueue


class JobCancelled(Exception):
    """Raised from the progress callback to stop a batch whose jobs were all cancelled."""


class BatchProgress:
    """The pipeline's progress callback for one batch: writes progress on every job still wanted, notes
    the ones that should stop, raises JobCancelled once none is wanted, and times the pipeline stages."""

    def __init__(
        self, queue: WorkerQueue, job_ids: list[str], metrics: WorkerMetrics, heartbeat: Heartbeat
    ):
        self.queue = queue
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.wanted = list(job_ids)
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
