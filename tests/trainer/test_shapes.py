"""The shapes domain: rendered drawings are read back exactly, and captions say what is drawn."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from trainer.synthetic.shapes import (
    BACKGROUNDS,
    COLOURS,
    KINDS,
    Drawing,
    caption,
    classify,
    hue_distance,
    random_drawing,
    render,
    shape_rgb,
)


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_every_rendered_drawing_is_read_back_exactly(resolution: int) -> None:
    rng = random.Random(resolution)
    for kind in KINDS:
        for colour in COLOURS:
            for background in BACKGROUNDS:
                for _ in range(4):  # random positions and sizes within the domain's jitter
                    drawing = random_drawing(rng, kind=kind, colour=colour, background=background)
                    read = classify(render(drawing, resolution))
                    assert (read.kind, read.colour, read.background) == (kind, colour, background)
                    assert read.hue is not None and hue_distance(read.hue, drawing.hue) < 1.0


@pytest.mark.parametrize("hue", [10.0, 25.0, 45.0, 60.0, 150.0, 290.0])
def test_hues_between_the_named_colours_are_measured(hue: float) -> None:
    read = classify(render(Drawing("square", hue, "gray"), 64))
    assert read.hue is not None and hue_distance(read.hue, hue) < 1.0


def test_caption_says_what_is_drawn_and_can_leave_the_colour_out() -> None:
    drawing = Drawing("triangle", COLOURS["blue"], "white", centre=(0.4, 0.6), radius=0.22)
    assert caption(drawing) == "a blue triangle on a white background"
    assert caption(drawing, with_colour=False) == "a triangle on a white background"


def test_rendering_uses_exactly_the_shape_and_background_colours() -> None:
    image = render(Drawing("circle", COLOURS["green"], "black"), 64)
    colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3).tolist()}
    assert colours == {BACKGROUNDS["black"], shape_rgb(COLOURS["green"])}


def test_a_blank_image_has_no_shape_and_a_gray_shape_no_colour() -> None:
    blank = classify(Image.new("RGB", (64, 64), BACKGROUNDS["gray"]))
    assert (blank.kind, blank.colour, blank.background) == (None, None, "gray")
    image = Image.new("RGB", (64, 64), BACKGROUNDS["black"])
    image.paste((200, 200, 200), (16, 16, 48, 48))
    gray_square = classify(image)
    assert (gray_square.kind, gray_square.colour) == ("square", None)


def test_stray_pixels_do_not_move_the_reading() -> None:
    drawing = Drawing("triangle", COLOURS["red"], "white", centre=(0.45, 0.55), radius=0.22)
    pixels = np.asarray(render(drawing, 64)).copy()
    pixels[2, 60] = pixels[60, 3] = (0, 0, 255)  # specks far from the shape, another colour
    read = classify(Image.fromarray(pixels))
    assert (read.kind, read.colour, read.background) == ("triangle", "red", "white")
