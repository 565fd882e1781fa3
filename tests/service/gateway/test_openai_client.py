"""The OpenAI-compatible endpoints driven by the real `openai` package against uvicorn, Redis and the fake
worker: generations, edits and variations, every size, both response formats, and OpenAI-shaped errors."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis
from PIL import Image

from service.jobs.layout import counts_key
from tests.service.fake_worker import fake_worker
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway
from tests.service.gateway.gateway_images import gif, jpeg, png, rgba_with_hole

KEY = "openai-test-key"
SIZES = {"64x64": 64, "256x256": 256, "512x512": 512, "1024x1024": 1024}
HOLE = (8, 8, 24, 24)  # the transparent square of rgba_with_hole((32, 32)): left, top, right, bottom


class Gateway:
    def __init__(self, url: str):
        self.url = url
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)

    def fetch(self, url: str) -> Image.Image:
        response = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        return Image.open(io.BytesIO(response.content))


@pytest.fixture
def gateway(redis_url: str) -> Iterator[Gateway]:
    settings = gateway_settings(redis_url, api_keys=[KEY], max_prompt_chars=50, max_body_bytes=300_000)
    with live_gateway(settings) as live, fake_worker(settings):
        yield Gateway(live.url)


@pytest.fixture
def slow_gateway(redis_url: str) -> Iterator[Gateway]:
    """Each image takes the worker 0.1 s: a job ends while the gateway waits on it, so the answer is made
    from the job's published final state, as for a real model's jobs (a quick one may end before that)."""
    settings = gateway_settings(redis_url, api_keys=[KEY])
    with live_gateway(settings) as live, fake_worker(settings, step_delay=0.1):
        yield Gateway(live.url)


def decoded(b64_json: str | None) -> Image.Image:
    assert b64_json
    return Image.open(io.BytesIO(base64.b64decode(b64_json)))


@pytest.mark.parametrize("size", list(SIZES))
def test_generate_b64_json_at_every_size(gateway, size):
    result = gateway.client.images.generate(prompt="a red circle", n=2, size=size, response_format="b64_json")
    assert len(result.data) == 2 and result.created > 0
    first, second = (decoded(item.b64_json) for item in result.data)
    assert first.format == "PNG" and first.size == second.size == (SIZES[size], SIZES[size])
    # the fake worker paints red = (seed + index) % 256: two items of one job, consecutive seeds
    assert (second.getpixel((0, 0))[0] - first.getpixel((0, 0))[0]) % 256 == 1


@pytest.mark.parametrize("size", ["64x64", "512x512"])
def test_generate_url_points_at_a_png_of_the_size(gateway, size):
    result = gateway.client.images.generate(prompt="a red circle", size=size, response_format="url")
    (item,) = result.data
    assert item.b64_json is None and item.url.startswith(f"{gateway.url}/v1/jobs/")
    assert gateway.fetch(item.url).size == (SIZES[size], SIZES[size])


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_generate_returns_the_prompt_the_model_drew(slow_gateway, response_format):
    # The fake worker's prompt reader rewrites a prompt into lowercase with single spaces.
    gateway = slow_gateway
    result = gateway.client.images.generate(
        prompt="A Red  Circle", n=2, size="64x64", response_format=response_format
    )
    assert [item.revised_prompt for item in result.data] == ["a red circle", "a red circle"]
    as_given = gateway.client.images.generate(
        prompt="a red circle", size="64x64", response_format=response_format
    )
    assert as_given.data[0].revised_prompt is None


def test_edit_returns_the_prompt_the_model_drew(slow_gateway):
    result = slow_gateway.client.images.edit(
        image=("photo.png", rgba_with_hole((32, 32), HOLE), "image/png"),
        prompt="A Cat",
        size="64x64",
        response_format="url",
    )
    assert result.data[0].revised_prompt == "a cat"


def assert_hole_repainted(image: Image.Image) -> None:
    """The fake worker returns the repaint mask (white = repaint), scaled to the output size."""
    scale = image.width / 32
    inside = (int(16 * scale), int(16 * scale))
    outside = (int(2 * scale), int(2 * scale))
    assert image.getpixel(inside) == (255, 255, 255)
    assert image.getpixel(outside) == (0, 0, 0)


def test_edit_repaints_where_the_mask_is_transparent(gateway):
    result = gateway.client.images.edit(
        image=("photo.png", png((32, 32), (10, 200, 10)), "image/png"),
        mask=("mask.png", rgba_with_hole((32, 32), HOLE), "image/png"),
        prompt="a cat",
        size="256x256",
        response_format="b64_json",
    )
    (item,) = result.data
    image = decoded(item.b64_json)
    assert image.size == (256, 256)
    assert_hole_repainted(image)


def test_edit_without_mask_uses_the_images_own_alpha_and_sniffs_the_bytes(gateway):
    # Declared as JPEG (and named .jpg), but the bytes are an RGBA PNG: the bytes decide.
    result = gateway.client.images.edit(
        image=("photo.jpg", rgba_with_hole((32, 32), HOLE), "image/jpeg"),
        prompt="a cat",
        n=2,
        size="64x64",
        response_format="url",
    )
    assert len(result.data) == 2
    for item in result.data:
        image = gateway.fetch(item.url)
        assert image.size == (64, 64)
        assert_hole_repainted(image)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # openai marks variations deprecated
def test_variations_of_a_jpeg(gateway):
    result = gateway.client.images.create_variation(
        image=("photo.jpg", jpeg((40, 40), (0, 0, 250)), "image/jpeg"),
        n=3,
        size="1024x1024",
        response_format="b64_json",
    )
    assert len(result.data) == 3
    image = decoded(result.data[0].b64_json)
    assert image.size == (1024, 1024)
    red, green, blue = image.getpixel((500, 500))
    assert blue > 200 and red < 30 and green < 30  # the worker saw the uploaded image (JPEG-lossy blue)


def bad_request(call) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    error = caught.value
    assert error.status_code == 400
    assert error.type == "invalid_request_error"
    assert set(error.body) == {"message", "type", "param", "code"}  # OpenAI's error object
    return error


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"prompt": "x" * 51}, "prompt", "prompt length in characters must be at most 50, got 51"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
        ({"prompt": "x", "n": 11}, "n", "n (images per job) must be at most 10, got 11"),
        ({"prompt": "x", "size": "300x300"}, "size", "'64x64', '256x256', '512x512' or '1024x1024'"),
        ({"prompt": "x", "response_format": "jpeg"}, "response_format", "'url' or 'b64_json'"),
    ],
)
def test_bad_generation_parameters_are_400_with_the_field(gateway, kwargs, param, message):
    error = bad_request(lambda: gateway.client.images.generate(**kwargs))
    assert error.param == param
    assert message in error.body["message"]


PICTURE = ("a.png", png((32, 32)), "image/png")


@pytest.mark.parametrize(
    ("files", "param", "message"),
    [
        ({"image": ("a.png", gif(), "image/png")},
         "image", "must be a PNG or JPEG image, but the bytes are a GIF"),
        ({"image": PICTURE, "mask": ("m.png", rgba_with_hole((16, 16)), "image/png")},
         "mask", "mask: is 16x16 but the image is 32x32"),
        ({"image": PICTURE}, "image", "image has no alpha channel; send a mask"),
        ({"image": PICTURE, "mask": ("m.png", png((32, 32), (0, 0, 0, 255), "RGBA"), "image/png")},
         "mask", "marks no pixel to repaint"),
    ],
)
def test_unusable_edit_images_are_400_saying_what_to_fix(gateway, files, param, message):
    error = bad_request(lambda: gateway.client.images.edit(prompt="a cat", size="64x64", **files))
    assert error.param == param
    assert message in error.body["message"]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_a_body_over_the_limit_is_413_in_openai_shape(gateway):
    noise = Image.frombytes("RGB", (400, 400), bytes(range(256)) * 1875)  # ~480 kB as PNG: over 300 kB
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG", compress_level=0)
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client.images.create_variation(image=("big.png", buffer.getvalue(), "image/png"))
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    assert "over the limit of 300000 bytes" in caught.value.body["message"]


def test_a_wrong_key_is_an_authentication_error(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.images.generate(prompt="x", size="64x64")
    assert caught.value.code == "invalid_api_key"


def test_a_job_that_outlives_the_wait_is_504_and_is_not_resubmitted(redis_url):
    settings = gateway_settings(redis_url, sync_timeout_seconds=0.3)
    with live_gateway(settings) as live:  # no worker: the job stays queued
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=2)
        with pytest.raises(openai.InternalServerError) as caught:
            client.images.generate(prompt="x", size="64x64")
    assert caught.value.status_code == 504
    assert "did not finish within 0.3 s (it is queued)" in caught.value.body["message"]
    queued = redis.Redis.from_url(redis_url).hget(counts_key(settings.stream), "queued")
    assert queued == b"1"  # x-should-retry: false kept the client's two retries from queueing more
