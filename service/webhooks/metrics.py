"""Prometheus counters of webhook deliveries, registered on the registry the gateway passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.attempts = Counter(
            "unclip_webhook_attempts", "Webhook POSTs attempted (first tries and retries).", ["event"],
            registry=registry,
        )
        # outcome: succeeded (2xx) | failed (will be retried) | dead (given up) | superseded (a newer
        # progress delivery replaced a failed one)
        self.outcomes = Counter(
            "unclip_webhook_outcomes", "Webhook attempts by how they ended.", ["event", "outcome"],
            registry=registry,
        )
