"""The real worker loop (service.worker.process.run_worker) on a torch-free pipeline whose images show
which params reached it, so the gateway tests finish jobs through the same Redis code (claim, START,
PROGRESS, FINISH, cancel) as production.

Its prompt reader (`revised`) rewrites a prompt into lowercase with single spaces; generate's and inpaint's
images carry the rewrite as their revised prompt when it differs from the prompt ("A  Red circle" is drawn
as "a red circle"; "a red circle" is drawn as given and its images carry none)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from models.contract import DEFAULT_FRAMES, DEFAULT_LATENT, REVISED_PROMPT_KEY, SCORE_KEY, Sampling
from service.settings import Settings
from tests.service.worker.worker_fixtures import FakePipeline, worker_thread


def resized(picture: Image.Image, size: int) -> Image.Image:
    return picture.convert("RGB").resize((size, size), Image.Resampling.NEAREST)


def revised(prompt: str) -> str | None:
    """The fake prompt reader's rewrite: lowercase, single spaces; None when that is the prompt itself."""
    canonical = " ".join(prompt.lower().split())
    return canonical if canonical != prompt else None


def with_revised_prompts(images: list[Image.Image], prompts: list[str]) -> list[Image.Image]:
    """Marks each image with its prompt's rewrite, as the real pipeline does when its reader rewrote it."""
    for image, prompt in zip(images, prompts, strict=True):
        if (drawn := revised(prompt)) is not None:
            image.info[REVISED_PROMPT_KEY] = drawn
    return images


class GatewayPipeline(FakePipeline):
    """FakePipeline whose `sampling.size` square images show their inputs: generate → solid red seed % 256
    (item i of a job has seed + i); inpaint → its mask (white = repaint); the other ops → their (first)
    input image. Progress: one "decoder" step per image of the call, `step_delay` s each (no prior steps),
    so a job's steps climb to its image count. generate's and inpaint's images carry `revised` prompts."""

    def _run(self, op: str, seeds: list[int], sampling: Sampling, texts: list[str], progress: Any,
             images: int) -> None:
        self._sample(op, seeds, sampling, texts, progress, stages=(("decoder", images),))

    def generate(self, prompts, seeds, sampling, progress=None):
        """With best_of > 1 each image carries a score as the real pipeline's do: here seed / 1000."""
        self._run("generate", seeds, sampling, prompts, progress, len(seeds))
        images = [Image.new("RGB", (sampling.size,) * 2, (seed % 256, 0, 0)) for seed in seeds]
        if sampling.best_of > 1:
            for image, seed in zip(images, seeds, strict=True):
                image.info[SCORE_KEY] = seed / 1000
        return with_revised_prompts(images, prompts)

    def variation(self, images, seeds, sampling, eta=0.5, progress=None):
        self._run("variation", seeds, sampling, [], progress, len(seeds))
        return [resized(image, sampling.size) for image in images]

    def inpaint(self, images, masks, prompts, seeds, sampling, progress=None):
        self._run("inpaint", seeds, sampling, prompts, progress, len(seeds))
        return with_revised_prompts([resized(mask, sampling.size) for mask in masks], prompts)

    def interpolate(self, images_a, images_b, seeds, sampling, frames=DEFAULT_FRAMES, latent=DEFAULT_LATENT,
                    progress=None):
        self._run("interpolate", seeds, sampling, [], progress, len(seeds) * frames)
        return [[resized(image, sampling.size)] * frames for image in images_a]

    def text_diff(self, images, prompts, source_captions, seeds, sampling, frames=DEFAULT_FRAMES,
                  progress=None):
        self._run("text_diff", seeds, sampling, prompts, progress, len(seeds) * frames)
        return [[resized(image, sampling.size)] * frames for image in images]


@contextmanager
def fake_worker(
    settings: Settings, step_delay: float = 0.0, card: dict[str, Any] | None = None, consumer: str = "w1"
) -> Iterator[GatewayPipeline]:
    """run_worker on a GatewayPipeline in a thread (50 ms poll, no metrics port), publishing `card` if given,
    until the block exits; it finishes the batch it is running first."""
    pipeline = GatewayPipeline(step_delay)
    with worker_thread(settings.model_copy(update={"worker_metrics_port": None}), pipeline, consumer, card):
        yield pipeline
