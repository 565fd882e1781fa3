"""Read a shapes-world picture back into facts, from pixels alone (no neural network).

1. Background: the most common named colour along the border.
2. Every pixel is explained as a blend `B + α (c - B)` of the background B and the named colour c whose
   segment [B, c] lies nearest; it belongs to a shape of colour c when α ≥ 0.5. Anti-aliased and blurred
   edges are such blends, so they join the right shape, and the α = 0.5 contour is where the true edge
   was: areas come out unbiased.
3. Connected components of equal colour (4-neighbours); specks under `MIN_AREA` are noise.
4. Kind from geometry: the kind whose ideal silhouette, given the component's area and centroid, overlaps
   it most (intersection over union). Areas and centroids average over every pixel, so a ragged edge or
   a rounded corner moves them little, where features of the bounding box would follow one stray pixel.
   Size and position from the bounding box, with the thresholds halfway between the classes of
   `shapes.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.train.shapes import COLOURS, SIZES

WORK_SIZE = 128  # larger pictures are box-filtered to this side first: plenty for flat shapes, and fast
MIN_AREA = 0.004  # fraction of the picture; the smallest shape (a 0.2 triangle) covers 0.02
CENTRE_RADIUS = 0.1  # a box centre this close to the picture centre (each axis) is "center"
SMALL_LARGE_SPLIT = (SIZES["small"][1] + SIZES["large"][0]) / 2

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)  # [K, 3]


@dataclass(frozen=True)
class FoundShape:
    kind: str
    colour: str
    size: str
    position: str
    area: float  # fraction of the picture
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in picture units (0..1)


@dataclass(frozen=True)
class Classification:
    background: str
    shapes: tuple[FoundShape, ...]  # largest first

    @property
    def largest(self) -> FoundShape | None:
        return self.shapes[0] if self.shapes else None


def classify(image: Image.Image) -> Classification:
    pixels = _working_pixels(image)  # [H, W, 3] float32, 0..255
    background = _background(pixels)
    colour_index = _shape_colours(pixels, _NAMES.index(background))  # [H, W] palette index, -1 = background
    components = label_components(colour_index)
    side = pixels.shape[0]
    found = []
    ids, counts = np.unique(components[components >= 0], return_counts=True)
    for component, count in zip(ids, counts, strict=True):
        if count < MIN_AREA * side * side:
            continue
        ys, xs = np.nonzero(components == component)
        found.append(_describe(ys, xs, side, _NAMES[colour_index[ys[0], xs[0]]]))
    found.sort(key=lambda s: s.area, reverse=True)
    return Classification(background=background, shapes=tuple(found))


def _working_pixels(image: Image.Image) -> np.ndarray:
    image = image.convert("RGB")
    if max(image.size) > WORK_SIZE:
        image = image.resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BOX)
    elif image.size[0] != image.size[1]:
        side = max(image.size)
        image = image.resize((side, side), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] → [...] index into the named colours."""
    return np.argmin(((rgb[..., None, :] - _PALETTE) ** 2).sum(-1), axis=-1)


def _background(pixels: np.ndarray) -> str:
    border = np.concatenate(
        [
            pixels[:2].reshape(-1, 3),
            pixels[-2:].reshape(-1, 3),
            pixels[:, :2].reshape(-1, 3),
            pixels[:, -2:].reshape(-1, 3),
        ]
    )
    votes = np.bincount(nearest_colour(border), minlength=len(_NAMES))
    return _NAMES[int(votes.argmax())]


def _shape_colours(pixels: np.ndarray, background: int) -> np.ndarray:
    base = _PALETTE[background]
    directions = np.delete(_PALETTE, background, axis=0) - base  # [K-1, 3]
    offsets = pixels - base  # [H, W, 3]
    alpha = np.clip(offsets @ directions.T / (directions**2).sum(-1), 0.0, 1.0)  # [H, W, K-1]
    residual = ((offsets[..., None, :] - alpha[..., None] * directions) ** 2).sum(-1)  # [H, W, K-1]
    best = residual.argmin(-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    others = np.delete(np.arange(len(_NAMES)), background)
    return np.where(best_alpha >= 0.5, others[best], -1)


def label_components(labels: np.ndarray) -> np.ndarray:
    """Connected components (4-neighbours) of equal non-negative labels in a [H, W] int array.

    Returns [H, W] int64: -1 where labels < 0, else the smallest flat index of the pixel's component.
    Min-label propagation with pointer jumping: every component converges to its smallest index.
    """
    h, w = labels.shape
    outside = h * w
    component = np.where(labels >= 0, np.arange(h * w).reshape(h, w), outside)
    joined_right = (labels[:, :-1] == labels[:, 1:]) & (labels[:, :-1] >= 0)  # [H, W-1]
    joined_down = (labels[:-1] == labels[1:]) & (labels[:-1] >= 0)  # [H-1, W]
    inside = labels >= 0
    while True:
        previous = component
        component = component.copy()
        pair = np.minimum(component[:, :-1], component[:, 1:])
        component[:, :-1] = np.where(joined_right, pair, component[:, :-1])
        component[:, 1:] = np.where(joined_right, np.minimum(pair, component[:, 1:]), component[:, 1:])
        pair = np.minimum(component[:-1], component[1:])
        component[:-1] = np.where(joined_down, pair, component[:-1])
        component[1:] = np.where(joined_down, np.minimum(pair, component[1:]), component[1:])
        # A label is the flat index of a pixel of the same component, whose own label is no larger.
        flat = component.reshape(-1)
        flat[inside.reshape(-1)] = flat[flat[inside.reshape(-1)]]
        if np.array_equal(component, previous):
            return np.where(inside, component, -1)


def _describe(ys: np.ndarray, xs: np.ndarray, side: int, colour: str) -> FoundShape:
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    extent = max(x1 - x0, y1 - y0) / side
    box = (x0 / side, y0 / side, x1 / side, y1 / side)
    return FoundShape(
        kind=_kind(ys, xs),
        colour=colour,
        size="small" if extent <= SMALL_LARGE_SPLIT else "large",
        position=_position((box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5),
        area=len(ys) / side**2,
        box=box,
    )


# Ideal silhouettes of area A centred (centroid) at the origin, as a test of offsets (dx, dy), y down.
Silhouette = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
SILHOUETTES: dict[str, Silhouette] = {
    "square": lambda dx, dy, a: np.maximum(abs(dx), abs(dy)) <= math.sqrt(a) / 2,
    "circle": lambda dx, dy, a: dx**2 + dy**2 <= a / math.pi,
    # Base = height = e = √(2A); the centroid lies e/3 above the base, so the apex is 2e/3 above it.
    "triangle": lambda dx, dy, a: (
        (dy <= math.sqrt(2 * a) / 3) & (abs(dx) <= (dy + 2 * math.sqrt(2 * a) / 3) / 2)
    ),
}


def _kind(ys: np.ndarray, xs: np.ndarray) -> str:
    """The kind of the component at pixels (ys, xs): its best-overlapping ideal silhouette."""
    area = len(ys)
    cy, cx = ys.mean(), xs.mean()
    reach = math.sqrt(2 * area)  # the largest silhouette (the triangle's side) fits within ±reach
    top, left = math.floor(min(ys.min(), cy - reach)), math.floor(min(xs.min(), cx - reach))
    bottom, right = math.ceil(max(ys.max(), cy + reach)) + 1, math.ceil(max(xs.max(), cx + reach)) + 1
    member = np.zeros((bottom - top, right - left), bool)
    member[ys - top, xs - left] = True
    dy, dx = np.mgrid[top:bottom, left:right].astype(np.float64)
    dy, dx = dy - cy, dx - cx

    def overlap(kind: str) -> float:
        ideal = SILHOUETTES[kind](dx, dy, area)
        return (ideal & member).sum() / (ideal | member).sum()

    return max(SILHOUETTES, key=overlap)


def _position(dx: float, dy: float) -> str:
    if max(abs(dx), abs(dy)) < CENTRE_RADIUS:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"
