"""What fuzzing found once, over real HTTP (uvicorn) and a real Redis: each answer a clear, documented 4xx."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from service.gateway.schemas import JOB_REQUEST_EXAMPLES
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway

GENERATE = {"op": "generate", "prompt": "a red circle", "size": 64}


@pytest.fixture
def client(redis_url: str) -> Iterator[httpx.Client]:
    with live_gateway(gateway_settings(redis_url)) as gateway, httpx.Client(base_url=gateway.url) as client:
        yield client


@pytest.mark.parametrize("field", ["decoder_image_guidance", "decoder_guidance", "prior_guidance"])
@pytest.mark.parametrize("value", [False, True, "2"])
def test_a_bool_or_a_string_is_no_number(client, field, value):
    response = client.post("/v1/jobs", json={**GENERATE, field: value})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize("field", ["n", "seed", "decoder_steps"])
def test_a_bool_is_no_integer_but_an_integral_float_is(client, field):
    assert client.post("/v1/jobs", json={**GENERATE, field: True}).status_code == 422
    accepted = client.post("/v1/jobs", json={**GENERATE, field: 2.0})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["params"][field] == 2


def test_an_integer_is_a_number(client):
    response = client.post("/v1/jobs", json={**GENERATE, "decoder_guidance": 3})
    assert response.status_code == 202 and response.json()["params"]["decoder_guidance"] == 3


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"", "the body is empty")
])
def test_a_body_that_is_no_json_object_is_a_clear_422(client, content, message):
    response = client.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert message in response.json()["detail"][0]["msg"]


def test_a_body_that_is_not_utf8_is_a_clear_422_not_an_undocumented_400(client):
    response = client.post("/v1/jobs", content=b"[\xff", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "send a JSON object in UTF-8" in response.json()["detail"][0]["msg"]
    openai = client.post(
        "/v1/images/generations", content=b"{\xff", headers={"content-type": "application/json"}
    )
    assert openai.status_code == 400
    assert "send a JSON object in UTF-8" in openai.json()["error"]["message"]


def test_the_openai_route_says_the_body_is_no_json(client):
    response = client.post("/v1/images/generations", content=b"{bad",
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] is None


@pytest.mark.parametrize("name", sorted(JOB_REQUEST_EXAMPLES))
def test_every_example_of_the_spec_is_accepted(client, name):
    response = client.post("/v1/jobs", json=JOB_REQUEST_EXAMPLES[name]["value"])
    assert response.status_code == 202, response.text


def png_bytes(mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (8, 8), (0, 0, 0, 0) if mode == "RGBA" else 0).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("field", ["mask", "image"])
def test_a_text_field_for_a_file_is_a_clear_400(client, field):
    files = {"image": ("image.png", png_bytes(), "image/png")} if field == "mask" else {}
    response = client.post("/v1/images/edits", data={"prompt": "a cat", field: "not a file"}, files=files)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert "must be sent as a file" in error["message"] and "UploadFile" not in error["message"]


def test_no_message_shows_a_python_object(client):
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    response = client.post("/v1/images/variations", files={"image": ("a.png", broken, "image/png")})
    assert response.status_code == 400
    assert " at 0x" not in response.text and "<_io" not in response.text
    assert "is not a readable PNG" in response.json()["error"]["message"]


def test_method_not_allowed_lists_every_method_of_the_path(client):
    response = client.options("/v1/jobs/abc")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert set(client.put("/v1/jobs").headers["allow"].split(", ")) == {"GET", "POST"}
