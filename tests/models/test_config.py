import dataclasses
import json
import math

import pytest
import torch

from models.checkpoint import build_models
from models.config import DiffusionConfig, PriorConfig, UnCLIPConfig, UNetConfig, named_config
from models.tokenizer import build_tokenizer


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_config_round_trips_through_json(name: str) -> None:
    config = named_config(name)
    restored = UnCLIPConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.decoder.channel_mult, tuple)


def test_config_without_sr1024_round_trips() -> None:
    config = dataclasses.replace(named_config("tiny"), sr1024=None, sr1024_diffusion=None)
    assert UnCLIPConfig.from_dict(json.loads(json.dumps(config.to_dict()))).sr1024 is None


def test_prior_embed_scale_defaults_to_sqrt_of_embed_dim_and_survives_json() -> None:
    prior = PriorConfig(embed_dim=768, text_width=768)
    assert prior.embed_scale == pytest.approx(math.sqrt(768))
    assert PriorConfig.from_dict(prior.to_dict()).embed_scale == prior.embed_scale
    assert PriorConfig(embed_scale=3.0).embed_scale == 3.0


def test_the_prior_predicts_x0_and_the_tiny_decoder_learns_its_variance() -> None:
    config = named_config("tiny")
    assert config.prior_diffusion.predict == "x0"
    assert config.decoder_diffusion.learned_variance and config.decoder.out_channels == 6


def test_inconsistent_configs_are_refused_with_a_reason() -> None:
    config = named_config("tiny")
    with pytest.raises(ValueError, match="learned_variance"):
        dataclasses.replace(config, decoder_diffusion=DiffusionConfig(learned_variance=False))
    with pytest.raises(ValueError, match="prior"):
        dataclasses.replace(config, prior=dataclasses.replace(config.prior, embed_dim=16))
    with pytest.raises(ValueError, match="unknown field"):
        UNetConfig.from_dict({**config.decoder.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="schedule"):
        DiffusionConfig(schedule="quadratic")
    with pytest.raises(ValueError, match="6 input channels"):
        UNetConfig(kind="sr", in_channels=3)
    with pytest.raises(ValueError, match="unknown config"):
        named_config("huge")


def test_small_config_ships_well_under_50_megabytes() -> None:
    with torch.device("meta"):
        models = build_models(named_config("small"), build_tokenizer(["a"]))
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.components().items()}
    assert all(count > 5e5 for count in counts.values())  # every stage has room to learn its job
    assert sum(counts.values()) * 4 < 30e6  # float32 bytes
