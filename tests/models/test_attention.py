"""The attention seam: backend choice, the shared masking contract, and whole tiny models per backend.

On a CPU-only machine the "triton" backend runs through Triton's interpreter; TRITON_INTERPRET is set by
tests/conftest.py before anything imports torch.
"""

from __future__ import annotations

import logging

import pytest
import torch

import models.attention as seam
from models.attention import attention, attention_backend
from models.clip import CLIP, TextEncoding
from models.config import named_config
from models.kernels.reference import attention_reference
from models.prior import DiffusionPrior
from models.unet import AttentionBlock

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3}


def qkv(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, dtype=torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_q, head_dim, generator=generator) * 1.5
    k, v = torch.randn(2, batch, heads, seq_kv, head_dim, generator=generator)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def padding(batch: int, seq_kv: int, real: list[int]) -> torch.Tensor:
    return (torch.arange(seq_kv)[None, :] < torch.tensor(real)[:, None]).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "seq_q, seq_kv, real, causal",
    [
        (64, 145, [145, 90], False),  # decoder: spatial queries against padded text + spatial keys
        (81, 81, [81, 12], True),  # prior: causal over padded text + 4 tokens
        (77, 77, None, True),  # CLIP text without a mask
        (17, 17, None, False),
        (17, 40, [40, 3], True),  # causal with Sq < Skv: aligned to the end
        (40, 17, None, True),  # Sq > Skv: the first 23 rows see no key and are zero
        (33, 50, [0, 50], False),  # item 0 has no real key at all
    ],
)
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_both_backends_follow_the_reference(backend, seq_q, seq_kv, real, causal, dtype) -> None:
    q, k, v = qkv(2, 2, seq_q, seq_kv, 32, dtype)
    mask = padding(2, seq_kv, real) if real else None
    out = attention(q, k, v, key_padding_mask=mask, causal=causal, backend=backend)
    expected = attention_reference(q, k, v, key_padding_mask=mask, causal=causal)
    assert out.dtype == dtype and not out.isnan().any()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


def test_auto_picks_triton_only_on_cuda_and_logs_each_shape_class_once(monkeypatch, caplog) -> None:
    """CUDA: auto runs the kernel for 16-bit inputs. CPU: auto stays on SDPA (the interpreter is slow)."""
    monkeypatch.setattr(seam, "_logged_shape_classes", set())
    caplog.set_level(logging.INFO, logger="models.attention")
    q, k, v = qkv(2, 3, 5, 7, 16, torch.float16 if CUDA else torch.float32)
    attention(q, k, v)
    attention(q[:1], k[:1], v[:1])  # another batch size, same shape class
    attention(q, k, v, causal=True)
    messages = [r.getMessage() for r in caplog.records]
    expected = "triton" if CUDA else "sdpa"
    assert len(messages) == 2
    assert all(m.startswith(f"attention backend {expected}:") for m in messages)
    assert "Sq=5 Skv=7 D=16 causal=False" in messages[0] and "causal=True" in messages[1]


def test_auto_trains_through_sdpa_and_triton_refuses_grad() -> None:
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 9, 9, 16))
    attention(q, k, v, causal=True).sum().backward()  # auto: the kernel has no backward, SDPA takes it
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="grad"):
        attention(q, k, v, backend="triton")
    with torch.no_grad():
        attention(q, k, v, backend="triton")  # no graph is built, so the kernel may run


def test_backend_names_are_checked() -> None:
    q, k, v = qkv(1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="backend"):
        seam.set_default_backend("xformers")
    if not CUDA:
        with pytest.raises(ValueError, match="cannot run"):
            attention(q.double(), k.double(), v.double(), backend="triton")


@pytest.fixture(scope="module")
def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(named_config("tiny").clip).eval().to(DEVICE)


def text_ids(vocab_size: int, lengths: list[int], context: int = 77) -> torch.Tensor:
    """[start, random tokens, end-of-text (the largest id), padding 0...] per prompt."""
    generator = torch.Generator().manual_seed(5)
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, : length - 1] = torch.randint(1, vocab_size - 1, (length - 1,), generator=generator)
        ids[row, length - 1] = vocab_size - 1
    return ids.to(DEVICE)


def test_tiny_clip_is_the_same_under_both_backends(tiny_clip: CLIP) -> None:
    ids = text_ids(named_config("tiny").clip.vocab_size, [5, 77, 30])
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)).to(DEVICE) * 2 - 1
    with torch.no_grad():
        with attention_backend("sdpa"):
            text_sdpa, image_sdpa = tiny_clip.encode_text(ids), tiny_clip.encode_image(images)
        with attention_backend("triton"):
            text_triton, image_triton = tiny_clip.encode_text(ids), tiny_clip.encode_image(images)
    real = text_sdpa.mask[..., None]  # padded positions are never attended to, only computed
    torch.testing.assert_close(text_triton.states * real, text_sdpa.states * real, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_triton.embeds, text_sdpa.embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(image_triton, image_sdpa, atol=1e-5, rtol=1e-5)


def test_tiny_prior_is_the_same_under_both_backends() -> None:
    config = named_config("tiny").prior
    torch.manual_seed(0)
    prior = DiffusionPrior(config).eval().to(DEVICE)
    generator = torch.Generator().manual_seed(7)
    batch = 3
    text = TextEncoding(
        torch.nn.functional.normalize(torch.randn(batch, config.embed_dim, generator=generator), dim=-1),
        torch.randn(batch, config.context_length, config.text_width, generator=generator),
        torch.arange(config.context_length)[None, :] < torch.tensor([4, 77, 20])[:, None],
    )
    text = TextEncoding(*(t.to(DEVICE) for t in text))
    x_t = torch.randn(batch, config.embed_dim, generator=generator).to(DEVICE)
    t, drop = torch.tensor([3, 500, 999], device=DEVICE), torch.tensor([False, False, True], device=DEVICE)
    with torch.no_grad():
        with attention_backend("sdpa"):
            expected = prior(x_t, t, text, drop)
        with attention_backend("triton"):
            actual = prior(x_t, t, text, drop)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_tiny_decoder_attention_block_is_the_same_under_both_backends() -> None:
    """The GLIDE layer itself: 8x8 spatial queries against [4 CLIP + 77 text (padded), spatial] keys."""
    config = named_config("tiny").decoder
    channels = config.model_channels * 2
    torch.manual_seed(0)
    block = AttentionBlock(channels, config.num_head_channels, config.norm_groups, config.context_width)
    torch.nn.init.normal_(block.proj_out.weight, std=channels**-0.5)  # zero at init: attention would not show
    block = block.eval().to(DEVICE)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, channels, 8, 8, generator=generator).to(DEVICE)
    context = torch.randn(2, 81, config.context_width, generator=generator).to(DEVICE)
    context_mask = padding(2, 81, [4 + 3, 81])
    with torch.no_grad():
        with attention_backend("sdpa"):
            expected = block(x, context, context_mask)
        with attention_backend("triton"):
            actual = block(x, context, context_mask)
    assert not torch.allclose(expected, x, atol=1e-3)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
