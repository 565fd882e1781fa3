import json
import random
from typing import Any

import numpy as np
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


SPECS: dict[str, SceneSpec] = {}  # prompt text -> facts, for prompts no parser reads


def prompts_of(*args: Any, **kwargs: Any) -> list[Prompt]:
    prompts = held_out_prompts(*args, **kwargs)
    SPECS.update({p.text: p.spec for p in prompts})
    return prompts


def facts(prompt: str) -> SceneSpec:
    return SPECS.get(prompt) or parse_caption(prompt)


class TruthPipeline:
    """Does what a perfect model would: draws what it is asked, from the facts the classifier reads."""

    def __init__(self, swap_colours: bool = False) -> None:
        self.swap_colours = swap_colours

    def sampling(self, **overrides: Any) -> dict[str, Any]:
        return overrides

    def generate(self, prompts: list[str], seeds: list[int], sampling: dict[str, Any]) -> list[Image.Image]:
        pictures = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            spec = facts(prompt)
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
            [image, picture(facts(prompt), sampling["size"])]
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
@pytest.mark.parametrize("prompt_set", evaluate.PROMPT_SETS)
def test_rendered_truth_scores_every_prompt_right(size: int, prompt_set: str) -> None:
    prompts = prompts_of(12, seed=1, prompt_set=prompt_set)
    results = evaluate_generation(TruthPipeline(), prompts, size, batch=5)
    for category in CATEGORIES:
        assert results[category].total == 12
        assert results[category].rate() == 1.0, results[category].line(category)
        failures = ("leaked", "twice", "swapped", "empty")
        assert all(results[category].checks.get(f, 0) == 0 for f in failures)
    text = evaluate.report({size: {prompt_set: results}}, {})
    assert "12/12 = 100.0% [76%, 100%]" in text and evaluate.SET_TITLES[prompt_set] in text


def test_wrong_colours_score_nothing_but_the_kinds() -> None:
    results = evaluate_generation(TruthPipeline(swap_colours=True), prompts_of(8, seed=2), 64)
    one, two = results["one shape"], results["two shapes"]
    assert one.rate() == 0 and one.rate("colour") == 0 and one.rate("kind") == 1
    assert two.rate() == 0 and two.rate("colours") == 0
    assert one.rate("empty") == two.rate("empty") == 0


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
    monkeypatch.setattr(evaluate, "held_out_prompts", prompts_of)
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
    assert printed.count("one shape: 6/6 = 100.0%") == printed.count("two shapes: 6/6 = 100.0%") == 2
    assert "held-out phrasings" in printed and "held-out structures" in printed
    assert "inpaint: green square in the corner 100%, rest kept 100%" in printed
    figures = json.loads((tmp_path / "figures.json").read_text())
    one = figures["64"]["structures"]["one shape"]
    assert {k: one[k] for k in ("total", "correct", "colour", "kind", "background", "leaked", "empty")} == {
        "total": 6,
        "correct": 1.0,
        "colour": 1.0,
        "kind": 1.0,
        "background": 1.0,
        "leaked": 0.0,
        "empty": 0.0,
    }
    assert one["intervals"]["correct"] == pytest.approx([0.61, 1.0], abs=0.01)
    assert figures["64"]["text diff"] == {"ends blue": 1.0}
    for prompt_set in ("phrasings", "structures"):  # 2 repeats of 6, none overwritten
        assert len(list((tmp_path / "pictures" / "64" / prompt_set).glob("*.png"))) == 12


def two_shape_prompt() -> Prompt:
    spec = SceneSpec((ShapeSpec("circle", "red"), ShapeSpec("square", "blue")), "white")
    return Prompt("a circle that is red next to a blue square", spec, "two shapes", "phrasings")


def test_failure_readings_on_known_failures() -> None:
    """The world's renderer draws perfect pictures; each is corrupted into one known failure."""
    prompt = two_shape_prompt()
    right = score(prompt, classify(picture(prompt.spec, 64)))
    assert right["correct"] and not any(right[k] for k in ("leaked", "twice", "swapped", "empty"))
    # The red became the background; the square kept its own colour.
    leaked = score(prompt, classify(picture(SceneSpec((ShapeSpec("square", "blue"),), "red"), 64)))
    assert leaked["leaked"] and not leaked["correct"] and not leaked["empty"]
    # Two red shapes: red drawn twice, blue missing (the square of a right picture recoloured).
    right_picture = picture(SceneSpec(prompt.spec.shapes, "white"), 64)
    checks = score(prompt, classify(_recolour(right_picture, "blue", "red")))
    assert checks["twice"] and not checks["correct"] and not checks["swapped"], checks
    # Kinds swapped: a red square and a blue circle.
    swapped = SceneSpec((ShapeSpec("square", "red"), ShapeSpec("circle", "blue")), "white")
    checks = score(prompt, classify(picture(swapped, 64)))
    assert checks["swapped"] and checks["colours"] and not checks["correct"] and not checks["twice"]
    # An empty canvas.
    blank = Image.new("RGB", (64, 64), COLOURS["white"])
    checks = score(prompt, classify(blank))
    assert checks["empty"] and not checks["correct"] and not checks["leaked"]


def test_one_shape_failure_readings() -> None:
    prompt = Prompt("a circle, red, on white", shape("circle", "red"), "one shape", "phrasings")
    flooded = Image.new("RGB", (64, 64), COLOURS["red"])
    checks = score(prompt, classify(flooded))
    assert checks["leaked"] and checks["empty"] and not checks["correct"]
    pair = SceneSpec(
        (ShapeSpec("circle", "red", "large", "left"), ShapeSpec("circle", "blue", "small", "right")), "white"
    )
    checks = score(prompt, classify(_recolour(picture(pair, 64), "blue", "red")))
    assert checks["twice"] and checks["correct"] and not checks["leaked"]  # the largest is right


def _recolour(image: Image.Image, old: str, new: str) -> Image.Image:
    """Every pixel blended toward colour `old` moved toward `new` instead (anti-aliased edges too)."""
    pixels = np.asarray(image, np.float32)
    base, a, b = (np.array(COLOURS[c], np.float32) for c in ("white", old, new))
    alpha = np.clip(((pixels - base) @ (a - base)) / ((a - base) @ (a - base)), 0, 1)
    near = np.linalg.norm(pixels - (base + alpha[..., None] * (a - base)), axis=-1) < 20
    out = np.where((near & (alpha > 0.05))[..., None], base + alpha[..., None] * (b - base), pixels)
    return Image.fromarray(out.round().astype(np.uint8))


def test_wilson_intervals() -> None:
    assert evaluate.wilson(5, 10) == pytest.approx((0.237, 0.763), abs=1e-3)
    assert evaluate.wilson(0, 10) == pytest.approx((0.0, 0.278), abs=1e-3)
    assert evaluate.wilson(10, 10) == pytest.approx((0.722, 1.0), abs=1e-3)
    low, high = evaluate.wilson(80, 100)
    assert low < 0.8 < high and high - low < 0.17


def test_evaluate_command_passes_guidance_overrides(monkeypatch, capsys) -> None:
    from models.pipeline import UnCLIPPipeline
    from models.train.cli import main

    seen: list[dict[str, Any]] = []

    class Recording(TruthPipeline):
        def sampling(self, **overrides: Any) -> dict[str, Any]:
            seen.append(overrides)
            return overrides

    monkeypatch.setattr(UnCLIPPipeline, "from_checkpoint", classmethod(lambda cls, *a, **k: Recording()))
    monkeypatch.setattr(evaluate, "held_out_prompts", prompts_of)
    arguments = ["evaluate", "--sizes", "64", "--prompts", "1", "--sets", "phrasings", "--no-operations"]
    assert main([*arguments, "--decoder-guidance", "4", "--decoder-image-guidance", "2.5"]) == 0
    assert seen and all(s["decoder_guidance"] == 4 and s["decoder_image_guidance"] == 2.5 for s in seen)
    assert all(s["prior_guidance"] is None for s in seen)  # not given: the checkpoint's own
    assert "held-out structures" not in capsys.readouterr().out
