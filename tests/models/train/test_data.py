import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.train import data
from models.train.shapes import (
    SceneSpec,
    ShapeSpec,
    describe,
    is_held_out,
    render,
    render_crop,
    sample_scene,
    scene_matches,
)


def test_positives_agree_with_scene_matches() -> None:
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(40)]
    # Descriptions of these scenes (true of some others too) plus a few hand-made ones.
    specs = [describe(scene, rng) for scene in scenes[:25]]
    specs += [
        SceneSpec((ShapeSpec("circle", "red"),)),
        SceneSpec((ShapeSpec("square", "blue", "large", "left"),), background="white"),
        SceneSpec((ShapeSpec("circle", "red"), ShapeSpec("square", "blue"))),
    ]
    got = data.positives(data.scene_facts(scenes), data.spec_facts(specs))
    want = torch.tensor([[scene_matches(scene, spec) for spec in specs] for scene in scenes])
    assert got.shape == (40, len(specs))
    assert torch.equal(got, want)
    assert got[torch.arange(25), torch.arange(25)].all()  # a description is true of its own scene
    assert got.sum() > 30  # and of others: the loss must not push those apart


def test_training_scenes_are_seeded_and_trainable() -> None:
    first, again = data.training_scenes(30, seed=3), data.training_scenes(30, seed=3)
    assert first == again and first != data.training_scenes(30, seed=4)
    texts, specs = data.captions(first, random.Random(1))
    for scene, text, spec in zip(first, texts, specs, strict=True):
        assert scene_matches(scene, spec) and not is_held_out(spec) and text


def test_picture_pool_renders_every_scene_and_caches_it(tmp_path, monkeypatch) -> None:
    scenes = data.training_scenes(5, seed=0)
    pool = data.picture_pool(scenes, 64, cache=tmp_path)
    assert pool.shape == (5, 3, 64, 64) and pool.dtype == torch.uint8
    assert np.array_equal(pool[2].permute(1, 2, 0).numpy(), np.asarray(render(scenes[2], 64)))

    def no_rendering(job):
        raise AssertionError("the cached pool was rendered again")

    monkeypatch.setattr(data, "_render_job", no_rendering)
    assert torch.equal(data.picture_pool(scenes, 64, cache=tmp_path), pool)
    with pytest.raises(AssertionError, match="rendered again"):
        data.picture_pool(scenes[:4], 64, cache=tmp_path)  # other scenes: another file


def test_crops_lie_across_an_edge_on_the_4_px_grid() -> None:
    scenes = data.training_scenes(12, seed=1)
    crops = data.crop_pool(scenes, 256, 64, seed=0, cache=None)
    assert crops.shape == (12, 3, 64, 64)
    rng = random.Random("crops/0/256/64")
    for scene, crop in zip(scenes, crops, strict=True):
        left, top = data.edge_crop(scene, 256, 64, 4, rng)
        assert left % 4 == 0 and top % 4 == 0
        assert np.array_equal(
            crop.permute(1, 2, 0).numpy(), np.asarray(render_crop(scene, 256, left, top, 64))
        )
        # The box-filtered crop is the same region of the picture box-filtered as a whole.
        picture = torch.from_numpy(np.asarray(render(scene, 256), np.float32)).permute(2, 0, 1)
        low = F.avg_pool2d(crop.float(), 4)
        assert torch.allclose(
            low, F.avg_pool2d(picture, 4)[:, top // 4 : top // 4 + 16, left // 4 : left // 4 + 16]
        )
        assert len(torch.unique(crop.reshape(3, -1), dim=1).T) >= 2  # not one flat colour: an edge


def test_crops_equal_the_crop_of_the_whole_picture() -> None:
    for scene in data.training_scenes(20, seed=2):
        for size, side in ((256, 64), (1024, 256)):
            whole = render(scene, size)
            for left, top in ((0, 0), (size - side, size - side), (size // 3 // 4 * 4, size // 2)):
                crop = render_crop(scene, size, left, top, side)
                assert np.array_equal(
                    np.asarray(crop), np.asarray(whole.crop((left, top, left + side, top + side)))
                )


def test_model_range() -> None:
    pictures = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    values = data.to_model_range(pictures)
    assert values.min() == -1.0 and values.max() == 1.0 and values.dtype == torch.float32
