"""Stage 3: the 64 px decoder (unCLIP §2.2, GLIDE), conditioned on the frozen CLIP's image embedding and
caption tokens, with the GLIDE inpainting input so one decoder serves generation and inpainting.

Per row, independently: the image embedding is zeroed 10 % of the time and the caption dropped (all its
tokens masked) 50 % of the time, the guidance "null" of `DecoderUNet`; half the rows get a random known
region (`random_keep_masks`) as inpainting input, the others "nothing known" (mask 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from functools import cached_property

import torch
import torch.nn.functional as F

from models.checkpoint import UnCLIPModels
from models.pipeline.latents import slerp
from models.train import data, shapes
from models.train.clip import encode_captions
from models.train.losses import TrainingSchedule, diffusion_loss
from models.train.stage import Batch, Stage, bernoulli, pick
from models.unet import AttentionBlock, DecoderUNet

IMAGE_DROPOUT = 0.1
TEXT_DROPOUT = 0.5
INPAINT_FRACTION = 0.5


def random_keep_masks(
    batch: int, size: int, generator: torch.Generator, device: torch.device | str
) -> torch.Tensor:
    """`[B, 1, size, size]` float masks, 1 = known, 0 = to repaint: one rectangle of 25–75 % of each side
    per row, in a corner half the time (the evaluation repaints a corner) and anywhere otherwise."""
    extent = torch.empty(batch, 2, device=device).uniform_(0.25, 0.75, generator=generator)  # [B, (w, h)]
    room = 1 - extent
    start = torch.rand(batch, 2, generator=generator, device=device) * room
    cornered = torch.rand(batch, 1, generator=generator, device=device) < 0.5
    far = torch.rand(batch, 2, generator=generator, device=device) < 0.5
    start = torch.where(cornered, torch.where(far, room, torch.zeros_like(room)), start)
    coords = (torch.arange(size, device=device) + 0.5) / size  # pixel centres
    inside_x = (coords >= start[:, :1]) & (coords < start[:, :1] + extent[:, :1])  # [B, size]
    inside_y = (coords >= start[:, 1:]) & (coords < start[:, 1:] + extent[:, 1:])
    repaint = inside_y[:, :, None] & inside_x[:, None, :]  # [B, H, W]
    return (~repaint).float()[:, None]


class DecoderStage(Stage):
    name = "decoder"
    image_dropout, text_dropout = IMAGE_DROPOUT, TEXT_DROPOUT

    @cached_property
    def schedule(self) -> TrainingSchedule:
        return TrainingSchedule(self.models.config.decoder_diffusion, self.device)

    @torch.no_grad()
    def make_batch(self, size: int, rng: random.Random) -> Batch:
        scenes, pictures = self.data.pictures64
        index = pick(len(scenes), size, rng)
        texts, specs = data.captions([scenes[i] for i in index], rng)
        return {
            "images": data.to_model_range(pictures[index].to(self.device)),
            "image_embeds": self.image_embeds[index],
            "specs": specs,  # the facts each caption states
            **self.encoded(texts),
        }

    def encoded(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The frozen CLIP's reading of captions: text_embeds `[B, E]`, text_states `[B, L, W]`, text_mask."""
        self.models.clip.eval()
        text = self.models.clip.encode_text(encode_captions(self.models.tokenizer, texts, self.device))
        return {"text_embeds": text.embeds.float(), "text_states": text.states, "text_mask": text.mask}

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, noise, inputs, inpaint = self.noised(batch, generator)
        output = self.models.decoder(*inputs, **inpaint)
        return diffusion_loss(self.schedule, output, x0, inputs[0], inputs[1], noise)

    def noised(
        self, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], Batch]:
        """x0 `[B, 3, 64, 64]` in [-1, 1], the noise, the decoder's inputs (x_t, t, z_i, text_states,
        text_mask) with z_i and the caption dropped per row, and GLIDE's inpainting input (or none)."""
        x0 = batch["images"]
        b, device = x0.shape[0], self.device
        t = self.schedule.sample_t(b, generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        x_t = self.schedule.q_sample(x0, t, noise)
        keep_image = ~bernoulli(self.image_dropout, b, generator, device)
        keep_text = ~bernoulli(self.text_dropout, b, generator, device)
        image_embeds = batch["image_embeds"] * keep_image[:, None]
        text_mask = batch["text_mask"] & keep_text[:, None]
        inpaint = {}
        if self.models.decoder.supports_inpainting:
            masks = random_keep_masks(b, x0.shape[-1], generator, device)
            masks = masks * bernoulli(INPAINT_FRACTION, b, generator, device)[:, None, None, None]
            inpaint = {"inpaint_image": x0, "inpaint_mask": masks}
        return x0, noise, (x_t, t, image_embeds, batch["text_states"], text_mask), inpaint


def frozen_decoder(reference: UnCLIPModels | None, stage: str, device: torch.device) -> DecoderUNet:
    """The `--init` decoder as a fine-tune's frozen teacher (a fine-tune without `--init` is an error)."""
    if reference is None:
        raise ValueError(f"{stage} fine-tunes a trained decoder: give it with --init")
    return reference.decoder.to(device).eval().requires_grad_(False)


ANCHOR_ROWS = 8  # rows per batch whose off-picture, caption-less output is held to the reference decoder
ANCHOR_WEIGHT = 1.0


class AnchoredDecoderStage(DecoderStage):
    """The decoder fine-tuned from `--init` (on the caption grammar), its caption-less response to
    off-picture image embeddings held where the `--init` decoder had it.

    The text diff decodes slerp(z_i, z_d, θ), z_d = norm(z_t − z_t0)·|z_i|, with no caption: an
    embedding no training picture has. A plain fine-tune learns the captioned rows and lets that
    response drift (its text diff toward "a blue circle" drew a blue shape beside the orange circle, 0 of
    5). Each batch's first ANCHOR_ROWS pictures are noised afresh and decoded without caption from their
    z_i turned by θ ~ U(0, 1) toward the direction from their caption's z_t to the next row's; the
    target is the frozen reference decoder's guided output there (distillation, as the CLIP refit holds
    its template z_t). Guided, because the sampler steps with null + g·(conditioned − null): holding the
    conditioned output alone (2,000 steps) let the guided one drift, and the text diff ended blue 1 of
    8 (the reference: 5 of 8); the guided term had it back at 5 of 8 after 3,500 steps, but 3 of 8 after
    6,000 (README, "What people type"): not yet tight enough to ship a long fine-tune by itself.
    """

    name = "decoder_anchored"
    component = "decoder"

    def setup(self, reference: UnCLIPModels | None) -> None:
        self.teacher = frozen_decoder(reference, self.name, self.device)

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts = super().loss(batch, generator)
        x0 = batch["images"][:ANCHOR_ROWS]  # [A, 3, 64, 64]
        rows, device = x0.shape[0], self.device
        image_embeds = batch["image_embeds"][:rows]  # [A, E]
        text_embeds = batch["text_embeds"][:rows]
        direction = F.normalize(text_embeds.roll(1, 0) - text_embeds, dim=-1)
        theta = torch.rand(rows, generator=generator, device=device)
        turned = slerp(image_embeds, direction * image_embeds.norm(dim=-1, keepdim=True), theta)
        t = self.schedule.sample_t(rows, generator, device)
        x_t = self.schedule.q_sample(x0, t, torch.randn(x0.shape, generator=generator, device=device))
        # Rows [turned z, zero z] (the guidance null), both without caption.
        inputs = (
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            torch.cat([turned, torch.zeros_like(turned)]),
            batch["text_states"][:rows].repeat(2, 1, 1),
            torch.zeros_like(batch["text_mask"][:rows]).repeat(2, 1),
        )
        inpaint = {}
        if self.models.decoder.supports_inpainting:  # "nothing known", as in generation
            inpaint = {"inpaint_image": inputs[0], "inpaint_mask": torch.zeros_like(inputs[0][:, :1])}
        with torch.no_grad():
            target = self.guided(self.teacher(*inputs, **inpaint))
        drift = (self.guided(self.models.decoder(*inputs, **inpaint)) - target).pow(2).mean()
        return loss.mean() + ANCHOR_WEIGHT * drift, {**parts, "drift": drift.detach()}

    def guided(self, output: torch.Tensor) -> torch.Tensor:
        """Rows [conditioned; null] of a decoder output `[2A, C, 64, 64]` → what the sampler steps with,
        null + g·(conditioned − null) `[A, 3, 64, 64]`, at the checkpoint's caption-less guidance g: a
        drift of the null counts as much as one of the conditioned output."""
        conditioned, null = output[:, :3].float().chunk(2)
        return null + self.models.config.sampling.decoder_guidance * (conditioned - null)


CAPTION_LAYERS = 2  # blocks of the caption encoder the decoder_caption stage adds to a decoder without one
TEMPLATE_WEIGHT = 10.0  # the term is small (most pixels agree, and most timesteps): about 7e-4 against 8e-3
HINT_WEIGHT = 1.0  # the hint starts near 1.4e-2 on the shipped decoder, above the diffusion loss


class CaptionDecoderStage(DecoderStage):
    """The decoder's caption path alone fine-tuned from `--init`: a caption encoder (`caption_layers`
    bidirectional blocks, added as the identity when the decoder has none), the token projection and its
    norm. The rest of the decoder is frozen, and a row without caption masks every caption token, so
    what the decoder draws without a caption (the text diff, variations, interpolation) stays exactly
    the `--init` decoder's; only captioned rows are trained (no caption dropout).

    The `--init` decoder draws two shapes far better from a template caption than from the same facts
    in other words (held-out phrasings, 64 px: 46 % against 27 %, whichever caption the prior read;
    README, "What people type"). So besides the diffusion loss on a grammar caption, the output for it
    is held to the frozen `--init` decoder's output for a template caption of the same facts
    (`shapes.write_caption`), at the same x_t, t and z_i: a dense target that says what the words mean.
    A denser one still, the hint: what each attention block hands on, held to the same decoder's for the
    template (over that feature's variance; `HINT_WEIGHT`). Measured (README, "What people type"): the
    diffusion loss alone moved nothing in 2,500 steps, nor did the output target in 5,000; with the hint
    (`--lr 1e-3`, 5,000 steps) trained pairs in the grammar went 15 → 35 % and held-out ones stayed
    within noise: not shipped.

    Half the rows drop z_i, so the caption has to carry the picture there (beside the true z_i of its
    picture a caption adds little).
    """

    name = "decoder_caption"
    component = "decoder"
    image_dropout, text_dropout = 0.5, 0.0

    def setup(self, reference: UnCLIPModels | None) -> None:
        self.teacher = frozen_decoder(reference, self.name, self.device)
        if self.models.decoder.caption_encoder is None:
            add_caption_encoder(self.models, CAPTION_LAYERS)

    def parameters(self) -> list[torch.nn.Parameter]:
        decoder = self.models.decoder
        path = (decoder.caption_encoder, decoder.text_proj, decoder.text_norm)
        return [p for module in path for p in module.parameters()]

    @torch.no_grad()
    def make_batch(self, size: int, rng: random.Random) -> Batch:
        batch = super().make_batch(size, rng)
        templates = self.encoded([shapes.write_caption(spec, rng) for spec in batch["specs"]])
        return {**batch, **{f"template_{name}": value for name, value in templates.items()}}

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, noise, inputs, inpaint = self.noised(batch, generator)
        x_t, t, image_embeds, _, _ = inputs
        with attention_outputs(self.models.decoder) as features:
            output = self.models.decoder(*inputs, **inpaint)
        loss, parts = diffusion_loss(self.schedule, output, x0, x_t, t, noise)
        with torch.no_grad(), attention_outputs(self.teacher) as targets:
            target = self.teacher(
                x_t, t, image_embeds, batch["template_text_states"], batch["template_text_mask"], **inpaint
            )
        template = (output[:, :3].float() - target[:, :3].float()).pow(2).mean(dim=(1, 2, 3))  # [B]
        hint = torch.stack([feature_distance(f, g) for f, g in zip(features, targets, strict=True)]).mean(0)
        loss = loss + TEMPLATE_WEIGHT * template + HINT_WEIGHT * hint
        return loss, {**parts, "template": template.detach(), "hint": hint.detach()}


@contextlib.contextmanager
def attention_outputs(decoder: DecoderUNet) -> Iterator[list[torch.Tensor]]:
    """Collects what each attention block of `decoder` hands on `[B, C, H, W]`, in call order, while the
    `with` block runs; the hooks are gone after it."""
    outputs: list[torch.Tensor] = []
    blocks = [module for module in decoder.modules() if isinstance(module, AttentionBlock)]
    handles = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for block in blocks]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def feature_distance(feature: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row `[B]`: the mean square of feature − target `[B, C, H, W]`, over the target's variance."""
    feature, target = feature.float(), target.float()
    return (feature - target).pow(2).mean(dim=(1, 2, 3)) / target.var().detach().clamp(min=1e-8)


def add_caption_encoder(models: UnCLIPModels, layers: int) -> None:
    """Give `models.decoder` a new (identity) caption encoder, in place: the config and the weights."""
    config = dataclasses.replace(models.config.decoder, caption_layers=layers)
    old = models.decoder
    grown = DecoderUNet(config).to(next(old.parameters()).device)
    missing, unexpected = grown.load_state_dict(old.state_dict(), strict=False)
    if unexpected or not all(key.startswith("caption_encoder.") for key in missing):
        raise ValueError(f"cannot grow this decoder: missing {missing}, unexpected {unexpected}")
    models.config.decoder, models.decoder = config, grown.eval()
