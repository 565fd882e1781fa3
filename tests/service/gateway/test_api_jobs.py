"""The native job API over real HTTP (uvicorn) against a real Redis, with a test worker finishing jobs."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.service.fake_worker import fake_worker
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway, wait_for_job
from tests.service.gateway.gateway_images import b64, gif, jpeg, png, png_header_only


@pytest.fixture
def gateway_and_worker(redis_url: str) -> Iterator[tuple[httpx.Client, Any]]:
    settings = gateway_settings(redis_url, max_frames=6)
    with live_gateway(settings) as gateway, fake_worker(settings):
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            yield client, gateway


@pytest.fixture
def idle_gateway(redis_url: str) -> Iterator[httpx.Client]:
    """A gateway with no worker: jobs stay queued."""
    settings = gateway_settings(redis_url, max_prompt_chars=40, max_body_bytes=200_000, backlog_limit=3)
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=20) as client:
        yield client


def fetch_png(client: httpx.Client, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_generate_round_trip(gateway_and_worker):
    client, gateway = gateway_and_worker
    response = client.post("/v1/jobs", json={"op": "generate", "prompt": "a red circle", "n": 2, "size": 64,
                                             "seed": 40})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["expected_images"] == 2
    assert response.headers["location"] == f"{gateway.url}/v1/jobs/{job['id']}" == job["url"]

    done = wait_for_job(client, job["url"])
    assert done["status"] == "succeeded"
    assert done["params"]["seed"] == 40
    assert done["images"] == [f"{gateway.url}/v1/jobs/{job['id']}/images/{i}" for i in range(2)]
    for index, url in enumerate(done["images"]):
        image = fetch_png(client, url)
        assert image.size == (64, 64)
        assert image.getpixel((0, 0)) == (40 + index, 0, 0)  # the worker saw seed 40 and item `index`
    smaller = fetch_png(client, f"{done['images'][0]}?size=16")
    assert smaller.size == (16, 16) and smaller.getpixel((8, 8)) == (40, 0, 0)
    larger = client.get(f"{done['images'][0]}?size=128")
    assert larger.status_code == 422
    assert "can only shrink the 64x64 image, not enlarge it to 128" in larger.json()["detail"][0]["msg"]


def test_a_missing_seed_is_drawn_and_shown(gateway_and_worker):
    client, _ = gateway_and_worker
    job = client.post("/v1/jobs", json={"op": "generate", "prompt": "x", "size": 64}).json()
    seed = job["params"]["seed"]
    assert isinstance(seed, int) and seed >= 0
    done = wait_for_job(client, job["url"])
    assert fetch_png(client, done["images"][0]).getpixel((0, 0)) == (seed % 256, 0, 0)


def test_every_image_operation_reaches_the_worker(gateway_and_worker):
    client, _ = gateway_and_worker
    source = Image.new("RGB", (20, 20), (0, 90, 200))
    source_png = io.BytesIO()
    source.save(source_png, format="PNG")
    image = b64(source_png.getvalue())
    mask = Image.new("L", (20, 20), 0)
    mask.paste(255, (0, 0, 10, 20))  # left half white = repaint
    mask_png = io.BytesIO()
    mask.save(mask_png, format="PNG")
    bodies = {
        "variation": ({"image": image, "n": 2, "eta": 0.25}, 2),
        "interpolate": ({"image_a": b64(jpeg((20, 20))), "image_b": image, "frames": 3}, 3),
        "text_diff": ({"image": image, "prompt": "a painting", "frames": 4}, 4),
        "inpaint": ({"image": image, "mask": b64(mask_png.getvalue()), "prompt": "a cat"}, 1),
    }
    for op, (body, count) in bodies.items():
        response = client.post("/v1/jobs", json={"op": op, "size": 64, **body})
        assert response.status_code == 202, (op, response.text)
        done = wait_for_job(client, response.json()["url"])
        assert done["status"] == "succeeded"
        assert len(done["images"]) == done["expected_images"] == count, op
        assert "image" not in done["params"] and "mask" not in done["params"]  # inputs are not echoed
        first = fetch_png(client, done["images"][0])
        if op == "inpaint":
            assert first.getpixel((5, 32)) == (255, 255, 255)  # left half: repaint
            assert first.getpixel((60, 32)) == (0, 0, 0)
        elif op == "variation":
            assert first.getpixel((30, 30)) == (0, 90, 200)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"op": "paint", "prompt": "x"}, "body", "does not match any of the expected tags"),
        ({"prompt": "x"}, "body", "Unable to extract tag using discriminator 'op'"),
        ({"op": "generate", "prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
        ({"op": "generate", "prompt": "x", "n": 11}, "n", "n (images per job) must be at most 10, got 11"),
        ({"op": "generate", "prompt": "x", "size": 512}, "size", "64, 256 or 1024"),
        ({"op": "generate", "prompt": "y" * 41}, "prompt", "prompt length in characters must be at most 40"),
        ({"op": "generate", "prompt": ""}, "prompt", "at least 1 character"),
        ({"op": "generate", "prompt": "x", "steps": 5}, "steps", "Extra inputs are not permitted"),
        ({"op": "generate", "prompt": "x", "decoder_steps": 0}, "decoder_steps",
         "greater than or equal to 1"),
        ({"op": "variation", "image": b64(png()), "eta": 1.5}, "eta", "less than or equal to 1"),
        ({"op": "text_diff", "image": b64(png()), "prompt": "x", "text_diff_strength": 0},
         "text_diff_strength", "greater than 0"),
        ({"op": "interpolate", "image_a": b64(png()), "image_b": b64(png()), "frames": 1}, "frames",
         "greater than or equal to 2"),
        ({"op": "interpolate", "image_a": b64(png()), "image_b": b64(png()), "frames": 17}, "frames",
         "frames must be at most 16"),
        ({"op": "variation", "image": "%%% not base64"}, "image", "not valid base64"),
        ({"op": "variation", "image": b64(b"just some text")}, "image", "must be a PNG or JPEG"),
        ({"op": "variation", "image": b64(gif())}, "image", "the bytes are a GIF"),
        ({"op": "variation", "image": b64(png_header_only(100_000, 100_000))}, "image",
         "more than 16777216 pixels"),
        ({"op": "variation", "image": b64(png_header_only(5000, 4000))}, "image",
         "is 5000x4000 = 20000000 pixels"),
        ({"op": "inpaint", "image": b64(png((32, 32))), "mask": b64(png((16, 32), 255, "L")), "prompt": "x"},
         "mask", "is 16x32 but the image is 32x32"),
        ({"op": "inpaint", "image": b64(png((8, 8))), "mask": b64(png((8, 8), 0, "L")), "prompt": "x"},
         "mask", "marks no pixel to repaint"),
    ],
)
def test_bad_bodies_get_a_422_that_names_the_field(idle_gateway, body, field, message):
    response = idle_gateway.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"][-1] == field and message in error["msg"] for error in errors), errors
    assert all("input" not in error for error in errors)  # megabytes of base64 are never echoed


def test_invalid_json_is_a_422(idle_gateway):
    headers = {"content-type": "application/json"}
    response = idle_gateway.post("/v1/jobs", content=b"{not json", headers=headers)
    assert response.status_code == 422
    assert "JSON" in json.dumps(response.json())


def test_a_body_over_the_limit_is_413_declared_or_streamed(idle_gateway):
    big = {"op": "variation", "image": "A" * 300_000}
    declared = idle_gateway.post("/v1/jobs", json=big)
    assert declared.status_code == 413
    assert "over the limit of 200000 bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        payload = json.dumps(big).encode()
        for start in range(0, len(payload), 50_000):
            yield payload[start : start + 50_000]

    streamed = idle_gateway.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert "over the limit of 200000 bytes" in streamed.json()["detail"]


def test_images_of_an_unfinished_job_are_409_and_past_the_end_404(idle_gateway):
    job = idle_gateway.post("/v1/jobs", json={"op": "generate", "prompt": "x", "n": 2, "size": 64}).json()
    not_ready = idle_gateway.get(f"/v1/jobs/{job['id']}/images/1")
    assert not_ready.status_code == 409
    assert not_ready.headers["retry-after"] == "1"
    assert "not ready yet" in not_ready.json()["detail"]
    past_end = idle_gateway.get(f"/v1/jobs/{job['id']}/images/2")
    assert past_end.status_code == 404
    assert "makes 2 images" in past_end.json()["detail"]
    assert idle_gateway.get("/v1/jobs/no-such-job").status_code == 404
    assert idle_gateway.get("/v1/jobs/no-such-job/images/0").status_code == 404


def test_cancel_a_queued_job(idle_gateway):
    job = idle_gateway.post("/v1/jobs", json={"op": "generate", "prompt": "x", "size": 64}).json()
    cancelled = idle_gateway.delete(job["url"])
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert idle_gateway.get(job["url"]).json()["status"] == "cancelled"
    gone = idle_gateway.get(f"/v1/jobs/{job['id']}/images/0")
    assert gone.status_code == 404 and "cancelled" in gone.json()["detail"]
    assert idle_gateway.delete("/v1/jobs/no-such-job").status_code == 404


def test_cancel_a_running_job_stops_it_at_its_next_step(redis_url):
    settings = gateway_settings(redis_url)
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=20) as client:
        job = client.post("/v1/jobs", json={"op": "generate", "prompt": "x", "n": 10, "size": 64}).json()
        with fake_worker(settings, step_delay=0.3):  # 10 steps of 0.3 s: still running when DELETE lands
            running = job
            while running["status"] != "running":
                time.sleep(0.02)
                running = client.get(job["url"]).json()
            flagged = client.delete(job["url"])
            assert flagged.status_code == 200
            assert flagged.json()["status"] == "running" and flagged.json()["cancel_requested"] is True
            with client.stream("GET", job["events_url"]) as stream:
                events = read_events(stream)
        assert events[-1][0] == "status" and events[-1][1]["status"] == "cancelled"
        assert events[-1][1]["images"] == []
        assert client.get(job["url"]).json()["progress"]["step"] < 10


def test_past_the_backlog_new_jobs_get_429_with_retry_after(idle_gateway):
    body = {"op": "generate", "prompt": "x", "size": 64}
    statuses = [idle_gateway.post("/v1/jobs", json=body).status_code for _ in range(3)]
    assert statuses == [202, 202, 202]
    refused = idle_gateway.post("/v1/jobs", json=body)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "queue is full" in refused.json()["detail"]


def read_events(source: httpx.Response | Iterator[str], limit: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a response (or of its lines, read on from where they are), up to `limit`."""
    events, name, data = [], None, None
    for line in source.iter_lines() if isinstance(source, httpx.Response) else source:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif line == "" and name is not None:
            events.append((name, data))
            name = data = None
            if len(events) == limit:
                break
    return events


def test_events_stream_progress_in_order_then_the_final_status(redis_url):
    settings = gateway_settings(redis_url)
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=20) as client:
        job = client.post("/v1/jobs", json={"op": "generate", "prompt": "x", "n": 3, "size": 64}).json()
        with client.stream("GET", job["events_url"]) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            first = read_events(lines, limit=1)  # the job as the stream found it, before any worker
            with fake_worker(settings):  # so every change is seen
                events = first + read_events(lines)
        replay = client.get(f"/v1/jobs/{job['id']}/events")  # a finished job: its final status only
    names = [name for name, _ in events]
    assert names[0] == "progress" and events[0][1]["status"] == "queued"
    assert names[-1] == "status" and names.count("status") == 1
    final = events[-1][1]
    assert final["status"] == "succeeded" and len(final["images"]) == 3
    order = {"queued": 0, "running": 1, "succeeded": 2}
    ranks = [order[data["status"]] for _, data in events]
    assert ranks == sorted(ranks)
    steps = [data["progress"]["step"] for _, data in events if data["progress"]]
    assert steps == sorted(steps) and steps[-1] == 3
    assert [name for name, _ in read_events(replay)] == ["status"]



def test_best_of_reports_a_score_per_image(gateway_and_worker):
    client, _ = gateway_and_worker
    body = {"op": "generate", "prompt": "a red circle", "n": 2, "size": 64, "seed": 40, "best_of": 3}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    done = wait_for_job(client, response.json()["url"])
    assert done["status"] == "succeeded" and done["params"]["best_of"] == 3
    assert done["scores"] == [0.04, 0.041]  # the fake pipeline scores seed / 1000; items 40 and 41
    plain = wait_for_job(client, client.post("/v1/jobs", json={**body, "best_of": 1}).json()["url"])
    assert plain["scores"] is None


def test_a_rewritten_prompt_is_the_jobs_revised_prompt(redis_url):
    # The fake worker's prompt reader rewrites "A Red  Circle" as "a red circle" and leaves "a red circle"
    # as it is; both jobs share one pipeline call, each keeps its own.
    settings = gateway_settings(redis_url)
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=20) as client:
        body = {"op": "generate", "n": 2, "size": 64}
        rewritten = client.post("/v1/jobs", json={**body, "prompt": "A Red  Circle"}).json()
        as_given = client.post("/v1/jobs", json={**body, "prompt": "a red circle"}).json()
        assert rewritten["revised_prompt"] is None  # queued: nothing drawn yet
        with client.stream("GET", rewritten["events_url"]) as stream, fake_worker(settings):
            events = read_events(stream)  # the worker starts after the stream is open
            plain = wait_for_job(client, as_given["url"])
        done = client.get(rewritten["url"]).json()
    final = events[-1][1]  # the published final state
    assert final["status"] == "succeeded" and final["revised_prompt"] == "a red circle"
    assert done["status"] == "succeeded" and done["revised_prompt"] == "a red circle"
    assert done["params"]["prompt"] == "A Red  Circle"  # the job's own prompt stays as given
    assert plain["status"] == "succeeded" and plain["revised_prompt"] is None


@pytest.mark.parametrize("best_of", [0, 9, 2.5, True])
def test_best_of_out_of_range_is_422(idle_gateway, best_of):
    response = idle_gateway.post("/v1/jobs", json={"op": "generate", "prompt": "x", "best_of": best_of})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "best_of"
