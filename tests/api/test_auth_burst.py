"""A burst of requests on a key that is not in the auth cache: one lookup, no 500, nobody left waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from sqlalchemy import event
from sqlalchemy.orm import Session

from api.tenant_cache import SingleFlight
from core.db import Database
from core.models import Tenant
from core.settings import Settings
from tests.support.factories import TEST_PEPPER, auth_headers, create_job, create_tenant
from tests.support.ports import free_port

BURST = 200


def test_concurrent_lookups_of_one_key_share_one_fetch_and_its_result() -> None:
    flights = SingleFlight(TEST_PEPPER)
    calls = 0

    async def fetch() -> Tenant | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return Tenant(id="t_1", name="acme")

    async def burst() -> list[Tenant | None]:
        return await asyncio.gather(*(flights.lookup("mapo_key", fetch) for _ in range(50)))

    results = asyncio.run(burst())
    assert calls == 1 and {r.id for r in results if r is not None} == {"t_1"} and len(results) == 50


def test_a_failed_shared_lookup_fails_every_waiter_and_the_next_one_tries_again() -> None:
    flights = SingleFlight(TEST_PEPPER)
    attempts = 0

    async def fetch() -> Tenant | None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("database down")

    async def burst() -> list[object]:
        return await asyncio.gather(*(flights.lookup("k", fetch) for _ in range(10)), return_exceptions=True)

    outcomes = asyncio.run(burst())
    assert attempts == 1 and all(isinstance(o, ConnectionError) for o in outcomes)
    asyncio.run(burst())
    assert attempts == 2


@dataclass
class Served:
    url: str
    key_queries: list[str]  # every SQL statement the API sent that reads or stamps an API key


@pytest.fixture
def served_api(settings: Settings, database: Database) -> Iterator[Served]:
    from api.main import create_app

    app = create_app(settings)
    served = Served(f"http://127.0.0.1:{free_port()}", [])

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "api_keys" in statement:
            served.key_queries.append(statement)

    event.listen(app.state.context.database.engine, "before_cursor_execute", record)
    port = int(served.url.rsplit(":", 1)[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield served
    server.should_exit = True
    thread.join(timeout=30)


async def _burst(url: str, headers: dict[str, str], count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.get("/v1/jobs?limit=5") for _ in range(count)))


def test_a_burst_on_a_cold_key_looks_it_up_once_and_answers_every_request_without_a_500(
    served_api: Served, session: Session
) -> None:
    tenant = create_tenant(session)
    create_job(session, tenant_id=tenant.id)
    headers = auth_headers(session, tenant)  # created now: never looked up, so cold in the API's cache
    session.commit()

    started = time.monotonic()
    responses = asyncio.run(_burst(served_api.url, headers, BURST))
    took = time.monotonic() - started

    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {200, 503}, statuses
    assert all("Retry-After" in r.headers for r in responses if r.status_code == 503)
    assert sum(r.status_code == 200 for r in responses) >= BURST // 2
    assert took < 60, f"the burst took {took:.1f}s"
    # One lookup: a SELECT of the key and the UPDATE stamping its last use (200 of each before).
    assert len(served_api.key_queries) <= 2, len(served_api.key_queries)


def test_a_request_that_finds_the_pool_empty_answers_503_database_busy_with_retry_after(
    settings: Settings, database: Database, session: Session
) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    headers = auth_headers(session, create_tenant(session))
    session.commit()
    app = create_app(settings.model_copy(update={"database_pool_timeout_seconds": 0.2}))
    engine = app.state.context.database.engine
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
    try:
        with TestClient(app) as client:
            response = client.get("/v1/jobs", headers=headers)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_busy" and response.headers["Retry-After"]
    finally:
        for connection in held:
            connection.close()
