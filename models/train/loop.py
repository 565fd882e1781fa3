"""The optimisation loop of one stage: AdamW with warm-up, gradient clipping, EMA weights, resumable state.

The training state of a stage (`<state>/<stage>.pt`: step, raw weights, EMA weights, optimizer) is not
part of a checkpoint and is never shipped; it holds only tensors and plain values and is read back with
`torch.load(weights_only=True)`, which does not unpickle arbitrary objects.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from models.train.stage import Stage, StageSettings

log = logging.getLogger(__name__)

REPORT_EVERY = 10  # steps between progress-bar updates


@dataclass
class StageResult:
    name: str
    start_step: int  # where this run began (> 0 when resumed)
    steps: int  # where it ended
    loss: float  # smoothed loss at the end (nan when no step ran)
    seconds: float


def step_seed(seed: int, stage: str, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{stage}/{step}".encode()).digest()[:8], "big") >> 1


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, decay: float) -> None:
    targets, sources = list(ema.parameters()), [p.detach() for p in module.parameters()]
    torch._foreach_lerp_(targets, sources, 1 - decay)  # one fused launch per dtype/device group
    for target, source in zip(ema.buffers(), module.buffers(), strict=True):
        target.copy_(source)


def ema_decay(settings: StageSettings, step: int) -> float:
    """Ramped up from 0 so the average is not dominated by the random initialisation in short runs."""
    return min(settings.ema_decay, (1 + step) / (10 + step))


def learning_rate(settings: StageSettings, step: int) -> float:
    return settings.lr * min(1.0, (step + 1) / max(settings.warmup, 1))


def mixed_precision(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast where matrix products run in bf16 natively: CUDA, and CPUs whose oneDNN has bf16
    kernels (AVX-512 BF16 / AMX: about 1.3x faster decoder steps on the 2-core development CPU); float32
    elsewhere. Norms and losses run in float32 either way."""
    if device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def state_path(state_dir: Path, stage: str) -> Path:
    return Path(state_dir) / f"{stage}.pt"


def save_state(
    path: Path, step: int, module: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    state = {
        "step": step,
        "module": module.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    torch.save(state, staging)
    staging.replace(path)  # a run killed while saving keeps the previous state


def train_stage(
    stage: Stage,
    settings: StageSettings,
    *,
    seed: int,
    state_dir: Path,
    resume: bool,
    save_every: int = 0,
    on_save: Callable[[nn.Module], None] | None = None,
    progress: bool = True,
) -> StageResult:
    """Train `stage.module` up to `settings.steps`; afterwards the module holds the EMA weights.

    `on_save(ema)` is called at every save (every `save_every` steps and at the end) to write a checkpoint.
    """
    device = stage.device
    module = stage.module
    module.train().requires_grad_(False)
    trained = stage.parameters()
    for parameter in trained:
        parameter.requires_grad_(True)
    ema = copy.deepcopy(module).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        trained, lr=settings.lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay
    )
    path = state_path(state_dir, stage.name)
    start = 0
    if resume and path.is_file():
        state = torch.load(path, map_location=device, weights_only=True)
        module.load_state_dict(state["module"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    autocast = mixed_precision(device)
    smoothed = float("nan")
    recent: list[torch.Tensor] = []
    began = time.perf_counter()
    bar = tqdm(
        range(start, settings.steps),
        desc=stage.name,
        initial=start,
        total=settings.steps,
        disable=not progress,
    )
    step = start
    for step in bar:
        seed_here = step_seed(seed, stage.name, step)
        rng = random.Random(seed_here)
        generator = torch.Generator(device=device).manual_seed(seed_here)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings, step)
        batch = stage.make_batch(settings.batch_size, rng)
        with autocast:
            loss, parts = stage.loss(batch, generator)
        loss = loss.mean()
        loss.backward()
        if settings.grad_clip:
            nn.utils.clip_grad_norm_(trained, settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stage.after_step()
        update_ema(ema, module, ema_decay(settings, step))
        recent.append(loss.detach())
        saving = bool(save_every) and (step + 1) % save_every == 0 and step + 1 < settings.steps
        if len(recent) == REPORT_EVERY or step + 1 == settings.steps or saving:
            # Read back every few steps only: each read waits for the device to finish its queue.
            for value in torch.stack(recent).tolist():
                smoothed = value if smoothed != smoothed else 0.98 * smoothed + 0.02 * value
            recent.clear()
            shown = {k: f"{float(v.float().mean()):.3f}" for k, v in parts.items()}
            bar.set_postfix({"loss": f"{smoothed:.4f}", **shown})
        if saving:
            if not progress:  # logs in place of the bar, once per save
                seconds = time.perf_counter() - began
                log.info("%s step %d: loss %.4f %s (%.0f s)", stage.name, step + 1, smoothed, shown, seconds)
            save_state(path, step + 1, module, ema, optimizer)
            if on_save is not None:
                on_save(ema)
    end = max(start, settings.steps)
    if end > start or not path.is_file():
        save_state(path, end, module, ema, optimizer)
    # Later stages and the checkpoint use the averaged weights.
    module.load_state_dict(ema.state_dict())
    module.eval().requires_grad_(False)
    if on_save is not None:
        on_save(module)
    return StageResult(stage.name, start, end, smoothed, time.perf_counter() - began)
