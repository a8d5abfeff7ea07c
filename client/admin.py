"""Operator actions on the service's own database, without HTTP: schema upgrades and API keys."""

from __future__ import annotations

import migrations
from core.db import Database
from core.repositories import tenants as tenant_repo
from core.settings import Settings


def migrate(settings: Settings) -> None:
    """Create the embedded folders and bring the database schema up to the newest migration."""
    settings.ensure_dirs()
    migrations.upgrade(settings.sqlalchemy_url)


def create_key(settings: Settings, tenant_name: str, *, label: str = "") -> str:
    """A new API key for the tenant `tenant_name` (created if missing); the clear key is returned once."""
    database = Database(settings)
    try:
        with database.session_scope() as session:
            tenant = tenant_repo.get_or_create_tenant(session, tenant_name)
            pepper = settings.api_key_pepper.get_secret_value()
            _, clear = tenant_repo.create_api_key(session, tenant_id=tenant.id, pepper=pepper, name=label)
    finally:
        database.dispose()
    return clear


def has_api_key(settings: Settings) -> bool:
    """Whether any unrevoked API key exists (the embedded service's first-start test)."""
    database = Database(settings)
    try:
        with database.sessions() as session:
            return tenant_repo.any_active_api_key(session)
    finally:
        database.dispose()
