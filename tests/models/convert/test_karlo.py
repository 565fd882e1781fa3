from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from models.capabilities import NO_IMAGE_ENCODER, read_capabilities
from models.checkpoint import UnCLIPModels, init_checkpoint, load_checkpoint
from models.clip import TextEncoding
from models.convert.hf_files import ConversionError
from models.convert.karlo import SR_LAST_FILE, import_karlo, missing_parts
from models.pipeline import UnCLIPPipeline
from models.pipeline.images import clip_pixels
from models.unet import SuperResUNet
from tests.models.convert.karlo_folder import make_image_variations_folder, make_karlo_folder

PROMPTS = ["a photo of a red circle", "green square on the left"]
TOL = 1e-4


@pytest.fixture(scope="module")
def karlo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The text-to-image repository's layout (no image encoder)."""
    return make_karlo_folder(tmp_path_factory.mktemp("karlo"))


@pytest.fixture(scope="module")
def variations(karlo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image-variations repository's layout (image_encoder/, feature_extractor/, no prior/)."""
    return make_image_variations_folder(tmp_path_factory.mktemp("variations"), karlo)


@pytest.fixture(scope="module")
def imported(
    karlo: Path, variations: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, UnCLIPModels]:
    out = import_karlo(karlo, tmp_path_factory.mktemp("ours"), image_encoder=variations)
    return out, load_checkpoint(out)


@pytest.fixture(scope="module")
def text_only(karlo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, UnCLIPModels]:
    out = import_karlo(karlo, tmp_path_factory.mktemp("text-only"))
    return out, load_checkpoint(out)


def karlo_text(karlo: Path, prompts: list[str], models: UnCLIPModels) -> tuple[torch.Tensor, ...]:
    """What UnCLIPPipeline._encode_prompt computes: raw text embeds, token states, attention mask."""
    ids, _ = models.tokenizer.encode(prompts)
    mask = ids.ne(0)  # Karlo pads with "!" = id 0; the tokenizer's mask covers SOT..EOT
    with torch.no_grad():
        out = CLIPTextModelWithProjection.from_pretrained(karlo / "text_encoder").eval()(input_ids=ids)
    return ids, out.text_embeds, out.last_hidden_state, mask


def test_config_records_karlo_choices(imported: tuple[Path, UnCLIPModels]) -> None:
    out, models = imported
    config = models.config
    assert config.sr1024 is None and config.sampling.size == 256
    assert (config.prior_diffusion.predict, config.prior_diffusion.x0_clip_range) == ("x0", 5.0)
    assert config.decoder_diffusion.learned_variance and config.decoder_diffusion.predict == "eps"
    assert not config.sr256_diffusion.learned_variance
    assert config.decoder.attention_resolutions == (16, 8) and config.decoder.channel_mult == (1, 2, 3)
    assert (out / SR_LAST_FILE).is_file()


def test_clip_image_embeds_are_karlos_raw_embeds(
    variations: Path, imported: tuple[Path, UnCLIPModels]
) -> None:
    """What UnCLIPImageVariationPipeline computes for pictures of any shape: its feature_extractor's
    resize, crop and normalisation (stored in our checkpoint), then the image encoder's raw embeds."""
    models = imported[1]
    assert models.config.clip.image_resize == 28  # read from feature_extractor/preprocessor_config.json
    generator = np.random.default_rng(0)
    pictures = [
        Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for width, height in ((50, 30), (28, 70))
    ]
    processor = CLIPImageProcessorPil.from_pretrained(variations / "feature_extractor")
    with torch.no_grad():
        pixels = processor(pictures, return_tensors="pt").pixel_values
        theirs = CLIPVisionModelWithProjection.from_pretrained(variations / "image_encoder")(
            pixel_values=pixels
        )
        ours = models.clip.encode_image(clip_pixels(pictures, models.config.clip))
    assert (ours - theirs.image_embeds).abs().max() <= TOL


def test_prior_matches_diffusers_conditional_and_null(
    karlo: Path, imported: tuple[Path, UnCLIPModels]
) -> None:
    models = imported[1]
    prior = PriorTransformer.from_pretrained(karlo / "prior").eval()
    ids, embeds, states, mask = karlo_text(karlo, [*PROMPTS, ""], models)
    x_t = torch.randn(3, 48, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 500, 3])
    with torch.no_grad():
        theirs = prior(x_t, t, proj_embedding=embeds, encoder_hidden_states=states, attention_mask=mask)
        text = models.clip.encode_text(ids)
        ours = models.prior(x_t, t, text, torch.zeros(3, dtype=torch.bool))
        # Our guidance null (drop_text) is Karlo's empty prompt, whatever the row's text.
        dropped = models.prior(x_t, t, text, torch.ones(3, dtype=torch.bool))
        null = theirs.predicted_image_embedding[2:].expand(3, -1)
        empty = prior(
            x_t,
            t,
            proj_embedding=embeds[2:].expand(3, -1),
            encoder_hidden_states=states[2:].expand(3, -1, -1),
            attention_mask=mask[2:].expand(3, -1),
        )
    assert (ours - theirs.predicted_image_embedding).abs().max() <= TOL
    assert (dropped - empty.predicted_image_embedding).abs().max() <= TOL
    assert (dropped[2] - null[2]).abs().max() <= TOL
    latents = torch.randn(2, 48)
    assert (models.prior.latents_to_embeds(latents) - prior.post_process_latents(latents)).abs().max() <= 1e-5
    assert (
        models.prior.embeds_to_latents(models.prior.latents_to_embeds(latents)) - latents
    ).abs().max() <= 1e-4


def test_decoder_matches_text_proj_and_unet(karlo: Path, imported: tuple[Path, UnCLIPModels]) -> None:
    models = imported[1]
    text_proj = UnCLIPTextProjModel.from_pretrained(karlo / "text_proj").eval()
    unet = UNet2DConditionModel.from_pretrained(karlo / "decoder").eval()
    ids, embeds, states, mask = karlo_text(karlo, [""] * 2 + PROMPTS, models)  # uncond half first, as Karlo
    image_embed = torch.randn(2, 48, generator=torch.Generator().manual_seed(2)) * 3
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([999, 10, 999, 10])
    with torch.no_grad():
        context, additive = text_proj(
            image_embeddings=image_embed,
            prompt_embeds=embeds,
            text_encoder_hidden_states=states,
            do_classifier_free_guidance=True,
        )
        theirs = unet(
            x,
            t,
            encoder_hidden_states=context,
            class_labels=additive,
            attention_mask=F.pad(mask, (4, 0), value=True),
        ).sample
        text: TextEncoding = models.clip.encode_text(ids)
        # Our null rows: zero image embedding and an all-False text mask (the project's guidance null).
        null_mask = torch.cat([torch.zeros_like(text.mask[:2]), text.mask[2:]])
        ours = models.decoder(x, t, torch.cat([torch.zeros(2, 48), image_embed]), text.states, null_mask)
    assert theirs.shape == ours.shape == (4, 6, 32, 32)
    assert (ours - theirs).abs().max() <= TOL


def test_upsamplers_match_super_res_first_and_last(karlo: Path, imported: tuple[Path, UnCLIPModels]) -> None:
    out, models = imported
    low = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([999, 250])
    upscaled = F.interpolate(low, size=[64, 64], mode="bicubic", align_corners=False, antialias=True)
    last = SuperResUNet(models.config.sr256).eval()
    last.load_state_dict(load_file(out / SR_LAST_FILE))
    for name, ours in (("super_res_first", models.sr256), ("super_res_last", last)):
        theirs = UNet2DModel.from_pretrained(karlo / name).eval()
        with torch.no_grad():
            expected = theirs(torch.cat([x, upscaled], dim=1), t).sample
            assert (ours(x, t, low) - expected).abs().max() <= TOL, name


def test_refuses_what_it_cannot_reproduce(karlo: Path, variations: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="image-variations repository; give the text-to-image"):
        import_karlo(variations, tmp_path / "out")
    with pytest.raises(ConversionError, match=r"neither image_encoder/config\.json nor config\.json"):
        import_karlo(karlo, tmp_path / "out", image_encoder=karlo)
    with pytest.raises(
        ConversionError, match="CLIPTextModelWithProjection, not a CLIPVisionModelWithProjection"
    ):
        import_karlo(karlo, tmp_path / "out", image_encoder=karlo / "text_encoder")
    copy = Path(shutil.copytree(karlo, tmp_path / "karlo"))
    config = (copy / "decoder" / "config.json").read_text()
    (copy / "decoder" / "config.json").write_text(
        config.replace('"scale_shift"', '"default"', 1).replace('"act_fn": "silu"', '"act_fn": "gelu"')
    )
    with pytest.raises(ConversionError, match="act_fn"):
        import_karlo(copy, tmp_path / "out", image_encoder=variations)


def test_the_image_variations_main_branch_pickles_are_refused(
    variations: Path, karlo: Path, tmp_path: Path
) -> None:
    """The repository's main branch has image_encoder/pytorch_model.bin only (safetensors: refs/pr/2)."""
    copy = Path(shutil.copytree(variations, tmp_path / "variations"))
    (copy / "image_encoder" / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"only pickled weights \(pytorch_model.bin\)"):
        import_karlo(karlo, tmp_path / "out", image_encoder=copy)


def test_a_vision_model_folder_itself_as_image_encoder(
    variations: Path, karlo: Path, imported: tuple[Path, UnCLIPModels], tmp_path: Path
) -> None:
    """Without a preprocessor_config.json beside it, the preprocessing is the default (squashed)."""
    alone = Path(shutil.copytree(variations / "image_encoder", tmp_path / "clip-vit"))
    models = load_checkpoint(import_karlo(karlo, tmp_path / "out", image_encoder=alone))
    assert models.config.clip.image_resize is None and imported[1].config.clip.image_resize == 28
    for name, tensor in imported[1].clip.state_dict().items():
        assert torch.equal(models.clip.state_dict()[name], tensor), name


def test_the_text_to_image_folder_imports_without_an_image_encoder(
    text_only: tuple[Path, UnCLIPModels], imported: tuple[Path, UnCLIPModels]
) -> None:
    out, models = text_only
    assert models.clip.visual is None and not models.config.clip.image_encoder
    capabilities = read_capabilities(out)
    assert capabilities.parts == ("clip_text", "prior", "decoder", "sr256", "sr256_last")
    assert capabilities.operations == ("generate", "inpaint")
    assert capabilities.imported_from == "karlo" and not capabilities.shipped
    assert capabilities.largest_size == 64  # the tiny folder's super_res_first output
    assert capabilities.parameters == {
        name: sum(t.numel() for t in module.state_dict().values())
        for name, module in models.components().items()
    }
    assert read_capabilities(imported[0]).operations == (
        "generate",
        "variation",
        "interpolate",
        "text_diff",
        "inpaint",
    )
    with_image = imported[1].clip.state_dict()
    for name, tensor in models.clip.state_dict().items():  # the same text tower, nothing else
        assert torch.equal(with_image[name], tensor), name
    assert sorted(set(with_image) - set(models.clip.state_dict())) == sorted(
        name for name in with_image if name.startswith("visual.")
    )


def test_generate_and_inpaint_run_on_it_and_image_operations_are_refused(
    text_only: tuple[Path, UnCLIPModels],
) -> None:
    pipeline = UnCLIPPipeline(text_only[1], torch.device("cpu"), torch.float32)
    sampling = pipeline.sampling(prior_steps=2, decoder_steps=2, sr256_steps=2)
    [image] = pipeline.generate(["a red circle"], [0], sampling)
    assert image.size == (64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    [painted] = pipeline.inpaint([image], [mask], ["a green square"], [1], sampling)
    changed = np.abs(np.asarray(painted, dtype=np.int16) - np.asarray(image, dtype=np.int16)).sum(-1)
    assert changed[20:44, 20:44].mean() > changed[:8].mean()  # repainted inside the mask
    with pytest.raises(ValueError, match="no CLIP image encoder") as refused:
        pipeline.variation([image], [0], sampling)
    assert str(refused.value) == NO_IMAGE_ENCODER


def test_command_line_import(karlo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.convert import main

    assert main(["karlo", str(karlo), str(tmp_path / "out")]) == 0
    assert load_checkpoint(tmp_path / "out").config.sampling.size == 256
    printed = capsys.readouterr().out
    assert "no 256→1024 upsampler" in printed and "without inpainting channels" in printed
    assert "no CLIP image encoder" in printed
    assert main(["karlo", str(tmp_path / "missing"), str(tmp_path / "out2")]) == 1
    assert "import failed" in capsys.readouterr().err


def test_a_1024_upsampler_lent_by_another_checkpoint(karlo: Path, tmp_path: Path) -> None:
    donor = init_checkpoint(tmp_path / "donor", "tiny", seed=3)
    out = import_karlo(karlo, tmp_path / "out", sr1024_from=donor)
    models, lent = load_checkpoint(out), load_checkpoint(donor)
    assert models.config.sr1024 == lent.config.sr1024 and models.config.sampling.size == 1024
    for name, tensor in lent.sr1024.state_dict().items():
        assert torch.equal(models.sr1024.state_dict()[name], tensor), name
    assert [note for note in missing_parts(models) if "1024" in note] == []
    pipeline = UnCLIPPipeline(models, torch.device("cpu"), torch.float32)
    sampling = pipeline.sampling(prior_steps=1, decoder_steps=1, sr256_steps=1, sr1024_steps=1)
    [image] = pipeline.generate(["a red circle"], [0], sampling)
    assert image.size == (1024, 1024)
    plain = import_karlo(karlo, tmp_path / "plain")
    with pytest.raises(ConversionError, match="no sr1024"):
        import_karlo(karlo, tmp_path / "again", sr1024_from=plain)
