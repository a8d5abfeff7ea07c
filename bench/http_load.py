"""A small HTTP/1.1 load generator: N keep-alive connections on asyncio, each sending the next request as
soon as the previous response has arrived (a closed loop, like wrk), recording every latency.

It speaks just enough HTTP for our GET routes (responses with Content-Length), which keeps it cheap
enough that, in its own process, it is not what limits a single uvicorn process on loopback. It also
reports its own CPU time, so a table can show when it came close to being the bottleneck.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured; latencies in seconds, in completion order."""

    seconds: float
    latencies: list[float]
    errors: int
    statuses: dict[int, int]
    client_cpu_s: float

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds


def request_bytes(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def run_load(
    host: str,
    port: int,
    paths: list[str],
    *,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    warmup: float,
) -> LoadResult:
    """Hammer `paths` (cycled, each connection from its own random start) for `warmup` + `seconds`;
    only requests that start after the warm-up are recorded. Meant to run in a process of its own."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    requests = [request_bytes(host, port, path, headers) for path in paths]
    return asyncio.run(_run(host, port, requests, connections, seconds, warmup))


async def _run(
    host: str, port: int, requests: list[bytes], connections: int, seconds: float, warmup: float
) -> LoadResult:
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    record_from, deadline = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = await asyncio.gather(
        *(
            _connection(
                host,
                port,
                requests,
                random.randrange(len(requests)),
                record_from,
                deadline,
                latencies,
                statuses,
            )
            for _ in range(connections)
        )
    )
    return LoadResult(seconds, latencies, sum(errors), statuses, _cpu_seconds() - cpu_before)


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    first: int,
    record_from: float,
    deadline: float,
    latencies: list[float],
    statuses: dict[int, int],
) -> int:
    """One keep-alive connection in a closed loop; returns the number of failed requests."""
    errors, index = 0, first
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (started := time.perf_counter()) < deadline:
            writer.write(requests[index % len(requests)])
            index += 1
            try:
                status = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if started >= record_from:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                errors += status >= 400
    finally:
        writer.close()
    return errors


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("response without Content-Length")
    await reader.readexactly(length)
    return status


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
