"""A test-only stand-in for QUEUE's worker, so gateway tests can finish jobs without torch.

It claims entries with the consumer group (XREADGROUP), starts and ends each job through the Lua scripts
of service.jobs (START_LUA, PROGRESS_LUA, FINISH_LUA), reports one progress step per image and stores
PNGs that show which params reached it (`rendered_result`). A job asked to cancel ends `cancelled`.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from PIL import Image

from service.jobs import (
    FINISH_LUA,
    GROUP,
    PROGRESS_LUA,
    START_LUA,
    counts_key,
    dead_letter_key,
    job_key,
    result_key,
)
from service.settings import Settings


def rendered_result(op: str, params: dict[str, Any], index: int) -> Image.Image:
    """`params["size"]` square: generate → solid red (seed + index) % 256; inpaint → its mask (white =
    repaint); the other ops → their (first) input image."""
    size = params["size"]
    if op == "generate":
        return Image.new("RGB", (size, size), ((params["seed"] + index) % 256, 0, 0))
    source = params["mask"] if op == "inpaint" else params.get("image") or params["image_a"]
    picture = Image.open(io.BytesIO(base64.b64decode(source)))
    return picture.convert("RGB").resize((size, size), Image.Resampling.NEAREST)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class FakeWorker:
    def __init__(self, settings: Settings, step_delay: float = 0.0, name: str = "fake-worker"):
        self.settings = settings
        self.step_delay = step_delay
        self.name = name
        self.client = redis.Redis.from_url(settings.redis_url)
        self.start = self.client.register_script(START_LUA)
        self.progress = self.client.register_script(PROGRESS_LUA)
        self.finish = self.client.register_script(FINISH_LUA)
        try:  # id 0: entries added before the group existed are delivered too
            self.client.xgroup_create(settings.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def work_one(self, block_ms: int = 50) -> bool:
        """Claims and runs one job; False when none arrived within `block_ms`."""
        stream = self.settings.stream
        claimed = self.client.xreadgroup(GROUP, self.name, {stream: ">"}, count=1, block=block_ms)
        if not claimed:
            return False
        entry, fields = claimed[0][1][0]
        job_id = fields[b"job"].decode()
        key = job_key(job_id)
        ttl = self.settings.result_ttl_seconds
        attempts = self.settings.max_attempts
        started = self.start(keys=[key, counts_key(stream)], args=[self.name, attempts, ttl])
        status, pngs = "succeeded", []
        if started[0] == b"run":
            op, params_json, expected = self.client.hmget(key, "op", "params", "expected_images")
            params, total = json.loads(params_json), int(expected)
            for index in range(total):
                step = json.dumps({"stage": "decoder", "step": index + 1, "total": total})
                if self.progress(keys=[key], args=[step]):
                    status, pngs = "cancelled", []
                    break
                pngs.append(png_bytes(rendered_result(op.decode(), params, index)))
                threading.Event().wait(self.step_delay)
        results = [result_key(job_id, index) for index in range(len(pngs))]
        self.finish(
            keys=[key, counts_key(stream), stream, dead_letter_key(stream), *results],
            args=[GROUP, entry, status, "", ttl, "[]", *pngs],
        )  # for a job that was not started (already ended), this only acknowledges the entry
        return True

    def close(self) -> None:
        self.client.close()


@contextmanager
def fake_worker(settings: Settings, step_delay: float = 0.0) -> Iterator[FakeWorker]:
    """Runs a FakeWorker in a background thread until the block exits."""
    worker = FakeWorker(settings, step_delay)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            worker.work_one()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=10)
        worker.close()
