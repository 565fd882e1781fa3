from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from models.clip import CLIP, CLIP_MEAN, CLIP_STD
from models.convert.clip_hf import import_clip, load_hf_clip, load_imported_clip
from models.convert.hf_files import ConversionError
from tests.models.convert.hf_models import (
    perturb,
    save_text_model,
    save_vision_model,
    text_config,
    tiny_tokenizer,
    vision_config,
)

PROMPTS = ["a photo of a red circle", "green square on the left", ""]
TOL = 1e-4


def hf_pixels(images: torch.Tensor) -> torch.Tensor:
    """What CLIPImageProcessor hands the model for `[-1, 1]` images already at the model's size."""
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return ((images + 1) / 2 - mean) / std


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_text_and_vision_towers_match_transformers(tmp_path: Path, hidden_act: str) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    hf_text = save_text_model(tmp_path / "text_encoder", text_config(tokenizer, hidden_act))
    hf_vision = save_vision_model(tmp_path / "image_encoder", vision_config(48, hidden_act))

    out = import_clip(tmp_path / "text_encoder", tmp_path / "imported", vision=tmp_path / "image_encoder")
    ours, our_tokenizer = load_imported_clip(out)
    assert ours.config.activation == hidden_act

    ids, _ = our_tokenizer.encode(PROMPTS)
    encoding = ours.encode_text(ids)
    images = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        theirs = hf_text(input_ids=ids, attention_mask=encoding.mask.long())
        their_image = hf_vision(pixel_values=hf_pixels(images)).image_embeds
        our_image = ours.encode_image(images)

    assert (encoding.states - theirs.last_hidden_state).abs().max() <= TOL
    assert (encoding.embeds - F.normalize(theirs.text_embeds, dim=-1)).abs().max() <= TOL
    assert (our_image - F.normalize(their_image, dim=-1)).abs().max() <= TOL


def test_full_clip_model_folder_and_raw_image_embeds(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "clip")
    text = text_config(tokenizer)
    config = HFCLIPConfig(
        text_config=text.to_dict(), vision_config=vision_config(48).to_dict(), projection_dim=48
    )
    torch.manual_seed(0)
    hf = CLIPModel(config).eval()
    perturb(hf, 5)
    hf.save_pretrained(tmp_path / "clip", safe_serialization=True)

    clip_config, tensors = load_hf_clip(tmp_path / "clip")
    clip_config.normalize_image_embeds = False
    ours = CLIP(clip_config).eval()
    ours.load_state_dict(tensors)
    images = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        # transformers 5 returns the projected features as the output's pooler_output
        theirs = hf.get_image_features(pixel_values=hf_pixels(images)).pooler_output
        assert (ours.encode_image(images) - theirs).abs().max() <= TOL
    assert torch.equal(tensors["logit_scale"], hf.logit_scale.detach())


def test_a_wrong_mapping_is_caught(tmp_path: Path) -> None:
    """Swapping two layers' weights keeps every shape, so only the numbers can tell."""
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    hf_text = save_text_model(tmp_path / "text_encoder", text_config(tokenizer))
    save_vision_model(tmp_path / "image_encoder", vision_config(48))
    config, tensors = load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
    a, b = "transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.1.mlp.c_fc.weight"
    tensors[a], tensors[b] = tensors[b], tensors[a]
    ours = CLIP(config).eval()
    ours.load_state_dict(tensors)
    ids, _ = tokenizer.encode(PROMPTS)
    with torch.no_grad():
        diff = (
            (ours.encode_text(ids).embeds - F.normalize(hf_text(input_ids=ids).text_embeds, dim=-1))
            .abs()
            .max()
        )
    assert diff > 1e-2


def test_refuses_pickles_unknown_tensors_and_other_normalisation(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    save_text_model(tmp_path / "text_encoder", text_config(tokenizer))
    save_vision_model(tmp_path / "image_encoder", vision_config(48))

    with pytest.raises(ConversionError, match="CLIPVisionModelWithProjection"):
        load_hf_clip(tmp_path / "text_encoder")

    weights = tmp_path / "image_encoder" / "model.safetensors"
    tensors = load_file(weights)
    save_file({**tensors, "vision_model.extra.weight": torch.zeros(1)}, weights)
    with pytest.raises(ConversionError, match="no place"):
        load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
    save_file(tensors, weights)

    (tmp_path / "image_encoder" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "crop_size": 28})
    )
    with pytest.raises(ConversionError, match="image_mean"):
        load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")

    weights.rename(tmp_path / "image_encoder" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="only safetensors"):
        load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
