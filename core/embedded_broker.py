"""The embedded broker: kombu's filesystem transport, with message files named so that they sort in the
order they were sent.

kombu names a message file after `time.monotonic()` in milliseconds, without padding, and serves a queue's
files sorted as text. When that count gains a digit (16 min 40 s after boot, then 2 h 47 min, 27 h 47 min)
"1000000_…" sorts before "999999_…", and a job submitted after the boundary starts before jobs that had
waited for many minutes; after a reboot the count starts again from zero, under the messages left over.
Here the name starts with the wall clock in nanoseconds, zero-padded to a fixed width, so text order is
sending order, across processes and restarts alike. Everything else is kombu's.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

# The class path Celery's `broker_transport` setting takes for a `filesystem://` broker.
TRANSPORT = f"{__name__}:Transport"
# Nanoseconds since the epoch have 19 digits until the year 2286.
_TIME_DIGITS = 20


def message_file_name(queue: str, *, sent_at_ns: int, unique: str) -> str:
    """The file name of a message sent to `queue` at `sent_at_ns` (ns since the epoch); names sort as text
    in the order of `sent_at_ns`. kombu's reader takes everything after the first dot as the queue name,
    so `unique` must not contain one."""
    return f"{sent_at_ns:0{_TIME_DIGITS}d}_{unique}.{queue}.msg"


class Channel(filesystem.Channel):
    # kombu's two bases name the second argument differently (message, payload): no signature fits both.
    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put `message` onto `queue`: kombu's own write, under a name that sorts in sending order."""
        name = message_file_name(queue, sent_at_ns=time.time_ns(), unique=uuid.uuid4().hex)
        path = os.path.join(self.data_folder_out, name)
        body: bytes = str_to_bytes(dumps(message))  # type: ignore[no-untyped-call]
        try:
            with open(path, "wb", buffering=0) as file:
                filesystem.lock(file, filesystem.LOCK_EX)  # type: ignore[no-untyped-call]
                try:
                    file.write(body)
                finally:
                    filesystem.unlock(file)  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
