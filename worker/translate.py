"""Trainer events → database writes. Pure: no session, no clock; the recorder applies what this returns.

Paths the trainer reports are absolute on this machine; users see storage keys instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.repositories.events import NewEvent
from core.repositories.metrics import MetricPoint
from trainer.events import (
    Artifact,
    Caching,
    Checkpoint,
    Compile,
    Evaluation,
    Event,
    Finished,
    Preparing,
    Sample,
    Started,
    Step,
    to_dict,
)


@dataclass(frozen=True)
class SampleRow:
    step: int
    index: int
    prompt: str
    with_lora: bool
    storage_key: str


@dataclass(frozen=True)
class CheckpointRow:
    step: int
    storage_key: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class ArtifactRow:
    format: str
    path: Path
    storage_key: str


@dataclass
class Writes:
    """Everything one batch of events asks the database to record."""

    events: list[NewEvent] = field(default_factory=list)
    metrics: list[MetricPoint] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    samples: list[SampleRow] = field(default_factory=list)
    artifacts: list[ArtifactRow] = field(default_factory=list)
    last_step: Step | None = None
    total_steps: int | None = None


def translate(
    events: list[Event], key_of: Callable[[Path], str], *, times: Sequence[datetime] | None = None
) -> Writes:
    """Rows for `events`, in order; `key_of` maps a trainer path to its storage key; `times[i]`, if
    given, is when `events[i]` happened (else each event is stamped when written)."""
    writes = Writes()
    for i, event in enumerate(events):
        data = _public_data(event, key_of)
        at = times[i] if times is not None else None
        writes.events.append(NewEvent(event.type, describe(event), data=data, created_at=at))
        _add_rows(writes, event, key_of)
    return writes


def _add_rows(writes: Writes, event: Event, key_of: Callable[[Path], str]) -> None:
    if isinstance(event, Started):
        writes.total_steps = event.total_steps
    elif isinstance(event, Step):
        writes.metrics += [MetricPoint(event.step, name, value) for name, value in event.metrics.items()]
        writes.last_step = event
    elif isinstance(event, Evaluation):
        writes.metrics += [MetricPoint(event.step, name, value) for name, value in event.metrics.items()]
    elif isinstance(event, Checkpoint):
        writes.checkpoints.append(CheckpointRow(event.step, key_of(Path(event.path)), event.metrics))
    elif isinstance(event, Sample):
        writes.samples += [
            SampleRow(event.step, index, image.prompt, image.with_lora, key_of(Path(image.path)))
            for index, image in enumerate(event.images)
        ]
    elif isinstance(event, Artifact):
        writes.artifacts.append(ArtifactRow(event.format, Path(event.path), key_of(Path(event.path))))


def describe(event: Event) -> str:
    """A one-line human message for the event log."""
    if isinstance(event, Preparing):
        side = "rejected" if event.kind == "targets" else "chosen"
        return (
            f"{event.ready}/{event.total} {side} images of the base model ready "
            f"({event.generated} drawn now, {event.reused} from an earlier run)"
        )
    if isinstance(event, Caching):
        return f"{event.ready}/{event.total} training pairs encoded into the latent cache"
    if isinstance(event, Started):
        if event.resumed_from_step:
            return f"resumed from the checkpoint of step {event.resumed_from_step}/{event.total_steps}"
        parallel = f" on {event.world_size} processes" if event.world_size > 1 else ""
        return (
            f"training {event.model_family} at {event.resolution}px on {event.num_train_pairs} pairs "
            f"({event.num_eval_pairs} held out){parallel}, {event.trainable_parameters:,} LoRA parameters, "
            f"latent cache {'on' if event.cache_latents else 'off'} ({event.cache_reason}), base weights "
            f"{event.base_precision}"
        )
    if isinstance(event, Compile):
        return (
            f"denoiser {'compiled' if event.compiled else 'left eager'} at step {event.step} ({event.reason})"
        )
    if isinstance(event, Step):
        return f"step {event.step}/{event.total_steps} loss {event.metrics.get('loss', float('nan')):.4f}"
    if isinstance(event, Checkpoint):
        return f"checkpoint saved at step {event.step}"
    if isinstance(event, Sample):
        kind = "LoRA" if any(i.with_lora for i in event.images) else "base-model"
        return f"{len(event.images)} {kind} validation images at step {event.step}"
    if isinstance(event, Evaluation):
        accuracy = event.metrics.get("heldout_accuracy", float("nan"))
        return f"held-out accuracy {accuracy:.3f} at step {event.step}"
    if isinstance(event, Artifact):
        return f"{event.format} adapter written"
    if isinstance(event, Finished):
        return (
            f"training {'stopped' if event.stopped else 'finished'} at step {event.step}/{event.total_steps}"
        )
    raise TypeError(f"unknown event {event!r}")


def _public_data(event: Event, key_of: Callable[[Path], str]) -> dict[str, Any]:
    data = to_dict(event)
    data.pop("type")
    if "path" in data:
        data["path"] = key_of(Path(data["path"]))
    for image in data.get("images", []):
        image["path"] = key_of(Path(image["path"]))
    return data
