"""Tenants and their API keys."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiKey, Tenant, utcnow
from core.security import generate_api_key, hash_api_key, hashes_match, lookup_prefix

# Stamping last use on every request would turn every read into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def create_tenant(session: Session, name: str) -> Tenant:
    """A new tenant; names are unique."""
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called `name`, created if missing (the `mapo keys create` path)."""
    return get_tenant_by_name(session, name) or create_tenant(session, name)


def create_api_key(session: Session, *, tenant_id: str, pepper: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key for the tenant: returns the row and the clear key, which is never stored and not
    recoverable later."""
    clear = generate_api_key()
    key = ApiKey(
        tenant_id=tenant_id, prefix=lookup_prefix(clear), key_hash=hash_api_key(clear, pepper), name=name
    )
    session.add(key)
    session.flush()
    return key, clear


def authenticate(session: Session, clear_key: str, *, pepper: str) -> Tenant | None:
    """The tenant owning an unrevoked key equal to `clear_key`, or None; stamps `last_used_at`
    (at most once per LAST_USED_RESOLUTION)."""
    digest = hash_api_key(clear_key, pepper)
    candidates = session.scalars(
        select(ApiKey).where(ApiKey.prefix == lookup_prefix(clear_key), ApiKey.revoked_at.is_(None))
    )
    for key in candidates:
        if hashes_match(key.key_hash, digest):
            now = utcnow()
            if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
                key.last_used_at = now
            return session.get(Tenant, key.tenant_id)
    return None


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revoke a key by id; False if it does not exist."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    key.revoked_at = key.revoked_at or utcnow()
    return True


def list_api_keys(session: Session, *, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key (revoked ones too) with its tenant's name, oldest first; only `tenant_name`'s if given."""
    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    rows = session.execute(query.order_by(ApiKey.created_at, ApiKey.id))
    return [(key, name) for key, name in rows.tuples()]


def find_api_key(session: Session, reference: str) -> ApiKey | None:
    """A key by its id (`key_…`) or by the public prefix that listings show (`mapo_…`)."""
    key = session.get(ApiKey, reference)
    if key is not None:
        return key
    matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix == reference).limit(2)))
    return matches[0] if len(matches) == 1 else None


def any_active_api_key(session: Session) -> bool:
    """Whether any unrevoked API key exists at all (the embedded service's first-start check)."""
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None
