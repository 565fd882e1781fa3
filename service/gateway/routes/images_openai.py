"""OpenAI-compatible image endpoints (the dall-e-2 contract), synchronous: each submits a job through the
JobStore, waits for it (settings.sync_timeout_seconds) and answers `{"created", "data": [...]}`.

Sizes: 64x64, 256x256 and 1024x1024 are where the stack stops; 512x512 runs at 1024 and the gateway
downscales the result (Lanczos). Uploaded files are sniffed from their bytes; their declared content
type is ignored. In an edit, fully transparent (alpha 0) pixels of the mask, or of the image itself when
no mask is sent, are repainted.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import redis.exceptions
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError

from service.gateway import images
from service.gateway.auth import Caller
from service.gateway.deps import CallContext, IdempotencyKey
from service.gateway.errors import ApiError
from service.gateway.routes.submission import image_url, submit_body
from service.gateway.schemas import (
    GenerateRequest,
    InpaintRequest,
    OpenAIError,
    OpenAIGenerationRequest,
    OpenAIImage,
    OpenAIImagesResponse,
    OpenAISize,
    ResponseFormat,
    VariationRequest,
)
from service.gateway.store import Job, JobNotFound, JobStore
from service.jobs.codec import png_base64

router = APIRouter(prefix="/v1/images", tags=["openai"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIError, "description": "A bad parameter or an image that cannot be used."},
    401: {"model": OpenAIError, "description": "Missing or unknown API key."},
    413: {"model": OpenAIError, "description": "Request body over UNCLIP_MAX_BODY_BYTES."},
    429: {"model": OpenAIError, "description": "The queue is full; see the Retry-After header."},
    409: {"model": OpenAIError, "description": "The job was cancelled (x-should-retry: false)."},
    500: {"model": OpenAIError, "description": "The job failed (x-should-retry: false)."},
    503: {
        "model": OpenAIError,
        "description": "Redis was unreachable for longer than the wait. With x-should-retry: false, a job "
        "may exist (the message names it when known): poll it, or resend with an Idempotency-Key.",
    },
    504: {"model": OpenAIError, "description": "The job did not finish within UNCLIP_SYNC_TIMEOUT_SECONDS."},
    # Also keeps FastAPI from documenting its 422: validation errors are 400 here, as in OpenAI's API.
    "default": {"model": OpenAIError, "description": "Any other error, in the same shape."},
}
PIPELINE_SIZE = {"64x64": 64, "256x256": 256, "512x512": 1024, "1024x1024": 1024}
DELIVERED_SIZE = {"64x64": 64, "256x256": 256, "512x512": 512, "1024x1024": 1024}

ImageFile = Annotated[UploadFile, File(description="PNG or JPEG (sniffed from the bytes).")]
ImageCountForm = Annotated[int, Form(ge=1, description="At most UNCLIP_MAX_IMAGES_PER_JOB.")]
SizeForm = Annotated[OpenAISize, Form(description="512x512 is generated at 1024 and downscaled.")]
FormatForm = Annotated[ResponseFormat, Form()]
IgnoredForm = Annotated[str | None, Form(description="Accepted and ignored.")]


@router.post(
    "/generations",
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    summary="Create images from a prompt (OpenAI-compatible)",
    responses=ERRORS,
)
async def create_images(
    body: OpenAIGenerationRequest,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> OpenAIImagesResponse:
    request = validated(
        GenerateRequest, op="generate", prompt=body.prompt, n=body.n, size=PIPELINE_SIZE[body.size]
    )
    return await run_to_completion(caller, request, body.size, body.response_format, idempotency_key)


@router.post(
    "/edits",
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    summary="Repaint part of an image (OpenAI-compatible, multipart)",
    responses=ERRORS,
)
async def edit_image(
    image: ImageFile,
    prompt: Annotated[str, Form(min_length=1)],
    caller: Caller,
    # Not `UploadFile | None`: the spec would then offer a JSON null, which a multipart form cannot carry.
    mask: Annotated[UploadFile, File(description="Alpha-0 pixels mark the area to repaint.")] = None,  # type: ignore[assignment]
    n: ImageCountForm = 1,
    size: SizeForm = "1024x1024",
    response_format: FormatForm = "url",
    model: IgnoredForm = None,
    user: IgnoredForm = None,
    idempotency_key: IdempotencyKey = None,
) -> OpenAIImagesResponse:
    """Without a mask the image must have an alpha channel; its fully transparent pixels are repainted."""
    image_bytes = await uploaded_bytes(image, "image")
    mask_bytes = await uploaded_bytes(mask, "mask") if mask is not None else None
    max_pixels = caller.settings.max_image_pixels
    request = await images.off_loop(
        edit_request, image_bytes, mask_bytes, prompt, n, PIPELINE_SIZE[size], max_pixels
    )
    return await run_to_completion(caller, request, size, response_format, idempotency_key)


def edit_request(
    image_bytes: bytes, mask_bytes: bytes | None, prompt: str, n: int, size: int, max_pixels: int
) -> BaseModel:
    """The native inpaint body of an edit (decodes and checks the images: run it off the event loop)."""
    picture = images.open_image(image_bytes, "image", max_pixels)
    if mask_bytes is not None:
        mask_picture = images.open_image(mask_bytes, "mask", max_pixels)
        images.check_same_size(picture, mask_picture)
        repaint = alpha_repaint_mask(mask_picture, "mask")
    else:
        repaint = alpha_repaint_mask(picture, "image")
    return validated(
        InpaintRequest,
        op="inpaint",
        image=png_base64(images.as_rgb(picture)),
        mask=png_base64(repaint),
        prompt=prompt,
        n=n,
        size=size,
    )


@router.post(
    "/variations",
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    summary="Create variations of an image (OpenAI-compatible, multipart)",
    responses=ERRORS,
)
async def create_variations(
    image: ImageFile,
    caller: Caller,
    n: ImageCountForm = 1,
    size: SizeForm = "1024x1024",
    response_format: FormatForm = "url",
    model: IgnoredForm = None,
    user: IgnoredForm = None,
    idempotency_key: IdempotencyKey = None,
) -> OpenAIImagesResponse:
    image_bytes = await uploaded_bytes(image, "image")
    request = await images.off_loop(
        variation_request, image_bytes, n, PIPELINE_SIZE[size], caller.settings.max_image_pixels
    )
    return await run_to_completion(caller, request, size, response_format, idempotency_key)


def variation_request(image_bytes: bytes, n: int, size: int, max_pixels: int) -> BaseModel:
    """The native variation body (decodes and checks the image: run it off the event loop)."""
    picture = images.open_image(image_bytes, "image", max_pixels)
    return validated(
        VariationRequest, op="variation", image=png_base64(images.as_rgb(picture)), n=n, size=size
    )


def validated(model: type[BaseModel], **fields: Any) -> BaseModel:
    """A native job body built from OpenAI fields; its validation errors become a 400 naming the field."""
    try:
        return model(**fields)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


async def uploaded_bytes(upload: UploadFile, field: str) -> bytes:
    return await upload.read()


def alpha_repaint_mask(picture: Image.Image, field: str) -> Image.Image:
    if not images.has_alpha(picture):
        hint = (
            "send a PNG mask with an alpha channel"
            if field == "mask"
            else ("send a mask, or an RGBA PNG image whose transparent pixels mark the area to repaint")
        )
        raise ApiError(400, f"{field} has no alpha channel; {hint}", param=field, code="missing_alpha")
    repaint = images.repaint_mask_from_alpha(picture)
    images.check_something_to_repaint(repaint, field, "make the area to repaint fully transparent (alpha 0)")
    return repaint


async def run_to_completion(
    caller: CallContext,
    request: BaseModel,
    size: str,
    response_format: str,
    idempotency: str | None = None,
) -> OpenAIImagesResponse:
    """Submits, waits, answers. Redis outages within the sync timeout are ridden out: the submit is retried
    under one idempotency key (the client's, or one made here), so it makes one job at most, and once
    the job is queued every failure says `x-should-retry: false` and names the job."""
    store, owner, settings = caller.store, caller.owner, caller.settings
    deadline = asyncio.get_running_loop().time() + settings.sync_timeout_seconds
    key = idempotency or f"openai-request:{uuid.uuid4().hex}"
    try:
        job = await retrying(lambda: submit_body(store, request, owner, settings, key), deadline)
    except REDIS_DOWN:
        if idempotency:
            raise  # a 503 the client may retry: its key keeps the retry from making a second job
        raise ApiError(
            503,
            "the job queue (Redis) is unavailable and the job may or may not have been queued; send an "
            "Idempotency-Key header to make a retry safe",
            code="queue_unavailable",
            headers={"X-Should-Retry": "false"},
        ) from None
    try:
        job = await finished(store, job, owner, deadline, settings.sync_timeout_seconds)
        return await response_for(store, job, owner, caller.base_url, size, response_format, deadline)
    except REDIS_DOWN:
        raise ended_badly(
            503,
            f"the job queue (Redis) became unavailable while job {job.id} was under way; do not resubmit: "
            f"poll GET /v1/jobs/{job.id} for it",
            "queue_unavailable",
        ) from None


async def response_for(
    store: JobStore, job: Job, owner: str, base_url: str, size: str, response_format: str, deadline: float
) -> OpenAIImagesResponse:
    delivered = DELIVERED_SIZE[size]
    revised = job.revised_prompt  # one per job: every item drew it
    data = []
    for index in range(job.image_count):
        if response_format == "url":
            query = f"?size={delivered}" if delivered != PIPELINE_SIZE[size] else ""
            data.append(OpenAIImage(url=image_url(base_url, job.id, index) + query, revised_prompt=revised))
            continue
        png = await retrying(lambda index=index: store.image(job.id, index, owner), deadline)
        if png is None:
            raise ended_badly(
                500, f"image {index} of job {job.id} is missing from the store", "missing_image"
            )
        if delivered != PIPELINE_SIZE[size]:
            png = await images.off_loop(images.downscale, png, delivered)
        data.append(OpenAIImage(b64_json=base64.b64encode(png).decode("ascii"), revised_prompt=revised))
    return OpenAIImagesResponse(created=int(job.finished_at or time.time()), data=data, size=size)


REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
RETRY_FIRST_DELAY_SECONDS = 0.1
RETRY_MAX_DELAY_SECONDS = 2.0
T = TypeVar("T")


async def retrying(call: Callable[[], Awaitable[T]], deadline: float) -> T:
    """`call()`, again after a Redis outage (exponential backoff) until `deadline` (loop time), when the
    outage's error is raised."""
    loop = asyncio.get_running_loop()
    delay = RETRY_FIRST_DELAY_SECONDS
    while True:
        try:
            return await call()
        except REDIS_DOWN:
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_SECONDS)


async def finished(store: JobStore, job: Job, owner: str, deadline: float, timeout: float) -> Job:
    """The job once it succeeded; its failure, cancellation or the timeout as an API error. Those errors
    carry `x-should-retry: false`: the job has run (or is running) already, and the openai client would
    otherwise resubmit it on a 409 or 5xx."""
    loop = asyncio.get_running_loop()
    job_id = job.id
    try:
        job = await retrying(lambda: store.wait(job_id, owner, max(0.0, deadline - loop.time())), deadline)
    except TimeoutError:
        job = await retrying(lambda: store.get(job_id, owner), deadline) or job
    except JobNotFound:
        raise ended_badly(500, f"job {job_id} vanished from the queue before it ended", "job_lost") from None
    if job.status == "succeeded":
        return job
    if job.status == "failed":
        raise ended_badly(500, f"job {job_id} failed: {job.error or 'unknown error'}", "job_failed")
    if job.status == "cancelled":
        raise ended_badly(409, f"job {job_id} was cancelled", "job_cancelled")
    raise ended_badly(
        504,
        f"job {job_id} did not finish within {timeout:g} s (it is {job.status}); "
        f"poll GET /v1/jobs/{job_id} for it",
        "timeout",
    )


def ended_badly(status: int, message: str, code: str) -> ApiError:
    return ApiError(status, message, code=code, headers={"X-Should-Retry": "false"})
