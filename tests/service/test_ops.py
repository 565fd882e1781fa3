"""Operations: /healthz, /readyz (503 while Redis is down), /metrics (queue depth, jobs by status, HTTP
requests per route template), the JSON access log with the job id, and a gateway that never loads torch."""

from __future__ import annotations

import json
import logging

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.logs import JsonFormatter
from service.redis_server import EmbeddedRedis
from tests.service.fake_worker import fake_worker
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway, wait_for_job

GENERATE = {"op": "generate", "prompt": "a red circle", "size": 64}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_readyz_follows_redis_and_healthz_does_not():
    with EmbeddedRedis() as server:
        settings = gateway_settings(server.url, api_keys=["k"])
        with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=10) as client:
            assert client.get("/healthz").json() == {"status": "ok"}  # no key needed for probes
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json() == {"status": "ok", "redis": "ok"}
            server.stop()
            down = client.get("/readyz")
            assert down.status_code == 503
            assert down.json()["status"] == "unavailable"
            assert client.get("/healthz").status_code == 200
            assert client.get("/metrics").status_code == 200  # HTTP metrics still served
            refused = client.post("/v1/jobs", json=GENERATE, headers={"Authorization": "Bearer k"})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            assert "Redis" in refused.json()["detail"] and "unavailable" in refused.json()["detail"]


def test_metrics_show_queue_depth_jobs_by_status_and_requests_per_route(redis_url):
    settings = gateway_settings(redis_url)
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=20) as client:
        with fake_worker(settings):
            done = client.post("/v1/jobs", json=GENERATE).json()
            wait_for_job(client, done["url"])
        queued = [client.post("/v1/jobs", json=GENERATE).json() for _ in range(3)]
        client.delete(queued[0]["url"])
        client.get("/v1/jobs/no-such-job")
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    assert values[("unclip_queue_depth", ())] == 2
    jobs = {status: values[("unclip_jobs", (("status", status),))] for status in
            ("queued", "running", "succeeded", "failed", "cancelled")}
    assert jobs == {"queued": 2, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 1}
    requests = "unclip_http_requests_total"
    by_route = {labels: value for (name, labels), value in values.items() if name == requests}
    assert by_route[(("method", "POST"), ("route", "/v1/jobs"), ("status", "202"))] == 4
    assert by_route[(("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404"))] == 1
    assert not any(done["id"] in dict(labels)["route"] for labels in by_route)  # templates, never raw paths


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_log_lines_are_json_with_the_job_id(redis_url):
    lines = Lines()
    service_logger = logging.getLogger("service")
    service_logger.addHandler(lines)
    try:
        gateway = live_gateway(gateway_settings(redis_url))
        with gateway as live, httpx.Client(base_url=live.url) as client:
            job = client.post("/v1/jobs", json=GENERATE).json()
            client.get(job["url"])
    finally:
        service_logger.removeHandler(lines)
    submitted = next(line for line in lines.lines if line["message"] == "job submitted")
    assert submitted["job_id"] == job["id"] and submitted["level"] == "info"
    polled = [line for line in lines.lines if line["message"] == "request" and line["method"] == "GET"]
    assert polled[-1]["job_id"] == job["id"]
    assert polled[-1]["route"] == "/v1/jobs/{job_id}" and polled[-1]["status"] == 200
    assert polled[-1]["time"].endswith("Z") and polled[-1]["duration_ms"] >= 0
