"""openapi.yaml against the gateway it describes: schemathesis generates valid and invalid requests from the
spec (fixed seed, bounded examples) and runs all its checks on each answer, over real HTTP (uvicorn) with a
real Redis. No worker: jobs stay queued, and the OpenAI routes answer their documented 504 after a 0.2 s wait.

The gateway runs with its settings' limits (n, frames, prompt length, backlog) lifted, so the static
spec is the whole contract. Three allowances, for things a JSON schema cannot say or this setup causes:
- an `Idempotency-Key` that fits the spec is made unique per request: the spec cannot say that one key
  with two bodies is refused (tests/service/gateway/test_idempotency.py covers that);
- "schema-valid" base64 or file bytes are mostly not an image, and this gateway has no webhook secret:
  positive_data_acceptance lets through a refusal whose every problem is an image field's content (code
  or type `invalid_image`, `missing_alpha`) or a webhook (`invalid_webhook`);
- with no worker, the OpenAI routes' documented 504 (`code: timeout`) is no server error.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.redis_server import EmbeddedRedis
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway

SPEC = Path(__file__).resolve().parents[3] / "openapi.yaml"
schema = schemathesis.openapi.from_path(SPEC)
API_KEY = "fuzz-key"
LIFTED = 2**63  # past any integer the spec allows
CONTENT_PROBLEMS = {"invalid_image", "missing_alpha", "invalid_webhook"}


def content_refusal(response) -> bool:
    """A 400/422 whose every problem is the content of an image field, or a webhook."""
    if response.status_code not in (400, 422):
        return False
    body = response.json()
    if "error" in body:
        return body["error"].get("code") in CONTENT_PROBLEMS
    detail = body.get("detail")
    return isinstance(detail, list) and bool(detail) and all(d["type"] in CONTENT_PROBLEMS for d in detail)


def accepts_valid_data_but_content(ctx, response, case):
    if content_refusal(response):
        return None
    return positive_data_acceptance(ctx, response, case)


def no_server_error_but_the_wait(ctx, response, case):
    if response.status_code == 504 and response.json().get("error", {}).get("code") == "timeout":
        return None
    return not_a_server_error(ctx, response, case)


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    settings = {
        "api_keys": [API_KEY],
        "backlog_limit": LIFTED,
        "max_images_per_job": LIFTED,
        "max_frames": LIFTED,
        "max_prompt_chars": LIFTED,
        "sync_timeout_seconds": 0.2,
    }
    with EmbeddedRedis() as server, live_gateway(gateway_settings(server.url, **settings)) as gateway:
        yield gateway.url


@schema.parametrize()
@seed(17)
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_gateway_keeps_its_spec(case, gateway_url):
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(r"[!-~]{1,255}", key):
        case.headers["Idempotency-Key"] = f"{key[:200]}-{uuid.uuid4().hex}"
    case.call_and_validate(
        base_url=gateway_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        excluded_checks=[positive_data_acceptance, not_a_server_error],
        additional_checks=[accepts_valid_data_but_content, no_server_error_but_the_wait],
    )
