"""Stage `reader`: the prompt reader (models/reader.py) on the caption grammar's training captions.

Every batch is fresh: trainable scenes, a random description of each (never held-out facts) and a training
caption of it (never a held-out structure), so the held-out sets of `unclip evaluate` test the reader as
they test the rest. Half the captions get one to three made-up words (random letters) inserted between
their words: the reader learns to pass over words it never saw, which is all that an unknown word can be
to it.

The loss: for each pointer (the background's colour, each shape's kind and colour) the negative log of the
probability on the words that name it (a kind can be named twice, "a red circle and a blue circle", or
once for both, "two circles"), or on NONE where the caption does not say; for each class (size,
position) the cross-entropy. A one-shape caption's second kind is NONE and its other facts are not
scored. For two shapes the better of the two slot orders is scored, so the reader chooses which shape it
names first.
"""

from __future__ import annotations

import random
import string

import torch
import torch.nn.functional as F

from models.checkpoint import UnCLIPModels
from models.config import ReaderConfig
from models.reader import CLASSES, NONE, PromptReader
from models.tokenizer import Tokenizer
from models.train import captions, shapes
from models.train.shapes import SceneSpec
from models.train.stage import Batch, Stage

NOISE_RATE = 0.5  # captions that get made-up words inserted
UNSCORED = -100  # F.cross_entropy's ignore_index


def reader_config(tokenizer: Tokenizer) -> ReaderConfig:
    """A reader of the shapes world for a checkpoint with this tokenizer."""
    return ReaderConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
        colours=tuple(shapes.COLOURS),
        kinds=shapes.KINDS,
        sizes=tuple(shapes.SIZES),
        positions=tuple(shapes.POSITIONS),
    )


def with_unknown_words(text: str, rng: random.Random) -> str:
    """`text` with 1–3 made-up words of 2–9 letters inserted between its words."""
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
        words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


def fact_targets(
    spec: SceneSpec, words: list[str | None], config: ReaderConfig
) -> dict[str, torch.Tensor] | None:
    """What the reader should say of a caption stating `spec`, whose positions name `words`:
    "background" `[1 + L]` and "kind", "colour" `[2, 1 + L]`, True on NONE or on every word naming the
    fact (all False: not scored); "size", "position" `[2]` class indices (UNSCORED: not scored). None when
    a stated fact has no word in the caption (cut off by the context)."""
    length = len(words)

    def pointer(word: str | None) -> torch.Tensor:
        target = torch.zeros(1 + length, dtype=torch.bool)
        if word is None:
            target[NONE] = True
        else:
            target[1:] = torch.tensor([w == word for w in words])
        return target

    def index(value: str | None, names: tuple[str, ...]) -> int:
        return NONE if value is None else names.index(value) + 1

    unscored = torch.zeros(1 + length, dtype=torch.bool)
    second = spec.shapes[1] if len(spec.shapes) == 2 else None
    targets = {
        "background": pointer(spec.background),
        "kind": torch.stack([pointer(spec.shapes[0].kind), pointer(None if second is None else second.kind)]),
        "colour": torch.stack(
            [pointer(spec.shapes[0].colour), unscored if second is None else pointer(second.colour)]
        ),
        "size": torch.tensor(
            [index(s.size, config.sizes) for s in spec.shapes] + [UNSCORED] * (second is None)
        ),
        "position": torch.tensor(
            [index(s.position, config.positions) for s in spec.shapes] + [UNSCORED] * (second is None)
        ),
    }
    stated = [targets["background"], *targets["kind"], *targets["colour"][: len(spec.shapes)]]
    return targets if all(t.any() for t in stated) else None


def _pointer_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−log P(target words) `[B]` from logits `[B, 1 + L]`; 0 where the target is all False."""
    scored = target.any(dim=-1)
    # An unscored row targets everything (loss 0, finite gradients) rather than nothing (−log 0).
    chosen = logits.masked_fill(~(target | ~scored[:, None]), float("-inf")).logsumexp(dim=-1)
    return (logits.logsumexp(dim=-1) - chosen) * scored


def reading_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-caption loss `[B]` (targets batched as `fact_targets`), the better slot order for two shapes."""
    background = _pointer_loss(logits["background"], targets["background"])

    def shape_loss(order: tuple[int, int]) -> torch.Tensor:
        total = torch.zeros_like(background)
        for slot, label in enumerate(order):
            for name in ("kind", "colour"):
                total = total + _pointer_loss(logits[name][:, slot], targets[name][:, label])
            for name in CLASSES:
                total = total + F.cross_entropy(
                    logits[name][:, slot], targets[name][:, label], ignore_index=UNSCORED, reduction="none"
                )
        return total

    kept, swapped = shape_loss((0, 1)), shape_loss((1, 0))
    two = targets["kind"][:, 1, NONE].logical_not()
    return background + torch.where(two, torch.minimum(kept, swapped), kept)


class ReaderStage(Stage):
    name = "reader"

    def setup(self, reference: UnCLIPModels | None) -> None:
        models = self.models
        if models.reader is None:  # a checkpoint without one gets a fresh reader
            config = reader_config(models.tokenizer)
            models.config.reader = config
            models.reader = PromptReader(config).to(self.device)

    def make_batch(self, size: int, rng: random.Random) -> Batch:
        reader, rows = self.models.reader, []
        while len(rows) < size:
            spec = shapes.training_description(shapes.training_scene(rng), rng)
            text = captions.training_caption(spec, rng)
            text = with_unknown_words(text, rng) if rng.random() < NOISE_RATE else text
            encoded = reader.encode(self.models.tokenizer, [text])
            targets = fact_targets(spec, encoded.words[0], reader.config)
            if targets is not None:
                rows.append((encoded.ids[0], targets))
        batch = {name: torch.stack([t[name] for _, t in rows]).to(self.device) for name in rows[0][1]}
        return {"ids": torch.stack([ids for ids, _ in rows]).to(self.device), "targets": batch}

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return reading_loss(self.models.reader(batch["ids"]), batch["targets"]), {}
