"""Typed events that `train()` emits. Plain dataclasses, no torch, so the worker can import them cheaply.

Every event serialises with `to_dict()` to `{"type": ..., **fields}`; paths are absolute strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.families import FamilyName


@dataclass(frozen=True)
class Preparing:
    """Progress of completing a targets or avoid dataset: the base model draws each pair's missing image.

    `ready` of `total` pairs have their image; `generated` were drawn in this run, `reused` were found
    from an earlier run (a resumed job, or another job with the same base model and settings).
    """

    kind: Literal["targets", "avoid"]
    total: int
    ready: int
    generated: int
    reused: int
    type: Literal["preparing"] = "preparing"


@dataclass(frozen=True)
class Caching:
    """Progress of encoding the training pairs and prompts into the latent cache, before the first step."""

    ready: int
    total: int
    type: Literal["caching"] = "caching"


@dataclass(frozen=True)
class Started:
    """Training began (or resumed: `resumed_from_step` > 0).

    `world_size` processes train data-parallel; `effective_batch_size` pairs make one optimizer step
    (train_batch_size x world_size x gradient_accumulation_steps; None from a trainer that predates it).
    """

    total_steps: int
    resumed_from_step: int
    num_train_pairs: int
    num_eval_pairs: int
    model_family: FamilyName
    resolution: int
    mixed_precision: str
    trainable_parameters: int
    world_size: int = 1
    effective_batch_size: int | None = None
    cache_latents: bool = False
    cache_reason: str = ""
    # How the frozen denoiser and text encoders are held: "fp32", "bf16", "fp16", "int8", "nf4" or "fp8".
    base_precision: str = "fp32"
    text_encoder_precision: str = "fp32"
    type: Literal["started"] = "started"


@dataclass(frozen=True)
class Compile:
    """Whether the denoiser's repeated blocks were compiled (torch.compile) before step `step` + 1, and why:
    the spec's choice, or for "auto" the measured step time against what compiling costs."""

    step: int
    compiled: bool
    reason: str
    type: Literal["compile"] = "compile"


@dataclass(frozen=True)
class Step:
    """One optimizer step finished; metrics are means over its micro-batches and, in a data-parallel
    run, over the processes (lr and step_time_s are the main process's)."""

    step: int
    total_steps: int
    metrics: dict[str, float]
    type: Literal["step"] = "step"


@dataclass(frozen=True)
class Checkpoint:
    """A complete, resumable checkpoint (also holding the LoRA weights of that step) is on disk."""

    step: int
    path: str
    metrics: dict[str, float] = field(default_factory=dict)
    type: Literal["checkpoint"] = "checkpoint"


@dataclass(frozen=True)
class SampleImage:
    prompt: str
    path: str
    with_lora: bool


@dataclass(frozen=True)
class Sample:
    """Validation images rendered at `step` (step 0 holds the base model's images, without LoRA)."""

    step: int
    images: list[SampleImage]
    type: Literal["sample"] = "sample"


@dataclass(frozen=True)
class Evaluation:
    """Held-out preference metrics at `step` (step 0 = the base model)."""

    step: int
    metrics: dict[str, float]
    type: Literal["evaluation"] = "evaluation"


@dataclass(frozen=True)
class Artifact:
    """A finished adapter file: `format` is "diffusers" or "kohya"."""

    path: str
    format: Literal["diffusers", "kohya"]
    type: Literal["artifact"] = "artifact"


@dataclass(frozen=True)
class Finished:
    """Training ended: `stopped` is True when `should_stop()` cut it short before `total_steps`."""

    step: int
    total_steps: int
    stopped: bool
    type: Literal["finished"] = "finished"


Event = (
    Preparing | Caching | Started | Compile | Step | Checkpoint | Sample | Evaluation | Artifact | Finished
)


_TYPES: dict[str, type[Any]] = {
    cls.type: cls
    for cls in (
        Preparing,
        Caching,
        Started,
        Compile,
        Step,
        Checkpoint,
        Sample,
        Evaluation,
        Artifact,
        Finished,
    )
}


def to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready dict of an event, `type` included."""
    return dataclasses.asdict(event)


def from_dict(data: dict[str, Any]) -> Event:
    """The event that `to_dict` made `data` from; raises ValueError on an unknown type or bad fields."""
    cls = _TYPES.get(data.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown event type {data.get('type')!r}")
    fields = {k: v for k, v in data.items() if k != "type"}
    if cls is Sample:
        fields["images"] = [SampleImage(**image) for image in fields.get("images", [])]
    try:
        event: Event = cls(**fields)
    except TypeError as exc:
        raise ValueError(f"bad {cls.__name__} event: {exc}") from exc
    return event
