"""The native, asynchronous API: submit a job, poll it, stream its events, fetch its images, cancel it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response
from fastapi.responses import StreamingResponse

from service.gateway import images
from service.gateway.auth import Caller
from service.gateway.deps import IdempotencyKey
from service.gateway.errors import ApiError
from service.gateway.routes.submission import job_view, owned_job
from service.gateway.routes.submit_route import SubmitRoute, queue_job
from service.gateway.schemas import JOB_REQUEST_EXAMPLES, ErrorDetail, JobListOut, JobOut, JobRequest
from service.gateway.store import Job, JobNotFound
from service.jobs.states import TERMINAL

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(description="The id from the job's `id` field.", max_length=128)]
UNAVAILABLE = {503: {"model": ErrorDetail, "description": "Redis is unreachable; retry (see Retry-After)."}}
ERRORS = {
    401: {"model": ErrorDetail, "description": "Missing or unknown API key."},
    404: {"model": ErrorDetail, "description": "No such job for this API key."},
    422: {"model": ErrorDetail, "description": "A path or query parameter out of range."},
    **UNAVAILABLE,
}
SSE_EXAMPLE = (
    'event: progress\ndata: {"id": "…", "status": "running", "progress": {"stage": "decoder", "step": 3, '
    '"total": 25}, …}\n\nevent: status\ndata: {"id": "…", "status": "succeeded", "images": ["…/images/0"], '
    "…}\n\n"
)


async def submit_job(
    body: Annotated[JobRequest, Body(openapi_examples=JOB_REQUEST_EXAMPLES)],
    caller: Caller,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Queue one of five operations, told apart by `op`. Images travel as base64 PNG/JPEG. Answers at
    once with the queued job and a `Location` header; poll it, or stream `/events`. With an
    `Idempotency-Key`, a retry of the same request answers the job the first one made."""
    view = await queue_job(caller, body, idempotency_key)
    response.headers["Location"] = view.url
    return view


# SubmitRoute answers a well-formed request without FastAPI's parameter solving (same checks, same answer).
router.add_api_route(
    "",
    submit_job,
    methods=["POST"],
    route_class_override=SubmitRoute,
    status_code=202,
    response_model=JobOut,
    summary="Submit a job",
    responses={
        401: ERRORS[401],
        413: {"model": ErrorDetail, "description": "Request body over UNCLIP_MAX_BODY_BYTES."},
        422: {
            "model": ErrorDetail,
            "description": "A body that is not a JSON object, a field out of range, an image that cannot be "
            "used, or an Idempotency-Key already used with another request.",
        },
        429: {"model": ErrorDetail, "description": "The queue is full; see the Retry-After header."},
        503: {
            "model": ErrorDetail,
            "description": "Redis is unreachable; retry with the same Idempotency-Key to be sure of one job.",
        },
    },
)


@router.get(
    "",
    response_model=JobListOut,
    summary="List your jobs",
    responses={
        401: ERRORS[401],
        404: {"model": ErrorDetail, "description": "`after` names no job of this API key (or it expired)."},
        422: {"model": ErrorDetail, "description": "`limit` or `after` out of range."},
        **UNAVAILABLE,
    },
)
async def list_jobs(
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    after: Annotated[
        str | None, Query(max_length=128, description="`next_after` of the previous page: the jobs after it.")
    ] = None,
) -> JobListOut:
    """The jobs of your API key, newest first, until they expire (UNCLIP_RESULT_TTL_SECONDS after they
    end). Other keys' jobs never show."""
    try:
        jobs, has_more = await caller.store.list(caller.owner, limit, after)
    except JobNotFound:
        raise ApiError(
            404,
            f"after: no job {after!r} in your list (it may have expired); start again without `after`",
            code="unknown_cursor",
        ) from None
    return JobListOut(
        data=[job_view(job, caller.base_url) for job in jobs],
        has_more=has_more,
        next_after=jobs[-1].id if jobs else None,
    )


@router.get("/{job_id}", response_model=JobOut, summary="Get a job", responses=ERRORS)
async def get_job(job_id: JobId, caller: Caller) -> JobOut:
    """Status, progress, error and warnings; `images` lists the URLs of the images stored so far."""
    return job_view(await owned_job(caller.store, job_id, caller.owner), caller.base_url)


@router.get(
    "/{job_id}/images/{index}",
    summary="Get one result image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The PNG."},
        **ERRORS,
        409: {"model": ErrorDetail, "description": "The job has not finished this image yet (Retry-After)."},
    },
)
async def get_image(
    job_id: JobId,
    index: Annotated[int, Path(ge=0, description="0-based, below the job's `expected_images`.")],
    caller: Caller,
    size: Annotated[int | None, Query(ge=1, le=1024, description="Downscale to this side (pixels).")] = None,
) -> Response:
    """The image as `image/png`. 404 when the job has no such image (or it expired); 409 while the job is
    still queued or running and the image is not stored yet."""
    job = await owned_job(caller.store, job_id, caller.owner)
    png = await caller.store.image(job_id, index, caller.owner)
    if png is None:
        raise missing_image(job, index)
    if size is not None:
        png = await images.off_loop(images.downscale, png, size, field="size")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


def missing_image(job: Job, index: int) -> ApiError:
    if job.status not in TERMINAL and index < job.expected_images:
        return ApiError(
            409,
            f"job {job.id} is {job.status}; image {index} is not ready yet. Poll the job or "
            "stream its /events",
            code="image_not_ready",
            headers={"Retry-After": "1"},
        )
    if index >= job.expected_images:
        return ApiError(
            404,
            f"job {job.id} makes {job.expected_images} images (indices 0 to "
            f"{job.expected_images - 1}); there is no image {index}",
            code="image_not_found",
        )
    return ApiError(
        404,
        f"job {job.id} is {job.status} and has no image {index}{': ' + job.error if job.error else ''}",
        code="image_not_found",
    )


@router.get(
    "/{job_id}/events",
    summary="Stream a job's progress (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"example": SSE_EXAMPLE}},
            "description": "`event: progress` per change, then one `event: status` with the final "
            "job; the stream then ends.",
        },
        **ERRORS,
    },
)
async def job_events(job_id: JobId, caller: Caller) -> StreamingResponse:
    """Every event's `data` is the job as `GET /v1/jobs/{id}` shows it. Non-final snapshots come as
    `progress` events, the final one as a `status` event, after which the server closes the stream."""
    await owned_job(caller.store, job_id, caller.owner)
    return StreamingResponse(
        sse_stream(caller.store.events(job_id, caller.owner), caller.base_url),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def sse_stream(jobs: AsyncIterator[Job], base_url: str) -> AsyncIterator[str]:
    number = 0
    async for job in jobs:
        number += 1
        event = "status" if job.status in TERMINAL else "progress"
        yield f"id: {number}\nevent: {event}\ndata: {job_view(job, base_url).model_dump_json()}\n\n"
        if event == "status":
            return


@router.delete("/{job_id}", response_model=JobOut, summary="Cancel a job", responses=ERRORS)
async def cancel_job(job_id: JobId, caller: Caller) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next sampling step (its status turns
    `cancelled` then). A finished job is returned unchanged."""
    job = await caller.store.cancel(job_id, caller.owner)
    if job is None:
        raise ApiError(
            404, f"no job {job_id!r} (it may have expired or belong to another API key)", code="job_not_found"
        )
    return job_view(job, caller.base_url)
