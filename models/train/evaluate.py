"""How well a checkpoint draws the shapes world (SHAPES.md, "What works means"), measured from pixels.

Prompts are held-out combinations (`shapes.is_held_out`), so no training caption contained them word for
word. Each generated picture is read back with `classify` and scored:
- one shape: the largest shape found has the named colour and kind, and the background the named colour;
- two shapes: the two largest shapes found are the two named (colour, kind) pairs, neither more nor less.
The other operations are checked once each on rendered inputs: variation keeps colour and kind,
interpolation starts and ends at its inputs' look and passes through something in between, a text diff
from "a red circle" toward "a blue circle" ends blue, inpainting a corner with "a green square" puts one
there and leaves the rest alone.

The pipeline is any `models.contract.Pipeline`, so the scoring is tested on a stand-in that renders the
truth.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from models.contract import Pipeline
from models.reader import PromptReader, SceneReading
from models.tokenizer import Tokenizer
from models.train import captions, shapes
from models.train.classify import Classification, classify
from models.train.shapes import COLOURS, KINDS, SceneSpec, ShapeSpec

CATEGORIES = ("one shape", "two shapes")
INPAINT_PROMPT = "a green square"
UNCHANGED_LEVELS = 12.0  # mean absolute difference (0..255) outside an inpainting mask that counts as kept
DIFFERENT_LEVELS = 6.0  # an interpolation's middle frame differs from both ends by at least this much


@dataclass(frozen=True)
class Prompt:
    text: str
    spec: SceneSpec
    category: str
    prompt_set: str = "templates"


# ---------------------------------------------------------------------------------------------- prompts

# templates: shapes.phrasings, the captions the shipped checkpoint first trained on; phrasings: the
# training grammar of captions.py; structures: its held-out grammatical structures. All state held-out
# facts, so no training caption holds any of them word for word.
PROMPT_SETS = ("templates", "phrasings", "structures")
SET_TITLES = {
    "templates": "held-out facts, template wording",
    "phrasings": "held-out phrasings",
    "structures": "held-out structures",
}


def held_out_prompts(per_category: int, seed: int = 0, prompt_set: str = "templates") -> list[Prompt]:
    """Up to `per_category` prompts of each category, every one a held-out combination, worded as
    `prompt_set` says."""
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"prompt set must be one of {PROMPT_SETS}, got {prompt_set!r}")
    prefix = "evaluation" if prompt_set == "templates" else f"evaluation/{prompt_set}"
    rng = random.Random(f"{prefix}/{seed}")
    colours = list(COLOURS)
    singles = [
        SceneSpec((ShapeSpec(kind, colour),), background=bg)
        for kind in KINDS
        for colour in colours
        for bg in colours
        if bg != colour
    ]
    pairs = two_shape_specs()
    structures = list(captions.HELD_OUT_STRUCTURES)
    prompts = []
    for category, specs in zip(CATEGORIES, (singles, pairs), strict=True):
        held = [spec for spec in specs if shapes.is_held_out(spec)]
        rng.shuffle(held)
        for i, spec in enumerate(held[:per_category]):
            spec = with_random_details(spec, rng)
            if prompt_set == "templates":
                text = rng.choice(shapes.phrasings(spec))
            elif prompt_set == "phrasings":
                text = captions.held_out_phrasing(spec, rng)
            else:
                text = captions.structure_caption(spec, rng, structures[(i + seed) % len(structures)])
            prompts.append(Prompt(text, spec, category, prompt_set))
    return prompts


def two_shape_specs() -> list[SceneSpec]:
    """Every pair of shapes in two different colours, each pair once."""
    kinds_colours = [(k, c) for k in KINDS for c in COLOURS]
    return [
        SceneSpec((ShapeSpec(*a), ShapeSpec(*b)))
        for i, a in enumerate(kinds_colours)
        for b in kinds_colours[i + 1 :]
        if a[1] != b[1]
    ]


def with_random_details(spec: SceneSpec, rng: random.Random) -> SceneSpec:
    """Sometimes a size, a position pair or (for two shapes) a background, as users would write."""
    sized = tuple(
        ShapeSpec(s.kind, s.colour, rng.choice(("small", "large")) if rng.random() < 0.25 else None)
        for s in spec.shapes
    )
    if rng.random() < 0.25:
        sides = ("left", "right") if rng.random() < 0.5 else ("top", "bottom")
        where = [rng.choice(("center", "left", "right", "top", "bottom"))] if len(sized) == 1 else list(sides)
        sized = tuple(ShapeSpec(s.kind, s.colour, s.size, p) for s, p in zip(sized, where, strict=True))
    background = spec.background
    if len(sized) == 2 and rng.random() < 0.5:
        background = rng.choice([c for c in COLOURS if c not in {s.colour for s in sized}])
    return SceneSpec(sized, background)


# ---------------------------------------------------------------------------------------------- scoring


def score(prompt: Prompt, found: Classification) -> dict[str, bool]:
    """Named checks of one picture; "correct" is the SHAPES.md criterion of the prompt's category.

    Failure readings: "leaked" (a named shape colour is the background), "twice" (a named shape colour
    on two or more shapes), "swapped" (two shapes, each with the other's kind), "empty" (no shape).
    """
    spec = prompt.spec
    background = spec.background is None or found.background == spec.background
    named = [s.colour for s in spec.shapes]
    failures = {
        "leaked": found.background in named,
        "twice": any(sum(s.colour == colour for s in found.shapes) >= 2 for colour in named),
        "empty": not found.shapes,
    }
    if prompt.category == "one shape":
        want, largest = spec.shapes[0], found.largest
        colour = largest is not None and largest.colour == want.colour
        kind = largest is not None and largest.kind == want.kind
        return {
            "correct": colour and kind and background,
            "colour": colour,
            "kind": kind,
            "background": background,
            **failures,
        }
    wanted = sorted((s.colour, s.kind) for s in spec.shapes)
    top_two = sorted((s.colour, s.kind) for s in found.shapes[:2])
    colours = sorted(c for c, _ in wanted) == sorted(s.colour for s in found.shapes[:2])
    a, b = spec.shapes
    swapped = a.kind != b.kind and sorted([(a.colour, b.kind), (b.colour, a.kind)]) == top_two
    return {
        "correct": top_two == wanted and len(found.shapes) >= 2,
        "colours": colours,
        "count": len(found.shapes) == 2,
        "background": background,
        **failures,
        "swapped": swapped,
    }


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (sound at 0 % and 100 %, unlike p ± 2σ)."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


READINGS = ("correct", "leaked", "twice", "swapped", "empty")  # reported with their intervals


@dataclass
class CategoryResult:
    total: int = 0
    checks: dict[str, int] = field(default_factory=dict)

    def add(self, checks: dict[str, bool]) -> None:
        self.total += 1
        for name, passed in checks.items():
            self.checks[name] = self.checks.get(name, 0) + int(passed)

    def merge(self, other: CategoryResult) -> None:
        self.total += other.total
        for name, passed in other.checks.items():
            self.checks[name] = self.checks.get(name, 0) + passed

    def rate(self, name: str = "correct") -> float:
        return self.checks.get(name, 0) / self.total if self.total else float("nan")

    def interval(self, name: str = "correct") -> tuple[float, float]:
        return wilson(self.checks.get(name, 0), self.total)

    def line(self, category: str) -> str:
        low, high = self.interval()
        readings = [
            f"{n} {self.rate(n):.0%} [{self.interval(n)[0]:.0%}, {self.interval(n)[1]:.0%}]"
            for n in READINGS[1:]
            if n in self.checks
        ]
        others = [f"{n} {self.rate(n):.0%}" for n in self.checks if n not in READINGS]
        return (
            f"{category}: {self.checks.get('correct', 0)}/{self.total} = {self.rate():.1%} "
            f"[{low:.0%}, {high:.0%}] ({', '.join(readings + others)})"
        )


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate_generation(
    pipeline: Pipeline,
    prompts: list[Prompt],
    size: int,
    seed: int = 0,
    batch: int = 8,
    sampling: dict[str, Any] | None = None,
    on_picture: Callable[[Prompt, Image.Image, Classification], None] | None = None,
) -> dict[str, CategoryResult]:
    settings = pipeline.sampling(size=size, **(sampling or {}))
    results = {category: CategoryResult() for category in CATEGORIES}
    for offset, group in zip(range(0, len(prompts), batch), batches(prompts, batch), strict=True):
        seeds = [seed + offset + i for i in range(len(group))]
        pictures = pipeline.generate([p.text for p in group], seeds, settings)
        for prompt, picture in zip(group, pictures, strict=True):
            found = classify(picture)
            results[prompt.category].add(score(prompt, found))
            if on_picture is not None:
                on_picture(prompt, picture, found)
    return results


def evaluate_reading(
    reader: PromptReader, tokenizer: Tokenizer, prompts: list[Prompt]
) -> dict[str, CategoryResult]:
    """The prompt reader alone: per category, how often it reads exactly the facts a prompt states
    ("correct": both shapes, in either order, with their sizes and positions, and the background) and
    how often it is unsure (the prompt is then drawn as given)."""
    results = {category: CategoryResult() for category in CATEGORIES}
    readings = reader.read(tokenizer, [p.text for p in prompts])
    for prompt, reading in zip(prompts, readings, strict=True):
        results[prompt.category].add({"correct": _states(reading, prompt.spec), "unsure": reading is None})
    return results


def _states(reading: SceneReading | None, spec: SceneSpec) -> bool:
    if reading is None or reading.background != spec.background:
        return False
    read = sorted((s.kind, s.colour, s.size or "", s.position or "") for s in reading.shapes)
    said = sorted((s.kind, s.colour, s.size or "", s.position or "") for s in spec.shapes)
    return read == said


# ------------------------------------------------------------------------------------------- operations


def _scene_picture(spec: SceneSpec, size: int, seed: int) -> Image.Image:
    return shapes.render(shapes.sample_scene(random.Random(seed), spec), size)


def _is(found: Classification, colour: str, kind: str) -> bool:
    return found.largest is not None and (found.largest.colour, found.largest.kind) == (colour, kind)


def _levels(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference in 0..255 levels."""
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b.resize(a.size), np.float32)).mean())


def check_variation(source: Image.Image, outputs: list[Image.Image]) -> dict[str, float]:
    """Fraction of variations keeping the source's colour and kind, and fraction that changed at all."""
    want = classify(source).largest
    assert want is not None
    kept = [_is(classify(o), want.colour, want.kind) for o in outputs]
    changed = [_levels(source.resize(o.size), o) > DIFFERENT_LEVELS for o in outputs]
    return {"kept colour and kind": float(np.mean(kept)), "changed": float(np.mean(changed))}


def check_interpolation(a: Image.Image, b: Image.Image, frames: list[Image.Image]) -> dict[str, float]:
    want_a, want_b = classify(a).largest, classify(b).largest
    assert want_a is not None and want_b is not None
    middle = frames[len(frames) // 2]
    return {
        "starts like a": float(_is(classify(frames[0]), want_a.colour, want_a.kind)),
        "ends like b": float(_is(classify(frames[-1]), want_b.colour, want_b.kind)),
        "passes between": float(
            min(_levels(frames[0], middle), _levels(frames[-1], middle)) > DIFFERENT_LEVELS
        ),
    }


def check_text_diff(frames: list[Image.Image], colour: str) -> dict[str, float]:
    last = classify(frames[-1]).largest
    return {"ends " + colour: float(last is not None and last.colour == colour)}


def corner_mask(size: int) -> Image.Image:
    """Mode "L", 255 (repaint) on the top-right quarter."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 2, 0, size, size // 2))
    return mask


def check_inpaint(source: Image.Image, mask: Image.Image, output: Image.Image) -> dict[str, float]:
    """A green square inside the repainted region, and the rest as it was."""
    box = mask.getbbox()
    assert box is not None
    output = output.resize(source.size)
    region = classify(output.crop(box))
    found = any((s.colour, s.kind) == ("green", "square") for s in region.shapes)
    keep = np.asarray(mask) == 0
    outside = np.abs(np.asarray(output, np.float32) - np.asarray(source, np.float32))[keep].mean()
    return {"green square in the corner": float(found), "rest kept": float(outside < UNCHANGED_LEVELS)}


def evaluate_operations(
    pipeline: Pipeline, size: int, seed: int = 0, sampling: dict[str, Any] | None = None
) -> dict[str, dict[str, float]]:
    settings = pipeline.sampling(size=size, **(sampling or {}))
    red_circle = _scene_picture(
        SceneSpec((ShapeSpec("circle", "red", "large", "center"),), "white"), size, seed
    )
    blue_square = _scene_picture(
        SceneSpec((ShapeSpec("square", "blue", "large", "center"),), "white"), size, seed
    )
    left_circle = _scene_picture(
        SceneSpec((ShapeSpec("circle", "red", "small", "left"),), "white"), size, seed
    )
    mask = corner_mask(size)
    seeds = [seed + i for i in range(4)]
    results = {}
    results["variation"] = check_variation(red_circle, pipeline.variation([red_circle] * 4, seeds, settings))
    frames = pipeline.interpolate([red_circle], [blue_square], [seed], settings, frames=5)[0]
    results["interpolation"] = check_interpolation(red_circle, blue_square, frames)
    frames = pipeline.text_diff(
        [red_circle], ["a blue circle"], ["a red circle"], [seed], settings, frames=5
    )[0]
    results["text diff"] = check_text_diff(frames, "blue")
    painted = pipeline.inpaint([left_circle], [mask], [INPAINT_PROMPT], [seed], settings)[0]
    results["inpaint"] = check_inpaint(left_circle, mask, painted)
    return results


def report(
    generation: dict[int, dict[str, dict[str, CategoryResult]]],
    operations: dict[int, dict[str, dict[str, float]]],
) -> str:
    """generation: size → prompt set → category → result; operations: size → operation → check → rate."""
    lines = []
    for size, sets in generation.items():
        lines.append(f"{size} px")
        for prompt_set, results in sets.items():
            lines.append(f"  {SET_TITLES.get(prompt_set, prompt_set)}")
            lines += [f"    {r.line(category)}" for category, r in results.items() if r.total]
        for operation, checks in operations.get(size, {}).items():
            lines.append(f"  {operation}: " + ", ".join(f"{n} {v:.0%}" for n, v in checks.items()))
    return "\n".join(lines)
