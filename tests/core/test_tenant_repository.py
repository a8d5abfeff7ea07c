from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiKey
from core.repositories import tenants as tenant_repo
from core.security import hash_api_key
from tests.support.factories import TEST_PEPPER, create_api_key, create_tenant


def test_keys_are_stored_only_as_peppered_hashes(session: Session) -> None:
    tenant = create_tenant(session)
    row, clear = create_api_key(session, tenant)
    stored = session.scalar(select(ApiKey).where(ApiKey.id == row.id))
    assert stored is not None
    assert clear not in (stored.key_hash, stored.prefix)
    assert stored.key_hash == hash_api_key(clear, TEST_PEPPER)


def test_authenticate_finds_the_tenant_only_with_the_right_key_and_pepper(session: Session) -> None:
    tenant = create_tenant(session)
    row, clear = create_api_key(session, tenant)
    found = tenant_repo.authenticate(session, clear, pepper=TEST_PEPPER)
    assert found is not None and found.id == tenant.id
    assert tenant_repo.authenticate(session, clear, pepper="other") is None
    assert tenant_repo.authenticate(session, clear[:-1] + "x", pepper=TEST_PEPPER) is None
    assert tenant_repo.revoke_api_key(session, row.id)
    assert tenant_repo.authenticate(session, clear, pepper=TEST_PEPPER) is None


def test_get_or_create_tenant_is_stable(session: Session) -> None:
    first = tenant_repo.get_or_create_tenant(session, "acme")
    assert tenant_repo.get_or_create_tenant(session, "acme").id == first.id


def test_any_active_api_key_ignores_revoked_keys(session: Session) -> None:
    assert not tenant_repo.any_active_api_key(session)
    key, _ = tenant_repo.create_api_key(session, tenant_id=create_tenant(session).id, pepper="p")
    assert tenant_repo.any_active_api_key(session)
    tenant_repo.revoke_api_key(session, key.id)
    assert not tenant_repo.any_active_api_key(session)
