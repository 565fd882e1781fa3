"""Weight-space blending of a fine-tuned checkpoint with the one it started from (WiSE-FT, Wortsman et al.
2022): `(1 - weight) * base + weight * tuned`, tensor by tensor, for the named components.

A fine-tune on new captions can lose what the start point did well off its training data: the decoder
fine-tuned on the caption grammar draws held-out phrasings better, but its text diff (slerp(z_i, z_d)
decoded without a caption) stops ending blue. Blending keeps part of each (README, "What people type").
Both checkpoints must share a config: a blend is only meaningful between weights of one starting point.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint


def blend_checkpoints(base: Path, tuned: Path, components: list[str], weight: float, out: Path) -> None:
    """Write `out`: `base` with each of `components` replaced by its blend with `tuned`'s."""
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if read_config(base) != read_config(tuned):
        raise CheckpointError(f"{base} and {tuned} have different configs: blend a fine-tune with its start")
    models, finetuned = load_checkpoint(base), load_checkpoint(tuned)
    for name in components:
        module, other = models.components().get(name), finetuned.components().get(name)
        if module is None or other is None:
            raise CheckpointError(f"no component {name!r} in both checkpoints")
        with torch.no_grad():
            for mine, theirs in zip(module.state_dict().values(), other.state_dict().values(), strict=True):
                if mine.is_floating_point():
                    mine.lerp_(theirs, weight)
    save_checkpoint(models, out)
