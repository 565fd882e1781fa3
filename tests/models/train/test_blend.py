"""`unclip blend`: a fine-tune's named components moved toward it by `--weight`, the rest the base's."""

from pathlib import Path

import pytest
import torch

from models.checkpoint import init_checkpoint, load_checkpoint, save_checkpoint
from models.train.cli import main


def weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return getattr(load_checkpoint(folder), component).state_dict()


@pytest.fixture
def base_and_tuned(tmp_path: Path) -> tuple[Path, Path]:
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    init_checkpoint(base, "tiny", seed=0)
    models = load_checkpoint(base)
    with torch.no_grad():  # a "fine-tune": every weight of the decoder and the prior moved
        for module in (models.decoder, models.prior):
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter))
    save_checkpoint(models, tuned)
    return base, tuned


def test_the_blend_moves_the_named_component_by_the_weight(base_and_tuned, tmp_path: Path) -> None:
    base, tuned = base_and_tuned
    out = tmp_path / "mix"
    args = ["blend", "--base", str(base), "--tuned", str(tuned), "--component", "decoder", "--weight", "0.3"]
    assert main([*args, "--out", str(out)]) == 0
    start, end, mixed = (weights(folder, "decoder") for folder in (base, tuned, out))
    for name, value in mixed.items():
        assert torch.allclose(value, 0.7 * start[name] + 0.3 * end[name], atol=1e-6), name
    assert any(not torch.equal(start[name], end[name]) for name in start)
    # Components not named stay the base's, even where the fine-tune changed them.
    assert all(torch.equal(v, weights(base, "prior")[k]) for k, v in weights(out, "prior").items())


def test_a_blend_refuses_checkpoints_of_different_configs(tmp_path: Path, capsys) -> None:
    init_checkpoint(tmp_path / "tiny", "tiny", seed=0)
    init_checkpoint(tmp_path / "small", "small", seed=0)
    folders = {"--base": tmp_path / "tiny", "--tuned": tmp_path / "small", "--out": tmp_path / "mix"}
    args = [str(part) for pair in folders.items() for part in pair]
    assert main(["blend", *args, "--component", "decoder", "--weight", "0.5"]) == 2
    assert "different configs" in capsys.readouterr().err
    assert not (tmp_path / "mix").exists()
