"""Prometheus metrics of the gateway: HTTP requests (counted and timed per route template) and the queue
(depth and jobs by status, read from Redis at scrape time so every gateway replica reports the truth).
Each app has its own registry, so several apps in one process (tests) do not collide."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs.states import STATUSES

log = logging.getLogger("service.access")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "unclip_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "unclip_http_request_duration_seconds",
            "Time to the end of the response, per route.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.queue_depth = Gauge(
            "unclip_queue_depth", "Jobs waiting in the stream for a worker.", registry=self.registry
        )
        self.jobs = Gauge("unclip_jobs", "Jobs in Redis by status.", ["status"], registry=self.registry)

    def set_queue(self, depth: int, counts: dict[str, int]) -> None:
        self.queue_depth.set(depth)
        for status in sorted(set(STATUSES) | set(counts)):
            self.jobs.labels(status=status).set(counts.get(status, 0))


def route_label(scope: Scope) -> str:
    """The route template (`/v1/jobs/{job_id}`), never the raw path: job ids would explode cardinality."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestMetricsMiddleware:
    """Counts, times and logs (one JSON line, with `job_id` on the job routes) every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics
        # (method, route, status) → its counter and histogram children: `labels()` checks and locks on
        # every call, a dict lookup does not. Bounded: the routes are templates, the statuses a few.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            requests, latency = self.children(scope["method"], route, status)
            requests.inc()
            latency.observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                log_request(scope, route, status, elapsed)

    def children(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        key = (method, route, status)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route),
            )
        return found


def log_request(scope: Scope, route: str, status: int, elapsed: float) -> None:
    fields = {
        "method": scope["method"],
        "path": scope["path"],
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
    }
    job_id = scope.get("path_params", {}).get("job_id")
    if job_id is not None:
        fields["job_id"] = job_id
    log.info("request", extra=fields)
