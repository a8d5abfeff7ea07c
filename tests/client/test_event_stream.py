"""Event streams over a real HTTP connection: a dropped stream resumes with Last-Event-ID, and every
event arrives exactly once with the ids of the paginated log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx

from client.sdk import MapoClient
from client.sse import SSEMessage, parse_sse
from core.db import Database
from core.repositories import events as event_repo
from core.repositories import tenants as tenant_repo
from core.repositories.events import NewEvent
from core.settings import Settings
from tests.support.factories import create_job
from tests.support.processes import ApiServer
from tests.support.recording import JobWriter


class DropsTheFirstEventStream(httpx.HTTPTransport):
    """Cuts the first SSE response after its first event, as a reset connection would."""

    def __init__(self) -> None:
        super().__init__()
        self.last_event_ids: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.headers.get("accept") != "text/event-stream":
            return response
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if len(self.last_event_ids) > 1:
            return response
        return httpx.Response(
            response.status_code, headers=response.headers, stream=CutAfterFirstEvent(response)
        )


class CutAfterFirstEvent(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __iter__(self) -> Iterator[bytes]:
        seen = b""
        for chunk in self.response.stream:  # type: ignore[union-attr]
            seen += chunk
            if b"\n\n" in seen:
                yield seen[: seen.index(b"\n\n") + 2]
                break
        self.response.close()
        raise httpx.ReadError("connection reset by peer")


def finished_job_with_events(data_dir: Path, tenant_name: str, count: int) -> str:
    database = Database(Settings(data_dir=data_dir))
    with database.session_scope() as session:
        tenant = tenant_repo.get_tenant_by_name(session, tenant_name)
        assert tenant is not None
        job = create_job(session, tenant_id=tenant.id, status="succeeded", step=10)
        event_repo.append_events(session, job.id, [NewEvent("step", f"step {n}") for n in range(count)])
    database.dispose()
    return job.id


def test_a_dropped_event_stream_resumes_after_the_last_event_seen(api_server: ApiServer) -> None:
    job_id = finished_job_with_events(api_server.data_dir, api_server.tenant, 3)
    transport = DropsTheFirstEventStream()
    with httpx.Client(transport=transport) as http:
        mapo = MapoClient(api_server.url, api_server.key, http=http)
        assert [e["id"] for e in mapo.iter_events(job_id)] == [1, 2, 3]
    assert transport.last_event_ids == [None, "1"]


def open_stream(
    http: httpx.Client, server: ApiServer, job_id: str, last_event_id: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.key}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    request = http.build_request("GET", f"{server.url}/v1/jobs/{job_id}/events", headers=headers)
    return http.send(request, stream=True)


def take(messages: Iterator[SSEMessage], count: int) -> list[SSEMessage]:
    """The next `count` events of the stream (keepalive comments skipped)."""
    events: list[SSEMessage] = []
    while len(events) < count:
        message = next(messages)
        if not message.comment:
            events.append(message)
    return events


def test_a_client_that_reconnects_mid_stream_gets_every_event_exactly_once(api_server: ApiServer) -> None:
    writer = JobWriter(api_server.data_dir, api_server.tenant, total_steps=10)
    writer.steps(3)
    with httpx.Client(timeout=30) as http:
        first = open_stream(http, api_server, writer.job_id, None)
        messages = parse_sse(first.iter_lines())
        seen = take(messages, 3)  # replayed
        writer.steps(2)
        seen += take(messages, 2)  # live
        first.close()  # the client goes away mid-stream...
        writer.steps(3)  # ...and misses these

        second = open_stream(http, api_server, writer.job_id, seen[-1].id)
        messages = parse_sse(second.iter_lines())
        seen += take(messages, 3)  # replayed after Last-Event-ID
        writer.steps(2)
        writer.finish()
        seen += [m for m in messages if not m.comment]  # live, until the server ends the stream
        second.close()

    ids = [int(m.id or 0) for m in seen]
    assert ids == list(range(1, 12))
    assert [m.event for m in seen] == ["step"] * 10 + ["succeeded"]
    logged = MapoClient(api_server.url, api_server.key).events(writer.job_id, limit=200).data
    assert [e["id"] for e in logged] == ids
    assert [json.loads(m.data) for m in seen] == logged
    writer.close()
