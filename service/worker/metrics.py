"""The worker's Prometheus metrics (served by `service.worker.probe`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


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
