"""Checkpoint folders: save → load round trips, and loading errors that name the file and the tensor."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import (
    COMPONENTS,
    CONFIG_FILE,
    CheckpointError,
    default_checkpoint,
    init_checkpoint,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from models.config import named_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=3)


def copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_init_writes_every_file_and_the_config(folder: Path) -> None:
    names = {path.name for path in folder.iterdir()}
    optional = ("sr256_last", "reader")  # not in tiny
    weights = {f"{name}.safetensors" for name in COMPONENTS if name not in optional}
    assert names == {CONFIG_FILE, "vocab.json", "merges.txt", *weights}
    assert read_config(folder) == named_config("tiny")
    models = load_checkpoint(folder)
    assert models.sr256_last is None and models.reader is None


@torch.no_grad()
def test_an_sr256_last_component_is_saved_and_loaded_with_its_config(tmp_path: Path) -> None:
    tiny = named_config("tiny")
    config = dataclasses.replace(tiny, sr256_last=dataclasses.replace(tiny.sr256, model_channels=8))
    folder = init_checkpoint(tmp_path / "with_last", config, seed=4)
    models = load_checkpoint(folder)

    assert (folder / "sr256_last.safetensors").is_file()
    assert read_config(folder).sr256_last == config.sr256_last
    assert models.sr256_last is not None and models.sr256_last.config.model_channels == 8
    stored = load_file(folder / "sr256_last.safetensors")
    assert all(torch.equal(stored[key], value) for key, value in models.sr256_last.state_dict().items())
    (folder / "sr256_last.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"sr256_last\.safetensors is missing"):
        load_checkpoint(folder)
    with pytest.raises(ValueError, match="sr256_last"):
        dataclasses.replace(tiny, sr256_last=tiny.decoder)


@torch.no_grad()
def test_save_then_load_gives_identical_tensors_and_outputs(folder: Path, tmp_path: Path) -> None:
    models = load_checkpoint(folder)
    save_checkpoint(models, tmp_path)
    again = load_checkpoint(tmp_path)

    for name, module in models.components().items():
        reloaded = again.components()[name].state_dict()
        assert all(torch.equal(tensor, reloaded[key]) for key, tensor in module.state_dict().items()), name
    ids, _ = models.tokenizer.encode(["a red circle"])
    assert torch.equal(models.clip.encode_text(ids).embeds, again.clip.encode_text(ids).embeds)
    low_res = torch.rand(1, 3, 16, 16)
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([3])
    assert torch.equal(models.sr256(x, t, low_res), again.sr256(x, t, low_res))


def test_load_in_bfloat16_puts_every_tensor_in_bfloat16(folder: Path) -> None:
    models = load_checkpoint(folder, dtype=torch.bfloat16)
    for name, module in models.components().items():
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, name
        assert not any(p.is_meta for p in module.parameters()), name


@pytest.mark.parametrize("missing", ["decoder.safetensors", "vocab.json", CONFIG_FILE])
def test_a_missing_file_is_named(folder: Path, tmp_path: Path, missing: str) -> None:
    broken = copy_checkpoint(folder, tmp_path / "broken")
    (broken / missing).unlink()
    with pytest.raises(CheckpointError, match=f"{missing} is missing"):
        load_checkpoint(broken)


def rewrite_tensors(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_a_wrong_shaped_tensor_is_named_with_both_shapes(folder: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(folder, tmp_path / "broken")
    key = "text_proj.weight"

    def widen(tensors: dict) -> None:
        tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)

    rewrite_tensors(broken / "decoder.safetensors", widen)
    with pytest.raises(
        CheckpointError, match=r"decoder\.safetensors: tensor 'text_proj\.weight' has shape \[32, 33\]"
    ):
        load_checkpoint(broken)


def test_missing_and_unexpected_tensors_are_named(folder: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(folder, tmp_path / "broken")
    rewrite_tensors(broken / "prior.safetensors", lambda tensors: tensors.pop("query"))
    with pytest.raises(CheckpointError, match=r"prior\.safetensors: tensor 'query' is missing"):
        load_checkpoint(broken)

    broken = copy_checkpoint(folder, tmp_path / "extra")
    rewrite_tensors(broken / "sr256.safetensors", lambda tensors: tensors.update(stray=torch.zeros(1)))
    with pytest.raises(CheckpointError, match="unexpected tensor 'stray'"):
        load_checkpoint(broken)


def test_an_unknown_format_or_config_field_is_refused(folder: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(folder, tmp_path / "broken")
    document = json.loads((broken / CONFIG_FILE).read_text())
    (broken / CONFIG_FILE).write_text(json.dumps({**document, "format": 99}))
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(broken)

    document["decoder"]["wings"] = 2
    (broken / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="wings"):
        load_checkpoint(broken)


def test_a_config_that_disagrees_with_the_tensors_is_refused(folder: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(folder, tmp_path / "broken")
    document = json.loads((broken / CONFIG_FILE).read_text())
    document["sr256"]["model_channels"] = 32
    (broken / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"sr256\.safetensors: tensor .* has shape"):
        load_checkpoint(broken)


def test_default_checkpoint_is_a_loadable_folder() -> None:
    folder = default_checkpoint()
    assert default_checkpoint() == folder
    assert load_checkpoint(folder).decoder.config.image_size == 64
