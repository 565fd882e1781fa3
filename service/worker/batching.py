"""The batching policy, pure (no Redis, no torch): which claimed jobs run together in one pipeline call.

Jobs are *compatible* when their keys are equal (`service.worker.executor.BatchKey`: the op, the resolved
Sampling and the op's options). A batch is the oldest job plus the later compatible ones that fit in
`max_images` images; the rest go back to the queue. Retries of a job that raised run alone; jobs taken over
from a dead worker batch like fresh ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Candidate(Generic[T]):
    """A job waiting for a batch: `key` tells compatible jobs apart; `solo` jobs run alone (retries after an
    exception, so that a job that breaks its batch cannot take its batch-mates down with it every time;
    not takeovers, whose worker died for reasons of its own)."""

    job: T
    key: Hashable
    images: int
    solo: bool = False


def first_batch(candidates: Sequence[Candidate[T]], max_images: int) -> tuple[list[T], list[T]]:
    """The oldest job plus the later compatible ones that fit in `max_images` images; and the rest."""
    if not candidates:
        return [], []
    head = candidates[0]
    batch, rest, total = [head], [], head.images
    for candidate in candidates[1:]:
        fits = total + candidate.images <= max_images
        if not head.solo and not candidate.solo and candidate.key == head.key and fits:
            batch.append(candidate)
            total += candidate.images
        else:
            rest.append(candidate)
    return [c.job for c in batch], [c.job for c in rest]
