"""FlashAttention forward in Triton: softmax(q kᵀ / √D) v without ever writing the scores to memory.

Algorithm (Dao et al. 2022, "FlashAttention"; Dao 2023, "FlashAttention-2"). One program owns BLOCK_M query
rows of one (batch, head) and streams the keys and values through in BLOCK_N tiles. It keeps, per row, the
running maximum score m, the running softmax denominator l and an unnormalised output accumulator; each new
tile rescales both by exp(m_old - m_new) (the online softmax of Milakov & Gimelshein 2018), so the result
is exact, not an approximation. Scores are kept in base 2: the softmax scale 1/√D and log2(e) are folded into
one multiplier, so every exponential is an exp2 (one MUFU.EX2 instruction on NVIDIA GPUs).

What this kernel does beyond the textbook version, because unCLIP needs it:
- Sq ≠ Skv: the GLIDE decoder's spatial queries attend to [4 CLIP tokens, 77 text tokens, spatial keys].
- key padding masks `[B, Skv]` (True = attend) for the padded text tokens.
- causal masks aligned to the end (query i sees key j iff j <= i + Skv - Sq; the usual j <= i when the
  lengths are equal, which is how the prior and the CLIP text encoder call it).
- any length: only the last key tile and the tiles on the causal diagonal pay for bounds/causal masks;
  every tile strictly inside is loaded without masks. Tiles entirely above the diagonal are never visited.
- any head dim up to 256: D is padded to a power of two ≥ 16 inside the kernel (48 → 64, 80 → 128) with
  masked loads, so callers never copy.
- fp16 / bf16 / fp32 inputs, fp32 accumulation. fp32 inputs use IEEE fp32 dots unless PyTorch allows TF32
  (`torch.backends.cuda.matmul.allow_tf32`), so "fp32" means what it means everywhere else in torch.
- rows with no visible key (all keys padded) output zeros, not NaN, like `models.attention.sdpa_attention`.
- block sizes, warps and pipeline stages are autotuned per shape class, including BLOCK_M 16/32 so that the
  short sequences of unCLIP (64 or 81 queries) still put enough programs on the GPU; the grid is
  (ceil(Sq / BLOCK_M), B * H). The first call of a shape class pays the tuning (about 10-25 configs after
  `_prune_configs`, seconds each to compile and time); Triton's on-disk cache keeps the winner, so a worker
  should warm its shapes up once before serving.

Inference only: there is no backward pass, and the launcher refuses tensors that require grad.

With TRITON_INTERPRET=1 set before this module is imported, the same kernel runs on CPU tensors through
Triton's interpreter (slow, for tests); the launcher then uses one fixed block size instead of autotuning.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))
MAX_HEAD_DIM = 256
MAX_BATCH_HEADS = 65535  # CUDA's limit on grid axis 1
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Read once: Triton fixes interpreted-or-compiled when a kernel is defined (this module's import), and a
# read at call time would be a C call that torch.compile cannot trace.
INTERPRETED = bool(triton.knobs.runtime.interpret)
INTERPRETER_BLOCK = (32, 32)  # (BLOCK_M, BLOCK_N) when running in the interpreter: no autotuning there


@triton.jit
def _load_rows(
    ptrs, rows, n_rows, offs_d, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Loads a [rows, BLOCK_D] tile; masks only what can be out of bounds (the padded D, the last rows)."""
    if CHECK_ROWS:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return tile


@triton.jit
def _attend_key_tiles(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    key_mask_base,
    start_lo,
    start_hi,
    offs_m,
    offs_n,
    offs_d,
    seq_kv,
    causal_shift,
    qk_scale,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_mn,
    BOUNDARY: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The online-softmax update over key tiles [start_lo, start_hi).

    BOUNDARY tiles may hold keys past Skv or above the causal diagonal and are masked element-wise; the
    others are known to be fully in bounds and below the diagonal, so they skip that work. m_i is kept in
    base-2 units (already multiplied by qk_scale).
    """
    k_offsets = offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd  # [BLOCK_N, BLOCK_D]
    v_offsets = offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    for start_n in range(start_lo, start_hi, BLOCK_N):
        keys = start_n + offs_n  # [BLOCK_N]
        k = _load_rows(
            k_base + start_n * stride_kn + k_offsets, keys, seq_kv, offs_d, BOUNDARY, HEAD_DIM, BLOCK_D
        )
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N] fp32
        if BOUNDARY:
            visible = (keys < seq_kv)[None, :]
            if IS_CAUSAL:
                visible = visible & (keys[None, :] <= offs_m[:, None] + causal_shift)
            qk = tl.where(visible, qk, float("-inf"))
        if HAS_KEY_MASK:
            if BOUNDARY:
                attend = tl.load(key_mask_base + keys * stride_mn, mask=keys < seq_kv, other=0)
            else:
                attend = tl.load(key_mask_base + keys * stride_mn)
            qk = tl.where((attend != 0)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # qk_scale > 0, so max commutes with the scale
        if BOUNDARY or HAS_KEY_MASK:
            # A row may have seen only masked keys so far (m_new = -inf); subtracting -inf would give NaN.
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_shift = m_new
        p = tl.math.exp2(qk * qk_scale - m_shift[:, None])  # masked scores give exp2(-inf) = 0
        alpha = tl.math.exp2(m_i - m_shift)  # rescales what was accumulated under the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(
            v_base + start_n * stride_vn + v_offsets, keys, seq_kv, offs_d, BOUNDARY, HEAD_DIM, BLOCK_D
        )
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attention_forward_kernel(
    Q,
    K,
    V,
    Out,
    KeyMask,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_mb,
    stride_mn,
    num_heads,
    seq_q,
    seq_kv,
    batch_heads_bucket,  # only a tuning key: a power-of-two bucket of B*H (how full the grid is)
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid (ceil(Sq/BLOCK_M), B*H). Q/Out `[B, H, Sq, D]`, K/V `[B, H, Skv, D]`, KeyMask `[B, Skv]` uint8."""
    pid_m = tl.program_id(0)
    if IS_CAUSAL:
        # Later query blocks see more keys; launching them first evens out the tail of the grid.
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    batch = (pid_bh // num_heads).to(tl.int64)  # int64: B*H*S*D may pass 2**31 elements
    head = (pid_bh % num_heads).to(tl.int64)
    q_base = Q + batch * stride_qb + head * stride_qh
    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh
    o_base = Out + batch * stride_ob + head * stride_oh
    key_mask_base = KeyMask + batch * stride_mb

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    q_ptrs = q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = _load_rows(q_ptrs, offs_m, seq_q, offs_d, True, HEAD_DIM, BLOCK_D)  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key tiles [0, interior_end) need no bounds or causal mask; [interior_end, end) do.
    causal_shift = seq_kv - seq_q  # query i sees key j iff j <= i + causal_shift
    full_tiles_end = (seq_kv // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        end = tl.minimum(tl.maximum(start_m + BLOCK_M + causal_shift, 0), seq_kv)
        # Keys every row of this block sees: j <= start_m + causal_shift.
        below_diagonal = tl.maximum(start_m + causal_shift + 1, 0) // BLOCK_N * BLOCK_N
        interior_end = tl.minimum(below_diagonal, full_tiles_end)
    else:
        end = seq_kv
        interior_end = full_tiles_end

    acc, m_i, l_i = _attend_key_tiles(
        acc, m_i, l_i, q, k_base, v_base, key_mask_base, 0, interior_end, offs_m, offs_n, offs_d,
        seq_kv, causal_shift, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        False, IS_CAUSAL, HAS_KEY_MASK, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attend_key_tiles(
        acc, m_i, l_i, q, k_base, v_base, key_mask_base, interior_end, end, offs_m, offs_n, offs_d,
        seq_kv, causal_shift, qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
        True, IS_CAUSAL, HAS_KEY_MASK, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip

    # l == 0 only for a row that saw no key at all; its accumulator is 0 too, so it outputs zeros.
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    if BLOCK_D == HEAD_DIM:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m < seq_q)[:, None])
    else:
        store_mask = (offs_m < seq_q)[:, None] & (offs_d < HEAD_DIM)[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=store_mask)


def _autotune_configs() -> list[triton.Config]:
    """The search space. BLOCK_M 16/32 exist for short sequences (few query blocks per head); BLOCK_M 128
    also tries 8 warps (two Hopper warpgroups), which halves the registers each thread holds for the
    [128, D] accumulator and the [128, BLOCK_N] scores; deeper pipelines hide the K/V load latency."""
    configs = []
    for block_m in (16, 32, 64, 128):
        for block_n in (32, 64, 128):
            for stages in (2, 3, 4):
                for warps in (4, 8) if block_m == 128 else (4,):
                    meta = {"BLOCK_M": block_m, "BLOCK_N": block_n}
                    configs.append(triton.Config(meta, num_warps=warps, num_stages=stages))
    return configs


@functools.cache
def _cuda_limits(device_index: int) -> tuple[int, int]:
    """(streaming multiprocessors, shared memory bytes one program may use) of a CUDA device."""
    props = torch.cuda.get_device_properties(device_index)
    return props.multi_processor_count, getattr(props, "shared_memory_per_block_optin", 160 * 1024)


def _device_limits(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return 132, 227 * 1024  # nothing to ask (pruning is tested off-GPU): an H100 SXM's limits
    return _cuda_limits(device.index if device.index is not None else torch.cuda.current_device())


def _prune_configs(
    configs: list[triton.Config], named_args: dict, **constants: object
) -> list[triton.Config]:
    """Drops configs that cannot win for this shape, so tuning a shape class takes seconds, not minutes.

    - tiles larger than the (power-of-two rounded) sequence only add masked work;
    - BLOCK_M < 64 only where 64-row blocks would give fewer than 2 programs per SM;
    - K/V pipelines that do not fit in shared memory: (BLOCK_M + 2·BLOCK_N·stages)·BLOCK_D elements,
      which matches what Triton allocates on sm_90 to within 2 %;
    - register spills: each thread holds BLOCK_M·(BLOCK_D + BLOCK_N) / (32·warps) fp32 values for the
      accumulator and the score tile. Compiling the whole space offline for sm_90 (fp16, masked), ptxas
      spilled every config above 128 of them, and at D = 128 those at exactly 128 too.
    """
    q = named_args["Q"]
    seq_q, seq_kv, block_d = named_args["seq_q"], named_args["seq_kv"], constants["BLOCK_D"]
    sms, shared_limit = _device_limits(q.device)
    batch_heads = q.shape[0] * q.shape[1]
    max_m = max(16, triton.next_power_of_2(seq_q))
    max_n = max(32, triton.next_power_of_2(seq_kv))
    max_values_per_thread = 128 if block_d <= 64 else 96
    kept = []
    for config in configs:
        block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        if block_m > max_m or block_n > max_n:
            continue
        if block_m < 64 and triton.cdiv(seq_q, 64) * batch_heads >= 2 * sms:
            continue
        if (block_m + 2 * block_n * config.num_stages) * block_d * q.element_size() > shared_limit:
            continue
        if block_m * (block_d + block_n) > max_values_per_thread * 32 * config.num_warps:
            continue
        kept.append(config)
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


_attention_forward_autotuned = triton.autotune(
    configs=_autotune_configs(),
    key=["seq_q", "seq_kv", "batch_heads_bucket", "HEAD_DIM", "IS_CAUSAL", "HAS_KEY_MASK", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_configs},
    cache_results=True,  # tuning results survive a worker restart (Triton's on-disk cache)
)(_attention_forward_kernel)


def unsupported_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> str | None:
    """Why this kernel cannot run these inputs, or None when it can (the shapes themselves are checked
    by the caller). CPU tensors run only under the interpreter."""
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype} (needs one of fp16, bf16, fp32 for all three)"
    if not (q.device == k.device == v.device):
        return "q, k, v on different devices"
    if q.device.type != "cuda" and not INTERPRETED:
        return f"device {q.device.type} (Triton runs on CUDA, or on CPU with TRITON_INTERPRET=1)"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f"batch*heads {q.shape[0] * q.shape[1]} > {MAX_BATCH_HEADS}"
    if k.shape[-2] == 0:
        return "no keys"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "inputs require grad (this kernel has no backward)"
    if key_padding_mask is not None and key_padding_mask.device != q.device:
        return "key_padding_mask on another device"
    return None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """q `[B, H, Sq, D]`, k/v `[B, H, Skv, D]`, key_padding_mask `[B, Skv]` bool (True = attend) →
    `[B, H, Sq, D]` in q's dtype. Any strides are accepted (no copies) except a non-unit D stride, which
    is made contiguous first so tile loads stay coalesced.

    block_m/block_n pin the tile sizes (tests use them to walk many tiles on short sequences); by default
    CUDA autotunes and the interpreter uses INTERPRETER_BLOCK.
    """
    reason = unsupported_reason(q, k, v, key_padding_mask)
    if reason is not None:
        raise ValueError(f"Triton attention cannot run: {reason}")
    batch, heads, seq_q, head_dim = q.shape
    seq_kv = k.shape[-2]
    if k.shape != (batch, heads, seq_kv, head_dim) or v.shape != k.shape:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if seq_q == 0 or batch * heads == 0:
        return out

    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, seq_kv):
            raise ValueError(
                f"key_padding_mask {tuple(key_padding_mask.shape)} is not [B, Skv] = {(batch, seq_kv)}"
            )
        key_mask = key_padding_mask.to(torch.bool).view(torch.uint8)  # same bytes, a type Triton loads
    else:
        key_mask = q  # never read: HAS_KEY_MASK is False
    mask_strides = (key_mask.stride(0), key_mask.stride(1)) if key_padding_mask is not None else (0, 0)

    fp32_precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    args = (
        q, k, v, out, key_mask, head_dim**-0.5 * LOG2_E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        heads, seq_q, seq_kv, triton.next_power_of_2(batch * heads),
    )  # fmt: skip
    constants = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),  # tl.dot needs K >= 16 and a power of two
        "IS_CAUSAL": causal,
        "HAS_KEY_MASK": key_padding_mask is not None,
        "DOT_PRECISION": fp32_precision if q.dtype == torch.float32 else "tf32",  # ignored for 16-bit
    }
    if triton.knobs.runtime.interpret:
        block_m, block_n = block_m or INTERPRETER_BLOCK[0], block_n or INTERPRETER_BLOCK[1]
        grid = (triton.cdiv(seq_q, block_m), batch * heads)
        _attention_forward_kernel[grid](*args, **constants, BLOCK_M=block_m, BLOCK_N=block_n)
        return out

    # Keep qk·scale − m (and the rescales) as single FMAs whatever Triton's default becomes (3.10 flips it).
    launch_options = {"enable_fp_fusion": True}
    with torch.cuda.device(q.device):
        if block_m is None and block_n is None:

            def grid(meta: dict) -> tuple[int, int]:
                return (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

            _attention_forward_autotuned[grid](*args, **constants, **launch_options)
        else:
            block_m, block_n = block_m or 64, block_n or 64
            grid = (triton.cdiv(seq_q, block_m), batch * heads)
            tiles = {"BLOCK_M": block_m, "BLOCK_N": block_n}
            _attention_forward_kernel[grid](*args, **constants, **tiles, **launch_options)
    return out


def attention_flops(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, causal: bool) -> float:
    """4·B·H·Sq·Skv·D (two matmuls of 2·Sq·Skv·D each), halved for causal (about half the scores exist)."""
    flops = 4.0 * batch * heads * seq_q * seq_kv * head_dim
    return flops / 2 if causal else flops
