"""How people write about a picture of shapes: a caption grammar, with two held-out evaluation sets.

A caption states the facts of a `SceneSpec` (colour and kind of each shape, maybe size, position and
background) in one of many surface forms, chosen independently:
- the shape: colour before the kind ("a red circle"), in a relative clause ("a circle that is red"),
  or as an apposition ("a circle, red"); determiner "a"/"the"/"one" or none;
- two shapes: "and", a comma list, "with", "next to", "beside", a spatial relation, a count in front
  ("two shapes: ..."), or a plural when both have the same kind ("two circles, one red and one blue");
- the background first or last ("on a blue background", ", blue background", "the background is blue",
  "blue background with ...");
- an imperative or a frame ("draw ...", "show me ...", "a picture of ...");
- case and punctuation noise (the tokenizer lower-cases, so case noise costs the model nothing).

Two sets of prompts are held out of training, so that no training caption holds them word for word:
- held-out phrasings: the training grammar's forms, stating held-out fact combinations
  (`shapes.is_held_out`: a caption with those facts is never a training caption);
- held-out structures: grammatical forms the training grammar never produces (`HELD_OUT_STRUCTURES`,
  each recognised by its own pattern, which `training_caption` rejects), also stating held-out facts.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import replace

from models.tokenizer import Tokenizer, build_tokenizer
from models.train import shapes
from models.train.shapes import POSITION_PHRASES, RELATIONS, SceneSpec, ShapeSpec

MAX_TOKENS = 30  # CLIP's context of 32 less the start and end tokens

# ------------------------------------------------------------------------------------- shape phrases


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _determined(words: str, determiner: str) -> str:
    if determiner == "a":
        return f"{_article(words)} {words}"
    return f"{determiner} {words}".strip()


def _size(shape: ShapeSpec) -> str:
    return f"{shape.size} " if shape.size else ""


def shape_phrase(shape: ShapeSpec, form: str, determiner: str = "a") -> str:
    """One shape without its position: `form` is "before", "that", "which" or "apposition"."""
    size = _size(shape)
    if form == "before":
        return _determined(f"{size}{shape.colour} {shape.kind}", determiner)
    if form in ("that", "which"):
        return _determined(f"{size}{shape.kind} {form} is {shape.colour}", determiner)
    if form == "apposition":
        return _determined(f"{size}{shape.kind}, {shape.colour}", determiner)
    raise ValueError(f"unknown shape form {form!r}")


SHAPE_FORMS = ("before", "before", "before", "that", "which", "apposition")
DETERMINERS = ("a", "a", "a", "a", "the", "one", "")


def _placed(shape: ShapeSpec, text: str, rng: random.Random, front: bool = False) -> str:
    """The shape's position after it, or (`front`, a lone shape) sometimes before it."""
    if shape.position is None:
        return text
    where = rng.choice(POSITION_PHRASES[shape.position])
    return f"{where}, {text}" if front and rng.random() < 0.2 else f"{text} {where}"


def _shape(shape: ShapeSpec, rng: random.Random, determiner: str | None = None, alone: bool = False) -> str:
    """One shape; appositions ("a circle, red") and fronted positions only when it is the only one."""
    form = rng.choice(SHAPE_FORMS if alone else tuple(f for f in SHAPE_FORMS if f != "apposition"))
    text = shape_phrase(shape, form, rng.choice(DETERMINERS) if determiner is None else determiner)
    return _placed(shape, text, rng, front=alone)


# ------------------------------------------------------------------------------------------- bodies


def _pair_body(a: ShapeSpec, b: ShapeSpec, rng: random.Random) -> str:
    """Two shapes in one of the training forms."""
    if a.kind == b.kind and a.size is None and b.size is None and a.position is None and rng.random() < 0.2:
        plural = f"{a.kind}s"
        return rng.choice(
            (
                f"two {plural}, one {a.colour} and one {b.colour}",
                f"two {plural}: {_article(a.colour)} {a.colour} one and {_article(b.colour)} {b.colour} one",
            )
        )
    for word, where_a, where_b in RELATIONS:
        if (a.position, b.position) == (where_a, where_b) and rng.random() < 0.4:
            unplaced_a, unplaced_b = replace(a, position=None), replace(b, position=None)
            return f"{_shape(unplaced_a, rng)} {word} {_shape(unplaced_b, rng)}"
    first, second = _shape(a, rng), _shape(b, rng)
    if a.position is None and b.position is None and rng.random() < 0.25:
        joined = f"{first} {rng.choice(('next to', 'beside'))} {second}"
    else:
        joined = f"{first}{rng.choice((' and ', ' and ', ', ', ' with ', ', and '))}{second}"
    if rng.random() < 0.2:
        return f"{rng.choice(('two shapes:', 'two shapes,', 'two shapes -'))} {joined}"
    return joined


def _body(spec: SceneSpec, rng: random.Random) -> str:
    if len(spec.shapes) == 1:
        return _shape(spec.shapes[0], rng, alone=True)
    return _pair_body(*spec.shapes, rng)


BACKGROUND_LAST = (
    "{body} on {a} {bg} background",
    "{body}, {bg} background",
    "{body} against {a} {bg} background",
    "{body}, the background is {bg}",
    "{body} on {bg}",
)
BACKGROUND_FIRST = (
    "{bg} background with {body}",
    "{bg} background, {body}",
    "on {a} {bg} background, {body}",
)
FRAMES = ("{x}", "{x}", "{x}", "draw {x}", "show {x}", "make {x}", "please draw {x}", "show me {x}",
          "draw me {x}", "a picture of {x}", "an image of {x}")  # fmt: skip


def _with_background(body: str, background: str | None, rng: random.Random) -> str:
    if background is None:
        return body
    forms = BACKGROUND_FIRST if rng.random() < 0.3 else BACKGROUND_LAST
    return rng.choice(forms).format(body=body, bg=background, a=_article(background))


def add_noise(text: str, rng: random.Random) -> str:
    """Case and punctuation noise: capitalised, upper or title case, a full stop or "!", doubled spaces."""
    roll = rng.random()
    if roll < 0.25:
        text = text[0].upper() + text[1:]
    elif roll < 0.32:
        text = text.upper()
    elif roll < 0.38:
        text = text.title()
    roll = rng.random()
    if roll < 0.25:
        text += "."
    elif roll < 0.3:
        text += "!"
    if rng.random() < 0.05:
        text = text.replace(" ", "  ", 1)
    return text


def grammar_caption(spec: SceneSpec, rng: random.Random) -> str:
    """A caption of `spec` in the training grammar (may state held-out facts: see `training_caption`)."""
    text = _with_background(_body(spec, rng), spec.background, rng)
    return add_noise(rng.choice(FRAMES).format(x=text), rng)


# --------------------------------------------------------------------------------- held-out structures


def _coloured(shape: ShapeSpec, rng: random.Random) -> str:
    return _placed(shape, f"{_article(_size(shape) or shape.kind)} {_size(shape)}{shape.kind} coloured "
                   f"{shape.colour}", rng)  # fmt: skip


def _in_colour(shape: ShapeSpec, rng: random.Random) -> str:
    return _placed(shape, f"{_article(_size(shape) or shape.kind)} {_size(shape)}{shape.kind} in "
                   f"{shape.colour}", rng)  # fmt: skip


def _there_is(spec: SceneSpec, rng: random.Random) -> str:
    body = " and ".join(_shape(s, rng, "a") for s in spec.shapes)
    text = f"there is {body}"
    return text + (f" on {_article(spec.background)} {spec.background} background" if spec.background else "")


def _can_you(spec: SceneSpec, rng: random.Random) -> str:
    return f"can you draw {_with_background(_body(spec, rng), spec.background, rng)}?"


def _background_of(spec: SceneSpec, rng: random.Random) -> str:
    body = " and ".join(_shape(s, rng, "a") for s in spec.shapes)
    return f"{body} on a background of {spec.background}" if spec.background else f"i want {body}"


def _both(spec: SceneSpec, rng: random.Random) -> str:
    parts = [_shape(s, rng, "a") for s in spec.shapes]
    body = f"{parts[0]} and nothing else" if len(parts) == 1 else f"both {parts[0]} as well as {parts[1]}"
    return _with_background(body, spec.background, rng)


Writer = Callable[[SceneSpec, random.Random], str]


def _colour_phrase(make: Callable[[ShapeSpec, random.Random], str]) -> Writer:
    def caption(spec: SceneSpec, rng: random.Random) -> str:
        return _with_background(" and ".join(make(s, rng) for s in spec.shapes), spec.background, rng)

    return caption


# name -> (writer, a pattern that recognises the structure and that no training caption matches)
HELD_OUT_STRUCTURES: dict[str, tuple[Writer, re.Pattern[str]]] = {
    "participle": (_colour_phrase(_coloured), re.compile(r"\bcoloured\b")),
    "colour as a prepositional phrase": (
        _colour_phrase(_in_colour),
        re.compile(r"\b(?:circle|square|triangle) in (?:" + "|".join(shapes.COLOURS) + r")\b"),
    ),
    "existential": (_there_is, re.compile(r"^there is\b")),
    "question": (_can_you, re.compile(r"^can you\b")),
    "background of / i want": (_background_of, re.compile(r"\bbackground of\b|^i want\b")),
    "both ... as well as / nothing else": (_both, re.compile(r"\bas well as\b|\bnothing else\b")),
}


def held_out_structure(text: str) -> str | None:
    """The held-out structure `text` is written in, or None."""
    lowered = " ".join(text.lower().split())
    for name, (_, pattern) in HELD_OUT_STRUCTURES.items():
        if pattern.search(lowered):
            return name
    return None


def structure_caption(spec: SceneSpec, rng: random.Random, structure: str | None = None) -> str:
    """A caption of `spec` in a held-out structure (`structure`, or one at random)."""
    name = structure or rng.choice(tuple(HELD_OUT_STRUCTURES))
    return add_noise(HELD_OUT_STRUCTURES[name][0](spec, rng), rng)


# ------------------------------------------------------------------------------------------ training


def fits(text: str, count_tokens: Callable[[str], int] | None = None) -> bool:
    """Whether the caption fits CLIP's context (`count_tokens`: the checkpoint tokenizer's count)."""
    if count_tokens is None:
        count_tokens = _default_count
    return count_tokens(text) <= MAX_TOKENS


def _default_count(text: str) -> int:
    return len(_shapes_tokenizer().tokens(text))


@functools.cache
def _shapes_tokenizer() -> Tokenizer:
    """The tokenizer every checkpoint trained on this world has (`train.initial_models`)."""
    from models.checkpoint import DEFAULT_WORDS

    return build_tokenizer(sorted({*DEFAULT_WORDS, *shapes.caption_words()}), MAX_TOKENS + 2)


def training_caption(spec: SceneSpec, rng: random.Random) -> str:
    """A fresh training caption of `spec`: never held-out facts, never a held-out structure, always
    within CLIP's context."""
    if shapes.is_held_out(spec):
        raise ValueError(f"{spec} is held out of training")
    for _ in range(100):
        text = grammar_caption(spec, rng)
        if held_out_structure(text) is None and fits(text):
            return text
    return shapes.write_caption(spec, rng)  # the plain templates always fit


def held_out_phrasing(spec: SceneSpec, rng: random.Random) -> str:
    """A caption of held-out facts `spec` in the training grammar (an evaluation prompt)."""
    if not shapes.is_held_out(spec):
        raise ValueError(f"{spec} is not held out: training captions state it")
    while True:
        text = grammar_caption(spec, rng)
        if held_out_structure(text) is None and fits(text):
            return text


def is_training_caption(text: str, spec: SceneSpec) -> bool:
    """Whether `training_caption` could return `text` for facts `spec` (held-out-ness, not grammar)."""
    return not shapes.is_held_out(spec) and held_out_structure(text) is None and fits(text)
