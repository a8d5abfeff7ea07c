"""Preference sets on the shapes domain say, in pixels, what their description promises."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from trainer.dataset_format import read_pairs
from trainer.synthetic.shape_preferences import (
    hue_shift_pairs,
    moved_towards,
    prefer_red_pairs,
    signed_hue_move,
    write_dataset,
)
from trainer.synthetic.shapes import COLOURS, Drawing, classify, hue_distance, render


def read(root: Path, relative: str) -> Image.Image:
    with Image.open(root / relative) as image:
        return image.convert("RGB")


def test_prefer_red_pairs_differ_only_in_colour_and_the_prompt_leaves_it_open(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "red", prefer_red_pairs(num_pairs=12, seed=3), resolution=64)

    assert manifest.num_pairs == 12
    for pair in read_pairs(tmp_path / "red"):
        chosen, rejected = (
            classify(read(tmp_path / "red", pair.chosen)),
            classify(read(tmp_path / "red", pair.rejected)),
        )
        assert chosen.colour == "red" and rejected.colour in ("green", "blue")
        assert (chosen.kind, chosen.background) == (rejected.kind, rejected.background)
        assert pair.prompt == f"a {chosen.kind} on a {chosen.background} background"


def test_hue_shift_pairs_move_the_chosen_hue_and_keep_the_caption_true_of_the_rejected(
    tmp_path: Path,
) -> None:
    write_dataset(tmp_path / "shift", hue_shift_pairs(num_pairs=9, seed=0, shift=30.0), resolution=64)

    for pair in read_pairs(tmp_path / "shift"):
        chosen, rejected = (
            classify(read(tmp_path / "shift", pair.chosen)),
            classify(read(tmp_path / "shift", pair.rejected)),
        )
        assert pair.prompt == f"a {rejected.colour} {rejected.kind} on a {rejected.background} background"
        assert chosen.hue is not None and rejected.hue is not None
        assert abs(hue_distance(chosen.hue, rejected.hue) - 30.0) < 1.0


def test_same_seed_same_pairs_and_another_seed_differs() -> None:
    assert list(prefer_red_pairs(num_pairs=5, seed=1)) == list(prefer_red_pairs(num_pairs=5, seed=1))
    assert list(prefer_red_pairs(num_pairs=5, seed=1)) != list(prefer_red_pairs(num_pairs=5, seed=2))


def test_a_sample_counts_as_moved_when_nearer_the_shifted_hue() -> None:
    asked = Drawing("circle", COLOURS["blue"], "gray")
    halfway_past = classify(render(Drawing("circle", COLOURS["blue"] + 20.0, "gray"), 64))
    short = classify(render(Drawing("circle", COLOURS["blue"] + 10.0, "gray"), 64))

    assert moved_towards(halfway_past, asked, 30.0) and not moved_towards(short, asked, 30.0)
    move = signed_hue_move(halfway_past, asked)
    assert move is not None and abs(move - 20.0) < 1.0
    backwards = signed_hue_move(
        classify(render(Drawing("circle", 350.0, "gray"), 64)), Drawing("circle", 0.0, "gray")
    )
    assert backwards is not None and abs(backwards + 10.0) < 1.0
