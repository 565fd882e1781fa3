"""POST /v1/jobs answers alike on its quick path (SubmitRoute's own checks) and on FastAPI's: a JSON body
with `Content-Type: application/json` takes the quick one, the same body as `application/vnd.x+json` (which
FastAPI parses as JSON too) takes FastAPI's, and anything the quick checks refuse is FastAPI's to answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Body

from service.gateway.auth import Caller
from service.gateway.routes.submit_route import SubmitRoute
from service.gateway.schemas import JobOut, JobRequest
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway

GENERATE = {"op": "generate", "prompt": "a red circle", "n": 2, "size": 64, "decoder_guidance": 4.0}
QUICK = {"Content-Type": "application/json"}
FASTAPI = {"Content-Type": "application/vnd.x+json"}
ANSWER_HEADERS = ("content-length", "content-type", "location")


@pytest.fixture
def client(redis_url: str) -> Iterator[httpx.Client]:
    with live_gateway(gateway_settings(redis_url, api_keys=["alice"])) as gateway:
        with httpx.Client(base_url=gateway.url, timeout=20, headers={"Authorization": "Bearer alice"}) as c:
            yield c


def post(client: httpx.Client, body: object, headers: dict[str, str]) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return client.post("/v1/jobs", content=content, headers=headers)


def answer_headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(name, value) for name, value in response.headers.items() if name in ANSWER_HEADERS]


@pytest.mark.parametrize(
    "first, second", [(QUICK, FASTAPI), (FASTAPI, QUICK)], ids=["quick-first", "fastapi-first"]
)
def test_both_paths_answer_the_same_job_byte_for_byte(client, first, second):
    # one Idempotency-Key: the second request answers the first one's job, so the two answers must match
    key = {"Idempotency-Key": f"same-{first['Content-Type']}"}
    made = post(client, GENERATE, first | key)
    found = post(client, GENERATE, second | key)
    assert made.status_code == found.status_code == 202, (made.text, found.text)
    assert found.content == made.content
    assert answer_headers(found) == answer_headers(made)
    assert made.headers["location"] == made.json()["url"]


@pytest.mark.parametrize(
    "body, headers, status",
    [
        ({**GENERATE, "n": 0}, QUICK, 422),  # a field out of range
        ({**GENERATE, "op": "paint"}, QUICK, 422),  # no such op
        (b'{"op": "generate",', QUICK, 422),  # not JSON
        (b"", QUICK, 422),  # no body
        (GENERATE, QUICK | {"Idempotency-Key": "two words"}, 422),  # a space: not printable ASCII
        (GENERATE, QUICK | {"Idempotency-Key": "x" * 256}, 422),  # too long
    ],
)
def test_what_the_quick_checks_refuse_fastapi_answers_on_either_path(client, body, headers, status):
    quick = post(client, body, headers)
    fastapi = post(client, body, headers | FASTAPI)
    assert quick.status_code == fastapi.status_code == status, (quick.text, fastapi.text)
    assert quick.json() == fastapi.json()


def test_the_key_is_checked_before_the_fields_and_the_json_before_the_key(client):
    anonymous = {"Authorization": ""}
    assert post(client, {**GENERATE, "n": 0}, QUICK | anonymous).status_code == 401
    assert post(client, {**GENERATE, "n": 0}, FASTAPI | anonymous).status_code == 401
    assert post(client, b"{", QUICK | anonymous).status_code == 422
    assert post(client, b"{", FASTAPI | anonymous).status_code == 422


def test_a_parameter_the_quick_path_does_not_know_stops_the_app_from_starting():
    async def submit_with_a_query(
        body: Annotated[JobRequest, Body()], caller: Caller, dry_run: bool = False
    ) -> JobOut:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="teach its quick path"):
        APIRouter().add_api_route(
            "/v1/jobs", submit_with_a_query, methods=["POST"], route_class_override=SubmitRoute
        )
