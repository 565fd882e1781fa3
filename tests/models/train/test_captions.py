import random

import pytest

from models.train import captions, data, shapes
from models.train.captions import (
    HELD_OUT_STRUCTURES,
    MAX_TOKENS,
    grammar_caption,
    held_out_phrasing,
    held_out_structure,
    structure_caption,
    training_caption,
)
from models.train.evaluate import held_out_prompts
from models.train.shapes import SceneSpec, ShapeSpec


def training_captions(count: int, seed: int = 0) -> list[tuple[str, SceneSpec]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        spec = shapes.training_description(shapes.training_scene(rng), rng)
        pairs.append((training_caption(spec, rng), spec))
    return pairs


@pytest.fixture(scope="module")
def sampled() -> list[tuple[str, SceneSpec]]:
    return training_captions(4000)


def test_training_captions_cover_how_people_write(sampled) -> None:
    texts = [" ".join(text.lower().split()) for text, _ in sampled]

    def share(pattern: str) -> float:
        return sum(pattern in t for t in texts) / len(texts)

    # Word order, relative clauses, appositions, lists, imperatives, determiners, numbers, plurals.
    patterns = (
        *(" that is ", " which is ", "draw ", "show ", "make ", " next to ", " beside ", " with "),
        *("the ", "one ", "two shapes", "background with", "the background is", ", ", "picture of"),
    )
    for pattern in patterns:
        assert share(pattern) > 0.005, pattern
    assert any(t.startswith(("two circles", "two squares", "two triangles")) or " two circles" in t
               for t in texts)  # fmt: skip
    assert any(t != raw for t, (raw, _) in zip(texts, sampled, strict=True))  # case noise
    assert share("a red circle") > 0 and share("circle, red") > 0  # colour before and after the kind
    # The old templates' forms are still among them.
    assert any(shapes.is_training_caption(text) for text, _ in sampled)


def test_every_caption_states_its_facts_words(sampled) -> None:
    for text, spec in sampled:
        lowered = text.lower()
        for shape in spec.shapes:
            assert shape.colour in lowered and shape.kind in lowered, (text, spec)
        if spec.background:
            assert spec.background in lowered, (text, spec)


def test_training_never_holds_held_out_facts_or_structures(sampled) -> None:
    tokenizer = captions._shapes_tokenizer()
    for text, spec in sampled:
        assert not shapes.is_held_out(spec)
        assert held_out_structure(text) is None, text
        assert len(tokenizer.tokens(text)) <= MAX_TOKENS, text
    pairs = [SceneSpec((ShapeSpec(k, "red"), ShapeSpec(k2, c))) for k in shapes.KINDS for k2 in shapes.KINDS
             for c in ("blue", "green", "white")]  # fmt: skip
    held = next(spec for spec in pairs if shapes.is_held_out(spec))
    with pytest.raises(ValueError, match="held out"):
        training_caption(held, random.Random(0))


def test_the_training_batches_use_the_grammar() -> None:
    scenes = data.training_scenes(200, seed=3)
    texts, _ = data.captions(scenes, random.Random(0))
    assert sum(not shapes.is_training_caption(t.lower().rstrip(".!")) for t in texts) > 50  # not templates
    assert all(held_out_structure(t) is None for t in texts)


def test_held_out_sets_are_never_training_captions(sampled) -> None:
    training = {" ".join(t.lower().split()).rstrip(".!") for t, _ in sampled}
    for prompt_set in ("phrasings", "structures"):
        prompts = held_out_prompts(30, seed=0, prompt_set=prompt_set)
        assert len(prompts) == 60
        for prompt in prompts:
            assert shapes.is_held_out(prompt.spec)
            assert " ".join(prompt.text.lower().split()).rstrip(".!?") not in training
            if prompt_set == "phrasings":
                assert held_out_structure(prompt.text) is None, prompt.text
            else:
                assert held_out_structure(prompt.text) is not None, prompt.text
        assert held_out_prompts(30, seed=0, prompt_set=prompt_set) == prompts
    structures = {held_out_structure(p.text) for p in held_out_prompts(30, seed=0, prompt_set="structures")}
    assert structures == set(HELD_OUT_STRUCTURES)


@pytest.mark.parametrize("name", list(HELD_OUT_STRUCTURES))
def test_each_held_out_structure_is_recognised_and_the_grammar_never_writes_it(name: str) -> None:
    rng = random.Random(name)
    one = SceneSpec((ShapeSpec("circle", "red", "small", "left"),), "white")
    two = SceneSpec((ShapeSpec("circle", "red"), ShapeSpec("square", "blue")), "white")
    for spec in (one, two):
        for _ in range(20):
            text = structure_caption(spec, rng, name)
            assert held_out_structure(text) == name, text
            assert "red" in text.lower() and "circle" in text.lower()
    for _ in range(3000):
        assert held_out_structure(grammar_caption(two, rng)) is None


def test_held_out_phrasing_refuses_training_facts() -> None:
    trained = next(
        SceneSpec((ShapeSpec(k, "red"),), bg) for k in shapes.KINDS for bg in ("blue", "green", "white")
        if not shapes.is_held_out(SceneSpec((ShapeSpec(k, "red"),), bg))
    )  # fmt: skip
    with pytest.raises(ValueError, match="not held out"):
        held_out_phrasing(trained, random.Random(0))
