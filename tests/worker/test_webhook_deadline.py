"""A webhook receiver that drips its answer's headers one byte at a time must not hold a sender thread
past MAPO_WEBHOOK_TIMEOUT_SECONDS: the timeout bounds the whole attempt, not each read."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from core.repositories.webhooks import AttemptResult
from worker.webhooks.sender import Message, post

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
DRIP_INTERVAL_S = 0.5  # far below the per-read timeout; the whole answer takes about 20 s


@pytest.fixture
def dripping_receiver() -> Iterator[str]:
    """A receiver on loopback that reads the request, then sends its answer one byte every half second."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in ANSWER:
                if stop.wait(DRIP_INTERVAL_S):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return  # the sender gave up and closed: what this test wants

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    listener.close()
    thread.join(timeout=10)


def test_a_receiver_dripping_its_headers_is_a_timeout_within_the_webhook_timeout(
    dripping_receiver: str,
) -> None:
    results: list[AttemptResult] = []
    done = threading.Event()

    def attempt() -> None:
        message = Message(url=dripping_receiver, body=b"{}", secrets=["whsec_" + "A" * 44])
        results.append(post(message, msg_id="msg_1", number=1, timeout=1.0))
        done.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert done.wait(15), "the attempt was still waiting for the dripping receiver"
    (result,) = results
    assert result.response_status is None and result.error == "no answer within 1 s"
