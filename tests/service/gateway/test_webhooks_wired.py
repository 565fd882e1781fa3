"""Webhooks end to end: a job body's `webhook`, the deliveries its transitions enqueue, the gateway's
dispatcher, a receiver on 127.0.0.1 (real uvicorn, real Redis, the real worker loop on a fake pipeline)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from service.redis_server import free_port
from service.webhooks.signature import parse_secret, verify
from tests.service.fake_worker import fake_worker
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway, wait_for_job

SECRET = "whsec_" + base64.b64encode(b"unclip-webhook-test-key-32bytes!").decode()


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST; the first `fail` answers are 500."""

    def __init__(self, fail: int = 0, port: int = 0):
        self.deliveries: list[dict[str, Any]] = []
        self.answers = 0
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.answers += 1
                status = 500 if receiver.answers <= receiver.fail else 204
                if status == 204:
                    receiver.deliveries.append({"headers": dict(self.headers), "body": body})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def hook_settings(redis_url: str, **overrides: Any):
    return gateway_settings(redis_url, webhook_secret=SECRET, webhook_allow_hosts=["127.0.0.1"],
                            webhook_backoff_seconds=0.2, **overrides)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def submit(client: httpx.Client, url: str, **extra: Any) -> dict[str, Any]:
    body = {"op": "generate", "prompt": "a red circle", "size": 64, "seed": 3, "webhook": url, **extra}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_a_completed_job_is_delivered_signed_with_its_view(redis_url, receiver):
    settings = hook_settings(redis_url)
    with live_gateway(settings) as gateway, fake_worker(settings):
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            job = submit(client, receiver.url)
            done = wait_for_job(client, job["url"])
            wait_for(lambda: receiver.deliveries)
            time.sleep(0.2)  # the dispatcher settles the attempt after the answer
            metrics = client.get("/metrics").text
    assert 'unclip_webhook_outcomes_total{event="completed",outcome="succeeded"} 1.0' in metrics, metrics
    (delivery,) = receiver.deliveries
    verify(parse_secret(SECRET), delivery["headers"], delivery["body"])
    view = json.loads(delivery["body"])
    assert view["id"] == job["id"] and view["status"] == "succeeded" and view["image_count"] == 1
    assert view["finished_at"] == done["finished_at"]
    assert "webhook" not in view["params"]


def test_start_and_completed_when_asked(redis_url, receiver):
    settings = hook_settings(redis_url)
    with live_gateway(settings) as gateway, fake_worker(settings):
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            submit(client, receiver.url, webhook_events=["start", "completed"])
            wait_for(lambda: len(receiver.deliveries) == 2)
    statuses = sorted(json.loads(d["body"])["status"] for d in receiver.deliveries)
    assert statuses in (["running", "succeeded"], ["succeeded", "succeeded"])  # the view as it is when sent
    assert len({d["headers"]["webhook-id"] for d in receiver.deliveries}) == 2


def test_a_receiver_failing_twice_still_gets_it_and_the_job_did_not_wait(redis_url):
    receiver = Receiver(fail=2)
    try:
        settings = hook_settings(redis_url)
        with live_gateway(settings) as gateway, fake_worker(settings):
            with httpx.Client(base_url=gateway.url, timeout=20) as client:
                job = submit(client, receiver.url)
                done = wait_for_job(client, job["url"])
                assert done["status"] == "succeeded" and receiver.deliveries == []  # done before delivery
                wait_for(lambda: receiver.deliveries)
        assert receiver.answers == 3
        verify(parse_secret(SECRET), receiver.deliveries[0]["headers"], receiver.deliveries[0]["body"])
    finally:
        receiver.close()


def test_pending_deliveries_survive_a_gateway_and_worker_restart(redis_url):
    """The receiver is down while the job ends; gateway and worker stop; the receiver comes back at its
    address and a new gateway delivers what the old one could not."""
    port = free_port()
    settings = hook_settings(redis_url)
    with live_gateway(settings) as gateway, fake_worker(settings):
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            job = submit(client, f"http://127.0.0.1:{port}/hook")
            wait_for_job(client, job["url"])
            time.sleep(0.5)  # an attempt or two fail meanwhile
    receiver = Receiver(port=port)
    try:
        with live_gateway(settings), fake_worker(settings):
            wait_for(lambda: receiver.deliveries)
        assert json.loads(receiver.deliveries[0]["body"])["id"] == job["id"]
    finally:
        receiver.close()


@pytest.mark.parametrize(("url", "overrides", "message"), [
    ("http://10.0.0.1/hook", {}, "private"),
    ("ftp://example.com/hook", {}, "http"),
    ("http://127.0.0.1:1/hook", {"webhook_secret": None}, "UNCLIP_WEBHOOK_SECRET"),
])
def test_a_webhook_that_cannot_be_used_is_422(redis_url, url, overrides, message):
    settings = gateway_settings(redis_url, **{"webhook_secret": SECRET, **overrides})
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url) as client:
        response = client.post("/v1/jobs", json={"op": "generate", "prompt": "x", "webhook": url})
    assert response.status_code == 422
    assert message in response.text
