"""Stage 1: CLIP, both towers, contrastive (Radford et al. 2021) on 64 px pictures and fresh captions.

A caption such as "a red circle" is true of many pictures of a batch; those pairs are positives too
(`data.positives`), instead of being pushed apart as false negatives.
"""

from __future__ import annotations

import math
import random

import torch

from models.tokenizer import Tokenizer
from models.train import data
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
            "ids": encode_captions(self.models.tokenizer, texts, self.device),
            "images": data.to_model_range(pictures[index].to(self.device)),
            "positives": data.positives(
                data.scene_facts(chosen).to(self.device), data.spec_facts(specs).to(self.device)
            ),
        }

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.models.clip(batch["ids"], batch["images"])  # [B images, B texts]
        loss = contrastive_loss(logits, batch["positives"])
        hits = batch["positives"].gather(1, logits.argmax(1, keepdim=True)).float().mean()
        return loss, {"acc": hits.detach()}

    def after_step(self) -> None:
        with torch.no_grad():
            self.models.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
