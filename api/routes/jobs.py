"""Job routes: create, list, inspect, cancel, delete, and follow (events, metrics).

The hot reads (inspect, list, metrics) read through an autocommit session (`ReadSessionDep`: no BEGIN,
no COMMIT) and are `async def` that hand their one service call to the thread pool: a `def` route costs
a second trip there to validate its return value (bench/api_load.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api.deps import ContextDep, CurrentTenant, ReadSessionDep, SessionDep
from api.schemas import (
    INT32_MAX,
    ErrorResponse,
    EstimateOut,
    EventOut,
    JobCreate,
    JobOut,
    ListResponse,
    MetricsOut,
)
from api.services import estimates as estimate_service
from api.services import events as event_service
from api.services import jobs as service
from api.services import outputs as output_service
from core.models import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={404: {"model": ErrorResponse}})

Limit = Annotated[int, Query(ge=1, le=200, description="Page size.")]
SSE_MEDIA_TYPE = "text/event-stream"
MAX_POINTS = 10_000
EVENTS_DESCRIPTION = """The job's event log, oldest first, a page at a time (`after`, `limit`).

With `Accept: text/event-stream` the same events come as Server-Sent Events: first every event after
`Last-Event-ID` (else after `after`), then new ones live as the worker records them; the server ends the
stream once the job has finished and its last event is sent. Each message carries `id:` (the event's id,
the same as in the paged log), `event:` (its type) and `data:` (the event as JSON); comment lines keep an
idle connection open. A client that reconnects with the last id it received gets every event once."""
ESTIMATE_DESCRIPTION = """Takes the body of `POST /v1/jobs` and creates nothing. Returns the recipe the job
would run (`base_precision: auto` resolved to the least lossy precision that fits), its estimated peak device
and host memory, and per class of the devices of the registered workers that serve its queue and have its
`gpus` (stopped ones left out): the step and total time, the cost at the operator's price per device-hour
(MAPO_GPU_HOUR_PRICES), and which of them could take it (those whose memory fits its peak, and those that
advertise no memory: CPU workers). Memory is
counted from the base model's safetensors headers; activations and time are modelled
(docs/memory.md, "How the plan is made"). 422 `estimate_unavailable` when the base model has no local
safetensors folder to count."""


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def create_job(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    body: JobCreate,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255, description="Repeat a create safely: the same key and body return the same job."
        ),
    ] = None,
) -> JobOut:
    """Create a training job; it is queued once this request commits (422 `does_not_fit` when the
    registered workers that could take it all advertise their memory and its plan fits none)."""
    return service.create_job(session, context, tenant, body, idempotency_key=idempotency_key)


@router.post("/estimate", responses={422: {"model": ErrorResponse}}, description=ESTIMATE_DESCRIPTION)
def estimate_job(
    session: SessionDep, context: ContextDep, tenant: CurrentTenant, body: JobCreate
) -> EstimateOut:
    """Estimate a job before creating it: recipe, memory, time and cost per device class."""
    return estimate_service.estimate_job(session, context, tenant, body)


@router.get("")
async def list_jobs(
    session: ReadSessionDep,
    tenant: CurrentTenant,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Limit = 20,
    after: Annotated[str | None, Query(description="Id of the last job of the previous page.")] = None,
) -> ListResponse[JobOut]:
    """List your jobs, newest first."""
    return await run_in_threadpool(
        service.list_jobs, session, tenant, status=status, limit=limit, after=after
    )


@router.get("/{job_id}")
async def get_job(session: ReadSessionDep, tenant: CurrentTenant, job_id: str) -> JobOut:
    """Inspect a job: status, progress, error, timestamps and latest metrics."""
    return await run_in_threadpool(service.get_job, session, tenant, job_id)


@router.post("/{job_id}/cancel", responses={409: {"model": ErrorResponse}})
def cancel_job(session: SessionDep, context: ContextDep, tenant: CurrentTenant, job_id: str) -> JobOut:
    """Request cancellation (idempotent; 409 once the job has succeeded or failed)."""
    return service.cancel_job(session, context, tenant, job_id)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses={409: {"model": ErrorResponse}})
def delete_job(session: SessionDep, context: ContextDep, tenant: CurrentTenant, job_id: str) -> None:
    """Delete a finished job with its events, metrics, checkpoints, samples and adapter (409 until it has
    finished: cancel it first)."""
    service.delete_job(session, context, tenant, job_id)


@router.get(
    "/{job_id}/events",
    response_model=ListResponse[EventOut],
    responses={200: {"content": {SSE_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
    description=EVENTS_DESCRIPTION,
)
def job_events(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    job_id: str,
    after: Annotated[
        int | None, Query(ge=0, le=INT32_MAX, description="Last event id seen; events after it follow.")
    ] = None,
    limit: Limit = 100,
    accept: Annotated[str, Header(include_in_schema=False)] = "",
    last_event_id: Annotated[
        int | None,
        Header(
            ge=0,
            le=INT32_MAX,
            description="Event stream only: the last event id received; replay starts after it.",
        ),
    ] = None,
) -> ListResponse[EventOut] | EventSourceResponse:
    """The job's event log, oldest first; with `Accept: text/event-stream`, a live SSE stream of it."""
    if SSE_MEDIA_TYPE not in accept:
        return event_service.list_events(session, tenant, job_id, after=after, limit=limit)
    return event_service.open_event_stream(
        session, context, tenant, job_id, after=last_event_id if last_event_id is not None else after
    )


@router.get("/{job_id}/metrics")
async def job_metrics(
    session: ReadSessionDep,
    tenant: CurrentTenant,
    job_id: str,
    max_points: Annotated[
        int | None,
        Query(
            ge=2,
            le=MAX_POINTS,
            description="Thin each series to at most this many points for plotting: a longer series "
            "keeps its first and last points and those on an even grid of its steps between them (its "
            "own logging interval times k). Without it every point is returned, which for a long job "
            "is large and slow.",
        ),
    ] = None,
) -> MetricsOut:
    """Metric series per name (steps and values) for plotting."""
    return await run_in_threadpool(output_service.get_metrics, session, tenant, job_id, max_points=max_points)
