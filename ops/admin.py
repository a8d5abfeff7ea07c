"""Operator actions on the service's own database, without HTTP: schema upgrades and API keys."""

from __future__ import annotations

import contextlib
import io
import sys
from datetime import datetime
from typing import NamedTuple

import migrations
from core.db import Database
from core.models import ApiKey, Tenant
from core.repositories import tenants as tenant_repo
from core.settings import Settings


def migrate(settings: Settings, *, quiet: bool = False) -> None:
    """Create the embedded folders and bring the database schema up to the newest migration. Alembic logs
    each migration it runs; `quiet` keeps that back (commands that only need the schema, such as `keys`),
    and shows it if the upgrade fails."""
    settings.ensure_dirs()
    if not quiet:
        migrations.upgrade(settings.sqlalchemy_url)
        return
    captured = io.StringIO()
    try:
        # Alembic's log handler is made inside the upgrade, on the stderr of that moment.
        with contextlib.redirect_stderr(captured):
            migrations.upgrade(settings.sqlalchemy_url)
    except Exception:
        sys.stderr.write(captured.getvalue())
        raise


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


class KeyInfo(NamedTuple):
    """What an operator may see of a key: never the key itself, which is not stored."""

    id: str
    tenant: str
    prefix: str
    label: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


def _info(key: ApiKey, tenant: str) -> KeyInfo:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return KeyInfo(
        key.id,
        tenant,
        key.prefix,
        key.name,
        key.created_at.isoformat(),
        iso(key.last_used_at),
        iso(key.revoked_at),
    )


def list_keys(settings: Settings, *, tenant_name: str | None = None) -> list[KeyInfo]:
    """Every API key (revoked ones too), oldest first; only `tenant_name`'s when given."""
    database = Database(settings)
    try:
        with database.sessions() as session:
            return [
                _info(key, name) for key, name in tenant_repo.list_api_keys(session, tenant_name=tenant_name)
            ]
    finally:
        database.dispose()


def revoke_key(settings: Settings, reference: str) -> KeyInfo | None:
    """Revoke a key by id or listed prefix; from the next request on it answers 401. None if not found."""
    database = Database(settings)
    try:
        with database.session_scope() as session:
            key = tenant_repo.find_api_key(session, reference)
            if key is None:
                return None
            tenant_repo.revoke_api_key(session, key.id)
            session.flush()
            return _info(key, session.get_one(Tenant, key.tenant_id).name)
    finally:
        database.dispose()


def has_api_key(settings: Settings) -> bool:
    """Whether any unrevoked API key exists (the embedded service's first-start test)."""
    database = Database(settings)
    try:
        with database.sessions() as session:
            return tenant_repo.any_active_api_key(session)
    finally:
        database.dispose()
