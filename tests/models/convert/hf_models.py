"""Tiny random Hugging Face CLIP towers shaped like ViT-L/14 (patch 14, projection = text width), for the
importer tests. Every parameter gets noise, so that a swapped or transposed tensor changes the outputs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from models.tokenizer import Tokenizer, build_tokenizer

WORDS = "a photo of red green circle square on the left right".split()


def perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def tiny_tokenizer(folder: Path, context_length: int = 77) -> Tokenizer:
    tokenizer = build_tokenizer(WORDS, context_length)
    tokenizer.save(folder)
    return tokenizer


def text_config(
    tokenizer: Tokenizer,
    hidden_act: str = "quick_gelu",
    width: int = 48,
    mlp_width: int | None = None,
    heads: int = 3,
    layers: int = 2,
    projection_dim: int | None = None,
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=width,
        intermediate_size=mlp_width or 4 * width,
        projection_dim=projection_dim or width,  # ViT-L/14: 768 = 768
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.context_length,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.sot_id,
        eos_token_id=tokenizer.eot_id,
        pad_token_id=0,
    )


def vision_config(
    projection_dim: int,
    hidden_act: str = "quick_gelu",
    width: int = 64,
    mlp_width: int | None = None,
    heads: int = 4,
    layers: int = 2,
    image_size: int = 28,
) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=mlp_width or 4 * width,
        projection_dim=projection_dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=14,
        hidden_act=hidden_act,
    )


def save_text_model(folder: Path, config: CLIPTextConfig, seed: int = 0) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config).eval()
    perturb(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def save_vision_model(folder: Path, config: CLIPVisionConfig, seed: int = 1) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(config).eval()
    perturb(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return model
