"""The model card a worker publishes in Redis for the checkpoint it serves (layout: `service.jobs.layout`).

The gateway lists the cards of live workers at `GET /v1/models` and refuses at submit an op or a size no
live worker can run. The card says what `models.capabilities` reads from the checkpoint's `unclip.json`:

    {"id": "unclip-shapes", "created": 1764000000, "owned_by": "unclip-serve",
     "ops": ["generate", "inpaint"], "max_size": 256, "shipped": false, "imported_from": "karlo",
     "parameters": {"clip": ..., "prior": ...}, "refusals": {"variation": "this checkpoint has no ..."}}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import redis

from models.capabilities import CONFIG_FILE, OPERATIONS, Capabilities, read_capabilities
from service.jobs.layout import worker_card_key, workers_key

SHIPPED_MODEL_ID = "unclip-shapes"  # the shipped model: a small unCLIP trained on a world of coloured shapes
OWNER = "unclip-serve"

log = logging.getLogger("service.worker")


def model_id(capabilities: Capabilities) -> str:
    """A stable id: the shipped model's name, else the checkpoint folder's name (`unclip import`'s OUT)."""
    return SHIPPED_MODEL_ID if capabilities.shipped else capabilities.folder.resolve().name


def model_card(capabilities: Capabilities) -> dict[str, Any]:
    """The card of a checkpoint; `created` is when its unclip.json was written (s since the epoch)."""
    return {
        "id": model_id(capabilities),
        "created": int((capabilities.folder / CONFIG_FILE).stat().st_mtime),
        "owned_by": OWNER,
        "ops": list(capabilities.operations),
        "max_size": capabilities.largest_size,
        "shipped": capabilities.shipped,
        "imported_from": capabilities.imported_from,
        "parameters": dict(capabilities.parameters),
        "refusals": {op: reason for op in OPERATIONS if (reason := capabilities.refusal(op)) is not None},
    }


def checkpoint_card(folder: str | Path) -> dict[str, Any]:
    return model_card(read_capabilities(folder))


class CardPublisher:
    """Keeps one worker's card in Redis: `publish` at start and on every lease tick (it re-sets the TTL, and
    restores the card after a Redis restart), `withdraw` at a clean stop."""

    def __init__(self, client: redis.Redis, stream: str, name: str, card: dict[str, Any], ttl_seconds: float):
        self.client = client
        self.stream = stream
        self.name = name
        self.document = json.dumps(card)
        self.ttl_ms = max(100, int(ttl_seconds * 1000))

    def publish(self) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(worker_card_key(self.stream, self.name), self.document, px=self.ttl_ms)
            pipe.sadd(workers_key(self.stream), self.name)
            pipe.execute()

    def withdraw(self) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(worker_card_key(self.stream, self.name))
            pipe.srem(workers_key(self.stream), self.name)
            pipe.execute()
