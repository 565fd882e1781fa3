"""Tiny real checkpoints for the service tests (random weights; writing one needs torch, reading its
model card does not): a full one, and a text-to-image one like a Karlo import without `--image-encoder`."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def tiny_checkpoint(folder: Path, image_encoder: bool = True, sr1024: bool = True) -> Path:
    """A tiny checkpoint in `folder` (its name becomes the model id); without its CLIP image tower and/or
    its 1024 px upsampler when asked."""
    from models.checkpoint import init_checkpoint
    from models.config import named_config

    config = named_config("tiny")
    config = dataclasses.replace(config, clip=dataclasses.replace(config.clip, image_encoder=image_encoder))
    if not sr1024:
        config = dataclasses.replace(config, sr1024=None, sr1024_diffusion=None)
    return init_checkpoint(folder, config, seed=0)
