"""openapi.yaml at the repository root is the app's own document: equal to what a running gateway serves."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from service.gateway import openapi
from tests.service.gateway.gateway_fixtures import gateway_settings, live_gateway

CONTRACT = Path(__file__).resolve().parents[3] / "openapi.yaml"
REGENERATE = "python -m service.gateway.openapi"


def test_openapi_yaml_equals_what_the_gateway_serves(redis_url):
    # Settings that differ from the defaults: the document must not depend on them.
    settings = gateway_settings(redis_url, api_keys=["k"], max_body_bytes=1234, max_prompt_chars=7)
    with live_gateway(settings) as gateway:
        served = httpx.get(f"{gateway.url}/openapi.json", timeout=10).raise_for_status().json()
    assert yaml.safe_load(CONTRACT.read_text(encoding="utf-8")) == served, f"regenerate: {REGENERATE}"


def test_the_contract_has_the_shapes_design_5_promises():
    document = yaml.safe_load(CONTRACT.read_text(encoding="utf-8"))
    submit = document["paths"]["/v1/jobs"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "op"
    ops = {"generate", "variation", "interpolate", "text_diff", "inpaint"}
    assert set(body["discriminator"]["mapping"]) == ops
    assert {"202", "413", "422", "429"} <= set(submit["responses"])
    size = document["components"]["schemas"]["GenerateRequest"]["properties"]["size"]
    assert size["enum"] == [64, 256, 1024] and size["default"] == 1024
    openai_size = document["components"]["schemas"]["OpenAIGenerationRequest"]["properties"]["size"]
    assert openai_size["enum"] == ["64x64", "256x256", "512x512", "1024x1024"]
    for route in ("generations", "edits", "variations"):
        responses = document["paths"][f"/v1/images/{route}"]["post"]["responses"]
        assert "422" not in responses  # validation errors are OpenAI-style 400s there
    assert {"/healthz", "/readyz", "/metrics", "/v1/jobs/{job_id}/events"} <= set(document["paths"])


def test_check_flags_a_stale_file_and_writing_fixes_it(tmp_path):
    stale = tmp_path / "openapi.yaml"
    stale.write_text(CONTRACT.read_text(encoding="utf-8").replace("unclip-serve", "something else", 1))
    assert openapi.main(["--check", str(stale)]) == 1
    assert openapi.main([str(stale)]) == 0
    assert openapi.main(["--check", str(stale)]) == 0
    assert openapi.main(["--check", str(CONTRACT)]) == 0
