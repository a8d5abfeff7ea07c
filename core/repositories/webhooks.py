"""Webhook secrets of tenants, and deliveries with their attempts.

An attempt is claimed before it is sent (a conditional UPDATE of `attempts` from n - 1 to n) and
recorded after, in two short transactions: no transaction stays open while a receiver answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.models import WebhookAttempt, WebhookDelivery, WebhookSecret, utcnow
from core.repositories.pagination import Page, paginate
from core.webhooks.signing import generate_secret


def get_secret(session: Session, tenant_id: str) -> WebhookSecret | None:
    return session.get(WebhookSecret, tenant_id)


def ensure_secret(session: Session, tenant_id: str) -> WebhookSecret:
    """The tenant's secret, created on first use (two racing creators end with the same one)."""
    found = get_secret(session, tenant_id)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            created = WebhookSecret(tenant_id=tenant_id, secret=generate_secret())
            session.add(created)
        return created
    except IntegrityError:
        winner = get_secret(session, tenant_id)
        if winner is None:
            raise
        return winner


def rotate_secret(session: Session, tenant_id: str, *, grace: timedelta) -> WebhookSecret:
    """A new secret; the one it replaces still signs (beside it) for `grace`."""
    row = ensure_secret(session, tenant_id)
    now = utcnow()
    row.previous_secret, row.previous_expires_at = row.secret, now + grace
    row.secret, row.created_at = generate_secret(), now
    session.flush()
    return row


def signing_secrets(row: WebhookSecret, *, now: datetime) -> list[str]:
    """The secrets a delivery made at `now` is signed with: the current one, and the previous one
    while its grace period lasts."""
    previous = row.previous_secret
    if previous is not None and row.previous_expires_at is not None and now < row.previous_expires_at:
        return [row.secret, previous]
    return [row.secret]


def add_delivery(session: Session, *, job_id: str, url: str, event: str, payload: str) -> WebhookDelivery:
    """A pending delivery, due now."""
    delivery = WebhookDelivery(job_id=job_id, url=url, event=event, payload=payload, next_attempt_at=utcnow())
    session.add(delivery)
    session.flush()
    return delivery


def get_delivery(session: Session, delivery_id: str) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def claim_attempt(session: Session, delivery_id: str, *, number: int, lease_until: datetime) -> bool:
    """Take attempt `number` of a pending delivery; False if it is not pending or that attempt was
    already taken (a duplicate message). Until `lease_until` no one re-sends it."""
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.attempts == number - 1,
        )
        .values(attempts=number, next_attempt_at=lease_until)
    )
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    assert isinstance(result, CursorResult)
    session.expire_all()
    return result.rowcount == 1


@dataclass(frozen=True)
class AttemptResult:
    """What one POST came to: the receiver's status code, or why there was none."""

    number: int
    started_at: datetime
    duration_ms: float
    response_status: int | None
    error: str | None


def record_attempt(
    session: Session,
    delivery: WebhookDelivery,
    result: AttemptResult,
    *,
    status: str,
    next_attempt_at: datetime | None,
) -> None:
    """Store an attempt and what it leaves the delivery as: succeeded, failed for good, or pending
    until `next_attempt_at`."""
    session.add(WebhookAttempt(delivery_id=delivery.id, **asdict(result)))
    delivery.status, delivery.next_attempt_at = status, next_attempt_at
    if status != "pending":
        delivery.finished_at = utcnow()
    session.flush()


def list_deliveries(session: Session, job_id: str, *, after: str | None, limit: int) -> Page[WebhookDelivery]:
    """A job's deliveries, oldest first."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return paginate(session, stmt, key=WebhookDelivery.id, after=after, limit=limit, newest_first=False)


def attempts_of(session: Session, delivery_ids: Sequence[str]) -> dict[str, list[WebhookAttempt]]:
    """{delivery id: its attempts in order} for the given deliveries."""
    found: dict[str, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return found
    stmt = select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(delivery_ids))
    for attempt in session.scalars(stmt.order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)):
        found[attempt.delivery_id].append(attempt)
    return found


def overdue_deliveries(session: Session, *, due_before: datetime, limit: int = 1000) -> list[tuple[str, int]]:
    """(id, attempts so far) of pending deliveries that were due before `due_before`, oldest first:
    their message was lost, or the process sending them died."""
    stmt = select(WebhookDelivery.id, WebhookDelivery.attempts).where(
        WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at < due_before
    )
    rows = session.execute(stmt.order_by(WebhookDelivery.next_attempt_at).limit(limit))
    return [(delivery_id, attempts) for delivery_id, attempts in rows]
