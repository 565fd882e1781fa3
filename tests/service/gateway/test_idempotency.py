"""Idempotency-Key over real HTTP (uvicorn) and a real Redis: one key, one job, across Redis restarts too."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from service.redis_server import EmbeddedRedis
from tests.service.fake_worker import fake_worker
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway, wait_for_job

GENERATE = {"op": "generate", "prompt": "a red circle", "n": 1, "size": 64}


def job_ids(redis_url: str) -> set[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {key.removeprefix("job:") for key in client.scan_iter("job:*") if key.count(":") == 1}
    finally:
        client.close()


@pytest.fixture
def two_key_gateway(redis_url: str) -> Iterator[str]:
    """A gateway with keys "alice" and "bob" and no worker: jobs stay queued."""
    with live_gateway(gateway_settings(redis_url, api_keys=["alice", "bob"])) as gateway:
        yield gateway.url


def client_for(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=20, headers={"Authorization": f"Bearer {key}"})


def test_concurrent_posts_with_one_key_make_one_job(two_key_gateway, redis_url):
    barrier = threading.Barrier(8)

    def post(_: int) -> httpx.Response:
        with client_for(two_key_gateway, "alice") as client:
            barrier.wait()
            return client.post("/v1/jobs", json=GENERATE, headers={"Idempotency-Key": "order-17"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert [r.status_code for r in responses] == [202] * 8, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert job_ids(redis_url) == ids
    assert len({r.json()["params"]["seed"] for r in responses}) == 1  # the one job, seed and all


def test_the_same_key_with_another_body_is_422(two_key_gateway, redis_url):
    with client_for(two_key_gateway, "alice") as client:
        first = client.post("/v1/jobs", json=GENERATE, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202
        other = client.post("/v1/jobs", json={**GENERATE, "prompt": "a blue square"},
                            headers={"Idempotency-Key": "k1"})
        assert other.status_code == 422
        assert "different request" in other.text and first.json()["id"] in other.text
        # a fresh key is a fresh job
        fresh = client.post("/v1/jobs", json={**GENERATE, "prompt": "a blue square"},
                            headers={"Idempotency-Key": "k2"})
        assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
    assert len(job_ids(redis_url)) == 2


def test_keys_are_per_owner(two_key_gateway, redis_url):
    with client_for(two_key_gateway, "alice") as alice, client_for(two_key_gateway, "bob") as bob:
        a = alice.post("/v1/jobs", json=GENERATE, headers={"Idempotency-Key": "shared"})
        b = bob.post("/v1/jobs", json={**GENERATE, "prompt": "other"}, headers={"Idempotency-Key": "shared"})
        assert a.status_code == b.status_code == 202, b.text
        assert a.json()["id"] != b.json()["id"]
        assert bob.get(f"/v1/jobs/{a.json()['id']}").status_code == 404
    assert len(job_ids(redis_url)) == 2


def test_without_a_key_every_post_is_a_new_job(two_key_gateway, redis_url):
    with client_for(two_key_gateway, "alice") as client:
        ids = {client.post("/v1/jobs", json=GENERATE).json()["id"] for _ in range(2)}
    assert len(ids) == 2


def test_a_bad_key_header_is_422(two_key_gateway):
    with client_for(two_key_gateway, "alice") as client:
        response = client.post("/v1/jobs", json=GENERATE, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.text


def test_a_replayed_key_after_the_job_finished_returns_it(redis_url):
    settings = gateway_settings(redis_url)
    with live_gateway(settings) as gateway, fake_worker(settings):
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            body = {"prompt": "a red circle", "size": "64x64", "response_format": "url"}
            first = client.post("/v1/images/generations", json=body, headers={"Idempotency-Key": "gen-1"})
            again = client.post("/v1/images/generations", json=body, headers={"Idempotency-Key": "gen-1"})
            assert first.status_code == again.status_code == 200, again.text
            assert first.json()["data"] == again.json()["data"]
            other = client.post("/v1/images/generations", json={**body, "n": 2},
                                headers={"Idempotency-Key": "gen-1"})
            assert other.status_code == 400 and "different request" in other.json()["error"]["message"]
    assert len(job_ids(redis_url)) == 1


def test_a_redis_restart_during_an_openai_request_leaves_exactly_one_job(tmp_path: Path):
    """The request is waiting on its queued job when Redis goes down and comes back (with its append-only
    file); the gateway rides it out and answers with that job, and no second job exists."""
    server = EmbeddedRedis(data_dir=tmp_path, appendonly=True).start()
    try:
        settings = gateway_settings(server.url, sync_timeout_seconds=30)
        with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=40) as client:
            result: dict[str, httpx.Response] = {}
            request = threading.Thread(target=lambda: result.update(response=client.post(
                "/v1/images/generations", json={"prompt": "a red circle", "size": "64x64"})))
            request.start()
            wait_until(lambda: len(job_ids(server.url)) == 1)
            server.stop()
            server = EmbeddedRedis(port=server.port, data_dir=tmp_path, appendonly=True).start()
            with fake_worker(settings):
                request.join(timeout=40)
            response = result["response"]
            assert response.status_code == 200, response.text
            (job_id,) = job_ids(server.url)
            assert f"/v1/jobs/{job_id}/images/0" in response.json()["data"][0]["url"]
            assert wait_for_job(client, f"/v1/jobs/{job_id}")["status"] == "succeeded"
    finally:
        server.stop()


def test_an_openai_request_that_outlives_a_redis_outage_says_not_to_retry(tmp_path: Path):
    server = EmbeddedRedis(data_dir=tmp_path, appendonly=True).start()
    try:
        settings = gateway_settings(server.url, sync_timeout_seconds=2)
        with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=40) as client:
            result: dict[str, httpx.Response] = {}
            request = threading.Thread(target=lambda: result.update(response=client.post(
                "/v1/images/generations", json={"prompt": "a red circle", "size": "64x64"})))
            request.start()
            wait_until(lambda: len(job_ids(server.url)) == 1)
            (job_id,) = job_ids(server.url)
            server.stop()
            request.join(timeout=40)
            response = result["response"]
            assert response.status_code == 503
            assert response.headers["x-should-retry"] == "false"
            assert job_id in response.json()["error"]["message"]
    finally:
        server.stop()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_retry_after_a_frozen_redis_gets_the_job_the_first_attempt_made(tmp_path: Path):
    """Redis freezes (SIGSTOP) while a POST is in flight; the client gives up and retries with its key once
    Redis is back. The first attempt's job was created meanwhile, and the retry gets it: one job."""
    server = EmbeddedRedis(data_dir=tmp_path).start()
    try:
        with live_gateway(gateway_settings(server.url)) as gateway:
            headers = {"Idempotency-Key": "frozen-1"}
            with httpx.Client(base_url=gateway.url, timeout=20) as client:
                assert client.get("/readyz").status_code == 200  # the gateway's connection is open
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                with httpx.Client(base_url=gateway.url, timeout=1) as impatient:
                    with pytest.raises(httpx.TimeoutException):
                        impatient.post("/v1/jobs", json=GENERATE, headers=headers)
            finally:
                server.process.send_signal(signal.SIGCONT)
            wait_until(lambda: len(job_ids(server.url)) == 1)
            with httpx.Client(base_url=gateway.url, timeout=20) as client:
                retry = client.post("/v1/jobs", json=GENERATE, headers=headers)
            assert retry.status_code == 202
            assert job_ids(server.url) == {retry.json()["id"]}
    finally:
        server.stop()
