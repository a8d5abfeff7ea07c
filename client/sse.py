"""A minimal Server-Sent Events reader: lines in, complete messages out (the W3C event-stream format)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SSEMessage:
    """One dispatched message; a keepalive comment is a message with `comment=True` and no data."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: bool = False


def parse_sse(lines: Iterable[str]) -> Iterator[SSEMessage]:
    """Yield each message of an event stream, given its lines without line terminators."""
    event, data, last_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                yield SSEMessage(event=event, data="\n".join(data), id=last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            # Comments keep the connection alive; surfacing them lets a caller check its deadline.
            yield SSEMessage(comment=True)
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
    # A message without its closing blank line was cut off mid-way; the spec says to drop it.
