from __future__ import annotations

import dataclasses
import fnmatch
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
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


def test_towers_of_any_mlp_width_heads_depth_and_projection(tmp_path: Path) -> None:
    """Odd sizes everywhere: MLP widths that are not 4 x the width, 3 heads, 1 and 3 layers, projection
    40 apart from both widths."""
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    hf_text = save_text_model(
        tmp_path / "text_encoder",
        text_config(tokenizer, width=48, mlp_width=104, heads=3, layers=1, projection_dim=40),
    )
    hf_vision = save_vision_model(
        tmp_path / "image_encoder", vision_config(40, width=36, mlp_width=100, heads=3, layers=3)
    )
    config, tensors = load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
    assert (config.text_mlp, config.vision_mlp, config.embed_dim) == (104, 100, 40)
    assert (config.text_layers, config.vision_layers, config.vision_heads) == (1, 3, 3)
    ours = CLIP(config).eval()
    ours.load_state_dict(tensors)
    ids, _ = tokenizer.encode(PROMPTS)
    images = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        encoding = ours.encode_text(ids)
        theirs = hf_text(input_ids=ids, attention_mask=encoding.mask.long())
        their_image = hf_vision(pixel_values=hf_pixels(images)).image_embeds
        our_image = ours.encode_image(images)
    assert (encoding.states - theirs.last_hidden_state).abs().max() <= TOL
    assert (encoding.embeds - F.normalize(theirs.text_embeds, dim=-1)).abs().max() <= TOL
    assert (our_image - F.normalize(their_image, dim=-1)).abs().max() <= TOL


def test_a_text_tower_alone_imports_without_an_image_encoder(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    hf_text = save_text_model(tmp_path / "text_encoder", text_config(tokenizer, mlp_width=100))
    config, tensors = load_hf_clip(tmp_path / "text_encoder", text_only=True)
    assert not config.image_encoder and not any(key.startswith("visual.") for key in tensors)
    ours = CLIP(config).eval()
    ours.load_state_dict(tensors)
    ids, _ = tokenizer.encode(PROMPTS)
    with torch.no_grad():
        theirs = hf_text(input_ids=ids).text_embeds
        assert (ours.encode_text(ids).embeds - F.normalize(theirs, dim=-1)).abs().max() <= TOL
        with pytest.raises(ValueError, match="no CLIP image encoder"):
            ours.encode_image(torch.zeros(1, 3, 28, 28))


def test_preprocessing_is_read_from_the_preprocessor_config(tmp_path: Path) -> None:
    """Other statistics, a larger shorter side and bilinear resampling: our pipeline's pixels and embeds
    for pictures of other shapes equal what CLIPImageProcessor hands the transformers tower."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from models.pipeline.images import clip_pixels

    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    save_text_model(tmp_path / "text_encoder", text_config(tokenizer))
    hf_vision = save_vision_model(tmp_path / "image_encoder", vision_config(48))
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 34},
        crop_size={"height": 28, "width": 28},
        resample=2,
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
    )
    processor.save_pretrained(tmp_path / "feature_extractor")  # the image-variations repository's place
    assert (tmp_path / "feature_extractor" / "preprocessor_config.json").is_file()

    config, tensors = load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
    assert (config.image_resize, config.image_resample) == (34, "bilinear")
    assert config.image_mean == (0.5, 0.4, 0.3) and config.image_std == (0.2, 0.25, 0.3)
    ours = CLIP(config).eval()
    ours.load_state_dict(tensors)
    generator = np.random.default_rng(0)
    pictures = [
        Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for width, height in ((60, 40), (37, 90), (28, 28))
    ]
    theirs = processor(pictures, return_tensors="pt").pixel_values  # [3, 3, 28, 28] normalised
    pixels = clip_pixels(pictures, config)  # [-1, 1], before normalisation
    mean, std = (torch.tensor(v)[:, None, None] for v in (config.image_mean, config.image_std))
    assert ((((pixels + 1) / 2 - mean) / std) - theirs).abs().max() <= 1e-4
    with torch.no_grad():
        expected = F.normalize(hf_vision(pixel_values=theirs).image_embeds, dim=-1)
        assert (ours.encode_image(pixels) - expected).abs().max() <= TOL
    default = dataclasses.replace(config, image_resize=None)  # squashed, not cropped: another input
    assert (clip_pixels(pictures[:1], default) - pixels[:1]).abs().max() > 0.1


@pytest.mark.parametrize(
    ("tower", "field", "value", "message"),
    [
        (
            "text",
            "hidden_act",
            "relu",
            "hidden_act 'relu' is not supported (*text_encoder/config.json: hidden_act)",
        ),
        (
            "vision",
            "hidden_act",
            "gelu",
            "hidden_act 'gelu' (*image_encoder/config.json: hidden_act) differs",
        ),
        ("vision", "num_attention_heads", 5, "num_attention_heads 5 does not divide hidden_size 64"),
        ("vision", "projection_dim", 40, "projection_dim 40 (*image_encoder/config.json) differs"),
    ],
)
def test_an_unsupported_config_names_the_field_and_value(
    tmp_path: Path, tower: str, field: str, value: object, message: str
) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    save_text_model(tmp_path / "text_encoder", text_config(tokenizer))
    save_vision_model(tmp_path / "image_encoder", vision_config(48))
    path = tmp_path / f"{tower}_encoder" if tower == "text" else tmp_path / "image_encoder"
    document = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**document, field: value}))
    with pytest.raises(ConversionError) as raised:
        load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
    assert fnmatch.fnmatch(str(raised.value), f"{message}*"), str(raised.value)


def test_a_full_clip_model_config_error_names_text_config(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "clip")
    text = text_config(tokenizer)
    config = HFCLIPConfig(
        text_config=text.to_dict(), vision_config=vision_config(48).to_dict(), projection_dim=48
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip", safe_serialization=True)
    document = json.loads((tmp_path / "clip" / "config.json").read_text())
    document["text_config"]["hidden_act"] = "relu"
    (tmp_path / "clip" / "config.json").write_text(json.dumps(document))
    with pytest.raises(
        ConversionError, match=r"hidden_act 'relu' is not supported \(.*text_config\.hidden_act\)"
    ):
        load_hf_clip(tmp_path / "clip")


def test_refuses_pickles_unknown_tensors_and_preprocessing_it_cannot_do(tmp_path: Path) -> None:
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

    preprocessor = tmp_path / "image_encoder" / "preprocessor_config.json"
    preprocessor.write_text(json.dumps({"crop_size": 32, "size": 32}))
    with pytest.raises(ConversionError, match=r"crop_size 32 is not supported .*takes 28 x 28"):
        load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
    preprocessor.write_text(
        json.dumps({"crop_size": 28, "size": {"shortest_edge": 28}, "do_center_crop": False})
    )
    with pytest.raises(ConversionError, match="do_center_crop False is not supported"):
        load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
    preprocessor.unlink()

    weights.rename(tmp_path / "image_encoder" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="only safetensors"):
        load_hf_clip(tmp_path / "text_encoder", tmp_path / "image_encoder")
