"""Stage 3: the 64 px decoder (unCLIP §2.2, GLIDE), conditioned on the frozen CLIP's image embedding and
caption tokens, with the GLIDE inpainting input so one decoder serves generation and inpainting.

Per row, independently: the image embedding is zeroed 10 % of the time and the caption dropped (all its
tokens masked) 50 % of the time, the guidance "null" of `DecoderUNet`; half the rows get a random known
region (`random_keep_masks`) as inpainting input, the others "nothing known" (mask 0).
"""

from __future__ import annotations

import random
from functools import cached_property

import torch

from models.train import data
from models.train.clip import encode_captions
from models.train.losses import TrainingSchedule, diffusion_loss
from models.train.stage import Batch, Stage, bernoulli, pick

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

    @cached_property
    def schedule(self) -> TrainingSchedule:
        return TrainingSchedule(self.models.config.decoder_diffusion, self.device)

    @torch.no_grad()
    def make_batch(self, size: int, rng: random.Random) -> Batch:
        scenes, pictures = self.data.pictures64
        index = pick(len(scenes), size, rng)
        texts, _ = data.captions([scenes[i] for i in index], rng)
        self.models.clip.eval()
        text = self.models.clip.encode_text(encode_captions(self.models.tokenizer, texts, self.device))
        return {
            "images": data.to_model_range(pictures[index].to(self.device)),
            "image_embeds": self.image_embeds[index],
            "text_states": text.states,
            "text_mask": text.mask,
        }

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        decoder = self.models.decoder
        x0 = batch["images"]  # [B, 3, 64, 64] in [-1, 1]
        b, device = x0.shape[0], self.device
        t = self.schedule.sample_t(b, generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        x_t = self.schedule.q_sample(x0, t, noise)
        keep_image = ~bernoulli(IMAGE_DROPOUT, b, generator, device)
        keep_text = ~bernoulli(TEXT_DROPOUT, b, generator, device)
        image_embeds = batch["image_embeds"] * keep_image[:, None]
        text_mask = batch["text_mask"] & keep_text[:, None]
        inpaint = {}
        if decoder.supports_inpainting:
            masks = random_keep_masks(b, x0.shape[-1], generator, device)
            masks = masks * bernoulli(INPAINT_FRACTION, b, generator, device)[:, None, None, None]
            inpaint = {"inpaint_image": x0, "inpaint_mask": masks}
        output = decoder(x_t, t, image_embeds, batch["text_states"], text_mask, **inpaint)
        return diffusion_loss(self.schedule, output, x0, x_t, t, noise)
