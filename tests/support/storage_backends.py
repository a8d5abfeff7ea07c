"""The storage backends a test runs on: local directories, or a prefix of its own in the SeaweedFS
bucket (tests marked BOTH_STORAGE_BACKENDS run once on each), and the settings that point at them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from core.settings import Settings

# A test (or module, as `pytestmark`) marked with this runs once on each storage backend (the
# `storage_backend` fixture of tests/conftest.py takes the parameter).
BOTH_STORAGE_BACKENDS = pytest.mark.parametrize(
    "storage_backend", ["local", pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)


def s3_settings(server: Any) -> dict[str, Any]:
    """Settings fields that point at a fresh prefix of the test server's bucket."""
    return {
        "storage_url": f"s3://{server.BUCKET}/t-{uuid.uuid4().hex[:12]}",
        "s3_endpoint_url": server.endpoint_url,
        "s3_access_key_id": server.ACCESS_KEY,
        "s3_secret_access_key": server.SECRET_KEY,
    }


def storage_env(settings: Settings) -> dict[str, str]:
    """The MAPO_* variables that give a subprocess (a worker, a served API) the same storage."""
    env = {"MAPO_STORAGE_URL": settings.storage_url}
    if settings.storage_url:
        secret = settings.s3_secret_access_key
        env |= {
            "MAPO_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
            "MAPO_S3_ACCESS_KEY_ID": settings.s3_access_key_id or "",
            "MAPO_S3_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else "",
        }
    return env
