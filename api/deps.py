"""Request dependencies: the app context, the request's session (the transaction boundary) and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

import anyio
from celery import Celery
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import Unauthenticated
from api.tenant_cache import SingleFlight, TenantCache
from api.upload_slots import UploadSlots
from core.db import Database, commit, rollback
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
    key_lookups: SingleFlight
    upload_slots: UploadSlots


async def get_context(request: Request) -> AppContext:
    # async: it does no I/O, and a plain `def` dependency costs a trip through the thread pool.
    context = request.app.state.context
    assert isinstance(context, AppContext)
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_session(context: ContextDep) -> AsyncIterator[Session]:
    """The request's transaction: committed when the route returns (before the response is sent), rolled
    back on any error; after-commit hooks (enqueueing) run only once the commit succeeded.

    async, unlike most routes: opening a session does no I/O (it connects on first use), so only the end
    of a transaction goes to the thread pool, and a session the request never used (a route that
    refused its input first) is closed without going there at all."""
    session = context.database.sessions()
    try:
        yield session
    except BaseException:
        await _end(session, rollback)
        raise
    await _end(session, commit)


async def _end(session: Session, outcome: Callable[[Session], None]) -> None:
    if not session.in_transaction() and not session.info:
        session.close()  # nothing began, no hooks: nothing to send to the database
        return

    def end() -> None:
        try:
            outcome(session)
        finally:
            session.close()

    # Shielded: a client that hangs up must not leave the transaction open. A limiter of its own, as
    # FastAPI does for `def` dependencies: the commit must not wait for a thread held by a request
    # that itself waits for this session's pooled connection.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(end, limiter=anyio.CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_read_session(context: ContextDep) -> AsyncIterator[Session]:
    """A session for routes that only read, one autocommitted statement at a time (`Database.read_sessions`):
    there is no transaction to end, so closing it returns the connection to the pool without I/O, on
    the event loop. Its statements may each see a newer state than the one before; never write with it."""
    session = context.database.read_sessions()
    try:
        yield session
    finally:
        session.close()


ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mapo_…`")


async def get_current_tenant(
    context: ContextDep,
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
    tenant = await context.key_lookups.lookup(
        key, lambda: run_in_threadpool(_authenticate, context.database, key, pepper)
    )
    if tenant is None:
        raise Unauthenticated("invalid or revoked API key")
    context.tenants.put(key, tenant)
    return tenant


def _authenticate(database: Database, key: str, pepper: str) -> Tenant | None:
    # A transaction of its own (it stamps the key's last use), over before the route takes a pooled
    # connection: a request holding two at once could wait forever on a pool that its peers, each
    # holding one, have emptied.
    with database.session_scope() as session:
        return tenant_repo.authenticate(session, key, pepper=pepper)


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
