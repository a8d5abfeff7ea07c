"""The shapes domain: one coloured shape on a plain background, its caption, and an exact classifier.

A drawing is one circle, square or triangle, of a saturated colour given by its hue, on a white, gray or
black background, at a jittered position and size that the caption does not mention:
"a red circle on a black background". The classifier reads a drawing back from pixels alone (background
from the border, shape from the largest region unlike it, kind by overlap with the three templates,
colour by hue), so it is exact on rendered images and a fair judge of generated ones. Torch-free.
"""

from __future__ import annotations

import colorsys
import random
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

Rgb = tuple[int, int, int]

KINDS = ("circle", "square", "triangle")
# Three primaries 120° apart: a hue moved up to 60° from one is never nearer another.
COLOURS: dict[str, float] = {"red": 0.0, "green": 120.0, "blue": 240.0}
BACKGROUNDS: dict[str, Rgb] = {"white": (235, 235, 235), "gray": (128, 128, 128), "black": (24, 24, 24)}
SATURATION, VALUE = 0.85, 0.9
RADIUS_RANGE = (0.2, 0.3)  # fractions of the image side
CENTRE_JITTER = 0.1
# What the classifier needs before it calls a region a shape, and a colour a colour.
MIN_CONTRAST = 70.0  # RGB distance from the background
MIN_AREA_FRACTION = 0.02
MIN_SATURATION = 0.3


@dataclass(frozen=True)
class Drawing:
    """What one image shows. centre and radius are fractions of the image side."""

    kind: str
    hue: float
    background: str
    centre: tuple[float, float] = (0.5, 0.5)
    radius: float = 0.25

    @property
    def colour(self) -> str:
        """The named colour nearest to the hue."""
        return nearest_colour(self.hue)


@dataclass(frozen=True)
class Reading:
    """What the classifier sees; kind and colour are None when there is no shape or no colour."""

    kind: str | None
    colour: str | None
    hue: float | None
    background: str


def shape_rgb(hue: float) -> Rgb:
    """The shape colour of a hue in degrees, at the domain's saturation and value."""
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, SATURATION, VALUE)
    return round(r * 255), round(g * 255), round(b * 255)


def hue_distance(a: float, b: float) -> float:
    """Distance on the colour wheel, in degrees (0..180)."""
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def nearest_colour(hue: float) -> str:
    return min(COLOURS, key=lambda name: hue_distance(hue, COLOURS[name]))


def caption(drawing: Drawing, *, with_colour: bool = True) -> str:
    """ "a red circle on a black background"; without colour: "a circle on a black background"."""
    colour = f"{drawing.colour} " if with_colour else ""
    return f"a {colour}{drawing.kind} on a {drawing.background} background"


def random_drawing(
    rng: random.Random, *, kind: str | None = None, colour: str | None = None, background: str | None = None
) -> Drawing:
    """A drawing with the given attributes (random where None) at a random position and size."""
    jitter = (rng.uniform(-CENTRE_JITTER, CENTRE_JITTER) for _ in range(2))
    centre = (0.5 + next(jitter), 0.5 + next(jitter))
    return Drawing(
        kind=kind or rng.choice(KINDS),
        hue=COLOURS[colour or rng.choice(sorted(COLOURS))],
        background=background or rng.choice(sorted(BACKGROUNDS)),
        centre=centre,
        radius=rng.uniform(*RADIUS_RANGE),
    )


def render(drawing: Drawing, resolution: int) -> Image.Image:
    """The drawing as a `resolution`² RGB image, without anti-aliasing (every pixel is one of two colours)."""
    image = Image.new("RGB", (resolution, resolution), BACKGROUNDS[drawing.background])
    cx, cy = (c * resolution for c in drawing.centre)
    r = drawing.radius * resolution
    _draw(ImageDraw.Draw(image), drawing.kind, (cx - r, cy - r, cx + r, cy + r), shape_rgb(drawing.hue))
    return image


def _draw(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], fill: Rgb) -> None:
    left, top, right, bottom = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def classify(image: Image.Image) -> Reading:
    """Read kind, colour and background back from the pixels of `image`."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    background_rgb = _border_median(pixels)
    background = min(BACKGROUNDS, key=lambda n: float(np.linalg.norm(background_rgb - BACKGROUNDS[n])))
    far = np.linalg.norm(pixels - background_rgb, axis=-1) > MIN_CONTRAST
    region = _largest_region(far)
    if region.sum() < MIN_AREA_FRACTION * region.size:
        return Reading(None, None, None, background)
    r, g, b = (np.median(pixels[region], axis=0) / 255.0).tolist()
    h, s, _ = colorsys.rgb_to_hsv(r, g, b)
    hue = h * 360.0
    colour = nearest_colour(hue) if s >= MIN_SATURATION else None
    return Reading(_kind_of(region), colour, hue if colour else None, background)


def _border_median(pixels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3)])
    border = np.concatenate([border, pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    median: npt.NDArray[np.float64] = np.median(border, axis=0)
    return median


def _largest_region(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 4-connected region of `mask` (stray pixels of a generated image are left out)."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        region, queue = [], deque([(int(start[0]), int(start[1]))])
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def _kind_of(region: npt.NDArray[np.bool_]) -> str:
    """The kind whose template, drawn in the region's bounding box, overlaps the region best (IoU)."""
    ys, xs = np.nonzero(region)
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    height, width = region.shape

    def iou(kind: str) -> float:
        template = Image.new("1", (width, height), 0)
        _draw(ImageDraw.Draw(template), kind, box, fill=1)  # type: ignore[arg-type]
        mask = np.asarray(template, dtype=bool)
        return float((mask & region).sum() / (mask | region).sum())

    return max(KINDS, key=iou)
