"""The webhook sender against a real receiver on loopback and a real database: signatures, retries with
the same webhook-id, backoff, giving up, and re-sending deliveries whose message was lost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from kombu import Connection
from sqlalchemy.orm import Session

from core.db import Database
from core.models import WebhookAttempt, WebhookDelivery, utcnow
from core.queue import WEBHOOK_QUEUE, broker_transport_options, make_producer
from core.repositories import webhooks as webhook_repo
from core.repositories.webhooks import AttemptResult
from core.settings import Settings
from tests.support.factories import create_job
from tests.support.webhook_receiver import Receiver, running_receiver
from worker.webhooks.sender import decide, deliver, resend_overdue

PAYLOAD = json.dumps({"type": "job.succeeded", "data": {"job_id": "job_1"}})


@pytest.fixture
def sender_settings(settings: Settings) -> Settings:
    settings.ensure_dirs()
    return settings.model_copy(update={"webhook_backoff_seconds": 2.0, "webhook_max_attempts": 3})


def _delivery(session: Session, url: str) -> tuple[str, str]:
    """A committed pending delivery to `url`; returns its id and its tenant's secret."""
    job = create_job(session)
    secret = webhook_repo.ensure_secret(session, job.tenant_id).secret
    delivery = webhook_repo.add_delivery(session, job_id=job.id, url=url, event="succeeded", payload=PAYLOAD)
    session.commit()
    return delivery.id, secret


def _attempts(session: Session, delivery_id: str) -> list[WebhookAttempt]:
    session.expire_all()
    return webhook_repo.attempts_of(session, [delivery_id])[delivery_id]


@pytest.fixture
def failing_once() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver(fail_first=True)
    with running_receiver(receiver) as url:
        yield receiver, url


def test_a_500_is_recorded_and_the_retry_carries_the_same_id_and_body_freshly_signed(
    session: Session, database: Database, sender_settings: Settings, failing_once: tuple[Receiver, str]
) -> None:
    receiver, base = failing_once
    delivery_id, receiver.secret = _delivery(session, f"{base}/hook")
    first = deliver(database, sender_settings, delivery_id, 1)
    assert (first.status, first.retry_in) == ("retrying", 2.0)
    delivery = session.get_one(WebhookDelivery, delivery_id)
    assert delivery.status == "pending" and delivery.next_attempt_at is not None
    assert deliver(database, sender_settings, delivery_id, 2).status == "succeeded"
    requests = receiver.snapshot()
    assert [r.answered for r in requests] == [500, 204]
    assert all(r.signed for r in requests), "every attempt is signed with the tenant's secret"
    assert {r.msg_id for r in requests} == {delivery_id}
    assert requests[0].body == requests[1].body == PAYLOAD.encode()
    assert requests[0].headers["content-type"] == "application/json"
    attempts = _attempts(session, delivery_id)
    assert [(a.number, a.response_status) for a in attempts] == [(1, 500), (2, 204)]
    assert attempts[0].error == "answered HTTP 500" and attempts[1].error is None
    session.expire_all()
    delivered = session.get_one(WebhookDelivery, delivery_id)
    assert delivered.status == "succeeded" and delivered.finished_at is not None


def test_a_second_copy_of_the_same_attempt_sends_nothing(
    session: Session, database: Database, sender_settings: Settings, failing_once: tuple[Receiver, str]
) -> None:
    receiver, base = failing_once
    delivery_id, receiver.secret = _delivery(session, base)
    deliver(database, sender_settings, delivery_id, 1)
    assert deliver(database, sender_settings, delivery_id, 1).status == "skipped"
    assert len(receiver.snapshot()) == 1


def test_the_delivery_fails_for_good_after_the_last_attempt(
    session: Session, database: Database, sender_settings: Settings
) -> None:
    receiver = Receiver(always_fail=True, fail_status=302)
    with running_receiver(receiver) as base:
        delivery_id, receiver.secret = _delivery(session, base)
        outcomes = [deliver(database, sender_settings, delivery_id, n).status for n in (1, 2, 3)]
    assert outcomes == ["retrying", "retrying", "failed"]
    assert len(receiver.snapshot()) == 3
    assert "redirects are not followed" in (_attempts(session, delivery_id)[0].error or "")
    assert deliver(database, sender_settings, delivery_id, 4).status == "skipped"
    session.expire_all()
    assert session.get_one(WebhookDelivery, delivery_id).status == "failed"


def test_a_receiver_that_is_not_there_is_an_attempt_with_the_reason(
    session: Session, database: Database, sender_settings: Settings
) -> None:
    with running_receiver(Receiver()) as base:
        closed = base  # the port is free again once the receiver has stopped
    delivery_id, _ = _delivery(session, closed)
    assert deliver(database, sender_settings, delivery_id, 1).status == "retrying"
    [attempt] = _attempts(session, delivery_id)
    assert attempt.response_status is None and "ConnectError" in (attempt.error or "")


def test_the_wait_doubles_each_attempt_up_to_the_cap(sender_settings: Settings) -> None:
    settings = sender_settings.model_copy(
        update={
            "webhook_backoff_seconds": 10.0,
            "webhook_max_backoff_seconds": 60.0,
            "webhook_max_attempts": 6,
        }
    )
    now = utcnow()
    waits = [
        decide(AttemptResult(n, now, 1.0, response_status=503, error="answered HTTP 503"), settings).retry_in
        for n in range(1, 7)
    ]
    assert waits == [10.0, 20.0, 40.0, 60.0, 60.0, None]


def test_deliveries_whose_message_was_lost_are_sent_again(
    session: Session, database: Database, sender_settings: Settings
) -> None:
    delivery_id, _ = _delivery(session, "http://127.0.0.1:9/hook")
    session.get_one(WebhookDelivery, delivery_id).next_attempt_at = utcnow() - timedelta(minutes=10)
    session.commit()
    assert resend_overdue(database, make_producer(sender_settings), settings=sender_settings) == [delivery_id]
    transport = broker_transport_options(sender_settings)
    with Connection(sender_settings.broker_url, transport_options=transport) as conn:
        message = conn.SimpleQueue(WEBHOOK_QUEUE).get(timeout=2)
        assert json.loads(message.body)[0] == [delivery_id, 1]
        message.ack()
