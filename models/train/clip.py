"""Stage 1: CLIP, both towers, contrastive (Radford et al. 2021) on 64 px pictures and fresh captions.

A caption such as "a red circle" is true of many pictures of a batch; those pairs are positives too
(`data.positives`), instead of being pushed apart as false negatives.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from models.checkpoint import UnCLIPModels
from models.tokenizer import Tokenizer
from models.train import data, shapes
from models.train.losses import contrastive_loss
from models.train.stage import Batch, Stage, pick

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature so the logits cannot blow up


def encode_captions(
    tokenizer: Tokenizer, texts: list[str], device: torch.device, trim: bool = True
) -> torch.Tensor:
    """ids `[B, L]`; with `trim`, L ends at the batch's last end-of-text token. The text tower is causal and
    masks padding, so every real position's state is the same as with the full context."""
    ids, _ = tokenizer.encode(texts)
    if trim:
        ids = ids[:, : int(ids.argmax(-1).max()) + 1]
    return ids.to(device)


class CLIPStage(Stage):
    name = "clip"

    def make_batch(self, size: int, rng: random.Random) -> Batch:
        scenes, pictures = self.data.pictures64
        index = pick(len(scenes), size, rng)
        chosen = [scenes[i] for i in index]
        texts, specs = data.captions(chosen, rng)
        return {
            "index": index,
            "ids": encode_captions(self.models.tokenizer, texts, self.device),
            "images": data.to_model_range(pictures[index].to(self.device)),
            "positives": data.positives(
                data.scene_facts(chosen).to(self.device), data.spec_facts(specs).to(self.device)
            ),
        }

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return scored(self.models.clip(batch["ids"], batch["images"]), batch["positives"])

    def after_step(self) -> None:
        with torch.no_grad():
            self.models.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def scored(logits: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The contrastive loss of logits `[B images, B texts]`, and how often an image's best caption is true."""
    hits = positives.gather(1, logits.argmax(1, keepdim=True)).float().mean()
    return contrastive_loss(logits, positives), {"acc": hits.detach()}


class TextProjectionStage(CLIPStage):
    """CLIP's text projection alone, refitted to the caption grammar with both towers frozen.

    The shipped CLIP learnt its text tower on a few caption templates; on other phrasings its z_t often
    names the wrong picture. The towers' token states are what the prior and the decoder read, so they
    stay as they are, and only the last linear map (pooled end-of-text state → z_t) moves: the trained
    decoder stays valid, and z_t (the prior's input and its candidates' ranking) follows the grammar.
    A second loss keeps the z_t of template captions where the starting projection put them, so that
    differences of z_t (the text diff's direction) keep meaning what the decoder learnt.
    """

    name = "clip_projection"
    component = "clip"

    def setup(self, reference: UnCLIPModels | None) -> None:
        self.start = self.models.clip.text_projection.detach().clone()  # [W, E], where the refit starts

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.models.clip.text_projection]

    def make_batch(self, size: int, rng: random.Random) -> Batch:
        batch = super().make_batch(size, rng)
        scenes, _ = self.data.pictures64
        templates = [rng.choice(shapes.phrasings(shapes.describe(scenes[i], rng))) for i in batch["index"]]
        batch["template_ids"] = encode_captions(self.models.tokenizer, templates, self.device)
        return batch

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        clip = self.models.clip
        text = clip.encode_text(batch["ids"]).embeds.float()  # [B, E], unit
        images = self.image_embeds[batch["index"]]  # [B, E], unit: the frozen image tower's, once per pool
        loss, parts = scored(clip.logit_scale.detach().exp() * images @ text.t(), batch["positives"])
        with torch.no_grad():
            pooled = clip.text_tower(batch["template_ids"])[2].float()  # [B, W], the frozen tower's
        now = F.normalize(pooled @ clip.text_projection.float(), dim=-1)
        start = F.normalize(pooled @ self.start.float(), dim=-1)
        drift = 1 - (now * start).sum(-1).mean()  # cosine distance of template z_t from where it started
        return loss + TEMPLATE_WEIGHT * drift, {**parts, "drift": drift.detach()}


TEMPLATE_WEIGHT = 10.0  # the template z_t stay within a cosine of about 0.98 of their start
