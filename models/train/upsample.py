"""Stages 4 and 5: the upsamplers 64→256 and 256→1024, on quarter-size random crops (unCLIP §D).

Crops come from `data.crop_pool` (a region across a shape's edge, corners on a 4 px grid), so the
low-resolution input is the crop box-filtered by 4: exactly the same region of the smaller picture. The
input is then corrupted so the upsampler learns to clean up what the stage before it makes:
- 64→256: Gaussian blur, kernel 3, σ 0.6 (the paper's);
- 256→1024: a mix in the spirit of BSR degradation, drawn per row: box / bilinear / bicubic
  downscaling, then Gaussian blur of random σ half the time, then Gaussian noise half the time.
No text, no guidance; crops are flipped left-right at random (every shape is mirror-symmetric).
"""

from __future__ import annotations

import random
from functools import cached_property

import torch
import torch.nn.functional as F

from models.train import data
from models.train.losses import TrainingSchedule, diffusion_loss
from models.train.stage import Batch, Stage, pick

FACTOR = 4


def gaussian_blur(images: torch.Tensor, sigma: float, kernel: int = 3) -> torch.Tensor:
    """Separable Gaussian blur of `[B, C, H, W]` with reflected borders."""
    offsets = torch.arange(kernel, device=images.device, dtype=torch.float32) - (kernel - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(images.dtype)
    channels, pad = images.shape[1], kernel // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, weights.view(1, 1, 1, -1).expand(channels, 1, 1, kernel), groups=channels)
    return F.conv2d(x, weights.view(1, 1, -1, 1).expand(channels, 1, kernel, 1), groups=channels)


def box_downscale(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images, FACTOR)


def blur_corruption(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return gaussian_blur(box_downscale(high), sigma=0.6, kernel=3)


def mixed_degradation(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`[B, 3, S, S]` → `[B, 3, S/4, S/4]`, each row degraded its own way."""
    device = high.device
    rows = []
    draws = torch.rand(high.shape[0], 5, generator=generator, device=device).tolist()
    for row, (mode, blur, sigma, noisy, level) in zip(high, draws, strict=True):
        x = row[None]
        size = x.shape[-1] // FACTOR
        if mode < 1 / 3:
            x = box_downscale(x)
        else:
            method = "bilinear" if mode < 2 / 3 else "bicubic"
            x = F.interpolate(x, size=(size, size), mode=method, antialias=True, align_corners=False)
        if blur < 0.5:
            x = gaussian_blur(x, sigma=0.3 + 1.2 * sigma, kernel=5)
        if noisy < 0.5:
            x = x + 0.04 * level * torch.randn(x.shape, generator=generator, device=device)
        rows.append(x.clamp(-1, 1))
    return torch.cat(rows)


class UpsamplerStage(Stage):
    """Trains `name` ("sr256" or "sr1024") on the crops `pool` with the `corrupt` degradation."""

    @cached_property
    def schedule(self) -> TrainingSchedule:
        return TrainingSchedule(getattr(self.models.config, f"{self.name}_diffusion"), self.device)

    def crops(self) -> torch.Tensor:
        raise NotImplementedError

    def corrupt(self, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def make_batch(self, size: int, rng: random.Random) -> Batch:
        pool = self.crops()
        index = pick(len(pool), size, rng)
        high = data.to_model_range(pool[index].to(self.device))
        flip = torch.tensor([rng.random() < 0.5 for _ in index], device=self.device)
        return {"high": torch.where(flip[:, None, None, None], high.flip(-1), high)}

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = batch["high"]
        low = self.corrupt(x0, generator)
        t = self.schedule.sample_t(x0.shape[0], generator, self.device)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        x_t = self.schedule.q_sample(x0, t, noise)
        output = self.module(x_t, t, low)
        return diffusion_loss(self.schedule, output, x0, x_t, t, noise)


class SR256Stage(UpsamplerStage):
    name = "sr256"

    def crops(self) -> torch.Tensor:
        return self.data.crops256

    def corrupt(self, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return blur_corruption(high, generator)


class SR1024Stage(UpsamplerStage):
    name = "sr1024"

    def crops(self) -> torch.Tensor:
        return self.data.crops1024

    def corrupt(self, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return mixed_degradation(high, generator)
