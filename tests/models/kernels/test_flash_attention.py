"""The Triton attention kernel against the float64 reference, over unCLIP's own shape classes.

On CPU the kernel runs in Triton's interpreter (see conftest.py), so the shapes are the real classes
scaled down in batch and heads (sequence lengths and head dims stay real); on CUDA they run at full size
and bf16 joins fp16/fp32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from models.attention import sdpa_attention
from models.kernels import flash_attention as fa
from models.kernels.reference import attention_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [
    torch.float32,
    torch.float16,
    *([torch.bfloat16] if CUDA else []),
]  # bf16 is wrong in the interpreter
# Tolerances a correct kernel meets with margin; a wrong scale, mask or rescale is off by > 0.05.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class Case:
    """One shape class: [B, H, Sq, D] queries against [B, H, Skv, D] keys."""

    name: str
    batch: int
    heads: int
    seq_q: int
    seq_kv: int
    head_dim: int
    causal: bool = False
    padded_keys: int = 0  # how many keys of the context are padding (0 = no key_padding_mask)

    def __str__(self) -> str:
        return self.name


# The unCLIP shape classes. Decoder: spatial queries against [4 CLIP tokens + 77 text tokens, spatial
# keys] with the padded text masked. Prior: 77 text + 4 tokens, causal, padded. CLIP text: 77, causal.
# ViT: 8x8 patches + class token.
CPU_CASES = [
    Case("decoder_8x8", 2, 2, 64, 145, 64, padded_keys=60),
    Case("decoder_16x16", 1, 1, 256, 337, 64, padded_keys=70),
    Case("prior", 2, 2, 81, 81, 64, causal=True, padded_keys=50),
    Case("clip_text", 2, 2, 77, 77, 64, causal=True, padded_keys=70),
    Case("vit", 2, 2, 65, 65, 64),
    Case("tiny_unet_d16", 2, 2, 64, 145, 16, padded_keys=30),
    Case("d32_odd", 1, 2, 17, 17, 32, causal=True),
    Case("d48", 1, 2, 33, 50, 48, padded_keys=7),
    Case("vit_h_d80", 1, 2, 50, 50, 80),
    Case("d128", 1, 2, 81, 81, 128, causal=True, padded_keys=20),
    Case("one_query", 2, 1, 1, 145, 64, padded_keys=60),
    Case("one_key", 1, 2, 17, 1, 64),
    Case("causal_sq_lt_skv", 1, 2, 17, 40, 32, causal=True),
    Case("causal_sq_gt_skv", 1, 2, 40, 17, 32, causal=True),
]
CUDA_CASES = [
    Case("decoder_32x32", 4, 10, 1024, 1105, 64, padded_keys=60),
    Case("decoder_16x16", 16, 15, 256, 337, 64, padded_keys=70),
    Case("decoder_8x8", 16, 20, 64, 145, 64, padded_keys=60),
    Case("prior", 32, 32, 81, 81, 64, causal=True, padded_keys=50),
    Case("clip_text", 16, 12, 77, 77, 64, causal=True, padded_keys=70),
    Case("vit_l14", 16, 16, 257, 257, 64),
    Case("vit_h_d80", 8, 16, 257, 257, 80),
    Case("long_d64", 1, 16, 4096, 4096, 64),
    Case("long_d128_causal", 1, 8, 4097, 4097, 128, causal=True),
    Case("d32_odd", 8, 4, 1000, 999, 32, causal=True, padded_keys=5),
    Case("d16", 8, 4, 145, 145, 16),
    *[c for c in CPU_CASES if c.name in ("one_query", "one_key", "causal_sq_lt_skv", "causal_sq_gt_skv")],
]
CASES = CUDA_CASES if CUDA else CPU_CASES


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def randn(seq: int) -> torch.Tensor:
        return torch.randn(case.batch, case.heads, seq, case.head_dim, generator=generator)

    q, k, v = randn(case.seq_q), randn(case.seq_kv), randn(case.seq_kv)
    q = q * 1.5  # peakier softmax than unit scores, so a wrong max/rescale shows
    mask = None
    if case.padded_keys:
        # Padding sits inside the context, the spatial keys after it stay real; one item pads less.
        mask = torch.ones(case.batch, case.seq_kv, dtype=torch.bool)
        start = min(10, case.seq_kv - case.padded_keys)
        mask[:, start : start + case.padded_keys] = False
        mask[-1, start : start + case.padded_keys // 2] = True
        mask = mask.to(DEVICE)
    return (*(t.to(DEVICE, dtype) for t in (q, k, v)), mask)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype and not actual.isnan().any()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_float64_reference(case: Case, dtype: torch.dtype) -> None:
    q, k, v, mask = make_inputs(case, dtype)
    out = fa.flash_attention(q, k, v, key_padding_mask=mask, causal=case.causal)
    assert out.shape == q.shape
    assert_close(out, attention_reference(q, k, v, key_padding_mask=mask, causal=case.causal), dtype)


@pytest.mark.parametrize("block_m, block_n", [(16, 16), (16, 64), (64, 16), (128, 32)], ids=lambda b: str(b))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_every_tile_size_agrees(block_m: int, block_n: int, causal: bool) -> None:
    """Small tiles make short sequences walk many interior, diagonal and ragged-tail tiles."""
    case = Case("walk", 1, 2, 77, 93 if not causal else 77, 64, causal=causal, padded_keys=20)
    q, k, v, mask = make_inputs(case, torch.float32, seed=1)
    out = fa.flash_attention(q, k, v, key_padding_mask=mask, causal=causal, block_m=block_m, block_n=block_n)
    assert_close(out, attention_reference(q, k, v, key_padding_mask=mask, causal=causal), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_with_no_visible_key_are_zero_like_sdpa(dtype: torch.dtype) -> None:
    case = Case("padded", 2, 2, 33, 40, 32, padded_keys=5)
    q, k, v, _ = make_inputs(case, dtype)
    mask = torch.ones(2, 40, dtype=torch.bool, device=DEVICE)
    mask[0] = False  # item 0: every key is padding
    out = fa.flash_attention(q, k, v, key_padding_mask=mask)
    assert out[0].abs().max().item() == 0.0
    assert_close(out, attention_reference(q, k, v, key_padding_mask=mask), dtype)
    assert torch.equal(sdpa_attention(q, k, v, key_padding_mask=mask)[0], out[0])

    # Causal with more queries than keys: the first Sq - Skv rows precede every key.
    q, k, v, _ = make_inputs(Case("causal", 1, 2, 40, 17, 32), dtype)
    out = fa.flash_attention(q, k, v, causal=True)
    assert out[:, :, : 40 - 17].abs().max().item() == 0.0 and out[:, :, 40 - 17 :].abs().min().item() > 0.0
    assert_close(out, attention_reference(q, k, v, causal=True), dtype)
    assert torch.equal(sdpa_attention(q, k, v, causal=True)[:, :, : 40 - 17], out[:, :, : 40 - 17])


def test_strided_layouts_of_the_layers() -> None:
    """The UNet hands over q with D strided by HW (a transpose of its qkv conv output) and K/V from a
    concatenation; CLIP's q/k/v are permuted views of one [B, S, 3, H, D] projection."""
    b, heads, d, hw, n = 2, 2, 32, 64, 81
    generator = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, 3 * heads * d, hw, generator=generator).to(DEVICE)
    q, k, v = qkv.reshape(b, 3, heads, d, hw).transpose(-1, -2).unbind(1)  # [B, H, HW, D], D stride HW
    ck, cv = torch.randn(2, b, heads, n, d, generator=generator).to(DEVICE).unbind(0)
    k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
    assert q.stride(-1) != 1
    torch.testing.assert_close(
        fa.flash_attention(q, k, v).double(), attention_reference(q, k, v), atol=2e-5, rtol=2e-5
    )

    packed = torch.randn(b, 77, 3, heads, d, generator=generator).to(DEVICE)
    q, k, v = packed.permute(2, 0, 3, 1, 4)  # 3 x [B, H, S, D], S stride 3*H*D
    mask = torch.arange(77, device=DEVICE)[None, :] < torch.tensor([9, 77], device=DEVICE)[:, None]
    expected = attention_reference(q, k, v, key_padding_mask=mask, causal=True)
    actual = fa.flash_attention(q, k, v, key_padding_mask=mask, causal=True)
    torch.testing.assert_close(actual.double(), expected, atol=2e-5, rtol=2e-5)


def test_refuses_what_it_cannot_do() -> None:
    q = torch.randn(1, 1, 8, 32, device=DEVICE)
    with pytest.raises(ValueError, match="grad"):
        fa.flash_attention(q.requires_grad_(), q, q)
    with pytest.raises(ValueError, match="do not match"):
        fa.flash_attention(q.detach(), q.detach()[..., :16], q.detach()[..., :16])
    with pytest.raises(ValueError, match="key_padding_mask"):
        fa.flash_attention(
            *(q.detach(),) * 3, key_padding_mask=torch.ones(1, 9, dtype=torch.bool, device=DEVICE)
        )
    with pytest.raises(ValueError, match="head dim"):
        fa.flash_attention(*(torch.zeros(1, 1, 2, 512, device=DEVICE),) * 3)
    assert "dtypes" in fa.unsupported_reason(q.double(), q.double(), q.double())


def _kept(seq_q: int, seq_kv: int, batch_heads: int, head_dim: int) -> list:
    q = torch.empty(batch_heads, 1, 0, head_dim, dtype=torch.float16, device="meta")
    named = {"Q": q, "seq_q": seq_q, "seq_kv": seq_kv}
    return fa._prune_configs(fa._autotune_configs(), named, BLOCK_D=head_dim)


def test_autotune_space_fits_each_shape_class() -> None:
    short = _kept(64, 145, batch_heads=4 * 20, head_dim=64)  # a small decoder batch at 8x8
    assert {c.kwargs["BLOCK_M"] for c in short} == {16, 32, 64}  # small tiles to fill the GPU, none > Sq
    long = _kept(4096, 4096, batch_heads=16, head_dim=64)
    assert {c.kwargs["BLOCK_M"] for c in long} == {64, 128} and any(c.num_warps == 8 for c in long)
    wide = _kept(4096, 4096, batch_heads=16, head_dim=256)
    assert wide and all(
        (c.kwargs["BLOCK_M"] + 2 * c.kwargs["BLOCK_N"] * c.num_stages) * 512 <= 200 * 1024 for c in wide
    )
    assert len(_kept(1, 1, batch_heads=1, head_dim=16)) >= 1


def test_flop_formula() -> None:
    assert fa.attention_flops(2, 3, 5, 7, 64, causal=False) == 4 * 2 * 3 * 5 * 7 * 64
    assert fa.attention_flops(2, 3, 5, 7, 64, causal=True) == 2 * 2 * 3 * 5 * 7 * 64


SM90_VARIANTS = {
    "decoder fp16 D64 128x64": dict(dtype="fp16", head_dim=64, key_mask=True, block_m=128, block_n=64),
    "long bf16 D64 128x128 8 warps": dict(
        dtype="bf16", head_dim=64, causal=True, key_mask=False, block_n=128, num_warps=8
    ),
    "bf16 D128 128x64 8 warps": dict(dtype="bf16", head_dim=128, causal=True, block_n=64, num_warps=8),
    "fp16 D80 padded to 128": dict(dtype="fp16", head_dim=80, block_m=64, block_n=64),
    "short fp16 16x32": dict(dtype="fp16", head_dim=64, causal=True, block_m=16, block_n=32, num_stages=2),
}


def test_compiles_for_h100_pipelined_on_tensor_cores_without_spills() -> None:
    """No GPU here, so compile for sm_90 offline: every load must be pipelined (cp.async), the 64/128-row
    tiles must use Hopper's wgmma, and ptxas must not spill registers."""
    script = Path(__file__).with_name("sm90_compile.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    arguments = [json.dumps(variant) for variant in SM90_VARIANTS.values()]
    result = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) == len(SM90_VARIANTS)
    for name, report in zip(SM90_VARIANTS, reports, strict=True):
        assert report["spill_bytes"] == 0, (name, report)
        assert report["async_copies"] > 0, (name, report)
        assert (report["wgmma"] > 0) == (report["variant"]["block_m"] >= 64), (name, report)
        assert report["shared_bytes"] <= 227 * 1024, (name, report)
