"""The contract between the service and the models, torch-free so that the gateway can import it.

It holds what a job may ask for and what the pipeline reports back: the operations, `Sampling` (the
settings, their validation and defaults), `Progress` and its stage names, the operations' own defaults,
how many images a job makes, and `Pipeline`, the methods the worker calls (`models.pipeline.UnCLIPPipeline`
implements them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from PIL import Image

OPS = ("generate", "variation", "interpolate", "text_diff", "inpaint")
SEQUENCE_OPS = ("interpolate", "text_diff")  # one item = a sequence of `frames` images
INVERTING_OPS = ("variation", "interpolate", "text_diff")  # start from an image's DDIM-inverted noise
SIZES = (64, 256, 1024)
STAGES = ("prior", "invert", "decoder", "sr256", "sr1024")
LATENTS = ("slerp", "fixed")

DEFAULT_FRAMES = 5
DEFAULT_LATENT = "slerp"
DEFAULT_SOURCE_CAPTION = "a photo"
# DDIM eta of a variation. On the shapes model over 5 seeds × 4 variations: at 1, 19 of 20 keep colour and
# kind and 19 of 20 move or resize the shape; at 0.5, 20 keep it but only 13 change.
VARIATION_ETA = 1.0
# A mask pixel at least this bright (after conversion to grey) is repainted (white = repaint); a threshold,
# so that the faint noise of a JPEG-compressed or anti-aliased mask does not repaint the whole image.
MASK_THRESHOLD = 128
MAX_BEST_OF = 8
SCORE_KEY = "clip_score"  # Image.info key of a reranked image's CLIP cosine to its prompt
# Image.info key of the prompt the model drew instead of the one given, when the checkpoint's prompt reader
# rewrote it into the captions it draws best (what the OpenAI Images API returns as `revised_prompt`).
REVISED_PROMPT_KEY = "revised_prompt"


def revised_prompt(images: Sequence[Image.Image]) -> str | None:
    """The one prompt a job's images were drawn from instead of its own (the first any of them carries),
    or None: drawn as given."""
    prompts = (image.info.get(REVISED_PROMPT_KEY) for image in images)
    return next((prompt for prompt in prompts if prompt is not None), None)


def candidate_seed(seed: int, candidate: int) -> int:
    """The seed of candidate `candidate` of an item with `seed` under best_of: the item's own for the first
    (best_of 1 changes nothing), else one drawn from both, whatever else is in the batch."""
    return seed if candidate == 0 else (seed * 1_000_003 + candidate * 7_919) % 2**63


def image_count(op: str, params: dict[str, Any]) -> int:
    """Images a job makes (its `expected_images`): frames for the sequences, n for the others."""
    if op in SEQUENCE_OPS:
        return int(params.get("frames") or DEFAULT_FRAMES)
    return int(params.get("n") or 1)


def repaint_mask(mask: Image.Image) -> Image.Image:
    """A white-means-repaint mask → mode "L", 255 = repaint, 0 = keep (thresholded at MASK_THRESHOLD)."""
    return mask.convert("L").point(lambda value: 255 if value >= MASK_THRESHOLD else 0)


def _setting(default: Any, ops: tuple[str, ...], help: str = "") -> Any:
    """A Sampling field; `ops`: the operations whose jobs (API bodies, CLI commands) may set it."""
    return dataclasses.field(default=default, metadata={"ops": ops, "help": help})


@dataclass(frozen=True)
class Sampling:
    """How to sample; `size` is where sampling stops. A checkpoint's `unclip.json` holds its defaults
    (`UnCLIPConfig.sampling`); a job overrides some of them."""

    size: int = _setting(1024, OPS, "output side in pixels: 64 | 256 | 1024")
    prior_steps: int = _setting(25, OPS, "diffusion prior sampling steps")
    prior_guidance: float = _setting(4.0, OPS, "classifier-free guidance of the prior")
    decoder_steps: int = _setting(25, OPS, "64x64 decoder sampling steps")
    decoder_guidance: float = _setting(8.0, OPS, "classifier-free guidance of the decoder")
    # Generation only: the decoder guidance of the prior's z_i apart from the caption's, which keeps
    # decoder_guidance (`stages.decoder_denoiser`); None: decoder_guidance, plain classifier-free guidance.
    # The caption's tokens say which colour goes with which shape, which the bag of features in a sampled
    # z_i does not: on the shapes model, z_i at 3 beside the caption at 8 draws both shapes in their own
    # colours in 58 % of 228 two-shape prompts (64 px, `unclip evaluate --repeats 6 --seed 10`), plain
    # guidance at 8 in 54 %, and plain guidance at 3 or 4 is no better than at 8. Variation, interpolation
    # and text diffs decode a real image's z_i with no caption: they keep decoder_guidance (at 3 their
    # text diff ended blue in 2 of 5 seeds, at 8 in 4).
    decoder_image_guidance: float | None = _setting(
        None, ("generate",), "decoder guidance of the prior's z_i apart from the caption's"
    )
    # The decoder guidance of the DDIM inversion that variation, interpolate and text_diff start from.
    # 1 (none) inverts the conditional model's own ODE, which 25 steps follow closely; at the 8 that
    # generation wants, the guided field is too stiff to run backwards and x_T comes out saturated (on
    # the shapes model: 0 of 4 variations kept colour and kind, against 12 of 12 inverted unguided). Decoding
    # then guides at decoder_guidance; with both equal, eta 0 returns to the image itself.
    inversion_guidance: float = _setting(
        1.0, INVERTING_OPS, "decoder guidance of the DDIM inversion (default 1: none)"
    )
    # How far a text diff goes: its last frame decodes slerp(z_i, z_d, text_diff_strength). The paper
    # keeps it within [0.25, 0.5] (unCLIP §3.3), beyond which a photo stops looking like its source; the
    # shapes model needs 0.75 to turn a red circle blue (4 of 5 seeds, 2 of 5 at 0.5).
    text_diff_strength: float = _setting(
        0.5, ("text_diff",), "how far the last frame goes toward the prompt (default: the checkpoint's)"
    )
    # Generation only: candidates per image; the one whose CLIP image embedding is nearest the prompt's text
    # embedding is kept (DALL·E's reranking). Candidate k of item i uses candidate_seed(seed + i, k).
    best_of: int = _setting(1, ("generate",), "candidates per image; the one nearest the prompt is kept")
    # The upsamplers' steps are the checkpoint's: no job sets them.
    sr256_steps: int = _setting(7, ())
    sr1024_steps: int = _setting(7, ())

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size}")
        for name in ("prior_steps", "decoder_steps", "sr256_steps", "sr1024_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("prior_guidance", "decoder_guidance", "decoder_image_guidance", "inversion_guidance"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 1 <= self.best_of <= MAX_BEST_OF:
            raise ValueError(f"best_of must be in 1..{MAX_BEST_OF}, got {self.best_of}")
        if not 0 < self.text_diff_strength <= 1:
            raise ValueError(f"text_diff_strength must be in (0, 1], got {self.text_diff_strength}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def job_fields(cls, op: str | None = None) -> tuple[str, ...]:
        """The settings a job of `op` may set (None: of any op); the rest are the checkpoint's."""
        return tuple(f.name for f in fields(cls) if (op in f.metadata["ops"] if op else f.metadata["ops"]))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sampling:
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"Sampling: unknown field(s) {unknown}")
        return cls(**data)

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


class Pipeline(Protocol):
    """What the service calls on a pipeline (Contract B). Each list holds one entry per item; item i is
    made from its inputs and `seeds[i]` alone, whatever else is in the call (batch invariance)."""

    def sampling(self, **overrides: float | int | None) -> Sampling:
        """The checkpoint's default Sampling with `overrides` (None = keep); ValueError if it cannot run."""
        ...

    def truncated(self, prompts: list[str]) -> list[bool]: ...

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sampling: Sampling,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]: ...

    def variation(
        self,
        images: list[Image.Image],
        seeds: list[int],
        sampling: Sampling,
        eta: float = VARIATION_ETA,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]: ...

    def inpaint(
        self,
        images: list[Image.Image],
        masks: list[Image.Image],
        prompts: list[str],
        seeds: list[int],
        sampling: Sampling,
        progress: ProgressCallback | None = None,
    ) -> list[Image.Image]: ...

    def interpolate(
        self,
        images_a: list[Image.Image],
        images_b: list[Image.Image],
        seeds: list[int],
        sampling: Sampling,
        frames: int = DEFAULT_FRAMES,
        latent: str = DEFAULT_LATENT,
        progress: ProgressCallback | None = None,
    ) -> list[list[Image.Image]]: ...

    def text_diff(
        self,
        images: list[Image.Image],
        prompts: list[str],
        source_captions: list[str],
        seeds: list[int],
        sampling: Sampling,
        frames: int = DEFAULT_FRAMES,
        progress: ProgressCallback | None = None,
    ) -> list[list[Image.Image]]: ...
