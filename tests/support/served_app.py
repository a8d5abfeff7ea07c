"""An app served by a real uvicorn on a free loopback port, in a thread of the test process: for tests of
what only a real server shows (connections, slow clients, concurrency), with the app's context at hand."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from tests.support.ports import free_port


@contextmanager
def served(app: FastAPI) -> Iterator[int]:
    """Serve `app` until the block ends; yields its port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def send_head(
    port: int, method: str, path: str, headers: dict[str, str], body_start: bytes = b""
) -> socket.socket:
    """Open a connection and send a request's head and the first bytes of its body, then stop: a client
    that has gone quiet mid-request. The socket's reads wait at most 30 s."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body_start)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 30 s pass)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the one response the server sends on `sock` (its Content-Length long)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def wait_for(condition: Callable[[], bool], what: str, *, timeout: float = 30) -> None:
    """Wait until `condition()` is true; fail naming `what` after `timeout` seconds (a ceiling)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)
