"""The before/after sheet of a job's validation images: one column per prompt, labelled with it, the base
model's image above the LoRA's. It is what shows a user, at a glance, what the preference did."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

Sample = dict[str, Any]  # one row of GET /v1/jobs/{id}/samples
TILE = 160  # pixels per image on the sheet: tiny models draw 64 px, scaled up without smoothing
ROW_LABEL_WIDTH = 90
PROMPT_LABEL_HEIGHT = 44
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)


@dataclass(frozen=True)
class SheetColumn:
    prompt: str
    step: int
    before: Sample  # the base model's image
    after: Sample  # the LoRA's image


def sheet_columns(samples: Sequence[Sample]) -> list[SheetColumn]:
    """One column per prompt of the newest step with LoRA images, the base image beside it taken from
    that step when it was rendered there, else from step 0 (where the service renders the base model)."""
    lora_steps = [s["step"] for s in samples if s["with_lora"]]
    if not lora_steps:
        return []
    step = max(lora_steps)
    base = {(s["step"], s["index"]): s for s in samples if not s["with_lora"]}
    columns = []
    newest = [s for s in samples if s["with_lora"] and s["step"] == step]
    for after in sorted(newest, key=lambda s: s["index"]):
        before = base.get((step, after["index"])) or base.get((0, after["index"]))
        if before is not None:
            columns.append(SheetColumn(after["prompt"], step, before, after))
    return columns


def before_after_sheet(columns: Sequence[SheetColumn], image_of: Callable[[Sample], Path]) -> Image.Image:
    """The sheet of `columns`; `image_of` gives the downloaded file of a sample."""
    sheet = Image.new(
        "RGB", (ROW_LABEL_WIDTH + TILE * len(columns), PROMPT_LABEL_HEIGHT + 2 * TILE), BACKGROUND
    )
    draw = ImageDraw.Draw(sheet)
    step = columns[0].step if columns else 0
    for row, label in enumerate(("base model", f"with LoRA\nstep {step}")):
        draw.multiline_text((6, PROMPT_LABEL_HEIGHT + row * TILE + TILE // 2 - 10), label, fill=INK)
    for index, column in enumerate(columns):
        x = ROW_LABEL_WIDTH + index * TILE
        caption = "\n".join(textwrap.wrap(column.prompt, width=TILE // 7)[:3])
        draw.multiline_text((x + 4, 4), caption, fill=INK)
        for row, sample in enumerate((column.before, column.after)):
            with Image.open(image_of(sample)) as image:
                tile = image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)
            sheet.paste(tile, (x, PROMPT_LABEL_HEIGHT + row * TILE))
    return sheet
