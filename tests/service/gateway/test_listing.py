"""GET /v1/jobs: the caller's own jobs, newest first, paged with a cursor (real HTTP, real Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway


@pytest.fixture
def clients(redis_url: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with live_gateway(gateway_settings(redis_url, api_keys=["alice", "bob"])) as gateway:
        with (httpx.Client(base_url=gateway.url, headers={"Authorization": "Bearer alice"}) as alice,
              httpx.Client(base_url=gateway.url, headers={"Authorization": "Bearer bob"}) as bob):
            yield alice, bob


def submit(client: httpx.Client, prompt: str) -> str:
    response = client.post("/v1/jobs", json={"op": "generate", "prompt": prompt, "size": 64})
    assert response.status_code == 202
    return response.json()["id"]


def test_pages_of_own_jobs_newest_first(clients):
    alice, bob = clients
    mine = [submit(alice, f"alice {i}") for i in range(5)]
    theirs = [submit(bob, f"bob {i}") for i in range(2)]

    first = alice.get("/v1/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in first["data"]] == mine[::-1][:2]
    assert first["has_more"] is True and first["next_after"] == mine[3]
    second = alice.get("/v1/jobs", params={"limit": 2, "after": first["next_after"]}).json()
    assert [job["id"] for job in second["data"]] == [mine[2], mine[1]]
    last = alice.get("/v1/jobs", params={"limit": 2, "after": second["next_after"]}).json()
    assert [job["id"] for job in last["data"]] == [mine[0]] and last["has_more"] is False

    everything = alice.get("/v1/jobs").json()
    assert [job["id"] for job in everything["data"]] == mine[::-1]
    assert everything["data"][0]["params"]["prompt"] == "alice 4"
    assert [job["id"] for job in bob.get("/v1/jobs").json()["data"]] == theirs[::-1]


def test_another_keys_cursor_is_refused(clients):
    alice, bob = clients
    theirs = submit(bob, "bob")
    response = alice.get("/v1/jobs", params={"after": theirs})
    assert response.status_code == 404 and "after" in response.text


def test_expired_jobs_drop_out(clients, redis_url):
    alice, _ = clients
    old, new = submit(alice, "old"), submit(alice, "new")
    client = redis.Redis.from_url(redis_url)
    client.delete(f"job:{old}")  # as its TTL would
    client.close()
    page = alice.get("/v1/jobs", params={"limit": 1}).json()
    assert [job["id"] for job in page["data"]] == [new] and page["has_more"] is False


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_limit_out_of_bounds_is_422(clients, limit):
    alice, _ = clients
    assert alice.get("/v1/jobs", params={"limit": limit}).status_code == 422


def test_an_empty_list(clients):
    alice, _ = clients
    assert alice.get("/v1/jobs").json() == {"data": [], "has_more": False, "next_after": None}
