"""Python SDK of the mapo-service v1 REST API: datasets, jobs, events, outputs. httpx only, no torch.

    with MapoClient("http://127.0.0.1:8000", api_key) as mapo:
        dataset = mapo.upload_dataset("pairs.zip")
        job = mapo.create_job(dataset_id=dataset["id"], base_model="tiny-sdxl")
        mapo.wait(job["id"], timeout=600, on_event=print)
        mapo.download_adapter(job["id"], "adapter/")

Responses are the API's JSON objects as dicts (see the OpenAPI schema at /docs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast

import httpx

from client.sse import parse_sse

JSON = dict[str, Any]
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20
# Waits before each consecutive reconnect of an event stream; past the last one the error is raised.
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# A stream that ends while its job is still running (e.g. a proxy cut it) is reopened after this pause.
REOPEN_PAUSE_S = 0.5
_FILENAME = re.compile(r'filename="?([^";]+)"?')


class MapoError(Exception):
    """Base of every error the SDK raises on purpose."""


class MapoAPIError(MapoError):
    """The API answered with an error: `{"error": {"code", "message", "param", ...}}` and a 4xx/5xx."""

    def __init__(
        self, status: int, code: str, message: str, param: str | None = None, *, body: JSON | None = None
    ) -> None:
        suffix = f" (param: {param})" if param else ""
        super().__init__(f"{status} {code}: {message}{suffix}")
        self.status, self.code, self.message, self.param = status, code, message, param
        self.body: JSON = body or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> MapoAPIError:
        """Parse the error shape; a body that is not in it (e.g. from a proxy) still gives an error."""
        try:
            body = response.json()["error"]
            return cls(response.status_code, body["code"], body["message"], body.get("param"), body=body)
        except (ValueError, KeyError, TypeError):
            text = response.text[:200] or response.reason_phrase
            return cls(response.status_code, "http_error", text)


class ChecksumMismatch(MapoError):
    """A downloaded file's sha256 differs from the one the API reported (the file is not kept)."""


@dataclass(frozen=True)
class Page:
    """One page of a list; pass the last item's id as `after` for the next page when `has_more`."""

    data: list[JSON]
    has_more: bool


class MapoClient:
    """A client of one mapo-service; pass `http` to reuse a client (e.g. FastAPI's TestClient)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Datasets

    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        kind: Literal["pairs", "targets", "avoid"] = "pairs",
        trigger_word: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Upload a .zip, .tar(.gz) or .parquet preference dataset in one request (streamed from disk);
        returns it ready. `kind` "targets" or "avoid": one image per row, the other side drawn by the
        job's base model; `trigger_word` for captioned images (see the API). A repeated
        `idempotency_key` with the same file, name and kind returns the same dataset. For large files
        prefer `upload_dataset_resumable`."""
        path = Path(path)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = _dataset_fields(name=name, kind=kind, trigger_word=trigger_word)
        with path.open("rb") as stream:
            files = {"file": (path.name, stream, "application/octet-stream")}
            return self._json("POST", "/v1/datasets", files=files, data=data, headers=headers)

    def upload_dataset_resumable(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        kind: Literal["pairs", "targets", "avoid"] = "pairs",
        trigger_word: str | None = None,
        part_bytes: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        state_file: str | os.PathLike[str] | None = None,
    ) -> JSON:
        """Upload a dataset in parts (the tus protocol), resuming after dropped connections and server
        restarts from the bytes the server holds, then make it a dataset; returns it ready.
        `on_progress(held, total)` is called after each part. The upload's id is kept in `state_file`
        (default: $XDG_STATE_HOME/mapo/uploads.json), so calling this again for the same file after a
        crash resumes it. UploadInterrupted if the server stays unreachable."""
        from client.uploads import DEFAULT_PART_BYTES, ResumableUpload, Transport

        transport = Transport(self._http, self.base_url, self._headers, _raise_for_error)
        upload = ResumableUpload(
            transport,
            Path(path),
            part_bytes=part_bytes or DEFAULT_PART_BYTES,
            on_progress=on_progress,
            state_file=Path(state_file) if state_file is not None else None,
        )
        return upload.run(_dataset_fields(name=name, kind=kind, trigger_word=trigger_word))

    def get_dataset(self, dataset_id: str) -> JSON:
        """One dataset: pairs, bytes, sha256 and a preview."""
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def list_datasets(self, *, limit: int = 20, after: str | None = None) -> Page:
        """A page of your datasets, newest first."""
        return self._page("/v1/datasets", {"limit": limit, "after": after})

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset and its files (409 while an unfinished job uses it)."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # Jobs

    def create_job(
        self,
        *,
        dataset_id: str,
        base_model: str,
        method: str = "mapo",
        hyperparameters: Mapping[str, Any] | None = None,
        validation: Mapping[str, Any] | None = None,
        webhooks: Sequence[Mapping[str, Any]] = (),
        metadata: Mapping[str, str] | None = None,
        seed: int = 0,
        queue: str | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Create a training job (on `queue`, default the server's first; `priority` 0-9, higher first);
        a repeated `idempotency_key` with the same body returns the same job."""
        body = _job_body(
            dataset_id=dataset_id,
            base_model=base_model,
            method=method,
            hyperparameters=hyperparameters,
            validation=validation,
            webhooks=webhooks,
            metadata=metadata,
            seed=seed,
            queue=queue,
            priority=priority,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def estimate_job(self, **job: Any) -> JSON:
        """What the job `create_job(**job)` would create would take, creating nothing: its recipe, peak
        memory, and time, cost and the workers that could take it per device class."""
        return self._json("POST", "/v1/jobs/estimate", json=_job_body(**job))

    def webhook_secret(self) -> JSON:
        """Your webhook signing secret (`whsec_…`), created on first use; verify deliveries with it."""
        return self._json("GET", "/v1/webhooks/secret")

    def rotate_webhook_secret(self) -> JSON:
        """A new signing secret; deliveries carry the old one's signature too for a grace period."""
        return self._json("POST", "/v1/webhooks/secret/rotate")

    def webhook_deliveries(self, job_id: str) -> JSON:
        """The webhook deliveries of a job, each with its attempts."""
        return self._json("GET", f"/v1/jobs/{job_id}/webhook-deliveries")

    def get_job(self, job_id: str) -> JSON:
        """One job: status, progress {step, total_steps, eta_seconds}, error, latest metrics."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self, *, status: str | None = None, limit: int = 20, after: str | None = None) -> Page:
        """A page of your jobs, newest first, optionally only those in `status`."""
        return self._page("/v1/jobs", {"status": status, "limit": limit, "after": after})

    def list_workers(self, *, status: str | None = None) -> list[JSON]:
        """The training workers (shared by every tenant): queues, GPUs, and online/offline/stopped."""
        data: list[JSON] = self._json("GET", "/v1/workers", params={"status": status} if status else {})[
            "data"
        ]
        return data

    def list_base_models(self) -> list[JSON]:
        """The base models this server offers: name, family, native resolution and accepted fields."""
        data: list[JSON] = self._json("GET", "/v1/base-models")["data"]
        return data

    def cancel_job(self, job_id: str) -> JSON:
        """Request cancellation (idempotent); MapoAPIError 409 once the job has succeeded or failed."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its events, metrics and stored outputs (MapoAPIError 409 until it
        has finished: cancel it first)."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    # Events

    def events(self, job_id: str, *, after: int | None = None, limit: int = 100) -> Page:
        """One page of the job's event log, oldest first, after event id `after`."""
        return self._page(f"/v1/jobs/{job_id}/events", {"after": after, "limit": limit})

    def iter_events(self, job_id: str, *, after: int | None = None, follow: bool = True) -> Iterator[JSON]:
        """Every event after `after`; with `follow`, live until the job has finished (reconnecting)."""
        if not follow:
            yield from self._paged_events(job_id, after)
            return
        for event in self._follow(job_id, after):
            if event is not None:
                yield event

    def wait(self, job_id: str, *, timeout: float, on_event: Callable[[JSON], None] | None = None) -> JSON:
        """Follow the job until it finishes and return it; TimeoutError after `timeout` seconds (checked
        at each event or keepalive, at least every 15 s). `on_event` sees every event from the first."""
        deadline = time.monotonic() + timeout
        with contextlib.closing(self._follow(job_id, None)) as events:
            for event in events:
                if event is not None and on_event is not None:
                    on_event(event)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout:g}s")
        return self.get_job(job_id)

    def _paged_events(self, job_id: str, after: int | None) -> Iterator[JSON]:
        while True:
            page = self.events(job_id, after=after, limit=200)
            yield from page.data
            if not page.has_more or not page.data:
                return
            after = page.data[-1]["id"]

    def _follow(self, job_id: str, after: int | None) -> Generator[JSON | None, None, None]:
        """Events from the SSE stream, None at each keepalive or reconnect (so callers can check clocks)."""
        failures = 0
        while True:
            try:
                for event in self._stream_events(job_id, after):
                    if event is not None:
                        after, failures = event["id"], 0
                    yield event
            except httpx.TransportError:
                if failures == len(RECONNECT_DELAYS_S):
                    raise
                time.sleep(RECONNECT_DELAYS_S[failures])
                failures += 1
                yield None
                continue
            if self.get_job(job_id)["status"] in FINISHED_STATUSES:
                # The server ends the stream only after a finished job's last event; read a page anyway
                # in case an event landed between its final poll and our status check.
                yield from self._paged_events(job_id, after)
                return
            time.sleep(REOPEN_PAUSE_S)
            yield None

    def _stream_events(self, job_id: str, after: int | None) -> Iterator[JSON | None]:
        headers = {**self._headers, "Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        url = self._url(f"/v1/jobs/{job_id}/events")
        with self._http.stream("GET", url, headers=headers) as response:
            _raise_for_error(response)
            for message in parse_sse(response.iter_lines()):
                yield None if message.comment else cast(JSON, json.loads(message.data))

    # Outputs

    def metrics(self, job_id: str, *, max_points: int | None = None) -> dict[str, JSON]:
        """Metric series per name: `{"loss": {"steps": [...], "values": [...]}, ...}`; with `max_points`,
        each longer series thinned by the server to at most that many points, its first and last kept
        (for plotting: a long job's whole series is large and slow)."""
        params = {} if max_points is None else {"max_points": max_points}
        body = self._json("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        return cast(dict[str, JSON], body["series"])

    def checkpoints(self, job_id: str) -> list[JSON]:
        """Checkpoints kept on disk, with step and metrics."""
        return self._page(f"/v1/jobs/{job_id}/checkpoints", {}).data

    def samples(self, job_id: str) -> list[JSON]:
        """Validation images (step, prompt index, prompt, with_lora, url)."""
        return self._page(f"/v1/jobs/{job_id}/samples", {}).data

    def download_sample(self, job_id: str, sample_id: int, dest: str | os.PathLike[str]) -> Path:
        """Save one validation image to `dest` (a directory: existing or ending in '/'; else a file)."""
        path = f"/v1/jobs/{job_id}/samples/{sample_id}/image"
        return self._download(path, dest, params={}, default_name=f"sample-{sample_id}.png", verify=False)

    def download_adapter(
        self, job_id: str, dest: str | os.PathLike[str], *, format: str = "diffusers"
    ) -> Path:
        """Stream the LoRA to `dest` (a directory: existing or ending in '/'; else a file) and return its
        path; ChecksumMismatch (and nothing kept) if its sha256 is not the one the API reports."""
        return self._download(
            f"/v1/jobs/{job_id}/adapter",
            dest,
            params={"format": format},
            default_name=f"{job_id}_{format}.safetensors",
            verify=True,
        )

    # Plumbing

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        response = self._http.request(method, self._url(path), headers=headers, **kwargs)
        _raise_for_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        return cast(JSON, self._request(method, path, **kwargs).json())

    def _page(self, path: str, params: Mapping[str, Any]) -> Page:
        query = {key: value for key, value in params.items() if value is not None}
        body = self._json("GET", path, params=query)
        return Page(data=body["data"], has_more=body["has_more"])

    def _download(
        self,
        path: str,
        dest: str | os.PathLike[str],
        *,
        params: Mapping[str, str],
        default_name: str,
        verify: bool,
    ) -> Path:
        # A service with presigned downloads redirects to its object store (httpx drops our API key on
        # the way there); its checksum then comes with the redirect.
        url, headers = self._url(path), self._headers
        with self._http.stream("GET", url, headers=headers, params=params, follow_redirects=True) as response:
            _raise_for_error(response)
            target = _target_path(dest, _filename(response) or default_name)
            partial = target.with_name(target.name + ".partial")
            try:
                digest = _save(response, partial)
                expected = _reported_checksum(response)
                if verify and digest != expected:
                    raise ChecksumMismatch(f"{path}: sha256 {digest} does not match the reported {expected}")
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        return partial.replace(target)


def _dataset_fields(*, name: str | None, kind: str, trigger_word: str | None) -> dict[str, str]:
    optional = {"name": name, "trigger_word": trigger_word}
    return {"kind": kind} | {field: value for field, value in optional.items() if value is not None}


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_error:
        response.read()
        raise MapoAPIError.from_response(response)


def _reported_checksum(response: httpx.Response) -> str | None:
    """The sha256 the API reported: on the file's response, or on the redirect that led to it."""
    for each in (response, *reversed(response.history)):
        checksum: str | None = each.headers.get("x-checksum-sha256")
        if checksum:
            return checksum
    return None


def _filename(response: httpx.Response) -> str | None:
    match = _FILENAME.search(response.headers.get("content-disposition", ""))
    # Only the last path component: a server must never make us write outside `dest`.
    return Path(match.group(1)).name if match else None


def _target_path(dest: str | os.PathLike[str], filename: str) -> Path:
    path = Path(dest)
    if path.is_dir() or str(dest).endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
        return path / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(response: httpx.Response, path: Path) -> str:
    """Write the body to `path` chunk by chunk and return its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for chunk in response.iter_bytes(CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _job_body(
    *,
    dataset_id: str,
    base_model: str,
    method: str = "mapo",
    hyperparameters: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
    webhooks: Sequence[Mapping[str, Any]] = (),
    metadata: Mapping[str, str] | None = None,
    seed: int = 0,
    queue: str | None = None,
    priority: int = 0,
) -> JSON:
    """The POST /v1/jobs body of these fields (queue and webhooks only when given)."""
    body: JSON = {
        "dataset_id": dataset_id,
        "base_model": base_model,
        "method": method,
        "hyperparameters": dict(hyperparameters or {}),
        "validation": dict(validation or {}),
        "metadata": dict(metadata or {}),
        "seed": seed,
        "priority": priority,
    }
    if queue is not None:
        body["queue"] = queue
    if webhooks:
        body["webhooks"] = [dict(hook) for hook in webhooks]
    return body
