"""The stages of unCLIP sampling, each over explicit networks and tensors (no PIL, no settings).

Shapes: B items, E the CLIP embedding size, L the text context, W the CLIP text width, S the image side.
Every network output is cast to float32, the dtype the diffusion math runs in whatever the weights are
(`sampling_dtype`: float64 weights keep float64, for comparisons against a reference implementation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from models.clip import CLIP, TextEncoding
from models.config import DiffusionConfig
from models.diffusion import (
    AfterStep,
    Clamp,
    Denoiser,
    GaussianDiffusion,
    StepCallback,
    classifier_free_guidance,
    gaussian_noise,
)
from models.prior import DiffusionPrior
from models.tokenizer import Tokenizer
from models.unet import DecoderUNet, SuperResUNet

# A network's step as the samplers call it: the module itself, or its `runtime.CompiledStep`.
Step = Callable[..., torch.Tensor]

# The prior draws this many embeddings per item and keeps the one closest to the text (unCLIP §2.1),
# unless the checkpoint says otherwise (PriorConfig.sample_candidates; Karlo: 1).
PRIOR_CANDIDATES = 2


def sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the diffusion math runs in for networks in `dtype`: float32, or float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """A network output in its `sampling_dtype`."""
    return x.to(sampling_dtype(x.dtype))


# Encoders ---------------------------------------------------------------------------------------------


def encode_text(clip: CLIP, tokenizer: Tokenizer, prompts: list[str], device: torch.device) -> TextEncoding:
    ids, _ = tokenizer.encode(prompts)
    return clip.encode_text(ids.to(device))


def encode_images(clip: CLIP, images: torch.Tensor) -> torch.Tensor:
    """images `[B, 3, S, S]` in [-1, 1] → unit CLIP image embeddings z_i `[B, E]` float32."""
    return full_precision(clip.encode_image(images))


# Prior ------------------------------------------------------------------------------------------------


def prior_denoiser(prior: DiffusionPrior | Step, text: TextEncoding, guidance: float) -> Denoiser:
    """x_t `[N, E]` → guided x0 `[N, E]`; the null half sees the prior's learned null text."""
    rows = text.embeds.shape[0]
    if guidance == 1.0:  # the unconditional half would cancel out: skip it
        keep = torch.zeros(rows, dtype=torch.bool, device=text.embeds.device)
        return lambda x, t: full_precision(prior(x, t, text, keep))
    pair = TextEncoding(*(torch.cat([part, part]) for part in text))
    drop = torch.arange(2 * rows, device=text.embeds.device) >= rows  # rows [N:] unconditioned
    return classifier_free_guidance(
        lambda x, t: full_precision(prior(x, t, pair, drop)), guidance, text.embeds.shape[1]
    )


def x0_clamp(config: DiffusionConfig, default: Clamp | None) -> Clamp | None:
    """How a component's sampler clamps predicted x0: the config's range when it sets one, else `default`."""
    limit = config.x0_clip_range
    if limit is None:
        return default
    return lambda x0: x0.clamp(-limit, limit)


def sample_prior(
    prior: DiffusionPrior,
    diffusion: GaussianDiffusion,
    text: TextEncoding,
    generators: Sequence[torch.Generator],
    guidance: float,
    *,
    unit: bool = True,
    clamp: Clamp | None = None,
    candidates: int | None = None,
    on_step: StepCallback | None = None,
    step: Step | None = None,
) -> torch.Tensor:
    """CLIP image embeddings z_i `[B, E]`: the best of `candidates` (None: PRIOR_CANDIDATES) samples by
    cos(z_i, z_t).

    `unit`: return unit vectors (what our decoders are trained on); else the prior's raw embeddings (a
    decoder trained on unnormalised CLIP image embeddings, as Karlo's, needs their length).
    `clamp` applies to predicted x0 in the prior's diffusion space. `step` runs the prior (None: the
    module itself; the pipeline passes its compiled step).
    """
    batch, embed_dim = text.embeds.shape
    device = text.embeds.device
    count = candidates or PRIOR_CANDIDATES
    # Rows [item 0 candidate 0, item 0 candidate 1, item 1 candidate 0, ...]; an item's candidates draw,
    # in turn, from the item's own generator.
    rows = TextEncoding(*(part.repeat_interleave(count, dim=0) for part in text))
    row_generators = [g for g in generators for _ in range(count)]
    x_T = gaussian_noise(row_generators, (embed_dim,), device, sampling_dtype(text.embeds.dtype))
    denoise = prior_denoiser(step or prior, rows, guidance)
    latents = diffusion.sample(denoise, x_T, row_generators, method="ddpm", clamp=clamp, on_step=on_step)
    z = full_precision(prior.latents_to_embeds(latents)).view(batch, count, embed_dim)
    score = (F.normalize(z, dim=-1) * text.embeds.to(z.dtype)[:, None]).sum(-1)  # [B, candidates]
    best = z[torch.arange(batch, device=device), score.argmax(dim=1)]  # stays on the device: no sync
    return F.normalize(best, dim=-1) if unit else best


# Decoder ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderCondition:
    """Everything the decoder sees besides x_t, for B rows."""

    image_embed: torch.Tensor  # [B, E] unit CLIP image embedding; zeros = the guidance null
    text_states: torch.Tensor  # [B, L, W] CLIP token states
    text_mask: torch.Tensor  # [B, L] bool; all False = no caption (dropped)
    inpaint_image: torch.Tensor | None = None  # [B, 3, 64, 64] in [-1, 1], GLIDE inpainting decoders only
    inpaint_known: torch.Tensor | None = None  # [B, 1, 64, 64], 1 = keep

    @classmethod
    def image_only(cls, image_embed: torch.Tensor, context_length: int, text_width: int) -> DecoderCondition:
        """Conditioned on z_i alone, as the decoder saw it when training dropped the caption."""
        batch = image_embed.shape[0]
        states = image_embed.new_zeros(batch, context_length, text_width)  # masked out: any value does
        mask = torch.zeros(batch, context_length, dtype=torch.bool, device=image_embed.device)
        return cls(image_embed, states, mask)

    def null(self) -> DecoderCondition:
        """The classifier-free guidance null as the decoder was trained: zero z_i and dropped text. The
        inpainting input stays: it is part of the task, not of the condition being guided."""
        return replace(
            self, image_embed=torch.zeros_like(self.image_embed), text_mask=torch.zeros_like(self.text_mask)
        )

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.image_embed, self.text_states, self.text_mask, self.inpaint_image, self.inpaint_known)


def concat_conditions(first: DecoderCondition, second: DecoderCondition) -> DecoderCondition:
    def join(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None or b is None else torch.cat([a, b])

    return DecoderCondition(*(join(a, b) for a, b in zip(first.tensors(), second.tensors(), strict=True)))


def decoder_denoiser(
    decoder: DecoderUNet | Step,
    condition: DecoderCondition,
    guidance: float,
    image_guidance: float | None = None,
) -> Denoiser:
    """x_t `[B, 3, 64, 64]` → guided output `[B, out_channels, 64, 64]` (a learned variance is unguided).

    Classifier-free guidance, null + guidance·(full − null), or with `image_guidance` z_i's pull apart from
    the caption's:
        null + image_guidance·(image − null) + guidance·(full − image),
    with full = the output for the whole condition and image = for z_i without the caption. Without a
    caption (full = image) that is plain guidance at `image_guidance`, without z_i (image = null) at
    `guidance`: one decoder pass fewer.
    """

    def run(x: torch.Tensor, t: torch.Tensor, c: DecoderCondition) -> torch.Tensor:
        output = decoder(x, t, c.image_embed, c.text_states, c.text_mask, c.inpaint_image, c.inpaint_known)
        return full_precision(output)

    if image_guidance is None or not condition.image_embed.any():
        image_guidance = guidance
    elif not condition.text_mask.any():
        guidance = image_guidance
    if guidance == image_guidance == 1.0:  # the unconditional half would cancel out: skip it
        return lambda x, t: run(x, t, condition)
    if guidance == image_guidance:
        pair = concat_conditions(condition, condition.null())  # built once, not per step
        return classifier_free_guidance(lambda x, t: run(x, t, pair), guidance, channels=3)
    image_only = replace(condition, text_mask=torch.zeros_like(condition.text_mask))
    triple = concat_conditions(concat_conditions(condition, image_only), condition.null())

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        outputs = run(torch.cat([x] * 3), torch.cat([t] * 3), triple)
        full, image, null = outputs[:, :3].chunk(3)
        guided = null + image_guidance * (image - null) + guidance * (full - image)
        return torch.cat([guided, outputs[: len(x), 3:]], dim=1)  # a learned variance: the full condition's

    return denoise


# Upsamplers -------------------------------------------------------------------------------------------


def upsampler_denoiser(upsampler: SuperResUNet, low_res: torch.Tensor, step: Step | None = None) -> Denoiser:
    """No text and no guidance (unCLIP §2.2): the low-resolution image `[B, 3, s, s]` is the condition,
    upsampled once here for every step. `step` runs the upsampler (None: the module itself)."""
    side = upsampler.config.image_size
    upsampled = upsampler.upsample_condition(low_res, (side, side))
    run = step or upsampler
    return lambda x, t: full_precision(run(x, t, None, upsampled))


# Inpainting -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownRegion:
    """The pixels an inpainting stage must keep: image `[B, 3, S, S]`, known `[B, 1, S, S]` (1 = keep)."""

    image: torch.Tensor
    known: torch.Tensor

    def paste(self, x0: torch.Tensor) -> torch.Tensor:
        """Predicted x_0 with the known region set to the image (GLIDE's denoised_fn)."""
        return torch.lerp(x0, self.image, self.known)

    def replacer(self, diffusion: GaussianDiffusion, generators: Sequence[torch.Generator]) -> AfterStep:
        """After each step, the known region of x is the image noised to the step x is now at, so the
        network always sees the true known pixels (and the last step leaves them exact)."""

        def after_step(x: torch.Tensor, step: int) -> torch.Tensor:
            if step == 0:  # x is x_0 now: paste the image itself, no noise needed
                return torch.lerp(x, self.image, self.known)
            noise = gaussian_noise(generators, x.shape[1:], x.device, x.dtype)
            return torch.lerp(x, diffusion.q_sample_step(self.image, step - 1, noise), self.known)

        return after_step
