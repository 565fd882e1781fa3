"""Compiled steps (models.pipeline.runtime) and the fast settings against eager fp32, on the CPU.

Tolerances, and why:
- compiled vs eager in fp32, one UNet step: 1e-4 absolute on outputs of order 1. Inductor fuses and
  reorders reductions (GroupNorm statistics, softmax, the convolutions' accumulation order), which moves
  each float32 result by a few ulps (~1e-7 relative); twenty-odd layers amplify that to ~1e-5.
- compiled vs eager in bf16: 6e-2 absolute at worst and 1e-2 on average. bf16 keeps 8 significant bits
  (a relative step of 2^-8 ≈ 0.4 %); inductor keeps fused intermediates in float32 where eager rounds each
  op's output to bf16, so the two differ by a few bf16 roundings per layer, which twenty-odd layers
  compound (measured here: at most 0.047, in 4 to 8 of 49,152 elements; 0.005 on average). A wrong
  dtype, layout or dropped condition moves outputs by order 1.
- a whole generation, each fast setting vs eager fp32, same seed: mean |difference| of the 8-bit pixels
  below 12 for bf16 (the sampler runs in float32, but every network output carries the 0.4 % bf16 error
  through every step), below 1 for compiled fp32, which is the same arithmetic to rounding.
The lively tiny checkpoint of test_pipeline has outputs of order 1 (random non-zero output layers), so
these bounds are tight enough to catch a wrong dtype, a dropped condition or a wrong layout.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models.attention as seam
from models.pipeline import Sampling, UnCLIPPipeline, runtime
from models.pipeline.runtime import CompiledStep, capture, compile_mode, compile_pipeline, shape_key
from tests.models.test_pipeline import lively_checkpoint, picture, pixels

SAMPLING = Sampling(size=64, prior_steps=2, decoder_steps=2, decoder_guidance=3.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lively_checkpoint(tmp_path_factory.mktemp("lively-runtime"))


@pytest.fixture(scope="module")
def fp32(folder: Path) -> UnCLIPPipeline:
    return UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype="float32")


def decoder_args(pipeline: UnCLIPPipeline, batch: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(batch)
    config = pipeline.models.config
    x = torch.randn(batch, 3, 64, 64, generator=generator)
    t = torch.full((batch,), 600)
    image_embed = torch.nn.functional.normalize(
        torch.randn(batch, config.clip.embed_dim, generator=generator)
    )
    text = pipeline.models.clip.encode_text(pipeline.models.tokenizer.encode(["a red circle"] * batch)[0])
    return x, t, image_embed.to(pipeline.dtype), text.states, text.mask


def test_a_unet_step_compiles_without_graph_breaks(
    fp32: UnCLIPPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh process has logged no attention shape class yet: the log must not break the graph."""
    args = decoder_args(fp32, 2)  # runs CLIP eagerly, which logs its own shape classes
    x, low = torch.randn(1, 3, 256, 256), torch.randn(1, 3, 256, 256)
    monkeypatch.setattr(seam, "_logged_shape_classes", set())
    with torch.inference_mode():
        decoder = torch._dynamo.explain(fp32.models.decoder)(*args)
        upsampler = torch._dynamo.explain(fp32.models.sr256)(x, torch.tensor([5]), None, low)
    assert decoder.graph_count == 1 and decoder.graph_break_count == 0, decoder.break_reasons
    assert upsampler.graph_count == 1 and upsampler.graph_break_count == 0, upsampler.break_reasons
    assert not seam._logged_shape_classes  # and nothing was logged from inside the traced code


@pytest.mark.parametrize(
    ("dtype", "worst", "average"), [(torch.float32, 1e-4, 1e-5), (torch.bfloat16, 6e-2, 1e-2)], ids=str
)
def test_the_compiled_decoder_step_equals_eager(
    folder: Path, dtype: torch.dtype, worst: float, average: float
) -> None:
    pipeline = UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype=dtype)
    step = CompiledStep("decoder", pipeline.models.decoder, "inductor")
    args = decoder_args(pipeline, 2)
    with torch.inference_mode():
        eager = pipeline.models.decoder(*args)
        step.capturing = True
        compiled = step(*args)
        step.capturing = False
        again = step(*args)
    assert compiled.dtype == eager.dtype == dtype
    assert eager.float().abs().mean() > 0.05  # a lively output, not zeros
    difference = (compiled.float() - eager.float()).abs()
    assert difference.max() <= worst and difference.mean() <= average
    assert torch.equal(again, compiled)  # the captured graph ran again, not eager
    assert step.captured == {shape_key(args)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_unets_run_channels_last_to_the_same_result(folder: Path, dtype: torch.dtype) -> None:
    """from_checkpoint puts the image UNets in NHWC (channels_last); against NCHW weights the decoder step
    moves by rounding only: fp32 by the accumulation order (1e-4, as compiled), bf16 by a few bf16
    roundings (the compiled-vs-eager bounds above)."""
    pipeline = UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype=dtype)
    decoder = pipeline.models.decoder
    assert decoder.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    args = decoder_args(pipeline, 2)
    with torch.inference_mode():
        nhwc = decoder(*args)
        decoder.to(memory_format=torch.contiguous_format)
        nchw = decoder(*args)
    worst, average = (1e-4, 1e-5) if dtype == torch.float32 else (6e-2, 1e-2)
    difference = (nhwc.float() - nchw.float()).abs()
    assert nchw.float().abs().mean() > 0.05
    assert difference.max() <= worst and difference.mean() <= average


def test_an_uncaptured_batch_size_runs_eager_and_is_logged(
    fp32: UnCLIPPipeline, caplog: pytest.LogCaptureFixture
) -> None:
    step = CompiledStep("decoder", fp32.models.decoder, "inductor")
    with torch.inference_mode():
        step.capturing = True
        step(*decoder_args(fp32, 1))
        step.capturing = False
        caplog.set_level(logging.INFO, logger="models.pipeline.runtime")
        unseen = decoder_args(fp32, 3)
        out = step(*unseen)
        step(*unseen)
        eager = fp32.models.decoder(*unseen)
    assert torch.equal(out, eager)  # bit for bit: it is the eager module
    assert len(step.captured) == 1  # no recompile for the unseen shape
    messages = [r.getMessage() for r in caplog.records if "not captured" in r.getMessage()]
    assert len(messages) == 1 and "3x3x64x64" in messages[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_operation_runs_in_half_precision_on_the_cpu(
    fp32: UnCLIPPipeline, folder: Path, dtype: str
) -> None:
    """Catches dtype mix-ups anywhere in the stages (embeddings, conditions, inversion, inpainting)."""
    half = UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype=dtype)
    sampling = Sampling(size=256, prior_steps=2, decoder_steps=2, sr256_steps=2, decoder_image_guidance=2.0)
    image, mask = picture(0), corner_mask()
    results = {
        "generate": (
            half.generate(["a red circle"], [0], sampling),
            fp32.generate(["a red circle"], [0], sampling),
        ),
        "variation": (half.variation([image], [1], sampling), fp32.variation([image], [1], sampling)),
        "inpaint": (
            half.inpaint([image], [mask], ["a green square"], [2], sampling),
            fp32.inpaint([image], [mask], ["a green square"], [2], sampling),
        ),
    }
    frames = half.interpolate([image], [picture(1)], [3], sampling, frames=2)
    assert [len(sequence) for sequence in frames] == [2]
    for name, (low, full) in results.items():
        assert low[0].size == (256, 256), name
        assert np.abs(pixels(low[0]) - pixels(full[0])).mean() < 20, name


def corner_mask() -> Image.Image:
    """Repaint the top-left quarter."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    return mask


def test_each_fast_setting_matches_eager_fp32_on_the_same_seed(fp32: UnCLIPPipeline, folder: Path) -> None:
    reference = fp32.generate(["a red circle", "a blue square"], [0, 1], SAMPLING)
    settings = {"bf16 eager": ("bfloat16", "off", 12), "fp32 compiled": ("float32", "inductor", 1)}
    settings["bf16 compiled"] = ("bfloat16", "inductor", 12)
    for name, (dtype, mode, bound) in settings.items():
        pipeline = UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype=dtype)
        assert compile_pipeline(pipeline, mode) == mode
        if mode != "off":
            capture(pipeline, [2], size=64)
            assert all(step.captured for name, step in pipeline.steps.items() if name in ("prior", "decoder"))
        images = pipeline.generate(["a red circle", "a blue square"], [0, 1], SAMPLING)
        for got, want in zip(images, reference, strict=True):
            assert np.abs(pixels(got) - pixels(want)).mean() < bound, name


def test_no_cxx_compiler_means_eager_said_once(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="models.pipeline.runtime")
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    cpu = torch.device("cpu")
    assert compile_mode("auto", cpu) == "off"  # eager on a CPU by default, nothing to warn about
    assert compile_mode("inductor", cpu) == "off"
    assert compile_mode("off", cpu) == "off"
    assert compile_mode("cudagraphs", cpu) == "off"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "no C++ compiler" in messages[0] and "CUDA" in messages[1]
    with pytest.raises(ValueError, match="compile mode"):
        compile_mode("fast", cpu)


def test_the_compile_cache_goes_where_it_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored after the test")
    monkeypatch.setenv("TRITON_CACHE_DIR", "restored after the test")
    assert runtime.use_compile_cache(tmp_path / "cache") == tmp_path / "cache"
    assert runtime.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert runtime.use_compile_cache(blocked / "cache") is None  # not writable: torch's default, logged
    assert "not writable" in caplog.text
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.default_cache_dir() == tmp_path / "unclip" / "compile"


class HostRead(AssertionError):
    """A tensor was read back to the host inside the sampling loop."""


@contextlib.contextmanager
def no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every way a step could wait for the device: reading a value, truthiness, a copy to the host. On
    CUDA the driver also raises on any synchronising call (`set_sync_debug_mode("error")`)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise HostRead("host read inside the step loop")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero"):
            patch.setattr(torch.Tensor, name, refuse)
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")


def test_the_step_loops_read_nothing_back_to_the_host(fp32: UnCLIPPipeline, monkeypatch) -> None:
    """The decoder (guided three ways, with its learned-null handling) and an upsampler, sampled with
    per-item noise: no step waits for the device, so CUDA graphs and an asynchronous queue stay full."""
    from models.diffusion import GaussianDiffusion
    from models.pipeline.latents import item_generators
    from models.pipeline.stages import DecoderCondition, decoder_denoiser, upsampler_denoiser

    x, _, image_embed, states, mask = decoder_args(fp32, 2)
    condition = DecoderCondition(image_embed, states, mask)
    decoder = decoder_denoiser(fp32.models.decoder, condition, 3.0, image_guidance=2.0)  # built outside
    upsampler = upsampler_denoiser(fp32.models.sr256, x.clamp(-1, 1))
    config = fp32.models.config
    decoding = GaussianDiffusion.from_config(config.decoder_diffusion, steps=3)
    upsampling = GaussianDiffusion.from_config(config.sr256_diffusion, steps=3)
    generators = item_generators([0, 1], fp32.device)
    with torch.inference_mode(), no_host_reads(monkeypatch):
        low = decoding.sample(decoder, x, generators, clamp=lambda x0: x0.clamp(-1, 1))
        high = upsampling.sample(upsampler, torch.randn(2, 3, 256, 256), generators, method="ddim", eta=1.0)
    assert low.shape == (2, 3, 64, 64) and high.shape == (2, 3, 256, 256)
    with pytest.raises(HostRead), no_host_reads(monkeypatch):  # the guard itself works
        bool(low.any())


def test_a_failing_compile_falls_back_to_eager_for_good(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def step(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return x * 2

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("inductor could not build it")

    compiled = CompiledStep("decoder", step, "inductor")
    compiled.compiled = broken
    compiled.capturing = True
    x = torch.ones(2)
    assert torch.equal(compiled(x), x * 2) and torch.equal(compiled(x), x * 2)
    assert compiled.failed and not compiled.captured and len(calls) == 2
    assert caplog.text.count("compiling decoder failed") == 1


def test_the_warm_up_compiles_every_step_for_the_batch_sizes_served(
    folder: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="models.pipeline.runtime")
    pipeline = UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype="float32")
    report = runtime.warm_up(pipeline, "inductor", batch_sizes=[1], cache_dir=tmp_path / "cache")

    assert report["compile"] == "inductor" and report["batch_sizes"] == [1]
    assert set(pipeline.steps) == {"prior", "decoder", "sr256", "sr1024"}
    assert all(step.captured and not step.capturing for step in pipeline.steps.values())
    assert any((tmp_path / "cache" / "inductor").iterdir())  # compiled kernels kept on disk
    assert "warm-up done" in caplog.text and caplog.text.count("compiled decoder") == 1
