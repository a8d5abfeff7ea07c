"""What the `mapo` command shows: tables of datasets, jobs and workers, and the live progress of a job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from client.sdk import JSON, MapoClient


def keyed_table(key: str, keys: list[str], *headers: str, whole: dict[str, list[str]] | None = None) -> Table:
    """A table whose first column holds what the next command takes (an id, a name): it never shrinks,
    wraps or ends in "…" (a cut id cannot be copied), nor do the columns of `whole` (header -> values);
    on a narrow terminal the other columns wrap first."""
    kept = {key: keys, **(whole or {})}
    table = Table()
    for header in (key, *headers):
        if header in kept:
            table.add_column(header, no_wrap=True, min_width=max(map(len, [header, *kept[header]])))
        else:
            table.add_column(header, overflow="fold")
    return table


def datasets_table(datasets: list[JSON]) -> Table:
    """id, name, status, pairs and creation time of each dataset."""
    table = keyed_table("id", [d["id"] for d in datasets], "name", "status", "pairs", "created")
    for d in datasets:
        table.add_row(d["id"], d["name"], d["status"], str(d["num_pairs"]), _local_time(d["created_at"]))
    return table


def jobs_table(jobs: list[JSON]) -> Table:
    """id, status, progress, eta and creation time of each job."""
    table = keyed_table("id", [job["id"] for job in jobs], "status", "progress", "eta", "created")
    for job in jobs:
        progress = job["progress"]
        table.add_row(
            job["id"],
            job["status"],
            f"{progress['step']}/{progress['total_steps']}",
            format_seconds(progress["eta_seconds"]) if job["status"] == "running" else "-",
            _local_time(job["created_at"]),
        )
    return table


def workers_table(workers: list[JSON]) -> Table:
    """id, status, queues, device/GPUs and last heartbeat of each worker."""
    table = keyed_table("id", [w["id"] for w in workers], "status", "queues", "gpus", "version", "last seen")
    for w in workers:
        gpus = f"{w['gpu_count']}x {w['gpu_model']} ({w['gpu_memory_mb']} MiB)" if w["gpu_count"] else "cpu"
        last_seen = _local_time(w["last_seen_at"], seconds=True)
        table.add_row(w["id"], w["status"], ",".join(w["queues"]), gpus, w["version"], last_seen)
    return table


def base_models_table(models: list[JSON]) -> Table:
    """name, family, prediction type, native resolution and family-specific fields of each base model."""
    names = [m["name"] for m in models]
    table = keyed_table("name", names, "family", "predicts", "native px", "family fields")
    for m in models:
        native = str(m["native_resolution"]) if m["native_resolution"] else "-"
        fields = ", ".join(m["fields"]) or "-"
        table.add_row(m["name"], m["family"] or "unknown", m["prediction_type"] or "-", native, fields)
    return table


def keys_table(keys: list[JSON]) -> Table:
    """id, tenant, public prefix, label, creation, last use and revocation of each API key."""
    headers = ("tenant", "prefix", "label", "created", "last used", "revoked")
    # `mapo keys revoke` takes the id or the prefix.
    prefixes = [f"{key['prefix']}…" for key in keys]
    table = keyed_table("id", [key["id"] for key in keys], *headers, whole={"prefix": prefixes})
    for key, prefix in zip(keys, prefixes, strict=True):
        table.add_row(
            key["id"],
            key["tenant"],
            prefix,
            key["label"],
            _local_time(key["created_at"]),
            _local_time(key["last_used_at"]) if key["last_used_at"] else "-",
            _local_time(key["revoked_at"]) if key["revoked_at"] else "-",
        )
    return table


def format_seconds(seconds: float | None) -> str:
    """`1h02m`, `3m07s`, `12s`, or `-` when unknown."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def event_line(event: JSON) -> str:
    """One log line: time, level (unless info), type and message."""
    level = "" if event["level"] == "info" else f"{event['level'].upper()} "
    return f"{_local_time(event['created_at'], seconds=True)} {level}{event['type']}: {event['message']}"


def watch_job(mapo: MapoClient, job_id: str, console: Console) -> JSON:
    """Show the job's log so far, then a live bar (step/total, loss, ETA) until it ends; returns the job."""
    job = mapo.get_job(job_id)
    last_id = None
    for event in mapo.iter_events(job_id, follow=False):
        last_id = event["id"]
        if event["type"] != "step":
            console.print(event_line(event), highlight=False)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        # The bar starts at the current step so the ETA is measured on live steps, not on the replay.
        task = progress.add_task(
            job_id,
            total=job["progress"]["total_steps"] or None,
            completed=job["progress"]["step"],
            loss=_loss(job["latest_metrics"]),
        )
        for event in mapo.iter_events(job_id, after=last_id):
            _show(progress, task, event)
    return mapo.get_job(job_id)


@contextmanager
def upload_progress(filename: str) -> Iterator[Callable[[int, int], None]]:
    """A bar on stderr (bytes the server holds, speed, time left) for a resumable upload; yields its
    `on_progress(held, total)`. A resumed upload starts the bar at what was already there."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(filename, total=None)

        def on_progress(held: int, total: int) -> None:
            bar.update(task, completed=held, total=total)

        yield on_progress


def _show(progress: Progress, task: TaskID, event: JSON) -> None:
    if event["type"] == "step":
        data = event["data"]
        progress.update(task, completed=data["step"], total=data["total_steps"], loss=_loss(data["metrics"]))
    else:
        progress.console.print(event_line(event), highlight=False)


def _loss(metrics: dict[str, Any]) -> str:
    loss = metrics.get("loss")
    return "-" if loss is None else f"{loss:.4f}"


def _local_time(iso: str, *, seconds: bool = False) -> str:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    # The API's times are UTC; an offset-less one (SQLite drops it) must not be read as local time.
    moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
