"""Server-Sent Events for the SDK: httpx-sse decodes the event-stream format (fields, ids, dispatch on a
blank line); this adds the two things the SDK needs that its `EventSource.iter_sse` does not give.

Measured with httpx-sse 0.4.3 on our server's bytes (`id: 1 … data: {…}`, then `: keepalive`, blank):
iter_sse drops comment lines, so `MapoClient.wait` could not check its deadline while a job is silent;
and at the blank line after a comment it dispatches an event with no data and the previous id (the
W3C format says not to dispatch an empty data buffer), which the SDK would then parse as JSON. So we
feed lines to its decoder ourselves (a private module: pyproject holds httpx-sse below 0.5)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from httpx_sse._decoders import SSEDecoder


@dataclass(frozen=True)
class SSEMessage:
    """One dispatched message; a keepalive comment is a message with `comment=True` and no data."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: bool = False


def parse_sse(lines: Iterable[str]) -> Iterator[SSEMessage]:
    """Yield each message of an event stream, given its lines without line terminators. A message cut
    off before its blank line is never dispatched (as the format says)."""
    decoder = SSEDecoder()
    for line in lines:
        if line.startswith(":"):
            # Comments keep the connection alive; surfacing them lets a caller check its deadline.
            yield SSEMessage(comment=True)
            continue
        event = decoder.decode(line)
        if event is not None and event.data:
            yield SSEMessage(event=event.event, data=event.data, id=event.id or None)
