"""Worker routes: the shared worker pool, read-only for every API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.schemas import ListResponse, WorkerOut, WorkerStatus
from api.services import workers as service

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("")
def list_workers(
    session: SessionDep,
    context: ContextDep,
    _tenant: CurrentTenant,
    status: Annotated[WorkerStatus | None, Query(description="Only workers in this state.")] = None,
) -> ListResponse[WorkerOut]:
    """List the training workers (shared by every tenant): their queues, GPUs and whether they are alive."""
    return service.list_workers(session, context, status=status)
