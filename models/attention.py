"""The one attention function every layer of the stack calls, so a kernel can plug in behind one seam.

q `[B, H, Sq, D]`, k/v `[B, H, Skv, D]`, key_padding_mask `[B, Skv]` bool (True = attend) →
`[B, H, Sq, D]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "triton", "sdpa")
_default_backend = "auto"


def set_default_backend(name: str) -> None:
    """The backend layers use when they pass none (the worker sets it from its settings)."""
    global _default_backend
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    _default_backend = name


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    previous = _default_backend
    set_default_backend(name)
    try:
        yield
    finally:
        set_default_backend(previous)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    backend = backend or _default_backend
    # TODO(issue 4): the Triton kernel goes here; until then every backend runs SDPA.
    return sdpa_attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]  # [B, 1, 1, Skv], broadcast over heads and queries
        if causal:
            sq, skv = q.shape[-2], k.shape[-2]
            # Causal aligned to the end: query i sees keys j <= i + (Skv - Sq).
            mask = mask & torch.ones(sq, skv, dtype=torch.bool, device=q.device).tril(skv - sq)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
