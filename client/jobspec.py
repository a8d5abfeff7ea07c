"""The body of `mapo jobs create` from a spec file, `--set key=value` items and flags (pure, no HTTP).

A spec file is either the API's job body (with `hyperparameters`) or a flat TrainSpec as `python -m trainer
train --spec` reads it; either way training fields land in `hyperparameters`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

TOP_LEVEL_FIELDS = frozenset(
    {
        "dataset_id",
        "base_model",
        "method",
        "validation",
        "webhooks",
        "metadata",
        "seed",
        "queue",
        "priority",
        "hyperparameters",
    }
)


class JobSpecError(ValueError):
    """A spec file or a `--set` item that cannot be read; the message names it."""


def read_spec_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping from `path`."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise JobSpecError(f"cannot read spec {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise JobSpecError(f"spec {path} must be a mapping of field names to values")
    return loaded


def parse_value(text: str) -> Any:
    """JSON for numbers, booleans and null (`1e-4` is a number); YAML only for `[a fox]`-style lists
    and mappings; anything else stays a string (YAML 1.1 would read mixed_precision=no as False)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text.lstrip().startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise JobSpecError(f"cannot read {text!r}: {exc}") from exc
    return text


def build_job_body(spec: Mapping[str, Any] | None, sets: Iterable[str]) -> dict[str, Any]:
    """Merge a spec and `key=value` items (dotted keys nest; later wins) into a job body."""
    body: dict[str, Any] = {"hyperparameters": {}}
    for key, value in (spec or {}).items():
        if key == "hyperparameters" and isinstance(value, Mapping):
            body["hyperparameters"].update(value)
        else:
            _assign(body, key, value)
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise JobSpecError(f"--set {item!r}: expected key=value")
        _assign(body, key.strip(), parse_value(text))
    return body


def _assign(body: dict[str, Any], dotted_key: str, value: Any) -> None:
    path = dotted_key.split(".")
    if path[0] not in TOP_LEVEL_FIELDS:
        path = ["hyperparameters", *path]
    node = body
    for name in path[:-1]:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise JobSpecError(f"{dotted_key}: {name} is not a mapping")
        node = child
    node[path[-1]] = value
