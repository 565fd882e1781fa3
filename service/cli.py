"""The `unclip` command. Parsing lives here; each command's work lives in the module it names, imported
only when that command runs (so `unclip gateway` never imports torch)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from models.contract import DEFAULT_FRAMES, DEFAULT_LATENT, DEFAULT_SOURCE_CAPTION, LATENTS, SIZES, Sampling

COMMAND_OPS = {"generate": "generate", "vary": "variation", "interpolate": "interpolate",
               "text-diff": "text_diff", "inpaint": "inpaint"}
FLAG_ALIASES = {"text_diff_strength": ("--strength",)}  # shorter names kept from before


def _sampling_flags(parser: argparse.ArgumentParser, op: str) -> None:
    """The in-process commands' common flags, and one flag per setting of `Sampling.job_fields(op)`."""
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda")
    parser.add_argument("-o", "--output", type=Path, default=Path("out.png"),
                        help="PNG path; several images get _0, _1, ... before the suffix")
    settings = {setting.name: setting for setting in dataclasses.fields(Sampling)}
    for name in Sampling.job_fields(op):
        setting = settings[name]
        flags = ("--" + name.replace("_", "-"), *FLAG_ALIASES.get(name, ()))
        kind = int if isinstance(setting.default, int) else float  # None defaults are guidance: float
        choices = SIZES if name == "size" else None
        parser.add_argument(*flags, dest=name, type=kind, choices=choices, default=None,
                            help=setting.metadata["help"])


def _server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--redis-url", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unclip", description="Serve and run the unCLIP image generator.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="gateway + one worker (+ embedded Redis) on this machine")
    _server_flags(serve)
    gateway = commands.add_parser("gateway", help="the HTTP gateway only (no torch)")
    _server_flags(gateway)
    worker = commands.add_parser("worker", help="one worker that runs queued jobs")
    _server_flags(worker)

    generate = commands.add_parser("generate", help="text → images, in-process")
    generate.add_argument("prompt")
    generate.add_argument("--n", type=int, default=1)
    _sampling_flags(generate, "generate")

    vary = commands.add_parser("vary", help="variations of an image, in-process")
    vary.add_argument("image", type=Path)
    vary.add_argument("--n", type=int, default=1)
    vary.add_argument("--eta", type=float, default=None, help="0 keeps closest to the image; more varies")
    _sampling_flags(vary, "variation")

    interpolate = commands.add_parser("interpolate", help="frames between two images, in-process")
    interpolate.add_argument("image_a", type=Path)
    interpolate.add_argument("image_b", type=Path)
    interpolate.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    interpolate.add_argument("--latent", choices=LATENTS, default=DEFAULT_LATENT,
                             help="slerp between both images' inverted noise, or one fixed random noise")
    _sampling_flags(interpolate, "interpolate")

    text_diff = commands.add_parser("text-diff", help="move an image toward a caption, in-process")
    text_diff.add_argument("image", type=Path)
    text_diff.add_argument("prompt")
    text_diff.add_argument("--source-caption", default=DEFAULT_SOURCE_CAPTION)
    text_diff.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    _sampling_flags(text_diff, "text_diff")

    inpaint = commands.add_parser("inpaint", help="repaint the white area of a mask, in-process")
    inpaint.add_argument("image", type=Path)
    inpaint.add_argument("mask", type=Path, help="white pixels = repaint")
    inpaint.add_argument("prompt")
    _sampling_flags(inpaint, "inpaint")

    init = commands.add_parser("init-checkpoint", help="write a checkpoint with random weights")
    init.add_argument("out_dir", type=Path)
    init.add_argument("--config", default="tiny", help="named size (tiny, small)")
    init.add_argument("--seed", type=int, default=0)

    # Listed for --help only: main hands them to their own parser (python -m models.train) unparsed.
    for name, what in (
        ("train", "train the shapes-world checkpoint"),
        ("evaluate", "score a checkpoint"),
        ("blend", "blend a fine-tuned checkpoint with its start"),
    ):
        commands.add_parser(name, help=f"{what} (unclip {name} --help)", add_help=False)

    from models.convert import add_arguments as add_import_arguments  # argparse only, no torch

    add_import_arguments(commands.add_parser("import", help="convert published weights (karlo | clip)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["evaluate"], ["blend"]):
        from models.train.cli import main as train_main

        return train_main(argv)
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "gateway", "worker"):
        from service import serve as commands
    elif args.command == "import":
        from models import convert as commands
    else:
        from service import local as commands
    return int(commands.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
