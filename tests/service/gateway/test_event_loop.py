"""Image decoding runs off the event loop: a poll is answered while a large upload is being decoded
(real uvicorn, real Redis)."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
from PIL import Image

from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway

SIDE = 4096


def big_png_base64() -> str:
    """A 4096x4096 PNG of one colour: a few dozen kB on the wire, 50 MB of pixels to decode and re-encode."""
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (10, 200, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_a_poll_is_answered_while_a_big_upload_is_decoded(redis_url):
    settings = gateway_settings(redis_url, max_image_pixels=SIDE * SIDE)
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=60) as client:
        job = client.post("/v1/jobs", json={"op": "generate", "prompt": "a dot", "size": 64}).json()
        job_url = job["url"]
        upload = {"op": "variation", "image": big_png_base64(), "size": 64}
        times: dict[str, float] = {}

        def send_upload() -> None:
            with httpx.Client(timeout=60) as uploader:
                times["sent"] = time.monotonic()
                response = uploader.post(f"{gateway.url}/v1/jobs", json=upload)
                times["answered"] = time.monotonic()
                times["status"] = response.status_code

        thread = threading.Thread(target=send_upload)
        thread.start()
        polls: list[tuple[float, float]] = []
        while thread.is_alive():
            started = time.monotonic()
            assert client.get(job_url).status_code == 200
            polls.append((started, time.monotonic()))
        thread.join()
        assert times["status"] == 202
        decoding = times["answered"] - times["sent"]
        assert decoding > 0.3, f"the upload took {decoding:.2f} s: too quick to show anything"
        # a poll that started well into the upload and was answered well before it
        middle = [p for p in polls if p[0] > times["sent"] + 0.15 and p[1] < times["answered"] - 0.1]
        assert middle, f"no poll answered during the {decoding:.2f} s upload: {polls}"
