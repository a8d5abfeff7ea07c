"""The SDK's event stream over a real HTTP connection: a dropped stream resumes with Last-Event-ID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from client.sdk import MapoClient
from core.db import Database
from core.repositories import events as event_repo
from core.repositories import tenants as tenant_repo
from core.repositories.events import NewEvent
from core.settings import Settings
from tests.client.conftest import ApiServer
from tests.conftest import create_job


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
