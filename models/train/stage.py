"""What every training stage is: the component it trains, how it makes a batch, what its loss is.

A stage's randomness comes from two sources handed in per step: a `random.Random` for the data
(which pictures, which captions) and a `torch.Generator` on the device for the loss (timesteps, noise,
dropout, masks). Both are seeded from (run seed, stage, step), so a resumed run draws what an
uninterrupted one would have drawn.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from models.checkpoint import UnCLIPModels
from models.train import data
from models.train.shapes import Scene

Batch = dict[str, Any]


@dataclass(frozen=True)
class StageSettings:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup: int = 200  # linear learning-rate warm-up, in steps
    ema_decay: float = 0.999
    grad_clip: float = 1.0


@dataclass(frozen=True)
class PoolSizes:
    """Scenes per picture pool; each pool is rendered once and cached."""

    pictures64: int = 20000  # CLIP, prior, decoder: 12 KB each
    crops256: int = 8000  # 64 px crops of 256 px pictures: 12 KB each
    crops1024: int = 2000  # 256 px crops of 1024 px pictures: 196 KB each


class TrainingData:
    """The run's pools, rendered lazily (a run of one stage renders only what that stage reads)."""

    def __init__(
        self,
        seed: int,
        pools: PoolSizes = PoolSizes(),
        cache: Path | None = data.DEFAULT_CACHE,
        workers: int = 1,
    ) -> None:
        self.seed, self.pools, self.cache, self.workers = seed, pools, cache, workers

    @cached_property
    def pictures64(self) -> tuple[list[Scene], torch.Tensor]:
        scenes = data.training_scenes(self.pools.pictures64, seed=self.seed)
        return scenes, data.picture_pool(scenes, 64, self.cache, self.workers)

    @cached_property
    def crops256(self) -> torch.Tensor:
        scenes = data.training_scenes(self.pools.crops256, seed=self.seed + 1)
        return data.crop_pool(scenes, 256, 64, self.seed, self.cache, self.workers)

    @cached_property
    def crops1024(self) -> torch.Tensor:
        scenes = data.training_scenes(self.pools.crops1024, seed=self.seed + 2)
        return data.crop_pool(scenes, 1024, 256, self.seed, self.cache, self.workers)


class Stage(ABC):
    name: ClassVar[str]  # the stage: its training state, seeds and logs
    component: ClassVar[str | None] = None  # the component of UnCLIPModels it trains; None: `name`

    def __init__(
        self,
        models: UnCLIPModels,
        training_data: TrainingData,
        device: torch.device,
        reference: UnCLIPModels | None = None,
    ) -> None:
        """`reference`: the `--init` checkpoint as it was loaded, for stages that hold a fine-tune to it."""
        self.models, self.data, self.device = models, training_data, device
        self.setup(reference)

    def setup(self, reference: UnCLIPModels | None) -> None:
        """What a stage prepares once its models are set (a teacher, a component to add); none by default."""
        return None

    @classmethod
    def trains(cls) -> str:
        return cls.component or cls.name

    @property
    def module(self) -> nn.Module:
        return getattr(self.models, self.trains())

    @cached_property
    def image_embeds(self) -> torch.Tensor:
        """The frozen CLIP's image embeddings `[N, E]` of the 64 px pool, computed once per run."""
        return image_embeddings(self.models.clip, self.data.pictures64[1], self.device)

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer moves; the rest of the module stays as it is. All of it by default."""
        return list(self.module.parameters())

    @abstractmethod
    def make_batch(self, size: int, rng: random.Random) -> Batch:
        """Inputs on the device; conditioning from frozen networks is computed here, without gradients."""

    @abstractmethod
    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-item loss `[B]` (or a scalar) and named parts for the progress bar."""

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. to clamp a parameter); nothing by default."""
        return None


@torch.no_grad()
def image_embeddings(
    clip: nn.Module, pictures: torch.Tensor, device: torch.device, chunk: int = 512
) -> torch.Tensor:
    """CLIP image embeddings `[N, E]` (float32, on `device`) of uint8 pictures `[N, 3, S, S]`."""
    clip.eval()
    rows = [
        clip.encode_image(data.to_model_range(pictures[i : i + chunk].to(device))).float()
        for i in range(0, len(pictures), chunk)
    ]
    return torch.cat(rows)


def pick(count: int, size: int, rng: random.Random) -> list[int]:
    """`size` indices into a pool of `count`, distinct when the pool is large enough."""
    return rng.sample(range(count), size) if size <= count else [rng.randrange(count) for _ in range(size)]


def bernoulli(p: float, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(batch, generator=generator, device=device) < p
