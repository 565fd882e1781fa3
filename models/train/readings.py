"""Which reading of a held-out wording fails, the prior's or the decoder's?

For each two-shape prompt of a held-out set, the same facts are also worded as a template caption
(`shapes.write_caption`, the wording the shipped weights first trained on). Four pictures per prompt, at
the same seed: the prior reads the prompt or the template (→ z_i), and the decoder reads the prompt or
the template (→ its caption tokens). Scored as `unclip evaluate` scores two shapes. This is the stack
itself, without the checkpoint's prompt reader (models/reader.py): prompt/prompt is `generate` with
`pipeline.reader = None`.

    python -m models.train.readings [--checkpoint DIR] [--set phrasings] [--prompts 24] [--repeats 2]

`--set trained` asks the same of pairs whose facts the training captions do state, in the training
grammar: it tells a decoder that cannot read the grammar from one that cannot generalise to new pairs.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

import torch
from PIL import Image

from models.pipeline.images import tensor_to_images
from models.pipeline.latents import item_generators
from models.pipeline.stages import DecoderCondition
from models.pipeline.unclip import UnCLIPPipeline
from models.train import captions, shapes
from models.train.classify import classify
from models.train.evaluate import (
    PROMPT_SETS,
    CategoryResult,
    Prompt,
    batches,
    held_out_prompts,
    score,
    two_shape_specs,
    with_random_details,
)

WORDINGS = ("prompt", "template")
SIZE = 64  # the decoder's own pictures: what it reads shows there, before any upsampler
TRAINED = "trained"  # the prompt set of pairs that training captions state


def trained_prompts(count: int, seed: int = 0) -> list[Prompt]:
    """`count` two-shape prompts of facts that training captions state, each a fresh training caption."""
    rng = random.Random(f"readings/trained/{seed}")
    specs = [spec for spec in two_shape_specs() if not shapes.is_held_out(spec)]
    rng.shuffle(specs)
    prompts = []
    for spec in specs:
        spec = with_random_details(spec, rng)
        if not shapes.is_held_out(spec):  # a detail (a background) can make a pair held out
            prompts.append(Prompt(captions.training_caption(spec, rng), spec, "two shapes", TRAINED))
        if len(prompts) == count:
            return prompts
    raise ValueError(f"only {len(prompts)} trained pairs, not {count}")


@torch.inference_mode()
def cross_readings(
    pipeline: UnCLIPPipeline,
    prompts: list[Prompt],
    seed: int = 0,
    batch: int = 8,
    on_picture: Callable[[tuple[str, str], Prompt, Image.Image], None] | None = None,
) -> dict[tuple[str, str], CategoryResult]:
    """(what the prior read, what the decoder read) → two-shape results over `prompts`."""
    rng = random.Random(f"readings/{seed}")
    templates = [shapes.write_caption(p.spec, rng) for p in prompts]
    sampling = pipeline.sampling(size=SIZE, best_of=1)  # one picture per reading, no ranking
    guidance = sampling.decoder_image_guidance  # the prior's z_i's own scale, as `generate` uses
    results = {(prior, decoder): CategoryResult() for prior in WORDINGS for decoder in WORDINGS}
    for offset, group in zip(range(0, len(prompts), batch), batches(prompts, batch), strict=True):
        seeds = [seed + offset + i for i in range(len(group))]
        texts = {
            "prompt": pipeline._text([p.text for p in group]),
            "template": pipeline._text(templates[offset : offset + len(group)]),
        }
        for prior in WORDINGS:
            generators = item_generators(seeds, pipeline.device)  # as `generate` draws: prior, then x_T
            image_embed = pipeline._prior(texts[prior], generators, sampling, None)
            after_prior = [g.get_state() for g in generators]  # each decoder reading starts from here
            for decoder in WORDINGS:
                for g, state in zip(generators, after_prior, strict=True):
                    g.set_state(state)
                condition = DecoderCondition(image_embed, texts[decoder].states, texts[decoder].mask)
                noise = pipeline._noise(generators, SIZE)
                x = pipeline._decode(condition, noise, generators, sampling, None, image_guidance=guidance)
                for prompt, picture in zip(group, tensor_to_images(x), strict=True):
                    results[prior, decoder].add(score(prompt, classify(picture)))
                    if on_picture is not None:
                        on_picture((prior, decoder), prompt, picture)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--set", default="phrasings", choices=(*PROMPT_SETS, TRAINED))
    parser.add_argument("--prompts", type=int, default=24, help="prompts per category and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    pipeline = UnCLIPPipeline.from_checkpoint(args.checkpoint, device="cpu")
    prompts = [
        prompt
        for repeat in range(args.repeats)
        for prompt in (
            trained_prompts(args.prompts, repeat)
            if args.set == TRAINED
            else held_out_prompts(args.prompts, repeat, args.set)
        )
        if prompt.category == "two shapes"
    ]
    for (prior, decoder), result in cross_readings(pipeline, prompts).items():
        print(f"prior reads the {prior:8s} decoder the {decoder:8s} {result.line('two shapes')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
