"""Which tenant an API key belongs to, remembered for a few seconds per API process.

Looking the key up costs two queries, a third of a job read's time (bench/api_load.py). An entry is
trusted for `ttl_seconds`, so a key revoked in the database (or a deleted tenant) still authenticates on
each API process for at most that long; then the database is asked again (which also stamps the key's
`last_used_at`). Unknown keys are never remembered, so a key created a moment ago works at once.
Entries are keyed by the peppered hash, never by the clear key.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from core.models import Tenant
from core.security import hash_api_key


@dataclass(frozen=True)
class _Entry:
    tenant_id: str
    name: str
    created_at: datetime
    expires_at: float


class TenantCache:
    """API key → tenant for `ttl_seconds` (0 turns the cache off), at most `max_entries` keys."""

    def __init__(
        self,
        ttl_seconds: float,
        *,
        pepper: str,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds, self.max_entries = ttl_seconds, max_entries
        self._pepper, self._clock = pepper, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, clear_key: str) -> Tenant | None:
        """The tenant remembered for this key, as a new object detached from any session; None if it
        is not remembered or its time is up."""
        digest = hash_api_key(clear_key, self._pepper)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry.expires_at <= self._clock():
                del self._entries[digest]
                return None
        return Tenant(id=entry.tenant_id, name=entry.name, created_at=entry.created_at)

    def put(self, clear_key: str, tenant: Tenant) -> None:
        """Remember that the database has just authenticated this key as `tenant`."""
        if self.ttl_seconds <= 0:
            return
        entry = _Entry(tenant.id, tenant.name, tenant.created_at, self._clock() + self.ttl_seconds)
        digest = hash_api_key(clear_key, self._pepper)
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class SingleFlight:
    """Concurrent lookups of one API key share one database query.

    A burst of requests with a key that has just left the cache would otherwise each take a pooled
    connection for the same two queries and empty the pool (200 requests gave 80 500s before). Keyed by
    the peppered hash; the shared result (or exception) goes to every waiter. Lives on one event loop.
    """

    def __init__(self, pepper: str) -> None:
        self._pepper = pepper
        self._pending: dict[str, asyncio.Future[Tenant | None]] = {}

    async def lookup(self, clear_key: str, fetch: Callable[[], Awaitable[Tenant | None]]) -> Tenant | None:
        digest = hash_api_key(clear_key, self._pepper)
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Tenant | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            result = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a lookup nobody else awaited logs no warning
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._pending[digest]
