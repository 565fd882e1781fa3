"""UnCLIPPipeline end to end on the tiny config (64 px, a few steps), plus its stages' math.

Freshly initialised UNets output exactly zero (their output layers start at zero), which would make
most of these tests vacuous; `lively_checkpoint` gives every all-zero tensor small random values so that
outputs depend on the inputs, the conditioning and the seed.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models.checkpoint import init_checkpoint, load_checkpoint, save_checkpoint
from models.config import named_config
from models.diffusion import GaussianDiffusion, beta_schedule
from models.pipeline import Progress, Sampling, UnCLIPPipeline, devices
from models.pipeline.devices import cpu_has_bf16_units, resolve_dtype
from models.pipeline.latents import item_generators, slerp
from models.pipeline.stages import DecoderCondition, decoder_denoiser, prior_denoiser, sample_prior

FAST = {"size": 64, "prior_steps": 2, "decoder_steps": 3}


def lively_checkpoint(folder: Path, config: str | object = "tiny") -> Path:
    init_checkpoint(folder, config)
    models = load_checkpoint(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in models.components().values():
            for parameter in module.parameters():
                if not parameter.any():
                    parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    save_checkpoint(models, folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> UnCLIPPipeline:
    folder = lively_checkpoint(tmp_path_factory.mktemp("lively"))
    return UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def fast(pipeline: UnCLIPPipeline) -> Sampling:
    return pipeline.sampling(**FAST)


def picture(seed: int = 0, size: int = 64) -> Image.Image:
    """A smooth picture: two gradients and a disc."""
    yy, xx = np.mgrid[0:size, 0:size] * (64 / size)
    centre = 20 + 24 * (seed % 2)
    disc = ((xx - centre) ** 2 + (yy - 32) ** 2 < 200) * 180
    pixels = np.stack([xx * 4, yy * 3 + 20 * seed, 230 - disc], -1).clip(0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_images(images: list[Image.Image], count: int, size: int) -> None:
    assert len(images) == count
    for image in images:
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (size, size)


# Settings -------------------------------------------------------------------------------------------------


def test_sampling_starts_from_the_checkpoint_defaults_and_none_keeps_them(pipeline: UnCLIPPipeline) -> None:
    defaults = dataclasses.asdict(named_config("tiny").sampling)
    assert dataclasses.asdict(pipeline.default_sampling) == defaults

    chosen = pipeline.sampling(size=256, decoder_steps=None, prior_guidance=2.5)

    assert chosen == Sampling(**{**defaults, "size": 256, "prior_guidance": 2.5})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": 512}, "size must be one of"),
        ({"decoder_steps": 0}, "decoder_steps"),
        ({"text_diff_strength": 0.0}, "text_diff_strength"),
        ({"text_diff_strength": 1.5}, "text_diff_strength"),
        ({"steps": 3}, "unknown"),
    ],
)
def test_bad_sampling_settings_are_refused(pipeline: UnCLIPPipeline, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipeline.sampling(**overrides)


def test_a_checkpoint_without_the_1024_upsampler_refuses_size_1024(tmp_path: Path) -> None:
    config = dataclasses.replace(named_config("tiny"), sr1024=None, sr1024_diffusion=None)
    pipeline = UnCLIPPipeline.from_checkpoint(init_checkpoint(tmp_path, config))

    assert pipeline.default_sampling.size == 256
    with pytest.raises(ValueError, match="1024"):
        pipeline.sampling(size=1024)
    with pytest.raises(ValueError, match="1024"):
        pipeline.generate(["a"], [0], Sampling(size=1024))


def test_dtype_auto_on_the_cpu_is_bf16_only_with_bf16_units_and_names_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    for units, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda units=units: units)
        assert resolve_dtype("auto", cpu) is expected
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="float8"):
        resolve_dtype("float8", cpu)


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    def flags(line: str) -> Path:
        path = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"
        path.write_text(f"processor\t: 0\nmodel name\t: Xeon\n{line}\n\nprocessor\t: 1\n")
        return path

    assert cpu_has_bf16_units(flags("flags\t\t: fpu sse avx512f amx_bf16 amx_tile"))
    assert cpu_has_bf16_units(flags("flags\t\t: fpu avx512f avx512_bf16"))
    assert cpu_has_bf16_units(flags("Features\t: fp asimd bf16 i8mm"))  # Arm (Graviton 3)
    assert not cpu_has_bf16_units(flags("flags\t\t: fpu sse avx2 avx512f avx512_vnni"))


def test_truncated_prompts_are_reported(pipeline: UnCLIPPipeline) -> None:
    long_prompt = " ".join(["red circle"] * 60)  # 120 tokens for a 77-token context
    assert pipeline.truncated(["a red circle", long_prompt]) == [False, True]


# generate -------------------------------------------------------------------------------------------------


def test_generate_makes_one_image_per_prompt_reproducible_by_seed(
    pipeline: UnCLIPPipeline, fast: Sampling
) -> None:
    first = pipeline.generate(["a red circle", "a blue square"], [1, 2], fast)
    again = pipeline.generate(["a red circle", "a blue square"], [1, 2], fast)
    other_seed = pipeline.generate(["a red circle"], [3], fast)

    assert_images(first, 2, 64)
    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))
    assert not np.array_equal(pixels(first[0]), pixels(other_seed[0]))


def test_generate_reports_every_step_of_every_stage_in_order(pipeline: UnCLIPPipeline) -> None:
    reports: list[Progress] = []
    sampling = pipeline.sampling(size=64, prior_steps=2, decoder_steps=3)

    pipeline.generate(["a circle"], [0], sampling, progress=reports.append)

    assert reports == [
        Progress("prior", 1, 2), Progress("prior", 2, 2),
        Progress("decoder", 1, 3), Progress("decoder", 2, 3), Progress("decoder", 3, 3),
    ]  # fmt: skip


def test_a_progress_callback_that_raises_stops_the_pipeline(pipeline: UnCLIPPipeline, fast: Sampling) -> None:
    class Cancelled(Exception):
        pass

    def cancel_in_decoder(report: Progress) -> None:
        if report.stage == "decoder":
            raise Cancelled

    with pytest.raises(Cancelled):
        pipeline.generate(["a circle"], [0], fast, progress=cancel_in_decoder)


class RowByRow:
    """Runs a network one batch row at a time (attributes pass through to it).

    CPU kernels choose algorithms by batch size, so a batched forward differs from a single-row one in
    the last float bits, and a random network (no denoiser) amplifies that over the steps. Row by row, the
    numerics are the same in any batch and only the pipeline's own batch handling is under test: noise
    streams, prior candidates, guidance halves, frame order.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        attribute = getattr(self._module, name)
        return self._rows(attribute) if name in ("encode_text", "encode_image") else attribute

    def __call__(self, *args, **kwargs):
        return self._rows(self._module)(*args, **kwargs)

    @staticmethod
    def _rows(function):
        def row(value, i: int):
            if isinstance(value, torch.Tensor):
                return value[i : i + 1]
            if isinstance(value, tuple):  # TextEncoding
                return type(value)(*(part[i : i + 1] for part in value))
            return value

        def run(*args, **kwargs):
            outputs = [
                function(*(row(a, i) for a in args), **{k: row(v, i) for k, v in kwargs.items()})
                for i in range(args[0].shape[0])
            ]
            if isinstance(outputs[0], tuple):
                return type(outputs[0])(*(torch.cat(parts) for parts in zip(*outputs, strict=True)))
            return torch.cat(outputs)

        return run


@pytest.fixture(scope="module")
def rowwise(pipeline: UnCLIPPipeline) -> UnCLIPPipeline:
    networks = {name: RowByRow(module) for name, module in pipeline.models.components().items()}
    return UnCLIPPipeline(dataclasses.replace(pipeline.models, **networks), pipeline.device, pipeline.dtype)


def assert_same(first: list[Image.Image], second: list[Image.Image]) -> None:
    assert len(first) == len(second)
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(first, second, strict=True))


def test_an_item_alone_equals_the_same_item_in_a_batch_of_three(rowwise: UnCLIPPipeline) -> None:
    sampling = rowwise.sampling(size=256, prior_steps=2, decoder_steps=2, sr256_steps=1)
    batch = rowwise.generate(["a red circle", "a green triangle", "a blue square"], [7, 8, 9], sampling)
    alone = rowwise.generate(["a green triangle"], [8], sampling)

    assert_same(batch[1:2], alone)
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))


OPERATIONS = ("variation", "inpaint", "text_diff", "interpolate slerp", "interpolate fixed")


def run_operation(name: str, pipeline: UnCLIPPipeline, sampling: Sampling, items: list[int]) -> list:
    """Operation `name` on some of two fixed items (by index); item i always has seed 5 + i."""
    images, others = [picture(i) for i in items], [picture(i + 2) for i in items]
    prompts, seeds = [("red", "blue")[i] for i in items], [5 + i for i in items]
    if name == "variation":
        return pipeline.variation(images, seeds, sampling, eta=1.0)
    if name == "inpaint":
        return pipeline.inpaint(images, [half_mask()] * len(items), prompts, seeds, sampling)
    if name == "text_diff":
        return pipeline.text_diff(images, prompts, ["a photo"] * len(items), seeds, sampling, frames=2)
    latent = name.split()[1]
    return pipeline.interpolate(images, others, seeds, sampling, frames=2, latent=latent)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_is_batch_invariant(rowwise: UnCLIPPipeline, operation: str) -> None:
    sampling = rowwise.sampling(size=64, prior_steps=2, decoder_steps=2)
    batch = run_operation(operation, rowwise, sampling, [0, 1])
    alone = run_operation(operation, rowwise, sampling, [1])

    assert len(batch) == 2 and len(alone) == 1
    if isinstance(alone[0], list):  # sequences of frames
        assert_same(batch[1], alone[0])
    else:
        assert_same(batch[1:], alone)


def test_lists_of_different_lengths_are_refused(pipeline: UnCLIPPipeline, fast: Sampling) -> None:
    with pytest.raises(ValueError, match="one entry per item"):
        pipeline.generate(["a", "b"], [0], fast)


def test_generate_in_bfloat16_matches_float32_roughly(tmp_path: Path) -> None:
    folder = lively_checkpoint(tmp_path)
    sampling = Sampling(size=64, prior_steps=2, decoder_steps=2, decoder_guidance=1.0)
    full = UnCLIPPipeline.from_checkpoint(folder, dtype="float32").generate(["a circle"], [0], sampling)
    half = UnCLIPPipeline.from_checkpoint(folder, dtype="bfloat16").generate(["a circle"], [0], sampling)

    assert half[0].size == (64, 64)
    assert np.abs(pixels(full[0]) - pixels(half[0])).mean() < 20


def test_float64_weights_keep_the_diffusion_math_in_float64(pipeline: UnCLIPPipeline, tmp_path: Path) -> None:
    double = UnCLIPPipeline.from_checkpoint(lively_checkpoint(tmp_path), device="cpu", dtype=torch.float64)
    sampling = Sampling(size=64, prior_steps=2, decoder_steps=2)
    steps: list[torch.dtype] = []
    double.models.decoder.register_forward_pre_hook(lambda module, args: steps.append(args[0].dtype))

    [image] = double.generate(["a circle"], [0], sampling)
    [single] = pipeline.generate(["a circle"], [0], sampling)

    assert steps == [torch.float64, torch.float64]  # x_t: float64 noise and float64 updates
    assert np.abs(pixels(image) - pixels(single)).mean() < 2  # the same sample, to rounding


def test_all_sizes_with_one_step_per_stage(pipeline: UnCLIPPipeline) -> None:
    reports: list[Progress] = []
    one_step = {"prior_steps": 1, "decoder_steps": 1, "sr256_steps": 1, "sr1024_steps": 1}

    medium = pipeline.generate(["a circle"], [0], pipeline.sampling(size=256, **one_step))
    large = pipeline.generate(["a circle"], [0], pipeline.sampling(size=1024, **one_step), reports.append)

    assert_images(medium, 1, 256)
    assert_images(large, 1, 1024)
    assert [report.stage for report in reports] == ["prior", "decoder", "sr256", "sr1024"]


# Guidance ---------------------------------------------------------------------------------------------


def decoder_inputs(pipeline: UnCLIPPipeline) -> tuple[torch.Tensor, torch.Tensor, DecoderCondition]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    t = torch.tensor([600, 600])
    text = pipeline.models.clip.encode_text(pipeline.models.tokenizer.encode(["a red circle", "blue"])[0])
    image_embed = torch.nn.functional.normalize(torch.randn(2, 32, generator=generator), dim=-1)
    return x, t, DecoderCondition(image_embed, text.states, text.mask)


@torch.no_grad()
def test_decoder_guidance_one_is_the_unguided_prediction_and_the_null_is_zero_z_and_no_text(
    pipeline: UnCLIPPipeline,
) -> None:
    decoder = pipeline.models.decoder
    x, t, condition = decoder_inputs(pipeline)
    no_text = torch.zeros_like(condition.text_mask)
    cond = decoder(x, t, condition.image_embed, condition.text_states, condition.text_mask)
    uncond = decoder(x, t, torch.zeros_like(condition.image_embed), condition.text_states, no_text)

    assert torch.equal(decoder_denoiser(decoder, condition, 1.0)(x, t), cond)
    guided = decoder_denoiser(decoder, condition, 3.0)(x, t)
    assert torch.allclose(guided[:, :3], uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3]), atol=1e-4)
    assert torch.allclose(guided[:, 3:], cond[:, 3:], atol=1e-5)  # the learned variance is not guided
    assert not torch.allclose(cond[:, :3], uncond[:, :3], atol=1e-3)


@torch.no_grad()
def test_decoder_image_guidance_scales_z_i_apart_from_the_caption(pipeline: UnCLIPPipeline) -> None:
    decoder = pipeline.models.decoder
    x, t, condition = decoder_inputs(pipeline)
    no_text, no_z = torch.zeros_like(condition.text_mask), torch.zeros_like(condition.image_embed)
    full = decoder(x, t, condition.image_embed, condition.text_states, condition.text_mask)[:, :3]
    image = decoder(x, t, condition.image_embed, condition.text_states, no_text)[:, :3]
    text = decoder(x, t, no_z, condition.text_states, condition.text_mask)[:, :3]
    null = decoder(x, t, no_z, condition.text_states, no_text)[:, :3]

    def guided(c: DecoderCondition, scale: float, image_scale: float | None) -> torch.Tensor:
        return decoder_denoiser(decoder, c, scale, image_scale)(x, t)[:, :3]

    expected = null + 2.0 * (image - null) + 5.0 * (full - image)
    assert torch.allclose(guided(condition, 5.0, 2.0), expected, atol=1e-4)
    assert torch.allclose(guided(condition, 3.0, 3.0), guided(condition, 3.0, None), atol=1e-5)
    assert not torch.allclose(guided(condition, 5.0, 2.0), guided(condition, 5.0, None), atol=1e-3)
    # Without a caption full = image: z_i's scale alone counts; without z_i image = null: the caption's.
    captionless = dataclasses.replace(condition, text_mask=no_text)
    assert torch.allclose(guided(captionless, 5.0, 2.0), null + 2.0 * (image - null), atol=1e-4)
    imageless = dataclasses.replace(condition, image_embed=no_z)
    assert torch.allclose(guided(imageless, 5.0, 2.0), null + 5.0 * (text - null), atol=1e-4)


def test_only_generation_guides_z_i_apart(pipeline: UnCLIPPipeline, fast: Sampling) -> None:
    split = dataclasses.replace(fast, decoder_image_guidance=2.0)
    plain, apart = (pipeline.generate(["a red circle"], [0], s)[0] for s in (fast, split))
    assert not np.array_equal(pixels(plain), pixels(apart))
    # a variation's condition is z_i alone, which keeps decoder_guidance
    same, also = (pipeline.variation([picture(0)], [0], s)[0] for s in (fast, split))
    assert np.array_equal(pixels(same), pixels(also))


@torch.no_grad()
def test_prior_guidance_one_is_the_unguided_prediction(pipeline: UnCLIPPipeline) -> None:
    prior = pipeline.models.prior
    text = pipeline.models.clip.encode_text(pipeline.models.tokenizer.encode(["a red circle", "blue"])[0])
    x, t = torch.randn(2, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([500, 500])
    cond = prior(x, t, text, torch.tensor([False, False]))
    uncond = prior(x, t, text, torch.tensor([True, True]))

    assert torch.equal(prior_denoiser(prior, text, 1.0)(x, t), cond)
    assert torch.allclose(prior_denoiser(prior, text, 4.0)(x, t), uncond + 4.0 * (cond - uncond), atol=1e-4)


@torch.no_grad()
def test_prior_gives_unit_embeddings_or_raw_ones_within_its_clip_range(pipeline: UnCLIPPipeline) -> None:
    prior = pipeline.models.prior
    text = pipeline.models.clip.encode_text(pipeline.models.tokenizer.encode(["a red circle", "blue"])[0])
    diffusion = GaussianDiffusion.from_config(pipeline.models.config.prior_diffusion, steps=2)

    unit = sample_prior(prior, diffusion, text, item_generators([0, 1]), 2.0)
    raw = sample_prior(
        prior, diffusion, text, item_generators([0, 1]), 2.0, unit=False, clamp=lambda x0: x0.clamp(-0.5, 0.5)
    )

    assert unit.shape == raw.shape == (2, 32)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2))
    assert raw.abs().max() <= 0.5 / prior.embed_scale + 1e-6  # latents are embeddings × embed_scale


def test_a_checkpoint_with_karlo_conditioning_options_runs_every_operation(tmp_path: Path) -> None:
    config = named_config("tiny")
    config = dataclasses.replace(
        config,
        clip=dataclasses.replace(config.clip, normalize_image_embeds=False),
        prior=dataclasses.replace(
            config.prior, latent_stats=True, text_embed_from="eot_state", null_text_tokens=2
        ),
        decoder=dataclasses.replace(
            config.decoder, text_embed_to_time=True, learned_null_image=True, null_text_tokens=2
        ),
        prior_diffusion=dataclasses.replace(config.prior_diffusion, x0_clip_range=10.0),
    )
    pipeline = UnCLIPPipeline.from_checkpoint(lively_checkpoint(tmp_path, config), dtype="float32")
    sampling = pipeline.sampling(**FAST)

    assert_images(pipeline.generate(["a red circle"], [0], sampling), 1, 64)
    assert_images(pipeline.variation([picture(0)], [0], sampling), 1, 64)
    [frames] = pipeline.text_diff([picture(0)], ["a square"], ["a photo"], [0], sampling, frames=2)
    assert_images(frames, 2, 64)


def test_a_checkpoint_with_karlo_sampling_choices_draws_one_prior_sample_and_ends_with_sr256_last(
    tmp_path: Path,
) -> None:
    config = named_config("tiny")
    config = dataclasses.replace(
        config,
        prior=dataclasses.replace(config.prior, sample_candidates=1),
        decoder_diffusion=dataclasses.replace(config.decoder_diffusion, clamp_learned_variance=False),
        sr256_last=config.sr256,
    )
    folder = lively_checkpoint(tmp_path, config)
    pipeline = UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype="float32")
    calls: dict[str, list] = {"prior": [], "sr256": [], "sr256_last": []}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            low_res = args[3] if name != "prior" else None  # upsampled once per stage, the same each step
            calls[name].append((args[0].shape[0], int(args[1][0]), low_res))

        return hook

    for name in calls:
        getattr(pipeline.models, name).register_forward_pre_hook(record(name))
    sampling = pipeline.sampling(size=256, prior_steps=2, decoder_steps=2, sr256_steps=3)

    [image] = pipeline.generate(["a red circle"], [0], sampling)

    assert image.size == (256, 256)
    assert [rows for rows, _, _ in calls["prior"]] == [2, 2]  # one sample: its conditioned and null rows
    assert [t for _, t, _ in calls["sr256"]] == [999, 500] and [t for _, t, _ in calls["sr256_last"]] == [0]
    low_res = [x for _, _, x in calls["sr256"] + calls["sr256_last"]]
    assert all(torch.equal(x, low_res[0]) for x in low_res) and low_res[0].abs().max() <= 1


@torch.no_grad()
def test_one_prior_candidate_is_the_prior_sample_itself(pipeline: UnCLIPPipeline) -> None:
    prior = pipeline.models.prior
    text = pipeline.models.clip.encode_text(pipeline.models.tokenizer.encode(["a red circle", "blue"])[0])
    diffusion = GaussianDiffusion.from_config(pipeline.models.config.prior_diffusion, steps=2)

    one = sample_prior(prior, diffusion, text, item_generators([0, 1]), 2.0, unit=False, candidates=1)

    generators = item_generators([0, 1])
    x_T = torch.stack([torch.randn(32, generator=generator) for generator in generators])
    latents = diffusion.sample(prior_denoiser(prior, text, 2.0), x_T, generators)
    assert torch.allclose(one, prior.latents_to_embeds(latents), atol=1e-6)


# Variations, interpolation, text diffs: DDIM inversion ----------------------------------------------------


class GaussianDecoder(nn.Module):
    """A decoder with the exact eps of Gaussian data: x_0 ~ N(A·z_i, std²) per pixel, A `[3, E]`.

    A random UNet is no denoiser and its probability-flow ODE is far too stiff to invert; this one is a
    true denoiser whose mean depends on the CLIP embedding, so inversion through the guided decoder must
    use the same conditioning, timesteps and schedule as sampling for the round trip to close.
    """

    supports_inpainting = False

    def __init__(self, embed_dim: int, std: float = 0.5) -> None:
        super().__init__()
        self.alphas_cumprod = torch.cumprod(1 - beta_schedule("cosine", 1000), 0).float()
        self.means = 0.5 * torch.randn(3, embed_dim, generator=torch.Generator().manual_seed(0))
        self.std = std

    def forward(self, x, t, image_embed, text_states, text_mask, inpaint_image=None, inpaint_known=None):
        alpha_bar = self.alphas_cumprod[t][:, None, None, None]
        mean = (image_embed.float() @ self.means.T)[:, :, None, None]  # [B, 3, 1, 1]
        eps = (
            (1 - alpha_bar).sqrt() * (x - alpha_bar.sqrt() * mean) / (alpha_bar * self.std**2 + 1 - alpha_bar)
        )
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)  # [B, 6, H, W]: eps and a learned-variance v


@pytest.fixture(scope="module")
def gaussian_pipeline(pipeline: UnCLIPPipeline) -> UnCLIPPipeline:
    models = dataclasses.replace(pipeline.models, decoder=GaussianDecoder(embed_dim=32))
    return UnCLIPPipeline(models, pipeline.device, pipeline.dtype)


ROUND_TRIP = {"size": 64, "decoder_steps": 500, "decoder_guidance": 3.0, "inversion_guidance": 3.0}


def round_trip_errors(pipeline: UnCLIPPipeline, steps: int) -> np.ndarray:
    sampling = pipeline.sampling(**{**ROUND_TRIP, "decoder_steps": steps})
    image = picture(0)
    [reconstruction] = pipeline.variation([image], [0], sampling, eta=0.0)
    return np.abs(pixels(reconstruction) - pixels(image))


def test_ddim_inversion_then_eta_zero_returns_to_the_input_image(gaussian_pipeline: UnCLIPPipeline) -> None:
    coarse, fine = round_trip_errors(gaussian_pipeline, 50), round_trip_errors(gaussian_pipeline, 500)
    # About 1.4 of 255 levels on average with 500 steps, converging at first order in the step size.
    # Inverting with another z_i or without the guidance that sampling uses leaves 80-100 levels.
    assert fine.mean() < 2.0 and fine.max() <= 3
    assert fine.mean() < coarse.mean() / 5


def test_inversion_follows_inversion_guidance_not_decoder_guidance(gaussian_pipeline: UnCLIPPipeline) -> None:
    unguided = gaussian_pipeline.sampling(size=64, decoder_steps=50, decoder_guidance=3.0)
    assert unguided.inversion_guidance == 1.0  # the checkpoint's default: invert the conditional ODE
    image = picture(0)
    [reconstruction] = gaussian_pipeline.variation([image], [0], unguided, eta=0.0)
    [round_trip] = gaussian_pipeline.variation(
        [image], [0], dataclasses.replace(unguided, inversion_guidance=3.0), eta=0.0
    )
    # Decoded at guidance 3 from an unguided inversion, eta 0 lands about 105 levels away on average;
    # inverted at 3 too, it comes back to within about 15 at 50 steps (1.4 at 500, as above).
    assert np.abs(pixels(reconstruction) - pixels(image)).mean() > 60
    assert np.abs(pixels(round_trip) - pixels(image)).mean() < 30


def test_inversion_round_trip_through_the_real_untrained_decoder_is_exact(tmp_path: Path) -> None:
    # A fresh UNet predicts eps = 0: x_T is the scaled image and the way back must undo exactly that scale.
    pipeline = UnCLIPPipeline.from_checkpoint(init_checkpoint(tmp_path))
    image = picture(1)
    [reconstruction] = pipeline.variation([image], [0], pipeline.sampling(size=64, decoder_steps=4), eta=0.0)
    assert np.abs(pixels(reconstruction) - pixels(image)).max() <= 1


def test_variation_eta_varies_with_the_seed_and_zero_does_not(gaussian_pipeline: UnCLIPPipeline) -> None:
    sampling = gaussian_pipeline.sampling(size=64, decoder_steps=10)
    image = picture(0)
    varied = gaussian_pipeline.variation([image, image], [1, 2], sampling, eta=1.0)
    exact = gaussian_pipeline.variation([image, image], [1, 2], sampling, eta=0.0)

    assert_images(varied, 2, 64)
    assert not np.array_equal(pixels(varied[0]), pixels(varied[1]))
    assert np.array_equal(pixels(exact[0]), pixels(exact[1]))
    with pytest.raises(ValueError, match="eta"):
        gaussian_pipeline.variation([image], [0], sampling, eta=-1.0)


def test_interpolation_with_slerped_latents_starts_at_a_and_ends_at_b(
    gaussian_pipeline: UnCLIPPipeline,
) -> None:
    sampling = gaussian_pipeline.sampling(**ROUND_TRIP)
    a, b = picture(0), picture(1)

    [frames] = gaussian_pipeline.interpolate([a], [b], [0], sampling, frames=3, latent="slerp")

    assert_images(frames, 3, 64)
    assert np.abs(pixels(frames[0]) - pixels(a)).mean() < 2.0
    assert np.abs(pixels(frames[-1]) - pixels(b)).mean() < 2.0
    assert np.abs(pixels(frames[1]) - pixels(a)).mean() > 5.0


def test_interpolation_with_a_fixed_latent_is_reproducible_and_varies_along_the_path(
    pipeline: UnCLIPPipeline, fast: Sampling
) -> None:
    a, b = picture(0), picture(1)
    pairs = pipeline.interpolate([a, b], [b, a], [3, 4], fast, frames=3, latent="fixed")
    again = pipeline.interpolate([a, b], [b, a], [3, 4], fast, frames=3, latent="fixed")

    assert [len(frames) for frames in pairs] == [3, 3]
    assert_same(pairs[1], again[1])
    assert not np.array_equal(pixels(pairs[0][0]), pixels(pairs[0][2]))
    with pytest.raises(ValueError, match="latent"):
        pipeline.interpolate([a], [b], [0], fast, latent="linear")


def test_text_diff_starts_at_the_image_and_moves_away_from_it(gaussian_pipeline: UnCLIPPipeline) -> None:
    sampling = gaussian_pipeline.sampling(**ROUND_TRIP)
    image = picture(0)

    [frames] = gaussian_pipeline.text_diff([image], ["a red square"], ["a photo"], [0], sampling, frames=3)

    assert_images(frames, 3, 64)
    distances = [np.abs(pixels(frame) - pixels(image)).mean() for frame in frames]
    assert distances[0] < 2.0
    assert distances[0] < distances[1] < distances[2]

    further = dataclasses.replace(sampling, text_diff_strength=2 * sampling.text_diff_strength)
    [again] = gaussian_pipeline.text_diff([image], ["a red square"], ["a photo"], [0], further, frames=3)
    assert np.array_equal(pixels(again[0]), pixels(frames[0]))  # θ = 0 either way
    assert np.abs(pixels(again[2]) - pixels(image)).mean() > distances[2]  # went further toward the prompt


def test_slerp_keeps_unit_vectors_on_the_sphere_and_splits_the_angle() -> None:
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    half = slerp(a, b, torch.tensor([0.5]))
    assert torch.allclose(half, torch.tensor([[2**-0.5, 2**-0.5, 0.0]]))
    third = slerp(a, b, torch.tensor([1 / 3]))
    assert torch.allclose(third, torch.tensor([[3**0.5 / 2, 0.5, 0.0]]))  # 30° of the 90°
    assert torch.allclose(slerp(a.expand(2, 3), b.expand(2, 3), torch.tensor([0.0, 1.0])), torch.cat([a, b]))
    assert torch.allclose(slerp(a, a, torch.tensor([0.3])), a)  # parallel: no division by sin 0


# Inpainting ---------------------------------------------------------------------------------------------


def half_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))  # repaint the left half
    return mask


@pytest.mark.parametrize("inpainting_decoder", [True, False])
def test_inpaint_keeps_the_known_pixels_and_repaints_the_rest(
    tmp_path: Path, inpainting_decoder: bool
) -> None:
    config = named_config("tiny")
    if not inpainting_decoder:  # the fallback: replace the known region with the noised original
        config = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, in_channels=3))
    pipeline = UnCLIPPipeline.from_checkpoint(lively_checkpoint(tmp_path, config), dtype="float32")
    assert pipeline.models.decoder.supports_inpainting is inpainting_decoder
    image = picture(0)

    [painted] = pipeline.inpaint([image], [half_mask()], ["a red circle"], [0], pipeline.sampling(**FAST))

    assert np.abs(pixels(painted)[:, 32:] - pixels(image)[:, 32:]).max() <= 1
    assert np.abs(pixels(painted)[:, :32] - pixels(image)[:, :32]).mean() > 10


def test_inpaint_upsamplers_keep_the_known_pixels(pipeline: UnCLIPPipeline) -> None:
    image = picture(0, size=256)
    sampling = pipeline.sampling(size=256, prior_steps=1, decoder_steps=1, sr256_steps=1)

    [painted] = pipeline.inpaint([image], [half_mask(256)], ["a circle"], [0], sampling)

    assert painted.size == (256, 256)
    assert np.abs(pixels(painted)[:, 128:] - pixels(image)[:, 128:]).max() <= 1
    assert np.abs(pixels(painted)[:, :128] - pixels(image)[:, :128]).mean() > 10


def test_inpaint_conditions_the_decoder_on_the_prompt_alone(
    pipeline: UnCLIPPipeline, fast: Sampling, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder, seen = pipeline.models.decoder, []
    forward = decoder.forward

    def recording(x, t, image_embed, text_states, text_mask, *inpainting):
        seen.append((image_embed.clone(), text_mask.clone()))
        return forward(x, t, image_embed, text_states, text_mask, *inpainting)

    monkeypatch.setattr(decoder, "forward", recording)
    reports: list[Progress] = []
    pipeline.inpaint([picture(0)], [half_mask()], ["a circle"], [0], fast, progress=reports.append)

    assert {report.stage for report in reports} == {"decoder"}  # no prior sample
    assert len(seen) == fast.decoder_steps
    for image_embed, text_mask in seen:  # rows [conditioned, guidance null]
        assert not image_embed.any()
        assert text_mask[0].any() and not text_mask[1].any()


def test_inpaint_refuses_a_mask_of_another_size(pipeline: UnCLIPPipeline, fast: Sampling) -> None:
    with pytest.raises(ValueError, match="same size"):
        pipeline.inpaint([picture(0)], [half_mask(32)], ["a circle"], [0], fast)


def test_images_of_any_size_and_mode_are_accepted(pipeline: UnCLIPPipeline, fast: Sampling) -> None:
    odd = [Image.new("L", (90, 40), 128), Image.new("RGBA", (20, 70), (10, 200, 30, 100))]
    assert_images(pipeline.variation(odd, [0, 1], fast, eta=0.5), 2, 64)
