"""`GET /v1/models` and the refusals at submit, through uvicorn and the real `openai` client, with workers
(the real loop on a fake pipeline) publishing the model cards of tiny real checkpoints in a real Redis."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from models.capabilities import NO_IMAGE_ENCODER
from service.jobs.layout import counts_key
from service.settings import Settings
from service.worker.card import checkpoint_card
from tests.service.checkpoints import tiny_checkpoint
from tests.service.fake_worker import fake_worker
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway, wait_for_job
from tests.service.gateway.gateway_images import png
from tests.service.worker.worker_fixtures import wait_until

KEY = "models-test-key"
CIRCLE = {"op": "generate", "prompt": "a red circle"}
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE = base64.b64encode(png((16, 16), (250, 0, 0))).decode()


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "full": checkpoint_card(tiny_checkpoint(folder / "tiny-full")),
        # like `unclip import karlo` without --image-encoder: no image tower, stops at 256 px
        "text": checkpoint_card(tiny_checkpoint(folder / "tiny-text", image_encoder=False, sr1024=False)),
    }


class Gateway:
    def __init__(self, url: str, settings: Settings):
        self.url = url
        self.settings = settings
        self.http = httpx.Client(base_url=url, headers=AUTH, timeout=30)
        self.openai = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture
def gateway(redis_url: str) -> Iterator[Gateway]:
    settings = gateway_settings(redis_url, api_keys=[KEY])
    with live_gateway(settings) as live:
        gateway = Gateway(live.url, settings)
        yield gateway
        gateway.http.close()


def model_ids(gateway: Gateway) -> list[str]:
    return [model.id for model in gateway.openai.models.list()]


def queued(gateway: Gateway) -> int:
    client = redis.Redis.from_url(gateway.settings.redis_url)
    try:
        return int(client.hget(counts_key(gateway.settings.stream), "queued") or 0)
    finally:
        client.close()


def test_models_lists_what_the_live_workers_serve(gateway: Gateway, cards: dict[str, dict]) -> None:
    with (
        fake_worker(gateway.settings, card=cards["full"], consumer="a"),
        fake_worker(gateway.settings, card=cards["full"], consumer="b"),
        fake_worker(gateway.settings, card=cards["text"], consumer="c"),
    ):
        wait_until(lambda: model_ids(gateway) == ["tiny-full", "tiny-text"], what="both models listed")
        page = gateway.openai.models.list()
        full, text = page.data
        assert full.object == "model" and full.owned_by == "unclip-serve" and full.created > 0
        assert full.workers == 2 and text.workers == 1  # deduplicated by id across workers
        assert full.ops == ["generate", "variation", "interpolate", "text_diff", "inpaint"]
        assert text.ops == ["generate", "inpaint"]
        assert (full.max_size, text.max_size) == (1024, 256)
        assert full.parameters == cards["full"]["parameters"] and full.parameters["sr1024"] > 0
        assert (text.shipped, text.imported_from) == (False, None)
        assert "refusals" not in text.model_extra  # the worker's reasons stay between worker and gateway

        retrieved = gateway.openai.models.retrieve("tiny-text")
        assert retrieved.id == "tiny-text" and retrieved.max_size == 256 and retrieved.workers == 1
        with pytest.raises(openai.NotFoundError) as missing:
            gateway.openai.models.retrieve("karlo-v1-alpha")
        assert missing.value.body["code"] == "model_not_found"
        assert "GET /v1/models" in missing.value.body["message"]
        assert httpx.get(f"{gateway.url}/v1/models").status_code == 401  # auth as the other /v1 routes
    # workers stopped cleanly: their cards are withdrawn
    wait_until(lambda: model_ids(gateway) == [], what="the models to drop out")


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # openai marks variations deprecated
def test_an_op_no_live_worker_can_run_is_422_naming_what_to_import(
    gateway: Gateway, cards: dict[str, dict]
) -> None:
    with fake_worker(gateway.settings, card=cards["text"]):
        wait_until(lambda: model_ids(gateway) == ["tiny-text"], what="the model listed")
        refused = gateway.http.post("/v1/jobs", json={"op": "variation", "image": IMAGE, "size": 64})
        assert refused.status_code == 422, refused.text
        (problem,) = refused.json()["detail"]
        assert problem["loc"] == ["body", "op"] and problem["type"] == "unsupported_op"
        assert problem["msg"] == f"no live worker can run 'variation': {NO_IMAGE_ENCODER}"
        assert "unclip import karlo SRC OUT --image-encoder DIR" in problem["msg"]

        too_big = gateway.http.post("/v1/jobs", json=CIRCLE | {"size": 1024})
        assert too_big.status_code == 422
        (problem,) = too_big.json()["detail"]
        assert problem["loc"] == ["body", "size"] and "stop at 256 px" in problem["msg"]
        assert queued(gateway) == 0  # nothing refused reached the queue

        accepted = gateway.http.post("/v1/jobs", json=CIRCLE | {"size": 256})
        assert accepted.status_code == 202, accepted.text
        assert wait_for_job(gateway.http, accepted.json()["url"])["status"] == "succeeded"

        # the OpenAI routes refuse too, in OpenAI's shape (400 invalid_request_error, as for any bad request)
        with pytest.raises(openai.BadRequestError) as variation:
            gateway.openai.images.create_variation(image=("a.png", png((16, 16), (1, 2, 3)), "image/png"),
                                                   size="256x256")
        assert variation.value.body["param"] == "op" and "--image-encoder" in variation.value.body["message"]
        with pytest.raises(openai.BadRequestError) as large:
            gateway.openai.images.generate(prompt="a red circle", size="512x512")
        assert large.value.body["param"] == "size"
        assert gateway.openai.images.generate(prompt="a red circle", size="256x256").data[0].url


def test_with_no_worker_up_every_op_queues(gateway: Gateway, cards: dict[str, dict]) -> None:
    assert model_ids(gateway) == []
    queued_job = gateway.http.post("/v1/jobs", json={"op": "variation", "image": IMAGE, "size": 1024})
    assert queued_job.status_code == 202, queued_job.text
    assert queued(gateway) == 1
