"""Bearer API keys. With no keys configured the API is open and every caller is the owner "".
A job's owner is a stable hash of the key that made it, so keys never sit in Redis."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from service.gateway.deps import CallContext
from service.gateway.errors import ApiError

OPEN_OWNER = ""
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="unclip"'}


def owner_id(key: str) -> str:
    """The opaque owner id of an API key (Contract C `owner`)."""
    return "key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def is_known_key(key: str, keys: list[str]) -> bool:
    # compare_digest against every key: the time taken does not reveal which key (or prefix) matched.
    matches = [hmac.compare_digest(key.encode("utf-8"), known.encode("utf-8")) for known in keys]
    return any(matches)


class ApiKeyBearer(HTTPBearer):
    """The OpenAPI security scheme "HTTPBearer" and its check in one dependency: answers the call's context
    with the caller's owner id; 401 (with a Bearer challenge) for a missing or unknown key."""

    async def __call__(self, request: Request) -> CallContext:  # type: ignore[override]
        return CallContext(await self.owner(request), request)

    async def owner(self, request: Request) -> str:
        keys = request.app.state.settings.api_keys
        if not keys:
            return OPEN_OWNER
        credentials = await super().__call__(request)  # None when absent or not a Bearer (auto_error off)
        if credentials is None:
            raise ApiError(
                401,
                "missing API key: send the header `Authorization: Bearer <key>`",
                code="missing_api_key",
                headers=CHALLENGE,
            )
        if not is_known_key(credentials.credentials, keys):
            raise ApiError(
                401,
                "invalid API key",
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="unclip", error="invalid_token"'},
            )
        return owner_id(credentials.credentials)


bearer_scheme = ApiKeyBearer(
    scheme_name="HTTPBearer",  # the name the spec has always used (HTTPBearer's own default)
    auto_error=False,
    description="`Authorization: Bearer <key>`; required when the server has UNCLIP_API_KEYS set.",
)
Caller = Annotated[CallContext, Depends(bearer_scheme)]
