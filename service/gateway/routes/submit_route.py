"""`POST /v1/jobs` without FastAPI's per-request parameter machinery for a request that passes every check.

FastAPI solves a route's parameters on every request: for this route the API-key dependency, the
Idempotency-Key header, the `Response` and the body through the five-way union, then it validates the
returned JobOut again before serialising it. That costs about as much CPU as queueing the job in Redis.
`SubmitRoute` runs the same checks itself, with the route's own FastAPI fields (the same pydantic
validators, so it accepts exactly what FastAPI accepts), and answers as the endpoint would. A request that
fails any of them goes to FastAPI's own handler, which answers it as it always has: the 4xx bodies, the
order of the checks (the key before the fields) and the OpenAPI document stay FastAPI's.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.gateway.auth import bearer_scheme
from service.gateway.deps import CallContext
from service.gateway.routes.submission import job_view, submit_body
from service.gateway.schemas import JobOut

Handler = Callable[[Request], Awaitable[Response]]


async def queue_job(caller: CallContext, body: Any, idempotency_key: str | None) -> JobOut:
    """What `POST /v1/jobs` does, on either path: queue the job (or find the key's), and show it."""
    job = await submit_body(caller.store, body, caller.owner, caller.settings, idempotency_key)
    return job_view(job, caller.base_url)


def is_json(content_type: str | None) -> bool:
    """Content types FastAPI parses as JSON for certain (it also takes application/*+json; those go to it)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def check_parameters(dependant: Dependant) -> None:
    """The quick path knows submit_job's parameters: a JSON body, the Idempotency-Key header, `Caller` and
    the `Response`. A parameter added later would be skipped by it without a word, so refuse to start."""
    known = (
        len(dependant.body_params) == 1
        and [field.alias for field in dependant.header_params] == ["Idempotency-Key"]
        and [sub.call for sub in dependant.dependencies] == [bearer_scheme]
        and not (dependant.path_params or dependant.query_params or dependant.cookie_params)
        and not (dependant.background_tasks_param_name or dependant.security_scopes_param_name)
    )
    if not known:
        raise TypeError(f"SubmitRoute does not know the parameters of {dependant.call}: teach its quick path")


class SubmitRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        fastapi_handler = super().get_route_handler()
        check_parameters(self.dependant)
        (body_field,) = self.dependant.body_params
        (key_field,) = self.dependant.header_params  # Idempotency-Key

        async def handler(request: Request) -> Response:
            raw = await request.body()  # cached on the request: FastAPI's handler reads it again for free
            if not raw or not is_json(request.headers.get("content-type")):
                return await fastapi_handler(request)
            try:
                document = json.loads(raw)
            except ValueError:
                return await fastapi_handler(request)
            caller = await bearer_scheme(request)  # FastAPI too checks the key before the fields
            key = request.headers.get(key_field.alias)
            if key is not None:
                key, errors = key_field.validate(key, {}, loc=("header", key_field.alias))
                if errors:
                    return await fastapi_handler(request)
            body, errors = body_field.validate(document, {}, loc=("body",))
            if errors:
                return await fastapi_handler(request)
            view = await queue_job(caller, body, key)
            # FastAPI's own answer: the response model as JSON, then the endpoint's headers
            content = view.model_dump_json().encode()
            response = Response(content, status_code=202, media_type="application/json")
            response.headers["Location"] = view.url
            return response

        return handler
