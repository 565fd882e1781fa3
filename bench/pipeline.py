"""End-to-end text-to-image latency of our in-process pipeline (models.pipeline.UnCLIPPipeline.generate).

    .venv/bin/python bench/pipeline.py [--device auto] [--runs 3] [--quick] [--only karlo|default]
                                       [--scale 0.1] [--steps 25,25,7] [--batch 1] [--dtype auto]

Two parts, one table:
- karlo: a random Karlo-shaped model (bench/karlo_models.py: Karlo's block types, depths, resolutions and
  schedulers, every width × --scale) saved in the diffusers layout and converted with
  models.convert.karlo.import_karlo. Baseline: diffusers' UnCLIPPipeline on the same weights, the same
  prompt, step counts (prior / decoder / super-res, Karlo's 25 / 25 / 7 unless --steps), guidance (4 / 8),
  batch, dtype and device, in the same run. diffusers always upsamples; its 64 px time is its pipeline
  stopped by a forward pre-hook at the first super-res call (prior + decoder + the 256 px noise draw).
  The imported checkpoint draws as many prior candidates per image as its PriorConfig.sample_candidates
  says (import_karlo: 1, as diffusers; the header prints it). ratio = our seconds ÷ diffusers' seconds
  (< 1: ours is faster).
- default: our pipeline on the shipped checkpoint (models/weights/default; where it is missing, a random
  checkpoint of models.config.named_config("small"), the same networks) at 256 and 1024 px with the
  checkpoint's default sampling steps.
  Baseline: the issue-5 budgets for a 2-core CPU (256 px < 5 s, 1024 px < 60 s); ratio = seconds ÷ budget
  (< 1: within budget). On other machines the ratio is printed against the same budgets.

Every number is the median over --runs runs after one warm-up run, in seconds per image (a batch's time ÷
its size); runs of the pipelines being compared are interleaved so load drift hits them alike. Clocks are
read after torch.cuda.synchronize on CUDA. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path

import torch
from diffusers import UnCLIPPipeline as DiffusersUnCLIP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: models is one level up

from karlo_models import KarloShape, karlo_shape, load_diffusers_pipeline, save_karlo_folder

from models.checkpoint import CONFIG_FILE, DEFAULT_FOLDER, init_checkpoint
from models.convert.karlo import import_karlo
from models.pipeline import Sampling, UnCLIPPipeline, stages
from models.pipeline.devices import resolve_device, resolve_dtype

PROMPT = "a photo of a red circle on the left of a blue square"
KARLO_STEPS = (25, 25, 7)  # prior, decoder, super-res: Karlo's UnCLIPPipeline defaults
QUICK_STEPS = (2, 2, 2)
BUDGETS = {256: 5.0, 1024: 60.0}  # issue 5: seconds per image on a 2-core CPU


@dataclass
class Row:
    part: str
    size: int
    pipeline: str
    steps: str
    batch: int
    seconds: list[float]  # per image, one per timed run
    baseline: str  # what the ratio divides by
    baseline_seconds: float

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def ratio(self) -> float:
        return self.median / self.baseline_seconds


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    cases: dict[str, Callable[[], object]], runs: int, batch: int, device: torch.device, label: str
) -> dict[str, list[float]]:
    """Seconds per image of each case: one warm-up each, then `runs` rounds running every case once."""
    for name, run in cases.items():
        log(f"[{label}] warm-up: {name}")
        run()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for number in range(1, runs + 1):
        for name, run in cases.items():
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            elapsed = time.perf_counter() - started
            seconds[name].append(elapsed / batch)
            log(f"[{label}] run {number}/{runs} {name}: {elapsed:.2f} s")
    return seconds


# Karlo-shaped model: ours against diffusers ---------------------------------------------------------


class _StopAtSuperRes(Exception):
    """Raised by a forward pre-hook on diffusers' upsamplers: its 64 px image is done."""


def _stop_at_super_res(module: torch.nn.Module, args: tuple) -> None:
    raise _StopAtSuperRes


def diffusers_generate(
    pipe: DiffusersUnCLIP, prompts: list[str], seeds: list[int], size: int, steps: tuple[int, ...]
) -> None:
    prior_steps, decoder_steps, sr_steps = steps
    hooks = []
    if size == 64:  # stop where the upsampler would start (super_res_last runs alone when sr_steps is 1)
        hooks = [pipe.super_res_first.register_forward_pre_hook(_stop_at_super_res),
                 pipe.super_res_last.register_forward_pre_hook(_stop_at_super_res)]  # fmt: skip
    try:
        pipe(
            prompts,
            prior_num_inference_steps=prior_steps,
            decoder_num_inference_steps=decoder_steps,
            super_res_num_inference_steps=sr_steps,
            prior_guidance_scale=4.0,
            decoder_guidance_scale=8.0,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            output_type="pil",
        )
    except _StopAtSuperRes:
        pass
    finally:
        for hook in hooks:
            hook.remove()


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def karlo_part(
    workdir: Path,
    shape: KarloShape,
    steps: tuple[int, ...],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[list[Row], list[str]]:
    log(f"[karlo] building the Karlo-shaped folder: {shape.describe()}")
    folder, image_encoder = save_karlo_folder(workdir / "karlo", shape)
    log("[karlo] converting it with import_karlo")
    checkpoint = import_karlo(folder, workdir / "ours", image_encoder)
    ours = UnCLIPPipeline.from_checkpoint(checkpoint, device, dtype)
    theirs = load_diffusers_pipeline(folder).to(device=device)
    if dtype != torch.float32:  # a float32 .to(dtype) only makes diffusers warn
        theirs = theirs.to(dtype=dtype)
    theirs.set_progress_bar_config(disable=True)
    counts = {
        name: parameters(getattr(theirs, name)) / 1e6
        for name in ("text_encoder", "prior", "text_proj", "decoder", "super_res_first")
    }
    candidates = ours.models.config.prior.sample_candidates or stages.PRIOR_CANDIDATES
    notes = [
        f"karlo model (--scale {args.scale:g}): {shape.describe()}",
        "  parameters (M): " + ", ".join(f"{name} {count:.1f}" for name, count in counts.items()),
        f"  prior samples per image: ours {candidates} (the checkpoint's sample_candidates), diffusers 1",
    ]
    prompts, seeds = [PROMPT] * args.batch, list(range(args.batch))
    step_text = "/".join(map(str, steps))
    rows = []
    for size in (64, 256):
        prior_steps, decoder_steps, sr_steps = steps
        sampling = ours.sampling(
            size=size, prior_steps=prior_steps, decoder_steps=decoder_steps, sr256_steps=sr_steps
        )

        def our_run(sampling: Sampling = sampling) -> object:
            return ours.generate(prompts, seeds, sampling)

        def their_run(size: int = size) -> None:
            diffusers_generate(theirs, prompts, seeds, size, steps)

        cases = {"diffusers UnCLIPPipeline": their_run, "ours": our_run}
        with torch.inference_mode():
            seconds = time_interleaved(cases, args.runs, args.batch, device, f"karlo {size} px")
        baseline = statistics.median(seconds["diffusers UnCLIPPipeline"])
        for name, values in seconds.items():
            steps_here = step_text if size == 256 else "/".join(map(str, steps[:2])) + "/–"
            rows.append(Row("karlo", size, name, steps_here, args.batch, values, "diffusers", baseline))
    return rows, notes


# The shipped default size against the issue-5 budgets ----------------------------------------------


def default_part(
    workdir: Path, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> tuple[list[Row], list[str]]:
    shipped = (DEFAULT_FOLDER / CONFIG_FILE).is_file()
    label = "shipped default" if shipped else "'small', random weights"
    log(f"[default] {label}")
    folder = DEFAULT_FOLDER if shipped else init_checkpoint(workdir / "small", "small")
    pipe = UnCLIPPipeline.from_checkpoint(folder, device, dtype)
    counts = {name: parameters(module) / 1e6 for name, module in pipe.models.components().items()}
    notes = [f"default model: {label} ({folder}); parameters (M): "
             + ", ".join(f"{name} {count:.2f}" for name, count in counts.items())]  # fmt: skip
    prompts, seeds = [PROMPT] * args.batch, list(range(args.batch))
    rows = []
    for size, budget in BUDGETS.items():
        quick = {name: 2 for name in ("prior_steps", "decoder_steps", "sr256_steps", "sr1024_steps")}
        sampling = pipe.sampling(size=size, **(quick if args.quick else {}))
        steps = [sampling.prior_steps, sampling.decoder_steps, sampling.sr256_steps]
        steps += [sampling.sr1024_steps] if size == 1024 else []

        # What guiding z_i apart from the caption costs (a third decoder pass): the same with plain guidance.
        cases = {"ours": sampling}
        if sampling.decoder_image_guidance is not None:
            cases["plain guidance"] = dataclasses.replace(sampling, decoder_image_guidance=None)
        runs = {name: partial(pipe.generate, prompts, seeds, case) for name, case in cases.items()}
        with torch.inference_mode():
            seconds = time_interleaved(runs, args.runs, args.batch, device, f"default {size} px")
        for name in cases:
            pipeline = f"ours ({label})" if name == "ours" else f"ours, {name}"
            rows.append(
                Row("default", size, pipeline, "/".join(map(str, steps)), args.batch, seconds[name],
                    f"issue-5 budget {budget:g} s", budget)
            )  # fmt: skip
    return rows, notes


# Report -----------------------------------------------------------------------------------------------


def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"GPU {name} (CUDA {torch.version.cuda}), host {os.cpu_count()} cores"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    return f"CPU {model}, {threads} cores usable, torch threads {torch.get_num_threads()}"


def verdict(row: Row) -> str:
    if row.pipeline.startswith("diffusers"):
        return "baseline"
    if row.part == "default":
        return "within budget" if row.ratio < 1 else "OVER budget"
    return f"ours {1 / row.ratio:.2f}x faster" if row.ratio < 1 else f"ours {row.ratio:.2f}x slower"


def print_table(rows: list[Row], header: list[str], runs: int) -> None:
    table = [["part", "px", "pipeline", "steps p/d/sr", "batch", f"s/image (median of {runs})",
              "min–max", "baseline", "ratio", "verdict"]]  # fmt: skip
    for row in rows:
        table.append([
            row.part, str(row.size), row.pipeline, row.steps, str(row.batch), f"{row.median:.3f}",
            f"{min(row.seconds):.3f}–{max(row.seconds):.3f}", row.baseline, f"{row.ratio:.3f}", verdict(row),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in header:
        print(line)
    for number, line in enumerate(table):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def parse_steps(text: str) -> tuple[int, int, int]:
    values = tuple(int(part) for part in text.split(","))
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError("--steps is PRIOR,DECODER,SUPER_RES, each at least 1")
    return values  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (CPU fp32, CUDA bf16/fp16), fp32, bf16, fp16")
    parser.add_argument("--runs", type=int, help="timed runs per case after one warm-up (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 2 steps, 1 run, scale 0.05")
    parser.add_argument("--only", choices=("karlo", "default"), help="run one part")
    parser.add_argument("--scale", type=float, help="Karlo widths × this (default 0.1, quick 0.05)")
    parser.add_argument("--steps", type=parse_steps, help="karlo PRIOR,DECODER,SUPER_RES (default 25,25,7)")
    parser.add_argument("--batch", type=int, default=1, help="images per generate call (both pipelines)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.scale = args.scale or (0.05 if args.quick else 0.1)
    steps = args.steps or (QUICK_STEPS if args.quick else KARLO_STEPS)

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as workdir:
        if args.only in (None, "karlo"):
            shape = karlo_shape(args.scale)
            part_rows, part_notes = karlo_part(Path(workdir), shape, steps, args, device, dtype)
            rows += part_rows
            notes += part_notes
        if args.only in (None, "default"):
            part_rows, part_notes = default_part(Path(workdir), args, device, dtype)
            rows += part_rows
            notes += part_notes

    versions = ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers"))
    header = [
        "unclip-serve in-process pipeline latency, text → image (bench/pipeline.py)"
        + ("  [--quick: a smoke check, not a measurement]" if args.quick else ""),
        f"machine: {machine(device, threads)}; {platform.system()} {platform.release()}",
        f"1-min load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (this run adds "
        f"about {torch.get_num_threads()}; more: other processes competed for the cores, timings inflated)",
        f"versions: Python {platform.python_version()}, {versions}",
        f"setup: device {device}, dtype {str(dtype).removeprefix('torch.')}, torch.inference_mode, batch "
        f"{args.batch}, 1 warm-up + {args.runs} timed runs per case (interleaved), prompt {PROMPT!r}",
        *notes,
        "karlo ratio = ours ÷ diffusers UnCLIPPipeline (same weights, steps, guidance 4/8, batch, run); "
        "diffusers 64 px = its pipeline stopped at the first super-res call",
        "default ratio = s/image ÷ the issue-5 budget (256 px 5 s, 1024 px 60 s, set for a 2-core CPU)",
    ]
    print_table(rows, header, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
