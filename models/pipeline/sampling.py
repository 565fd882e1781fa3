"""What a caller chooses about sampling (`Sampling`) and what the pipeline reports back (`Progress`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from models.diffusion import StepCallback

SIZES = (64, 256, 1024)
STAGES = ("prior", "invert", "decoder", "sr256", "sr1024")


@dataclass(frozen=True)
class Sampling:
    """Same fields and defaults as `models.config.SamplingDefaults`; `size` is where sampling stops."""

    size: int = 1024  # 64 | 256 | 1024
    prior_steps: int = 25
    prior_guidance: float = 4.0
    decoder_steps: int = 25
    decoder_guidance: float = 8.0
    # Generation only: the decoder guidance of the prior's z_i apart from the caption's, which keeps
    # decoder_guidance (`stages.decoder_denoiser`); None: decoder_guidance, plain classifier-free guidance.
    # The caption's tokens say which colour goes with which shape, which the bag of features in a sampled
    # z_i does not: on the shapes model, z_i at 3 beside the caption at 8 draws both shapes in their own
    # colours in 58 % of 228 two-shape prompts (64 px, `unclip evaluate --repeats 6 --seed 10`), plain
    # guidance at 8 in 54 %, and plain guidance at 3 or 4 is no better than at 8. Variation, interpolation
    # and text diffs decode a real image's z_i with no caption: they keep decoder_guidance (at 3 their
    # text diff ended blue in 2 of 5 seeds, at 8 in 4).
    decoder_image_guidance: float | None = None
    # The decoder guidance of the DDIM inversion that variation, interpolate and text_diff start from.
    # 1 (none) inverts the conditional model's own ODE, which 25 steps follow closely; at the 8 that
    # generation wants, the guided field is too stiff to run backwards and x_T comes out saturated (on
    # the shapes model: 0 of 4 variations kept colour and kind, against 12 of 12 inverted unguided). Decoding
    # then guides at decoder_guidance; with both equal, eta 0 returns to the image itself.
    inversion_guidance: float = 1.0
    # How far a text diff goes: its last frame decodes slerp(z_i, z_d, text_diff_strength). The paper
    # keeps it within [0.25, 0.5] (unCLIP §3.3), beyond which a photo stops looking like its source; the
    # shapes model needs 0.75 to turn a red circle blue (4 of 5 seeds, 2 of 5 at 0.5).
    text_diff_strength: float = 0.5
    sr256_steps: int = 7
    sr1024_steps: int = 7

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size}")
        for name in ("prior_steps", "decoder_steps", "sr256_steps", "sr1024_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("prior_guidance", "decoder_guidance", "decoder_image_guidance", "inversion_guidance"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0 < self.text_diff_strength <= 1:
            raise ValueError(f"text_diff_strength must be in (0, 1], got {self.text_diff_strength}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def upsamplers(self) -> tuple[str, ...]:
        """The upsampling stages to run after the 64 px decoder to reach `size`."""
        return {64: (), 256: ("sr256",), 1024: ("sr256", "sr1024")}[self.size]


@dataclass(frozen=True)
class Progress:
    stage: str  # one of STAGES
    step: int  # 1..total
    total: int


# May raise any exception to stop sampling; the pipeline lets it through.
ProgressCallback = Callable[[Progress], None]


def stage_reporter(progress: ProgressCallback | None, stage: str) -> StepCallback | None:
    """The diffusion loop's `(done, total)` callback that reports `stage` to `progress`."""
    if progress is None:
        return None

    def on_step(done: int, total: int) -> None:
        progress(Progress(stage, done, total))

    return on_step
