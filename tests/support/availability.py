"""What a test does when a service it needs is missing: skip locally, fail in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

# Set by .ci/run: there, a server that cannot be reached is a failure, not a reason to skip.
REQUIRE_SERVICES_ENV = "MAPO_TEST_REQUIRE_SERVICES"


def unavailable(message: str) -> NoReturn:
    """Skip the test saying why, or fail it where the services are required (CI)."""
    if os.environ.get(REQUIRE_SERVICES_ENV):
        pytest.fail(f"{message} (and {REQUIRE_SERVICES_ENV} is set)")
    pytest.skip(message)
