"""The playground's routes (service/gateway/playground.py) through real uvicorn: the page and its assets,
their types and cache headers, open with keys on, never in the API's way; and the page's form agrees
with openapi.yaml on every field and bound."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.gateway import playground
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway

REPO = Path(__file__).resolve().parents[3]
CONTRACT = yaml.safe_load((REPO / "openapi.yaml").read_text(encoding="utf-8"))
STATIC = playground.STATIC_DIR
ASSET_TYPES = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


def versioned_links(page: str) -> dict[str, str]:
    """`/playground/NAME?v=VERSION` links of the page → {NAME: VERSION}."""
    return dict(re.findall(r'"/playground/([^"?]+)\?v=([0-9a-f]+)"', page))


def test_the_page_and_its_assets_come_with_their_types_and_cache_headers(redis_url: str) -> None:
    with live_gateway(gateway_settings(redis_url)) as gateway, httpx.Client(base_url=gateway.url) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"  # a new release shows at once
        assert page.headers["etag"]
        assert "default-src 'self'" in page.headers["content-security-policy"]  # the browser enforces it
        assert page.headers["x-content-type-options"] == "nosniff"

        links = versioned_links(page.text)
        assert set(links) == set(ASSET_TYPES)
        for name, version in links.items():
            asset = client.get(f"/playground/{name}", params={"v": version})
            assert asset.status_code == 200, name
            assert asset.headers["content-type"] == ASSET_TYPES[name]
            assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert asset.content == (STATIC / name).read_bytes()
            assert hashlib.sha256(asset.content).hexdigest().startswith(version)
            # Without the current version (an old page, a hand-typed URL) it must be revalidated.
            for params in ({}, {"v": "0" * 12}):
                other = client.get(f"/playground/{name}", params=params)
                assert (other.status_code, other.headers["cache-control"]) == (200, "no-cache")
                assert other.content == asset.content


def test_an_unchanged_page_or_asset_is_revalidated_with_304(redis_url: str) -> None:
    with live_gateway(gateway_settings(redis_url)) as gateway, httpx.Client(base_url=gateway.url) as client:
        for path in ("/", "/playground/app.js"):
            first = client.get(path)
            again = client.get(path, headers={"If-None-Match": first.headers["etag"]})
            assert (again.status_code, again.content) == (304, b"")
            assert again.headers["etag"] == first.headers["etag"]
            changed = client.get(path, headers={"If-None-Match": '"0123456789ab"'})
            assert changed.status_code == 200 and changed.content == first.content


def test_the_page_is_open_when_keys_are_on_and_the_api_is_not(redis_url: str) -> None:
    settings = gateway_settings(redis_url, api_keys=["secret"])
    with live_gateway(settings) as gateway, httpx.Client(base_url=gateway.url) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<form" in page.text
        for name, version in versioned_links(page.text).items():
            assert client.get(f"/playground/{name}", params={"v": version}).status_code == 200
        assert client.get("/v1/jobs/x").status_code == 401
        assert client.get("/v1/jobs/x", headers={"Authorization": "Bearer secret"}).status_code == 404


def test_only_the_shipped_files_are_served(redis_url: str) -> None:
    with live_gateway(gateway_settings(redis_url)) as gateway, httpx.Client(base_url=gateway.url) as client:
        for path in ("/playground/nope.js", "/playground/index.html", "/playground/",
                     "/playground/%2E%2E%2Fplayground.py", "/playground/..%2F..%2Fapp.py", "/index.html"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"] == "application/json"


def test_the_asset_version_follows_the_content(tmp_path: Path) -> None:
    for text in ("console.log(1);", "console.log(2);"):
        (tmp_path / "index.html").write_text('<script src="/playground/app.js"></script>')
        (tmp_path / "app.js").write_text(text)
        files = playground.load_files(tmp_path)
        expected = hashlib.sha256(text.encode()).hexdigest()[:12]
        assert files["app.js"].version == expected
        assert files["index.html"].body.decode() == f'<script src="/playground/app.js?v={expected}"></script>'


def test_every_api_path_still_reaches_its_api_route(redis_url: str) -> None:
    # The gateway's metrics label each request with the route template that answered it.
    with live_gateway(gateway_settings(redis_url)) as gateway, httpx.Client(base_url=gateway.url) as client:
        asked = [(method.upper(), template) for template, methods in CONTRACT["paths"].items()
                 for method in methods]
        for method, template in asked:
            client.request(method, re.sub(r"\{[^}]+\}", "1", template), timeout=10)
        client.get("/")
        client.get("/playground/app.js")
        metrics = client.get("/metrics").text
    answered = set(re.findall(r'_requests_total\{method="(\w+)",route="([^"]+)"', metrics))
    assert set(asked) <= answered
    assert {("GET", "/"), ("GET", "/playground/{name}")} <= answered  # what shadowing would look like
    assert not playground.ASSET_PREFIX.startswith("/v1/")
    assert not any(path == "/" or path.startswith(playground.ASSET_PREFIX) for path in CONTRACT["paths"])


def test_the_api_answers_as_before_beside_the_page(redis_url: str) -> None:
    with live_gateway(gateway_settings(redis_url)) as gateway, httpx.Client(base_url=gateway.url) as client:
        assert client.get("/v1/nothing-here").json() == {"detail": "Not Found"}
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.post("/", json={}).status_code == 405
        served = client.get("/openapi.json").json()
    assert "/" not in served["paths"] and not any(path.startswith("/playground") for path in served["paths"])


# The form, read the way app.js reads it: every control named like an API field sends that field; a
# wrapper's data-ops lists the operations it is shown for. Image fields are drop zones (data-slot), the
# inpaint mask is a canvas (data-field).


class FormFields(HTMLParser):
    VOID = frozenset({"input", "img", "br", "meta", "link", "hr", "source", "area", "base", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.scopes: list[list[str] | None] = []  # data-ops of every open element
        self.fields: list[dict[str, Any]] = []  # {name, tag, attrs, ops (sets, all must hold), options}

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        attrs = {key: value or "" for key, value in attributes}
        own = attrs["data-ops"].split() if "data-ops" in attrs else None
        name = attrs.get("name") or attrs.get("data-slot") or attrs.get("data-field")
        if name and tag in ("input", "textarea", "select", "div", "canvas"):
            scopes = [scope for scope in [*self.scopes, own] if scope is not None]
            self.fields.append({"name": name, "tag": tag, "attrs": attrs, "scopes": scopes, "options": []})
        if tag == "option" and self.fields and self.fields[-1]["tag"] == "select":
            self.fields[-1]["options"].append(attrs["value"])
        if tag not in self.VOID:
            self.scopes.append(own)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID:
            self.scopes.pop()

    def for_op(self, op: str) -> list[dict[str, Any]]:
        return [field for field in self.fields if all(op in scope for scope in field["scopes"])]


def page_fields() -> FormFields:
    parser = FormFields()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return parser


def job_schemas() -> dict[str, dict[str, Any]]:
    body = CONTRACT["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schemas = CONTRACT["components"]["schemas"]
    return {op: schemas[ref.rsplit("/", 1)[1]] for op, ref in body["discriminator"]["mapping"].items()}


def value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema without its `null` alternative (optional fields are anyOf [T, null])."""
    options = [option for option in prop.get("anyOf", [prop]) if option.get("type") != "null"]
    assert len(options) == 1, prop
    return {**options[0], **{key: value for key, value in prop.items() if key != "anyOf"}}


def test_the_form_sends_exactly_each_operations_fields() -> None:
    fields = page_fields()
    schemas = job_schemas()
    ops = [field["attrs"]["value"] for field in fields.fields if field["name"] == "op"]
    assert sorted(ops) == sorted(schemas)
    for op, schema in schemas.items():
        sent = {field["name"] for field in fields.for_op(op)} - {"op"}
        assert sent == set(schema["properties"]) - {"op"}, op


def test_the_forms_bounds_are_the_apis() -> None:
    fields = page_fields()
    checked = set()
    for op, schema in job_schemas().items():
        for field in fields.for_op(op):
            if field["name"] == "op":
                continue
            bound = value_schema(schema["properties"][field["name"]])
            attrs = field["attrs"]
            if attrs.get("type") == "number":
                assert_number_bounds(field["name"], attrs, bound)
                checked.add(field["name"])
            elif attrs.get("type") == "radio":  # size
                values = [int(f["attrs"]["value"]) for f in fields.for_op(op) if f["name"] == field["name"]]
                assert values == bound["enum"], field["name"]
            elif field["tag"] == "select":
                assert field["options"] == bound["enum"], field["name"]
    assert {"n", "frames", "seed", "prior_steps", "decoder_steps", "prior_guidance", "decoder_guidance",
            "decoder_image_guidance", "inversion_guidance", "eta", "text_diff_strength"} <= checked


def assert_number_bounds(name: str, attrs: dict[str, str], bound: dict[str, Any]) -> None:
    if "minimum" in bound:
        assert float(attrs["min"]) == bound["minimum"], name
    elif "exclusiveMinimum" in bound:  # HTML has no exclusive minimum: the smallest step above it
        low = bound["exclusiveMinimum"]
        assert low < float(attrs["min"]) <= low + float(attrs["step"]), name
    else:
        assert "min" not in attrs, name
    if "maximum" in bound:
        assert float(attrs["max"]) == bound["maximum"], name
    else:
        assert "max" not in attrs, name  # the server's own limit (settings) answers with a 422
    assert (attrs["step"] == "1") == (bound["type"] == "integer"), name
    if "value" in attrs:
        assert float(attrs["value"]) == bound["default"], name  # prefilled with the API's default
    if re.fullmatch(r"[0-9.]+", attrs.get("placeholder", "")):  # a shown default, e.g. eta's 1
        assert float(attrs["placeholder"]) == bound["default"], name


def test_a_wheel_ships_the_static_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"service/gateway/static/{name}" for name in ("index.html", *ASSET_TYPES)}
    assert {f"service/gateway/static/{path.name}" for path in STATIC.iterdir()} == shipped
    assert shipped <= names
