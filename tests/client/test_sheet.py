"""The before/after sheet `mapo samples` saves: one column per prompt, the base model's image above the
LoRA's, from the newest step that has LoRA images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from client.sheet import TILE, before_after_sheet, sheet_columns


def sample(sample_id: int, step: int, index: int, with_lora: bool, prompt: str = "p") -> dict[str, object]:
    return {
        "id": sample_id,
        "step": step,
        "index": index,
        "prompt": f"{prompt}{index}",
        "with_lora": with_lora,
    }


def test_columns_pair_the_newest_lora_images_with_the_base_images_of_that_step_or_step_0() -> None:
    samples = [
        sample(1, 0, 0, False),
        sample(2, 0, 1, False),
        sample(3, 5, 0, True),
        sample(4, 10, 0, True),
        sample(5, 10, 1, True),
        sample(6, 10, 1, False),
    ]
    columns = sheet_columns(samples)
    assert [(c.prompt, c.before["id"], c.after["id"], c.step) for c in columns] == [
        ("p0", 1, 4, 10),  # no base image at step 10 for prompt 0: the one of step 0
        ("p1", 6, 5, 10),  # the base image of the same step when there is one
    ]


def test_no_lora_images_no_columns() -> None:
    assert sheet_columns([sample(1, 0, 0, False)]) == []


def test_the_sheet_puts_each_prompts_base_image_above_its_lora_image(tmp_path: Path) -> None:
    colours = {1: (0, 200, 0), 2: (0, 0, 200), 3: (200, 0, 0), 4: (250, 250, 0)}
    for sample_id, colour in colours.items():
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{sample_id}.png")
    samples = [sample(1, 0, 0, False), sample(2, 0, 1, False), sample(3, 8, 0, True), sample(4, 8, 1, True)]
    sheet = before_after_sheet(sheet_columns(samples), lambda s: tmp_path / f"{s['id']}.png")
    assert sheet.width >= 2 * TILE and sheet.height >= 2 * TILE
    # Sample the middle of each tile: columns left to right, base row above the LoRA row.
    left, top = sheet.width - 2 * TILE, sheet.height - 2 * TILE
    for column, (before, after) in enumerate(((1, 3), (2, 4))):
        x = left + column * TILE + TILE // 2
        assert sheet.getpixel((x, top + TILE // 2)) == colours[before]
        assert sheet.getpixel((x, top + TILE + TILE // 2)) == colours[after]
