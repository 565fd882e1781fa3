"""Command line of the shapes-world training: `train` (all stages or one), `evaluate` and `blend`.

python -m models.train train --out models/weights/default --device cuda --seed 0
python -m models.train train --out ckpt --stage decoder --steps 2000 --resume
python -m models.train evaluate --checkpoint ckpt --sizes 64 256
python -m models.train blend --base shipped --tuned ckpt --component decoder --weight 0.3 --out mix
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from models.train.data import DEFAULT_CACHE
from models.train.stage import PoolSizes
from models.train.train import ALL_STAGES, STAGES, TrainOptions, train

if TYPE_CHECKING:
    from PIL import Image

    from models.train.classify import Classification
    from models.train.evaluate import Prompt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("train", help="train every stage, or one, into a checkpoint folder")
    run.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (EMA weights)")
    run.add_argument("--stage", choices=["all", *STAGES], default="all")
    run.add_argument("--config", default="small", help="named config for fresh weights (tiny, small, ...)")
    run.add_argument("--steps", type=int, help="steps per stage (default: each stage's own)")
    run.add_argument("--batch-size", type=int, help="batch size of every stage (default: each stage's own)")
    run.add_argument("--lr", type=float, help="learning rate of every stage (default: each stage's own)")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true", help="continue from the training state and --out")
    run.add_argument("--init", type=Path, help="start from this checkpoint's weights (e.g. the shipped one)")
    run.add_argument("--state", type=Path, help="training-state folder (default: <out>.train; not shipped)")
    run.add_argument("--pool", type=int, help="scenes in every picture pool (default: each pool's own)")
    run.add_argument("--cache", type=Path, help="where rendered pools are cached")
    run.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="render processes")
    run.add_argument("--save-every", type=int, default=1000, help="steps between checkpoint saves")
    run.add_argument("--no-progress", action="store_true")

    mix = commands.add_parser("blend", help="blend a fine-tuned checkpoint's weights with its start's")
    mix.add_argument("--base", type=Path, required=True, help="the checkpoint the fine-tune started from")
    mix.add_argument("--tuned", type=Path, required=True, help="the fine-tuned checkpoint")
    mix.add_argument("--component", nargs="+", required=True, help="components to blend (e.g. decoder)")
    mix.add_argument("--weight", type=float, required=True, help="0 = base, 1 = tuned")
    mix.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")

    check = commands.add_parser("evaluate", help="generate held-out prompts and classify the pictures")
    check.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the shipped one)")
    check.add_argument("--sizes", type=int, nargs="+", default=[64, 256], choices=[64, 256, 1024])
    check.add_argument("--prompts", type=int, default=40, help="prompts per category")
    check.add_argument("--batch", type=int, default=8)
    check.add_argument("--device", default="auto")
    check.add_argument("--dtype", default="auto", help="auto (what the service runs here), float32, bfloat16")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--repeats", type=int, default=1, help="prompt sets (more pictures, less noise)")
    check.add_argument(
        "--sets",
        nargs="+",
        default=["phrasings", "structures"],
        choices=["templates", "phrasings", "structures"],
        help="held-out prompt sets: template wording, held-out phrasings, held-out structures",
    )
    check.add_argument("--prior-steps", type=int)
    check.add_argument("--decoder-steps", type=int)
    check.add_argument("--sr-steps", type=int, help="steps of each upsampler")
    check.add_argument("--prior-guidance", type=float)
    check.add_argument("--decoder-guidance", type=float, help="the caption's guidance scale")
    check.add_argument("--decoder-image-guidance", type=float, help="z_i guidance, apart from the caption")
    check.add_argument("--best-of", type=int, help="candidates per picture, the one nearest its prompt kept")
    check.add_argument("--no-operations", action="store_true", help="skip variation/interpolation/... checks")
    check.add_argument(
        "--no-reader", action="store_true", help="draw every prompt as given, without the prompt reader"
    )
    check.add_argument("--images", type=Path, help="also save every generated picture here")
    check.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def run_train(args: argparse.Namespace) -> int:
    pools = PoolSizes() if args.pool is None else PoolSizes(args.pool, args.pool, args.pool)
    options = TrainOptions(
        out=args.out,
        config=args.config,
        stages=ALL_STAGES if args.stage == "all" else (args.stage,),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        resume=args.resume,
        init=args.init,
        state=args.state,
        pools=pools,
        cache=args.cache or DEFAULT_CACHE,
        workers=args.workers,
        save_every=args.save_every,
        progress=not args.no_progress,
    )
    for result in train(options):
        rate = result.seconds / max(result.steps - result.start_step, 1)
        print(
            f"{result.name}: steps {result.start_step}->{result.steps}, loss {result.loss:.4f}, "
            f"{result.seconds:.1f} s ({rate:.3f} s/step)"
        )
    print(f"checkpoint: {args.out}  training state: {options.state_dir}")
    return 0


def _picture_saver(folder: Path, seed: int) -> Callable[[Prompt, Image.Image, Classification], None]:
    folder.mkdir(parents=True, exist_ok=True)

    def save(prompt: Prompt, picture: Image.Image, found: Classification) -> None:
        picture.save(folder / f"{seed}_{prompt.text.replace(' ', '_').replace(',', '')}.png")

    return save


REPEAT_SEEDS = 1000  # apart, so that no two repeats share a picture's noise


def run_evaluate(args: argparse.Namespace) -> int:
    from models.pipeline import UnCLIPPipeline
    from models.train.evaluate import (
        CATEGORIES,
        CategoryResult,
        evaluate_generation,
        evaluate_operations,
        evaluate_reading,
        held_out_prompts,
        report,
    )

    pipeline = UnCLIPPipeline.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype)
    if args.no_reader:
        pipeline.reader = None
    reader = getattr(pipeline, "reader", None)  # a models.contract.Pipeline need not have one
    overrides = {
        "prior_steps": args.prior_steps,
        "decoder_steps": args.decoder_steps,
        "sr256_steps": args.sr_steps,
        "sr1024_steps": args.sr_steps,
        "prior_guidance": args.prior_guidance,
        "decoder_guidance": args.decoder_guidance,
        "decoder_image_guidance": args.decoder_image_guidance,
        "best_of": args.best_of,
    }
    # Repeat r words the prompts afresh (prompt seed + r), draws noise from seeds REPEAT_SEEDS·r on and
    # checks the operations on inputs of that seed; the figures are over all repeats.
    seeds = [args.seed + REPEAT_SEEDS * r for r in range(args.repeats)]
    generation: dict[int, dict[str, dict[str, CategoryResult]]] = {}
    operations = {}
    if reader is not None:
        for prompt_set in args.sets:
            read = {category: CategoryResult() for category in CATEGORIES}
            for r in range(args.repeats):
                prompts = held_out_prompts(args.prompts, args.seed + r, prompt_set)
                results = evaluate_reading(reader, pipeline.models.tokenizer, prompts)
                for category, result in results.items():
                    read[category].merge(result)
            for category, result in read.items():
                print(f"prompt reader, {prompt_set}, {result.line(category)}")
    for size in args.sizes:
        generation[size] = {}
        for prompt_set in args.sets:
            merged = generation[size][prompt_set] = {category: CategoryResult() for category in CATEGORIES}
            for r, seed in enumerate(seeds):
                prompts = held_out_prompts(args.prompts, args.seed + r, prompt_set)
                folder = None if args.images is None else args.images / str(size) / prompt_set
                save = None if folder is None else _picture_saver(folder, seed)
                results = evaluate_generation(pipeline, prompts, size, seed, args.batch, overrides, save)
                for category, result in results.items():
                    merged[category].merge(result)
        if not args.no_operations:
            runs = [evaluate_operations(pipeline, size, seed, overrides) for seed in seeds]
            operations[size] = {
                op: {check: sum(run[op][check] for run in runs) / len(runs) for check in checks}
                for op, checks in runs[0].items()
            }
    print(report(generation, operations))
    if args.json is not None:
        figures = {
            str(size): {
                **{
                    prompt_set: {
                        category: {
                            "total": r.total,
                            **{k: r.rate(k) for k in r.checks},
                            "intervals": {k: r.interval(k) for k in r.checks},
                        }
                        for category, r in results.items()
                    }
                    for prompt_set, results in sets.items()
                },
                **operations.get(size, {}),
            }
            for size, sets in generation.items()
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "blend":
        from models.train.blend import blend_checkpoints

        try:
            blend_checkpoints(args.base, args.tuned, args.component, args.weight, args.out)
        except ValueError as error:  # CheckpointError is one: a folder or component that does not fit
            print(f"unclip blend: {error}", file=sys.stderr)
            return 2
        return 0
    return run_train(args) if args.command == "train" else run_evaluate(args)
