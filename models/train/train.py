"""Train the whole stack (or one stage) into a checkpoint folder: CLIP → prior → decoder → sr256 → sr1024.

One call with a seed reproduces a checkpoint: the seed fixes the initial weights, the picture pools and
every step's batch, noise and dropout. The checkpoint folder (`out`) holds EMA weights for shipping; the
training state (`state`, default `<out>.train`, never shipped) lets a later call continue where this
one stopped (`resume`). Stages after CLIP use the trained CLIP, frozen.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import (
    CONFIG_FILE,
    DEFAULT_WORDS,
    UnCLIPModels,
    build_models,
    load_checkpoint,
    save_checkpoint,
)
from models.config import named_config
from models.tokenizer import build_tokenizer
from models.train.clip import CLIPStage, TextProjectionStage
from models.train.data import DEFAULT_CACHE
from models.train.decoder import AnchoredDecoderStage, CaptionDecoderStage, DecoderStage
from models.train.loop import StageResult, train_stage
from models.train.prior import PriorStage
from models.train.reader import ReaderStage
from models.train.shapes import caption_words
from models.train.stage import PoolSizes, Stage, StageSettings, TrainingData
from models.train.upsample import SR256Stage, SR1024Stage

STAGES: dict[str, type[Stage]] = {
    "clip": CLIPStage,
    "clip_projection": TextProjectionStage,
    "prior": PriorStage,
    "decoder": DecoderStage,
    "decoder_anchored": AnchoredDecoderStage,
    "decoder_caption": CaptionDecoderStage,
    "sr256": SR256Stage,
    "sr1024": SR1024Stage,
    "reader": ReaderStage,
}
# What `--stage all` trains. clip_projection, decoder_anchored and decoder_caption refit a trained
# checkpoint (`--init`):
# trained from scratch, CLIP and the decoder already learn the caption grammar.
ALL_STAGES = tuple(
    name for name in STAGES if name not in ("clip_projection", "decoder_anchored", "decoder_caption")
)

# The recipe of the shipped checkpoint, on the 2-core development CPU: clip 17, prior 22, decoder 84 + 93 +
# 116, sr256 14, sr1024 32 min. The decoder came in three runs, each from the previous EMA weights with a
# fresh optimizer: 5500 steps with the plain x0 loss and no position embedding; 5000 with both; 17500 in
# bf16 autocast (`loop.mixed_precision`), the last 1500 of them at lr 1e-4 (`--resume --lr 1e-4`: one
# shape 83 % -> 90 % at 64 px on 96 prompts). A run from scratch has the loss and the embedding from the
# start (the upsamplers, trained before the x0 weighting of losses.py, would get it too). A GPU affords
# far more (--steps, or --init to continue). Issue 18 then refitted, from those weights: clip_projection
# (600 steps, 86 s) and the prior (--init that, 3000 steps at lr 2e-4, 14 min); then the decoder
# (--init that, 12000 steps at lr 1e-4, 80 min), shipped as a 30 % blend with the decoder before it
# (`unclip blend`, models/train/blend.py). Last, the prompt reader (--stage reader --init that, 2000 steps,
# 35 min on the 2-core EPYC beside other work).
DEFAULT_SETTINGS: dict[str, StageSettings] = {
    "clip": StageSettings(steps=2000, batch_size=128, lr=5e-4, weight_decay=0.05),
    "clip_projection": StageSettings(steps=600, batch_size=256, lr=1e-3),
    "prior": StageSettings(steps=3000, batch_size=128, lr=3e-4),
    "decoder": StageSettings(steps=28000, batch_size=32, lr=4e-4),
    "decoder_anchored": StageSettings(steps=12000, batch_size=32, lr=1e-4),
    "decoder_caption": StageSettings(steps=6000, batch_size=32, lr=3e-4),
    "sr256": StageSettings(steps=1300, batch_size=32, lr=3e-4),
    "sr1024": StageSettings(steps=3200, batch_size=8, lr=3e-4),
    "reader": StageSettings(steps=2000, batch_size=128, lr=1e-3, weight_decay=0.01),
}


@dataclass
class TrainOptions:
    out: Path
    config: str = "small"
    stages: tuple[str, ...] = ALL_STAGES
    steps: int | None = None  # per stage; None = DEFAULT_SETTINGS
    batch_size: int | None = None
    lr: float | None = None
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    init: Path | None = None  # start from this checkpoint's weights (e.g. the shipped default)
    state: Path | None = None  # default: <out>.train
    pools: PoolSizes = field(default_factory=PoolSizes)
    cache: Path | None = DEFAULT_CACHE  # None: render the pools afresh, cache nothing
    workers: int = 1
    save_every: int = 1000
    progress: bool = True

    @property
    def state_dir(self) -> Path:
        return self.state if self.state is not None else self.out.with_name(self.out.name + ".train")

    def settings(self, stage: str) -> StageSettings:
        base = DEFAULT_SETTINGS[stage]
        overrides = {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr}
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def initial_models(options: TrainOptions, device: torch.device) -> UnCLIPModels:
    """The resumed checkpoint, the --init one, or fresh weights from the seed."""
    if options.resume and (options.out / CONFIG_FILE).is_file():
        return load_checkpoint(options.out, device=device)
    if options.init is not None:
        return load_checkpoint(options.init, device=device)
    config = named_config(options.config)
    tokenizer = build_tokenizer(sorted({*DEFAULT_WORDS, *caption_words()}), config.clip.context_length)
    torch.manual_seed(options.seed)
    models = build_models(config, tokenizer)
    for module in models.components().values():
        module.to(device).eval()
    return models


def _check_run(options: TrainOptions) -> None:
    """A resumed run must use the seed it started with, or its batches would not continue the same way."""
    path = options.state_dir / "run.json"
    record = {"seed": options.seed}
    if options.resume and path.is_file():
        previous = json.loads(path.read_text())
        if previous != record:
            raise ValueError(f"{path} records {previous}; resume with the same --seed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")


def train(options: TrainOptions) -> list[StageResult]:
    unknown = [s for s in options.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    device = torch.device(options.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _check_run(options)
    models = initial_models(options, device)
    # What a fine-tune starts from, also when it resumes (then `models` are the resumed weights).
    reference = None if options.init is None else load_checkpoint(options.init, device=device)
    training_data = TrainingData(options.seed, options.pools, options.cache, options.workers)
    results = []
    for name in (s for s in STAGES if s in options.stages):  # always in pipeline order
        stage = STAGES[name](models, training_data, device, reference)

        def save(weights: nn.Module, name: str = name) -> None:
            save_checkpoint(dataclasses.replace(models, **{STAGES[name].trains(): weights}), options.out)

        result = train_stage(
            stage,
            options.settings(name),
            seed=options.seed,
            state_dir=options.state_dir,
            resume=options.resume,
            save_every=options.save_every,
            on_save=save,
            progress=options.progress,
        )
        results.append(result)
    save_checkpoint(models, options.out)
    return results
