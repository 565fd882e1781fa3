"""The decoder and upsampler UNets of the tiny config: shapes, dtypes and what each input changes."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.config import named_config
from models.unet import AttentionBlock, DecoderUNet, GroupNorm, SuperResUNet

TINY = named_config("tiny")
E, W, L = TINY.clip.embed_dim, TINY.clip.text_width, TINY.clip.context_length


def randomise_zeros(module: torch.nn.Module) -> torch.nn.Module:
    """Output layers start at zero (the network starts as the identity); give them values so outputs
    depend on the inputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


@pytest.fixture(scope="module")
def decoder() -> DecoderUNet:
    torch.manual_seed(0)
    return randomise_zeros(DecoderUNet(TINY.decoder))


def decoder_inputs(batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, 3, 64, 64, generator=generator),
        "t": torch.tensor([10, 900][:batch] + [500] * max(batch - 2, 0)),
        "image_embed": F.normalize(torch.randn(batch, E, generator=generator), dim=-1),
        "text_states": torch.randn(batch, L, W, generator=generator),
        "text_mask": torch.arange(L)[None].expand(batch, L) < 6,
    }


@torch.no_grad()
def test_decoder_outputs_eps_and_variance_channels_per_pixel(decoder: DecoderUNet) -> None:
    out = decoder(**decoder_inputs())
    assert out.shape == (2, 6, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert decoder.supports_inpainting  # the tiny decoder takes GLIDE's 7-channel input


@torch.no_grad()
def test_fresh_unets_start_at_zero_output() -> None:
    torch.manual_seed(0)
    out = DecoderUNet(TINY.decoder)(**decoder_inputs())
    assert torch.equal(out, torch.zeros_like(out))


@torch.no_grad()
def test_decoder_output_depends_on_the_clip_embedding_timestep_and_real_text_tokens(
    decoder: DecoderUNet,
) -> None:
    inputs = decoder_inputs()
    base = decoder(**inputs)
    other_embed = decoder(**{**inputs, "image_embed": inputs["image_embed"].roll(1, dims=0)})
    other_time = decoder(**{**inputs, "t": torch.tensor([400, 400])})
    states = inputs["text_states"].clone()
    states[:, 10:] += 5.0  # padding positions (mask False)
    padded = decoder(**{**inputs, "text_states": states})
    states[:, :3] += 5.0  # real tokens
    real = decoder(**{**inputs, "text_states": states})

    assert not torch.allclose(base, other_embed, atol=1e-4)
    assert not torch.allclose(base, other_time, atol=1e-4)
    assert torch.allclose(base, padded, atol=1e-5)
    assert not torch.allclose(base, real, atol=1e-4)


@torch.no_grad()
def test_dropped_text_is_an_all_false_mask_and_rows_stay_independent(decoder: DecoderUNet) -> None:
    inputs = decoder_inputs(batch=3)
    inputs["text_mask"] = torch.zeros(3, L, dtype=torch.bool)
    together = decoder(**inputs)
    alone = decoder(**{name: value[1:2] for name, value in inputs.items()})

    assert torch.isfinite(together).all()  # the 4 CLIP tokens keep every attention row non-empty
    assert torch.allclose(together[1:2], alone, atol=1e-5)


@torch.no_grad()
def test_inpainting_input_changes_the_output_and_goes_as_a_pair(decoder: DecoderUNet) -> None:
    inputs = decoder_inputs()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    known = torch.ones(2, 1, 64, 64)

    assert not torch.allclose(decoder(**inputs), decoder(**inputs, inpaint_image=image, inpaint_mask=known))
    with pytest.raises(ValueError, match="together"):
        decoder(**inputs, inpaint_image=image)


@torch.no_grad()
def test_a_three_channel_decoder_refuses_the_inpainting_input() -> None:
    decoder = DecoderUNet(dataclasses.replace(TINY.decoder, in_channels=3))
    assert not decoder.supports_inpainting
    with pytest.raises(ValueError, match="inpainting"):
        decoder(
            **decoder_inputs(), inpaint_image=torch.zeros(2, 3, 64, 64), inpaint_mask=torch.ones(2, 1, 64, 64)
        )


@pytest.mark.parametrize(("name", "size"), [("sr256", 256), ("sr1024", 1024)])
@torch.no_grad()
def test_upsamplers_map_the_low_resolution_image_to_their_size(name: str, size: int) -> None:
    torch.manual_seed(0)
    config = getattr(TINY, name)
    upsampler = randomise_zeros(SuperResUNet(config))
    side = size // 8 if size == 1024 else size  # the 1024 model is convolutional: test it on a crop
    low_res = torch.rand(1, 3, side // 4, side // 4) * 2 - 1

    out = upsampler(torch.randn(1, 3, side, side), torch.tensor([100]), low_res)

    assert out.shape == (1, 3, side, side) and out.dtype == torch.float32
    changed = upsampler(torch.randn(1, 3, side, side), torch.tensor([100]), -low_res)
    assert not torch.allclose(out, changed)


def test_attention_sits_at_the_configured_resolutions_and_sr1024_has_none() -> None:
    decoder = DecoderUNet(TINY.decoder)
    sr1024 = SuperResUNet(TINY.sr1024)
    # Decoder: 16 and 8 px on the way down and up, and the middle block.
    assert sum(isinstance(m, AttentionBlock) for m in decoder.modules()) == 1 + 2 + 2 * 2
    assert all(m.encoder_kv is not None for m in decoder.modules() if isinstance(m, AttentionBlock))
    assert not any(isinstance(m, AttentionBlock) for m in sr1024.modules())


@torch.no_grad()
def test_bfloat16_decoder_tracks_float32(decoder: DecoderUNet) -> None:
    inputs = decoder_inputs()
    full = decoder(**inputs)
    copy = DecoderUNet(TINY.decoder)
    copy.load_state_dict(decoder.state_dict())
    half = copy.to(torch.bfloat16).eval()(**inputs)  # float32 inputs: the network casts them

    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().mean() < 0.05 * full.abs().mean() + 1e-3


@torch.no_grad()
def test_a_patched_unet_runs_its_body_at_a_fraction_of_the_picture_size() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(TINY.decoder, patch_size=2, attention_resolutions=(8,))
    decoder = randomise_zeros(DecoderUNet(config))
    body_sides = []
    decoder.input_blocks[1].register_forward_hook(lambda m, args, out: body_sides.append(out.shape[-1]))

    out = decoder(**decoder_inputs())

    assert out.shape == (2, 6, 64, 64) and torch.isfinite(out).all()
    assert body_sides == [32]
    # attention_resolutions count body pixels: 8 px is the third level here, not the fourth
    assert sum(isinstance(m, AttentionBlock) for m in decoder.modules()) == 1 + 1 + 2
    with pytest.raises(ValueError, match="patch_size 3 does not divide image_size 64"):
        dataclasses.replace(TINY.decoder, patch_size=3)


@torch.no_grad()
def test_a_patched_upsampler_keeps_its_output_size_and_input() -> None:
    torch.manual_seed(0)
    upsampler = randomise_zeros(SuperResUNet(dataclasses.replace(TINY.sr1024, patch_size=4)))
    low_res = torch.rand(1, 3, 16, 16) * 2 - 1
    x = torch.randn(1, 3, 64, 64)

    out = upsampler(x, torch.tensor([100]), low_res)

    assert out.shape == (1, 3, 64, 64)
    assert not torch.allclose(out, upsampler(x, torch.tensor([100]), -low_res))


def test_position_embedding_starts_as_a_no_op_and_learns() -> None:
    torch.manual_seed(0)
    plain = randomise_zeros(DecoderUNet(TINY.decoder))
    placed = DecoderUNet(dataclasses.replace(TINY.decoder, position_embedding=True)).eval()
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["position"] and not unexpected
    assert placed.position.shape == (TINY.decoder.model_channels, 64, 64)
    inputs = decoder_inputs()

    out = placed(**inputs)  # weights trained without it continue unchanged
    with torch.no_grad():
        assert torch.equal(out, plain(**inputs))
    out.square().sum().backward()
    assert placed.position.grad.abs().sum() > 0  # and it trains from its zero start

    with torch.no_grad():
        placed.position.copy_(torch.randn(placed.position.shape))
        assert not torch.allclose(placed(**inputs), out)


def test_a_caption_encoder_starts_as_the_identity_and_never_touches_captionless_rows() -> None:
    """caption_layers adds bidirectional blocks over the caption tokens: added to a trained decoder they
    change nothing until trained, and a row without caption (all tokens masked) never sees them."""
    torch.manual_seed(0)
    plain = randomise_zeros(DecoderUNet(TINY.decoder))
    read = DecoderUNet(dataclasses.replace(TINY.decoder, caption_layers=2)).eval()
    missing, unexpected = read.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(key.startswith("caption_encoder.") for key in missing) and not unexpected
    inputs = decoder_inputs(batch=3)
    inputs["text_mask"][2] = False  # the third row's caption dropped
    with torch.no_grad():
        assert torch.equal(read(**inputs), plain(**inputs))
        for parameter in read.caption_encoder.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        out = read(**inputs)
        assert torch.equal(out[2], plain(**inputs)[2])
        assert not torch.allclose(out[:2], plain(**inputs)[:2], atol=1e-4)
        # bidirectional: a real token's change reaches the tokens before it, so a colour word can
        # learn which kind follows it (CLIP's causal states cannot look ahead)
        states = inputs["text_states"].clone()
        states[:, 3] += 5.0
        encoder = read.caption_encoder
        tokens = read.text_norm(read.text_proj(inputs["text_states"]))
        moved = read.text_norm(read.text_proj(states))
        mask = inputs["text_mask"]
        before, after = encoder(tokens, key_padding_mask=mask), encoder(moved, key_padding_mask=mask)
        assert not torch.allclose(before[:2, :3], after[:2, :3], atol=1e-4)


def test_caption_layers_belong_to_a_decoder() -> None:
    with pytest.raises(ValueError, match="caption_layers"):
        dataclasses.replace(TINY.sr256, caption_layers=1)


@pytest.mark.parametrize("side", [8, 16, 32], ids=lambda side: f"{side}px")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_group_norm_keeps_channels_last_and_its_values(side: int, dtype: torch.dtype) -> None:
    """Small bf16 maps are normalised through an NCHW copy (torch's channels-last kernel is slow there);
    every path hands back the layout it got, with the float32 reference's values to a bf16 rounding."""
    torch.manual_seed(0)
    norm = GroupNorm(8, 32)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = (3 * torch.randn(2, 32, side, side) + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    want = F.group_norm(x.float().contiguous(), 8, norm.weight, norm.bias, norm.eps)
    got = norm.to(dtype)(x)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert (got.float() - want).abs().max() <= (1e-5 if dtype == torch.float32 else 3e-2 * want.abs().max())
