"""`UnCLIPPipeline` (Contract B): the five unCLIP operations over one loaded checkpoint.

Every operation is a short composition of stages (stages.py): CLIP → prior → decoder 64 px (sampled, or
started from a DDIM-inverted image) → upsamplers up to `sampling.size`. Batch invariance: each item owns
a torch.Generator seeded from its seed and every random number it uses comes from that stream, so an
item's output depends only on its inputs and its seed, never on the rest of the batch.

A checkpoint with a prompt reader (models/reader.py) has `generate` and `inpaint` draw its rewrite of each
prompt into the captions it draws best; such images carry the rewrite in `info[REVISED_PROMPT_KEY]`.

Stage sizes are the checkpoint's (`decoder.image_size`, `sr256.image_size`, ...): 64, 256 and 1024 for
every real checkpoint; `sampling.size` names the stage to stop after.

Karlo: with a checkpoint imported by models.convert.karlo, `generate` reproduces diffusers' UnCLIPPipeline
given `generator=[torch.Generator(device).manual_seed(s) for s in seeds]` (our item generators live
on the pipeline's device: CUDA noise is drawn on the GPU, `latents.item_generators`). Every choice that
differs from ours is the checkpoint's (see that module): one prior sample, raw image embeddings, the x0
and variance clamps, the guidance nulls and sr256_last. Both draw, per item, prior x_T, the prior's step
noise, decoder x_T, its step noise, upsampler x_T, its step noise, in that order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from models.checkpoint import UnCLIPModels, default_checkpoint, load_checkpoint
from models.clip import TextEncoding
from models.contract import (
    DEFAULT_FRAMES,
    DEFAULT_LATENT,
    LATENTS,
    REVISED_PROMPT_KEY,
    SCORE_KEY,
    VARIATION_ETA,
    ProgressCallback,
    Sampling,
    candidate_seed,
)
from models.diffusion import Clamp, GaussianDiffusion, clamp_images, gaussian_noise
from models.pipeline.devices import resolve_device, resolve_dtype
from models.pipeline.images import clip_pixels, images_to_tensor, known_regions, tensor_to_images
from models.pipeline.latents import item_generators, sequence_streams, slerp
from models.pipeline.sampling import stage_reporter
from models.pipeline.stages import (
    DecoderCondition,
    KnownRegion,
    Step,
    decoder_denoiser,
    encode_images,
    encode_text,
    full_precision,
    sample_prior,
    sampling_dtype,
    upsampler_denoiser,
    x0_clamp,
)
from models.reader import PromptReader, revise

RegionAt = Callable[[int], KnownRegion]  # image side → the pixels to keep at that side


class UnCLIPPipeline:
    def __init__(self, models: UnCLIPModels, device: torch.device, dtype: torch.dtype) -> None:
        self.models = models
        self.device = device
        self.dtype = dtype
        # Compiled denoising steps by component name ("prior", "decoder", "sr256", ...), installed by
        # `models.pipeline.runtime.compile_pipeline`; a component without one runs eager.
        self.steps: dict[str, Step] = {}
        # What rewrites prompts into the checkpoint's own captions (generate, inpaint); None draws every
        # prompt as given.
        self.reader: PromptReader | None = models.reader

    @classmethod
    def from_checkpoint(
        cls, folder: str | Path | None = None, device: str = "auto", dtype: str | torch.dtype = "auto"
    ) -> UnCLIPPipeline:
        """Load a checkpoint folder (None = the shipped default) onto `device` in `dtype`."""
        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        models = load_checkpoint(folder or default_checkpoint(), resolved_device, resolved_dtype)
        for unet in (models.decoder, models.sr256, models.sr256_last, models.sr1024):
            if unet is not None:
                # NHWC convolutions: oneDNN's and cuDNN's fast layout. Karlo-shaped, 256 px, 2-core Xeon
                # (AMX): 4.8 -> 3.8 s per image in bf16, 7.1 -> 6.5 s in fp32 (`bench/pipeline.py`).
                unet.to(memory_format=torch.channels_last)
        return cls(models, resolved_device, resolved_dtype)

    # Settings ---------------------------------------------------------------------------------------

    @property
    def default_sampling(self) -> Sampling:
        defaults = self.models.config.sampling
        if defaults.size == 1024 and self.models.sr1024 is None:  # the largest size this checkpoint makes
            defaults = dataclasses.replace(defaults, size=256)
        return defaults

    def sampling(self, **overrides: float | int | None) -> Sampling:
        """The default sampling with `overrides` applied (None = keep the default)."""
        unknown = sorted(set(overrides) - set(Sampling.field_names()))
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {unknown}; known: {list(Sampling.field_names())}")
        chosen = {name: value for name, value in overrides.items() if value is not None}
        sampling = dataclasses.replace(self.default_sampling, **chosen)
        self._check_size(sampling)
        if sampling.best_of > 1 and self.models.clip.visual is None:
            raise ValueError(NO_RANKING)
        return sampling

    def truncated(self, prompts: list[str]) -> list[bool]:
        """Which prompts are longer than the CLIP context (and are cut to fit)."""
        return self.models.tokenizer.encode(prompts)[1]

    # Operations -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sampling: Sampling,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]:
        """Text → images: prior (2 candidates, guided) → guided decoder → upsamplers.

        With `sampling.best_of` k > 1, each item draws k candidates (candidate c seeded with
        candidate_seed(seed, c)) and keeps the one whose CLIP image embedding is nearest its prompt's text
        embedding; the kept image carries that cosine in `image.info[SCORE_KEY]`. CLIP ranks the first
        picture of the chain at least as large as its input (`_ranked_after`), so only the kept
        candidates go through the upsamplers after it: the image is the one the candidate's seed gives
        with best_of 1."""
        _same_length(prompts=prompts, seeds=seeds)
        self._check_size(sampling)
        prompts, revised = self._read(prompts)
        k = sampling.best_of
        if k > 1 and self.models.clip.visual is None:
            raise ValueError(NO_RANKING)
        rows = [candidate_seed(seed, c) for seed in seeds for c in range(k)]  # item-major; k = 1: the seeds
        generators = item_generators(rows, self.device)
        encoded = self._text(prompts)  # once per prompt; its k candidate rows share it
        text = TextEncoding(*(part.repeat_interleave(k, dim=0) for part in encoded))
        image_embed = self._prior(text, generators, sampling, progress)
        condition = DecoderCondition(image_embed, text.states, text.mask)
        x_T = self._noise(generators, self._decoder_size)
        x = self._decode(
            condition, x_T, generators, sampling, progress, image_guidance=sampling.decoder_image_guidance
        )
        stages, scores = sampling.upsamplers(), None
        if k > 1:
            ranked_after = self._ranked_after(stages)
            x = self._upsample(x, generators, sampling, progress, stages=stages[:ranked_after])
            scores, kept = self._rank(encoded.embeds, x, k)
            x, generators = x[kept], [generators[row] for row in kept]
            stages = stages[ranked_after:]
        images = tensor_to_images(self._upsample(x, generators, sampling, progress, stages=stages))
        for image, score in zip(images, scores or (), strict=False):
            image.info[SCORE_KEY] = score
        return _noting_revisions(images, revised)

    def _ranked_after(self, stages: tuple[str, ...]) -> int:
        """How many of the upsampling `stages` run before best_of's ranking: CLIP sees the first picture at
        least its input size (the shipped CLIP's 32 px: the decoder's 64 px; Karlo's 224 px: sr256's)."""
        size = self._decoder_size
        for done, stage in enumerate(stages):
            if size >= self.models.config.clip.image_size:
                return done
            size = getattr(self.models.config, stage).image_size
        return len(stages)

    def _rank(self, text_embeds: torch.Tensor, x: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
        """Per prompt (its text embedding, a row of `[B, E]`), of its k consecutive candidate rows of x
        `[B * k, 3, s, s]` the one nearest it in CLIP space: its cosine, and its row."""
        scores = clip_scores(text_embeds, self._image_embeds(tensor_to_images(x)), k)
        best = scores.argmax(dim=1)  # [B]
        kept = (torch.arange(len(text_embeds), device=best.device) * k + best).tolist()
        return scores.gather(1, best[:, None])[:, 0].tolist(), kept

    @torch.inference_mode()
    def variation(
        self,
        images: list[Image.Image],
        seeds: list[int],
        sampling: Sampling,
        eta: float = VARIATION_ETA,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]:
        """Decode z_i = CLIP(image) from the image's own DDIM-inverted x_T; eta 0 stays closest to
        the image (returns to it when `inversion_guidance` equals `decoder_guidance`)."""
        _same_length(images=images, seeds=seeds)
        self._check_size(sampling)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        generators = item_generators(seeds, self.device)
        condition = self._image_condition(self._image_embeds(images))
        x_T = self._invert(condition, self._pixels(images, self._decoder_size), sampling, progress)
        x = self._decode(condition, x_T, generators, sampling, progress, method="ddim", eta=eta)
        return tensor_to_images(self._upsample(x, generators, sampling, progress))

    @torch.inference_mode()
    def inpaint(
        self,
        images: list[Image.Image],
        masks: list[Image.Image],
        prompts: list[str],
        seeds: list[int],
        sampling: Sampling,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]:
        """Repaint where a mask is 255 following the prompt; every stage keeps the other pixels.

        The decoder is conditioned on the prompt's tokens alone, z_i zeroed as in its training rows with
        the image embedding dropped (GLIDE's inpainting conditioning). A prior sample would describe a
        whole new picture, background included, which the decoder then paints into the hole: on the
        shapes model a patch of another background and no green square 8 times out of 8 for "a green
        square", against a green shape on the image's own background 8 times out of 8 (4 read as squares)
        text-only.
        """
        _same_length(images=images, masks=masks, prompts=prompts, seeds=seeds)
        self._check_size(sampling)
        for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
            if image.size != mask.size:
                raise ValueError(
                    f"mask {index} is {mask.size[0]}x{mask.size[1]}, its image {image.size[0]}x"
                    f"{image.size[1]}: they must be the same size"
                )

        def region_at(size: int) -> KnownRegion:
            return KnownRegion(self._pixels(images, size), known_regions(masks, size, self.device))

        generators = item_generators(seeds, self.device)
        drawn, revised = self._read(prompts)
        text = self._text(drawn)
        region = region_at(self._decoder_size)
        no_image_embed = text.embeds.new_zeros(len(prompts), self.models.config.clip.embed_dim)
        condition = DecoderCondition(no_image_embed, text.states, text.mask)
        if self.models.decoder.supports_inpainting:  # GLIDE's input; others rely on the region alone
            condition = dataclasses.replace(condition, inpaint_image=region.image, inpaint_known=region.known)
        noise = self._noise(generators, self._decoder_size)
        x = self._decode(condition, noise, generators, sampling, progress, region=region)
        images = tensor_to_images(self._upsample(x, generators, sampling, progress, region_at))
        return _noting_revisions(images, revised)

    @torch.inference_mode()
    def interpolate(
        self,
        images_a: list[Image.Image],
        images_b: list[Image.Image],
        seeds: list[int],
        sampling: Sampling,
        frames: int = DEFAULT_FRAMES,
        latent: str = DEFAULT_LATENT,
        progress: ProgressCallback | None = None,
    ) -> list[list[Image.Image]]:
        """`frames` images per (a, b) pair along slerp(z_a, z_b); x_T slerped between the inverted images
        ("slerp") or one random x_T held for every frame ("fixed")."""
        _same_length(images_a=images_a, images_b=images_b, seeds=seeds)
        self._check_size(sampling)
        _check_frames(frames)
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
        batch = len(seeds)
        embeds = self._image_embeds([*images_a, *images_b])  # [2B, E]
        fractions = torch.linspace(0, 1, frames, device=self.device).repeat(batch)  # [B * frames]
        image_embed = slerp(*_frame_rows(embeds.chunk(2), frames), fractions)
        fixed_shape = (3, self._decoder_size, self._decoder_size) if latent == "fixed" else None
        generators, fixed = sequence_streams(seeds, frames, fixed_shape, self.device)
        if fixed is None:
            pixels = self._pixels([*images_a, *images_b], self._decoder_size)
            x_T = self._invert(self._image_condition(embeds), pixels, sampling, progress)  # [2B, 3, 64, 64]
            x_T = slerp(*_frame_rows(x_T.chunk(2), frames), fractions)
        else:
            x_T = fixed.repeat_interleave(frames, dim=0)
        return self._decode_frames(image_embed, x_T, generators, sampling, frames, progress)

    @torch.inference_mode()
    def text_diff(
        self,
        images: list[Image.Image],
        prompts: list[str],
        source_captions: list[str],
        seeds: list[int],
        sampling: Sampling,
        frames: int = DEFAULT_FRAMES,
        progress: ProgressCallback | None = None,
    ) -> list[list[Image.Image]]:
        """Frames along slerp(z_i, z_d, θ), θ from 0 to `text_diff_strength`, with z_d = norm(z_t − z_t0),
        all decoded from the image's x_T."""
        _same_length(images=images, prompts=prompts, source_captions=source_captions, seeds=seeds)
        self._check_size(sampling)
        _check_frames(frames)
        batch = len(seeds)
        target, source = full_precision(self._text([*prompts, *source_captions]).embeds).chunk(2)
        embeds = self._image_embeds(images)
        # z_d at z_i's length: unit for unit embeddings; raw CLIP embeddings keep their scale.
        direction = F.normalize(target - source, dim=-1) * embeds.norm(dim=-1, keepdim=True)  # [B, E]
        x_T = self._invert(
            self._image_condition(embeds), self._pixels(images, self._decoder_size), sampling, progress
        )
        fractions = torch.linspace(0, sampling.text_diff_strength, frames, device=self.device).repeat(batch)
        image_embed = slerp(*_frame_rows((embeds, direction), frames), fractions)
        generators, _ = sequence_streams(seeds, frames, None, self.device)
        x_T = x_T.repeat_interleave(frames, dim=0)
        return self._decode_frames(image_embed, x_T, generators, sampling, frames, progress)

    # Stages -----------------------------------------------------------------------------------------

    def _read(self, prompts: list[str]) -> tuple[list[str], list[str | None]]:
        """The prompts to draw, and per prompt the caption the reader rewrote it into (None: as given)."""
        revised = revise(self.reader, self.models.tokenizer, prompts)
        return [r or p for r, p in zip(revised, prompts, strict=True)], revised

    def _text(self, prompts: list[str]) -> TextEncoding:
        return encode_text(self.models.clip, self.models.tokenizer, prompts, self.device)

    def _image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        return encode_images(self.models.clip, clip_pixels(images, self.models.config.clip, self.device))

    def _image_condition(self, image_embed: torch.Tensor) -> DecoderCondition:
        clip = self.models.config.clip
        condition = DecoderCondition.image_only(image_embed, clip.context_length, clip.text_width)
        return dataclasses.replace(condition, text_states=condition.text_states.to(self.dtype))

    def _pixels(self, images: list[Image.Image], size: int) -> torch.Tensor:
        return images_to_tensor(images, size, self.device)

    @property
    def _decoder_size(self) -> int:
        return self.models.config.decoder.image_size

    def _noise(self, generators: Sequence[torch.Generator], size: int) -> torch.Tensor:
        return gaussian_noise(generators, (3, size, size), self.device, sampling_dtype(self.dtype))

    def _image_clamp(self, component: str, region: KnownRegion | None) -> Clamp:
        """Predicted images clipped to [-1, 1] (or the component's range), then the known pixels pasted."""
        clamp = x0_clamp(getattr(self.models.config, f"{component}_diffusion"), clamp_images) or clamp_images
        return clamp if region is None else lambda x0: region.paste(clamp(x0))

    def _diffusion(self, component: str, steps: int) -> GaussianDiffusion:
        config = getattr(self.models.config, f"{component}_diffusion")
        return GaussianDiffusion.from_config(config, steps)

    def _prior(
        self,
        text: TextEncoding,
        generators: list[torch.Generator],
        sampling: Sampling,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        config = self.models.config
        return sample_prior(
            self.models.prior,
            self._diffusion("prior", sampling.prior_steps),
            text,
            generators,
            sampling.prior_guidance,
            unit=config.clip.normalize_image_embeds,
            clamp=x0_clamp(config.prior_diffusion, default=None),
            candidates=config.prior.sample_candidates,
            on_step=stage_reporter(progress, "prior"),
            step=self.steps.get("prior"),
        )

    def _decode(
        self,
        condition: DecoderCondition,
        x_T: torch.Tensor,
        generators: Sequence[torch.Generator],
        sampling: Sampling,
        progress: ProgressCallback | None,
        *,
        method: str = "ddpm",
        eta: float = 0.0,
        region: KnownRegion | None = None,
        image_guidance: float | None = None,
    ) -> torch.Tensor:
        """The 64 px decoder from x_T `[B, 3, 64, 64]` → x_0 `[B, 3, 64, 64]`; `image_guidance` see
        `decoder_denoiser`."""
        diffusion = self._diffusion("decoder", sampling.decoder_steps)
        decoder = self.steps.get("decoder", self.models.decoder)
        denoise = decoder_denoiser(decoder, condition, sampling.decoder_guidance, image_guidance)
        return diffusion.sample(
            denoise,
            x_T,
            generators,
            method=method,
            eta=eta,
            clamp=self._image_clamp("decoder", region),
            after_step=None if region is None else region.replacer(diffusion, generators),
            on_step=stage_reporter(progress, "decoder"),
        )

    def _invert(
        self,
        condition: DecoderCondition,
        x0: torch.Tensor,
        sampling: Sampling,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        """DDIM inversion through the decoder at `inversion_guidance` (see `Sampling`)."""
        diffusion = self._diffusion("decoder", sampling.decoder_steps)
        decoder = self.steps.get("decoder", self.models.decoder)
        denoise = decoder_denoiser(decoder, condition, sampling.inversion_guidance)
        clamp = self._image_clamp("decoder", None)
        return diffusion.invert(denoise, x0, clamp=clamp, on_step=stage_reporter(progress, "invert"))

    def _upsample(
        self,
        x: torch.Tensor,
        generators: Sequence[torch.Generator],
        sampling: Sampling,
        progress: ProgressCallback | None,
        region_at: RegionAt | None = None,
        stages: tuple[str, ...] | None = None,
    ) -> torch.Tensor:
        """64 px images `[B, 3, 64, 64]` → `[B, 3, size, size]` through the upsamplers `size` needs (or
        through `stages` of them, from the size x has).

        Each upsampler sees the previous stage's image clipped to [-1, 1]; a checkpoint with sr256_last
        runs it for sr256's last step.
        """
        for stage in sampling.upsamplers() if stages is None else stages:
            upsampler = getattr(self.models, stage)
            size = getattr(self.models.config, stage).image_size
            diffusion = self._diffusion(stage, getattr(sampling, f"{stage}_steps"))
            region = None if region_at is None else region_at(size)
            low_res = x.clamp(-1, 1)
            last = self.models.sr256_last if stage == "sr256" else None
            x = diffusion.sample(
                upsampler_denoiser(upsampler, low_res, self.steps.get(stage)),
                self._noise(generators, size),
                generators,
                clamp=self._image_clamp(stage, region),
                after_step=None if region is None else region.replacer(diffusion, generators),
                on_step=stage_reporter(progress, stage),
                final_denoise=None
                if last is None
                else upsampler_denoiser(last, low_res, self.steps.get("sr256_last")),
            )
        return x

    def _decode_frames(
        self,
        image_embed: torch.Tensor,
        x_T: torch.Tensor,
        generators: list[torch.Generator],
        sampling: Sampling,
        frames: int,
        progress: ProgressCallback | None,
    ) -> list[list[Image.Image]]:
        """Rows `[B * frames, ...]` decoded deterministically (DDIM eta 0) → B sequences of frames."""
        condition = self._image_condition(image_embed)
        x = self._decode(condition, x_T, generators, sampling, progress, method="ddim", eta=0.0)
        images = tensor_to_images(self._upsample(x, generators, sampling, progress))
        return [images[start : start + frames] for start in range(0, len(images), frames)]

    def _check_size(self, sampling: Sampling) -> None:
        if sampling.size == 1024 and self.models.sr1024 is None:
            raise ValueError("this checkpoint has no 256→1024 upsampler: choose size 64 or 256")


NO_RANKING = "best_of needs a CLIP image encoder to rank candidates; this checkpoint has none (use best_of 1)"


def _noting_revisions(images: list[Image.Image], revised: list[str | None]) -> list[Image.Image]:
    """Each image carries the prompt it was drawn from in `info[REVISED_PROMPT_KEY]` when that was a
    rewrite (one image per prompt)."""
    for image, caption in zip(images, revised, strict=True):
        if caption is not None:
            image.info[REVISED_PROMPT_KEY] = caption
    return images


def clip_scores(text_embeds: torch.Tensor, image_embeds: torch.Tensor, k: int) -> torch.Tensor:
    """Cosines `[B, k]` of text embeddings `[B, E]` to image embeddings `[B * k, E]` (item-major)."""
    images = F.normalize(image_embeds.float(), dim=-1).view(text_embeds.shape[0], k, -1)
    return torch.einsum("be,bke->bk", F.normalize(text_embeds.float(), dim=-1), images)


def _frame_rows(pair: Sequence[torch.Tensor], frames: int) -> tuple[torch.Tensor, ...]:
    """Each of a pair of `[B, ...]` tensors with every row repeated for the `frames` frames of its item."""
    return tuple(part.repeat_interleave(frames, dim=0) for part in pair)


def _check_frames(frames: int) -> None:
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")


def _same_length(**lists: Sequence[object]) -> None:
    lengths = {name: len(values) for name, values in lists.items()}
    if 0 in lengths.values():
        raise ValueError(f"nothing to do: an empty list among {sorted(lengths)}")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"one entry per item is needed in each list, got lengths {lengths}")
