"""`mapo jobs create --estimate`: a job's estimate (POST /v1/jobs/estimate) as lines of text."""

from __future__ import annotations

from typing import Any

GiB = 2**30


def estimate_lines(estimate: dict[str, Any]) -> list[str]:
    """The recipe and peak memory, one line per device class (memory, fit, step and total time, cost,
    workers), and the smallest recipe."""
    memory = estimate["memory"]
    lines = [
        f"recipe: {recipe_words(estimate['recipe'])}",
        f"peak memory: device {_gib(memory['peak_device_bytes'])}, host {_gib(memory['peak_host_bytes'])}",
    ]
    if not estimate["devices"]:
        lines.append("no registered worker serves this job's queue")
    lines += [_device_line(device) for device in estimate["devices"]]
    smallest = estimate["smallest_memory"]["peak_device_bytes"]
    lines.append(f"smallest recipe: {recipe_words(estimate['smallest_recipe'])}, device {_gib(smallest)}")
    return lines


def recipe_words(recipe: dict[str, Any]) -> str:
    checkpointing = "on" if recipe["gradient_checkpointing"] else "off"
    return (
        f"base {recipe['base_precision']}, text encoders {recipe['text_encoder_precision']}, "
        f"gradient checkpointing {checkpointing}, batch {recipe['train_batch_size']}, "
        f"{recipe['resolution']} px"
    )


def _device_line(device: dict[str, Any]) -> str:
    size = (
        "memory unknown" if device["gpu_memory_mb"] is None else f"{device['gpu_memory_mb'] / 1024:.0f} GiB"
    )
    fits = {True: "fits", False: "does not fit", None: "fit unknown"}[device["fits"]]
    peak = _gib(device["memory"]["peak_device_bytes"])
    step = "step time unknown" if device["step_seconds"] is None else f"{device['step_seconds']:.3g} s/step"
    total = "" if device["total_seconds"] is None else f", total {_duration(device['total_seconds'])}"
    cost = "" if device["cost"] is None else f", cost {device['cost']:.2f}"
    workers = ", ".join(device["workers"]) or "none"
    return (
        f"{device['device_class']} ({size}): {fits} at {peak} "
        f"({device['recipe']['base_precision']}), {step}{total}{cost}; workers: {workers}"
    )


def _gib(size: int) -> str:
    return f"{size / GiB:.2f} GiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
