"""One error type for the whole API and the handlers that render it.

Routes under `/v1/images/` and `/v1/models` answer in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` (validation problems are 400 there, as OpenAI does); every
other route answers FastAPI's `{"detail": ...}`
(validation problems are 422 with pydantic's list of `{loc, msg, type}`, without echoing the input).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.gateway.images import ImageError

OPENAI_PREFIXES = ("/v1/images/", "/v1/models")
log = logging.getLogger("service.api")

OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "server_error",
    504: "server_error",
}


class ApiError(Exception):
    """An error with a status, a message that says what to fix, and for OpenAI clients `param`/`code`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def is_openai_route(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_PREFIXES)


def openai_error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": OPENAI_ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def clarified(error: Mapping[str, Any]) -> dict[str, Any]:
    """pydantic's error dict, with the messages that would puzzle a client (or show internals) rewritten."""
    error = dict(error)
    kind, msg = error.get("type", ""), str(error.get("msg", ""))
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        error["loc"] = ("body",)
        error["msg"] = f"the body is not valid JSON{f' ({reason})' if reason else ''}; send a JSON object"
    elif kind == "missing" and tuple(error.get("loc", ())) == ("body",):
        error["msg"] = "the body is empty; send a JSON object"
    elif kind == "model_attributes_type" and tuple(error.get("loc", ())) == ("body",):
        error["msg"] = "the body must be a JSON object (Content-Type: application/json)"
    elif "Expected UploadFile" in msg:
        field = str(error.get("loc", ("", "file"))[-1])
        error["msg"] = "must be sent as a file (a multipart part with a filename), not as a text field"
        error["loc"] = ("body", field)
    return error


def readable_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's error dicts without `input`, `ctx` and `url` (inputs may be megabytes of base64)."""
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
        for error in map(clarified, errors)
    ]


def describe_validation_error(error: Mapping[str, Any]) -> tuple[str, str | None]:
    """One validation error → ("field: message", field)."""
    fields = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    param = fields[-1] if fields else None
    where = ".".join(fields)
    return (f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", ""))), param


async def handle_api_error(request: Request, error: ApiError) -> JSONResponse:
    if is_openai_route(request):
        status = 400 if error.status == 422 else error.status
        return openai_error_response(status, error.message, error.param, error.code, error.headers)
    if error.status == 422 and error.param:
        detail: Any = [
            {"loc": ["body", error.param], "msg": error.message, "type": error.code or "value_error"}
        ]
    else:
        detail = error.message
    return JSONResponse({"detail": detail}, status_code=error.status, headers=error.headers)


async def handle_image_error(request: Request, error: ImageError) -> JSONResponse:
    return await handle_api_error(request, ApiError(422, str(error), param=error.field, code="invalid_image"))


async def handle_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = [clarified(each) for each in error.errors()]
    if is_openai_route(request):
        message, param = describe_validation_error(errors[0]) if errors else ("invalid request", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return openai_error_response(400, message, param, "invalid_value")
    return JSONResponse({"detail": readable_validation_errors(errors)}, status_code=422)


def allowed_methods(request: Request) -> str:
    """Every method the API documents at this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {method.upper() for method in operations}
    return ", ".join(sorted(methods))


# FastAPI's 400 for a body it cannot decode at all (JSON that is not UTF-8, a broken multipart form).
BODY_NOT_PARSED = "There was an error parsing the body"
UNREADABLE_BODY = {
    "type": "body_unreadable",
    "loc": ("body",),
    "msg": "the body could not be read: send a JSON object in UTF-8 (or a well-formed multipart form)",
}


async def handle_http_exception(request: Request, error: StarletteHTTPException) -> JSONResponse:
    if error.status_code == 400 and error.detail == BODY_NOT_PARSED:  # a validation error like the others
        return await handle_validation_error(request, RequestValidationError([UNREADABLE_BODY]))
    headers = dict(error.headers or {})
    if error.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    if is_openai_route(request):
        return openai_error_response(error.status_code, str(error.detail), headers=headers)
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=headers)


async def handle_redis_down(request: Request, error: redis.exceptions.RedisError) -> JSONResponse:
    log.error("redis error", extra={"error": repr(error), "path": request.url.path})
    message = (
        "the job queue (Redis) is unavailable; retry shortly (with an Idempotency-Key header, a retried "
        "submission cannot make a second job)"
    )
    return await handle_api_error(
        request, ApiError(503, message, code="queue_unavailable", headers={"Retry-After": "5"})
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(ImageError, handle_image_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(redis.exceptions.ConnectionError, handle_redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, handle_redis_down)
