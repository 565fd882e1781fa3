"""A tiny random Karlo folder in the published diffusers layout (kakaobrain/karlo-v1-alpha-image-variations):
the same block types, options and schedulers as Karlo, small widths and 32/64 px."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

from tests.models.convert.hf_models import (
    perturb,
    save_text_model,
    save_vision_model,
    text_config,
    tiny_tokenizer,
    vision_config,
)

WIDTH = 48  # CLIP text width = projection size, as ViT-L/14's 768
CONTEXT = 24  # the decoder's cross_attention_dim (Karlo 1536)


def tiny_prior() -> PriorTransformer:
    return PriorTransformer(num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=WIDTH)


def tiny_text_proj() -> UnCLIPTextProjModel:
    return UnCLIPTextProjModel(
        clip_extra_context_tokens=4, clip_embeddings_dim=WIDTH, time_embed_dim=64, cross_attention_dim=CONTEXT
    )


def tiny_decoder() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        layers_per_block=2,
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(16, 32, 48),
        norm_num_groups=8,
        in_channels=3,
        out_channels=6,
        cross_attention_dim=CONTEXT,
        class_embed_type="identity",
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
    )


def tiny_super_res() -> UNet2DModel:
    return UNet2DModel(
        sample_size=64,
        layers_per_block=2,
        down_block_types=("ResnetDownsampleBlock2D",) * 3,
        up_block_types=("ResnetUpsampleBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        norm_num_groups=8,
        in_channels=6,
        out_channels=3,
        add_attention=False,
    )


def make_karlo_folder(root: Path) -> Path:
    tokenizer = tiny_tokenizer(root / "tokenizer")
    save_text_model(root / "text_encoder", text_config(tokenizer, width=WIDTH), seed=10)
    save_vision_model(root / "image_encoder", vision_config(WIDTH), seed=11)
    parts = {
        "prior": tiny_prior,
        "text_proj": tiny_text_proj,
        "decoder": tiny_decoder,
        "super_res_first": tiny_super_res,
        "super_res_last": tiny_super_res,
    }
    for seed, (name, build) in enumerate(parts.items()):
        torch.manual_seed(seed)
        model = build().eval()
        perturb(model, 20 + seed)  # diffusers zero-initialises many tensors; every one must matter here
        with torch.no_grad():
            if name == "prior":
                model.clip_std.abs_().add_(0.5)
            if name == "decoder":  # keep the learned-range interpolant v inside [-1, 1], as a trained model
                model.conv_out.weight[3:] *= 0.1
                model.conv_out.bias[3:] *= 0.1
        model.save_pretrained(root / name, safe_serialization=True)
    UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
    ).save_config(root / "prior_scheduler")
    UnCLIPScheduler(variance_type="learned_range").save_config(root / "decoder_scheduler")
    UnCLIPScheduler(variance_type="fixed_small_log").save_config(root / "super_res_scheduler")
    return root
