#!/usr/bin/env bash
# The one command to run whenever a CUDA machine is at hand (about 8 minutes on one H100 / H200):
#
#     bench/gpu_check.sh OUT_DIR
#
# It writes into OUT_DIR:
#   env.txt             nvidia-smi, python, torch / triton / diffusers versions
#   tests.txt           the CUDA tests: the Triton kernel in fp16 and bf16 at the unCLIP shapes
#                       (tests/models/kernels), the attention seam, the UNets, the compiled steps and the
#                       whole pipeline in bf16/fp16 on CUDA (tests/models/test_runtime.py), no host sync
#                       in the step loop (torch.cuda.set_sync_debug_mode("error"))
#   attention.txt       bench/attention.py: the kernel vs every SDPA backend, TFLOP/s per shape class
#   pipeline.txt        bench/pipeline.py on a full-size Karlo-shaped model (--scale 1, random weights) vs
#                       diffusers' UnCLIPPipeline at equal steps and dtype: 64 / 256 px, batch 1, 4, 8, eager
#                       and compiled, peak memory, compile time apart from the steady state
#   pipeline_modes.txt  the compile modes against each other on the shipped model (inductor vs CUDA
#                       graphs), 64 / 256 / 1024 px, batch 1 and 8: which one UNCLIP_COMPILE=auto should be
#   *.log               each step's stderr
# Each step has its own time limit, so a slow step leaves the others their time; the exit status is
# non-zero when a step failed, and 2 at once when there is no CUDA device.
#
# The GPU machine's python lacks diffusers (and redis, which tests/conftest.py imports): they are installed
# from local wheels, $UNCLIP_WHEELS or ./.whl (fetch them here with bench/gpu_wheels.sh, and carry .whl).
set -uo pipefail

OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device: $PY has no torch that sees a GPU (torch.cuda.is_available() is False)." >&2
    echo "gpu_check: run this script on a machine with an NVIDIA GPU and a CUDA build of torch." >&2
    exit 2
fi

WHEELS=${UNCLIP_WHEELS:-.whl}
missing=()
for module in diffusers redis; do
    "$PY" -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu_check: ${missing[*]} not installed and no wheel folder $WHEELS (run bench/gpu_wheels.sh)" >&2
        exit 3
    fi
    SITE=$(mktemp -d /tmp/unclip-site.XXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
        >"$OUT/install.log" 2>&1 || { echo "gpu_check: pip install from $WHEELS failed (install.log)" >&2; exit 3; }
    export PYTHONPATH=$PYTHONPATH:$SITE
fi
# Compiled kernels of this run stay in OUT's machine-local cache (a second run reuses them).
export UNCLIP_COMPILE_CACHE_DIR=${UNCLIP_COMPILE_CACHE_DIR:-/tmp/unclip-compile-cache}

{
    nvidia-smi
    "$PY" -c 'import platform, torch, triton, diffusers, transformers
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)
print("device", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

status=0
step() {  # step NAME SECONDS COMMAND...: stdout to NAME.txt, stderr to NAME.log
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    echo "gpu_check: $name (at most ${limit} s) ..."
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.log"
    local rc=$?
    echo "gpu_check: $name exit $rc after $((SECONDS - started)) s"
    ((rc == 0)) || status=1
    tail -n 40 "$OUT/$name.txt"
}

step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/models/kernels tests/models/test_attention.py \
    tests/models/test_unet.py tests/models/test_runtime.py
step attention 60 "$PY" bench/attention.py
step pipeline 240 "$PY" bench/pipeline.py --device cuda --only karlo --scale 1 --runs 2 --sizes 64,256 \
    --batches 1,4,8 --settings eager-fp32,eager-bf16,compiled-bf16
step pipeline_modes 60 "$PY" bench/pipeline.py --device cuda --only default --runs 2 \
    --default-sizes 64,256,1024 --default-batches 1,8 --default-settings eager-bf16,compiled-bf16,cudagraphs-bf16
echo "gpu_check: done, tables and logs in $OUT (exit $status)"
exit $status
