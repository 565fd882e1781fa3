import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from models.tokenizer import build_tokenizer
from models.train.shapes import (
    COLOURS,
    GAP,
    JITTER,
    MARGIN,
    POSITIONS,
    SIZES,
    Scene,
    SceneSpec,
    ShapeSpec,
    caption_words,
    is_held_out,
    is_trainable,
    is_training_caption,
    parse_caption,
    phrasings,
    render,
    render_crop,
    render_sizes,
    sample_scene,
    scene_matches,
    training_description,
    training_example,
    training_scene,
)


def scenes(count: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(count)]


def test_same_seed_same_scene_and_pixels() -> None:
    first, second = scenes(5, seed=7), scenes(5, seed=7)
    assert first == second
    assert render(first[0], 256).tobytes() == render(second[0], 256).tobytes()
    assert scenes(5, seed=8) != first


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_flat_regions_have_the_exact_named_colours(size: int) -> None:
    for scene in scenes(6, seed=size):
        picture = render(scene, size)
        assert picture.size == (size, size) and picture.mode == "RGB"
        assert picture.getpixel((0, 0)) == COLOURS[scene.background]
        for shape in scene.shapes:
            # Below the box centre lies inside every kind (the triangle is widest at the bottom).
            inside = (int(shape.cx * size), int((shape.cy + shape.extent / 8) * size))
            assert picture.getpixel(inside) == COLOURS[shape.colour]


def test_edges_are_anti_aliased() -> None:
    scene = sample_scene(random.Random(3), SceneSpec((ShapeSpec("circle", "red"),), background="white"))
    colours = {c for _, c in render(scene, 1024).getcolors(maxcolors=1 << 20)}
    assert len(colours) > 10  # blends between the two named colours along the edge


def test_smaller_pictures_are_box_filtered_from_the_1024_one() -> None:
    scene = scenes(1, seed=4)[0]
    pictures = render_sizes(scene)
    for size in (64, 256):
        expected = pictures[1024].resize((size, size), Image.Resampling.BOX)
        diff = np.abs(np.asarray(pictures[size], np.int16) - np.asarray(expected, np.int16))
        assert diff.max() <= 1


@pytest.mark.parametrize("kind, area", [("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_each_kind_covers_its_area(kind: str, area: float) -> None:
    spec = SceneSpec((ShapeSpec(kind, "blue", size="large"),), background="yellow")
    scene = sample_scene(random.Random(0), spec)
    pixels = np.asarray(render(scene, 256), np.float32)
    # Coverage from the blend between the two colours, so anti-aliased edges count by their share.
    blue, yellow = np.array(COLOURS["blue"]), np.array(COLOURS["yellow"])
    coverage = ((pixels - yellow) @ (blue - yellow)) / ((blue - yellow) @ (blue - yellow))
    assert coverage.mean() == pytest.approx(area * scene.shapes[0].extent ** 2, rel=0.02)


def test_geometry_follows_the_spec() -> None:
    for scene in scenes(300, seed=1):
        assert len(scene.shapes) in (1, 2)
        colours = [s.colour for s in scene.shapes]
        assert scene.background not in colours and len(set(colours)) == len(colours)
        for shape in scene.shapes:
            low, high = SIZES[shape.size]
            assert low <= shape.extent <= high
            x0, y0, x1, y1 = shape.box
            assert min(x0, y0) >= MARGIN - 1e-9 and max(x1, y1) <= 1 - MARGIN + 1e-9
            anchor_x, anchor_y = POSITIONS[shape.position]
            for centre, anchor in ((shape.cx, anchor_x), (shape.cy, anchor_y)):
                clamped = min(
                    abs(centre - shape.extent / 2 - MARGIN), abs(1 - centre - shape.extent / 2 - MARGIN)
                )
                assert abs(centre - anchor) <= JITTER + 1e-9 or clamped < 1e-9
        if len(scene.shapes) == 2:
            a, b = (s.box for s in scene.shapes)
            assert a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def test_attributes_a_caption_leaves_out_are_drawn_at_random() -> None:
    rng = random.Random(0)
    spec = parse_caption("a red circle")
    drawn = [sample_scene(rng, spec) for _ in range(300)]
    assert all(scene_matches(scene, spec) for scene in drawn)
    assert {s.background for s in drawn} == set(COLOURS) - {"red"}
    assert {s.shapes[0].size for s in drawn} == set(SIZES)
    assert {s.shapes[0].position for s in drawn} == set(POSITIONS)


def test_impossible_specs_are_refused() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError, match="background"):
        sample_scene(rng, SceneSpec((ShapeSpec("circle", "red"),), background="red"))
    with pytest.raises(ValueError, match="opposite"):
        sample_scene(
            rng,
            SceneSpec(
                (ShapeSpec("circle", "red", position="left"), ShapeSpec("square", "blue", position="top"))
            ),
        )


@pytest.mark.parametrize(
    "text, spec",
    [
        ("a red circle", SceneSpec((ShapeSpec("circle", "red"),))),
        (
            "a large red circle on a white background",
            SceneSpec((ShapeSpec("circle", "red", size="large"),), background="white"),
        ),
        ("a small blue square in the top", SceneSpec((ShapeSpec("square", "blue", "small", "top"),))),
        (
            "a green triangle on the left, black background",
            SceneSpec((ShapeSpec("triangle", "green", position="left"),), background="black"),
        ),
        (
            "a yellow circle and a purple square",
            SceneSpec((ShapeSpec("circle", "yellow"), ShapeSpec("square", "purple"))),
        ),
        (
            "an orange square above a blue circle",
            SceneSpec(
                (
                    ShapeSpec("square", "orange", position="top"),
                    ShapeSpec("circle", "blue", position="bottom"),
                )
            ),
        ),
    ],
)
def test_captions_of_the_spec_parse_to_their_facts(text: str, spec: SceneSpec) -> None:
    assert parse_caption(text) == spec
    assert text in phrasings(spec)


@pytest.mark.parametrize(
    "text",
    [
        "a orange circle",
        "a red hexagon",
        "a red circle on a red background",
        "a red circle and a red square",
        "a red circle and a blue square and a green circle",
        "two red circles",
        "",
    ],
)
def test_text_outside_the_world_is_not_a_caption(text: str) -> None:
    assert parse_caption(text) is None
    assert not is_training_caption(text)


def test_training_captions_describe_their_scenes_and_vary() -> None:
    rng = random.Random(5)
    captions = []
    for _ in range(400):
        scene, caption = training_example(rng)
        spec = parse_caption(caption)
        assert spec is not None and scene_matches(scene, spec), caption
        assert is_training_caption(caption)
        captions.append(caption)
    forms = Counter(
        ("background" in c, " and " in c, "above" in c or "below" in c or " of " in c) for c in captions
    )
    assert len(forms) >= 6  # backgrounds, pairs, relations all appear
    assert len(set(captions)) > 300


def test_held_out_combinations_never_reach_training() -> None:
    triples = [
        SceneSpec((ShapeSpec(kind, colour),), background=bg)
        for kind in ("circle", "square", "triangle")
        for colour in COLOURS
        for bg in COLOURS
        if bg != colour
    ]
    held = [spec for spec in triples if is_held_out(spec)]
    assert 0.1 < len(held) / len(triples) < 0.3
    for spec in held:
        assert not any(is_training_caption(text) for text in phrasings(spec))
        # Size and position do not rescue a held-out triple.
        larger = SceneSpec(
            (ShapeSpec(spec.shapes[0].kind, spec.shapes[0].colour, "large", "left"),), spec.background
        )
        assert not any(is_training_caption(text) for text in phrasings(larger))
    # One shape without a background is always trainable, so every colour-kind pair is learnt.
    assert not any(is_held_out(SceneSpec(spec.shapes)) for spec in triples)
    pair = SceneSpec((ShapeSpec("circle", "red"), ShapeSpec("square", "blue")))
    swapped = SceneSpec(pair.shapes[::-1])
    assert is_held_out(pair) == is_held_out(swapped)


def test_training_examples_never_use_held_out_facts() -> None:
    rng = random.Random(9)
    for _ in range(500):
        _, caption = training_example(rng)
        assert not is_held_out(parse_caption(caption))


def test_small_pictures_drawn_alone_match_the_downscaled_1024_one() -> None:
    # render(scene, 64) draws at 1024 px (16×16 samples a pixel) instead of box-filtering the 4096 px one:
    # edges move by at most a quarter of a picture pixel (corners rounded on a coarser canvas), flat
    # regions are equal.
    for scene in scenes(10, seed=11):
        for size in (64, 256):
            alone = np.asarray(render(scene, size), np.int16)
            downscaled = np.asarray(render_sizes(scene, (size,))[size], np.int16)
            difference = np.abs(alone - downscaled)
            assert difference.mean() < 0.2 and difference.max() <= 255 / 4


def test_crop_arguments_are_checked() -> None:
    scene = scenes(1)[0]
    with pytest.raises(ValueError, match="does not fit"):
        render_crop(scene, 256, 200, 0, 64)
    with pytest.raises(ValueError, match="picture size"):
        render_crop(scene, 128, 0, 0, 64)


def test_every_caption_word_is_one_token_of_the_training_tokenizer() -> None:
    words = caption_words()
    tokenizer = build_tokenizer(words)
    rng = random.Random(2)
    for _ in range(300):
        _, caption = training_example(rng)
        for word in caption.replace(",", "").split():
            assert word in words
            assert len(tokenizer.tokens(word)) == 1, word


def test_training_descriptions_are_true_and_trainable() -> None:
    rng = random.Random(4)
    for scene in scenes(200, seed=4):
        if not is_trainable(scene):
            assert len(scene.shapes) == 2
            with pytest.raises(ValueError, match="held out"):
                training_description(scene, rng)
            continue
        spec = training_description(scene, rng)
        assert scene_matches(scene, spec) and not is_held_out(spec)
    assert all(is_trainable(training_scene(rng)) for _ in range(50))
