"""A real webhook receiver on loopback (http.server in a thread) that checks every signature itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Standard Webhooks receivers reject timestamps further than this from their clock.
TOLERANCE_S = 300


def signature_is_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does, written here with hmac directly: any `v1,` signature in the header that
    matches HMAC-SHA256(base64-decoded secret, "{id}.{timestamp}.{body}"), and a recent timestamp."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return False
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    offered = [s.split(",", 1)[1] for s in headers["webhook-signature"].split(" ") if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, s) for s in offered)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool
    answered: int

    @property
    def msg_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def type(self) -> str:
        return str(json.loads(self.body)["type"])


class Receiver:
    """Records every POST; answers `fail_status` to the first request of each webhook-id when
    `fail_first` is set, 204 otherwise (or `fail_status` always with `always_fail`)."""

    def __init__(
        self, *, fail_first: bool = False, always_fail: bool = False, fail_status: int = 500
    ) -> None:
        self.secret = ""
        self.fail_first, self.always_fail, self.fail_status = fail_first, always_fail, fail_status
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            seen = any(r.msg_id == headers.get("webhook-id") for r in self.received)
            failing = self.always_fail or (self.fail_first and not seen)
            status = self.fail_status if failing else 204
            signed = bool(self.secret) and signature_is_valid(self.secret, headers, body)
            self.received.append(Received(path, headers, body, signed, status))
            return status

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


@contextmanager
def running_receiver(receiver: Receiver) -> Iterator[str]:
    """Serve `receiver` on 127.0.0.1 (a free port) in a thread; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.answer(self.path, headers, body)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("location", "/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
