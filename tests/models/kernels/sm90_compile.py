"""Compiles the attention kernel for an H100 (sm_90) on a machine without a GPU and prints what ptxas made.

    python tests/models/kernels/sm90_compile.py '{"dtype": "fp16", "head_dim": 64, ...}' ...

Each argument is one variant (see `Variant`); each output line is JSON with the variant, the shared memory
the kernel allocates, its registers per thread and spill bytes (cuobjdump's STACK), how many async
global→shared copies the software pipeliner issued, and how many Hopper warpgroup MMAs (wgmma) it uses.
The arguments are specialised the way Triton's launcher specialises real contiguous tensors (D strides
of 1 become constants, pointers and row strides are 16-byte aligned), otherwise the loads would not
vectorise and nothing would be pipelined. Runs without TRITON_INTERPRET (it needs the compiled kernel).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from models.kernels import flash_attention as fa

TRITON_TYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}


@dataclass(frozen=True)
class Variant:
    dtype: str = "fp16"
    head_dim: int = 64
    causal: bool = False
    key_mask: bool = True
    block_m: int = 128
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    capability: int = 90


def compile_variant(variant: Variant) -> dict:
    kernel = fa._attention_forward_kernel
    names = kernel.arg_names
    pointer = "*" + TRITON_TYPES[variant.dtype]
    constants = {
        "HEAD_DIM": variant.head_dim,
        "BLOCK_D": max(16, triton.next_power_of_2(variant.head_dim)),
        "IS_CAUSAL": variant.causal,
        "HAS_KEY_MASK": variant.key_mask,
        "DOT_PRECISION": "ieee" if variant.dtype == "fp32" else "tf32",
        "BLOCK_M": variant.block_m,
        "BLOCK_N": variant.block_n,
        **{name: 1 for name in ("stride_qd", "stride_kd", "stride_vd", "stride_od")},
        **({"stride_mn": 1} if variant.key_mask else {}),
    }
    signature = {name: "i32" for name in names}
    signature.update({name: pointer for name in ("Q", "K", "V", "Out")})
    signature.update(KeyMask="*u8" if variant.key_mask else pointer, qk_scale="fp32")
    signature.update({name: "constexpr" for name in constants})
    aligned = ["Q", "K", "V", "Out", "KeyMask"]
    aligned += [n for n in names if n.startswith("stride") and n not in constants and n != "stride_mb"]
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(name),): value for name, value in constants.items()},
        attrs={(names.index(name),): [["tt.divisibility", 16]] for name in aligned},
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", variant.capability, 32),
        options={"num_warps": variant.num_warps, "num_stages": variant.num_stages, "enable_fp_fusion": True},
    )
    ttgir = compiled.asm["ttgir"]
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    return {
        "variant": asdict(variant),
        "shared_bytes": compiled.metadata.shared,
        "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
        "spill_bytes": int(re.search(r"STACK:(\d+)", usage).group(1)),
        "async_copies": ttgir.count("async_copy_global_to_local"),
        "wgmma": ttgir.count("warp_group_dot "),
    }


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the real kernel")
    for argument in sys.argv[1:]:
        print(json.dumps(compile_variant(Variant(**json.loads(argument)))), flush=True)


if __name__ == "__main__":
    main()
