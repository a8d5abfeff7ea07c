"""Where the test PostgreSQL and Redis are: the servers MAPO_TEST_POSTGRES_URL / MAPO_TEST_REDIS_URL name
(CI's), or the session's throwaway ones where they are unset (tests/support/session_servers.py)."""

from __future__ import annotations

import os

from sqlalchemy import create_engine

from tests.support.availability import unavailable

POSTGRES_ENV = "MAPO_TEST_POSTGRES_URL"
REDIS_ENV = "MAPO_TEST_REDIS_URL"


def postgres_server_url() -> str:
    """MAPO_TEST_POSTGRES_URL's server (CI's), or the session's throwaway one where it is unset."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        from tests.support import session_servers

        url = session_servers.postgres_url()
    try:
        with create_engine(url).connect():
            pass
    except Exception as exc:
        unavailable(f"PostgreSQL at {POSTGRES_ENV} is unreachable ({type(exc).__name__}); tests skipped")
    return url
