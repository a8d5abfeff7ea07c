"""More simultaneous requests than the database pool holds connections: every one is answered, also when
each must look its API key up in the database (the key check and the route each take a connection)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.deps import AppContext
from api.tenant_cache import TenantCache
from tests.support.factories import TEST_PEPPER, auth_headers, create_job, create_tenant


def test_more_concurrent_reads_than_pooled_connections_all_answer_with_the_key_cache_off(
    client: TestClient, session: Session
) -> None:
    context = client.app.state.context  # type: ignore[attr-defined]
    assert isinstance(context, AppContext)
    client.app.state.context = dataclasses.replace(  # type: ignore[attr-defined]
        context, tenants=TenantCache(0, pepper=TEST_PEPPER)
    )
    concurrent = 24  # more than the pool's connections: SQLAlchemy's default of 5 and 10 overflow
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    headers = auth_headers(session, tenant)
    paths = [f"/v1/jobs/{job.id}", "/v1/jobs?limit=50", f"/v1/jobs/{job.id}/metrics"] * concurrent

    with ThreadPoolExecutor(concurrent) as threads:
        statuses = list(threads.map(lambda path: client.get(path, headers=headers).status_code, paths))

    assert statuses == [200] * len(paths)
