"""Gaussian diffusion: noise schedules and samplers, shared by the prior, the decoder and the upsamplers.

A component is trained on a schedule of `timesteps` betas (Ho et al. 2020; cosine from Nichol & Dhariwal
2021). At sampling time the schedule is *respaced* to fewer steps: keep an evenly spaced subset of the
timesteps and derive new betas from `alphas_cumprod` at the kept ones, so the marginals q(x_t | x_0) at
those steps are unchanged and the model is still queried with its own timestep numbers.

Samplers: ancestral DDPM (fixed small/large variance, or the learned range of improved DDPM / Karlo),
DDIM with eta (Song et al. 2021) and DDIM inversion (the eta=0 ODE run forward from x_0 to x_T).

A denoiser is any `(x_t, t) -> output` callable; `t` holds the model's own (unrespaced) timesteps.
Its output is eps or x_0 (`predict`), with a second half of channels `v` in [-1, 1] when the
variance is learned. Every sampling step reads its schedule coefficients as python floats precomputed
once, so no step reads a device tensor back to the host. All noise comes from per-item generators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from models.config import PREDICTIONS, SCHEDULES

if TYPE_CHECKING:
    from models.config import DiffusionConfig

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Clamp = Callable[[torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]  # (steps done, total steps)
AfterStep = Callable[[torch.Tensor, int], torch.Tensor]  # (x now at step `i - 1`, i) -> x

VARIANCES = ("small", "large")


def clamp_images(x0: torch.Tensor) -> torch.Tensor:
    """Predicted images are clipped to the data range [-1, 1]."""
    return x0.clamp(-1.0, 1.0)


def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """Betas `[timesteps]` in float64 (products of ~1000 factors near 1 lose too much in float32)."""
    if name == "linear":
        # Ho et al.'s 1e-4 .. 0.02 for 1000 steps, rescaled so other lengths reach the same noise level.
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if name == "cosine":
        # alpha_bar(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008; betas capped at 0.999 so the last
        # step is not a singular division (Nichol & Dhariwal 2021, eq. 17).
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")


def spaced_timesteps(timesteps: int, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps in [0, timesteps - 1], ascending, always keeping the first and last.

    i · ratio rounded half to even, with the ratio computed first: Karlo's (and diffusers' UnCLIPScheduler)
    spacing to the last bit; i · (T - 1) / (steps - 1) would round 92 of the 999 step counts differently.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    if steps == 1:
        return [timesteps - 1]
    ratio = (timesteps - 1) / (steps - 1)
    return [round(i * ratio) for i in range(steps)]


def gaussian_noise(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`[len(generators), *shape]` standard normal noise, row i drawn only from `generators[i]`.

    Drawn in float32 on each generator's own device whatever the target, so an item's noise does not
    depend on the batch it is in or the dtype. CPU generators give the same noise on every device (one
    host → device copy per call); CUDA generators draw on the GPU (no copy, no host sync; their numbers
    differ from a CPU generator's of the same seed).
    """
    rows = [
        torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=generator.device)
        for generator in generators
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)


def _floats(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values.tolist()]


class GaussianDiffusion:
    """One component's diffusion process, respaced to `steps` sampling steps (None = the full schedule).

    Step `i` (0 <= i < steps) is the model's timestep `self.timesteps[i]`; step 0 is the least noisy.
    """

    def __init__(
        self,
        schedule: str = "cosine",
        timesteps: int = 1000,
        predict: str = "eps",
        learned_variance: bool = False,
        steps: int | None = None,
        variance: str = "small",
        clamp_learned_variance: bool = True,
    ) -> None:
        if predict not in PREDICTIONS:
            raise ValueError(f"predict must be one of {PREDICTIONS}, got {predict!r}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.predict = predict
        self.learned_variance = learned_variance
        self.variance = variance
        self.clamp_learned_variance = clamp_learned_variance
        self.timesteps = spaced_timesteps(timesteps, steps or timesteps)

        full_alphas_cumprod = torch.cumprod(1 - beta_schedule(schedule, timesteps), dim=0)
        alphas_cumprod = full_alphas_cumprod[self.timesteps]  # [steps] float64
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        betas = 1 - alphas_cumprod / alphas_cumprod_prev
        # beta_tilde: variance of q(x_{t-1} | x_t, x_0). It is 0 at step 0, so its log is clipped to the
        # step-1 value there (as improved DDPM does).
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        first = posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        log_posterior_variance = torch.log(torch.cat([first, posterior_variance[1:]]))
        log_betas = torch.log(torch.cat([first, betas[1:]]))

        self.alphas_cumprod = alphas_cumprod  # kept as a tensor for q_sample with per-item timesteps
        self.betas = betas
        # Per-step python floats: a sampling step multiplies by these instead of indexing a device tensor.
        self._alpha_bar = _floats(alphas_cumprod)
        self._alpha_bar_prev = _floats(alphas_cumprod_prev)
        self._beta = _floats(betas)
        self._log_beta = _floats(log_betas)
        self._log_beta_tilde = _floats(log_posterior_variance)
        self._mean_x0 = _floats(betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod))
        self._mean_xt = _floats((1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod))

    @classmethod
    def from_config(
        cls, config: DiffusionConfig, steps: int | None = None, variance: str = "small"
    ) -> GaussianDiffusion:
        return cls(
            schedule=config.schedule,
            timesteps=config.timesteps,
            predict=config.predict,
            learned_variance=config.learned_variance,
            steps=steps,
            variance=variance,
            clamp_learned_variance=config.clamp_learned_variance,
        )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def alpha_bar(self, step: int) -> float:
        return self._alpha_bar[step]

    # Forward process ---------------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) at per-item steps `t` `[B]` (indices into this, possibly respaced, schedule)."""
        alpha_bar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        alpha_bar = alpha_bar.reshape(-1, *([1] * (x0.dim() - 1)))
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def q_sample_step(self, x0: torch.Tensor, step: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t at one sampling step for the whole batch; step -1 is x_0 itself."""
        if step < 0:
            return x0
        alpha_bar = self._alpha_bar[step]
        return math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * noise

    # What the model says -----------------------------------------------------------------------------

    def model_timesteps(self, step: int, batch: int, device: torch.device | str) -> torch.Tensor:
        return torch.full((batch,), self.timesteps[step], dtype=torch.long, device=device)

    def _all_model_timesteps(self, batch: int, device: torch.device | str) -> list[torch.Tensor]:
        """Step i's model timesteps `[batch]` for every step, in one host → device copy."""
        table = torch.tensor(self.timesteps, dtype=torch.long).to(device)  # [steps]
        return list(table[:, None].expand(-1, batch).contiguous().unbind(0))

    def split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B, 2C, ...]` -> prediction `[B, C, ...]`, variance interpolant v `[B, C, ...]` (or None)."""
        if not self.learned_variance:
            return output, None
        prediction, v = output.chunk(2, dim=1)
        return prediction, v

    def predict_x0_eps(
        self, prediction: torch.Tensor, x_t: torch.Tensor, step: int, clamp: Clamp | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) implied by the model's prediction at x_t; eps is recomputed from the clamped x_0."""
        recip = math.sqrt(1 / self._alpha_bar[step])
        recip_minus_one = math.sqrt(1 / self._alpha_bar[step] - 1)
        if self.predict == "eps":
            x0 = recip * x_t - recip_minus_one * prediction
        else:
            x0 = prediction
        if clamp is not None:
            x0 = clamp(x0)
        if self.predict == "eps" and clamp is None:
            return x0, prediction
        return x0, (recip * x_t - x0) / recip_minus_one

    def log_variance(self, v: torch.Tensor | None, step: int) -> torch.Tensor | float:
        """log of the reverse-step variance: fixed, or interpolated between log beta_tilde and log beta."""
        if v is None:
            return self._log_beta_tilde[step] if self.variance == "small" else self._log_beta[step]
        # Clamped (unless the config says otherwise) so that an untrained or off-range model still samples
        # within [beta_tilde, beta].
        if self.clamp_learned_variance:
            v = v.clamp(-1, 1)
        fraction = (v + 1) / 2
        return fraction * self._log_beta[step] + (1 - fraction) * self._log_beta_tilde[step]

    def posterior(
        self, output: torch.Tensor, x_t: torch.Tensor, step: int, clamp: Clamp | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor]:
        """Mean and log variance of p(x_{t-1} | x_t), and the predicted x_0."""
        prediction, v = self.split_output(output)
        x0, _ = self.predict_x0_eps(prediction, x_t, step, clamp)
        mean = self._mean_x0[step] * x0 + self._mean_xt[step] * x_t
        return mean, self.log_variance(v, step), x0

    # One step ----------------------------------------------------------------------------------------

    def ddpm_step(
        self,
        output: torch.Tensor,
        x_t: torch.Tensor,
        step: int,
        noise: torch.Tensor | None,
        clamp: Clamp | None = None,
    ) -> torch.Tensor:
        """Ancestral sample x_{t-1} ~ p(x_{t-1} | x_t); step 0 returns the mean (no noise)."""
        mean, log_variance, _ = self.posterior(output, x_t, step, clamp)
        if step == 0 or noise is None:
            return mean
        if isinstance(log_variance, float):
            return mean + math.exp(0.5 * log_variance) * noise
        return mean + torch.exp(0.5 * log_variance) * noise

    def ddim_step(
        self,
        output: torch.Tensor,
        x_t: torch.Tensor,
        step: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        clamp: Clamp | None = None,
    ) -> torch.Tensor:
        """DDIM update to the previous kept step (Song et al. eq. 12); eta=1 matches DDPM's beta_tilde."""
        prediction, _ = self.split_output(output)
        x0, eps = self.predict_x0_eps(prediction, x_t, step, clamp)
        alpha_bar, alpha_bar_prev = self._alpha_bar[step], self._alpha_bar_prev[step]
        sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps
        if sigma > 0 and noise is not None:
            x_prev = x_prev + sigma * noise
        return x_prev

    def ddim_inversion_step(
        self, output: torch.Tensor, x: torch.Tensor, step: int, clamp: Clamp | None = None
    ) -> torch.Tensor:
        """The eta=0 ODE run forward: x at step `step - 1` (x_0 for step 0) -> x at step `step`.

        `output` is the model at x, queried at the timestep of step max(step - 1, 0). For step 0, x is the
        clean image itself, so it is used as x_0 directly; only eps comes from the model.
        """
        prediction, _ = self.split_output(output)
        if step > 0:
            x0, eps = self.predict_x0_eps(prediction, x, step - 1, clamp)
        elif self.predict == "eps":
            x0, eps = x, prediction
        else:
            x0 = x
            eps = (x - math.sqrt(self._alpha_bar[0]) * prediction) / math.sqrt(1 - self._alpha_bar[0])
        alpha_bar = self._alpha_bar[step]
        return math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps

    # Loops -------------------------------------------------------------------------------------------

    def sample(
        self,
        denoise: Denoiser,
        x_T: torch.Tensor,
        generators: Sequence[torch.Generator],
        *,
        method: str = "ddpm",
        eta: float = 0.0,
        clamp: Clamp | None = None,
        on_step: StepCallback | None = None,
        after_step: AfterStep | None = None,
        final_denoise: Denoiser | None = None,
    ) -> torch.Tensor:
        """Run every step from x_T (`[B, ...]`, at step `num_steps - 1`) down to x_0.

        method "ddpm" (ancestral) or "ddim" (with eta). Each noisy step draws one noise tensor per item from
        that item's generator. `after_step(x, i)` may edit x after step i (x is then at step i - 1).
        `final_denoise`, if given, replaces `denoise` for the last step (step 0; Karlo's super_res_last).
        """
        if method not in ("ddpm", "ddim"):
            raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")
        if len(generators) != x_T.shape[0]:
            raise ValueError(f"need one generator per item: {len(generators)} for a batch of {x_T.shape[0]}")
        x = x_T
        total = self.num_steps
        timesteps = self._all_model_timesteps(x.shape[0], x.device)  # made once, not per step
        for step in reversed(range(total)):
            model = final_denoise if step == 0 and final_denoise is not None else denoise
            output = model(x, timesteps[step])
            noisy = step > 0 and (method == "ddpm" or eta > 0)
            noise = gaussian_noise(generators, x.shape[1:], x.device, x.dtype) if noisy else None
            if method == "ddpm":
                x = self.ddpm_step(output, x, step, noise, clamp)
            else:
                x = self.ddim_step(output, x, step, eta, noise, clamp)
            if after_step is not None:
                x = after_step(x, step)
            if on_step is not None:
                on_step(total - step, total)
        return x

    def invert(
        self,
        denoise: Denoiser,
        x0: torch.Tensor,
        *,
        clamp: Clamp | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """DDIM inversion: the deterministic x_T from which eta=0 DDIM sampling returns (about) to x0."""
        x = x0
        total = self.num_steps
        timesteps = self._all_model_timesteps(x.shape[0], x.device)
        for step in range(total):
            output = denoise(x, timesteps[max(step - 1, 0)])
            x = self.ddim_inversion_step(output, x, step, clamp)
            if on_step is not None:
                on_step(step + 1, total)
        return x


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """Classifier-free guidance on the first `channels` channels (dim 1): uncond + scale·(cond − uncond).

    Further channels (a learned variance) are taken from the conditional output. For a model that predicts
    x_0 this is the same as guiding eps: at a shared x_t, eps is an affine function of x_0.
    """
    guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([guided, cond[:, channels:]], dim=1)


def classifier_free_guidance(forward_pair: Denoiser, scale: float, channels: int) -> Denoiser:
    """A denoiser that evaluates `forward_pair` once on the doubled batch and guides.

    `forward_pair(x [2B, ...], t [2B])` must condition rows [:B] and leave rows [B:] unconditioned.
    """

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = forward_pair(torch.cat([x, x]), torch.cat([t, t]))
        cond, uncond = output.chunk(2)
        return guide(cond, uncond, scale, channels)

    return denoise
