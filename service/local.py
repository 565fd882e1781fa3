"""`unclip generate | vary | interpolate | text-diff | inpaint | init-checkpoint`: the pipeline run
in-process (no server), a tqdm bar per stage on stderr, PNGs written next to `--output`.

Several images from one command go to OUT_0.png, OUT_1.png, ... (the stem of `-o OUT.png` plus `_i`).
Item i of a command uses seed + i, as a queued job's items do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from models.attention import set_default_backend
from models.capabilities import CONFIG_FILE, read_capabilities
from models.checkpoint import CheckpointError, default_checkpoint, init_checkpoint
from models.contract import Progress, Sampling, repaint_mask, revised_prompt
from models.pipeline import UnCLIPPipeline
from service.cli import COMMAND_OPS
from service.settings import get_settings

USAGE_ERROR = 2


class ProgressBars:
    """A `ProgressCallback` that shows one tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None
        self._stage: str | None = None

    def __call__(self, progress: Progress) -> None:
        if self._bar is None or progress.stage != self._stage:
            self.close()
            self._stage = progress.stage
            self._bar = tqdm(total=progress.total, desc=progress.stage, unit="step", file=sys.stderr)
        self._bar.update(progress.step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run(args: argparse.Namespace) -> int:
    """Run one in-process command; 0 on success, 2 with a message on stderr for bad input."""
    try:
        if args.command == "init-checkpoint":
            folder = init_checkpoint(args.out_dir, args.config, seed=args.seed)
            print(f"wrote a random {args.config!r} checkpoint to {folder}")
            return 0
        pipeline = load_pipeline(args)
        bars = ProgressBars()
        try:
            images = COMMANDS[args.command](pipeline, args, sampling_of(pipeline, args), bars)
        finally:
            bars.close()
    except (CheckpointError, ValueError, OSError) as error:
        print(f"unclip {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if (revised := revised_prompt(images)) is not None:
        print(f"drew {revised!r}: the prompt as the model reads it")
    paths = write_images(images, args.output)
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


def load_pipeline(args: argparse.Namespace) -> UnCLIPPipeline:
    """Flags first, then the UNCLIP_* settings. An operation the checkpoint cannot run is refused
    (UnsupportedOperation) from its unclip.json, before any weight is read."""
    settings = get_settings()
    set_default_backend(settings.attention_backend)
    folder = Path(args.checkpoint or settings.checkpoint or default_checkpoint())
    if (folder / CONFIG_FILE).is_file():  # else load_checkpoint names the missing file
        read_capabilities(folder).check(COMMAND_OPS[args.command])
    device = args.device or settings.device
    pipeline = UnCLIPPipeline.from_checkpoint(folder, device=device, dtype=settings.dtype)
    # One command runs a few dozen steps: a compile (minutes cold, seconds from the cache) costs more than
    # it saves, so "auto" stays eager here and only an explicit UNCLIP_COMPILE compiles.
    if settings.compile != "auto":
        from models.pipeline.runtime import compile_on_first_use

        compile_on_first_use(pipeline, settings.compile, settings.compile_cache_dir)
    return pipeline


def sampling_of(pipeline: UnCLIPPipeline, args: argparse.Namespace) -> Sampling:
    """The flags `cli._sampling_flags` added for the command's op (unset: the checkpoint's default)."""
    return pipeline.sampling(**{name: getattr(args, name, None) for name in Sampling.job_fields()})


def write_images(images: list[Image.Image], output: Path) -> list[Path]:
    """One image → `output`; several → `output` with `_0`, `_1`, ... before the suffix. Always PNG."""
    if len(images) == 1:
        paths = [output]
    else:
        paths = [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(len(images))]
    output.parent.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, paths, strict=True):
        image.save(path, format="PNG")
    return paths


def warn_if_truncated(pipeline: UnCLIPPipeline, prompts: list[str]) -> None:
    context = pipeline.models.tokenizer.context_length
    for prompt, truncated in zip(prompts, pipeline.truncated(prompts), strict=True):
        if truncated:
            print(f"warning: prompt {prompt!r} is longer than the {context}-token context; it was truncated",
                  file=sys.stderr)  # fmt: skip


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def item_seeds(args: argparse.Namespace, count: int) -> list[int]:
    if count < 1:
        raise ValueError(f"--n must be at least 1, got {count}")
    return [args.seed + i for i in range(count)]


# Commands: (pipeline, args, sampling, progress) → images to write ------------------------------------


def generate(
    pipeline: UnCLIPPipeline, args: argparse.Namespace, sampling: Sampling, bars: ProgressBars
) -> list[Image.Image]:
    warn_if_truncated(pipeline, [args.prompt])
    seeds = item_seeds(args, args.n)
    return pipeline.generate([args.prompt] * len(seeds), seeds, sampling, progress=bars)


def vary(
    pipeline: UnCLIPPipeline, args: argparse.Namespace, sampling: Sampling, bars: ProgressBars
) -> list[Image.Image]:
    seeds = item_seeds(args, args.n)
    eta = {} if args.eta is None else {"eta": args.eta}  # None: the pipeline's default
    return pipeline.variation([open_image(args.image)] * len(seeds), seeds, sampling, progress=bars, **eta)


def interpolate(
    pipeline: UnCLIPPipeline, args: argparse.Namespace, sampling: Sampling, bars: ProgressBars
) -> list[Image.Image]:
    a, b = open_image(args.image_a), open_image(args.image_b)
    [frames] = pipeline.interpolate([a], [b], [args.seed], sampling, frames=args.frames, latent=args.latent,
                                    progress=bars)
    return frames


def text_diff(
    pipeline: UnCLIPPipeline, args: argparse.Namespace, sampling: Sampling, bars: ProgressBars
) -> list[Image.Image]:
    warn_if_truncated(pipeline, [args.prompt, args.source_caption])
    image = open_image(args.image)
    [frames] = pipeline.text_diff(
        [image],
        [args.prompt],
        [args.source_caption],
        [args.seed],
        sampling,
        frames=args.frames,
        progress=bars,
    )
    return frames


def inpaint(
    pipeline: UnCLIPPipeline, args: argparse.Namespace, sampling: Sampling, bars: ProgressBars
) -> list[Image.Image]:
    warn_if_truncated(pipeline, [args.prompt])
    image, mask = open_image(args.image), open_image(args.mask)
    if mask.size != image.size:
        raise ValueError(
            f"the mask is {mask.size[0]}x{mask.size[1]} but the image {image.size[0]}x{image.size[1]}"
        )
    repaint = repaint_mask(mask)
    return pipeline.inpaint([image], [repaint], [args.prompt], [args.seed], sampling, progress=bars)


Command = Callable[[UnCLIPPipeline, argparse.Namespace, Sampling, ProgressBars], list[Image.Image]]
COMMANDS: dict[str, Command] = {
    "generate": generate,
    "vary": vary,
    "interpolate": interpolate,
    "text-diff": text_diff,
    "inpaint": inpaint,
}
