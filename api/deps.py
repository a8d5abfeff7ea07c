"""Request dependencies: the app context, the request's session (the transaction boundary) and the caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import Unauthenticated
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


def get_context(request: Request) -> AppContext:
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


def get_current_tenant(
    context: ContextDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant whose API key is in `Authorization: Bearer <key>`; 401 otherwise."""
    if credentials is None:
        raise Unauthenticated("missing `Authorization: Bearer <api key>` header")
    pepper = context.settings.api_key_pepper.get_secret_value()
    tenant = tenant_repo.authenticate(session, credentials.credentials, pepper=pepper)
    if tenant is None:
        raise Unauthenticated("invalid or revoked API key")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
