"""What the live workers serve, read from the model cards they publish in Redis (`service.jobs.layout`,
written by `service.worker.card`), cached for `CACHE_SECONDS` so that a submit costs no extra round trip.

`models()` merges the cards by model id (the OpenAI list of `GET /v1/models`); `refusal()` says why a
job cannot run on any live worker: its op is on no card, or its size is above every card's `max_size`
that has the op. With no card published (no worker up yet), nothing is refused: jobs queue as before.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio

from service.jobs.layout import text, worker_card_key, workers_key
from service.settings import Settings

CACHE_SECONDS = 1.0


class LiveModels:
    def __init__(self, redis: redis.asyncio.Redis, settings: Settings, cache_seconds: float = CACHE_SECONDS):
        self.redis = redis
        self.stream = settings.stream
        self.cache_seconds = cache_seconds
        self._cards: list[dict[str, Any]] = []
        self._expires = 0.0

    async def cards(self) -> list[dict[str, Any]]:
        """The cards of the live workers, one per worker (at most `cache_seconds` old)."""
        now = time.monotonic()
        if now >= self._expires:
            self._cards = await self._read()
            self._expires = now + self.cache_seconds
        return self._cards

    async def models(self) -> list[dict[str, Any]]:
        """One entry per model id, in id order: the card (ops and largest size over its workers, without the
        refusals) and `workers`, how many live workers serve it."""
        merged: dict[str, dict[str, Any]] = {}
        for card in await self.cards():
            model = merged.get(card["id"])
            if model is None:
                merged[card["id"]] = {key: value for key, value in card.items() if key != "refusals"} | {
                    "workers": 1
                }
                continue
            model["workers"] += 1
            model["ops"] += [op for op in card["ops"] if op not in model["ops"]]
            model["max_size"] = max(model["max_size"], card["max_size"])
            model["created"] = min(model["created"], card["created"])
        return [merged[model_id] for model_id in sorted(merged)]

    async def refusal(self, op: str, size: Any) -> tuple[str, str] | None:
        """(message, field) when no live worker can run `op` at `size`; None when one can or none is up."""
        cards = await self.cards()
        if not cards:
            return None
        able = [card for card in cards if op in card["ops"]]
        if not able:
            reasons = [card["refusals"][op] for card in cards if op in card.get("refusals", {})]
            why = reasons[0] if reasons else "the served checkpoints do not offer it"
            return f"no live worker can run {op!r}: {why}", "op"
        largest = max(card["max_size"] for card in able)
        if isinstance(size, int) and size > largest:
            return (
                f"no live worker makes {size} px images for {op!r}: the served checkpoints stop at "
                f"{largest} px; ask for size {largest} or less",
                "size",
            )
        return None

    async def _read(self) -> list[dict[str, Any]]:
        names = sorted(text(name) for name in await self.redis.smembers(workers_key(self.stream)))
        if not names:
            return []
        documents = await self.redis.mget([worker_card_key(self.stream, name) for name in names])
        stale = [name for name, document in zip(names, documents, strict=True) if document is None]
        if stale:  # workers killed without withdrawing their card: it expired with their lease
            await self.redis.srem(workers_key(self.stream), *stale)
        return [json.loads(document) for document in documents if document is not None]
