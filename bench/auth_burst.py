"""Bursts of concurrent requests on a key the API has not seen (cold) and on one it has (warm).

    python -m bench.auth_burst                          # 200 connections, 3 rounds, local PostgreSQL
    python -m bench.auth_burst --connections 400 --rounds 5 --pool-timeout 2

Creates a database on the server (dropped at the end), migrates it, starts our app with uvicorn in this
process, and per round fires `--connections` concurrent GET /v1/jobs at once from fresh connections:
first with a key created just before (not in the auth cache: every request must authenticate), then
again with the same key (cached). Prints per burst: answers by status, p50/p99 latency, the burst's
wall time and how many SQL statements touched api_keys (one lookup is a SELECT and an UPDATE).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from sqlalchemy import event

from api.main import create_app
from bench.seed_jobs import scratch_database
from core.db import Database
from core.repositories import tenants as tenant_repo
from core.settings import Settings

PEPPER = "bench-pepper-" + "x" * 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool-timeout", type=float, default=5.0, help="MAPO_DATABASE_POOL_TIMEOUT_SECONDS")
    args = parser.parse_args()
    with scratch_database(args.server_url) as url:
        settings = Settings(
            environment="test",
            database_url=url,
            api_key_pepper=PEPPER,  # type: ignore[arg-type]
            database_pool_timeout_seconds=args.pool_timeout,
        )
        header = f"{'burst':6} {'round':>5} {'statuses':24} {'p50 ms':>8} {'p99 ms':>8}"
        print(f"{header} {'wall s':>7} {'key SQL':>8}")
        with _served(settings) as (base_url, key_queries):
            for round_ in range(args.rounds):
                key = _new_key(settings)
                for name in ("cold", "warm"):
                    key_queries.clear()
                    result = asyncio.run(_burst(base_url, key, args.connections))
                    _print_row(name, round_, result, len(key_queries))


def _new_key(settings: Settings) -> str:
    database = Database(settings)
    with database.session_scope() as session:
        tenant = tenant_repo.create_tenant(session, f"bench-{uuid.uuid4().hex[:6]}")
        _, key = tenant_repo.create_api_key(session, tenant_id=tenant.id, pepper=PEPPER)
    database.dispose()
    return key


@contextmanager
def _served(settings: Settings) -> Iterator[tuple[str, list[str]]]:
    app = create_app(settings)
    key_queries: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_keys" in statement:
            key_queries.append(statement)

    event.listen(app.state.context.database.engine, "before_cursor_execute", record)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", key_queries
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def _burst(url: str, key: str, count: int) -> tuple[list[int], list[float], float]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:

        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            try:
                status = (await client.get("/v1/jobs?limit=5")).status_code
            except httpx.HTTPError:
                status = 0  # no answer at all
            return status, time.perf_counter() - started

        started = time.perf_counter()
        answers = await asyncio.gather(*(one() for _ in range(count)))
        wall = time.perf_counter() - started
    return [s for s, _ in answers], [t for _, t in answers], wall


def _print_row(name: str, round_: int, result: tuple[list[int], list[float], float], key_sql: int) -> None:
    statuses, latencies, wall = result
    counts = ", ".join(f"{n}x{s}" for s, n in sorted(Counter(statuses).items()))
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    p50 = statistics.median(ordered)
    print(f"{name:6} {round_:5} {counts:24} {1000 * p50:8.0f} {1000 * p99:8.0f} {wall:7.2f} {key_sql:8}")


if __name__ == "__main__":
    main()
