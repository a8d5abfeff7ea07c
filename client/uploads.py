"""Sending a dataset file in parts over the service's tus endpoints (/v1/uploads), resuming after a
dropped connection from the offset the server holds, and then making it a dataset.

The upload's URL is remembered in a small state file keyed by the server, the file's path, size and
modification time, so that running the same `mapo datasets upload` again after it was killed resumes
too, without re-sending what arrived.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from client.sdk import MapoError

TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
DEFAULT_PART_BYTES = 16 << 20
# Consecutive failures (no byte accepted in between) before giving up; waits grow 1, 2, 4 ... 30 s.
DEFAULT_RETRIES = 8
MAX_WAIT_S = 30.0

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (bytes the server holds, total)
JSON = dict[str, Any]


def default_state_file() -> Path:
    root = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(root) / "mapo" / "uploads.json"


@dataclass
class Transport:
    """How to talk to the service: its base URL, the HTTP client and the auth headers."""

    http: httpx.Client
    base_url: str
    headers: dict[str, str]
    raise_for_error: Callable[[httpx.Response], None]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **TUS_HEADERS, **kwargs.pop("headers", {})}
        return self.http.request(method, self.base_url + path, headers=headers, **kwargs)


class ResumableUpload:
    """One file sent to the service in parts; `run` returns the dataset it became."""

    def __init__(
        self,
        transport: Transport,
        path: Path,
        *,
        part_bytes: int = DEFAULT_PART_BYTES,
        retries: int = DEFAULT_RETRIES,
        on_progress: Progress | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.transport, self.path = transport, path
        # One stat for the size sent and the state key, so the two describe the same version of the file.
        stat = path.stat()
        self.size = stat.st_size
        if part_bytes < 1:
            raise ValueError(f"part_bytes must be positive, not {part_bytes}")
        self.part_bytes, self.retries = part_bytes, retries
        self.on_progress = on_progress or (lambda held, total: None)
        self.state = _StateFile(state_file or default_state_file())
        self.state_key = f"{transport.base_url} {path.resolve()} {stat.st_size} {stat.st_mtime_ns}"

    def run(self, fields: JSON) -> JSON:
        """Send what the server lacks, then make the upload a dataset with `fields` (name, kind, ...)."""
        upload_id = self._retrying(self._open)
        held = self._retrying(lambda: self._offset(upload_id))
        failures = 0
        while held < self.size:
            self.on_progress(held, self.size)
            try:
                held = self._send_part(upload_id, held)
                failures = 0
            except (httpx.TransportError, _Retry):
                failures = self._wait(failures)
                held = self._retrying(lambda: self._offset(upload_id))
        self.on_progress(held, self.size)
        dataset = self._retrying(lambda: self._make_dataset(upload_id, fields))
        self.state.forget(self.state_key)
        return dataset

    def _open(self) -> str:
        """The upload this file already has on the server, or a new one."""
        known = self.state.get(self.state_key)
        if known is not None:
            response = self.transport.request("HEAD", f"/v1/uploads/{known}")
            if response.status_code == 200:
                return known
            _check_retryable(response)
            self.state.forget(self.state_key)  # expired or deleted: start over
        filename = base64.b64encode(self.path.name.encode()).decode()
        headers = {"Upload-Length": str(self.size), "Upload-Metadata": f"filename {filename}"}
        response = self.transport.request("POST", "/v1/uploads", headers=headers)
        _check_retryable(response)
        self.transport.raise_for_error(response)
        upload_id = cast(str, response.json()["id"])
        self.state.remember(self.state_key, upload_id)
        return upload_id

    def _offset(self, upload_id: str) -> int:
        response = self.transport.request("HEAD", f"/v1/uploads/{upload_id}")
        _check_retryable(response)
        self.transport.raise_for_error(response)
        return int(response.headers["Upload-Offset"])

    def _send_part(self, upload_id: str, offset: int) -> int:
        with self.path.open("rb") as f:
            f.seek(offset)
            part = f.read(self.part_bytes)
        headers = {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        response = self.transport.request("PATCH", f"/v1/uploads/{upload_id}", content=part, headers=headers)
        if response.status_code == 409 and _code(response) == "upload_offset_mismatch":
            raise _Retry  # a part whose answer was lost did arrive: ask for the offset again
        _check_retryable(response)
        self.transport.raise_for_error(response)
        return int(response.headers["Upload-Offset"])

    def _make_dataset(self, upload_id: str, fields: JSON) -> JSON:
        response = self.transport.request("POST", f"/v1/uploads/{upload_id}/dataset", json=fields)
        _check_retryable(response)
        self.transport.raise_for_error(response)
        return cast(JSON, response.json())

    def _retrying(self, call: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return call()
            except (httpx.TransportError, _Retry):
                failures = self._wait(failures)

    def _wait(self, failures: int) -> int:
        if failures >= self.retries:
            raise UploadInterrupted(
                f"{self.path.name}: the server could not be reached {failures} times in a row; "
                "run the same upload again to resume it"
            )
        time.sleep(min(2.0**failures, MAX_WAIT_S))
        return failures + 1


class UploadInterrupted(MapoError):
    """The service stayed unreachable; what it received is kept and the next run resumes from it."""


class _Retry(Exception):
    """An answer that says "try again" (a restarting server, a busy upload)."""


def _check_retryable(response: httpx.Response) -> None:
    if response.status_code in (502, 503, 504) or _code(response) == "upload_busy":
        raise _Retry


def _code(response: httpx.Response) -> str | None:
    try:
        return cast(str | None, response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


class _StateFile:
    """Upload ids by file, in a JSON file written whole (a crash leaves the old one or the new one)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def remember(self, key: str, upload_id: str) -> None:
        self._write(self._read() | {key: upload_id})

    def forget(self, key: str) -> None:
        entries = self._read()
        if entries.pop(key, None) is not None:
            self._write(entries)

    def _read(self) -> dict[str, str]:
        try:
            entries = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def _write(self, entries: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pending = self.path.with_suffix(f".{os.getpid()}.tmp")
        pending.write_text(json.dumps(entries, indent=1))
        os.replace(pending, self.path)
