"""The cross-reading diagnostic: the prior and the decoder each read the prompt or a template wording."""

import numpy as np

from models.pipeline import UnCLIPPipeline
from models.train import captions, shapes
from models.train.evaluate import evaluate_generation, held_out_prompts
from models.train.readings import cross_readings, trained_prompts


def test_the_prompt_read_by_both_is_what_generate_draws_and_templates_are_read_apart() -> None:
    pipeline = UnCLIPPipeline.from_checkpoint(None, device="cpu", dtype="float32")
    pipeline.reader = None  # the readings are of the stack itself: generation without the prompt reader
    prompts = [p for p in held_out_prompts(2, 0, "phrasings") if p.category == "two shapes"]
    read = []
    text = pipeline._text
    pipeline._text = lambda texts: read.append(texts) or text(texts)
    pictures = []
    results = cross_readings(
        pipeline,
        prompts,
        seed=5,
        on_picture=lambda cell, p, image: cell == ("prompt", "prompt") and pictures.append(image),
    )
    assert set(results) == {(a, b) for a in ("prompt", "template") for b in ("prompt", "template")}
    assert all(result.total == len(prompts) for result in results.values())
    prompt_texts, template_texts = read
    assert prompt_texts == [p.text for p in prompts]
    for prompt, template in zip(prompts, template_texts, strict=True):
        assert template != prompt.text and template in shapes.phrasings(prompt.spec)
    pipeline._text = text
    # both reading the prompt is exactly generation (one candidate) at 64 px with the same seeds
    generated = []
    evaluate_generation(
        pipeline, prompts, 64, seed=5, sampling={"best_of": 1},
        on_picture=lambda p, image, found: generated.append(image),
    )  # fmt: skip
    assert [np.asarray(image).tolist() for image in pictures] == [
        np.asarray(image).tolist() for image in generated
    ]


def test_trained_prompts_state_trained_pairs_in_the_training_grammar() -> None:
    """The mirror of the held-out phrasings: two shapes whose facts training captions state, each worded
    as a training caption could be, so a failure there is one of reading, not of new combinations."""
    prompts = trained_prompts(30, seed=1)
    assert len(prompts) == 30 and prompts == trained_prompts(30, seed=1)
    assert len({p.text for p in prompts}) == 30
    for prompt in prompts:
        assert len(prompt.spec.shapes) == 2 and prompt.category == "two shapes"
        assert captions.is_training_caption(prompt.text, prompt.spec), prompt
    assert {p.text for p in trained_prompts(30, seed=2)} != {p.text for p in prompts}
