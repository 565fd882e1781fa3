"""Job params → pipeline calls, on the fake pipeline: seeds per item, batching and splitting, inputs."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from PIL import Image

from service.jobs.codec import png_base64, png_bytes
from service.worker.batching import Candidate, first_batch
from service.worker.executor import Executor, JobInputError
from tests.service.worker.worker_fixtures import FakePipeline, colour, mean_colour

SMALL_PNG = png_base64(Image.new("RGB", (8, 8)))


def generate(seed: int, n: int = 1, prompt: str = "a red circle", **sampling: Any) -> dict[str, Any]:
    return {"prompt": prompt, "n": n, "seed": seed, "size": 64} | sampling


def red(picture: Image.Image) -> int:
    return mean_colour(picture)[0]


def test_generate_uses_seed_plus_index_per_item() -> None:
    pipeline = FakePipeline()
    executor = Executor(pipeline, max_batch_size=8)
    [images] = executor.run([executor.prepare("generate", generate(seed=10, n=3))])
    assert [mean_colour(image) for image in images] == [colour(10 + i, "a red circle") for i in range(3)]
    assert [call["seeds"] for call in pipeline.calls] == [[10, 11, 12]]


def test_results_do_not_depend_on_batching() -> None:
    jobs = [("generate", generate(seed=1, n=2)), ("generate", generate(seed=100, n=3, prompt="a dog"))]
    alone_pipeline, batched_pipeline = FakePipeline(), FakePipeline()
    alone = Executor(alone_pipeline, max_batch_size=8)
    batched = Executor(batched_pipeline, max_batch_size=8)

    one_by_one = [alone.run([alone.prepare(op, params)])[0] for op, params in jobs]
    together = batched.run([batched.prepare(op, params) for op, params in jobs])

    assert [[png_bytes(i) for i in images] for images in together] == [
        [png_bytes(i) for i in images] for images in one_by_one
    ]
    assert [len(images) for images in together] == [2, 3]
    assert len(alone_pipeline.calls) == 2 and len(batched_pipeline.calls) == 1
    assert batched_pipeline.calls[0]["seeds"] == [1, 2, 100, 101, 102]


def test_a_job_over_the_batch_size_is_split_into_calls() -> None:
    pipeline = FakePipeline()
    executor = Executor(pipeline, max_batch_size=2)
    [images] = executor.run([executor.prepare("generate", generate(seed=0, n=5))])
    assert [call["seeds"] for call in pipeline.calls] == [[0, 1], [2, 3], [4]]
    assert [red(image) for image in images] == [0, 1, 2, 3, 4]


def test_first_batch_groups_compatible_jobs_in_order_within_the_image_budget() -> None:
    pipeline = FakePipeline()
    executor = Executor(pipeline, max_batch_size=4)

    def candidate(name: str, op: str, params: dict[str, Any], solo: bool = False) -> Candidate[str]:
        return Candidate(name, executor.batch_key(op, params), params.get("n", 1), solo)

    candidates = [
        candidate("a", "generate", generate(1, n=2)),
        candidate("other-steps", "generate", generate(2, decoder_steps=5)),
        candidate("b", "generate", generate(3, n=1, prompt="different prompt, same settings")),
        candidate("too-many", "generate", generate(4, n=2)),
        candidate("variation", "variation", {"image": png_base64(Image.new("RGB", (8, 8))), "seed": 5,
                                             "size": 64, "n": 1, "eta": 0.5}),
        candidate("c", "generate", generate(6, n=1)),
    ]
    batch, rest = first_batch(candidates, max_images=4)
    assert batch == ["a", "b", "c"]
    assert rest == ["other-steps", "too-many", "variation"]

    # A retried job runs alone, and the oldest job always runs even when it is over the budget.
    assert first_batch([candidate("retry", "generate", generate(1), solo=True), candidates[0]], 4) == (
        ["retry"], ["a"])
    assert first_batch([candidate("big", "generate", generate(1, n=9)), candidates[0]], 4) == (
        ["big"], ["a"])


def test_null_sampling_fields_mean_the_checkpoint_default() -> None:
    executor = Executor(FakePipeline(), max_batch_size=8)
    explicit = generate(1, prior_steps=2, decoder_steps=2)
    defaults = generate(2, prior_steps=None, decoder_steps=None)
    assert executor.batch_key("generate", explicit) == executor.batch_key("generate", defaults)
    more_steps = generate(1, decoder_steps=3)
    assert executor.batch_key("generate", explicit) != executor.batch_key("generate", more_steps)


def test_sequences_batch_by_frames_and_return_one_image_per_frame() -> None:
    pipeline = FakePipeline()
    executor = Executor(pipeline, max_batch_size=8)
    a, b = png_base64(Image.new("RGB", (16, 16), "red")), png_base64(Image.new("RGB", (16, 16), "blue"))
    three = {"image_a": a, "image_b": b, "frames": 3, "latent": "fixed", "seed": 20, "size": 64}
    other = three | {"seed": 40}
    key = executor.batch_key("interpolate", three)
    assert key != executor.batch_key("interpolate", three | {"frames": 4})
    assert key != executor.batch_key("interpolate", three | {"latent": "slerp"})

    outputs = executor.run([executor.prepare("interpolate", three), executor.prepare("interpolate", other)])
    assert [[red(image) for image in images] for images in outputs] == [[20, 21, 22], [40, 41, 42]]
    assert [call["seeds"] for call in pipeline.calls] == [[20, 40]]

    diff = {"image": a, "prompt": "a cat", "source_caption": "a photo", "frames": 2, "seed": 7, "size": 64}
    [images] = executor.run([executor.prepare("text_diff", diff)])
    assert [mean_colour(image) for image in images] == [colour(7, "a cat"), colour(8, "a cat")]
    generate = {"prompt": "a cat", "seed": 1, "size": 64}
    split = executor.batch_key("generate", generate | {"decoder_image_guidance": 3.0})
    assert split != executor.batch_key("generate", generate) and split.sampling.decoder_image_guidance == 3.0
    further = executor.batch_key("text_diff", diff | {"text_diff_strength": 0.9})
    assert further != executor.batch_key("text_diff", diff) and further.sampling.text_diff_strength == 0.9


def test_variation_and_inpaint_decode_their_images() -> None:
    executor = Executor(FakePipeline(), max_batch_size=8)
    source = Image.new("RGB", (32, 32), (10, 200, 30))
    variation = {"image": png_base64(source), "n": 2, "eta": 0.25, "seed": 3, "size": 64}
    [images] = executor.run([executor.prepare("variation", variation)])
    # the fake mixes the decoded input's colour and eta into its output: the image reached it intact
    assert [mean_colour(image) for image in images] == [colour(3 + i, "(10, 200, 30)0.25") for i in range(2)]
    key = executor.batch_key("variation", variation)
    assert key != executor.batch_key("variation", variation | {"eta": 0.5})
    inverted_guided = executor.batch_key("variation", variation | {"inversion_guidance": 8.0})
    assert inverted_guided != key and inverted_guided.sampling.inversion_guidance == 8.0

    mask = Image.new("L", (32, 32), 255)
    inpaint = {"image": png_base64(source), "mask": png_base64(mask), "prompt": "a hat", "n": 1, "seed": 9,
               "size": 64}
    [images] = executor.run([executor.prepare("inpaint", inpaint)])
    assert mean_colour(images[0]) == colour(9, "a hat")
    assert images[0].size == (64, 64)


@pytest.mark.parametrize(
    ("op", "params", "message"),
    [
        ("generate", generate(1, size=128), "size must be one of"),
        ("upscale", generate(1), "unknown op"),
        ("variation", {"image": "not base64!", "n": 1, "seed": 1, "size": 64}, "image: not a decodable"),
        ("inpaint", {"image": SMALL_PNG, "mask": png_base64(Image.new("L", (9, 8))), "prompt": "x", "n": 1,
                     "seed": 1, "size": 64}, "must match"),
        ("generate", {"n": 1, "seed": 1, "size": 64}, "prompt"),
    ],
)
def test_bad_params_raise_job_input_error(op: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(JobInputError, match=message):
        Executor(FakePipeline(), max_batch_size=8).prepare(op, params)


def test_truncated_prompts_become_warnings() -> None:
    executor = Executor(FakePipeline(context_chars=10), max_batch_size=8)
    assert executor.prepare("generate", generate(1, prompt="short")).warnings == []
    [warning] = executor.prepare("generate", generate(1, prompt="a prompt much longer than ten")).warnings
    assert "prompt" in warning and "truncated" in warning


def test_a_variation_without_eta_gets_the_pipelines_default() -> None:
    """The gateway (no torch) and the pipeline each state the default eta: they must agree."""
    from models.pipeline import UnCLIPPipeline
    from service.gateway.schemas import VariationRequest

    default = inspect.signature(UnCLIPPipeline.variation).parameters["eta"].default
    body = {"image": png_base64(Image.new("RGB", (8, 8), "red")), "seed": 1, "size": 64}
    key = Executor(FakePipeline(), max_batch_size=8).batch_key("variation", body)
    assert dict(key.options)["eta"] == default == VariationRequest.model_fields["eta"].default
