"""Webhook secrets, the delivery outbox and attempt claims on a real database and the embedded broker."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy.orm import Session

from core.db import Database, commit, rollback
from core.models import WebhookDelivery, utcnow
from core.queue import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, broker_transport_options, make_producer
from core.repositories import webhooks as webhook_repo
from core.settings import Settings
from core.webhooks import outbox
from tests.support.factories import create_job, create_tenant

HOOKS = [
    {"url": "https://a.example/hook", "events": ["started", "succeeded"]},
    {"url": "https://b.example/hook", "events": ["checkpoint"]},
]


@pytest.fixture
def broker(settings: Settings) -> Settings:
    """Settings whose embedded broker folders exist."""
    settings.ensure_dirs()
    return settings


def queued_deliveries(settings: Settings) -> list[list[Any]]:
    """Args of every delivery task waiting on the real embedded broker."""
    found = []
    with Connection(settings.broker_url, transport_options=broker_transport_options(settings)) as conn:
        queue = conn.SimpleQueue(WEBHOOK_QUEUE)
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return found
            assert message.headers["task"] == DELIVER_WEBHOOK_TASK
            found.append(json.loads(message.body)[0])
            message.ack()


def test_a_tenant_secret_is_created_once_and_then_stays(session: Session) -> None:
    tenant = create_tenant(session)
    first = webhook_repo.ensure_secret(session, tenant.id)
    session.commit()
    assert first.secret.startswith("whsec_")
    assert webhook_repo.ensure_secret(session, tenant.id).secret == first.secret


def test_after_a_rotation_both_secrets_sign_until_the_grace_period_ends(session: Session) -> None:
    tenant = create_tenant(session)
    old = webhook_repo.ensure_secret(session, tenant.id).secret
    row = webhook_repo.rotate_secret(session, tenant.id, grace=timedelta(hours=24))
    assert row.secret != old
    assert webhook_repo.signing_secrets(row, now=utcnow()) == [row.secret, old]
    assert webhook_repo.signing_secrets(row, now=utcnow() + timedelta(hours=25)) == [row.secret]


def test_an_event_makes_one_delivery_per_subscribed_hook_sent_only_after_commit(
    session: Session, broker: Settings
) -> None:
    settings = broker
    job = create_job(session, webhooks=HOOKS, metadata_={"run": "7"})
    session.commit()
    producer = make_producer(settings)
    ids = outbox.record_event(session, job.id, "started", producer=producer)
    assert len(ids) == 1
    assert queued_deliveries(settings) == [], "nothing is sent before the commit"
    commit(session)
    assert queued_deliveries(settings) == [[ids[0], 1]]
    delivery = session.get_one(WebhookDelivery, ids[0])
    assert (delivery.url, delivery.event, delivery.status) == ("https://a.example/hook", "started", "pending")
    body = json.loads(delivery.payload)
    assert body["type"] == "job.started"
    assert body["data"]["job_id"] == job.id and body["data"]["metadata"] == {"run": "7"}
    assert outbox.record_event(session, job.id, "failed", producer=producer) == [], "nobody asked for it"


def test_a_rolled_back_event_sends_nothing(session: Session, broker: Settings) -> None:
    settings = broker
    job = create_job(session, webhooks=HOOKS)
    session.commit()
    ids = outbox.record_event(session, job.id, "checkpoint", producer=make_producer(settings))
    rollback(session)
    assert queued_deliveries(settings) == []
    assert session.get(WebhookDelivery, ids[0]) is None


def test_each_attempt_is_claimed_once_and_in_order(session: Session, database: Database) -> None:
    job = create_job(session, webhooks=HOOKS)
    delivery = webhook_repo.add_delivery(
        session, job_id=job.id, url="https://a.example/", event="x", payload="{}"
    )
    session.commit()
    lease = utcnow() + timedelta(minutes=1)
    with database.session_scope() as s:
        assert not webhook_repo.claim_attempt(s, delivery.id, number=2, lease_until=lease)
        assert webhook_repo.claim_attempt(s, delivery.id, number=1, lease_until=lease)
    with database.session_scope() as s:
        assert not webhook_repo.claim_attempt(s, delivery.id, number=1, lease_until=lease), "a duplicate"


@pytest.mark.parametrize(("due_minutes_ago", "overdue"), [(10, True), (0, False)])
def test_pending_deliveries_due_long_ago_are_overdue(
    session: Session, due_minutes_ago: int, overdue: bool
) -> None:
    job = create_job(session)
    delivery = webhook_repo.add_delivery(
        session, job_id=job.id, url="https://a.example/", event="x", payload="{}"
    )
    delivery.next_attempt_at = utcnow() - timedelta(minutes=due_minutes_ago)
    session.commit()
    found = webhook_repo.overdue_deliveries(session, due_before=utcnow() - timedelta(minutes=2))
    assert found == ([(delivery.id, 0)] if overdue else [])
