"""A request's body handed to blocking code chunk by chunk, for the routes that stream uploads to disk
(`POST /v1/datasets`, tus `PATCH /v1/uploads/{id}`) without holding the body in memory.

The body is read on the event loop and only the writing of each chunk goes to a worker thread. Reading
it from a worker thread instead (a sync route pulling chunks through `anyio.from_thread`) held that thread
for as long as the client took to send: about 45 clients sending one byte every 2 s held all of
Starlette's threads (anyio's default limiter, 40 tokens, which every sync route and dependency shares)
and every other tenant's requests waited behind them."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable

import anyio.to_thread


async def write_body(body: AsyncIterable[bytes], sink: Callable[[bytes], None]) -> int:
    """Read `body` (a request's `stream()`) on the event loop and call `sink` with each chunk in a worker
    thread; returns the number of bytes read. A thread is held only while a chunk is being written, never
    while waiting for the client. Raises ClientDisconnect when the client goes away, and whatever `sink`
    raises."""
    received = 0
    async for chunk in body:
        if chunk:
            received += len(chunk)
            await anyio.to_thread.run_sync(sink, chunk)
    return received
