"""Stage 2: the diffusion prior on (caption, CLIP image embedding) pairs (unCLIP §2.1).

Conditioning comes from the trained CLIP, frozen: the caption's text encoding over the full context
(the prior's positions depend on it) and the picture's image embedding, computed once per pool. The
prior predicts x0 of embeddings scaled by `embed_scale` (≈ √E); its text is dropped for 10 % of rows so
that classifier-free guidance has an unconditional model.
"""

from __future__ import annotations

import random
from functools import cached_property

import torch

from models.train import data
from models.train.clip import encode_captions
from models.train.losses import TrainingSchedule, diffusion_loss
from models.train.stage import Batch, Stage, bernoulli, pick

TEXT_DROPOUT = 0.1


class PriorStage(Stage):
    name = "prior"

    @cached_property
    def schedule(self) -> TrainingSchedule:
        return TrainingSchedule(self.models.config.prior_diffusion, self.device)

    @torch.no_grad()
    def make_batch(self, size: int, rng: random.Random) -> Batch:
        scenes, _ = self.data.pictures64
        index = pick(len(scenes), size, rng)
        texts, _ = data.captions([scenes[i] for i in index], rng)
        self.models.clip.eval()
        text = self.models.clip.encode_text(
            encode_captions(self.models.tokenizer, texts, self.device, trim=False)
        )
        return {"text": text, "image_embeds": self.image_embeds[index]}

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prior = self.models.prior
        x0 = batch["image_embeds"] * prior.embed_scale  # [B, E], entries of about unit variance
        batch_size = x0.shape[0]
        t = self.schedule.sample_t(batch_size, generator, self.device)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        x_t = self.schedule.q_sample(x0, t, noise)
        drop = bernoulli(TEXT_DROPOUT, batch_size, generator, self.device)
        predicted = prior(x_t, t, batch["text"], drop)
        loss, parts = diffusion_loss(self.schedule, predicted, x0, x_t, t, noise, min_snr_gamma=None)
        cosine = torch.nn.functional.cosine_similarity(predicted.float(), x0, dim=-1).mean()
        return loss, {**parts, "cos": cosine.detach()}
