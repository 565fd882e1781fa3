"""best_of on generate: candidates ranked by CLIP, on the tiny checkpoint (rowwise, so that batches are
exactly batch-invariant)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from models.contract import MAX_BEST_OF, SCORE_KEY, candidate_seed
from models.pipeline import Sampling, UnCLIPPipeline
from models.pipeline.unclip import clip_scores
from tests.models.test_pipeline import assert_same, pipeline, pixels, rowwise  # noqa: F401 (the fixtures)

PROMPTS = ["a red circle", "a green triangle"]
SEEDS = [5, 9]


def test_best_of_keeps_the_candidate_nearest_the_prompt_and_reports_its_score(
    rowwise: UnCLIPPipeline,  # noqa: F811
) -> None:
    sampling = rowwise.sampling(size=64, prior_steps=2, decoder_steps=2, best_of=3)
    kept = rowwise.generate(PROMPTS, SEEDS, sampling)
    assert len(kept) == 2

    single = dataclasses.replace(sampling, best_of=1)
    for item in (1,):  # the second item of the batch, its three candidates run on their own
        prompt, seed = PROMPTS[item], SEEDS[item]
        candidates = rowwise.generate([prompt] * 3, [candidate_seed(seed, c) for c in range(3)], single)
        with torch.inference_mode():
            scores = clip_scores(rowwise._text([prompt]).embeds, rowwise._image_embeds(candidates), 3)[0]
        best = int(scores.argmax())
        assert_same([kept[item]], [candidates[best]])
        assert kept[item].info[SCORE_KEY] == pytest.approx(float(scores[best]), abs=1e-6)
        assert -1.0 <= kept[item].info[SCORE_KEY] <= 1.0
        # the candidates differ, so the choice is a real one
        assert not np.array_equal(pixels(candidates[0]), pixels(candidates[1]))


def test_a_kept_image_does_not_depend_on_its_batch(rowwise: UnCLIPPipeline) -> None:  # noqa: F811
    sampling = rowwise.sampling(size=64, prior_steps=2, decoder_steps=2, best_of=2)
    batch = rowwise.generate(PROMPTS, SEEDS, sampling)
    alone = rowwise.generate(PROMPTS[1:], SEEDS[1:], sampling)
    assert_same(batch[1:], alone)
    assert batch[1].info[SCORE_KEY] == pytest.approx(alone[0].info[SCORE_KEY], abs=1e-6)


def test_best_of_one_is_plain_generation_without_a_score(pipeline: UnCLIPPipeline) -> None:  # noqa: F811
    sampling = pipeline.sampling(size=64, prior_steps=2, decoder_steps=2)
    assert sampling.best_of == 1
    (image,) = pipeline.generate(PROMPTS[:1], SEEDS[:1], sampling)
    assert SCORE_KEY not in image.info
    assert candidate_seed(7, 0) == 7 and candidate_seed(7, 1) != candidate_seed(8, 1) != 8


@pytest.mark.parametrize("best_of", [0, MAX_BEST_OF + 1])
def test_best_of_out_of_range_is_refused(best_of: int) -> None:
    with pytest.raises(ValueError, match="best_of"):
        Sampling(best_of=best_of)


def test_a_checkpoint_without_an_image_encoder_refuses_best_of(pipeline: UnCLIPPipeline) -> None:  # noqa: F811
    clip = copy.deepcopy(pipeline.models.clip)
    clip.visual = None  # as a text-only Karlo import has it
    models = dataclasses.replace(pipeline.models, clip=clip)
    text_only = UnCLIPPipeline(models, pipeline.device, pipeline.dtype)
    assert text_only.sampling(best_of=1).best_of == 1
    with pytest.raises(ValueError, match="best_of needs a CLIP image encoder"):
        text_only.sampling(best_of=2)


def test_best_of_ranks_the_decoders_pictures_and_upsamples_only_the_kept_ones(
    rowwise: UnCLIPPipeline,  # noqa: F811
) -> None:
    """CLIP (32 px here) ranks the 64 px candidates; sr256 then runs on the two kept ones, not on all six,
    and each kept image is the one its candidate's seed gives with best_of 1."""
    sampling = rowwise.sampling(size=256, prior_steps=2, decoder_steps=2, sr256_steps=1, best_of=3)
    upsampled = []
    sr256 = rowwise.models.sr256._module  # rowwise calls it one row at a time
    forward = sr256.forward
    sr256.forward = lambda x, *args, **kwargs: upsampled.append(len(x)) or forward(x, *args, **kwargs)
    try:
        kept = rowwise.generate(PROMPTS, SEEDS, sampling)
    finally:
        del sr256.forward
    assert sum(upsampled) == 2  # one step over the two kept rows

    single = dataclasses.replace(sampling, best_of=1)
    prompt, seed = PROMPTS[1], SEEDS[1]
    seeds = [candidate_seed(seed, c) for c in range(3)]
    drafts = rowwise.generate([prompt] * 3, seeds, dataclasses.replace(single, size=64))
    with torch.inference_mode():
        scores = clip_scores(rowwise._text([prompt]).embeds, rowwise._image_embeds(drafts), 3)[0]
    best = int(scores.argmax())
    assert_same([kept[1]], rowwise.generate([prompt], [seeds[best]], single))
    assert kept[1].size == (256, 256)
    assert kept[1].info[SCORE_KEY] == pytest.approx(float(scores[best]), abs=1e-6)
