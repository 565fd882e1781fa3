import math

import pytest
import torch

from models.clip import TextEncoding
from models.config import named_config
from models.prior import DiffusionPrior

CONFIG = named_config("tiny").prior
E, W, L = CONFIG.embed_dim, CONFIG.text_width, CONFIG.context_length


@pytest.fixture(scope="module")
def prior() -> DiffusionPrior:
    torch.manual_seed(0)
    return DiffusionPrior(CONFIG).eval()


def random_text(batch: int, lengths: list[int], seed: int = 1) -> TextEncoding:
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.nn.functional.normalize(torch.randn(batch, E, generator=generator), dim=-1)
    states = torch.randn(batch, L, W, generator=generator)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    return TextEncoding(embeds, states, mask)


def test_forward_predicts_an_embedding_per_row(prior: DiffusionPrior) -> None:
    x_t = torch.randn(3, E) * prior.embed_scale
    with torch.no_grad():
        x0 = prior(
            x_t, torch.tensor([0, 500, 999]), random_text(3, [5, 9, 77]), torch.zeros(3, dtype=torch.bool)
        )
    assert x0.shape == (3, E) and x0.dtype == torch.float32
    assert prior.embed_scale == pytest.approx(math.sqrt(E))


def test_padded_text_positions_are_ignored_and_real_ones_are_not(prior: DiffusionPrior) -> None:
    x_t, t, keep = torch.randn(1, E), torch.tensor([10]), torch.zeros(1, dtype=torch.bool)
    text = random_text(1, [6])
    padding_changed = text._replace(states=text.states.clone())
    padding_changed.states[:, 6:] = torch.randn(1, L - 6, W)
    word_changed = text._replace(states=text.states.clone())
    word_changed.states[:, 3] = torch.randn(W)
    with torch.no_grad():
        reference = prior(x_t, t, text, keep)
        assert torch.allclose(prior(x_t, t, padding_changed, keep), reference, atol=1e-5)
        assert not torch.allclose(prior(x_t, t, word_changed, keep), reference, atol=1e-4)


def test_dropped_text_uses_the_learned_null_conditioning(prior: DiffusionPrior) -> None:
    x_t, t = torch.randn(2, E).repeat(2, 1), torch.tensor([7, 7, 7, 7])
    first, second = random_text(2, [4, 30], seed=1), random_text(2, [12, 50], seed=2)
    text = TextEncoding(*(torch.cat([a, b]) for a, b in zip(first, second, strict=True)))
    drop = torch.tensor([True, False, True, False])
    with torch.no_grad():
        x0 = prior(x_t, t, text, drop)
        kept_alone = prior(x_t[1:2], t[1:2], TextEncoding(*(f[1:2] for f in first)), drop[1:2])
    # Two different prompts, both dropped: the same prediction. Kept: different ones.
    assert torch.allclose(x0[0], x0[2], atol=1e-5)
    assert not torch.allclose(x0[1], x0[3], atol=1e-4)
    assert not torch.allclose(x0[0], x0[1], atol=1e-4)
    # A dropped neighbour leaves a kept row as it is alone.
    assert torch.allclose(x0[1], kept_alone[0], atol=1e-5)


def test_prediction_depends_on_the_timestep_and_the_noised_embedding(prior: DiffusionPrior) -> None:
    text, keep = random_text(1, [8]), torch.zeros(1, dtype=torch.bool)
    x_t = torch.randn(1, E)
    with torch.no_grad():
        reference = prior(x_t, torch.tensor([100]), text, keep)
        assert not torch.allclose(prior(x_t, torch.tensor([900]), text, keep), reference, atol=1e-4)
        assert not torch.allclose(prior(x_t + 1, torch.tensor([100]), text, keep), reference, atol=1e-4)


def test_bfloat16_forward(prior: DiffusionPrior) -> None:
    half = DiffusionPrior(CONFIG)
    half.load_state_dict(prior.state_dict())
    half = half.to(torch.bfloat16).eval()
    text, keep = random_text(2, [5, 20]), torch.tensor([False, True])
    x_t, t = torch.randn(2, E), torch.tensor([3, 400])
    with torch.no_grad():
        x0 = half(x_t, t, text, keep)
        reference = prior(x_t, t, text, keep)
    assert x0.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(x0.float(), reference, dim=-1).min() > 0.98
