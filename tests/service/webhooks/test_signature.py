"""Standard Webhooks signing, checked against the spec's published test vector."""

from __future__ import annotations

import base64

import pytest

from service.webhooks.signature import (
    WebhookSecretError,
    WebhookVerificationError,
    parse_secret,
    sign,
    signed_headers,
    verify,
)

# The test vector of the reference libraries: standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py (test_sign_function); the same values appear in the other
# libraries' tests (e.g. libraries/javascript/src/webhook.test.ts).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

KEY = parse_secret(VECTOR_SECRET)


def vector_headers(**overrides: str) -> dict[str, str]:
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
               "webhook-signature": VECTOR_SIGNATURE}
    headers.update(overrides)
    return headers


def test_sign_reproduces_the_published_vector() -> None:
    assert sign(KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert signed_headers(KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == vector_headers()


def test_verify_accepts_the_vector_within_tolerance_in_any_header_case() -> None:
    verify(KEY, vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP + 299)
    upper = {name.upper(): value for name, value in vector_headers().items()}
    verify(KEY, upper, VECTOR_BODY, now=VECTOR_TIMESTAMP - 299)


@pytest.mark.parametrize("now", [VECTOR_TIMESTAMP + 301, VECTOR_TIMESTAMP - 301])
def test_verify_refuses_a_timestamp_outside_the_tolerance(now: int) -> None:
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(KEY, vector_headers(), VECTOR_BODY, now=now)


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        (vector_headers(), b'{"test": 2432232315}', "no v1 signature"),  # body changed
        (vector_headers(**{"webhook-id": "msg_other"}), VECTOR_BODY, "no v1 signature"),
        (vector_headers(**{"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}),
         VECTOR_BODY, "no v1 signature"),
        (vector_headers(**{"webhook-signature": "v2," + VECTOR_SIGNATURE[3:]}), VECTOR_BODY, "no v1"),
        (vector_headers(**{"webhook-timestamp": "hello"}), VECTOR_BODY, "not an integer"),
        ({"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP)}, VECTOR_BODY, "missing"),
    ],
)
def test_verify_refuses_tampering(headers: dict[str, str], body: bytes, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message):
        verify(KEY, headers, body, now=VECTOR_TIMESTAMP)


def test_verify_accepts_one_good_signature_among_several() -> None:
    # Secret rotation: the header lists signatures by the old and the new key, space-separated.
    several = f"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,abc {VECTOR_SIGNATURE}"
    verify(KEY, vector_headers(**{"webhook-signature": several}), VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_verify_refuses_a_signature_by_another_key() -> None:
    other = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx")
    with pytest.raises(WebhookVerificationError):
        verify(other, vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 random bytes, this one 5"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "this one 65"),
    ],
)
def test_parse_secret_refuses_bad_forms(secret: str, message: str) -> None:
    with pytest.raises(WebhookSecretError, match=message):
        parse_secret(secret)
