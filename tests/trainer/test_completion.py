"""Completing targets and avoid datasets: the base model draws each pair's missing image, once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.images import base_model_image, file_states, pixels
from tests.support.specs import tiny_spec
from trainer.completion import GENERATION_RECORD, complete_dataset
from trainer.dataset_format import (
    DatasetKind,
    DatasetWriter,
    EncodedImage,
    read_manifest,
    read_pairs,
)
from trainer.errors import InvalidDatasetError
from trainer.events import Event, Preparing
from trainer.synthetic.demo_data import demo_pairs

NUM_ROWS = 3
AVOID_PROMPT = "a large circle at the centre, flat illustration"


def one_sided_dataset(root: Path, kind: DatasetKind) -> Path:
    """NUM_ROWS warm demo images with their prompts; avoid rows also ask for a circle instead."""
    with DatasetWriter(root, kind=kind) as writer:
        for pair in demo_pairs(num_pairs=NUM_ROWS, resolution=32, seed=3):
            writer.add_target(
                pair.prompt,
                image=EncodedImage(pair.chosen, ".png"),
                generation_prompt=AVOID_PROMPT if kind == "avoid" else None,
            )
    return root


def complete(
    dataset: Path, base_model: Path, *, stop_after: int | None = None, **overrides: object
) -> tuple[Path | None, list[Preparing]]:
    """Complete `dataset` with a fast spec; returns the pairs folder and the progress events."""
    events: list[Event] = []
    spec = tiny_spec(base_model, **{"generation": {"num_inference_steps": 2}, **overrides})
    polls = [0]

    def should_stop() -> bool:
        polls[0] += 1
        return stop_after is not None and polls[0] > stop_after

    done = complete_dataset(
        dataset, spec, seed_namespace="ds_test", on_event=events.append, should_stop=should_stop
    )
    return done, [e for e in events if isinstance(e, Preparing)]


def generation_record(pairs_dir: Path) -> dict[str, object]:
    record: dict[str, object] = json.loads((pairs_dir / GENERATION_RECORD).read_text())
    return record


def test_targets_dataset_gets_the_base_models_image_as_rejected(tiny_model: Path, tmp_path: Path) -> None:
    base_model = tiny_model
    dataset = one_sided_dataset(tmp_path / "ds", "targets")
    pairs_dir, events = complete(dataset, base_model)
    assert pairs_dir is not None and pairs_dir.is_relative_to(dataset / "generated")
    pairs = read_pairs(pairs_dir)
    assert len(pairs) == NUM_ROWS and read_manifest(pairs_dir).kind == "pairs"
    record = generation_record(pairs_dir)
    seeds = [entry["seed"] for entry in record["pairs"]]  # type: ignore[attr-defined]
    assert len(set(seeds)) == NUM_ROWS
    uploads = list(demo_pairs(num_pairs=NUM_ROWS, resolution=32, seed=3))
    for pair, upload, seed in zip(pairs, uploads, seeds, strict=True):
        assert pair.prompt == upload.prompt
        assert (pairs_dir / pair.chosen).read_bytes() == upload.chosen
        drawn = base_model_image(base_model, upload.prompt, seed=seed)
        assert np.abs(pixels(pairs_dir / pair.rejected) - drawn).max() <= 1
    assert (events[-1].ready, events[-1].generated, events[-1].reused) == (NUM_ROWS, NUM_ROWS, 0)


def test_avoid_dataset_uploads_the_rejected_side_and_draws_the_chosen_one(
    tiny_sd: Path, tmp_path: Path
) -> None:
    dataset = one_sided_dataset(tmp_path / "ds", "avoid")
    pairs_dir, events = complete(dataset, tiny_sd)
    assert pairs_dir is not None
    record = generation_record(pairs_dir)
    uploads = list(demo_pairs(num_pairs=NUM_ROWS, resolution=32, seed=3))
    for pair, upload, entry in zip(read_pairs(pairs_dir), uploads, record["pairs"], strict=True):  # type: ignore[call-overload]
        assert pair.prompt == upload.prompt
        assert (pairs_dir / pair.rejected).read_bytes() == upload.chosen
        drawn = base_model_image(tiny_sd, AVOID_PROMPT, seed=entry["seed"])
        assert np.abs(pixels(pairs_dir / pair.chosen) - drawn).max() <= 1
    assert events[-1].kind == "avoid" and events[-1].generated == NUM_ROWS


def test_second_completion_reuses_every_image(tiny_sd: Path, tmp_path: Path) -> None:
    dataset = one_sided_dataset(tmp_path / "ds", "targets")
    first, _ = complete(dataset, tiny_sd)
    assert first is not None
    before = file_states(first)
    second, events = complete(dataset, tiny_sd)
    assert second == first and file_states(first) == before
    assert [(e.ready, e.generated, e.reused) for e in events] == [(NUM_ROWS, 0, NUM_ROWS)]


def test_interrupted_completion_draws_only_the_missing_images(tiny_sd: Path, tmp_path: Path) -> None:
    dataset = one_sided_dataset(tmp_path / "ds", "targets")
    stopped, _ = complete(dataset, tiny_sd, stop_after=2)
    assert stopped is None
    resumed, events = complete(dataset, tiny_sd)
    assert resumed is not None and len(read_pairs(resumed)) == NUM_ROWS
    assert (events[0].ready, events[0].reused) == (2, 2)
    assert (events[-1].ready, events[-1].generated, events[-1].reused) == (NUM_ROWS, 1, 2)
    uninterrupted, _ = complete(one_sided_dataset(tmp_path / "other", "targets"), tiny_sd)
    assert uninterrupted is not None
    rejected = [pixels(resumed / p.rejected) for p in read_pairs(resumed)]
    # Same dataset id (seed namespace), same rows: the same images as a run that was never stopped.
    expected = [pixels(uninterrupted / p.rejected) for p in read_pairs(uninterrupted)]
    assert all(np.array_equal(a, b) for a, b in zip(rejected, expected, strict=True))


def test_other_generation_settings_draw_into_a_folder_of_their_own(tiny_sd: Path, tmp_path: Path) -> None:
    dataset = one_sided_dataset(tmp_path / "ds", "targets")
    first, _ = complete(dataset, tiny_sd)
    other, events = complete(dataset, tiny_sd, generation={"num_inference_steps": 3})
    assert first is not None and other is not None and other != first
    assert events[-1].generated == NUM_ROWS
    assert generation_record(other)["settings"]["num_inference_steps"] == 3  # type: ignore[index]


def test_pairs_dataset_is_trained_as_it_is(tiny_sd: Path, color_pairs: Path) -> None:
    pairs_dir, events = complete(color_pairs, tiny_sd)
    assert pairs_dir == color_pairs and events == []
    assert not (color_pairs / "generated").exists()


def test_avoid_row_without_a_generation_prompt_is_an_invalid_dataset(tiny_sd: Path, tmp_path: Path) -> None:
    dataset = one_sided_dataset(tmp_path / "ds", "avoid")
    rows = (dataset / "targets.jsonl").read_text().splitlines()
    broken = {**json.loads(rows[1]), "generation_prompt": None}
    rows[1] = json.dumps(broken)
    (dataset / "targets.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(InvalidDatasetError, match=r"row 1.*generation_prompt"):
        complete(dataset, tiny_sd)
