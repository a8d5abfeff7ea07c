"""Standard Webhooks signatures, checked against an HMAC computed here with the standard library and
against the reference verifier of the specification (the standardwebhooks package)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from core.webhooks.signing import generate_secret, secret_key, sign, webhook_headers

# A fixed key, so the expected signature is a fixed, independently computed value.
KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
MSG_ID, TIMESTAMP, BODY = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1_674_087_231, b'{"type":"job.succeeded"}'


def _expected(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_signature_is_hmac_sha256_of_id_timestamp_and_body_under_the_decoded_secret() -> None:
    signature = sign(SECRET, msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)
    assert signature == _expected(KEY, MSG_ID, TIMESTAMP, BODY)


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example published with the Standard Webhooks specification: any receiver library agrees.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_any_change_of_id_timestamp_or_body_changes_the_signature() -> None:
    base = sign(SECRET, msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)
    assert sign(SECRET, msg_id=MSG_ID + "x", timestamp=TIMESTAMP, body=BODY) != base
    assert sign(SECRET, msg_id=MSG_ID, timestamp=TIMESTAMP + 1, body=BODY) != base
    assert sign(SECRET, msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY + b" ") != base


def test_generated_secrets_are_32_random_bytes_in_the_whsec_format() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(secret_key(first)) == 32


def test_headers_carry_one_signature_per_secret_during_a_rotation() -> None:
    other_key = bytes(range(32, 64))
    other = "whsec_" + base64.b64encode(other_key).decode()
    headers = webhook_headers([SECRET, other], msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)
    assert headers["webhook-id"] == MSG_ID and headers["webhook-timestamp"] == str(TIMESTAMP)
    assert headers["webhook-signature"].split(" ") == [
        _expected(KEY, MSG_ID, TIMESTAMP, BODY),
        _expected(other_key, MSG_ID, TIMESTAMP, BODY),
    ]
    assert headers["content-type"] == "application/json"


def _readme_verifier() -> Callable[..., bool]:
    """The `verify_webhook` snippet of README.md, run as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    [snippet] = [b for b in blocks if "def verify_webhook(" in b]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    verifier: Callable[..., bool] = namespace["verify_webhook"]
    return verifier


def test_the_readme_snippet_verifies_what_the_service_signs() -> None:
    verify = _readme_verifier()
    now = int(time.time())
    headers = webhook_headers([SECRET], msg_id=MSG_ID, timestamp=now, body=BODY)
    assert verify(SECRET, headers, BODY)
    assert not verify(SECRET, headers, BODY + b" "), "a changed body"
    assert not verify(generate_secret(), headers, BODY), "another secret"
    stale = webhook_headers([SECRET], msg_id=MSG_ID, timestamp=now - 3600, body=BODY)
    assert not verify(SECRET, stale, BODY), "a replay an hour later"
    rotating = webhook_headers([generate_secret(), SECRET], msg_id=MSG_ID, timestamp=now, body=BODY)
    assert verify(SECRET, rotating, BODY), "the old secret still verifies during a rotation"


def test_the_reference_verifier_accepts_what_we_sign_under_each_secret_of_a_rotation() -> None:
    now = int(time.time())
    old, new = generate_secret(), SECRET
    headers = webhook_headers([new, old], msg_id=MSG_ID, timestamp=now, body=BODY)
    assert Webhook(new).verify(BODY, headers) == {"type": "job.succeeded"}
    assert Webhook(old).verify(BODY, headers) == {"type": "job.succeeded"}


def test_the_reference_verifier_rejects_a_tampered_body_another_secret_and_an_old_timestamp() -> None:
    now = int(time.time())
    headers = webhook_headers([SECRET], msg_id=MSG_ID, timestamp=now, body=BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(BODY.replace(b"succeeded", b"failed"), headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(generate_secret()).verify(BODY, headers)
    stale = webhook_headers([SECRET], msg_id=MSG_ID, timestamp=now - 600, body=BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(BODY, stale)


def test_a_corrupted_secret_is_refused_rather_than_signing_with_another_key() -> None:
    # The reason our key decoding stays: the reference package decodes this one to a 31-byte key.
    corrupted = SECRET[:10] + "!" + SECRET[11:]
    with pytest.raises(ValueError):
        sign(corrupted, msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY)
