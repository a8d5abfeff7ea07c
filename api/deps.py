"""Request dependencies: the app context, the request's session (the transaction boundary) and the caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import Unauthenticated
from api.tenant_cache import TenantCache
from core.db import Database
from core.models import Tenant
from core.repositories import tenants as tenant_repo
from core.settings import Settings
from core.storage import Storage


@dataclass(frozen=True)
class AppContext:
    """What the app builds once at start and every request shares."""

    settings: Settings
    database: Database
    storage: Storage
    producer: Celery
    tenants: TenantCache


async def get_context(request: Request) -> AppContext:
    # async: it does no I/O, and a plain `def` dependency costs a trip through the thread pool.
    context = request.app.state.context
    assert isinstance(context, AppContext)
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """The request's transaction: committed when the route returns (before the response is sent), rolled
    back on any error; after-commit hooks (enqueueing) run only once the commit succeeded."""
    with context.database.session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mapo_…`")


async def get_current_tenant(
    context: ContextDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant whose API key is in `Authorization: Bearer <key>`; 401 otherwise. A key checked in the
    last `auth_cache_seconds` is not looked up again (async, so that costs no trip to the thread pool)."""
    if credentials is None:
        raise Unauthenticated("missing `Authorization: Bearer <api key>` header")
    tenant = context.tenants.get(credentials.credentials)
    if tenant is not None:
        return tenant
    key, pepper = credentials.credentials, context.settings.api_key_pepper.get_secret_value()
    tenant = await run_in_threadpool(tenant_repo.authenticate, session, key, pepper=pepper)
    if tenant is None:
        raise Unauthenticated("invalid or revoked API key")
    context.tenants.put(key, tenant)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
