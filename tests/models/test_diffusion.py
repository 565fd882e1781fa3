import itertools
import math

import numpy as np
import pytest
import torch

from models.diffusion import (
    GaussianDiffusion,
    beta_schedule,
    clamp_images,
    classifier_free_guidance,
    gaussian_noise,
    guide,
    spaced_timesteps,
)

TIMESTEPS = 1000


def full_alphas_cumprod(schedule: str = "cosine") -> torch.Tensor:
    return torch.cumprod(1 - beta_schedule(schedule, TIMESTEPS), dim=0)


def point_mass_eps(point: torch.Tensor, schedule: str = "cosine"):
    """The exact eps of a data distribution that is the single point `point` `[D]`."""
    alphas_cumprod = full_alphas_cumprod(schedule)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = alphas_cumprod[t].to(x.dtype)[:, None]
        return (x - alpha_bar.sqrt() * point) / (1 - alpha_bar).sqrt()

    return denoise


def gaussian_eps(mean: float, std: float, schedule: str = "cosine"):
    """The exact E[eps | x_t] when every coordinate of x_0 is N(mean, std²), independently."""
    alphas_cumprod = full_alphas_cumprod(schedule)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = alphas_cumprod[t].to(x.dtype)[:, None]
        marginal_variance = alpha_bar * std**2 + 1 - alpha_bar
        return (1 - alpha_bar).sqrt() * (x - alpha_bar.sqrt() * mean) / marginal_variance

    return denoise


def generators(count: int, first_seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(first_seed + i) for i in range(count)]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedules_are_valid_float64_betas_with_decreasing_signal(schedule):
    betas = beta_schedule(schedule, TIMESTEPS)
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)

    assert betas.dtype == torch.float64 and betas.shape == (TIMESTEPS,)
    assert bool((betas > 0).all()) and bool((betas <= 0.999).all())
    assert bool((alphas_cumprod[1:] < alphas_cumprod[:-1]).all())
    assert alphas_cumprod[0] > 0.999
    assert alphas_cumprod[-1] < 1e-3


def test_cosine_schedule_follows_the_squared_cosine():
    alphas_cumprod = full_alphas_cumprod("cosine")
    s = 0.008
    expected = [math.cos((t / TIMESTEPS + s) / (1 + s) * math.pi / 2) ** 2 for t in (1, 250, 500, 750)]
    normaliser = math.cos(s / (1 + s) * math.pi / 2) ** 2
    for t, value in zip((1, 250, 500, 750), expected, strict=True):
        assert alphas_cumprod[t - 1].item() == pytest.approx(value / normaliser, rel=1e-9)


def test_linear_schedule_keeps_its_noise_level_for_other_lengths():
    long = torch.cumprod(1 - beta_schedule("linear", 1000), dim=0)[-1]
    short = torch.cumprod(1 - beta_schedule("linear", 250), dim=0)[-1]
    assert short.item() == pytest.approx(long.item(), rel=0.5)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="sigmoid"):
        beta_schedule("sigmoid", 10)


@pytest.mark.parametrize("steps", [1, 7, 25, 250, 1000])
def test_spaced_timesteps_are_evenly_spaced_and_span_the_schedule(steps):
    kept = spaced_timesteps(TIMESTEPS, steps)
    assert len(kept) == len(set(kept)) == steps
    assert kept == sorted(kept)
    assert kept[-1] == TIMESTEPS - 1
    if steps > 1:
        assert kept[0] == 0
        gaps = [b - a for a, b in itertools.pairwise(kept)]
        assert max(gaps) - min(gaps) <= 1


@pytest.mark.parametrize("steps", [2, 5, 25, 27, 31, 250])
def test_spaced_timesteps_round_like_karlo(steps):
    # UnCLIPScheduler.set_timesteps: (arange(steps) * ratio).round(), numpy rounding half to even.
    ratio = (TIMESTEPS - 1) / (steps - 1)
    karlo = (np.arange(steps) * ratio).round().astype(np.int64).tolist()
    assert spaced_timesteps(TIMESTEPS, steps) == karlo


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_respacing_keeps_alphas_cumprod_at_the_kept_steps(schedule):
    full = full_alphas_cumprod(schedule)
    diffusion = GaussianDiffusion(schedule, TIMESTEPS, steps=25)

    respaced_from_betas = torch.cumprod(1 - diffusion.betas, dim=0)
    assert torch.allclose(respaced_from_betas, full[diffusion.timesteps], rtol=1e-6, atol=0)
    assert diffusion.num_steps == 25


def test_q_sample_per_item_matches_the_per_step_form():
    diffusion = GaussianDiffusion(steps=10)
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    per_item = diffusion.q_sample(x0, torch.tensor([2, 2, 2]), noise)
    assert torch.allclose(per_item, diffusion.q_sample_step(x0, 2, noise), atol=1e-6)
    alpha_bar = diffusion.alpha_bar(2)
    assert torch.allclose(per_item, math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * noise, atol=1e-6)


@pytest.mark.parametrize("predict", ["eps", "x0"])
def test_predicted_x0_of_the_true_eps_is_the_data_point(predict):
    point = torch.tensor([0.3, -0.7, 0.9])
    diffusion = GaussianDiffusion(steps=20, predict=predict)
    x_t = diffusion.q_sample_step(point.expand(2, 3), 12, torch.randn(2, 3))
    t = diffusion.model_timesteps(12, 2, "cpu")
    prediction = point_mass_eps(point)(x_t, t) if predict == "eps" else point.expand(2, 3)

    x0, eps = diffusion.predict_x0_eps(prediction, x_t, 12)

    assert torch.allclose(x0, point.expand(2, 3), atol=1e-4)
    assert torch.allclose(eps, point_mass_eps(point)(x_t, t), atol=1e-4)


def test_clamping_bounds_predicted_x0_and_eps_stays_consistent_with_it():
    diffusion = GaussianDiffusion(steps=10)
    x_t = torch.full((1, 2), 3.0)
    x0, eps = diffusion.predict_x0_eps(torch.zeros(1, 2), x_t, 5, clamp=clamp_images)
    assert bool((x0 <= 1).all())
    alpha_bar = diffusion.alpha_bar(5)
    assert torch.allclose(math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps, x_t, atol=1e-5)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
@pytest.mark.parametrize("predict", ["eps", "x0"])
def test_sampling_a_point_mass_recovers_the_point(method, predict):
    point = torch.tensor([0.5, -0.25, 0.8, -0.9])
    diffusion = GaussianDiffusion(steps=25, predict=predict)
    eps_model = point_mass_eps(point)
    denoise = eps_model if predict == "eps" else (lambda x, t: point.expand_as(x))
    x_T = gaussian_noise(generators(3), (4,))

    samples = diffusion.sample(denoise, x_T, generators(3, 100), method=method, eta=0.5)

    assert torch.allclose(samples, point.expand(3, 4), atol=1e-4)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_sampling_of_gaussian_data_reproduces_its_mean_and_spread(variance):
    mean, std = 0.4, 0.3
    diffusion = GaussianDiffusion(steps=100, variance=variance)
    count = 4000
    x_T = torch.randn(count, 1, generator=torch.Generator().manual_seed(0))

    samples = diffusion.sample(gaussian_eps(mean, std), x_T, generators(count))

    assert samples.mean().item() == pytest.approx(mean, abs=0.03)
    assert samples.std().item() == pytest.approx(std, rel=0.1)


def test_ddim_at_eta_one_is_the_ddpm_step_with_beta_tilde():
    diffusion = GaussianDiffusion(steps=30)
    x_t, output, noise = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    for step in (1, 10, 29):
        ddim = diffusion.ddim_step(output, x_t, step, eta=1.0, noise=noise)
        ddpm = diffusion.ddpm_step(output, x_t, step, noise)
        assert torch.allclose(ddim, ddpm, atol=1e-5)


def test_ddim_inversion_then_deterministic_sampling_returns_to_x0():
    mean, std = 0.1, 0.5
    denoise = gaussian_eps(mean, std)
    x0 = mean + std * torch.randn(4, 6, generator=torch.Generator().manual_seed(1))

    errors = {}
    for steps in (50, 250, 1000):
        diffusion = GaussianDiffusion(steps=steps)
        x_T = diffusion.invert(denoise, x0)
        reconstructed = diffusion.sample(denoise, x_T, generators(4), method="ddim", eta=0.0)
        errors[steps] = (reconstructed - x0).abs().max().item()
        # For Gaussian data the probability-flow ODE whitens: x_T = (x_0 - mean) / std.
        assert (x_T - (x0 - mean) / std).abs().max().item() < 20 / steps

    # The round trip converges (first order in the step size) and is close with enough steps.
    assert errors[1000] < errors[250] / 3 < errors[50] / 9
    assert errors[1000] < 1e-2


def test_inversion_reports_each_step():
    diffusion = GaussianDiffusion(steps=6)
    calls = []
    diffusion.invert(
        gaussian_eps(0, 1), torch.zeros(1, 2), on_step=lambda done, total: calls.append((done, total))
    )
    assert calls == [(i, 6) for i in range(1, 7)]


def test_learned_range_variance_lies_between_beta_tilde_and_beta():
    diffusion = GaussianDiffusion(steps=20, learned_variance=True)
    step = 7
    log_beta = math.log(diffusion.betas[step].item())
    log_beta_tilde = math.log(
        (diffusion.betas[step] * (1 - diffusion.alpha_bar(step - 1)) / (1 - diffusion.alpha_bar(step))).item()
    )
    v = torch.tensor([[-1.0, 0.0, 1.0, 5.0, -5.0]])

    log_variance = diffusion.log_variance(v, step)

    expected = [log_beta_tilde, (log_beta + log_beta_tilde) / 2, log_beta, log_beta, log_beta_tilde]
    assert torch.allclose(log_variance, torch.tensor([expected]), atol=1e-6)
    assert log_beta_tilde < log_beta


def test_learned_range_variance_may_use_v_unclamped_as_karlo():
    diffusion = GaussianDiffusion(steps=20, learned_variance=True, clamp_learned_variance=False)
    clamped = GaussianDiffusion(steps=20, learned_variance=True)
    step = 7
    v = torch.tensor([[-1.5, 0.5, 1.5]])

    log_variance = diffusion.log_variance(v, step)

    fraction = (v + 1) / 2
    expected = fraction * math.log(diffusion.betas[step].item()) + (1 - fraction) * clamped.log_variance(
        torch.tensor([[-1.0]]), step
    )
    assert torch.allclose(log_variance, expected, atol=1e-6)
    assert torch.allclose(log_variance[:, 1], clamped.log_variance(v, step)[:, 1])  # inside: the same
    assert (log_variance[:, 0] < clamped.log_variance(v, step)[:, 0]).all()  # outside: beyond the range
    assert (log_variance[:, 2] > clamped.log_variance(v, step)[:, 2]).all()


def test_final_denoise_runs_the_last_step_only():
    diffusion = GaussianDiffusion(steps=4)
    seen: list[tuple[str, int]] = []

    def named(name: str):
        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            seen.append((name, int(t[0])))
            return torch.zeros_like(x)

        return denoise

    diffusion.sample(named("first"), torch.randn(1, 3), generators(1), final_denoise=named("last"))

    assert seen == [("first", 999), ("first", 666), ("first", 333), ("last", 0)]


def test_learned_variance_output_splits_into_prediction_and_variance_channels():
    point = torch.tensor([[[0.2]], [[-0.4]], [[0.6]]])  # [C=3, 1, 1]
    diffusion = GaussianDiffusion(steps=10, learned_variance=True)
    eps_model = point_mass_eps(point.flatten())

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_model(x.flatten(1), t).reshape_as(x)
        return torch.cat([eps, torch.ones_like(eps)], dim=1)  # v = 1: variance beta

    samples = diffusion.sample(denoise, torch.randn(2, 3, 1, 1), generators(2))
    assert torch.allclose(samples, point.expand(2, 3, 1, 1), atol=1e-4)
    mean, log_variance, _ = diffusion.posterior(denoise(samples, torch.zeros(2).long()), samples, 4)
    assert mean.shape == (2, 3, 1, 1)
    assert torch.allclose(log_variance, torch.full_like(mean, math.log(diffusion.betas[4].item())))


def test_items_sample_the_same_alone_and_in_a_batch():
    diffusion = GaussianDiffusion(steps=10)
    denoise = gaussian_eps(0.0, 0.5)
    seeds = [3, 7, 11]
    x_T = gaussian_noise(generators(3), (8,))

    batch = diffusion.sample(
        denoise, x_T, [torch.Generator().manual_seed(s) for s in seeds], method="ddim", eta=1
    )
    alone = diffusion.sample(denoise, x_T[1:2], [torch.Generator().manual_seed(7)], method="ddim", eta=1)

    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])


def test_gaussian_noise_draws_each_row_from_its_own_generator():
    together = gaussian_noise(generators(2, 5), (3, 2))
    alone = gaussian_noise(generators(1, 6), (3, 2))
    assert together.shape == (2, 3, 2)
    assert torch.equal(together[1:], alone)


def test_sampling_needs_one_generator_per_item():
    with pytest.raises(ValueError, match="one generator per item"):
        GaussianDiffusion(steps=2).sample(gaussian_eps(0, 1), torch.zeros(2, 1), generators(1))


def test_progress_is_reported_after_every_step_and_may_stop_sampling():
    diffusion = GaussianDiffusion(steps=5)
    calls = []

    def on_step(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        diffusion.sample(gaussian_eps(0, 1), torch.zeros(1, 2), generators(1), on_step=on_step)
    assert calls == [(1, 5), (2, 5), (3, 5)]


def test_guidance_scale_one_is_the_conditional_prediction_and_zero_the_unconditional():
    cond, uncond = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)

    assert torch.allclose(guide(cond, uncond, 1.0, channels=3), cond)
    zero = guide(cond, uncond, 0.0, channels=3)
    assert torch.allclose(zero[:, :3], uncond[:, :3])
    assert torch.equal(zero[:, 3:], cond[:, 3:])  # learned variance comes from the conditional half
    assert torch.allclose(
        guide(cond, uncond, 4.0, 3)[:, :3], uncond[:, :3] + 4 * (cond[:, :3] - uncond[:, :3])
    )


def test_classifier_free_guidance_runs_both_halves_in_one_forward():
    calls = []

    def forward_pair(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        half = x.shape[0] // 2
        condition = torch.cat([torch.ones(half, 1), torch.zeros(half, 1)])  # rows [:B] conditioned
        return x * 0 + condition + t[:, None].float()

    x, t = torch.zeros(3, 2), torch.tensor([5, 5, 5])
    unguided = forward_pair(torch.cat([x, x]), torch.cat([t, t]))[:3]
    calls.clear()

    assert torch.allclose(classifier_free_guidance(forward_pair, 1.0, 2)(x, t), unguided)
    assert torch.allclose(classifier_free_guidance(forward_pair, 3.0, 2)(x, t), torch.full((3, 2), 8.0))
    assert calls == [6, 6]
