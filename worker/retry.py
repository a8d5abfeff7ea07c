"""Retrying database writes that fail because the database is restarting or unreachable."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Connection refused or cut, server shutting down, a dead pooled connection: worth waiting out.
TRANSIENT_DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


def retry_transient(
    action: Callable[[], T],
    *,
    what: str,
    attempts: int = 10,
    first_delay_seconds: float = 0.5,
    max_delay_seconds: float = 30.0,
) -> T:
    """Run `action` (one whole transaction), again with exponential backoff while the database is
    unavailable; other errors, and the last transient one, propagate. 10 attempts wait about 2.5 min."""
    delay = first_delay_seconds
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except TRANSIENT_DATABASE_ERRORS as exc:
            if attempt == attempts:
                raise
            log.warning(
                "%s failed (%s, attempt %d); retrying in %.1f s", what, type(exc).__name__, attempt, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay_seconds)
    raise AssertionError("unreachable")
