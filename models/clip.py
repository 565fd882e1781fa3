"""CLIP (Radford et al. 2021): a causal text transformer and a ViT image encoder into one joint space.

Parameter names follow OpenAI's `clip/model.py` (`token_embedding`, `transformer.resblocks.N.attn.
in_proj_weight`, `ln_final`, `text_projection`, `visual.conv1`, `visual.proj`, ...), so an OpenAI ViT
state dict loads as it is; Hugging Face names map one to one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import attention
from models.capabilities import NO_IMAGE_ENCODER, UnsupportedOperation
from models.config import CLIP_MEAN, CLIP_STD, CLIPConfig
from models.nn import LayerNorm

__all__ = ["CLIP", "CLIP_MEAN", "CLIP_STD", "NoImageEncoderError", "TextEncoding"]


class NoImageEncoderError(UnsupportedOperation):
    """An image was given to a CLIP imported without its vision tower."""


class TextEncoding(NamedTuple):
    embeds: torch.Tensor  # [B, E], L2-normalised
    states: torch.Tensor  # [B, L, W], every token after the final layer norm
    mask: torch.Tensor  # [B, L] bool, True up to and including the end-of-text token


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameter layout, running through `attention()`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        b, s, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, S, 3W]
        q, k, v = qkv.view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, S, D]
        out = attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, w))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, eps: float) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width, activation)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_padding_mask=key_padding_mask, causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(
        self, width: int, layers: int, heads: int, mlp_width: int, activation: str, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, activation, eps) for _ in range(layers)
        )

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, key_padding_mask=key_padding_mask, causal=causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width, grid = config.vision_width, config.image_size // config.patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width, eps=config.layer_norm_eps)
        self.transformer = Transformer(
            width,
            config.vision_layers,
            config.vision_heads,
            config.vision_mlp,
            config.activation,
            config.layer_norm_eps,
        )
        self.ln_post = LayerNorm(width, eps=config.layer_norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised pixels `[B, 3, S, S]` → unnormalised image features `[B, E]`."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [B, grid², W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.context_length = config.context_length
        width = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, width))
        self.transformer = Transformer(
            width,
            config.text_layers,
            config.text_heads,
            config.text_mlp,
            config.activation,
            config.layer_norm_eps,
        )
        self.ln_final = LayerNorm(width, eps=config.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        self.visual = VisionTransformer(config) if config.image_encoder else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # for contrastive training
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def encode_text(self, ids: torch.Tensor) -> TextEncoding:
        """ids `[B, L]` (start token, text, end-of-text token, padding) → TextEncoding."""
        states, mask, pooled = self.text_tower(ids)
        embeds = F.normalize((pooled @ self.text_projection).float(), dim=-1).to(states.dtype)
        return TextEncoding(embeds, states, mask)

    def text_tower(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids `[B, L]` → states `[B, L, W]`, mask `[B, L]` and pooled `[B, W]` (the end-of-text token's
        state, which `text_projection` maps to z_t)."""
        length = ids.shape[1]
        # The end-of-text token holds the largest id (OpenAI's convention); argmax takes its first position.
        eot = ids.argmax(dim=-1)  # [B]
        positions = torch.arange(length, device=ids.device)
        mask = positions[None, :] <= eot[:, None]  # [B, L]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x = self.transformer(x, key_padding_mask=mask, causal=True)
        states = self.ln_final(x)  # [B, L, W]
        pooled = states[torch.arange(ids.shape[0], device=ids.device), eot]  # [B, W]
        return states, mask, pooled

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images `[B, 3, H, W]` in [-1, 1] → L2-normalised embeddings `[B, E]` (raw projections when
        the config sets normalize_image_embeds False). The picture's resize and crop are the caller's
        (`models.pipeline.images.clip_pixels`); a tensor of another size is resized here, uncropped."""
        if self.visual is None:
            raise NoImageEncoderError(NO_IMAGE_ENCODER)
        pixels = images.float()
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(
                pixels,
                size=(self.image_size, self.image_size),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )
        mean = torch.tensor(self.config.image_mean, device=pixels.device)[:, None, None]
        std = torch.tensor(self.config.image_std, device=pixels.device)[:, None, None]
        pixels = ((pixels + 1) / 2 - mean) / std
        features = self.visual(pixels.to(self.dtype))
        if not self.config.normalize_image_embeds:
            return features
        return F.normalize(features.float(), dim=-1).to(features.dtype)

    def forward(self, ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Contrastive logits `[B_images, B_texts]` scaled by the learned temperature."""
        text = self.encode_text(ids).embeds
        image = self.encode_image(images)
        return self.logit_scale.exp() * image @ text.t()
