"""The request-body limit (settings.max_body_bytes → 413), as ASGI middleware in front of everything.

A declared Content-Length over the limit is refused before a byte is read. Otherwise the body is read
here, counting as it streams (chunked uploads declare no length), and refused as soon as it passes the
limit; a body within the limit is handed to the app from memory. Buffering costs at most the limit per
request, which the limit exists to bound anyway.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.errors import OPENAI_PREFIXES, openai_error_response


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self.refuse(scope, receive, send, int(declared))
            return
        try:
            body = await self.read_body(receive)
        except BodyTooLarge:
            await self.refuse(scope, receive, send, None)
            return
        if body is None:
            return  # the client went away
        await self.app(scope, replay(body, receive), send)

    async def read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def refuse(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        what = f"{size} bytes, over" if size is not None else "over"
        message = f"the request body is {what} the limit of {self.max_body_bytes} bytes; send smaller images"
        if scope["path"].startswith(OPENAI_PREFIXES):
            response = openai_error_response(413, message, code="request_too_large")
        else:
            response = JSONResponse({"detail": message}, status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body once, then defers to the real one (disconnects)."""
    delivered = False

    async def receive_buffered() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_buffered
