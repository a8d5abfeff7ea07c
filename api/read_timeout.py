"""A bound on how long a request body may pause: the per-connection read timeout that uvicorn lacks.

uvicorn's `--timeout-keep-alive` (5 s) closes only an idle connection *between* requests, and neither it
nor Starlette's `Request.stream()` bounds the wait for the next piece of a body once a request has begun:
a client sending one byte now and then keeps its request, and the upload slot it holds, for as long as it
likes. Here each wait for the next body message is bounded by `MAPO_REQUEST_READ_TIMEOUT_SECONDS`; past it
the request is answered 408 `request_timeout` and its connection closed.
"""

from __future__ import annotations

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ReadTimeoutMiddleware:
    def __init__(self, app: ASGIApp, *, timeout_seconds: float) -> None:
        self.app = app
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def bounded_receive() -> Message:
            nonlocal body_done
            if body_done:
                # After the body only a disconnect can come, and an event stream waits for it for as long
                # as the job runs: that wait is not a read.
                return await receive()
            with anyio.move_on_after(self.timeout_seconds) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                # An HTTPException, as the body limit raises: FastAPI passes those through when it
                # reads a JSON body (anything else it would turn into a 400).
                raise HTTPException(
                    408,
                    f"no part of the request body arrived for {self.timeout_seconds:g} s",
                    headers={"Connection": "close"},
                )
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)
