"""A random Karlo-shaped model in the diffusers UnCLIP folder layout, at a fraction of Karlo's widths.

Karlo (kakaobrain/karlo-v1-alpha) is a CLIP ViT-L/14 text tower (768 wide, 12 layers), a 20-layer prior
transformer 2048 wide (32 heads × 64) over 768-d embeddings, a 64 px decoder UNet with widths
320·(1, 2, 3, 4), 3 residual blocks per level and cross-attention at 32/16/8 px (1536-d context), and a
64 → 256 px upsampler without attention (super_res_first / super_res_last). `karlo_shape(scale)` keeps the
block types, depths, resolutions and schedulers and multiplies every width by `scale` (rounded to whole
64-wide heads for transformers and to multiples of 32 for UNets, so GroupNorm(32) and the heads fit).
The upsampler here has widths base·(1, 2, 3, 4) with 2 blocks per level; Karlo's is wider.

Weights are random with noise on every tensor (diffusers zero-initialises output layers, which would make
the samplers run on constants); only compute matters to the benchmark, not the pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    PriorTransformer,
    UnCLIPPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from models.checkpoint import DEFAULT_WORDS
from models.tokenizer import MERGES_FILE, VOCAB_FILE, build_tokenizer

HEAD_DIM = 64  # every Karlo transformer and decoder attention head is 64 wide
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class KarloShape:
    clip_width: int  # CLIP text width = projection = prior embedding size (Karlo 768)
    clip_layers: int  # 12
    prior_width: int  # 2048
    prior_layers: int  # 20
    context_width: int  # decoder cross_attention_dim (1536)
    decoder_width: int  # decoder block_out_channels[0] (320)
    decoder_head_dim: int  # 64, less when the scaled widths are narrower
    sr_width: int  # upsampler block_out_channels[0]

    def describe(self) -> str:
        d, s = self.decoder_width, self.sr_width
        return (
            f"CLIP text {self.clip_width}w×{self.clip_layers}L, "
            f"prior {self.prior_width}w×{self.prior_layers}L, "
            f"decoder {d}·(1,2,3,4)×3 blocks (attention 32/16/8 px, heads of {self.decoder_head_dim}, "
            f"context {self.context_width}), super-res {s}·(1,2,3,4)×2 blocks"
        )


def _multiple(value: float, step: int) -> int:
    return max(step, round(value / step) * step)


def karlo_shape(scale: float) -> KarloShape:
    decoder_width = _multiple(320 * scale, 32)
    return KarloShape(
        clip_width=_multiple(768 * scale, HEAD_DIM),
        clip_layers=12,
        prior_width=_multiple(2048 * scale, HEAD_DIM),
        prior_layers=20,
        context_width=_multiple(1536 * scale, HEAD_DIM),
        decoder_width=decoder_width,
        decoder_head_dim=HEAD_DIM if decoder_width % HEAD_DIM == 0 else 32,
        sr_width=_multiple(320 * scale, 32),
    )


def _perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))


def _decoder(shape: KarloShape) -> UNet2DConditionModel:
    attention = "SimpleCrossAttnDownBlock2D"
    return UNet2DConditionModel(
        sample_size=64,
        layers_per_block=3,
        down_block_types=("ResnetDownsampleBlock2D", attention, attention, attention),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=tuple(shape.decoder_width * m for m in (1, 2, 3, 4)),
        norm_num_groups=32,
        in_channels=3,
        out_channels=6,  # eps and the learned-range variance interpolant
        cross_attention_dim=shape.context_width,
        class_embed_type="identity",
        attention_head_dim=shape.decoder_head_dim,
        resnet_time_scale_shift="scale_shift",
    )


def _super_res(shape: KarloShape) -> UNet2DModel:
    return UNet2DModel(
        sample_size=256,
        layers_per_block=2,
        down_block_types=("ResnetDownsampleBlock2D",) * 4,
        up_block_types=("ResnetUpsampleBlock2D",) * 4,
        block_out_channels=tuple(shape.sr_width * m for m in (1, 2, 3, 4)),
        norm_num_groups=32,
        in_channels=6,
        out_channels=3,
        add_attention=False,
        resnet_time_scale_shift="scale_shift",
    )


def save_karlo_folder(root: Path, shape: KarloShape, seed: int = 0) -> tuple[Path, Path]:
    """Write the Karlo folder at `root` and a CLIPVisionModelWithProjection folder beside it (Karlo's
    text-to-image repository has none; the importer needs one). Returns (karlo folder, image encoder)."""
    tokenizer = build_tokenizer(DEFAULT_WORDS, CONTEXT_LENGTH)
    tokenizer.save(root / "tokenizer")
    width = shape.clip_width
    text = CLIPTextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        projection_dim=width,  # ViT-L/14: 768 = 768, which the prior and text_proj need
        num_hidden_layers=shape.clip_layers,
        num_attention_heads=width // HEAD_DIM,
        max_position_embeddings=CONTEXT_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.sot_id,
        eos_token_id=tokenizer.eot_id,
        pad_token_id=0,
    )
    vision = CLIPVisionConfig(  # not used by text-to-image: kept tiny
        hidden_size=64,
        intermediate_size=256,
        projection_dim=width,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=28,
        patch_size=14,
        hidden_act="quick_gelu",
    )
    image_encoder = root.parent / f"{root.name}_image_encoder"
    parts = {
        "text_encoder": lambda: CLIPTextModelWithProjection(text),
        "prior": lambda: PriorTransformer(
            num_attention_heads=shape.prior_width // HEAD_DIM,
            attention_head_dim=HEAD_DIM,
            num_layers=shape.prior_layers,
            embedding_dim=width,
        ),
        "text_proj": lambda: UnCLIPTextProjModel(
            clip_extra_context_tokens=4,
            clip_embeddings_dim=width,
            time_embed_dim=4 * shape.decoder_width,
            cross_attention_dim=shape.context_width,
        ),
        "decoder": lambda: _decoder(shape),
        "super_res_first": lambda: _super_res(shape),
        "super_res_last": lambda: _super_res(shape),
    }
    for offset, (name, build) in enumerate(parts.items()):
        torch.manual_seed(seed + offset)
        model = build().eval()
        _perturb(model, seed + offset)
        with torch.no_grad():
            if name == "prior":
                model.clip_std.abs_().add_(0.5)  # the prior divides by it
            if name == "decoder":  # the variance interpolant stays inside [-1, 1], as a trained model's
                model.conv_out.weight[3:] *= 0.1
                model.conv_out.bias[3:] *= 0.1
        model.save_pretrained(root / name, safe_serialization=True)
    torch.manual_seed(seed + len(parts))
    CLIPVisionModelWithProjection(vision).eval().save_pretrained(image_encoder, safe_serialization=True)
    # Karlo's schedulers: x0-predicting prior clipped to ±5, learned-range decoder, fixed-variance upsampler.
    UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
    ).save_config(root / "prior_scheduler")
    UnCLIPScheduler(variance_type="learned_range").save_config(root / "decoder_scheduler")
    UnCLIPScheduler(variance_type="fixed_small_log").save_config(root / "super_res_scheduler")
    return root, image_encoder


def load_diffusers_pipeline(root: Path) -> UnCLIPPipeline:
    """diffusers' UnCLIPPipeline over the folder, as `UnCLIPPipeline.from_pretrained` would assemble it."""
    tokenizer = CLIPTokenizer(
        str(root / "tokenizer" / VOCAB_FILE),
        str(root / "tokenizer" / MERGES_FILE),
        pad_token="!",  # Karlo pads with "!" (id 0)
        model_max_length=CONTEXT_LENGTH,
    )
    return UnCLIPPipeline(
        prior=PriorTransformer.from_pretrained(root / "prior"),
        decoder=UNet2DConditionModel.from_pretrained(root / "decoder"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(root / "text_encoder"),
        tokenizer=tokenizer,
        text_proj=UnCLIPTextProjModel.from_pretrained(root / "text_proj"),
        super_res_first=UNet2DModel.from_pretrained(root / "super_res_first"),
        super_res_last=UNet2DModel.from_pretrained(root / "super_res_last"),
        prior_scheduler=UnCLIPScheduler.from_pretrained(root / "prior_scheduler"),
        decoder_scheduler=UnCLIPScheduler.from_pretrained(root / "decoder_scheduler"),
        super_res_scheduler=UnCLIPScheduler.from_pretrained(root / "super_res_scheduler"),
    )
