"""The worker's probe port: /metrics from its registry, /healthz that turns 503 when the loop stalls."""

import httpx
from prometheus_client import CollectorRegistry, Counter

from service.redis_server import free_port
from service.worker.probe import Heartbeat, serve_worker_http


def test_healthz_follows_the_heartbeat_and_metrics_come_from_the_registry() -> None:
    registry = CollectorRegistry()
    Counter("probe_test_jobs", "jobs", registry=registry).inc(3)
    heartbeat = Heartbeat(stall_seconds=0.2)
    port = free_port()
    server = serve_worker_http(port, registry, heartbeat)
    try:
        base = f"http://127.0.0.1:{port}"
        assert "probe_test_jobs_total 3.0" in httpx.get(f"{base}/metrics").text
        heartbeat.beat()
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        heartbeat.last -= 1.0  # the loop has not beaten for a second
        stalled = httpx.get(f"{base}/healthz")
        assert stalled.status_code == 503 and stalled.json()["status"] == "stalled"
        heartbeat.beat()
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/other").status_code == 404
    finally:
        server.shutdown()
        server.server_close()
