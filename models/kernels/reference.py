"""The float64 attention every kernel test compares against: plain softmax(q kᵀ / √D) v, nothing fused.

Its masking rules are the contract the kernel and the SDPA path both follow:
- key_padding_mask `[B, Skv]` bool, True = attend.
- causal is aligned to the end: query i sees key j iff j <= i + (Skv - Sq) (for Sq == Skv, the usual j <= i).
- a query row that may attend to no key at all (every key padded, or Sq > Skv under causal) outputs zeros.
"""

from __future__ import annotations

import torch


def visible_keys(
    batch: int,
    seq_q: int,
    seq_kv: int,
    *,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    device: torch.device | str,
) -> torch.Tensor:
    """The boolean `[B, 1, Sq, Skv]` mask of which keys each query may see (broadcast over heads)."""
    visible = torch.ones(batch, 1, seq_q, seq_kv, dtype=torch.bool, device=device)
    if key_padding_mask is not None:
        visible = visible & key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    if causal:
        visible = visible & torch.ones(seq_q, seq_kv, dtype=torch.bool, device=device).tril(seq_kv - seq_q)
    return visible


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """q `[B, H, Sq, D]`, k/v `[B, H, Skv, D]` → `[B, H, Sq, D]` in float64 (compare with a tolerance)."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    batch, seq_q, seq_kv = q.shape[0], q.shape[-2], k.shape[-2]
    visible = visible_keys(
        batch, seq_q, seq_kv, key_padding_mask=key_padding_mask, causal=causal, device=q.device
    )
    scores = q64 @ k64.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, Sq, Skv]
    scores = scores.masked_fill(~visible, float("-inf"))
    # A row with no visible key would be softmax(-inf, ...) = NaN; the contract says zeros.
    any_visible = visible.any(dim=-1, keepdim=True)  # [B, 1, Sq, 1]
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
    return probs @ v64
