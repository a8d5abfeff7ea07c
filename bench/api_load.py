"""API under load: requests/s and latency of job reads on PostgreSQL, next to a bare FastAPI endpoint.

    python -m bench.api_load                        # 32 connections, 3 rounds of 5 s per endpoint
    python -m bench.api_load --seconds 10 --rounds 5
    python -m bench.api_load --server-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python -m bench.api_load --workers 2                 # every server (bare included) as 2 processes
    git archive main | tar -x -C /tmp/before && python -m bench.api_load --compare-with /tmp/before
    python -m bench.api_load --events 100000 --long-steps 10000 --seconds 3 --rounds 2   # quick look

Creates a database on the server (dropped at the end), fills it with 10,000 jobs, 1,000,000 events and
the metrics of one 100,000-step job (bench/seed_jobs.py, COPY), and serves it with uvicorn exactly as the
Dockerfile does (`uvicorn api.main:create_app --factory`, one process). Beside it run three more uvicorn
processes: a bare FastAPI app (a constant from `async def` and from plain `def`, and one SELECT of the
job's row from plain `def`, and from `async def` through SQLAlchemy's asyncio engine and through psycopg
alone), our app with authentication replaced by a fixed tenant, and our app with
MAPO_AUTH_CACHE_SECONDS=0 (an API-key lookup in the database on every request, as before the cache).
A load generator in its own process (bench/http_load.py) keeps `--connections` keep-alive connections
busy; endpoints take turns within each round so machine noise hits them alike; the table shows medians
over rounds. `--compare-with DIR` also serves the app of another checkout (e.g. the commit before a
change) on the same database, so before and after share one run's noise. `--workers N` runs every
server, the bare one too, as N uvicorn processes. Reading the whole 100k-step metrics job and its
`max_points` downsampling are timed alone, one request at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from fastapi import FastAPI
from psycopg.rows import dict_row

from bench.http_load import LoadResult, run_load
from bench.seed_jobs import Seeded, scratch_database, seed

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Target:
    """One row of the table: what is requested, from which server."""

    label: str
    server: str
    paths: list[str]
    authenticated: bool = True


@dataclass(frozen=True)
class Server:
    port: int
    process: psutil.Process


def main() -> None:
    args = _parse()
    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(args.server_url))
        started = time.perf_counter()
        seeded = seed(url, jobs=args.jobs, events=args.events, long_steps=args.long_steps)
        print(
            f"seeded {args.jobs} jobs, {seeded.events} events, {seeded.metrics} metric points "
            f"in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        specs = [
            ("app", "api.main:create_app", {}, REPO),
            ("nocache", "api.main:create_app", {"MAPO_AUTH_CACHE_SECONDS": "0"}, REPO),
            ("bare", "bench.api_load:bare_app", {}, REPO),
            ("noauth", "bench.api_load:app_without_auth", {}, REPO),
        ]
        if args.compare_with is not None:
            specs.append(("compared", "api.main:create_app", {}, args.compare_with.resolve()))
        servers = {
            name: stack.enter_context(
                _uvicorn(app, url, seeded, data_dir, extra_env, source=source, workers=args.workers)
            )
            for name, app, extra_env, source in specs
        }
        targets = _targets(seeded, compared=args.compare_with is not None)
        rows = _measure(targets, servers, seeded, args)
        solo = _solo_metrics(servers["app"].port, seeded, args.solo_requests)
    _print_table(rows, targets, args)
    _print_solo(solo)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_SERVER, help="PostgreSQL server to create the db on")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per endpoint and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--long-steps", type=int, default=100_000, help="steps of the long job's metrics")
    parser.add_argument("--solo-requests", type=int, default=10, help="timed requests of the long job")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes of every server, the bare one too"
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        help="another checkout of the service (e.g. `git archive REV | tar -x -C DIR`); its app's job "
        "reads are measured in the same rounds",
    )
    return parser.parse_args()


def bare_app() -> FastAPI:
    """The floors: FastAPI on uvicorn with nothing behind the route, and with one SELECT behind it (in the
    thread pool as our routes do, and on the event loop through two async drivers)."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.ext.asyncio import create_async_engine

    from core.models import Job

    app = FastAPI()
    engine = create_engine(os.environ["MAPO_DATABASE_URL"], pool_pre_ping=True)

    @app.get("/async")
    async def constant_async() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/sync")
    def constant_sync() -> dict[str, str]:  # like our routes: runs in the thread pool
        return {"status": "ok"}

    @app.get("/select/{job_id}")
    def one_select(job_id: str) -> dict[str, Any]:  # the job's row, no ORM, no auth, no schema
        with engine.begin() as conn:
            row = conn.execute(select(Job.__table__).where(Job.__table__.c.id == job_id)).one()
        return dict(row._mapping)

    # The same SELECT on the event loop, through SQLAlchemy's asyncio layer and through psycopg alone
    # (a prepared statement on a few connections of its own): what an async read path could reach.
    async_engine = create_async_engine(
        os.environ["MAPO_DATABASE_URL"], pool_pre_ping=True, isolation_level="AUTOCOMMIT"
    )

    @app.get("/select-async/{job_id}")
    async def one_select_async(job_id: str) -> dict[str, Any]:
        async with async_engine.connect() as conn:
            row = (await conn.execute(select(Job.__table__).where(Job.__table__.c.id == job_id))).one()
        return dict(row._mapping)

    connections = _PsycopgConnections(os.environ["MAPO_DATABASE_URL"].replace("+psycopg", ""), size=10)

    @app.get("/select-psycopg/{job_id}")
    async def one_select_psycopg(job_id: str) -> dict[str, Any]:
        async with connections.connection() as conn:
            cursor = await conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,), prepare=True)
            row = await cursor.fetchone()
        if row is None:
            raise LookupError(job_id)
        return row

    return app


class _PsycopgConnections:
    """Up to `size` autocommit psycopg connections, opened on first need, one request on each at a time."""

    def __init__(self, url: str, *, size: int) -> None:
        self._url, self._size, self._opened = url, size, 0
        self._idle: asyncio.Queue[psycopg.AsyncConnection[dict[str, Any]]] = asyncio.Queue()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        if self._idle.empty() and self._opened < self._size:
            self._opened += 1
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, row_factory=dict_row)
            self._idle.put_nowait(conn)
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)


def app_without_auth() -> FastAPI:
    """Our app, with the API-key check replaced by the bench tenant (read from MAPO_BENCH_TENANT_ID)."""
    from api.deps import get_current_tenant
    from api.main import create_app
    from core.models import Tenant

    app = create_app()
    tenant = Tenant(id=os.environ["MAPO_BENCH_TENANT_ID"], name="bench")

    async def bench_tenant() -> Tenant:
        return tenant

    app.dependency_overrides[get_current_tenant] = bench_tenant
    return app


def _targets(seeded: Seeded, *, compared: bool) -> list[Target]:
    ids = seeded.job_ids[:-1]  # the long job's metrics are timed on their own
    reads = [
        ("GET /v1/jobs/{id}", [f"/v1/jobs/{i}" for i in ids]),
        ("GET /v1/jobs?limit=50", ["/v1/jobs?limit=50"]),
        ("GET /v1/jobs/{id}/metrics", [f"/v1/jobs/{i}/metrics" for i in ids]),
    ]
    targets = [
        Target("bare async def", "bare", ["/async"], authenticated=False),
        Target("bare def", "bare", ["/sync"], authenticated=False),
        Target("bare def, 1 SELECT", "bare", [f"/select/{i}" for i in ids], authenticated=False),
        Target(
            "bare async, 1 SELECT, SA async", "bare", [f"/select-async/{i}" for i in ids], authenticated=False
        ),
        Target(
            "bare async, 1 SELECT, psycopg",
            "bare",
            [f"/select-psycopg/{i}" for i in ids],
            authenticated=False,
        ),
        Target("GET /healthz (our stack, no DB)", "app", ["/healthz"], authenticated=False),
        Target("GET /v1/jobs/{id}", "app", reads[0][1]),
        Target("GET /v1/jobs/{id}, no auth", "noauth", reads[0][1]),
        Target("GET /v1/jobs/{id}, key cache off", "nocache", reads[0][1]),
        Target("GET /v1/jobs?limit=50", "app", reads[1][1]),
        Target("GET /v1/jobs/{id}/metrics", "app", reads[2][1]),
    ]
    if compared:
        targets += [Target(f"{label}, compared", "compared", paths) for label, paths in reads]
    return targets


@contextmanager
def _uvicorn(
    app: str,
    url: str,
    seeded: Seeded,
    data_dir: Path,
    extra_env: dict[str, str],
    *,
    source: Path,
    workers: int,
) -> Iterator[Server]:
    """uvicorn serving `app` imported from the checkout at `source`."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPO_")}
    env |= {
        "PYTHONPATH": str(source),
        "MAPO_DATABASE_URL": url,
        "MAPO_DATA_DIR": str(data_dir),
        "MAPO_BENCH_TENANT_ID": seeded.tenant_id,
        **extra_env,
    }
    command = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", HOST, "--port", str(port)]
    command += ["--workers", str(workers)] if workers > 1 else []
    process = subprocess.Popen(
        command, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port, process)
        yield Server(port, psutil.Process(process.pid))
    finally:
        process.terminate()
        process.wait(timeout=30)


def _measure(
    targets: list[Target], servers: dict[str, Server], seeded: Seeded, args: argparse.Namespace
) -> dict[str, list[tuple[LoadResult, float]]]:
    """Per target, one (load result, server CPU seconds) per round."""
    rows: dict[str, list[tuple[LoadResult, float]]] = {t.label: [] for t in targets}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        for round_ in range(args.rounds):
            for target in targets:
                server = servers[target.server]
                headers = {"Authorization": f"Bearer {seeded.api_key}"} if target.authenticated else {}
                cpu_before = _cpu(server.process)
                result = pool.submit(
                    run_load,
                    HOST,
                    server.port,
                    target.paths,
                    headers=headers,
                    connections=args.connections,
                    seconds=args.seconds,
                    warmup=args.warmup,
                ).result()
                # The server's CPU over warm-up and measurement, per measured request (approximate).
                cpu = (_cpu(server.process) - cpu_before) * args.seconds / (args.seconds + args.warmup)
                rows[target.label].append((result, cpu))
                print(
                    f"  round {round_ + 1} {target.label:30} {result.requests_per_s:8.0f} req/s",
                    file=sys.stderr,
                )
    return rows


@dataclass(frozen=True)
class Solo:
    """Requests of one URL made one at a time."""

    label: str
    points: int
    seconds: list[float]


def _solo_metrics(port: int, seeded: Seeded, requests: int) -> list[Solo]:
    """The long job's metrics, whole (a few times: it is slow) and downsampled, one request at a time."""
    base = f"http://{HOST}:{port}/v1/jobs/{seeded.long_job_id}/metrics"
    variants = [("whole", base, min(requests, 3))] + [
        (f"max_points={n}", f"{base}?max_points={n}", requests) for n in (1000, 200)
    ]
    solos = []
    with httpx.Client(headers={"Authorization": f"Bearer {seeded.api_key}"}, timeout=300) as client:
        for label, url, count in variants:
            seconds, points = [], 0
            for _ in range(count):
                started = time.perf_counter()
                response = client.get(url)
                seconds.append(time.perf_counter() - started)
                response.raise_for_status()
                points = sum(len(s["steps"]) for s in response.json()["series"].values())
            solos.append(Solo(label, points, seconds))
    return solos


def _print_table(
    rows: dict[str, list[tuple[LoadResult, float]]], targets: list[Target], args: argparse.Namespace
) -> None:
    bare = statistics.median(r.requests_per_s for r, _ in rows["bare async def"])
    print(f"\n{args.connections} connections, median of {args.rounds} rounds of {args.seconds:g} s")
    print(
        f"{'endpoint':32} {'req/s':>8} {'÷ bare':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'server CPU ms/req':>18} {'client CPU %':>13} {'errors':>7}"
    )
    for target in targets:
        results = rows[target.label]
        rps = statistics.median(r.requests_per_s for r, _ in results)
        p50 = statistics.median(_percentile(r.latencies, 50) for r, _ in results)
        p99 = statistics.median(_percentile(r.latencies, 99) for r, _ in results)
        cpu = statistics.median(c / max(len(r.latencies), 1) for r, c in results)
        client = statistics.median(r.client_cpu_s / (args.seconds + args.warmup) for r, _ in results)
        errors = sum(r.errors for r, _ in results)
        print(
            f"{target.label:32} {rps:8.0f} {rps / bare:7.2f} {1000 * p50:7.1f} {1000 * p99:7.1f} "
            f"{1000 * cpu:18.2f} {100 * client:13.0f} {errors:7d}"
        )


def _print_solo(solos: list[Solo]) -> None:
    print("\nGET /v1/jobs/{id}/metrics of the 100,000-step job (15 series), one request at a time")
    print(f"{'query':20} {'points':>9} {'median ms':>10} {'max ms':>8}")
    for solo in solos:
        median, worst = 1000 * statistics.median(solo.seconds), 1000 * max(solo.seconds)
        print(f"{solo.label:20} {solo.points:9d} {median:10.1f} {worst:8.1f}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] if ordered else float("nan")


def _cpu(process: psutil.Process) -> float:
    """CPU seconds of the server process and its threads, and of its worker processes if any."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        times = each.cpu_times()
        total += times.user + times.system
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}")
        try:
            if httpx.get(f"http://{HOST}:{port}/docs", timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"uvicorn on port {port} did not answer within {timeout} s")


if __name__ == "__main__":
    main()
