"""The SSE stream of a job's events, as bytes on the wire: framing, keepalive comments, the end of the
stream, and a client that goes away while its job is still running."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from api.services import events as event_service
from core.db import Database
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.settings import Settings
from tests.support.factories import auth_headers, create_job, create_tenant

SSE = {"Accept": "text/event-stream"}


def running_job_with_events(session: Session, *types: str) -> tuple[str, dict[str, str]]:
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id, status="running")
    for event_type in types:
        event_repo.append_event(session, job.id, event_type, f"{event_type} message")
    session.commit()
    return job.id, auth_headers(session, tenant)


def test_each_event_is_framed_with_its_id_type_and_compact_json_on_lf_lines(
    client: TestClient, session: Session
) -> None:
    job_id, headers = running_job_with_events(session, "queued", "step")
    job_repo.finish_job(session, job_id, status="succeeded")
    session.commit()
    logged = client.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["data"]

    response = client.get(f"/v1/jobs/{job_id}/events", headers={**headers, **SSE})

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.text == "".join(
        f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n" for e in logged
    )


def test_a_silent_running_job_sends_keepalive_comments_until_it_finishes(
    client: TestClient, session: Session, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_service, "KEEPALIVE_SECONDS", 0.1)
    job_id, headers = running_job_with_events(session, "queued")
    lines: list[str] = []
    # The job ends only once two keepalives have come, however slow the machine: the stream must keep
    # sending them while nothing happens, and then deliver the end and close.
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={**headers, **SSE}) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == ": keepalive" and lines.count(line) == 2:
                with database.session_scope() as s:
                    event_repo.append_event(s, job_id, "succeeded")
                    job_repo.finish_job(s, job_id, status="succeeded")

    keepalives = [n for n, line in enumerate(lines) if line == ": keepalive"]
    first_event, last_event = lines.index("event: queued"), lines.index("event: succeeded")
    assert len([n for n in keepalives if first_event < n < last_event]) >= 2, lines
    assert all(lines[n + 1] == "" for n in keepalives), "each comment ends with a blank line"


def test_a_last_event_id_that_is_not_an_event_id_is_a_422(client: TestClient, session: Session) -> None:
    job_id, headers = running_job_with_events(session, "queued")
    for bad in ("abc", "-1", "1.5"):
        response = client.get(f"/v1/jobs/{job_id}/events", headers={**headers, **SSE, "Last-Event-ID": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid_request"


def http_scope(path: str, headers: dict[str, str], *, spec_version: str) -> dict[str, Any]:
    """An HTTP request as an ASGI server hands it to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def stream_until_the_client_leaves(app: Any, scope: dict[str, Any]) -> list[bytes]:
    """Read the response until its first event arrives, then disconnect; returns once the app does."""
    left = asyncio.Event()
    received: list[bytes] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            received.append(message["body"])
            left.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return received


# uvicorn says 2.3 today. Under 2.4 Starlette's own StreamingResponse stops listening for the disconnect
# and notices it only at its next write (15 s later for a silent job); sse-starlette listens under both.
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_client_that_disconnects_ends_the_stream_of_a_job_still_running(
    settings: Settings, session: Session, spec_version: str
) -> None:
    job_id, headers = running_job_with_events(session, "queued")
    app = create_app(settings)

    received = asyncio.run(
        stream_until_the_client_leaves(
            app, http_scope(f"/v1/jobs/{job_id}/events", {**headers, **SSE}, spec_version=spec_version)
        )
    )

    assert received[0].startswith(b"id: 1\nevent: queued\n")
    assert job_repo.get_status(session, job_id) == "running", "the stream ended for the disconnect alone"
