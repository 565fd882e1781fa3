import math

import pytest
import torch

from models.config import DiffusionConfig
from models.diffusion import GaussianDiffusion
from models.train.losses import MIN_SNR_GAMMA, TrainingSchedule, contrastive_loss, diffusion_loss


def noised(schedule: TrainingSchedule, shape: tuple[int, ...], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=generator) * 2 - 1
    noise = torch.randn(shape, generator=generator)
    t = torch.randint(0, schedule.timesteps, (shape[0],), generator=generator)
    t[0], t[1] = 0, schedule.timesteps - 1  # both ends of the schedule
    return x0, noise, t, schedule.q_sample(x0, t, noise)


def test_the_schedule_is_the_samplers() -> None:
    config = DiffusionConfig(learned_variance=True)
    schedule, sampler = TrainingSchedule(config), GaussianDiffusion.from_config(config)
    assert torch.allclose(schedule.alpha_bar.double(), sampler.alphas_cumprod, rtol=1e-6)
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(schedule.q_sample(x0, t, noise), sampler.q_sample(x0, t, noise), atol=1e-6)
    v = torch.linspace(-1.5, 1.5, 4)[:, None].expand(4, 3)
    for row, step in enumerate(t.tolist()):
        want = sampler.log_variance(v[row : row + 1], step)
        assert torch.allclose(schedule.log_variance(v[row : row + 1], t[row : row + 1]), want, atol=1e-5)
        x_t = torch.randn(1, 3)
        want_mean = sampler._mean_x0[step] * x0[row] + sampler._mean_xt[step] * x_t
        assert torch.allclose(
            schedule.posterior_mean(x0[row : row + 1], x_t, t[row : row + 1]), want_mean, atol=1e-5
        )


def test_eps_loss_is_zero_for_the_true_noise_and_positive_otherwise() -> None:
    schedule = TrainingSchedule(DiffusionConfig())
    x0, noise, t, x_t = noised(schedule, (6, 3, 8, 8))
    loss, _ = diffusion_loss(schedule, noise, x0, x_t, t, noise)
    assert loss.shape == (6,) and torch.allclose(loss, torch.zeros(6), atol=1e-10)
    wrong, _ = diffusion_loss(schedule, x0, x0, x_t, t, noise, min_snr_gamma=None)  # x0 is not eps's target
    assert (wrong > 0.1).all()


def test_min_snr_weighting_keeps_noisy_steps_and_damps_clean_ones() -> None:
    schedule = TrainingSchedule(DiffusionConfig())
    x0, noise = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    t = torch.tensor([0, 999])
    off = torch.ones(2, 3, 4, 4)  # squared error 1 everywhere
    weighted, _ = diffusion_loss(schedule, off, x0, x0, t, noise)
    plain, _ = diffusion_loss(schedule, off, x0, x0, t, noise, min_snr_gamma=None)
    assert torch.allclose(plain, torch.ones(2))
    assert weighted[1] == pytest.approx(1.0)  # SNR < γ: full weight
    assert (
        weighted[0] == pytest.approx(MIN_SNR_GAMMA / float(schedule.snr[0]), rel=1e-4) and weighted[0] < 0.01
    )


def test_x0_loss_is_mse_to_x0_unweighted_when_asked() -> None:
    schedule = TrainingSchedule(DiffusionConfig(predict="x0"))
    x0, noise, t, x_t = noised(schedule, (5, 16))
    loss, _ = diffusion_loss(schedule, x0, x0, x_t, t, noise)
    assert torch.allclose(loss, torch.zeros(5))
    loss, _ = diffusion_loss(schedule, x0 + 0.5, x0, x_t, t, noise, min_snr_gamma=None)
    assert torch.allclose(loss, torch.full((5,), 0.25))


def test_x0_weighting_is_snr_clamped_to_one_and_gamma() -> None:
    schedule = TrainingSchedule(DiffusionConfig(predict="x0"))
    x0, noise = torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 4, 4)
    middle = int((schedule.snr - 2.0).abs().argmin())  # SNR ≈ 2: between the clamps
    t = torch.tensor([0, middle, 999])
    weighted, _ = diffusion_loss(schedule, torch.ones(3, 3, 4, 4), x0, x0, t, noise)  # squared error 1
    assert weighted[0] == pytest.approx(MIN_SNR_GAMMA)  # nearly clean: capped at γ
    assert weighted[1] == pytest.approx(float(schedule.snr[middle]), rel=1e-5) and 1.5 < weighted[1] < 2.5
    assert weighted[2] == pytest.approx(1.0)  # nearly pure noise: the plain x0 loss


def test_variance_bound_is_zero_for_the_true_posterior_and_trains_only_v() -> None:
    schedule = TrainingSchedule(DiffusionConfig(learned_variance=True))
    x0, noise, t, x_t = noised(schedule, (6, 3, 8, 8))
    # v = -1 is beta_tilde, the true posterior variance; with the true noise the KL vanishes.
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    loss, parts = diffusion_loss(schedule, exact, x0, x_t, t, noise)
    assert torch.allclose(parts["vb"], torch.zeros(6), atol=1e-5)
    assert torch.allclose(loss, torch.zeros(6), atol=1e-5)
    # A wrong variance costs bits, and the bound's gradient reaches v only: eps learns from the MSE alone.
    output = torch.cat([noise + 0.1, torch.ones_like(noise)], dim=1).requires_grad_(True)
    loss, parts = diffusion_loss(schedule, output, x0, x_t, t, noise)
    assert (parts["vb"][1:] > 0).all()
    loss.sum().backward()
    eps_only = noise.add(0.1).requires_grad_(True)
    mse, _ = diffusion_loss(TrainingSchedule(DiffusionConfig()), eps_only, x0, x_t, t, noise)
    mse.sum().backward()
    assert torch.allclose(output.grad[:, :3], eps_only.grad) and output.grad[:, 3:].abs().max() > 0


def test_contrastive_loss_uses_every_positive() -> None:
    logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
    two_true = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    # Uniform over two true captions: the least possible loss is the targets' entropy, ln 2 on 2 of 3 rows.
    assert contrastive_loss(logits, two_true) == pytest.approx(2 / 3 * math.log(2), abs=1e-3)
    # There it is at its optimum (no gradient); treating the other true caption as a negative is not.
    for targets, still in ((two_true, True), (torch.eye(3, dtype=torch.bool), False)):
        scores = logits.clone().requires_grad_(True)
        contrastive_loss(scores, targets).backward()
        assert (scores.grad.abs().max() < 1e-3) == still
    assert contrastive_loss(10 * torch.eye(3), torch.eye(3, dtype=torch.bool)) < 1e-3
