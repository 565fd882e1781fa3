"""Compiled denoising steps: torch.compile per captured shape, eager for every other shape.

A sampler calls its network once per step with the same shapes, so the step is what is worth compiling.
`CompiledStep` wraps one network (`DecoderUNet`, `SuperResUNet`, `DiffusionPrior`) with
`torch.compile(dynamic=False)`: one specialised graph per input shape (batch size, image side, dtype),
which is what lets inductor (and CUDA graphs) do their best. Shapes are *captured* while `capturing` is
on - the worker's warm-up, before it takes jobs, so no client pays for a compile. After that only captured
shapes run compiled; any other shape runs the eager module and is logged once (a recompile inside a
request would stall it for a minute on a CPU).

Modes (`COMPILE_MODES`):
- "off": eager everywhere.
- "inductor": `torch.compile` (C++/OpenMP kernels on the CPU, Triton on CUDA).
- "max-autotune": inductor that also times GEMM/convolution choices (slower compile, CUDA mostly).
- "cudagraphs": inductor plus CUDA graphs (mode "reduce-overhead"), one graph per captured shape; CUDA only.
- "auto": "inductor" on CUDA (where Triton is), "off" on the CPU: there compiling gained 10-20 % in bf16
  (`bench/pipeline.py`, Karlo-shaped, 256 px: 3.67 → 3.29 s on a 2-core AMX Xeon, 4.64 → 3.94 s on an
  AVX-512 EPYC) for 135-310 s of cold compile per start; set "inductor" to compile on a CPU whose compile
  cache survives restarts.
Where the chosen mode cannot run, `compile_mode` says why once and returns "off".

Inductor keeps compiled kernels on disk (`use_compile_cache`): with a persistent folder a restarted worker
loads them in seconds instead of compiling for minutes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from models.pipeline.unclip import UnCLIPPipeline

COMPILE_MODES = ("auto", "off", "inductor", "max-autotune", "cudagraphs")
TORCH_MODES = {
    "inductor": None,
    "max-autotune": "max-autotune-no-cudagraphs",
    "cudagraphs": "reduce-overhead",
}
CXX_COMPILERS = ("g++", "c++", "clang++")
logger = logging.getLogger(__name__)


def compile_unavailable_reason(mode: str, device: torch.device) -> str | None:
    """Why `mode` (not "auto"/"off") cannot run on `device`, or None when it can."""
    if mode == "cudagraphs" and device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed (inductor generates Triton kernels on CUDA)"
        return None
    cxx = os.environ.get("CXX")
    if not (cxx and shutil.which(cxx)) and not any(shutil.which(name) for name in CXX_COMPILERS):
        return f"no C++ compiler on PATH (inductor builds CPU kernels with one of {', '.join(CXX_COMPILERS)})"
    return None


def compile_mode(requested: str, device: torch.device) -> str:
    """The mode to run: `requested` where it can run, else "off" (logged with the reason, once per call)."""
    if requested not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {requested!r}")
    if requested == "off":
        return "off"
    if requested == "auto" and device.type != "cuda":
        return "off"
    mode = "inductor" if requested == "auto" else requested
    reason = compile_unavailable_reason(mode, device)
    if reason is not None:
        logger.warning("torch.compile is off: %s; the networks run eager", reason)
        return "off"
    return mode


def use_compile_cache(folder: Path | None) -> Path | None:
    """Points inductor's (and Triton's) on-disk caches at `folder`, which survives restarts (torch's
    default is under /tmp, an emptyDir in the Kubernetes manifests). None keeps torch's default.
    A folder that cannot be written is logged and torch's default kept."""
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        logger.warning("compile cache folder %s is not writable (%s); using torch's default", folder, error)
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    return folder


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/unclip/compile, else ~/.cache/unclip/compile."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unclip" / "compile"


def shape_key(value: Any) -> Hashable:
    """What a dynamic=False graph is specialised on: each tensor's shape, dtype and device; other values
    as they are (None, flags, nested tuples such as TextEncoding)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    if isinstance(value, tuple | list):
        return tuple(shape_key(item) for item in value)
    return value


class CompiledStep:
    """`step` compiled per captured shape; uncaptured shapes run `step` itself (see the module doc)."""

    def __init__(self, name: str, step: Callable[..., torch.Tensor], mode: str) -> None:
        if mode not in TORCH_MODES:
            raise ValueError(f"CompiledStep mode must be one of {tuple(TORCH_MODES)}, got {mode!r}")
        self.name = name
        self.eager = step
        self.mode = mode
        self.compiled = torch.compile(step, dynamic=False, mode=TORCH_MODES[mode])
        self.captured: set[Hashable] = set()
        self.capturing = False
        self.compile_seconds = 0.0
        self.failed = False
        self._logged_eager: set[Hashable] = set()

    def __call__(self, *args: Any) -> torch.Tensor:
        key = shape_key(args)
        if key in self.captured:
            return self.compiled(*args)
        if self.capturing and not self.failed:
            started = time.perf_counter()
            try:
                out = self.compiled(*args)
            except Exception as error:  # a compiler bug must not keep the worker from serving: eager
                self.failed = True
                logger.warning(
                    "compiling %s failed, it runs eager: %s: %s", self.name, type(error).__name__, error
                )
                return self.eager(*args)
            if out.is_cuda:
                torch.cuda.synchronize(out.device)
            seconds = time.perf_counter() - started
            self.compile_seconds += seconds
            self.captured.add(key)
            logger.info("compiled %s (%s) for %s in %.1f s", self.name, self.mode, _describe(args), seconds)
            return out
        if key not in self._logged_eager:
            self._logged_eager.add(key)
            logger.info(
                "%s: shapes %s were not captured at warm-up; running eager", self.name, _describe(args)
            )
        return self.eager(*args)


def _describe(args: tuple[Any, ...]) -> str:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return ", ".join("x".join(map(str, t.shape)) + f" {str(t.dtype).removeprefix('torch.')}" for t in tensors)


def configure_dynamo(max_shapes: int) -> None:
    """Lets dynamo keep one graph per captured shape of a step (its default limit is 8)."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), max_shapes))


# The pipeline's steps --------------------------------------------------------------------------------


def compile_pipeline(
    pipeline: UnCLIPPipeline, requested: str = "auto", cache_dir: Path | None = None, max_shapes: int = 32
) -> str:
    """Installs a `CompiledStep` for each denoising network of `pipeline` (prior, decoder, upsamplers) in
    the mode `compile_mode` resolves `requested` to, and returns that mode ("off": none installed).
    Nothing is compiled yet: `capture` (or the first calls while `capturing`) does it."""
    mode = compile_mode(requested, pipeline.device)
    pipeline.steps = {}
    if mode == "off":
        return mode
    use_compile_cache(cache_dir)
    configure_dynamo(max_shapes)
    models = pipeline.models
    pipeline.steps["prior"] = CompiledStep("prior", models.prior, mode)
    pipeline.steps["decoder"] = CompiledStep("decoder", models.decoder, mode)
    for name in ("sr256", "sr256_last", "sr1024"):
        upsampler = getattr(models, name)
        if upsampler is not None:
            pipeline.steps[name] = CompiledStep(name, upsampler, mode)
    return mode


def capture(pipeline: UnCLIPPipeline, batch_sizes: Sequence[int], size: int | None = None) -> float:
    """Compiles every step for `batch_sizes` images per call: a 2-step generation per batch size at
    `size` (None: the largest the checkpoint makes, so every upsampler runs), steps capturing. Returns
    the seconds it took (compiling, or loading compiled kernels from the on-disk cache)."""
    steps = [step for step in pipeline.steps.values() if isinstance(step, CompiledStep)]
    started = time.perf_counter()
    quick = {name: 2 for name in ("prior_steps", "decoder_steps", "sr256_steps", "sr1024_steps")}
    sampling = pipeline.sampling(**quick, **({} if size is None else {"size": size}))
    for step in steps:
        step.capturing = True
    try:
        for batch in sorted(set(batch_sizes)):
            pipeline.generate(["warm-up"] * batch, list(range(batch)), sampling)
    finally:
        for step in steps:
            step.capturing = False
    return time.perf_counter() - started


def warm_up(
    pipeline: UnCLIPPipeline,
    compile: str = "auto",
    batch_sizes: Sequence[int] = (1,),
    cache_dir: Path | None = None,
) -> dict[str, object]:
    """What a server runs once before it takes work: installs compiled steps (`compile_pipeline`) and
    captures them for `batch_sizes`, or, with compiling off, runs one 1-step generation (CUDA context,
    cuDNN and Triton autotuning happen here rather than in a request). Logs and returns what it did."""
    started = time.perf_counter()
    mode = compile_pipeline(pipeline, compile, cache_dir if cache_dir is not None else default_cache_dir())
    if mode == "off":
        steps = {name: 1 for name in ("prior_steps", "decoder_steps", "sr256_steps", "sr1024_steps")}
        pipeline.generate(["warm-up"], [0], pipeline.sampling(**steps))
    else:
        capture(pipeline, batch_sizes)
    report: dict[str, object] = {
        "compile": mode,
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        "device": str(pipeline.device),
        "batch_sizes": sorted(set(batch_sizes)) if mode != "off" else [],
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("warm-up done: %s", report)
    return report


def compile_on_first_use(pipeline: UnCLIPPipeline, compile: str, cache_dir: Path | None = None) -> str:
    """For one-shot use (the CLI): compiled steps that capture every shape they meet, at its first call."""
    mode = compile_pipeline(pipeline, compile, cache_dir if cache_dir is not None else default_cache_dir())
    for step in pipeline.steps.values():
        if isinstance(step, CompiledStep):
            step.capturing = True
    return mode
