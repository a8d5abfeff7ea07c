"""Retrying database writes that fail because the database is restarting or unreachable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

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
    unavailable; other errors, and the last transient one, propagate. 10 attempts wait about 2 min."""
    retrying = Retrying(
        retry=retry_if_exception_type(TRANSIENT_DATABASE_ERRORS),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=first_delay_seconds, max=max_delay_seconds),
        before_sleep=lambda state: _log_retry(state, what),
        reraise=True,
    )
    return retrying(action)


def _log_retry(state: RetryCallState, what: str) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "%s failed (%s, attempt %d); retrying in %.1f s",
        what,
        type(error).__name__,
        state.attempt_number,
        delay,
    )
