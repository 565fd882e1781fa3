"""From a validated request to a queued job, and from a job to what the API shows.

Shared by the native and the OpenAI-style routes: both build Contract C `params` (images checked and
re-encoded as base64 PNG, masks as mode "L" with 255 = repaint) and submit them through the JobStore,
which draws a seed when none was given.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel

from models.contract import repaint_mask
from service.gateway import images
from service.gateway.errors import ApiError
from service.gateway.schemas import (
    IMAGE_FIELDS,
    InpaintRequest,
    JobOut,
    JobProgressOut,
    expected_images,
    limit_errors,
)
from service.gateway.store import Backlogged, IdempotencyConflict, Job, JobStore
from service.jobs.codec import png_base64
from service.settings import Settings
from service.webhooks.address_guard import AddressGuard
from service.webhooks.subscription import WebhookRequestError, check_subscription

log = logging.getLogger("service.api")


def job_params(body: BaseModel, settings: Settings) -> dict[str, Any]:
    """Contract C params for a native job body: checked against the settings' limits, images normalised."""
    errors = limit_errors(body, settings)
    if errors:
        raise RequestValidationError(errors)
    params = body.model_dump(exclude={"op", "webhook", "webhook_events"})
    decoded: dict[str, Image.Image] = {}
    for field in IMAGE_FIELDS:
        if field in params and field != "mask":
            decoded[field] = images.read_request_image(params[field], field, settings.max_image_pixels)
            params[field] = png_base64(images.as_rgb(decoded[field]))
    if isinstance(body, InpaintRequest):
        mask = images.read_request_image(body.mask, "mask", settings.max_image_pixels)
        images.check_same_size(decoded["image"], mask)
        repaint = repaint_mask(mask)
        images.check_something_to_repaint(repaint, "mask", "white (255) pixels mark the area to repaint")
        params["mask"] = png_base64(repaint)
    return params


async def submit(
    store: JobStore,
    op: str,
    params: dict[str, Any],
    owner: str,
    expected: int,
    idempotency: str | None = None,
    webhook: dict[str, str] | None = None,
) -> Job:
    """Queues a job (or finds the one `idempotency` names); 422 when no live worker can run it (op or size)
    or the key was used with another request, 429 with Retry-After when the backlog is full."""
    refusal = await store.models.refusal(op, params.get("size"))
    if refusal is not None:
        message, field = refusal
        raise ApiError(422, message, param=field, code=f"unsupported_{field}")
    try:
        job = await store.submit(op, params, owner, expected, idempotency, webhook)
    except Backlogged as full:
        retry_after = max(1, int(full.retry_after))
        raise ApiError(
            429,
            f"the queue is full; retry in {retry_after} s",
            code="queue_full",
            headers={"Retry-After": str(retry_after)},
        ) from None
    except IdempotencyConflict as conflict:
        raise ApiError(
            422,
            f"this Idempotency-Key was used for job {conflict.job_id} with a different request; send the "
            "same request again, or use a new key for a new job",
            code="idempotency_key_reused",
        ) from None
    log.info("job submitted", extra={"job_id": job.id, "op": op, "expected_images": expected})
    return job


async def submit_body(
    store: JobStore,
    body: BaseModel,
    owner: str,
    settings: Settings,
    idempotency: str | None = None,
    guard: AddressGuard | None = None,
) -> Job:
    webhook = await webhook_fields(body, settings, guard)
    if carries_images(body):
        params = await images.off_loop(job_params, body, settings)  # decodes and re-encodes the images
    else:
        params = job_params(body, settings)  # microseconds: a thread hop would cost more than the work
    return await submit(store, body.op, params, owner, expected_images(body), idempotency, webhook)


def carries_images(body: BaseModel) -> bool:
    """Whether the body has an image field (set): only those bodies need decoding off the event loop."""
    values = vars(body)  # not getattr: on a pydantic model, a missing attribute costs a raised error
    return any(values.get(field) is not None for field in IMAGE_FIELDS)


async def webhook_fields(
    body: BaseModel, settings: Settings, guard: AddressGuard | None
) -> dict[str, str] | None:
    """The job-hash fields of the body's webhook, checked (422 saying why when refused); None without one."""
    url = vars(body).get("webhook")  # OpenAI bodies have no such field
    if url is None:
        return None
    try:
        return await check_subscription(
            url, body.webhook_events, settings.webhook_secret is not None,
            guard or AddressGuard(settings.webhook_allow_hosts),
        )
    except WebhookRequestError as error:
        raise ApiError(422, str(error), param="webhook", code="invalid_webhook") from None


async def owned_job(store: JobStore, job_id: str, owner: str) -> Job:
    """The caller's job, or 404 (also for another key's job: its existence is not revealed)."""
    job = await store.get(job_id, owner)
    if job is None:
        raise ApiError(
            404, f"no job {job_id!r} (it may have expired or belong to another API key)", code="job_not_found"
        )
    return job


def image_url(base_url: str, job_id: str, index: int) -> str:
    return f"{base_url}/v1/jobs/{job_id}/images/{index}"


def job_view(job: Job, base_url: str) -> JobOut:
    progress = job.progress
    return JobOut(
        id=job.id,
        op=job.op,
        status=job.status,
        params={key: value for key, value in job.params.items() if key not in IMAGE_FIELDS},
        progress=JobProgressOut(stage=progress.stage, step=progress.step, total=progress.total)
        if progress
        else None,
        error=job.error,
        warnings=list(job.warnings),
        cancel_requested=job.cancel_requested,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        expected_images=job.expected_images,
        image_count=job.image_count,
        images=[image_url(base_url, job.id, index) for index in range(job.image_count)],
        scores=job.scores,
        revised_prompt=job.revised_prompt,
        url=f"{base_url}/v1/jobs/{job.id}",
        events_url=f"{base_url}/v1/jobs/{job.id}/events",
    )
