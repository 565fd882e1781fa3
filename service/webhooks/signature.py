"""Standard Webhooks signatures (https://www.standardwebhooks.com, spec/standard-webhooks.md, v1.0.0).

A delivery carries three headers:
- `webhook-id`: the delivery's id, the same on every retry (receivers use it as an idempotency key);
- `webhook-timestamp`: integer Unix seconds of this attempt;
- `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.

The secret is serialized as `whsec_<base64>` (24 to 64 random bytes, per the spec's table). `verify` is
what a receiver runs; the service uses it in its tests, and users can read it as a reference.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
HEADER_NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")
DEFAULT_TOLERANCE_SECONDS = 300  # a receiver refuses timestamps further than this from its clock (replay)


class WebhookSecretError(ValueError):
    """A secret not in the `whsec_<base64>` form."""


class WebhookVerificationError(ValueError):
    """A delivery whose headers are missing, stale, or signed with another secret."""


def parse_secret(text: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret."""
    if not text.startswith(SECRET_PREFIX):
        raise WebhookSecretError(f"a webhook secret starts with {SECRET_PREFIX!r} followed by base64")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except binascii.Error:
        raise WebhookSecretError(f"the part after {SECRET_PREFIX!r} is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise WebhookSecretError(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes, this one "
            f"{len(key)}; make one with: python -c \"import base64, secrets; "
            f"print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
        )
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 signature>` of one attempt."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raises WebhookVerificationError unless one `v1` signature in `headers` matches `body`.

    `headers` may use any letter case (HTTP header names are case-insensitive)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in HEADER_NAMES if name not in lowered]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    try:
        timestamp = int(lowered["webhook-timestamp"])
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:+.0f} s off, "
            f"beyond the {tolerance_seconds:g} s tolerance"
        )
    expected = sign(key, lowered["webhook-id"], timestamp, body).encode()
    # Compare against every candidate (constant time each), so which one matched does not leak either.
    matched = False
    for candidate in lowered["webhook-signature"].split(" "):
        if candidate.startswith("v1,"):
            matched |= hmac.compare_digest(candidate.encode(), expected)
    if not matched:
        raise WebhookVerificationError("no v1 signature matches the body")
