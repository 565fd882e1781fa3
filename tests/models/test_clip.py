import dataclasses
import math

import pytest
import torch

from models.clip import CLIP
from models.config import named_config
from models.tokenizer import build_tokenizer

CONFIG = named_config("tiny").clip
TOKENIZER = build_tokenizer(["a", "red", "blue", "circle", "square"])


@pytest.fixture(scope="module")
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(CONFIG).eval()


def ids_for(*prompts: str) -> torch.Tensor:
    return TOKENIZER.encode(list(prompts))[0]


def test_encode_text_shapes_norms_and_mask(clip: CLIP) -> None:
    with torch.no_grad():
        text = clip.encode_text(ids_for("a red circle", "blue"))
    assert text.embeds.shape == (2, CONFIG.embed_dim) and text.embeds.dtype == torch.float32
    assert text.states.shape == (2, 77, CONFIG.text_width)
    assert torch.allclose(text.embeds.norm(dim=-1), torch.ones(2), atol=1e-5)
    # [sot, a, red, circle, eot] and [sot, blue, eot] are real; the rest is padding.
    assert text.mask.dtype == torch.bool
    assert text.mask.sum(dim=1).tolist() == [5, 3]
    assert text.mask[0, :5].all() and not text.mask[0, 5:].any()


def test_padding_never_changes_the_real_tokens(clip: CLIP) -> None:
    ids = ids_for("a red circle")
    hf_padding = ids.clone()
    hf_padding[0, 5:] = TOKENIZER.eot_id  # Hugging Face pads with the end-of-text token
    noise_padding = ids.clone()
    noise_padding[0, 5:] = torch.randint(0, TOKENIZER.eot_id, (72,))
    with torch.no_grad():
        reference = clip.encode_text(ids)
        for padded in (hf_padding, noise_padding):
            other = clip.encode_text(padded)
            assert torch.equal(other.mask, reference.mask)
            assert torch.allclose(other.embeds, reference.embeds, atol=1e-6)
            assert torch.allclose(other.states[:, :5], reference.states[:, :5], atol=1e-6)


def test_text_embedding_depends_on_the_words(clip: CLIP) -> None:
    with torch.no_grad():
        text = clip.encode_text(ids_for("a red circle", "a blue square"))
    assert not torch.allclose(text.embeds[0], text.embeds[1], atol=1e-3)


def test_encode_image_resizes_normalises_and_keeps_rows_independent(clip: CLIP) -> None:
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        embeds = clip.encode_image(images)
        alone = clip.encode_image(images[1:2])
        small = clip.encode_image(images[:, :, ::2, ::2])
    assert embeds.shape == (3, CONFIG.embed_dim)
    assert torch.allclose(embeds.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(alone[0], embeds[1], atol=1e-5)
    assert small.shape == embeds.shape and not torch.allclose(small, embeds, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_text_and_image_encoders_track_float32(clip: CLIP, dtype: torch.dtype) -> None:
    ids = ids_for("a red circle", "blue")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    half = CLIP(CONFIG)
    half.load_state_dict(clip.state_dict())
    half = half.to(dtype).eval()
    with torch.no_grad():
        reference, text = clip.encode_text(ids), half.encode_text(ids)
        reference_image, image = clip.encode_image(images), half.encode_image(images)
    assert text.embeds.dtype == dtype and text.states.dtype == dtype and image.dtype == dtype
    assert torch.nn.functional.cosine_similarity(text.embeds.float(), reference.embeds, dim=-1).min() > 0.99
    assert torch.nn.functional.cosine_similarity(image.float(), reference_image, dim=-1).min() > 0.99


def test_activation_is_configurable(clip: CLIP) -> None:
    gelu = CLIP(dataclasses.replace(CONFIG, activation="gelu"))
    gelu.load_state_dict(clip.state_dict())
    ids = ids_for("a red circle")
    with torch.no_grad():
        assert not torch.allclose(gelu.encode_text(ids).embeds, clip.encode_text(ids).embeds, atol=1e-5)


def test_contrastive_logits_use_the_learnable_temperature(clip: CLIP) -> None:
    ids = ids_for("a red circle", "blue", "a square")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = clip(ids, images)
        expected = clip.encode_image(images) @ clip.encode_text(ids).embeds.t() / 0.07
    assert clip.logit_scale.requires_grad
    assert logits.shape == (2, 3)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert math.isclose(clip.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)


def test_parameter_names_follow_openai_clip(clip: CLIP) -> None:
    names = set(clip.state_dict())
    for name in [
        "token_embedding.weight",
        "positional_embedding",
        "transformer.resblocks.0.attn.in_proj_weight",
        "transformer.resblocks.0.attn.out_proj.bias",
        "transformer.resblocks.1.mlp.c_fc.weight",
        "ln_final.weight",
        "text_projection",
        "logit_scale",
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.ln_pre.weight",
        "visual.transformer.resblocks.1.ln_2.bias",
        "visual.proj",
    ]:
        assert name in names, name
