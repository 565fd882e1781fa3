"""Layers that several networks share (CLIP, the prior, the UNets), as GLIDE's `nn.py` keeps them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """Normalises in at least float32 whatever the dtype (fp16 statistics overflow; float64 stays)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)
        return F.layer_norm(
            x.to(wide), self.normalized_shape, self.weight.to(wide), self.bias.to(wide), self.eps
        ).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `[B, dim]` of integer timesteps `[B]` (Transformer / ADM), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))
