"""A fake pipeline (Contract B's methods, solid-colour images from the seed) and helpers that run workers
on it, in threads or in subprocesses, against a real Redis.

Run as a script it is a worker process on the fake pipeline, for the kill -9 and SIGTERM tests:
    UNCLIP_REDIS_URL=... python tests/service/worker/worker_fixtures.py --consumer a --step-delay 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from PIL import Image

from models.contract import DEFAULT_FRAMES, DEFAULT_LATENT, Progress, Sampling
from service.gateway.store import JobStore
from service.jobs.layout import decode_hash, job_key
from service.settings import Settings
from service.worker.process import run_worker

FIXTURE = Path(__file__).resolve()
REPO = FIXTURE.parents[3]
# The contract's Sampling (its validation included), with defaults that make a fake job quick.
FAKE_DEFAULTS = Sampling(size=64, prior_steps=2, decoder_steps=2, sr256_steps=1, sr1024_steps=1)


def colour(seed: int, text: str = "") -> tuple[int, int, int]:
    """The colour the fake draws for an item: red and green from the seed, blue from its text."""
    return seed % 256, (seed // 256) % 256, zlib.crc32(text.encode()) % 256


def mean_colour(picture: Image.Image) -> tuple[int, int, int]:
    return picture.convert("RGB").resize((1, 1)).getpixel((0, 0))


class FakePipeline:
    """Contract B on CPU in microseconds. Each item's image depends only on its inputs and seed. Sampling
    runs `prior_steps` then `decoder_steps` progress reports, `step_delay` s each. A prompt containing
    "fail" raises (every time, or only `fail_times` times in all)."""

    def __init__(self, step_delay: float = 0.0, context_chars: int = 40, fail_times: int | None = None):
        self.step_delay = step_delay
        self.context_chars = context_chars
        self.fail_times = fail_times
        self.failures = 0
        self.calls: list[dict[str, Any]] = []  # op, seeds, steps run
        self.default_sampling = FAKE_DEFAULTS

    def sampling(self, **overrides: Any) -> Sampling:
        return replace(self.default_sampling, **{k: v for k, v in overrides.items() if v is not None})

    def truncated(self, prompts: list[str]) -> list[bool]:
        return [len(prompt) > self.context_chars for prompt in prompts]

    def _sample(self, op: str, seeds: list[int], sampling: Sampling, texts: list[str], progress: Any,
                stages: tuple[tuple[str, int], ...] | None = None) -> None:
        """Reports `stages` (default: the prior's, then the decoder's steps)."""
        call = {"op": op, "seeds": list(seeds), "steps": 0}
        self.calls.append(call)
        failing = self.fail_times is None or self.failures < self.fail_times
        if failing and any("fail" in text for text in texts):
            self.failures += 1
            raise RuntimeError("fake pipeline failure")
        stages = stages or (("prior", sampling.prior_steps), ("decoder", sampling.decoder_steps))
        for stage, total in stages:
            for step in range(1, total + 1):
                time.sleep(self.step_delay)
                call["steps"] += 1
                if progress is not None:
                    progress(Progress(stage, step, total))

    @staticmethod
    def _draw(size: int, seed: int, text: str) -> Image.Image:
        return Image.new("RGB", (size, size), colour(seed, text))

    def generate(self, prompts, seeds, sampling, progress=None):
        self._sample("generate", seeds, sampling, prompts, progress)
        return [self._draw(sampling.size, s, p) for p, s in zip(prompts, seeds, strict=True)]

    def variation(self, images, seeds, sampling, eta=0.5, progress=None):
        self._sample("variation", seeds, sampling, [], progress)
        return [self._draw(sampling.size, s, f"{mean_colour(i)}{eta}")
                for i, s in zip(images, seeds, strict=True)]

    def inpaint(self, images, masks, prompts, seeds, sampling, progress=None):
        self._sample("inpaint", seeds, sampling, prompts, progress)
        return [self._draw(sampling.size, s, p) for p, s in zip(prompts, seeds, strict=True)]

    def interpolate(self, images_a, images_b, seeds, sampling, frames=DEFAULT_FRAMES, latent=DEFAULT_LATENT,
                    progress=None):
        self._sample("interpolate", seeds, sampling, [], progress)
        return [[self._draw(sampling.size, s + f, latent) for f in range(frames)] for s in seeds]

    def text_diff(self, images, prompts, source_captions, seeds, sampling, frames=DEFAULT_FRAMES,
                  progress=None):
        self._sample("text_diff", seeds, sampling, prompts, progress)
        return [[self._draw(sampling.size, s + f, p) for f in range(frames)]
                for p, s in zip(prompts, seeds, strict=True)]


# ---- Redis-side helpers ---------------------------------------------------------------------------


def worker_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"lease_seconds": 1.0, "max_attempts": 3, "max_batch_size": 8,
                              "worker_metrics_port": None}
    return Settings(redis_url=redis_url, **(values | overrides))


def submit(settings: Settings, op: str, params: dict[str, Any], expected: int | None = None) -> str:
    """Queues a job through the gateway's JobStore; returns its id."""
    count = expected or params.get("n") or params.get("frames") or 1

    async def go() -> str:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            return (await JobStore(client, settings).submit(op, params, "owner", count)).id
        finally:
            await client.aclose()

    return asyncio.run(go())


def cancel(settings: Settings, job_id: str) -> None:
    async def go() -> None:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            await JobStore(client, settings).cancel(job_id, "owner")
        finally:
            await client.aclose()

    asyncio.run(go())


def job_state(client: redis.Redis, job_id: str) -> dict[str, Any]:
    state: dict[str, Any] = decode_hash(client.hgetall(job_key(job_id)))
    for name in ("progress", "warnings", "params"):
        if state.get(name):
            state[name] = json.loads(state[name])
    return state


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_for_status(client: redis.Redis, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed",
                    "cancelled"), timeout: float = 10.0) -> dict[str, Any]:
    return wait_until(lambda: (s := job_state(client, job_id)).get("status") in statuses and s,
                      timeout, f"job {job_id} to reach {statuses}")


def png_image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


@contextmanager
def worker_thread(
    settings: Settings, pipeline: FakePipeline, consumer: str = "w1", card: dict[str, Any] | None = None
) -> Iterator[threading.Event]:
    """A worker on `pipeline` in a thread (poll 50 ms), publishing `card` if given; stopped (draining its
    batch) on exit."""
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings, pipeline, stop, consumer, 0.05, card),
                              daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "worker thread did not stop"


def spawn_worker(settings: Settings, consumer: str, step_delay: float, log_path: Path,
                 checkpoint: Path | None = None) -> subprocess.Popen:
    """This file as a worker process on the fake pipeline (publishing the model card of `checkpoint` if
    given); its JSON log goes to `log_path`."""
    env = os.environ | {
        "UNCLIP_REDIS_URL": settings.redis_url, "UNCLIP_LEASE_SECONDS": str(settings.lease_seconds),
        "UNCLIP_MAX_ATTEMPTS": str(settings.max_attempts),
        "UNCLIP_MAX_BATCH_SIZE": str(settings.max_batch_size),
    }
    env.pop("UNCLIP_WORKER_METRICS_PORT", None)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(FIXTURE), "--consumer", consumer, "--step-delay", str(step_delay),
             *(["--checkpoint", str(checkpoint)] if checkpoint else [])],
            env=env, cwd=REPO, stdout=log, stderr=log,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--checkpoint", type=Path, help="publish this checkpoint's model card")
    args = parser.parse_args()

    from service.logs import configure_json_logging
    from service.worker.card import checkpoint_card

    settings = Settings(worker_metrics_port=None)
    configure_json_logging("info")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    card = checkpoint_card(args.checkpoint) if args.checkpoint else None
    run_worker(settings, FakePipeline(step_delay=args.step_delay), stop, args.consumer, 0.05, card)


if __name__ == "__main__":
    main()
