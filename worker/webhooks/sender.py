"""Send one attempt of a webhook delivery, record it, and say whether and when to try again.

An attempt is claimed in the database first (attempt n only once, whatever copies of the message exist),
posted outside any transaction, then recorded. Any 2xx answer delivers it; anything else (another
status, a redirect, a timeout, a refused connection) is retried after a wait that doubles each time, up
to `webhook_max_attempts`. The body and the webhook-id are the same on every attempt; the timestamp
and so the signature are this attempt's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import httpx
from celery import Celery

from core.db import Database
from core.models import utcnow
from core.queue import enqueue_webhook_delivery
from core.repositories import jobs as job_repo
from core.repositories import webhooks as webhook_repo
from core.repositories.webhooks import AttemptResult
from core.settings import Settings
from core.webhooks.signing import webhook_headers

log = logging.getLogger(__name__)
# Added to the receiver's timeout: how long a claimed attempt is protected from being re-sent.
LEASE_MARGIN_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended; `retry_in` (seconds) is set when another attempt is due."""

    status: Literal["skipped", "succeeded", "retrying", "failed"]
    retry_in: float | None = None


@dataclass(frozen=True)
class Message:
    url: str
    body: bytes
    secrets: list[str]


def deliver(db: Database, settings: Settings, delivery_id: str, number: int) -> Outcome:
    """Make attempt `number` of the delivery; "skipped" if it is not pending or that attempt was made."""
    message = _claim(db, settings, delivery_id, number)
    if message is None:
        return Outcome("skipped")
    result = post(message, msg_id=delivery_id, number=number, timeout=settings.webhook_timeout_seconds)
    outcome = decide(result, settings)
    next_at = utcnow() + timedelta(seconds=outcome.retry_in) if outcome.retry_in is not None else None
    with db.session_scope() as session:
        delivery = webhook_repo.get_delivery(session, delivery_id)
        if delivery is None:  # its job (or tenant) was deleted meanwhile
            return Outcome("skipped")
        status = "pending" if outcome.status == "retrying" else outcome.status
        webhook_repo.record_attempt(session, delivery, result, status=status, next_attempt_at=next_at)
    log.info("webhook %s attempt %d: %s", delivery_id, number, result.error or result.response_status)
    return outcome


def _claim(db: Database, settings: Settings, delivery_id: str, number: int) -> Message | None:
    lease = timedelta(seconds=settings.webhook_timeout_seconds + LEASE_MARGIN_S)
    with db.session_scope() as session:
        if not webhook_repo.claim_attempt(session, delivery_id, number=number, lease_until=utcnow() + lease):
            return None
        delivery = webhook_repo.get_delivery(session, delivery_id)
        assert delivery is not None
        job = job_repo.get_job_any_tenant(session, delivery.job_id)
        assert job is not None
        secret = webhook_repo.ensure_secret(session, job.tenant_id)
        signing = webhook_repo.signing_secrets(secret, now=utcnow())
        return Message(url=delivery.url, body=delivery.payload.encode(), secrets=signing)


def post(message: Message, *, msg_id: str, number: int, timeout: float) -> AttemptResult:
    """POST the signed body once; the answer's body is never read (nor stored, nor shown). `timeout`
    bounds the whole attempt, from connecting to the last byte of the answer's headers."""
    started_at, clock = utcnow(), time.monotonic()
    headers = webhook_headers(message.secrets, msg_id=msg_id, timestamp=int(time.time()), body=message.body)
    status: int | None = None
    error: str | None = None
    try:
        # httpx's timeouts bound each network operation, so a receiver dripping its answer one byte at a
        # time kept this thread for as long as it liked; a deadline on the whole attempt does not reset.
        status = asyncio.run(asyncio.wait_for(_post_once(message, headers, timeout), timeout))
    except (httpx.TimeoutException, TimeoutError):
        error = f"no answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    if status is not None and not 200 <= status < 300:
        error = f"answered HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    duration_ms = (time.monotonic() - clock) * 1000
    return AttemptResult(number, started_at, duration_ms, response_status=status, error=error)


async def _post_once(message: Message, headers: dict[str, str], timeout: float) -> int:
    """The answer's status, once its headers are in (the stream is closed unread)."""
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
        client.stream("POST", message.url, content=message.body, headers=headers) as response,
    ):
        return response.status_code


def decide(result: AttemptResult, settings: Settings) -> Outcome:
    """Delivered, retried after `backoff * 2**(n-1)` seconds (capped), or failed for good."""
    if result.error is None:
        return Outcome("succeeded")
    if result.number >= settings.webhook_max_attempts:
        return Outcome("failed")
    wait = settings.webhook_backoff_seconds * 2 ** (result.number - 1)
    return Outcome("retrying", retry_in=min(wait, settings.webhook_max_backoff_seconds))


def resend_overdue(db: Database, producer: Celery, *, settings: Settings) -> list[str]:
    """Send the next attempt of every pending delivery that is overdue by more than a lease: its message
    was lost (a broker restart, an enqueue that failed after the commit) or its sender died mid-attempt.
    A copy of a message that still exists is harmless: the claim lets one of them through."""
    grace = timedelta(seconds=settings.webhook_timeout_seconds + LEASE_MARGIN_S)
    with db.session_scope() as session:
        overdue = webhook_repo.overdue_deliveries(session, due_before=utcnow() - grace)
    for delivery_id, attempts in overdue:
        enqueue_webhook_delivery(producer, delivery_id, attempt=attempts + 1)
    if overdue:
        log.warning("re-sent %d overdue webhook deliveries", len(overdue))
    return [delivery_id for delivery_id, _ in overdue]
