"""Where and in which precision the pipeline runs: "auto" picks the GPU and the fastest dtype that is right
on the device (bf16 where the hardware multiplies bf16 natively, else fp32 on a CPU, fp16 on an old GPU)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip
# CPU flags (as /proc/cpuinfo spells them) of bf16 matrix units: Intel AMX, AVX512-BF16 (Cooper Lake,
# Sapphire Rapids, Zen 4), and Arm's BF16 dot products (Graviton 3, Neoverse V1/V2).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that has it, else fp16 on a GPU; bf16 on a CPU with bf16 matrix units
    (`cpu_has_bf16_units`), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_units() else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@functools.cache
def cpu_has_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 in hardware (oneDNN then runs bf16 convolutions and matmuls
    2-3x faster than fp32); without such units bf16 is emulated and slower than fp32.

    Read from the kernel's CPU flags; where there are none (not Linux), from torch's own dispatch level
    (AVX512 builds use the bf16 paths only with the bf16 extensions).
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "AMX" in torch.backends.cpu.get_cpu_capability()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return not BF16_CPU_FLAGS.isdisjoint(line.split(":", 1)[1].split())
    return False
