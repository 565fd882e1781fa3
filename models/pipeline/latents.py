"""Per-item random streams and spherical interpolation of embeddings and DDIM latents."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.diffusion import gaussian_noise


def generator_device(device: torch.device | str) -> torch.device:
    """Where an item's random stream lives: on a CUDA pipeline the GPU (noise is drawn there, with no
    host copy per step), else the CPU."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def item_generators(seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per item (`generator_device`): every random number an item uses comes from its own
    stream, so its output does not depend on the batch it runs in (`models.diffusion.gaussian_noise`
    draws row by row)."""
    where = generator_device(device)
    return [torch.Generator(where).manual_seed(seed) for seed in seeds]


def derived_seed(generator: torch.Generator) -> int:
    """A new seed drawn from `generator` (for a second stream that must not repeat the first)."""
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


def frame_generators(seed: int, frames: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """`frames` generators on one and the same stream: every frame of a sequence gets the same noise, so
    frames differ only where their conditioning does."""
    where = generator_device(device)
    return [torch.Generator(where).manual_seed(seed) for _ in range(frames)]


def sequence_streams(
    seeds: list[int], frames: int, fixed_shape: Sequence[int] | None, device: torch.device | str = "cpu"
) -> tuple[list[torch.Generator], torch.Tensor | None]:
    """Per sequence (one seed each): `frames` generators sharing one stream and, for a `fixed_shape`, a
    latent `[B, *fixed_shape]` held for every frame. The latent is drawn first from the seed; the
    frames continue on a seed derived after it, so the two never repeat each other's numbers."""
    generators, fixed = [], []
    for seed in seeds:
        stream = torch.Generator(generator_device(device)).manual_seed(seed)
        if fixed_shape is not None:
            fixed.append(gaussian_noise([stream], fixed_shape, device))
        generators.extend(frame_generators(derived_seed(stream), frames, device))
    return generators, torch.cat(fixed) if fixed_shape is not None else None


def slerp(a: torch.Tensor, b: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from a to b, row by row: a, b `[N, ...]`, fraction `[N]` in [0, 1].

    The angle Ω comes from the directions of a and b; the weights sin((1-f)Ω)/sin Ω and sin(fΩ)/sin Ω are
    applied to a and b themselves, so unit vectors stay unit and Gaussian latents keep their norm.
    Nearly parallel rows (sin Ω ≈ 0) fall back to linear interpolation. Computed in float64.
    """
    a64, b64 = a.flatten(1).double(), b.flatten(1).double()  # [N, D]
    f = fraction.to(device=a.device, dtype=torch.float64)[:, None]  # [N, 1]
    cos = torch.nn.functional.cosine_similarity(a64, b64, dim=1)[:, None].clamp(-1, 1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    parallel = sin < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    weight_a = torch.where(parallel, 1 - f, torch.sin((1 - f) * omega) / safe_sin)
    weight_b = torch.where(parallel, f, torch.sin(f * omega) / safe_sin)
    return (weight_a * a64 + weight_b * b64).reshape(a.shape).to(a.dtype)
