"""Tiny random Karlo folders in the two published diffusers layouts: the same block types, options and
schedulers as Karlo, small widths and 32/64 px.

`make_karlo_folder`: `kakaobrain/karlo-v1-alpha` (UnCLIPPipeline), no image encoder:
```
model_index.json
prior/ decoder/ text_proj/ super_res_first/ super_res_last/   config.json, diffusion_pytorch_model.safetensors
text_encoder/                                                 config.json, model.safetensors
tokenizer/            vocab.json merges.txt special_tokens_map.json tokenizer_config.json
prior_scheduler/ decoder_scheduler/ super_res_scheduler/      scheduler_config.json
```
`make_image_variations_folder`: `kakaobrain/karlo-v1-alpha-image-variations` (UnCLIPImageVariationPipeline):
the same minus prior/ and prior_scheduler/, plus image_encoder/ (CLIPVisionModelWithProjection) and
feature_extractor/preprocessor_config.json (CLIPImageProcessor).

Beside each safetensors file lies its pickled twin's name (`*.bin`), as in the published repositories
("Adding `safetensors` variant"); here it holds bytes no unpickler accepts, so an importer that read it
would fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

from models.config import CLIP_MEAN, CLIP_STD
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
IMAGE_SIZE = 28  # the vision tower's input (Karlo 224)
PICKLED_TWIN = b"not a pickle: the importer must read the safetensors file beside this one"

TEXT_TO_IMAGE_INDEX = {
    "_class_name": "UnCLIPPipeline",
    "_diffusers_version": "0.11.0.dev0",
    "decoder": ["diffusers", "UNet2DConditionModel"],
    "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
    "prior": ["diffusers", "PriorTransformer"],
    "prior_scheduler": ["diffusers", "UnCLIPScheduler"],
    "super_res_first": ["diffusers", "UNet2DModel"],
    "super_res_last": ["diffusers", "UNet2DModel"],
    "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "text_proj": ["unclip", "UnCLIPTextProjModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
}
IMAGE_VARIATIONS_INDEX = {
    **{k: v for k, v in TEXT_TO_IMAGE_INDEX.items() if not k.startswith("prior")},
    "_class_name": "UnCLIPImageVariationPipeline",
    "_diffusers_version": "0.12.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
}
SHARED_PARTS = (
    "text_encoder", "tokenizer", "text_proj", "decoder", "decoder_scheduler",
    "super_res_first", "super_res_last", "super_res_scheduler",
)  # fmt: skip


def preprocessor_config(size: int = IMAGE_SIZE) -> dict:
    """CLIPImageProcessor's preprocessor_config.json as the image-variations repository has it (224 there)."""
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }


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
    """The text-to-image repository's layout in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(root / "tokenizer")
    _tokenizer_files(root / "tokenizer")
    save_text_model(root / "text_encoder", text_config(tokenizer, width=WIDTH), seed=10)
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
    _write_json(root / "model_index.json", TEXT_TO_IMAGE_INDEX)
    _add_pickled_twins(root)
    return root


def make_image_variations_folder(root: Path, karlo: Path) -> Path:
    """The image-variations repository's layout in `root`, sharing `karlo`'s text-to-image parts (as the
    published one shares karlo-v1-alpha's: diffusers' convert_unclip_txt2img_to_image_variation)."""
    root.mkdir(parents=True, exist_ok=True)
    for part in SHARED_PARTS:
        shutil.copytree(karlo / part, root / part)
    save_vision_model(root / "image_encoder", vision_config(WIDTH, image_size=IMAGE_SIZE), seed=11)
    (root / "image_encoder" / "pytorch_model.bin").write_bytes(PICKLED_TWIN)
    _write_json(root / "feature_extractor" / "preprocessor_config.json", preprocessor_config())
    _write_json(root / "model_index.json", IMAGE_VARIATIONS_INDEX)
    return root


def _tokenizer_files(folder: Path) -> None:
    """The two files besides vocab.json and merges.txt that the published tokenizer/ holds."""
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
               "unk_token": "<|endoftext|>"}  # fmt: skip
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
         "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"},
    )  # fmt: skip


def _add_pickled_twins(root: Path) -> None:
    for weights in root.glob("*/*.safetensors"):
        twin = "pytorch_model.bin" if weights.name == "model.safetensors" else "diffusion_pytorch_model.bin"
        (weights.parent / twin).write_bytes(PICKLED_TWIN)


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
