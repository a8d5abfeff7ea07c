"""A request's body as a plain iterator of chunks, for the sync routes that stream uploads to disk
(`POST /v1/datasets`, tus `PATCH /v1/uploads/{id}`) without holding the body in memory."""

from __future__ import annotations

from collections.abc import Iterator

import anyio.from_thread
from fastapi import Request


def request_body(request: Request) -> Iterator[bytes]:
    """The request body chunk by chunk, read from this sync route's worker thread (the stream itself is
    the event loop's)."""
    stream = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk
