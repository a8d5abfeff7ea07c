"""Base-model routes: what jobs can train on here, read-only for every API key."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ContextDep, CurrentTenant
from api.schemas import BaseModelOut, ListResponse
from api.services import base_models as service

router = APIRouter(prefix="/v1/base-models", tags=["base models"])


@router.get("")
def list_base_models(context: ContextDep, _tenant: CurrentTenant) -> ListResponse[BaseModelOut]:
    """List the base models this server offers, with each one's family, native size and accepted fields."""
    return service.list_base_models(context)
