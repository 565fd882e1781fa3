"""`unclip serve` and `unclip gateway` as real processes, and the real pipeline behind uvicorn + worker."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image, ImageChops

from service.jobs.codec import png_base64
from service.jobs.layout import worker_card_key
from service.redis_server import free_port
from service.serve import playground_url
from service.settings import Settings
from tests.service.gateway.gateway_fixtures import live_gateway
from tests.service.worker.worker_fixtures import (
    REPO,
    submit,
    wait_for_status,
    wait_until,
    worker_settings,
)

TINY_JOB = {"op": "generate", "prompt": "a red circle", "n": 2, "size": 64, "seed": 3,
            "prior_steps": 1, "decoder_steps": 1}


def service_env(**values: str) -> dict[str, str]:
    """This environment without any UNCLIP_* setting, plus `values`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("UNCLIP_")}
    return env | values


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    def ready() -> bool:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout, f"{url}/readyz")


def wait_for_job(client: httpx.Client, url: str, timeout: float) -> dict:
    def ended() -> dict | None:
        job = client.get(url).json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(ended, timeout, f"{url} to end")


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "process.log"
    yield path
    if path.exists():
        print(path.read_text()[-4000:])  # shown when the test fails


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_unclip_gateway_serves_without_torch_and_exits_cleanly(redis_url: str, log_file: Path) -> None:
    port = free_port()
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "gateway", "--port", str(port), "--redis-url", redis_url],
            cwd=REPO, env=service_env(), stdout=log, stderr=log,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, timeout=30)
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" not in maps
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_unclip_serve_runs_a_job_and_stops_its_embedded_redis(log_file: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = service_env(UNCLIP_WORKER_METRICS_PORT=str(metrics_port))
    with open(log_file, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=60)
        assert f"playground: {url}/" in log_file.read_text().splitlines()
        [started] = [line for line in log_lines(log_file) if line["message"] == "embedded redis started"]
        redis_pid = started["pid"]
        assert Path(f"/proc/{redis_pid}").exists()

        with httpx.Client(base_url=url, timeout=30) as client:
            submitted = client.post("/v1/jobs", json=TINY_JOB)
            assert submitted.status_code == 202, submitted.text
            job = wait_for_job(client, f"/v1/jobs/{submitted.json()['id']}", timeout=120)
            assert job["status"] == "succeeded", job
            assert job["image_count"] == 2 and len(job["images"]) == 2
            png = client.get(job["images"][1])
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(png.content)).size == (64, 64)
            # the worker published what it serves: the shipped model, every op
            (model,) = client.get("/v1/models").json()["data"]
            assert (model["id"], model["shipped"], model["workers"]) == ("unclip-shapes", True, 1)
            assert model["ops"] == ["generate", "variation", "interpolate", "text_diff", "inpaint"]

        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'unclip_worker_jobs_total{op="generate",outcome="succeeded"} 1.0' in metrics
        health = httpx.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not Path(f"/proc/{redis_pid}").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("settings", "printed"),
    [
        (Settings(port=8000), "http://127.0.0.1:8000/"),
        (Settings(host="0.0.0.0", port=9000), "http://127.0.0.1:9000/"),
        (Settings(host="::", port=9000), "http://[::1]:9000/"),
        (Settings(host="fd00::5", port=80), "http://[fd00::5]:80/"),
        (Settings(public_url="https://images.example.com/"), "https://images.example.com/"),
    ],
)
def test_the_playground_address_is_where_a_browser_reaches_it(settings: Settings, printed: str) -> None:
    assert playground_url(settings) == printed


def test_unclip_worker_runs_jobs_until_sigterm(redis_url: str, log_file: Path) -> None:
    settings = worker_settings(redis_url)
    params = {key: value for key, value in TINY_JOB.items() if key != "op"}
    job_id = submit(settings, "generate", params)
    env = service_env(UNCLIP_WORKER_METRICS_PORT=str(free_port()), UNCLIP_WORKER_NAME="cli-worker")
    with open(log_file, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--redis-url", redis_url],
                                   cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        client = redis.Redis.from_url(redis_url)
        state = wait_for_status(client, job_id, timeout=120)
        assert (state["status"], state["image_count"], state["worker"]) == ("succeeded", "2", "cli-worker")
        card = client.get(worker_card_key(settings.stream, "cli-worker"))
        assert card is not None and json.loads(card)["id"] == "unclip-shapes"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert client.get(worker_card_key(settings.stream, "cli-worker")) is None  # withdrawn at the stop
        assert any(line.get("job_id") == job_id for line in log_lines(log_file))  # JSON logs carry job ids
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_real_pipeline_behind_uvicorn_and_a_worker(redis_url: str, tmp_path: Path) -> None:
    from models.checkpoint import init_checkpoint
    from models.pipeline import UnCLIPPipeline
    from service.worker.process import run_worker

    settings = worker_settings(redis_url, lease_seconds=30)
    pipeline = UnCLIPPipeline.from_checkpoint(init_checkpoint(tmp_path / "tiny", "tiny"), device="cpu")
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(settings, pipeline, stop, "real", 0.05), daemon=True)
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=30) as client:
        # Queued before the worker starts, so the worker batches the generate jobs together.
        ids = [client.post("/v1/jobs", json=TINY_JOB | {"seed": seed}).json()["id"] for seed in (3, 4)]
        source = png_base64(Image.new("RGB", (48, 40), (200, 30, 30)))
        variation = {"op": "variation", "image": source, "n": 1, "eta": 0.0, "size": 64, "seed": 1,
                     "prior_steps": 1, "decoder_steps": 1}
        ids.append(client.post("/v1/jobs", json=variation).json()["id"])
        worker.start()
        try:
            jobs = [wait_for_job(client, f"/v1/jobs/{job_id}", timeout=120) for job_id in ids]
        finally:
            stop.set()
            worker.join(timeout=60)
        assert [job["status"] for job in jobs] == ["succeeded"] * 3, jobs
        pictures = [Image.open(io.BytesIO(client.get(url).content)) for job in jobs for url in job["images"]]
    assert [picture.size for picture in pictures] == [(64, 64)] * 5
    # Seeds 3, 4 for the first job and 4, 5 for the second: item "seed 4" is the same image in both jobs
    # although it sat at a different place in the batch (up to float rounding across batch rows).
    assert max_pixel_difference(pictures[1], pictures[2]) <= 2
    assert max_pixel_difference(pictures[0], pictures[1]) > 2


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    return max(high for _, high in ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema())
