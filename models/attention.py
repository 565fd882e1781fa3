"""The one attention function every layer of the stack calls, so a kernel can plug in behind one seam.

q `[B, H, Sq, D]`, k/v `[B, H, Skv, D]`, key_padding_mask `[B, Skv]` bool (True = attend) →
`[B, H, Sq, D]`, scaled by 1/√D.

Backends:
- "triton": `models.kernels.flash_attention` (CUDA; CPU tensors only under TRITON_INTERPRET=1). Raises
  ValueError for inputs it cannot run (e.g. tensors that require grad: it has no backward).
- "sdpa": `torch.nn.functional.scaled_dot_product_attention`.
- "auto" (the default): Triton for fp16/bf16 CUDA inputs it supports, else SDPA (CPU, fp32, training,
  no Triton installed).
The backend that ran is logged once per shape class at INFO on the "models.attention" logger, from eager
code only: inside torch.compile the log is skipped (a logging call would break the graph; the worker's
eager warm-up has logged every shape class by then). The Triton kernel is a torch custom op
("unclip::flash_attention"), so compiled graphs and CUDA graphs hold it as one opaque node.

Both backends follow one masking contract (the float64 reference in `models.kernels.reference` too):
- causal is aligned to the end: query i sees key j iff j <= i + (Skv - Sq). With Sq == Skv (how the prior
  and the CLIP text encoder call it) that is the usual j <= i.
- a query row with no visible key (all its keys padded, or one of the first Sq - Skv rows under causal)
  outputs zeros, never NaN. The SDPA path enforces it explicitly, because not every SDPA kernel does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import ModuleType

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "triton", "sdpa")
# fp32 runs the kernel's IEEE-fp32 dots on CUDA cores: correct, not faster than SDPA; auto leaves it there.
AUTO_TRITON_DTYPES = (torch.float16, torch.bfloat16)
_default_backend = "auto"
_logged_shape_classes: set[tuple[object, ...]] = set()
logger = logging.getLogger(__name__)


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
    rows_see_a_key: bool = False,
) -> torch.Tensor:
    """q `[B, H, Sq, D]`, k/v `[B, H, Skv, D]` → `[B, H, Sq, D]`; backend None = the default (see above).

    rows_see_a_key: the caller knows every query row has at least one visible key (the decoder's spatial
    keys are never padded), so SDPA's output needs no zeroing of empty rows.
    """
    backend = backend or _default_backend
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        fast_path = q.is_cuda and q.dtype in AUTO_TRITON_DTYPES
        backend = "triton" if fast_path and _triton_reason(q, k, v, key_padding_mask) is None else "sdpa"
    elif backend == "triton":
        reason = _triton_reason(q, k, v, key_padding_mask)
        if reason is not None:
            raise ValueError(f"attention backend 'triton' cannot run these inputs: {reason}")
    if not torch.compiler.is_compiling():
        _log_once(backend, q, k, key_padding_mask, causal)
    if backend == "triton":
        return triton_attention(q, k, v, key_padding_mask, causal)
    return sdpa_attention(
        q, k, v, key_padding_mask=key_padding_mask, causal=causal, rows_see_a_key=rows_see_a_key
    )


@torch.library.custom_op("unclip::flash_attention", mutates_args=())
def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """The Triton kernel as an opaque op: `[B, H, Sq, D]`, contiguous, in q's dtype."""
    kernels = _flash_attention_module()
    if kernels is None:
        raise ValueError("attention backend 'triton' cannot run: triton is not installed")
    return kernels.flash_attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal)


@triton_attention.register_fake
def _(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    rows_see_a_key: bool = False,
) -> torch.Tensor:
    """The SDPA backend under this module's masking contract (end-aligned causal, empty rows → zeros)."""
    sq, skv = q.shape[-2], k.shape[-2]
    if key_padding_mask is None and (not causal or sq == skv):
        # No row can be fully masked: let SDPA pick its fastest kernel (is_causal is top-left aligned,
        # which equals end-aligned only when Sq == Skv).
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    mask = torch.ones(1, 1, 1, skv, dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        mask = key_padding_mask.to(device=q.device, dtype=torch.bool)[:, None, None, :]  # [B, 1, 1, Skv]
    if causal:
        mask = mask & torch.ones(sq, skv, dtype=torch.bool, device=q.device).tril(skv - sq)  # [B, 1, Sq, Skv]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if rows_see_a_key and not causal:
        return out
    # Rows with no visible key: some SDPA kernels give NaN there, the contract says zeros.
    return out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)


def _triton_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> str | None:
    """Why the Triton kernel cannot run these inputs (None = it can)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"needs 4-d [B, H, S, D] tensors, got {q.dim()}/{k.dim()}/{v.dim()}-d"
    kernels = _flash_attention_module()
    if kernels is None:
        return "triton is not installed"
    return kernels.unsupported_reason(q, k, v, key_padding_mask)


_kernel_module: ModuleType | None = None
_kernel_import_failed = False


def _flash_attention_module() -> ModuleType | None:
    """Imports the kernel on first use: Triton reads TRITON_INTERPRET when the kernel is defined, and a
    CPU-only process that never asks for Triton should not pay for importing it."""
    global _kernel_module, _kernel_import_failed
    if _kernel_module is None and not _kernel_import_failed:
        try:
            from models.kernels import flash_attention
        except ImportError:
            _kernel_import_failed = True
        else:
            _kernel_module = flash_attention
    return _kernel_module


def _log_once(
    backend: str, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None, causal: bool
) -> None:
    """Logs which backend ran, once per shape class (everything but the batch size)."""
    heads, seq_q, head_dim = q.shape[-3], q.shape[-2], q.shape[-1]
    masked = key_padding_mask is not None
    shape_class = (backend, q.device.type, q.dtype, heads, seq_q, k.shape[-2], head_dim, causal, masked)
    if shape_class in _logged_shape_classes:
        return
    _logged_shape_classes.add(shape_class)
    logger.info(
        "attention backend %s: %s %s heads=%d Sq=%d Skv=%d D=%d causal=%s key_padding_mask=%s",
        *shape_class,
    )
