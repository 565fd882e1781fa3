"""Importers from published checkpoint layouts into ours (DESIGN §3). Safetensors only: nothing unpickles.

python -m models.convert clip SRC OUT [--vision FOLDER]      Hugging Face CLIP → clip.json + clip.safetensors
python -m models.convert karlo SRC OUT [--image-encoder FOLDER] [--sr1024-from CHECKPOINT]
                                                              diffusers UnCLIP (Karlo) → checkpoint folder
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The import sub-commands, for this module's CLI and `unclip import`."""
    formats = parser.add_subparsers(dest="format", required=True)
    clip = formats.add_parser("clip", help="a Hugging Face CLIPModel (or CLIPTextModelWithProjection) folder")
    clip.add_argument("src", help="folder with config.json and model.safetensors")
    clip.add_argument("out", help="folder to write clip.json, clip.safetensors, vocab.json, merges.txt")
    clip.add_argument("--vision", help="CLIPVisionModelWithProjection folder, when SRC is a text model")
    karlo = formats.add_parser("karlo", help="a diffusers UnCLIP folder (kakaobrain/karlo-v1-alpha)")
    karlo.add_argument("src", help="folder with prior/, text_proj/, decoder/, super_res_first/, ...")
    karlo.add_argument("out", help="checkpoint folder to write")
    karlo.add_argument(
        "--image-encoder",
        help="the kakaobrain/karlo-v1-alpha-image-variations folder (its image_encoder/ and "
        "feature_extractor/) or a CLIPVisionModelWithProjection folder; without one, variation, "
        "interpolate and text_diff are refused",
    )
    karlo.add_argument("--sr1024-from", help="one of our checkpoint folders whose 256→1024 upsampler to use")


def run(args: argparse.Namespace) -> int:
    from models.checkpoint import load_checkpoint
    from models.convert.clip_hf import import_clip
    from models.convert.karlo import import_karlo, missing_parts

    try:
        if args.format == "clip":
            out = import_clip(args.src, args.out, vision=args.vision)
        else:
            out = import_karlo(args.src, args.out, args.image_encoder, args.sr1024_from)
    except (ValueError, OSError) as error:  # ConversionError, CheckpointError, a missing file
        print(f"import failed: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    if args.format == "karlo":
        for note in missing_parts(load_checkpoint(out)):
            print(f"note: {note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
