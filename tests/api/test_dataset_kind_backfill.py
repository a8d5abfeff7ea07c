"""Datasets recorded before their kind was a column get it from their manifests once, when the API starts;
one whose manifest cannot be read keeps a null kind, as the API answered before."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.main import create_app
from api.services.dataset_kinds import backfill_dataset_kinds
from core.db import Database
from core.models import Dataset
from core.settings import Settings
from core.storage import Storage
from tests.support.archives import pairs_zip, targets_zip
from tests.support.factories import auth_headers, create_dataset, create_tenant
from tests.support.storage_backends import BOTH_STORAGE_BACKENDS

pytestmark = BOTH_STORAGE_BACKENDS
LOGGER = "api.services.dataset_kinds"


def _upload(client: TestClient, headers: dict[str, str], payload: bytes, kind: str) -> str:
    response = client.post(
        "/v1/datasets", files={"file": ("up.zip", payload)}, data={"kind": kind}, headers=headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _as_recorded_before_kinds(session: Session) -> None:
    """Rows as migration 0006 leaves them: no kind."""
    session.execute(update(Dataset).values(kind=None))
    session.commit()


def _kinds(session: Session) -> dict[str, str | None]:
    session.expire_all()
    return {d.id: d.kind for d in session.scalars(select(Dataset))}


def test_the_api_start_fills_in_the_kind_of_older_datasets_from_their_manifests(
    settings: Settings, database: Database, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = create_tenant(session)
    headers = auth_headers(session, tenant)
    with TestClient(create_app(settings)) as client:
        targets = _upload(client, headers, targets_zip(), "targets")
        pairs = _upload(client, headers, pairs_zip(), "pairs")
    lost = create_dataset(session, tenant_id=tenant.id).id  # a row whose files are not in storage
    _as_recorded_before_kinds(session)

    with caplog.at_level(logging.INFO, logger=LOGGER), TestClient(create_app(settings)) as client:
        listed = client.get("/v1/datasets", headers=headers).json()["data"]
    assert {d["id"]: d["kind"] for d in listed} == {targets: "targets", pairs: "pairs", lost: None}
    assert _kinds(session) == {targets: "targets", pairs: "pairs", lost: None}
    assert "recorded the kind of 2 datasets from their manifests; 1 unreadable" in caplog.text
    assert lost in caplog.text, "the unreadable dataset is named"


def test_the_backfill_goes_batch_by_batch_and_leaves_only_the_unreadable_for_a_later_start(
    settings: Settings, database: Database, session: Session, storage: Storage
) -> None:
    headers = auth_headers(session)
    with TestClient(create_app(settings)) as client:
        uploaded = [_upload(client, headers, pairs_zip(), "pairs") for _ in range(3)]
    lost = create_dataset(session).id
    _as_recorded_before_kinds(session)

    first = backfill_dataset_kinds(database, storage, batch_size=1)
    assert (sorted(first.recorded), first.unreadable) == (sorted(uploaded), [lost])
    assert _kinds(session) == {**dict.fromkeys(uploaded, "pairs"), lost: None}
    again = backfill_dataset_kinds(database, storage, batch_size=1)
    assert (again.recorded, again.unreadable) == ([], [lost]), "recorded kinds are not read again"


def test_a_start_with_nothing_to_fill_in_logs_nothing(
    settings: Settings, database: Database, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    headers = auth_headers(session)
    with TestClient(create_app(settings)) as client:
        _upload(client, headers, pairs_zip(), "pairs")
    with caplog.at_level(logging.INFO, logger=LOGGER), TestClient(create_app(settings)):
        pass
    assert [r.message for r in caplog.records if r.name == LOGGER] == []
