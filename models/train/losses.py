"""Training objectives: the diffusion losses of every denoiser and CLIP's contrastive loss.

Diffusion (Ho et al. 2020; Nichol & Dhariwal 2021), on the full schedule a component samples from:
- eps prediction: mean squared error to the noise, weighted by Min-SNR-γ (Hang et al. 2023,
  w(t) = min(SNR(t), γ) / SNR(t)): the nearly clean steps, whose noise is easy and whose gradients
  fight the others, count less. That speeds training several-fold at equal quality.
- learned variance (improved DDPM's hybrid loss): plus the variational bound term KL(q(x_{t-1}|x_t,x_0)
  ‖ p(x_{t-1}|x_t)) in bits per dimension with the mean's gradient stopped, so only the variance
  channels learn from it. λ = 0.001 of the sum over 1000 steps is that KL at weight 1 per sampled step.
- x0 prediction (the prior, unCLIP §2.1; every image stage of the shapes model): mean squared error to
  x0, weighted by SNR(t) clamped to [1, γ]. In eps units (x0-MSE = eps-MSE / SNR) that is the x0 loss
  where the picture is mostly noise (SNR < 1), the eps loss in the middle and Min-SNR-γ's damping of
  the clean steps: Salimans & Ho's truncated SNR weighting, capped as Hang et al. cap it. Unweighted,
  the noisiest steps dominate the gradient: the shapes decoder learned backgrounds (100 % right) long
  before shapes (31 % right kinds after 5500 steps). The prior keeps the paper's plain MSE
  (`min_snr_gamma=None`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.config import DiffusionConfig
from models.diffusion import beta_schedule

MIN_SNR_GAMMA = 5.0


class TrainingSchedule:
    """The full schedule of `config` as float32 tensors `[T]` on `device`, indexed by timestep."""

    def __init__(self, config: DiffusionConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.timesteps = config.timesteps
        betas = beta_schedule(config.schedule, config.timesteps)  # float64
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        # As models.diffusion: beta_tilde is 0 at t=0, so both logs start at the t=1 value.
        first = posterior_variance[1:2]
        log_beta_tilde = torch.log(torch.cat([first, posterior_variance[1:]]))
        log_beta = torch.log(torch.cat([first, betas[1:]]))

        def f32(values: torch.Tensor) -> torch.Tensor:
            return values.to(device=device, dtype=torch.float32)

        self.alpha_bar = f32(alpha_bar)
        self.snr = f32(alpha_bar / (1 - alpha_bar))
        self.log_beta = f32(log_beta)
        self.log_beta_tilde = f32(log_beta_tilde)
        self.mean_x0 = f32(betas * alpha_bar_prev.sqrt() / (1 - alpha_bar))
        self.mean_xt = f32((1 - alpha_bar_prev) * (1 - betas).sqrt() / (1 - alpha_bar))

    def sample_t(self, batch: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        return torch.randint(0, self.timesteps, (batch,), generator=generator, device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha_bar = _per_item(self.alpha_bar[t], x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The sampler's learned range (`GaussianDiffusion.log_variance`) at per-item timesteps."""
        fraction = (v.clamp(-1, 1) + 1) / 2
        return fraction * _per_item(self.log_beta[t], v) + (1 - fraction) * _per_item(
            self.log_beta_tilde[t], v
        )

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _per_item(self.mean_x0[t], x0) * x0 + _per_item(self.mean_xt[t], x0) * x_t


def _per_item(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`[B]` → `[B, 1, ...]` broadcastable against `like`."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _mean_per_item(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def diffusion_loss(
    schedule: TrainingSchedule,
    output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    min_snr_gamma: float | None = MIN_SNR_GAMMA,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-item loss `[B]` of a denoiser's `output` at x_t, and its parts (for logging).

    output `[B, C or 2C, ...]`: the prediction (eps or x0, as the schedule's config says), then with a
    learned variance the interpolant v in [-1, 1].
    """
    config = schedule.config
    channels = x0.shape[1]
    output = output.float()
    prediction = output[:, :channels]
    target = noise if config.predict == "eps" else x0
    mse = _mean_per_item((prediction - target) ** 2)
    if min_snr_gamma is not None:
        snr = schedule.snr[t]
        if config.predict == "eps":
            mse = mse * snr.clamp(max=min_snr_gamma) / snr
        else:
            mse = mse * snr.clamp(min=1.0, max=min_snr_gamma)
    parts = {"mse": mse.detach()}
    loss = mse
    if config.learned_variance:
        v = output[:, channels:]
        # The mean's gradient is stopped: the bound trains the variance only (improved DDPM §3.1).
        frozen = prediction.detach()
        if config.predict == "eps":
            alpha_bar = _per_item(schedule.alpha_bar[t], x_t)
            x0_predicted = (x_t - (1 - alpha_bar).sqrt() * frozen) / alpha_bar.sqrt()
        else:
            x0_predicted = frozen
        true_mean = schedule.posterior_mean(x0, x_t, t)
        true_log_variance = _per_item(schedule.log_beta_tilde[t], x_t).expand_as(x_t)
        model_mean = schedule.posterior_mean(x0_predicted, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, model_mean, schedule.log_variance(v, t))
        vb = _mean_per_item(kl) / math.log(2.0)
        parts["vb"] = vb.detach()
        loss = loss + vb
    return loss, parts


def contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy with several true captions per image (and images per caption).

    logits `[N_images, N_texts]`, positives `[N_images, N_texts]` bool with at least one True in each
    row and column; the target is uniform over the positives.
    """
    logits = logits.float()
    targets = positives.float()
    image_loss = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
    text_loss = F.cross_entropy(logits.t(), (targets / targets.sum(0, keepdim=True)).t())
    return (image_loss + text_loss) / 2
