"""PIL images ↔ image tensors `[B, 3, S, S]` in [-1, 1] (float32), and inpainting masks.

Inputs of any size and mode are converted to RGB and resized to the square the stage works at (no crop,
so a mask drawn on the image stays aligned with it). CLIP's input is the checkpoint's choice
(`clip_pixels`): squashed the same way, or CLIPImageProcessor's shorter-side resize and centre crop.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.config import CLIPConfig


def images_to_tensor(
    images: list[Image.Image],
    size: int,
    device: torch.device | str = "cpu",
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> torch.Tensor:
    """RGB images resized to `size`² → `[B, 3, size, size]` float32 in [-1, 1]."""
    pixels = np.stack([np.asarray(_square(image.convert("RGB"), size, resample)) for image in images])
    x = torch.from_numpy(pixels).to(device=device, dtype=torch.float32)  # [B, S, S, 3] in 0..255
    return x.permute(0, 3, 1, 2) / 127.5 - 1


def clip_pixels(
    images: list[Image.Image], config: CLIPConfig, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """RGB images as CLIP's vision tower takes them before normalisation: `[B, 3, S, S]` float32 in
    [-1, 1], S = config.image_size, resized and cropped as the config says (CLIPConfig.image_resize)."""
    resample = Image.Resampling[config.image_resample.upper()]
    if config.image_resize is None:
        return images_to_tensor(images, config.image_size, device, resample)
    resized = [_shorter_side(image.convert("RGB"), config.image_resize, resample) for image in images]
    cropped = [_centre_crop(image, config.image_size) for image in resized]
    return images_to_tensor(cropped, config.image_size, device)


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """`[B, 3, H, W]` in [-1, 1] → RGB images (one device → host copy for the whole batch)."""
    pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(row) for row in pixels.permute(0, 2, 3, 1).cpu().numpy()]


def known_regions(masks: list[Image.Image], size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Masks (mode L, 255 = repaint) → `[B, 1, size, size]` float32, 1 where the image is kept.

    A pixel at `size` is kept only if no part of it was marked for repainting (box filter, then > 0), so
    a small repaint area never vanishes when the mask is shrunk to 64 px.
    """
    planes = np.stack([np.asarray(_square(mask.convert("L"), size, Image.Resampling.BOX)) for mask in masks])
    repaint = torch.from_numpy(planes > 0).to(device)  # [B, S, S] bool
    return (~repaint).to(torch.float32)[:, None]


def _shorter_side(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Scaled so that its shorter side is `size` (the longer one rounded down, as CLIPImageProcessor)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    scaled = (size, int(size * long / short))
    new_size = scaled if width <= height else scaled[::-1]
    return image if new_size == image.size else image.resize(new_size, resample)


def _centre_crop(image: Image.Image, size: int) -> Image.Image:
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    return image if image.size == (size, size) else image.resize((size, size), resample)
