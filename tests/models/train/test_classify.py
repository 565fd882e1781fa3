import random
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from models.train.classify import classify, label_components
from models.train.shapes import Scene, SceneSpec, ShapeSpec, render, sample_scene


def facts(scene: Scene) -> tuple[str, list[tuple[str, str, str, str]]]:
    return scene.background, sorted((s.kind, s.colour, s.size, s.position) for s in scene.shapes)


def found_facts(picture: Image.Image) -> tuple[str, list[tuple[str, str, str, str]]]:
    result = classify(picture)
    return result.background, sorted((s.kind, s.colour, s.size, s.position) for s in result.shapes)


def degrade(picture: Image.Image, seed: int, noise: float = 12.0) -> Image.Image:
    """Gaussian pixel noise then a blur of half a pixel per 64 px, like a rough generated picture."""
    pixels = np.asarray(picture, np.float32)
    pixels = pixels + np.random.default_rng(seed).normal(0.0, noise, pixels.shape)
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return noisy.filter(ImageFilter.GaussianBlur(picture.size[0] / 128))


@pytest.mark.parametrize("size, count", [(64, 60), (256, 40), (1024, 15)])
def test_clean_renders_are_read_back_exactly(size: int, count: int) -> None:
    rng = random.Random(size)
    for _ in range(count):
        scene = sample_scene(rng)
        assert found_facts(render(scene, size)) == facts(scene)


@pytest.mark.parametrize("size", [64, 256])
def test_noisy_blurred_renders_are_still_read(size: int) -> None:
    rng = random.Random(100 + size)
    right = 0
    for i in range(40):
        scene = sample_scene(rng)
        right += found_facts(degrade(render(scene, size), seed=i)) == facts(scene)
    assert right >= 38


def test_shapes_come_largest_first() -> None:
    spec = SceneSpec(
        (ShapeSpec("square", "red", "small", "left"), ShapeSpec("circle", "blue", "large", "right"))
    )
    result = classify(render(sample_scene(random.Random(0), spec), 256))
    assert [s.colour for s in result.shapes] == ["blue", "red"]
    assert result.largest is result.shapes[0]
    assert result.shapes[0].area > result.shapes[1].area


def test_a_flat_picture_has_no_shapes() -> None:
    result = classify(Image.new("RGB", (64, 64), (20, 20, 20)))
    assert result.background == "black" and result.shapes == () and result.largest is None


def reference_components(labels: np.ndarray) -> int:
    """Component count by breadth-first search."""
    seen = np.zeros(labels.shape, bool)
    count = 0
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            if labels[y, x] < 0 or seen[y, x]:
                continue
            count += 1
            queue = deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and labels[ny, nx] == labels[cy, cx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return count


def test_labelling_agrees_with_breadth_first_search() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(-1, 3, size=(24, 31))
        components = label_components(labels)
        assert (components < 0).tolist() == (labels < 0).tolist()
        assert len(np.unique(components[components >= 0])) == reference_components(labels)
        # Neighbours with one label share one component.
        same = labels[:, 1:] == labels[:, :-1]
        assert (
            components[:, 1:][same & (labels[:, 1:] >= 0)] == components[:, :-1][same & (labels[:, 1:] >= 0)]
        ).all()


def test_labelling_follows_a_winding_path() -> None:
    # A spiral-like comb: one component whose far end is many steps from its smallest index.
    labels = -np.ones((9, 9), int)
    labels[::2, :] = 0
    labels[1::4, -1] = 0
    labels[3::4, 0] = 0
    components = label_components(labels)
    assert len(np.unique(components[components >= 0])) == 1


def rough_shape(kind: str, seed: int, side: int = 64) -> Image.Image:
    """A white shape on black as a generated picture draws it: rounded corners and ragged edges.

    Each edge pixel of the clean silhouette flips with some chance, and a few one-pixel spurs stick out,
    which moves the bounding box without changing what the shape is.
    """
    rng = np.random.default_rng(seed)
    extent = rng.uniform(0.25, 0.45) * side
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0 = (side - extent) / 2, (side - extent) / 2
    box = (x0, y0, x0 + extent, y0 + extent)
    if kind == "square":
        draw.rounded_rectangle(box, radius=extent * 0.15, fill=255)
    elif kind == "circle":
        draw.ellipse(box, fill=255)
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0 + extent, y0 + extent), (x0, y0 + extent)], fill=255)
    mask = np.asarray(canvas) > 127
    edge = mask ^ np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(3)))
    mask = mask ^ (edge & (rng.random(mask.shape) < 0.3))
    ys, xs = np.nonzero(edge)
    for i in rng.choice(len(ys), 3, replace=False):  # spurs: a pixel straight out from an edge pixel
        y, x = ys[i], xs[i]
        dy, dx = np.sign(y - side / 2), np.sign(x - side / 2)
        mask[int(y + dy), int(x + dx)] = True
    pixels = np.where(mask[..., None], np.uint8(245), np.uint8(15)).repeat(3, axis=-1)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("kind", ["square", "circle", "triangle"])
def test_rough_shapes_keep_their_kind(kind: str) -> None:
    for seed in range(10):
        largest = classify(rough_shape(kind, seed)).largest
        assert largest is not None and (largest.colour, largest.kind) == ("white", kind), seed
