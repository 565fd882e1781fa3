"""The model card a worker publishes (service.worker.card) against a real Redis: there while the worker
runs, withdrawn when it stops, expired a lease after a kill -9; and an op its checkpoint cannot run fails
at once, with the reason, instead of being retried."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from models.capabilities import NO_IMAGE_ENCODER, UnsupportedOperation
from service.jobs.codec import png_base64
from service.jobs.layout import worker_card_key, workers_key
from service.worker.card import SHIPPED_MODEL_ID, checkpoint_card
from tests.service.checkpoints import tiny_checkpoint
from tests.service.worker.worker_fixtures import (
    FakePipeline,
    job_state,
    spawn_worker,
    submit,
    wait_for_status,
    wait_until,
    worker_settings,
    worker_thread,
)

VARIATION = {"image": png_base64(Image.new("RGB", (8, 8), (200, 10, 10))), "n": 1, "seed": 1, "size": 64}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "full": tiny_checkpoint(folder / "tiny-full"),
        "text": tiny_checkpoint(folder / "tiny-text", image_encoder=False, sr1024=False),
    }


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def published(client: redis.Redis, stream: str, name: str) -> dict | None:
    document = client.get(worker_card_key(stream, name))
    return json.loads(document) if document is not None else None


def test_the_card_says_what_the_checkpoint_can_do(checkpoints: dict[str, Path]) -> None:
    full, text = checkpoint_card(checkpoints["full"]), checkpoint_card(checkpoints["text"])
    assert full["id"] == "tiny-full" and full["max_size"] == 1024 and full["refusals"] == {}
    assert full["ops"] == ["generate", "variation", "interpolate", "text_diff", "inpaint"]
    assert set(full["parameters"]) == {"clip", "prior", "decoder", "sr256", "sr1024"}
    assert all(count > 0 for count in full["parameters"].values())
    assert text["ops"] == ["generate", "inpaint"] and text["max_size"] == 256
    assert text["refusals"] == {op: NO_IMAGE_ENCODER for op in ("variation", "interpolate", "text_diff")}
    assert (text["shipped"], text["imported_from"], text["owned_by"]) == (False, None, "unclip-serve")


def test_the_shipped_checkpoint_has_a_stable_id() -> None:
    from models.checkpoint import DEFAULT_FOLDER

    card = checkpoint_card(DEFAULT_FOLDER)
    assert card["id"] == SHIPPED_MODEL_ID and card["shipped"] is True


def test_a_worker_publishes_its_card_while_it_runs_and_withdraws_it_when_it_stops(
    redis_url: str, client: redis.Redis, checkpoints: dict[str, Path]
) -> None:
    settings = worker_settings(redis_url, lease_seconds=1.0)
    card = checkpoint_card(checkpoints["full"])
    with worker_thread(settings, FakePipeline(), "w-card", card):
        wait_until(lambda: published(client, settings.stream, "w-card"), what="the card")
        assert published(client, settings.stream, "w-card") == card
        assert client.smembers(workers_key(settings.stream)) == {b"w-card"}
        assert 0 < client.pttl(worker_card_key(settings.stream, "w-card")) <= 1000
        time.sleep(1.5)  # the lease thread keeps renewing it: alive well past one TTL
        assert published(client, settings.stream, "w-card") == card
    assert published(client, settings.stream, "w-card") is None
    assert client.smembers(workers_key(settings.stream)) == set()


def test_a_killed_workers_card_expires_with_its_lease(
    redis_url: str, client: redis.Redis, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    settings = worker_settings(redis_url, lease_seconds=1.0)
    process = spawn_worker(settings, "doomed", 0.0, tmp_path / "doomed.log", checkpoint=checkpoints["text"])
    try:
        card = wait_until(lambda: published(client, settings.stream, "doomed"), timeout=20, what="the card")
        assert card["id"] == "tiny-text" and card["ops"] == ["generate", "inpaint"]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=5)
        assert published(client, settings.stream, "doomed") is not None  # no clean stop: nothing withdrew it
        wait_until(lambda: published(client, settings.stream, "doomed") is None, timeout=3, what="expiry")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


def test_an_op_the_checkpoint_cannot_run_fails_at_once_with_the_reason(
    redis_url: str, client: redis.Redis, checkpoints: dict[str, Path]
) -> None:
    # Queued behind the gateway's back (or before the card changed): the worker refuses it itself.
    settings = worker_settings(redis_url, max_attempts=3)
    job_id = submit(settings, "variation", VARIATION)
    pipeline = FakePipeline()
    with worker_thread(settings, pipeline, "w-text", checkpoint_card(checkpoints["text"])):
        state = wait_for_status(client, job_id)
    assert state["status"] == "failed" and state["error"] == NO_IMAGE_ENCODER
    assert state["attempts"] == "0" and pipeline.calls == []  # refused before it started


class RefusingPipeline(FakePipeline):
    """A pipeline whose CLIP has no image tower (what models.clip raises: an UnsupportedOperation)."""

    def variation(self, images, seeds, sampling, eta=0.5, progress=None):
        self.calls.append({"op": "variation", "seeds": list(seeds), "steps": 0})
        raise UnsupportedOperation(NO_IMAGE_ENCODER)


def test_a_refusal_from_the_pipeline_is_not_retried(redis_url: str, client: redis.Redis) -> None:
    settings = worker_settings(redis_url, max_attempts=3)
    job_id = submit(settings, "variation", VARIATION)
    pipeline = RefusingPipeline()
    with worker_thread(settings, pipeline):  # no card: the pipeline itself refuses
        state = wait_for_status(client, job_id)
    assert state["status"] == "failed" and state["error"] == NO_IMAGE_ENCODER
    assert state["attempts"] == "1" and len(pipeline.calls) == 1
    time.sleep(1.5)  # a lease later, nothing ran it again
    assert job_state(client, job_id)["attempts"] == "1" and len(pipeline.calls) == 1



def test_the_real_pipeline_without_an_image_tower_fails_a_variation_at_once(
    redis_url: str, client: redis.Redis, checkpoints: dict[str, Path]
) -> None:
    # The real UnCLIPPipeline on the text-only checkpoint, no card (so no refusal before the run): models.clip
    # raises its NoImageEncoderError, an UnsupportedOperation, and the loop does not retry it.
    from models.pipeline import UnCLIPPipeline

    settings = worker_settings(redis_url, max_attempts=3)
    pipeline = UnCLIPPipeline.from_checkpoint(checkpoints["text"], device="cpu", dtype="float32")
    job_id = submit(settings, "variation", VARIATION | {"prior_steps": 1, "decoder_steps": 1})
    with worker_thread(settings, pipeline):
        state = wait_for_status(client, job_id, timeout=60)
        time.sleep(1.5)  # a lease later, nothing ran it again
    assert state["status"] == "failed" and state["error"] == NO_IMAGE_ENCODER
    assert job_state(client, job_id)["attempts"] == "1"
