"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ContextDep
from api.schemas import ErrorResponse, HealthOut, ReadyOut
from api.services.health import check_ready

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> HealthOut:
    """The process is up."""
    # async: nothing to wait for, so no trip through the thread pool (bench/api_load.py measures our
    # middleware and routing on it).
    return HealthOut()


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
def readyz(context: ContextDep) -> ReadyOut:
    """The database and the broker are reachable, and the data directory's disk keeps
    MAPO_MIN_FREE_DISK_BYTES free (503 naming the first that fails)."""
    return check_ready(context)
