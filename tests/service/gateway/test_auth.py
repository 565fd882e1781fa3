"""Bearer keys: 401 without a known key, and each key sees only its own jobs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.gateway.auth import is_known_key, owner_id
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway

GENERATE = {"op": "generate", "prompt": "a red circle", "size": 64}


@pytest.fixture
def gateway_url(redis_url: str) -> Iterator[str]:
    with live_gateway(gateway_settings(redis_url, api_keys=["alpha-key", "beta-key"])) as gateway:
        yield gateway.url


def client_for(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=10)


def test_owner_ids_are_stable_distinct_and_do_not_contain_the_key():
    assert owner_id("alpha-key") == owner_id("alpha-key")
    assert owner_id("alpha-key") != owner_id("beta-key")
    assert "alpha-key" not in owner_id("alpha-key")
    assert is_known_key("beta-key", ["alpha-key", "beta-key"])
    assert not is_known_key("beta", ["alpha-key", "beta-key"])


def test_no_key_or_a_wrong_key_is_401_with_a_bearer_challenge(gateway_url):
    with client_for(gateway_url, None) as anonymous, client_for(gateway_url, "wrong") as wrong:
        missing = anonymous.post("/v1/jobs", json=GENERATE)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in missing.json()["detail"]
        unknown = wrong.get("/v1/jobs/anything")
        assert unknown.status_code == 401
        assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
        openai_style = anonymous.post("/v1/images/generations", json={"prompt": "x"})
        assert openai_style.status_code == 401
        assert openai_style.json()["error"]["code"] == "missing_api_key"
        assert anonymous.get("/healthz").status_code == 200  # probes need no key


def test_a_job_is_visible_only_to_the_key_that_made_it(gateway_url):
    with client_for(gateway_url, "alpha-key") as alpha, client_for(gateway_url, "beta-key") as beta:
        job = alpha.post("/v1/jobs", json=GENERATE).json()
        job_path = f"/v1/jobs/{job['id']}"
        assert alpha.get(job_path).status_code == 200
        for method, path in [("GET", job_path), ("GET", f"{job_path}/images/0"),
                             ("GET", f"{job_path}/events"), ("DELETE", job_path)]:
            response = beta.request(method, path)
            assert response.status_code == 404, (method, path)
            assert "another API key" in response.json()["detail"]
        assert alpha.get(job_path).json()["status"] == "queued"  # beta's DELETE changed nothing


def test_without_configured_keys_the_api_is_open(redis_url):
    settings = gateway_settings(redis_url, api_keys=[])
    with live_gateway(settings) as gateway, client_for(gateway.url, None) as c:
        job = c.post("/v1/jobs", json=GENERATE)
        assert job.status_code == 202
        assert c.get(job.json()["url"]).status_code == 200
        # any bearer value is ignored when the server has no keys
        with client_for(gateway.url, "whatever") as other:
            assert other.get(job.json()["url"]).status_code == 200
