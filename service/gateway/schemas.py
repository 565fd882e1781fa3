"""The HTTP shapes: the five native job bodies (one discriminated union on `op`), the job as the API shows
it, and the OpenAI image shapes.

Bounds that come from `Settings` (n ≤ max_images_per_job, frames ≤ max_frames, prompt length) cannot live
in a static schema; `limit_errors` checks them and the route turns them into the same 422 as pydantic's
own errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.contract import (
    DEFAULT_FRAMES,
    DEFAULT_LATENT,
    DEFAULT_SOURCE_CAPTION,
    LATENTS,
    MASK_THRESHOLD,
    MAX_BEST_OF,
    SIZES,
    VARIATION_ETA,
    image_count,
)
from service.jobs.states import JobStatus
from service.settings import Settings

Size = Literal[SIZES]
SEED_MAX = 2**53 - 1  # the largest integer every JSON client (and schema validator) keeps exact
IMAGE_FIELDS = ("image", "image_a", "image_b", "mask")

INTEGER_FIELDS = ("seed", "n", "frames", "prior_steps", "decoder_steps", "best_of")


def integral_floats_as_ints(data: Any) -> Any:
    """2.0 → 2 in the integer fields: JSON (and JSON Schema's `integer`) does not tell 2.0 from 2. Strict
    validation then refuses every other non-integer (true, "2", 2.5)."""
    if not isinstance(data, dict):
        return data

    def integral(name: str, value: Any) -> Any:
        whole = name in INTEGER_FIELDS and isinstance(value, float) and value.is_integer()
        return int(value) if whole else value

    return {name: integral(name, value) for name, value in data.items()}


Base64Image = Annotated[
    str,
    Field(
        min_length=1,
        description="A PNG or JPEG file, base64-encoded (a `data:image/png;base64,` prefix is allowed).",
    ),
]
Prompt = Annotated[str, Field(min_length=1, description="What to draw (at most UNCLIP_MAX_PROMPT_CHARS).")]
ImageCount = Annotated[int, Field(ge=1, description="Images to make (at most UNCLIP_MAX_IMAGES_PER_JOB).")]
FrameCount = Annotated[int, Field(ge=2, description="Frames from start to end (at most UNCLIP_MAX_FRAMES).")]


WebhookEvent = Literal["start", "progress", "completed"]


class SamplingParams(BaseModel):
    """Fields every job body shares: output size, seed and optional sampler overrides (null = default)."""

    # strict: a JSON false is no 0 and "2" no 2 (an integer still passes for a float)
    model_config = ConfigDict(extra="forbid", strict=True)
    _integral = model_validator(mode="before")(integral_floats_as_ints)

    size: Size = Field(1024, description="Output side in pixels; the stack stops at 64, 256 or 1024.")
    seed: int | None = Field(
        None,
        ge=0,
        le=SEED_MAX,
        description="Item i uses seed + i. Unset: one is drawn at submission and shown in the job's params.",
    )
    prior_steps: int | None = Field(None, ge=1, le=1000, description="Diffusion prior sampling steps.")
    decoder_steps: int | None = Field(None, ge=1, le=1000, description="64x64 decoder sampling steps.")
    prior_guidance: float | None = Field(None, ge=0, le=50, description="Classifier-free guidance, prior.")
    decoder_guidance: float | None = Field(
        None, ge=0, le=50, description="Classifier-free guidance, decoder."
    )
    webhook: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL that gets the job (as GET /v1/jobs/{id} shows it) on its events, signed "
        "per Standard Webhooks with UNCLIP_WEBHOOK_SECRET. Private, loopback and metadata addresses are "
        "refused unless UNCLIP_WEBHOOK_ALLOW_HOSTS lists the host; 422 when the server has no secret.",
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, max_length=3, description='Events to deliver; unset: ["completed"].'
    )


class InvertingParams(SamplingParams):
    """The operations that start from an image's DDIM-inverted noise: variation, interpolate, text_diff."""

    inversion_guidance: float | None = Field(
        None,
        ge=0,
        le=50,
        description="Classifier-free guidance of the DDIM inversion (default 1: none, the most faithful); "
        "equal to decoder_guidance, eta 0 returns to the image itself.",
    )


class GenerateRequest(SamplingParams):
    """Text → `n` images."""

    op: Literal["generate"]
    prompt: Prompt
    n: ImageCount = 1
    decoder_image_guidance: float | None = Field(
        None,
        ge=0,
        le=50,
        description="Decoder guidance of the prior's image embedding apart from the caption's, which "
        "keeps decoder_guidance. Unset: the checkpoint's default (3 for the shipped model; a checkpoint "
        "without one: decoder_guidance, plain classifier-free guidance).",
    )
    best_of: int | None = Field(
        None,
        ge=1,
        le=MAX_BEST_OF,
        description="Candidates made per image; the one whose CLIP image embedding is nearest the prompt's "
        "is kept, and the job's `scores` give each kept image's cosine similarity. Candidate k of image i "
        "has its own seed drawn from (seed + i, k), so an image does not depend on its batch. Unset: the "
        "checkpoint's default (4 for the shipped model, 1 for a checkpoint without one).",
    )


class VariationRequest(InvertingParams):
    """An image → `n` variations that keep its content and style."""

    op: Literal["variation"]
    image: Base64Image
    n: ImageCount = 1
    eta: float = Field(
        VARIATION_ETA,
        ge=0,
        le=1,
        description="0 stays closest to the image (returns to it when inversion_guidance equals "
        "decoder_guidance); larger varies more.",
    )


class InterpolateRequest(InvertingParams):
    """Two images → `frames` images blending from the first to the second."""

    op: Literal["interpolate"]
    image_a: Base64Image
    image_b: Base64Image
    frames: FrameCount = DEFAULT_FRAMES
    latent: Literal[LATENTS] = Field(
        DEFAULT_LATENT,
        description="slerp: between both images' inverted noise; fixed: one random noise for all.",
    )


class TextDiffRequest(InvertingParams):
    """An image → `frames` images moving it from `source_caption` toward `prompt`."""

    op: Literal["text_diff"]
    image: Base64Image
    prompt: Prompt
    source_caption: str = Field(DEFAULT_SOURCE_CAPTION, min_length=1, description="What the image shows now.")
    frames: FrameCount = DEFAULT_FRAMES
    text_diff_strength: float | None = Field(
        None,
        gt=0,
        le=1,
        description="How far the last frame goes toward the prompt (slerp fraction; the checkpoint's "
        "default when unset: 0.75 for the shipped model, 0.5 in the paper).",
    )


class InpaintRequest(SamplingParams):
    """An image and a mask → `n` images with the masked area repainted to match `prompt`."""

    op: Literal["inpaint"]
    image: Base64Image
    mask: Base64Image = Field(
        description=f"Same size as the image; white (≥ {MASK_THRESHOLD} after conversion to grey) = repaint, "
        "black = keep."
    )
    prompt: Prompt
    n: ImageCount = 1


JobBody = GenerateRequest | VariationRequest | InterpolateRequest | TextDiffRequest | InpaintRequest
JobRequest = Annotated[JobBody, Field(discriminator="op")]


def expected_images(body: JobBody) -> int:
    """How many images a job makes: n for generate/variation/inpaint, frames for the sequences."""
    return image_count(body.op, vars(body))


def limit_errors(body: BaseModel, settings: Settings) -> list[dict[str, Any]]:
    """Errors (pydantic's error-dict shape) for the bounds that come from `settings`."""
    errors: list[dict[str, Any]] = []

    def over(field: str, value: int, limit: int, what: str) -> None:
        if value > limit:
            errors.append(
                {
                    "type": "less_than_equal",
                    "loc": ("body", field),
                    "input": value,
                    "msg": f"{what} must be at most {limit}, got {value}",
                    "ctx": {"le": limit},
                }
            )

    values = vars(body)  # the fields this body type has (getattr of a missing one costs a raised error)
    for field in ("prompt", "source_caption"):
        text = values.get(field)
        if text is not None:
            over(field, len(text), settings.max_prompt_chars, f"{field} length in characters")
    if values.get("n") is not None:
        over("n", values["n"], settings.max_images_per_job, "n (images per job)")
    if values.get("frames") is not None:
        over("frames", values["frames"], settings.max_frames, "frames")
    return errors


# 1x1 red, and a 1x1 white mask (all of it repainted)
EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
EXAMPLE_MASK = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAsTj2FAAAAABJRU5ErkJggg=="
JOB_REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "generate": {
        "summary": "Text to images",
        "value": {"op": "generate", "prompt": "a red circle on a white background", "n": 2, "size": 256},
    },
    "variation": {
        "summary": "Variations of an image",
        "value": {"op": "variation", "image": EXAMPLE_PNG, "n": 2, "eta": 0.5, "size": 64},
    },
    "interpolate": {
        "summary": "Blend two images",
        "value": {"op": "interpolate", "image_a": EXAMPLE_PNG, "image_b": EXAMPLE_PNG, "frames": 5},
    },
    "text_diff": {
        "summary": "Move an image toward a caption",
        "value": {
            "op": "text_diff",
            "image": EXAMPLE_PNG,
            "prompt": "a watercolor painting",
            "source_caption": "a photo",
            "frames": 4,
        },
    },
    "inpaint": {
        "summary": "Repaint the white area of a mask",
        "value": {"op": "inpaint", "image": EXAMPLE_PNG, "mask": EXAMPLE_MASK, "prompt": "a blue square"},
    },
}


class JobProgressOut(BaseModel):
    stage: str = Field(description="prior | invert | decoder | sr256 | sr1024")
    step: int
    total: int


class JobOut(BaseModel):
    """A job as the API shows it. `params` is the submitted body minus `op` and minus the input images."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5f0c3c1e8a0b4f0e9d7f6a1b2c3d4e5f",
                    "op": "generate",
                    "status": "running",
                    "params": {"prompt": "a red circle", "n": 1, "size": 256, "seed": 1234},
                    "progress": {"stage": "decoder", "step": 12, "total": 25},
                    "error": None,
                    "warnings": [],
                    "cancel_requested": False,
                    "attempts": 1,
                    "created_at": 1764050000.0,
                    "started_at": 1764050001.2,
                    "finished_at": None,
                    "expected_images": 1,
                    "image_count": 0,
                    "images": [],
                    "url": "http://127.0.0.1:8000/v1/jobs/5f0c3c1e8a0b4f0e9d7f6a1b2c3d4e5f",
                    "events_url": "http://127.0.0.1:8000/v1/jobs/5f0c3c1e8a0b4f0e9d7f6a1b2c3d4e5f/events",
                }
            ]
        }
    )

    id: str
    op: str
    status: JobStatus
    params: dict[str, Any]
    progress: JobProgressOut | None = None
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    cancel_requested: bool = Field(
        False, description="DELETE was called on the running job; it turns `cancelled` at its next step."
    )
    attempts: int = 0
    created_at: float = Field(description="Unix time, seconds.")
    started_at: float | None = None
    finished_at: float | None = None
    expected_images: int
    image_count: int = Field(description="Images stored so far.")
    images: list[str] = Field(description="Absolute URLs of the stored images, in order.")
    scores: list[float] | None = Field(
        None, description="With best_of > 1: each image's CLIP cosine similarity to the prompt, in order."
    )
    revised_prompt: str | None = Field(
        None,
        description="The prompt the model drew: the given one rewritten into the caption wording the model "
        "reads best; null when it drew the prompt as given.",
    )
    url: str
    events_url: str


class JobListOut(BaseModel):
    """A page of the caller's jobs, newest first."""

    data: list[JobOut]
    has_more: bool = Field(description="More (older) jobs follow; ask again with `after=next_after`.")
    next_after: str | None = Field(description="The last job's id on this page (null when it is empty).")


class ErrorDetail(BaseModel):
    detail: str | list[dict[str, Any]]


# OpenAI image API (https://platform.openai.com/docs/api-reference/images, the dall-e-2 contract).

OpenAISize = Literal["64x64", "256x256", "512x512", "1024x1024"]
ResponseFormat = Literal["url", "b64_json"]


class OpenAIGenerationRequest(BaseModel):
    """OpenAI's `images.generate` body. Fields this server does not use (quality, style, …) are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a red circle on a white background",
                    "n": 1,
                    "size": "256x256",
                    "response_format": "url",
                },
            ]
        },
    )

    _integral = model_validator(mode="before")(integral_floats_as_ints)

    prompt: Prompt
    n: ImageCount = 1
    size: OpenAISize = Field(
        "1024x1024", description="512x512 is generated at 1024 and downscaled (Lanczos) by the gateway."
    )
    response_format: ResponseFormat = "url"
    model: str | None = Field(None, description="Accepted and ignored: one model is served.")
    user: str | None = Field(None, description="Accepted and ignored.")


class OpenAIImage(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = Field(
        None, description="The prompt the model drew, when it rewrote the given one; absent when it did not."
    )


class OpenAIImagesResponse(BaseModel):
    created: int = Field(description="Unix time, seconds.")
    data: list[OpenAIImage]
    output_format: Literal["png"] = "png"
    size: str


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody
