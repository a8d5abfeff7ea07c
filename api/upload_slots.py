"""A cap on the uploads one tenant may be sending to this API process at the same time.

Each upload holds a connection, a little memory and a share of the disk's bandwidth for as long as its
client takes to send it; without a cap, one tenant opening many slow uploads takes those from everyone.
The count is per API process (in memory, on its event loop): N processes let a tenant send N times as many.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from api.errors import ApiError

RETRY_AFTER_SECONDS = 5


class TooManyConcurrentUploads(ApiError):
    status_code, code = 429, "too_many_concurrent_uploads"
    headers = (("Retry-After", str(RETRY_AFTER_SECONDS)),)


class UploadSlots:
    """The uploads each tenant is sending now, at most `per_tenant` each. Used only from the event loop
    (async routes), so the counter needs no lock."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._sending: Counter[str] = Counter()

    @contextmanager
    def hold(self, tenant_id: str) -> Iterator[None]:
        """A slot for one upload of `tenant_id` until the block ends; 429 when all its slots are taken."""
        if self._sending[tenant_id] >= self.per_tenant:
            raise TooManyConcurrentUploads(
                f"{self.per_tenant} uploads of yours are being sent already (MAPO_MAX_CONCURRENT_UPLOADS); "
                "retry when one has finished"
            )
        self._sending[tenant_id] += 1
        try:
            yield
        finally:
            self._sending[tenant_id] -= 1
            if not self._sending[tenant_id]:
                del self._sending[tenant_id]

    def sending(self, tenant_id: str) -> int:
        """How many uploads of `tenant_id` are being sent now."""
        return self._sending[tenant_id]
