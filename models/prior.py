"""The diffusion prior of unCLIP (Ramesh et al. 2022, §2.1): a decoder-only causal transformer.

Its sequence is `[L projected CLIP text tokens, text embedding, timestep embedding, noised image
embedding x_t, learned query]`; the query's output predicts x0, the clean CLIP image embedding. All
embeddings live in diffusion space: unit CLIP vectors times `embed_scale` (≈ sqrt(E), so that their
entries have unit variance like the noise). Rows with `drop_text` see a learned null text instead
(classifier-free guidance, and the 10 % text dropout of training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.clip import TextEncoding, Transformer
from models.config import PriorConfig
from models.nn import LayerNorm, timestep_embedding


class DiffusionPrior(nn.Module):
    extra_tokens = 4  # text embedding, timestep, x_t, query

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_scale = float(config.embed_scale)  # type: ignore[arg-type]
        width, length = config.width, config.context_length
        self.text_states_proj = nn.Linear(config.text_width, width)
        # "eot_state": projects the end-of-text token state [B, W] (CLIP's text projection folded in).
        text_embed_in = config.text_width if config.text_embed_from == "eot_state" else config.embed_dim
        self.text_embed_proj = nn.Linear(text_embed_in, width)
        self.time_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.image_embed_proj = nn.Linear(config.embed_dim, width)
        self.query = nn.Parameter(torch.randn(width) * width**-0.5)
        self.null_text_states = nn.Parameter(torch.randn(length, width) * width**-0.5)
        self.null_text_embed = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(length + self.extra_tokens, width) * 0.01)
        self.transformer = Transformer(width, config.layers, config.heads, 4 * width, activation="gelu")
        self.ln_final = LayerNorm(width)
        self.out_proj = nn.Linear(width, config.embed_dim)
        if config.latent_stats:
            self.clip_mean = nn.Parameter(torch.zeros(config.embed_dim))
            self.clip_std = nn.Parameter(torch.ones(config.embed_dim))

    def embeds_to_latents(self, embeds: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings `[B, E]` → the diffusion space the prior works in."""
        if self.config.latent_stats:
            return (embeds - self.clip_mean.to(embeds.dtype)) / self.clip_std.to(embeds.dtype)
        return embeds * self.embed_scale

    def latents_to_embeds(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `embeds_to_latents`: our space gives z back unnormalised (normalise it for a
        unit vector); Karlo's gives the raw CLIP embedding its decoder takes."""
        if self.config.latent_stats:
            return latents * self.clip_std.to(latents.dtype) + self.clip_mean.to(latents.dtype)
        return latents / self.embed_scale

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, text: TextEncoding, drop_text: torch.Tensor
    ) -> torch.Tensor:
        """x_t `[B, E]`, t `[B]`, text of B prompts, drop_text `[B]` bool → predicted x0 `[B, E]`."""
        dtype = self.out_proj.weight.dtype
        batch, length = x_t.shape[0], text.states.shape[1]
        drop = drop_text.to(x_t.device)
        text_states = self.text_states_proj(text.states.to(dtype))  # [B, L, width]
        text_states = torch.where(drop[:, None, None], self.null_text_states[:length], text_states)
        if self.config.text_embed_from == "eot_state":
            # The mask is True up to and including the end-of-text token.
            eot = (text.mask.to(x_t.device).sum(dim=1) - 1).clamp(min=0)  # [B]
            pooled = text.states[torch.arange(batch, device=x_t.device), eot]  # [B, W]
            text_embed = self.text_embed_proj(pooled.to(dtype))
        else:
            text_embed = self.text_embed_proj(text.embeds.to(dtype) * self.embed_scale)  # [B, width]
        text_embed = torch.where(drop[:, None], self.null_text_embed, text_embed)
        time = self.time_embed(timestep_embedding(t, self.config.width).to(dtype))
        image = self.image_embed_proj(x_t.to(dtype))
        query = self.query.expand(batch, -1)
        tokens = torch.cat([text_states, torch.stack([text_embed, time, image, query], dim=1)], dim=1)
        tokens = tokens + self.positional_embedding[: length + self.extra_tokens]
        # Dropped rows attend to the whole learned null sequence, or to its first null_text_tokens.
        null_length = length if self.config.null_text_tokens is None else self.config.null_text_tokens
        null_mask = torch.arange(length, device=x_t.device) < null_length  # [L]
        text_mask = torch.where(drop[:, None], null_mask, text.mask.to(x_t.device))
        key_padding_mask = F.pad(text_mask, (0, self.extra_tokens), value=True)  # [B, L + 4]
        out = self.transformer(tokens, key_padding_mask=key_padding_mask, causal=True)
        return self.out_proj(self.ln_final(out[:, -1]))
