"""Text-to-image latency and throughput of our pipeline, against diffusers' UnCLIPPipeline in every setting.

    .venv/bin/python bench/pipeline.py [--device auto] [--runs 3] [--quick] [--only karlo|default]
        [--settings eager-fp32,eager-bf16,compiled-fp32,compiled-bf16] [--sizes 64,256] [--batches 1]
        [--scale 0.1] [--steps 25,25,7] [--default-sizes 64,256,1024] [--default-batches 1,2,4,8]
        [--default-settings best] [--best-of 1,4] [--no-diffusers]

Two parts:
- karlo: a random Karlo-shaped model (bench/karlo_models.py: Karlo's block types, depths, resolutions and
  schedulers, every width × --scale) saved in the diffusers layout and converted with import_karlo. For
  each setting (eager or compiled, fp32 or bf16; fp16 too) ours and diffusers' UnCLIPPipeline run on the
  same weights, prompt, steps (Karlo's 25 / 25 / 7), guidance (4 / 8) and batch, their timed runs
  interleaved. diffusers gets the same treatment: `pipe.to(dtype)` and `.compile()` of its prior, decoder
  and super-res networks; ours `models.pipeline.runtime` (`compile_pipeline` + `capture` for the batch
  size). Compile time is reported apart: ours is `capture`'s time; diffusers' is its first (compiling)
  call less a steady call. A cell that raises (diffusers in bf16 on a CPU at 256 px: its antialiased
  bicubic resize has no bf16 kernel) is printed as failed, with the error. Ratios: ours ÷ diffusers at
  the same setting, and ours-best ÷ diffusers as shipped (eager fp32).
- default: the shipped checkpoint (a random 'small' one where it is missing) at --default-sizes ×
  --default-batches in --default-settings ("best": what the worker runs here, `resolve_dtype("auto")`
  and `compile_mode("auto")`), as seconds per image and images per second; ratio = s/image ÷ the issue-5
  budget (256 px 5 s, 1024 px 60 s, set for a 2-core CPU). With --best-of k > 1, each k runs twice: as
  the pipeline does it (CLIP ranks the decoder's candidates, only the kept one is upsampled) and as the
  baseline "ranked at full size" (every candidate upsampled, then ranked: best_of before 2026-12-07).

Every number is a median over --runs timed runs after a warm-up run, clocks read after
torch.cuda.synchronize on CUDA; on CUDA the peak memory of each case is reported too. Progress goes to
stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from diffusers import UnCLIPPipeline as DiffusersUnCLIP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: models is one level up

from karlo_models import KarloShape, karlo_shape, load_diffusers_pipeline, save_karlo_folder

from models.checkpoint import CONFIG_FILE, DEFAULT_FOLDER, init_checkpoint
from models.contract import candidate_seed
from models.convert.karlo import import_karlo
from models.pipeline import Sampling, UnCLIPPipeline, stages
from models.pipeline.devices import DTYPES, resolve_device, resolve_dtype
from models.pipeline.runtime import capture, compile_mode, compile_pipeline
from models.pipeline.unclip import clip_scores

PROMPT = "a photo of a red circle on the left of a blue square"
KARLO_STEPS = (25, 25, 7)  # prior, decoder, super-res: Karlo's UnCLIPPipeline defaults
QUICK_STEPS = (2, 2, 2)
BUDGETS = {64: None, 256: 5.0, 1024: 60.0}  # issue 5: seconds per image on a 2-core CPU
SETTINGS = ("eager-fp32", "eager-bf16", "compiled-fp32", "compiled-bf16")
# ours: the UNCLIP_COMPILE mode of each setting
HOWS = {"eager": None, "compiled": "inductor", "cudagraphs": "cudagraphs", "max-autotune": "max-autotune"}
DIFFUSERS_MODES = {"compiled": None, "cudagraphs": "reduce-overhead", "max-autotune": "max-autotune"}


@dataclass(frozen=True)
class Setting:
    """How both pipelines run: `how` eager | compiled (inductor, on any device) |
    cudagraphs (inductor + CUDA graphs; diffusers: mode "reduce-overhead") | max-autotune; and a dtype."""

    how: str
    dtype: torch.dtype

    @classmethod
    def parse(cls, text: str, device: torch.device) -> Setting:
        if text == "best":
            how = "compiled" if compile_mode("auto", device) != "off" else "eager"
            return cls(how, resolve_dtype("auto", device))
        how, _, dtype = text.partition("-")
        if how not in HOWS or dtype not in DTYPES:
            raise argparse.ArgumentTypeError(
                f"a setting is {'|'.join(HOWS)}-fp32|bf16|fp16 or best, not {text!r}"
            )
        return cls(how, DTYPES[dtype])

    @property
    def compiled(self) -> bool:
        return self.how != "eager"

    @property
    def name(self) -> str:
        return f"{self.how}-{_dtype_name(self.dtype)}"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


@dataclass
class Cell:
    """One pipeline in one setting at one size and batch: seconds per image over the timed runs."""

    pipeline: str
    setting: str
    size: int
    batch: int
    seconds: list[float] = field(default_factory=list)
    compile_seconds: float | None = None
    peak_gib: float | None = None
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def measure(
    cases: dict[str, Callable[[], object]],
    cells: dict[str, Cell],
    runs: int,
    device: torch.device,
    label: str,
) -> None:
    """One warm-up call per case (its time kept for the compile estimate), then `runs` rounds that run
    every case once, interleaved so that load drift hits all alike. A case that raises is marked failed."""
    live = dict(cases)
    first: dict[str, float] = {}
    for name, run in cases.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            first[name] = timed(run, device)
        except Exception as error:  # a failed cell is a result, reported in the table
            cells[name].error = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
            log(f"[{label}] {name}: FAILED {cells[name].error}")
            del live[name]
            continue
        log(f"[{label}] warm-up {name}: {first[name]:.2f} s")
    for number in range(1, runs + 1):
        for name, run in live.items():
            elapsed = timed(run, device)
            cells[name].seconds.append(elapsed / cells[name].batch)
            log(f"[{label}] run {number}/{runs} {name}: {elapsed:.2f} s")
    for name in live:
        cell = cells[name]
        if device.type == "cuda":
            cell.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        if cell.compile_seconds is None and not cell.setting.startswith("eager"):
            # diffusers compiles inside its first call: that call less a steady one
            cell.compile_seconds = max(first[name] - cell.median * cell.batch, 0.0)


# Karlo-shaped model: ours against diffusers ---------------------------------------------------------


class _StopAtSuperRes(Exception):
    """Raised by a forward pre-hook on diffusers' upsamplers: its 64 px image is done."""


def _stop_at_super_res(module: torch.nn.Module, args: tuple) -> None:
    raise _StopAtSuperRes


def diffusers_generate(pipe: DiffusersUnCLIP, prompts: list[str], size: int, steps: tuple[int, ...]) -> None:
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
            generator=[torch.Generator().manual_seed(seed) for seed in range(len(prompts))],
            output_type="pil",
        )
    except _StopAtSuperRes:
        pass
    finally:
        for hook in hooks:
            hook.remove()


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def ours_pipeline(
    folder: Path, device: torch.device, setting: Setting, batches: list[int], size: int
) -> tuple[UnCLIPPipeline, float | None]:
    """Our pipeline in `setting`; compiled: captured for `batches` with every stage up to `size` (returns
    capture's seconds: compiling, or loading from the on-disk cache)."""
    pipe = UnCLIPPipeline.from_checkpoint(folder, device, setting.dtype)
    if not setting.compiled:
        return pipe, None
    if compile_pipeline(pipe, HOWS[setting.how]) == "off":
        raise RuntimeError("torch.compile cannot run here (see the log)")
    synchronize(device)
    return pipe, capture(pipe, batches, size=size)


def diffusers_pipeline(folder: Path, device: torch.device, setting: Setting) -> DiffusersUnCLIP:
    pipe = load_diffusers_pipeline(folder).to(device=device)
    if setting.dtype != torch.float32:
        pipe = pipe.to(dtype=setting.dtype)
    if setting.compiled:
        for name in ("prior", "decoder", "super_res_first", "super_res_last"):
            getattr(pipe, name).compile(mode=DIFFUSERS_MODES[setting.how])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def karlo_part(
    workdir: Path, shape: KarloShape, steps: tuple[int, ...], args: argparse.Namespace, device: torch.device
) -> tuple[list[Cell], list[str]]:
    log(f"[karlo] building the Karlo-shaped folder: {shape.describe()}")
    folder, image_encoder = save_karlo_folder(workdir / "karlo", shape)
    log("[karlo] converting it with import_karlo")
    checkpoint = import_karlo(folder, workdir / "ours", image_encoder)
    probe = load_diffusers_pipeline(folder)
    counts = {
        name: parameters(getattr(probe, name)) / 1e6
        for name in ("text_encoder", "prior", "text_proj", "decoder", "super_res_first")
    }
    del probe
    ours_probe = UnCLIPPipeline.from_checkpoint(checkpoint, "cpu", torch.float32)
    candidates = ours_probe.models.config.prior.sample_candidates or stages.PRIOR_CANDIDATES
    del ours_probe
    notes = [
        f"karlo model (--scale {args.scale:g}): {shape.describe()}",
        "  parameters (M): " + ", ".join(f"{name} {count:.1f}" for name, count in counts.items()),
        f"  prior samples per image: ours {candidates} (the checkpoint's sample_candidates), diffusers 1",
        f"  steps prior/decoder/super-res {'/'.join(map(str, steps))}, guidance 4/8, prompt {PROMPT!r}; "
        "diffusers 64 px = its pipeline stopped at the first super-res call",
    ]
    cells: list[Cell] = []
    for setting in args.settings:
        # Both pipelines are built (and ours captured for every batch size) once per setting.
        ours: UnCLIPPipeline | None = None
        theirs: DiffusersUnCLIP | None = None
        ours_error = theirs_error = None
        compile_seconds = None
        try:
            log(f"[karlo {setting.name}] preparing ours")
            ours, compile_seconds = ours_pipeline(checkpoint, device, setting, args.batches, max(args.sizes))
        except Exception as error:  # a failed cell is a result, reported in the table
            ours_error = f"{type(error).__name__}: {error}"
        if not args.no_diffusers:
            try:
                theirs = diffusers_pipeline(folder, device, setting)
            except Exception as error:
                theirs_error = f"{type(error).__name__}: {error}"
        for size in args.sizes:
            for batch in args.batches:
                label = f"karlo {setting.name} {size} px batch {batch}"
                prompts = [PROMPT] * batch
                here = {"ours": Cell("ours", setting.name, size, batch, error=ours_error)}
                cases: dict[str, Callable[[], object]] = {}
                if ours is not None:
                    sampling = ours.sampling(
                        size=size, prior_steps=steps[0], decoder_steps=steps[1], sr256_steps=steps[2]
                    )
                    cases["ours"] = lambda o=ours, p=prompts, s=sampling: o.generate(
                        p, list(range(len(p))), s
                    )
                if not args.no_diffusers:
                    here["diffusers"] = Cell("diffusers", setting.name, size, batch, error=theirs_error)
                    if theirs is not None:
                        cases["diffusers"] = lambda t=theirs, p=prompts, s=size: diffusers_generate(
                            t, p, s, steps
                        )
                with torch.inference_mode():
                    measure(cases, here, args.runs, device, label)
                if ours is not None and setting.compiled and compile_seconds is not None:
                    here["ours"].compile_seconds = compile_seconds
                    compile_seconds = None  # reported once, on the first cell of the setting
                cells += here.values()
        del ours, theirs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cells, notes


# The shipped model --------------------------------------------------------------------------------------


def default_part(
    workdir: Path, args: argparse.Namespace, device: torch.device
) -> tuple[list[Cell], list[str]]:
    shipped = (DEFAULT_FOLDER / CONFIG_FILE).is_file()
    label = "shipped default" if shipped else "'small', random weights"
    folder = DEFAULT_FOLDER if shipped else init_checkpoint(workdir / "small", "small")
    cells: list[Cell] = []
    notes = []
    quick = {k: 2 for k in ("prior_steps", "decoder_steps", "sr256_steps", "sr1024_steps")}
    for setting in args.default_settings:
        pipe = None
        error = None
        compile_seconds = None
        try:  # captured once per setting for every batch size, with every stage
            pipe, compile_seconds = ours_pipeline(folder, device, setting, args.default_batches,
                                                  max(args.default_sizes))  # fmt: skip
        except Exception as failure:  # reported in the table
            error = f"{type(failure).__name__}: {failure}"
        for size, batch, best_of, late in itertools.product(
            args.default_sizes, args.default_batches, args.best_of, (False, True)
        ):
            if late and best_of == 1:
                continue
            name = setting.name if best_of == 1 else f"{setting.name}, best_of {best_of}"
            name += ", ranked at full size" if late else ""
            cell = Cell("ours (shipped)", name, size, batch, error=error)
            if pipe is not None:
                sampling = pipe.sampling(size=size, best_of=best_of, **(quick if args.quick else {}))
                prompts, seeds = [PROMPT] * batch, list(range(batch))
                run = ranked_at_full_size if late else UnCLIPPipeline.generate
                with torch.inference_mode():
                    measure({name: lambda r=run, p=pipe, a=prompts, b=seeds, s=sampling: r(p, a, b, s)},
                            {name: cell}, args.runs, device, f"{name} {size} px batch {batch}")  # fmt: skip
                if compile_seconds is not None:
                    cell.compile_seconds, compile_seconds = compile_seconds, None
            cells.append(cell)
        if pipe is not None and not notes:
            counts = {n: parameters(m) / 1e6 for n, m in pipe.models.components().items()}
            sampling = pipe.sampling(size=max(args.default_sizes), **(quick if args.quick else {}))
            stage_names = ("prior", "decoder", "sr256", "sr1024")
            steps = "/".join(str(getattr(sampling, f"{stage}_steps")) for stage in stage_names)
            notes.append(f"default model: {label}; steps prior/decoder/sr256/sr1024 {steps}; parameters (M): "
                         + ", ".join(f"{n} {c:.2f}" for n, c in counts.items()))  # fmt: skip
        del pipe
        gc.collect()
    return cells, notes


def ranked_at_full_size(
    pipe: UnCLIPPipeline, prompts: list[str], seeds: list[int], sampling: Sampling
) -> None:
    """best_of as it was before 2026-12-07, the baseline: every candidate upsampled, then ranked."""
    k = sampling.best_of
    rows = [candidate_seed(seed, c) for seed in seeds for c in range(k)]
    single = dataclasses.replace(sampling, best_of=1)
    images = pipe.generate([prompt for prompt in prompts for _ in range(k)], rows, single)
    clip_scores(pipe._text(prompts).embeds, pipe._image_embeds(images), k).argmax(dim=1)


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
    from models.pipeline.devices import cpu_has_bf16_units

    units = "bf16 matrix units" if cpu_has_bf16_units() else "no bf16 units"
    return f"CPU {model} ({units}), {threads} cores usable, torch threads {torch.get_num_threads()}"


def print_table(table: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for number, line in enumerate(table):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    print()


def _seconds(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if cell.error:
        return "failed"
    return f"{cell.median:.3f}"


def karlo_tables(cells: list[Cell], runs: int) -> None:
    by_key = {(c.pipeline, c.setting, c.size, c.batch): c for c in cells}
    header = ["px", "batch", "setting", f"ours s/image (median of {runs})", "diffusers s/image",
              "ours ÷ diffusers", "ours compile s", "diffusers compile s",
              "peak GiB ours/diffusers"]  # fmt: skip
    table = [header]
    failures = []
    for cell in cells:
        if cell.pipeline != "ours":
            continue
        theirs = by_key.get(("diffusers", cell.setting, cell.size, cell.batch))
        ratio = "–"
        if theirs is not None and not cell.error and not theirs.error:
            ratio = f"{cell.median / theirs.median:.3f}"
        compile_ours = f"{cell.compile_seconds:.1f}" if cell.compile_seconds is not None else "–"
        compile_theirs = (
            f"{theirs.compile_seconds:.1f}" if theirs and theirs.compile_seconds is not None else "–"
        )
        peak = "–"
        if cell.peak_gib is not None:
            peak = f"{cell.peak_gib:.2f}/" + (f"{theirs.peak_gib:.2f}" if theirs and theirs.peak_gib else "–")
        table.append([str(cell.size), str(cell.batch), cell.setting, _seconds(cell), _seconds(theirs), ratio,
                      compile_ours, compile_theirs, peak])  # fmt: skip
        failures += [f"{c.pipeline} {c.setting} {c.size} px batch {c.batch}: {c.error}"
                     for c in (cell, theirs)
                     if c is not None and c.error]  # fmt: skip
    print("Karlo-shaped model, ours vs diffusers UnCLIPPipeline at equal settings:")
    print_table(table)
    best_table = [["px", "batch", "ours best setting", "ours best s/image",
                   "diffusers as shipped (eager-fp32)",
                   "ours best ÷ diffusers as shipped", "images/s ours best"]]  # fmt: skip
    for size, batch in sorted({(c.size, c.batch) for c in cells}):
        ours = [
            c for c in cells if c.pipeline == "ours" and (c.size, c.batch) == (size, batch) and not c.error
        ]
        shipped = by_key.get(("diffusers", "eager-fp32", size, batch))
        if not ours or shipped is None or shipped.error:
            continue
        best = min(ours, key=lambda c: c.median)
        best_table.append([str(size), str(batch), best.setting, f"{best.median:.3f}", f"{shipped.median:.3f}",
                           f"{best.median / shipped.median:.3f}", f"{1 / best.median:.2f}"])  # fmt: skip
    if len(best_table) > 1:
        print("Ours in its best setting vs diffusers as it ships (eager fp32):")
        print_table(best_table)
    for line in failures:
        print(f"failed: {line}")
    if failures:
        print()


def default_table(cells: list[Cell], runs: int) -> None:
    table = [["px", "batch", "setting", f"s/image (median of {runs})", "images/s", "compile s",
              "issue-5 budget s", "ratio"]]  # fmt: skip
    for cell in cells:
        budget = BUDGETS.get(cell.size)
        ratio = f"{cell.median / budget:.3f}" if budget and not cell.error else "–"
        images = f"{1 / cell.median:.2f}" if not cell.error else "–"
        compile_s = f"{cell.compile_seconds:.1f}" if cell.compile_seconds is not None else "–"
        table.append([str(cell.size), str(cell.batch), cell.setting, _seconds(cell), images, compile_s,
                      f"{budget:g}" if budget else "–", ratio])  # fmt: skip
    print("The shipped model (ours):")
    print_table(table)
    late = ", ranked at full size"
    for cell in cells:
        if cell.error:
            print(f"failed: {cell.setting} {cell.size} px batch {cell.batch}: {cell.error}")
        baseline = next((c for c in cells if c.setting == cell.setting + late and c.size == cell.size
                         and c.batch == cell.batch and not c.error), None)  # fmt: skip
        if baseline is not None and not cell.error:
            print(f"{cell.setting} ÷ {baseline.setting}, {cell.size} px batch {cell.batch}: "
                  f"{cell.median / baseline.median:.3f}")  # fmt: skip


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_steps(text: str) -> tuple[int, int, int]:
    values = tuple(parse_ints(text))
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError("--steps is PRIOR,DECODER,SUPER_RES, each at least 1")
    return values  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--runs", type=int, help="timed runs per case after one warm-up (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 2 steps, 1 run, scale 0.05")
    parser.add_argument("--only", choices=("karlo", "default"), help="run one part")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="karlo settings, comma-separated")
    parser.add_argument("--sizes", type=parse_ints, default=[64, 256], help="karlo sizes (64, 256)")
    parser.add_argument("--batches", type=parse_ints, default=[1], help="karlo batch sizes")
    parser.add_argument("--scale", type=float, help="Karlo widths × this (default 0.1, quick 0.05)")
    parser.add_argument("--steps", type=parse_steps, help="karlo PRIOR,DECODER,SUPER_RES (default 25,25,7)")
    parser.add_argument("--no-diffusers", action="store_true", help="karlo: ours only")
    parser.add_argument("--default-sizes", type=parse_ints, default=[64, 256, 1024])
    parser.add_argument("--default-batches", type=parse_ints, default=[1, 2, 4, 8])
    parser.add_argument("--best-of", type=parse_ints, default=[1], help="shipped model: candidates per image")
    parser.add_argument(
        "--default-settings", default="best", help="shipped model settings (best = the worker's)"
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.scale = args.scale or (0.05 if args.quick else 0.1)
    steps = args.steps or (QUICK_STEPS if args.quick else KARLO_STEPS)

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    args.settings = [Setting.parse(text, device) for text in args.settings.split(",")]
    args.default_settings = [Setting.parse(text, device) for text in args.default_settings.split(",")]

    load_before = os.getloadavg()[0]
    karlo_cells: list[Cell] = []
    default_cells: list[Cell] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as workdir:
        if args.only in (None, "karlo"):
            karlo_cells, part_notes = karlo_part(Path(workdir), karlo_shape(args.scale), steps, args, device)
            notes += part_notes
        if args.only in (None, "default"):
            default_cells, part_notes = default_part(Path(workdir), args, device)
            notes += part_notes

    versions = ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers"))
    try:
        versions += f", triton {version('triton')}"
    except Exception:  # CPU builds have no triton
        pass
    print("unclip-serve pipeline latency and throughput, text → image (bench/pipeline.py)"
          + ("  [--quick: a smoke check, not a measurement]" if args.quick else ""))  # fmt: skip
    print(f"machine: {machine(device, threads)}; {platform.system()} {platform.release()}")
    print(f"1-min load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (this run adds "
          f"about {torch.get_num_threads()}; more: other processes competed, timings inflated)")  # fmt: skip
    print(f"versions: Python {platform.python_version()}, {versions}")
    print(f"device {device}; torch.inference_mode; 1 warm-up + {args.runs} timed runs per case, ours and "
          "diffusers interleaved; s/image = a batch's time ÷ its size; compile s = capture time (ours), "
          "first call − a steady call (diffusers)")  # fmt: skip
    for note in notes:
        print(note)
    print()
    if karlo_cells:
        karlo_tables(karlo_cells, args.runs)
    if default_cells:
        default_table(default_cells, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
