"""One tenant's slow uploads must not starve the others: a request body that stops arriving is answered
408 and closed (MAPO_REQUEST_READ_TIMEOUT_SECONDS), a tenant sends at most MAPO_MAX_CONCURRENT_UPLOADS at
once (429 beyond), and an upload waiting for its client holds no worker thread, so other tenants' requests
and /readyz are answered however many uploads wait. Each against a real uvicorn."""

from __future__ import annotations

import socket
from contextlib import ExitStack

import httpx
import pytest
from sqlalchemy.orm import Session

from api.main import create_app
from core.models import Tenant
from core.settings import Settings
from tests.support.factories import auth_headers, create_tenant
from tests.support.served_app import read_answer, send_head, served, wait_for

FORM = "multipart/form-data; boundary=xyz"
# More than anyio's default thread limiter (40 tokens), which every sync route and dependency shares.
STALLED_UPLOADS = 45


def stalled_upload(port: int, headers: dict[str, str], *, route: str = "datasets") -> socket.socket:
    """An upload whose client sent its head and a few bytes of a large body, then went quiet."""
    if route == "datasets":
        head = {**headers, "Content-Type": FORM, "Content-Length": "1000000"}
        return send_head(port, "POST", "/v1/datasets", head, b"--xyz\r\n")
    head = {**headers, "Content-Type": "application/json", "Content-Length": "1000"}
    return send_head(port, "POST", "/v1/jobs", head, b'{"dataset_id": ')


def tenant_of(session: Session) -> tuple[str, dict[str, str]]:
    tenant = create_tenant(session)
    return tenant.id, auth_headers(session, session.get_one(Tenant, tenant.id))


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_concurrent_uploads": 2, "request_read_timeout_seconds": 600})


def test_uploads_waiting_for_their_clients_leave_other_tenants_answered(
    settings: Settings, database: object, session: Session
) -> None:
    app = create_app(settings.model_copy(update={"max_concurrent_uploads": 100}))
    slow_id, slow = tenant_of(session)
    _, other = tenant_of(session)
    with served(app) as port, ExitStack() as stack:
        for _ in range(STALLED_UPLOADS):
            stack.callback(stalled_upload(port, slow).close)
        slots = app.state.context.upload_slots
        wait_for(lambda: slots.sending(slow_id) == STALLED_UPLOADS, "every stalled upload to reach its route")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/v1/datasets", headers=other).status_code == 200
            assert client.get("/readyz").status_code in (200, 503)  # answered, whatever the broker says


def test_a_tenant_past_its_concurrent_uploads_is_told_to_retry_and_others_are_not(
    app_settings: Settings, database: object, session: Session
) -> None:
    app = create_app(app_settings)
    slow_id, slow = tenant_of(session)
    _, other = tenant_of(session)
    bad_form = {"files": {"file": ("x.zip", b"not a zip")}}
    with served(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        first, second = stalled_upload(port, slow), stalled_upload(port, slow)
        slots = app.state.context.upload_slots
        wait_for(lambda: slots.sending(slow_id) == 2, "both uploads to hold their slots")

        refused = client.post("/v1/datasets", headers=slow, **bad_form)  # type: ignore[arg-type]
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_concurrent_uploads"
        assert int(refused.headers["Retry-After"]) > 0
        answered = client.post("/v1/datasets", headers=other, **bad_form)  # type: ignore[arg-type]
        assert answered.status_code == 422, answered.text

        first.close()  # the server sees the disconnect and frees the slot
        wait_for(lambda: slots.sending(slow_id) == 1, "the closed upload's slot to be freed")
        again = client.post("/v1/datasets", headers=slow, **bad_form)  # type: ignore[arg-type]
        assert again.status_code == 422, again.text
        second.close()


@pytest.mark.parametrize("route", ["datasets", "jobs"])
def test_a_request_body_that_stops_arriving_is_answered_408_and_closed(
    settings: Settings, database: object, session: Session, route: str
) -> None:
    app = create_app(settings.model_copy(update={"request_read_timeout_seconds": 0.5}))
    slow_id, slow = tenant_of(session)
    with served(app) as port:
        sock = stalled_upload(port, slow, route=route)
        answer = read_answer(sock)  # until the server closes the connection
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"request_timeout"' in body
        assert app.state.context.upload_slots.sending(slow_id) == 0
