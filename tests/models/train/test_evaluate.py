import json
import random
from typing import Any

import pytest
from PIL import Image

from models.train import evaluate
from models.train.classify import classify
from models.train.evaluate import (
    CATEGORIES,
    Prompt,
    check_inpaint,
    check_interpolation,
    check_text_diff,
    check_variation,
    corner_mask,
    evaluate_generation,
    evaluate_operations,
    held_out_prompts,
    score,
)
from models.train.shapes import (
    COLOURS,
    SceneSpec,
    ShapeSpec,
    is_held_out,
    is_training_caption,
    parse_caption,
    render,
    sample_scene,
)


def picture(spec: SceneSpec, size: int, seed: int = 0) -> Image.Image:
    return render(sample_scene(random.Random(seed), spec), size)


def shape(kind: str, colour: str, size: str | None = None, position: str | None = None) -> SceneSpec:
    return SceneSpec((ShapeSpec(kind, colour, size, position),), background="white")


class TruthPipeline:
    """Does what a perfect model would: draws what it is asked, from the facts the classifier reads."""

    def __init__(self, swap_colours: bool = False) -> None:
        self.swap_colours = swap_colours

    def sampling(self, **overrides: Any) -> dict[str, Any]:
        return overrides

    def generate(self, prompts: list[str], seeds: list[int], sampling: dict[str, Any]) -> list[Image.Image]:
        pictures = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            spec = parse_caption(prompt)
            if self.swap_colours:  # every shape drawn in a colour nobody asked for
                taken = {s.colour for s in spec.shapes} | {spec.background}
                spare = iter(c for c in COLOURS if c not in taken)
                spec = SceneSpec(tuple(ShapeSpec(s.kind, next(spare)) for s in spec.shapes), spec.background)
            pictures.append(picture(spec, sampling["size"], seed))
        return pictures

    def variation(
        self, images: list[Image.Image], seeds: list[int], sampling: dict[str, Any]
    ) -> list[Image.Image]:
        found = classify(images[0])
        spec = SceneSpec((ShapeSpec(found.largest.kind, found.largest.colour, "small"),), found.background)
        return [picture(spec, sampling["size"], seed) for seed in seeds]

    def interpolate(self, images_a, images_b, seeds, sampling, frames):
        return [
            [Image.blend(a, b, i / (frames - 1)) for i in range(frames)]
            for a, b in zip(images_a, images_b, strict=True)
        ]

    def text_diff(self, images, prompts, source_captions, seeds, sampling, frames):
        return [
            [image, picture(parse_caption(prompt), sampling["size"])]
            for image, prompt in zip(images, prompts, strict=True)
        ]

    def inpaint(self, images, masks, prompts, seeds, sampling):
        painted = []
        for image, mask in zip(images, masks, strict=True):
            x0, y0, x1, _ = mask.getbbox()
            side = (x1 - x0) // 2
            image = image.copy()
            image.paste(
                COLOURS["green"],
                (x0 + side // 2, y0 + side // 2, x0 + side // 2 + side, y0 + side // 2 + side),
            )
            painted.append(image)
        return painted


def test_prompts_are_held_out_and_parse_to_their_facts() -> None:
    prompts = held_out_prompts(30, seed=0)
    assert {p.category for p in prompts} == set(CATEGORIES)
    assert sum(p.category == "one shape" for p in prompts) == 30
    assert sum(p.category == "two shapes" for p in prompts) == 30
    assert len({p.text for p in prompts}) == 60
    for prompt in prompts:
        assert parse_caption(prompt.text) == prompt.spec
        assert is_held_out(prompt.spec) and not is_training_caption(prompt.text)
        assert len(prompt.spec.shapes) == (1 if prompt.category == "one shape" else 2)
    assert held_out_prompts(30, seed=0) == prompts


@pytest.mark.parametrize("size", [64, 256])
def test_rendered_truth_scores_every_prompt_right(size: int) -> None:
    prompts = held_out_prompts(12, seed=1)
    results = evaluate_generation(TruthPipeline(), prompts, size, batch=5)
    for category in CATEGORIES:
        assert results[category].total == 12
        assert results[category].rate() == 1.0, results[category].line(category)
    assert "12/12 = 100.0%" in evaluate.report({size: results}, {})


def test_wrong_colours_score_nothing_but_the_kinds() -> None:
    results = evaluate_generation(TruthPipeline(swap_colours=True), held_out_prompts(8, seed=2), 64)
    one, two = results["one shape"], results["two shapes"]
    assert one.rate() == 0 and one.rate("colour") == 0 and one.rate("kind") == 1
    assert two.rate() == 0 and two.rate("colours") == 0


def test_scoring_one_shape_reads_the_largest_shape_and_the_background() -> None:
    prompt = Prompt("a red circle on a white background", shape("circle", "red"), "one shape")
    big_red = SceneSpec(
        (ShapeSpec("circle", "red", "large", "left"), ShapeSpec("square", "blue", "small", "right")), "white"
    )
    big_blue = SceneSpec(
        (ShapeSpec("circle", "red", "small", "left"), ShapeSpec("square", "blue", "large", "right")), "white"
    )
    assert score(prompt, classify(picture(big_red, 64)))["correct"]
    assert not score(prompt, classify(picture(big_blue, 64)))["correct"]
    on_black = SceneSpec(shape("circle", "red").shapes, "black")
    checks = score(prompt, classify(picture(on_black, 64)))
    assert not checks["correct"] and checks["colour"] and checks["kind"] and not checks["background"]


def test_scoring_two_shapes_needs_both_with_their_own_colours() -> None:
    spec = SceneSpec((ShapeSpec("circle", "red"), ShapeSpec("square", "blue")))
    prompt = Prompt("a red circle and a blue square", spec, "two shapes")
    assert score(prompt, classify(picture(spec, 64)))["correct"]
    swapped = SceneSpec((ShapeSpec("circle", "blue"), ShapeSpec("square", "red")))  # binding wrong
    checks = score(prompt, classify(picture(swapped, 64)))
    assert not checks["correct"] and checks["colours"]
    assert not score(prompt, classify(picture(shape("circle", "red"), 64)))["correct"]


def test_operation_checks_pass_on_truth_and_fail_on_nonsense() -> None:
    size = 64
    red, blue = (
        picture(shape("circle", "red", "large"), size),
        picture(shape("square", "blue", "large"), size),
    )
    assert check_variation(red, [red]) == {"kept colour and kind": 1.0, "changed": 0.0}
    assert check_variation(red, [blue])["kept colour and kind"] == 0.0
    assert check_interpolation(red, blue, [red, Image.blend(red, blue, 0.5), blue]) == {
        "starts like a": 1.0,
        "ends like b": 1.0,
        "passes between": 1.0,
    }
    assert check_interpolation(red, blue, [red, red, red])["ends like b"] == 0.0
    assert check_interpolation(red, blue, [red, blue, blue])["passes between"] == 0.0
    assert check_text_diff([red, blue], "blue") == {"ends blue": 1.0}
    assert check_text_diff([red, red], "blue") == {"ends blue": 0.0}
    mask = corner_mask(size)
    source = picture(shape("circle", "red", "small", "left"), size)
    assert check_inpaint(source, mask, source) == {"green square in the corner": 0.0, "rest kept": 1.0}
    assert check_inpaint(source, mask, blue)["rest kept"] == 0.0


@pytest.mark.parametrize("size", [64, 256])
def test_operations_of_a_perfect_pipeline_all_pass(size: int) -> None:
    results = evaluate_operations(TruthPipeline(), size)
    assert set(results) == {"variation", "interpolation", "text diff", "inpaint"}
    for operation, checks in results.items():
        assert all(value == 1.0 for value in checks.values()), (operation, checks)


def test_evaluate_command_prints_and_saves_the_figures(tmp_path, monkeypatch, capsys) -> None:
    from models.pipeline import UnCLIPPipeline
    from models.train.cli import main

    asked = {}

    def from_checkpoint(cls, folder=None, device="auto", dtype="auto"):
        asked.update(folder=folder, device=device)
        return TruthPipeline()

    monkeypatch.setattr(UnCLIPPipeline, "from_checkpoint", classmethod(from_checkpoint))
    arguments = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--sizes",
        "64",
        "--prompts",
        "3",
        "--repeats",
        "2",
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "figures.json"),
        "--images",
        str(tmp_path / "pictures"),
    ]
    assert main(arguments) == 0
    assert asked == {"folder": tmp_path / "ckpt", "device": "cpu"}
    printed = capsys.readouterr().out
    assert "one shape: 6/6 = 100.0%" in printed and "two shapes: 6/6 = 100.0%" in printed
    assert "inpaint: green square in the corner 100%, rest kept 100%" in printed
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["64"]["one shape"] == {
        "total": 6,
        "correct": 1.0,
        "colour": 1.0,
        "kind": 1.0,
        "background": 1.0,
    }
    assert figures["64"]["text diff"] == {"ends blue": 1.0}
    assert len(list((tmp_path / "pictures" / "64").glob("*.png"))) == 12  # 2 repeats of 6, none overwritten
