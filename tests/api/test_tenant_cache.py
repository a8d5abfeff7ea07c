"""An API process remembers a checked key for `auth_cache_seconds`, and no longer: revocation takes effect
within that bound, and a key it has not seen is always checked against the database."""

from __future__ import annotations

import dataclasses

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.deps import AppContext
from api.tenant_cache import TenantCache
from core.models import ApiKey, Tenant
from core.repositories import tenants as tenant_repo
from core.security import generate_api_key, hash_api_key, lookup_prefix
from tests.support.factories import TEST_PEPPER, create_api_key, create_tenant


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache_with_clock(client: TestClient, ttl_seconds: float) -> Clock:
    """Give the app a tenant cache that runs on a clock the test moves."""
    clock = Clock()
    context = client.app.state.context  # type: ignore[attr-defined]
    assert isinstance(context, AppContext)
    tenants = TenantCache(ttl_seconds, pepper=TEST_PEPPER, clock=clock)
    client.app.state.context = dataclasses.replace(context, tenants=tenants)  # type: ignore[attr-defined]
    return clock


def new_key(session: Session) -> tuple[str, str]:
    """(key id, clear key) of a new tenant's key; committed."""
    row, clear = create_api_key(session, create_tenant(session))
    session.commit()
    return row.id, clear


def revoke(session: Session, key_id: str) -> None:
    assert tenant_repo.revoke_api_key(session, key_id)
    session.commit()


def test_a_revoked_key_works_until_the_cache_time_is_up_then_is_refused(
    client: TestClient, session: Session
) -> None:
    clock = cache_with_clock(client, ttl_seconds=10)
    key_id, clear = new_key(session)
    headers = {"Authorization": f"Bearer {clear}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200

    revoke(session, key_id)
    clock.now += 9.9
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    clock.now += 0.2
    response = client.get("/v1/jobs", headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthenticated")


def test_with_no_cache_time_a_revoked_key_is_refused_at_once(client: TestClient, session: Session) -> None:
    cache_with_clock(client, ttl_seconds=0)
    key_id, clear = new_key(session)
    headers = {"Authorization": f"Bearer {clear}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    revoke(session, key_id)
    assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_a_refused_key_is_not_remembered(client: TestClient, session: Session) -> None:
    cache_with_clock(client, ttl_seconds=10)
    clear = generate_api_key()
    headers = {"Authorization": f"Bearer {clear}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 401

    tenant = create_tenant(session)
    prefix, key_hash = lookup_prefix(clear), hash_api_key(clear, TEST_PEPPER)
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=key_hash))
    session.commit()
    assert client.get("/v1/jobs", headers=headers).status_code == 200


def test_each_key_maps_to_its_own_tenant_and_the_oldest_is_forgotten_beyond_the_limit() -> None:
    clock = Clock()
    cache = TenantCache(60, pepper="p", max_entries=2, clock=clock)
    tenants = [Tenant(id=f"ten_{i}", name=f"t{i}", created_at=None) for i in range(3)]
    for i, tenant in enumerate(tenants):
        cache.put(f"mapo_key{i}", tenant)
    assert cache.get("mapo_key0") is None
    remembered = [cache.get(f"mapo_key{i}") for i in (1, 2)]
    assert [(t.id, t.name) for t in remembered if t is not None] == [("ten_1", "t1"), ("ten_2", "t2")]
