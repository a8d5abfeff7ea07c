"""A job's event log: pages of it, or the same events as a live Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import AppContext
from api.schemas import EventOut, ListResponse
from api.services.jobs import require_job
from core.models import FINISHED_STATUSES, JobEvent, Tenant
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo

KEEPALIVE_SECONDS = 15.0
STREAM_BATCH = 200
# LF only: the SSE grammar allows CRLF too (sse-starlette's default), but our clients, proxies and
# tests have always seen "\n\n" between events, and keeping the bytes costs nothing.
LINE_END = "\n"


def event_out(event: JobEvent) -> EventOut:
    return EventOut(
        id=event.seq,
        created_at=event.created_at,
        level=event.level,
        type=event.type,
        message=event.message,
        data=event.data,
    )


def list_events(
    session: Session, tenant: Tenant, job_id: str, *, after: int | None, limit: int
) -> ListResponse[EventOut]:
    require_job(session, tenant, job_id)
    page = event_repo.list_events(session, job_id, after=after, limit=limit)
    return ListResponse[EventOut](data=[event_out(e) for e in page.items], has_more=page.has_more)


def open_event_stream(
    session: Session, context: AppContext, tenant: Tenant, job_id: str, *, after: int | None
) -> EventSourceResponse:
    """Check access now (inside the request's transaction), then stream with sessions of its own.

    sse-starlette frames the events, sends a keepalive comment every KEEPALIVE_SECONDS (so proxies keep
    the connection and clients can check their clocks), and stops the stream when the client goes away."""
    require_job(session, tenant, job_id)
    return EventSourceResponse(
        _stream(context, job_id, after=after or 0),
        headers={"Cache-Control": "no-cache"},
        ping=KEEPALIVE_SECONDS,
        ping_message_factory=lambda: ServerSentEvent(comment="keepalive", sep=LINE_END),
        sep=LINE_END,
    )


async def _stream(context: AppContext, job_id: str, *, after: int) -> AsyncIterator[ServerSentEvent]:
    """Replay events after `after`, then poll for new ones; ends once the job has finished and every
    event is sent."""
    while True:
        events, status = await run_in_threadpool(_poll, context, job_id, after)
        for event in events:
            after = event.id
            yield _message(event)
        if len(events) == STREAM_BATCH:
            continue
        if status is None or status in FINISHED_STATUSES:
            return
        await asyncio.sleep(context.settings.sse_poll_seconds)


def _poll(context: AppContext, job_id: str, after: int) -> tuple[list[EventOut], str | None]:
    # Status is read first: events written before a job finishes are then always in the same read.
    with context.database.sessions() as session:
        status = job_repo.get_status(session, job_id)
        page = event_repo.list_events(session, job_id, after=after, limit=STREAM_BATCH)
        return [event_out(e) for e in page.items], status


def _message(event: EventOut) -> ServerSentEvent:
    data = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
    return ServerSentEvent(data, id=str(event.id), event=event.type, sep=LINE_END)
