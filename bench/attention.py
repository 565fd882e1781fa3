"""Attention throughput per unCLIP shape class: our Triton kernel against every SDPA backend that runs.

    .venv/bin/python bench/attention.py [--dtype bf16|fp16] [--only decoder]

TFLOP/s = 4·B·H·Sq·Skv·D / median time (two matmuls, Sq·Skv·D multiply-adds each, 2 FLOPs per
multiply-add), halved for causal. Times are `triton.testing.do_bench` medians (CUDA events, L2 flushed);
the kernel is autotuned for the shape before it is timed. Columns: our kernel (`triton`), SDPA restricted
to one backend at a time (`flash`, `efficient`, `math`, `cudnn`; "n/a" where that backend refuses the
inputs, e.g. flash with a mask), flash-attn's `flash_attn_func` when installed (shapes without a padding
mask), and ratio = triton ÷ the best SDPA backend. Shapes with a padding mask hand SDPA the same boolean
mask the seam builds ([B, 1, 1, Skv], or [B, 1, Sq, Skv] with causal). `max|Δ|` is the kernel's largest
difference from SDPA's default choice on the same inputs.

Shape classes, Karlo-sized unCLIP (images = 8, so batch = 2 × 8 with classifier-free guidance):
- decoder 32×32 / 16×16 / 8×8: Sq = H·W spatial queries, Skv = 81 context tokens (4 CLIP + 77 text, 20
  real) + H·W; D = 64 and heads = channels / 64 = 10 / 15 / 20 (Karlo's 640 / 960 / 1280 channels);
- prior: 77 text + 4 tokens, causal + padding, width 2048 = 32 heads × 64, batch 2 × 2 candidates × 8;
- CLIP text (ViT-L/14): 77 tokens, causal + padding, 12 heads × 64, batch 2 × 8;
- CLIP image (ViT-L/14 at 224 px): 257 tokens, 16 heads × 64, batch 8;
- long: S = 1k, 4k, 16k with D = 64 (32 heads) and D = 128 (16 heads), 16k tokens per batch (B = 16k/S),
  causal and not. The H100 goal: ≥ SDPA on every unCLIP class, ≥ 450 TFLOP/s at S = 4096, D = 64 (bf16).

Without CUDA it says so, checks the kernel once in Triton's interpreter on a tiny shape, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: models is one level up

IMAGES = 8
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    seq_q: int
    seq_kv: int
    head_dim: int
    causal: bool = False
    real_context: int | None = None  # padding mask on: keys [real_context, end of the context) are padding


def unclip_shapes() -> list[Shape]:
    cfg = 2 * IMAGES  # classifier-free guidance doubles the batch
    shapes = [
        Shape(f"decoder {side}x{side}", cfg, heads, side * side, 81 + side * side, 64, real_context=4 + 20)
        for side, heads in ((32, 10), (16, 15), (8, 20))
    ]
    shapes += [
        Shape("prior", 2 * cfg, 32, 81, 81, 64, causal=True, real_context=20),
        Shape("clip text", cfg, 12, 77, 77, 64, causal=True, real_context=20),
        Shape("clip image", IMAGES, 16, 257, 257, 64),
    ]
    for seq in (1024, 4096, 16384):
        for head_dim, heads in ((64, 32), (128, 16)):
            for causal in (False, True):
                kind = "causal" if causal else "full"
                shapes.append(Shape(f"long {kind}", 16384 // seq, heads, seq, seq, head_dim, causal=causal))
    return shapes


def make_inputs(shape: Shape, dtype: torch.dtype):
    q = torch.randn(shape.batch, shape.heads, shape.seq_q, shape.head_dim, device="cuda", dtype=dtype)
    k = torch.randn(shape.batch, shape.heads, shape.seq_kv, shape.head_dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    key_padding_mask = None
    if shape.real_context is not None:
        # Context first (decoder: 4 CLIP + 77 text, then the spatial keys; prior: 77 text then 4 tokens).
        key_padding_mask = torch.ones(shape.batch, shape.seq_kv, dtype=torch.bool, device="cuda")
        text_end = 81 if shape.name.startswith("decoder") else 77
        key_padding_mask[:, shape.real_context : text_end] = False
    return q, k, v, key_padding_mask


def sdpa_mask(shape: Shape, key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The boolean mask `models.attention.sdpa_attention` builds (None: is_causal or nothing)."""
    if key_padding_mask is None:
        return None
    mask = key_padding_mask[:, None, None, :]
    if shape.causal:
        tril = torch.ones(shape.seq_q, shape.seq_kv, dtype=torch.bool, device="cuda").tril(
            shape.seq_kv - shape.seq_q
        )
        mask = mask & tril
    return mask


def time_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def run_cuda(dtype: torch.dtype, only: str | None) -> None:
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from models.kernels.flash_attention import attention_flops, flash_attention

    try:
        from flash_attn import flash_attn_func
    except ImportError:
        flash_attn_func = None

    sdpa_backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    flash_attn_state = "installed" if flash_attn_func else "not installed"
    print(
        f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
        f"flash-attn {flash_attn_state}  dtype {dtype}  python {platform.python_version()}"
    )
    print("TFLOP/s = 4*B*H*Sq*Skv*D / median time, halved for causal; ratio = triton / best SDPA backend")
    columns = ["triton", *sdpa_backends, "flash-attn"]
    header = f"{'shape':<16}{'B':>4}{'H':>4}{'Sq':>7}{'Skv':>7}{'D':>5}{'causal':>7}{'mask':>6}"
    print(header + "".join(f"{c:>11}" for c in columns) + f"{'ratio':>8}{'max|Δ|':>10}")

    for shape in unclip_shapes():
        if only and only not in shape.name:
            continue
        q, k, v, key_padding_mask = make_inputs(shape, dtype)
        mask = sdpa_mask(shape, key_padding_mask)
        is_causal = shape.causal and mask is None
        flops = attention_flops(
            shape.batch, shape.heads, shape.seq_q, shape.seq_kv, shape.head_dim, shape.causal
        )

        def ours(q=q, k=k, v=v, key_padding_mask=key_padding_mask, shape=shape):
            return flash_attention(q, k, v, key_padding_mask=key_padding_mask, causal=shape.causal)

        results: dict[str, str] = {}
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        error = (ours().float() - expected.float()).abs().max().item()  # also autotunes the shape
        triton_tflops = flops / time_ms(ours) / 1e9
        results["triton"] = f"{triton_tflops:.1f}"

        best_sdpa = 0.0
        for name, backend in sdpa_backends.items():
            if name == "math" and shape.batch * shape.heads * shape.seq_q * shape.seq_kv > 2**31:
                results[name] = "skip"  # the math backend would materialise > 2**31 scores
                continue

            def sdpa(backend=backend, q=q, k=k, v=v, mask=mask, is_causal=is_causal):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)

            try:
                with warnings.catch_warnings():  # a backend that refuses the inputs warns, then raises
                    warnings.simplefilter("ignore")
                    sdpa()
                tflops = flops / time_ms(sdpa) / 1e9
            except (RuntimeError, torch.OutOfMemoryError):
                results[name] = "n/a"
                continue
            best_sdpa = max(best_sdpa, tflops)
            results[name] = f"{tflops:.1f}"

        if flash_attn_func is not None and key_padding_mask is None:
            qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # its layout is [B, S, H, D]

            def flash_attn(qt=qt, kt=kt, vt=vt, causal=shape.causal):
                return flash_attn_func(qt, kt, vt, causal=causal)

            try:
                results["flash-attn"] = f"{flops / time_ms(flash_attn) / 1e9:.1f}"
            except RuntimeError:  # e.g. a head dim its build does not support
                results["flash-attn"] = "n/a"
        else:
            results["flash-attn"] = "n/a"

        ratio = f"{triton_tflops / best_sdpa:.2f}" if best_sdpa else "n/a"
        masked = "yes" if key_padding_mask is not None else "no"
        row = f"{shape.name:<16}{shape.batch:>4}{shape.heads:>4}{shape.seq_q:>7}{shape.seq_kv:>7}"
        row += f"{shape.head_dim:>5}{'yes' if shape.causal else 'no':>7}{masked:>6}"
        print(row + "".join(f"{results[c]:>11}" for c in columns) + f"{ratio:>8}{error:>10.2e}", flush=True)
        del q, k, v, key_padding_mask, mask, expected
        torch.cuda.empty_cache()


def run_interpreter_check() -> None:
    """No GPU: one tiny decoder-like shape through Triton's interpreter against the float64 reference."""
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernel's import
    from models.kernels.flash_attention import flash_attention
    from models.kernels.reference import attention_reference

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 64, 64, generator=generator)
    k, v = torch.randn(2, 1, 2, 145, 64, generator=generator)
    mask = torch.ones(1, 145, dtype=torch.bool)
    mask[:, 24:81] = False
    error = flash_attention(q, k, v, key_padding_mask=mask).double() - attention_reference(
        q, k, v, key_padding_mask=mask
    )
    print(f"interpreter check (decoder 8x8 shape, fp32, 1x2 heads): max |kernel - float64 reference| = "
          f"{error.abs().max().item():.2e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--only", help="run the shape classes whose name contains this")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}): nothing to time; the table needs an NVIDIA GPU.")
        run_interpreter_check()
        return
    run_cuda(DTYPES[args.dtype], args.only)


if __name__ == "__main__":
    main()
