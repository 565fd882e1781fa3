"""From job params (Contract C) to UnCLIPPipeline calls (Contract B), several jobs per call.

Jobs are *compatible* when they share the op, the resolved Sampling and the op's options (eta; frames and
latent): their items then go through one pipeline call. An item is one output image (generate, variation,
inpaint: item i of a job uses seed + i) or one whole sequence of `frames` images (interpolate, text_diff:
the job's seed). Because the pipeline makes each item from its inputs and seed alone (batch invariance),
a job's images do not depend on what it was batched with. A call carries at most `max_batch_size` images;
a single job larger than that is split into several calls.

No torch here: the pipeline is any `models.contract.Pipeline` (tests pass a fake one). Which jobs share
a call is `service.worker.batching`'s policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from models.contract import (
    DEFAULT_LATENT,
    DEFAULT_SOURCE_CAPTION,
    OPS,
    VARIATION_ETA,
    Pipeline,
    ProgressCallback,
    Sampling,
    image_count,
)
from service.jobs.codec import image_from_param

SAMPLING_FIELDS = Sampling.job_fields()


class JobInputError(ValueError):
    """The job's params cannot run (unknown op, undecodable image, a size the checkpoint cannot make).
    Retrying would not help: the job fails at once."""


@dataclass
class _Item:
    inputs: tuple[Any, ...]  # the op's per-item positional arguments before `seeds`
    seed: int
    images: int  # 1, or frames for a sequence


@dataclass(frozen=True)
class BatchKey:
    """Jobs with equal keys can share a pipeline call."""

    op: str
    sampling: Sampling  # frozen, so hashable
    options: tuple[tuple[str, Any], ...]  # the op's keyword arguments: eta | frames, latent | frames


@dataclass
class PreparedJob:
    """A job's params decoded into pipeline items, ready to run alongside jobs with the same `key`."""

    key: BatchKey
    items: list[_Item]
    warnings: list[str]


def _image(params: dict[str, Any], field: str, mode: str = "RGB") -> Image.Image:
    try:
        return image_from_param(params[field], field, mode)
    except ValueError as error:
        raise JobInputError(str(error)) from None


class Executor:
    def __init__(self, pipeline: Pipeline, max_batch_size: int, refusals: Mapping[str, str] | None = None):
        """`refusals`: op → why the checkpoint cannot run it (its model card's); such jobs fail at once."""
        self.pipeline = pipeline
        self.max_batch_size = max(1, max_batch_size)
        self.refusals = dict(refusals or {})

    def batch_key(self, op: str, params: dict[str, Any]) -> BatchKey:
        """Equal for jobs that can share a pipeline call. Raises JobInputError for a job that cannot run."""
        if op not in OPS:
            raise JobInputError(f"unknown op {op!r}")
        if op in self.refusals:
            raise JobInputError(self.refusals[op])
        try:
            sampling = self.pipeline.sampling(**{name: params.get(name) for name in SAMPLING_FIELDS})
        except ValueError as error:
            raise JobInputError(str(error)) from None
        return BatchKey(op, sampling, tuple(sorted(self._options(op, params).items())))

    def prepare(self, op: str, params: dict[str, Any]) -> PreparedJob:
        """Decodes a job's inputs. Raises JobInputError for a job that cannot run."""
        key = self.batch_key(op, params)
        try:
            items = self._items(op, params)
        except (KeyError, TypeError) as error:
            raise JobInputError(f"params lack or mistype {error}") from None
        if key.sampling.best_of > 1:  # each image is best_of candidates: that is what a call carries
            items = [dataclasses.replace(item, images=item.images * key.sampling.best_of) for item in items]
        return PreparedJob(key, items, self._warnings(params))

    def run(
        self, jobs: Sequence[PreparedJob], progress: ProgressCallback | None = None
    ) -> list[list[Image.Image]]:
        """Runs compatible jobs (one key) and returns each one's images, in order."""
        if len({job.key for job in jobs}) != 1:
            raise ValueError("a batch holds jobs with different keys")
        key = jobs[0].key
        method: Callable[..., list[Any]] = getattr(self.pipeline, key.op)
        items = [(index, item) for index, job in enumerate(jobs) for item in job.items]
        outputs: list[list[Image.Image]] = [[] for _ in jobs]
        for chunk in self._chunks(items):
            columns = [list(column) for column in zip(*(item.inputs for _, item in chunk), strict=True)]
            made = method(*columns, [item.seed for _, item in chunk], key.sampling, **dict(key.options),
                          progress=progress)
            for (index, _), result in zip(chunk, made, strict=True):
                outputs[index].extend(result if isinstance(result, list) else [result])
        return outputs

    def _chunks(self, items: list[tuple[int, _Item]]) -> list[list[tuple[int, _Item]]]:
        """Consecutive runs of items of at most max_batch_size images (at least one item each)."""
        chunks: list[list[tuple[int, _Item]]] = []
        total = 0
        for index, item in items:
            if not chunks or total + item.images > self.max_batch_size:
                chunks.append([])
                total = 0
            chunks[-1].append((index, item))
            total += item.images
        return chunks

    @staticmethod
    def _options(op: str, params: dict[str, Any]) -> dict[str, Any]:
        if op == "variation":
            return {"eta": float(params.get("eta", VARIATION_ETA))}
        if op == "interpolate":
            return {"frames": image_count(op, params), "latent": params.get("latent") or DEFAULT_LATENT}
        if op == "text_diff":
            return {"frames": image_count(op, params)}
        return {}

    @staticmethod
    def _items(op: str, params: dict[str, Any]) -> list[_Item]:
        seed = int(params["seed"])
        n = image_count(op, params)
        if op == "generate":
            return [_Item((params["prompt"],), seed + i, 1) for i in range(n)]
        if op == "variation":
            image = _image(params, "image")
            return [_Item((image,), seed + i, 1) for i in range(n)]
        if op == "inpaint":
            image = _image(params, "image")
            mask = _image(params, "mask", mode="L")
            if mask.size != image.size:
                raise JobInputError(f"mask is {mask.size}, its image {image.size}: they must match")
            return [_Item((image, mask, params["prompt"]), seed + i, 1) for i in range(n)]
        if op == "interpolate":
            inputs = (_image(params, "image_a"), _image(params, "image_b"))
            return [_Item(inputs, seed, n)]
        caption = params.get("source_caption") or DEFAULT_SOURCE_CAPTION
        inputs = (_image(params, "image"), params["prompt"], caption)
        return [_Item(inputs, seed, n)]

    def _warnings(self, params: dict[str, Any]) -> list[str]:
        texts = {name: params[name] for name in ("prompt", "source_caption") if params.get(name)}
        if not texts:
            return []
        cut = self.pipeline.truncated(list(texts.values()))
        return [
            f"{name} is longer than the text encoder's context; it was truncated"
            for name, truncated in zip(texts, cut, strict=True)
            if truncated
        ]
