"""Standard Webhooks signatures (https://www.standardwebhooks.com): pure functions, no I/O.

A secret is `whsec_` + base64 of 32 random bytes; the HMAC key is those bytes. Each request carries
`webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`: space-separated `v1,<base64 of
HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one per secret in use (two during a rotation).

Kept by hand rather than calling the standardwebhooks package (measured with 1.1.0): its `Webhook`
decodes a secret without validating it (a corrupted `whsec_` secret silently becomes another, 31-byte
key), signs one secret per object, a `str` body and a `datetime`, and makes no secrets. What we sign is
checked against its verifier in tests/core/test_webhook_signing.py (a test-only dependency).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "mapo-service-webhooks/1"


def generate_secret() -> str:
    """A new random signing secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<signature>` of one message under one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(
    signing_secrets: Sequence[str], *, msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one attempt: the stable id, this attempt's timestamp, and a signature per secret."""
    signatures = " ".join(sign(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in signing_secrets)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }
