"""The shapes world of /work/shared/SHAPES.md: scenes, their pictures and their captions.

A scene is a flat background of one named colour with one or two shapes of other named colours. Geometry
is in canvas units (0..1, y down). Every shape has a square bounding box of side `extent`: the circle's
diameter, the square's side, the upright isosceles triangle's base and height.

Pictures are box-filtered from a canvas drawn at 1024 px or more and at 4× their side or more: the 1024 px
picture from 4096 px (4×4 supersampled anti-aliasing), the 256 and 64 px ones from 1024 px, so flat
regions keep the exact named colour. `render_sizes` gives exactly matching pairs (every size box-filtered
from one 1024 px render); `render_crop` draws one region of a picture only (upsampler training crops).

A caption names a subset of a scene's facts (`SceneSpec`); whatever it leaves out was drawn at random.
Some facts are held out of training so that evaluation prompts are never training captions word for
word — see `is_held_out`.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (230, 25, 25),
    "green": (25, 180, 50),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
KINDS = ("circle", "square", "triangle")
SIZES: dict[str, tuple[float, float]] = {"small": (0.20, 0.30), "large": (0.40, 0.55)}
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
# Two shapes sit on opposite sides, which is what lets two large ones fit without overlapping.
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
JITTER = 0.04  # ± canvas units on each coordinate of a shape's centre
MARGIN = 0.02  # least distance from a shape's box to the canvas edge
GAP = 0.04  # least distance between the boxes of two shapes

RENDER_SIZE = 1024
SUPERSAMPLE = 4
PICTURE_SIZES = (64, 256, 1024)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str
    extent: float  # side of the bounding box, canvas units
    cx: float
    cy: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = self.extent / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class ShapeSpec:
    """What a caption says about one shape; None = not said (drawn at random)."""

    kind: str
    colour: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    shapes: tuple[ShapeSpec, ...]
    background: str | None = None


# ---------------------------------------------------------------------------------------------- scenes


def sample_scene(rng: random.Random, spec: SceneSpec | None = None) -> Scene:
    """A scene with every fact `spec` names and the rest drawn from `rng`."""
    if spec is None:
        spec = _random_spec(rng)
    _check_spec(spec)
    named = [s.colour for s in spec.shapes]
    background = spec.background or rng.choice([c for c in COLOURS if c not in named])
    positions = _positions(spec, rng)
    sizes = [s.size or rng.choice(tuple(SIZES)) for s in spec.shapes]
    for _ in range(500):
        shapes = tuple(
            _place(s.kind, s.colour, size, position, rng)
            for s, size, position in zip(spec.shapes, sizes, positions, strict=True)
        )
        if len(shapes) == 1 or _apart(shapes[0].box, shapes[1].box):
            return Scene(background=background, shapes=shapes)
    raise RuntimeError(f"could not place {spec} without overlap")


def _random_spec(rng: random.Random) -> SceneSpec:
    background = rng.choice(tuple(COLOURS))
    colours = rng.sample([c for c in COLOURS if c != background], rng.choice((1, 2)))
    return SceneSpec(shapes=tuple(ShapeSpec(rng.choice(KINDS), c) for c in colours), background=background)


def _check_spec(spec: SceneSpec) -> None:
    if len(spec.shapes) not in (1, 2):
        raise ValueError(f"a scene has 1 or 2 shapes, got {len(spec.shapes)}")
    colours = [s.colour for s in spec.shapes]
    if spec.background in colours:
        raise ValueError(f"a shape cannot have the background's colour {spec.background!r}")
    # Two shapes never share a colour, so which colour went with which shape stays checkable.
    if len(set(colours)) != len(colours):
        raise ValueError("two shapes never share a colour")
    for s in spec.shapes:
        if s.kind not in KINDS or s.colour not in COLOURS:
            raise ValueError(f"unknown kind or colour in {s}")
        if s.size not in (None, *SIZES) or s.position not in (None, *POSITIONS):
            raise ValueError(f"unknown size or position in {s}")
    if len(spec.shapes) == 2:
        a, b = (s.position for s in spec.shapes)
        if any(p is not None and p not in OPPOSITE for p in (a, b)) or (a and b and OPPOSITE[a] != b):
            raise ValueError(f"two shapes sit on opposite sides (left/right, top/bottom), got {a}, {b}")


def _positions(spec: SceneSpec, rng: random.Random) -> list[str]:
    if len(spec.shapes) == 1:
        return [spec.shapes[0].position or rng.choice(tuple(POSITIONS))]
    a, b = (s.position for s in spec.shapes)
    if a is None and b is None:
        a = rng.choice(tuple(OPPOSITE))
    if a is None:
        a = OPPOSITE[b]
    return [a, b or OPPOSITE[a]]


def _place(kind: str, colour: str, size: str, position: str, rng: random.Random) -> Shape:
    extent = rng.uniform(*SIZES[size])
    low, high = extent / 2 + MARGIN, 1 - extent / 2 - MARGIN
    anchor_x, anchor_y = POSITIONS[position]
    cx = min(max(anchor_x + rng.uniform(-JITTER, JITTER), low), high)
    cy = min(max(anchor_y + rng.uniform(-JITTER, JITTER), low), high)
    return Shape(kind, colour, size, position, extent, cx, cy)


def _apart(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


# -------------------------------------------------------------------------------------------- pictures


def canvas_scale(size: int) -> int:
    """Canvas pixels per picture pixel: a picture is drawn at 1024 px or more and at 4× its side or more,
    then box-filtered to `size` (a 64 px picture averages 16×16 canvas pixels, a 1024 px one 4×4)."""
    return max(SUPERSAMPLE, RENDER_SIZE // size)


def render(scene: Scene, size: int = RENDER_SIZE) -> Image.Image:
    """The scene as an RGB picture of `size` (64, 256 or 1024) px."""
    return render_crop(scene, size, 0, 0, size)


def render_crop(scene: Scene, size: int, left: int, top: int, side: int) -> Image.Image:
    """The `side`×`side` crop at pixel (`left`, `top`) of the `size` px picture, drawing only that region:
    equal to `render(scene, size).crop(...)` at a fraction of the cost (upsampler training crops)."""
    if size not in PICTURE_SIZES:
        raise ValueError(f"picture size must be one of {PICTURE_SIZES}, got {size}")
    if not (0 <= left <= size - side and 0 <= top <= size - side and side > 0):
        raise ValueError(f"crop {side} px at ({left}, {top}) does not fit a {size} px picture")
    scale = canvas_scale(size)
    full, dx, dy = size * scale, left * scale, top * scale
    canvas = Image.new("RGB", (side * scale, side * scale), COLOURS[scene.background])
    for shape in scene.shapes:
        # Corners rounded on the full canvas; the shape is drawn in its own box and the part inside the
        # region pasted, so a crop has the same pixels as the whole (PIL rounds negative vertices otherwise).
        x0, y0, x1, y1 = (round(v * full) for v in shape.box)
        inside = (max(x0, dx), max(y0, dy), min(x1, dx + side * scale), min(y1, dy + side * scale))
        if inside[0] >= inside[2] or inside[1] >= inside[3]:
            continue
        mask = shape_mask(shape.kind, x1 - x0, y1 - y0)
        mask = mask.crop((inside[0] - x0, inside[1] - y0, inside[2] - x0, inside[3] - y0))
        canvas.paste(COLOURS[shape.colour], (inside[0] - dx, inside[1] - dy), mask)
    return canvas.reduce(scale)


def shape_mask(kind: str, width: int, height: int) -> Image.Image:
    """Mode "L" mask (255 inside) of one shape filling a `width`×`height` box."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse((0, 0, width - 1, height - 1), fill=255)
    elif kind == "square":
        draw.rectangle((0, 0, width - 1, height - 1), fill=255)
    else:
        draw.polygon(((0, height - 1), (width - 1, height - 1), ((width - 1) / 2, 0)), fill=255)
    return mask


def render_sizes(scene: Scene, sizes: tuple[int, ...] = PICTURE_SIZES) -> dict[int, Image.Image]:
    """One 1024 px render and its box-filtered downscales: exactly matching pairs at every size."""
    for size in sizes:
        if size not in PICTURE_SIZES:
            raise ValueError(f"picture size must be one of {PICTURE_SIZES}, got {size}")
    full = render(scene, RENDER_SIZE)
    return {size: full if size == RENDER_SIZE else full.reduce(RENDER_SIZE // size) for size in sizes}


# -------------------------------------------------------------------------------------------- captions

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "center": ("in the center", "in the middle"),
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top", "in the top"),
    "bottom": ("at the bottom", "in the bottom"),
}
# (relation word, position of the first shape, position of the second)
RELATIONS = (
    ("above", "top", "bottom"),
    ("below", "bottom", "top"),
    ("to the left of", "left", "right"),
    ("to the right of", "right", "left"),
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(shape: ShapeSpec) -> str:
    words = " ".join(w for w in (shape.size, shape.colour, shape.kind) if w)
    return f"{_article(words)} {words}"


def _shape_phrases(shape: ShapeSpec) -> list[str]:
    noun = _noun_phrase(shape)
    if shape.position is None:
        return [noun]
    return [f"{noun} {where}" for where in POSITION_PHRASES[shape.position]]


def _body_phrases(spec: SceneSpec) -> list[str]:
    if len(spec.shapes) == 1:
        return _shape_phrases(spec.shapes[0])
    a, b = spec.shapes
    bodies = [f"{pa} and {pb}" for pa in _shape_phrases(a) for pb in _shape_phrases(b)]
    for word, where_a, where_b in RELATIONS:
        if (a.position, b.position) == (where_a, where_b):
            unplaced_a, unplaced_b = replace(a, position=None), replace(b, position=None)
            bodies.append(f"{_noun_phrase(unplaced_a)} {word} {_noun_phrase(unplaced_b)}")
    return bodies


def phrasings(spec: SceneSpec) -> list[str]:
    """Every caption that states exactly the facts of `spec` (shapes in the order given)."""
    bodies = _body_phrases(spec)
    bg = spec.background
    if bg is None:
        return bodies
    return [
        phrase
        for body in bodies
        for phrase in (
            f"{body} on {_article(bg)} {bg} background",
            f"{body}, {bg} background",
            f"{bg} background with {body}",
        )
    ]


def describe(scene: Scene, rng: random.Random) -> SceneSpec:
    """A random subset of the scene's facts, as a caption would state them (colour and kind always)."""
    shapes = [ShapeSpec(s.kind, s.colour, s.size if rng.random() < 0.4 else None) for s in scene.shapes]
    if rng.random() < 0.4:
        shapes = [replace(spec, position=s.position) for spec, s in zip(shapes, scene.shapes, strict=True)]
    rng.shuffle(shapes)
    return SceneSpec(shapes=tuple(shapes), background=scene.background if rng.random() < 0.5 else None)


def write_caption(spec: SceneSpec, rng: random.Random) -> str:
    return rng.choice(phrasings(spec))


# ------------------------------------------------------------------------------------- held-out facts

HOLDOUT_MODULUS = 5


def _held_out_key(key: str) -> bool:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % HOLDOUT_MODULUS == 0


def is_held_out(spec: SceneSpec) -> bool:
    """Whether captions stating these facts are kept out of training (and so serve as evaluation prompts).

    The rule, on about one fact combination in five (a stable hash, so it never changes):
    - one shape with a named background: the (colour, kind, background) triple, whatever the caption
      says of size and position;
    - two shapes: the unordered pair of (colour, kind), whatever else the caption says.
    Captions naming one shape and no background are never held out: every colour-kind pair and every
    word is still trained, only these combinations never appear together in a training caption.
    """
    if len(spec.shapes) == 1:
        shape = spec.shapes[0]
        return spec.background is not None and _held_out_key(
            f"{shape.colour} {shape.kind} on {spec.background}"
        )
    pair = sorted(f"{s.colour} {s.kind}" for s in spec.shapes)
    return _held_out_key(" and ".join(pair))


def is_trainable(scene: Scene) -> bool:
    """Whether some training caption describes the scene: every one-shape scene (its caption may leave
    the background out), a two-shape scene only when its pair of shapes is not held out."""
    return not is_held_out(SceneSpec(tuple(ShapeSpec(s.kind, s.colour) for s in scene.shapes)))


def training_scene(rng: random.Random) -> Scene:
    while not is_trainable(scene := sample_scene(rng)):
        pass
    return scene


def training_description(scene: Scene, rng: random.Random) -> SceneSpec:
    """A random description of a trainable scene that is not held out (a fresh caption every call)."""
    if not is_trainable(scene):
        raise ValueError("no training caption describes this scene (its pair of shapes is held out)")
    while is_held_out(spec := describe(scene, rng)):
        pass  # only a named background can hold a one-shape description out; half of them name none
    return spec


def training_example(rng: random.Random) -> tuple[Scene, str]:
    """A random scene and a training caption of it (never a held-out combination)."""
    scene = training_scene(rng)
    return scene, write_caption(training_description(scene, rng), rng)


def caption_words() -> list[str]:
    """Every word a caption of this world can use (for the tokenizer of a trained checkpoint)."""
    words = {"a", "an", "and", "background", "with", *COLOURS, *KINDS, *SIZES}
    for phrase in (*(p for ps in POSITION_PHRASES.values() for p in ps), *(r[0] for r in RELATIONS)):
        words.update(phrase.split())
    return sorted(words)


# ------------------------------------------------------------------------------------------- parsing

_COLOUR = "|".join(COLOURS)
_SHAPE = rf"an? (?:(?:small|large) )?(?:{_COLOUR}) (?:{'|'.join(KINDS)})"
_WHERE = "|".join(p for phrases in POSITION_PHRASES.values() for p in phrases)
_SHAPE_PARTS = re.compile(
    rf"an? (?:(?P<size>small|large) )?(?P<colour>{_COLOUR}) (?P<kind>{'|'.join(KINDS)})"
    rf"(?: (?P<where>{_WHERE}))?"
)
_BACKGROUND_FORMS = (
    re.compile(rf"(?P<body>.+) on an? (?P<bg>{_COLOUR}) background"),
    re.compile(rf"(?P<body>.+), (?P<bg>{_COLOUR}) background"),
    re.compile(rf"(?P<bg>{_COLOUR}) background with (?P<body>.+)"),
)
_RELATION = re.compile(rf"(?P<a>{_SHAPE}) (?P<word>{'|'.join(w for w, _, _ in RELATIONS)}) (?P<b>{_SHAPE})")
_PHRASE_POSITION = {p: where for where, phrases in POSITION_PHRASES.items() for p in phrases}


def parse_caption(text: str) -> SceneSpec | None:
    """The facts a caption of this world states, or None when `text` is not one."""
    body, background = text, None
    for form in _BACKGROUND_FORMS:
        if match := form.fullmatch(text):
            body, background = match["body"], match["bg"]
            break
    shapes = _parse_body(body)
    if shapes is None:
        return None
    spec = SceneSpec(shapes=shapes, background=background)
    try:
        _check_spec(spec)
    except ValueError:
        return None
    return spec if text in phrasings(spec) else None


def _parse_body(body: str) -> tuple[ShapeSpec, ...] | None:
    if match := _RELATION.fullmatch(body):
        _, where_a, where_b = next(r for r in RELATIONS if r[0] == match["word"])
        a, b = _parse_shape(match["a"]), _parse_shape(match["b"])
        if a is None or b is None:
            return None
        return (replace(a, position=where_a), replace(b, position=where_b))
    parts = body.split(" and ")
    if len(parts) > 2:
        return None
    shapes = [_parse_shape(part) for part in parts]
    return None if None in shapes else tuple(shapes)  # type: ignore[arg-type]


def _parse_shape(text: str) -> ShapeSpec | None:
    match = _SHAPE_PARTS.fullmatch(text)
    if match is None:
        return None
    where = _PHRASE_POSITION[match["where"]] if match["where"] else None
    return ShapeSpec(kind=match["kind"], colour=match["colour"], size=match["size"], position=where)


def is_training_caption(text: str) -> bool:
    """Whether the training data can contain exactly this text."""
    spec = parse_caption(text)
    return spec is not None and not is_held_out(spec)


def scene_matches(scene: Scene, spec: SceneSpec) -> bool:
    """Whether `scene` shows every fact `spec` states (shapes in any order)."""
    if spec.background is not None and scene.background != spec.background:
        return False
    if len(scene.shapes) != len(spec.shapes):
        return False
    remaining = list(scene.shapes)
    for wanted in spec.shapes:
        found = next((s for s in remaining if _shape_matches(s, wanted)), None)
        if found is None:
            return False
        remaining.remove(found)
    return True


def _shape_matches(shape: Shape, spec: ShapeSpec) -> bool:
    return (
        shape.kind == spec.kind
        and shape.colour == spec.colour
        and spec.size in (None, shape.size)
        and spec.position in (None, shape.position)
    )
