"""API fixtures beyond the shared ones of tests/conftest.py: a committed tenant, Bearer headers of a key
of its, and a dataset row of its (jobs' and routing tests; a module may define its own)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core.models import Tenant
from tests.support.factories import auth_headers, create_dataset, create_tenant


@pytest.fixture
def tenant_id(session: Session) -> str:
    tenant = create_tenant(session)
    session.commit()
    return tenant.id


@pytest.fixture
def headers(session: Session, tenant_id: str) -> dict[str, str]:
    tenant = session.get_one(Tenant, tenant_id)
    return auth_headers(session, tenant)


@pytest.fixture
def dataset_id(session: Session, tenant_id: str) -> str:
    dataset = create_dataset(session, tenant_id=tenant_id)
    session.commit()
    return dataset.id
