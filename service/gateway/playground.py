"""The playground: `GET /` serves one static page that drives the API from the browser; its assets live
under `/playground/`, a prefix no API route uses. Torch-free, and open without an API key (the page asks
for the key and sends it with its own API calls).

Caching: the page itself is `no-cache` (always revalidated, 304 when its ETag still matches), so a new
release shows at once. It links its assets by content hash (`/playground/app.js?v=<hash>`); an asset
asked for with its current hash is `immutable` for a year, any other request for it is `no-cache`.
The files are read once, when the app is made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

STATIC_DIR = Path(__file__).parent / "static"
ASSET_PREFIX = "/playground/"
PAGE = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
# The page talks to its own origin only; images it shows are fetched blobs or data: URLs.
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str  # the first 12 hex digits of the body's sha256; also its ETag

    @classmethod
    def read(cls, path: Path) -> StaticFile:
        body = path.read_bytes()
        return cls(body, CONTENT_TYPES[path.suffix], hashlib.sha256(body).hexdigest()[:12])

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def load_files(directory: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every servable file of `directory` by name, the page's asset links rewritten to carry versions."""
    assets = {
        path.name: StaticFile.read(path)
        for path in sorted(directory.iterdir())
        if path.suffix in CONTENT_TYPES and path.name != PAGE
    }
    page = (directory / PAGE).read_text(encoding="utf-8")
    for name, asset in assets.items():
        page = page.replace(f'"{ASSET_PREFIX}{name}"', f'"{ASSET_PREFIX}{name}?v={asset.version}"')
    body = page.encode("utf-8")
    version = hashlib.sha256(body).hexdigest()[:12]
    return {PAGE: StaticFile(body, CONTENT_TYPES[".html"], version), **assets}


def serve(request: Request, file: StaticFile, cache_control: str, headers: dict[str, str]) -> Response:
    common = {"ETag": file.etag, "Cache-Control": cache_control, **headers}
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=common)
    return Response(file.body, media_type=file.content_type, headers=common)


def playground_router(directory: Path = STATIC_DIR) -> APIRouter:
    """`GET /` and `GET /playground/{name}`; kept out of the OpenAPI document (they are not the API)."""
    files = load_files(directory)
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page(request: Request) -> Response:
        return serve(request, files[PAGE], NO_CACHE, PAGE_SECURITY_HEADERS)

    @router.get(ASSET_PREFIX + "{name}")
    async def asset(request: Request, name: str, v: str | None = None) -> Response:
        file = files.get(name)
        if file is None or name == PAGE:
            return JSONResponse({"detail": f"no playground file {name!r}"}, status_code=404)
        cache_control = IMMUTABLE if v == file.version else NO_CACHE
        return serve(request, file, cache_control, {"X-Content-Type-Options": "nosniff"})

    return router
