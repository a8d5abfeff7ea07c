"""Webhooks: each tenant's signing secret, and every delivery of a job event with each of its attempts.

A delivery's id is the `webhook-id` header: it is fixed when the event happens and stays the same on every
retry, and so does the body (`payload`), so a receiver can deduplicate. `attempts` counts the attempts
claimed so far; a sender claims attempt n with a conditional UPDATE from n - 1, so two copies of the same
message never send twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, UTCDateTime, new_id, utcnow

WebhookEvent = Literal["started", "checkpoint", "succeeded", "failed", "cancelled"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


class WebhookSecret(Base):
    """The secret a tenant's deliveries are signed with (`whsec_` + base64 of 32 random bytes).

    Stored in clear: the sender needs it to compute the HMAC. After a rotation the previous secret also
    signs deliveries until `previous_expires_at`, so receivers can switch without missing one."""

    __tablename__ = "webhook_secrets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event sent to one URL; `payload` is the exact body, the same on every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_job_id_id", "job_id", "id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2100))
    event: Mapped[str] = mapped_column(String(20))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    # When the next attempt is due (pending), or when a claimed attempt's lease runs out.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class WebhookAttempt(Base):
    """One POST of a delivery: the receiver's status code, or why there was none."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    number: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[float]
    response_status: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
