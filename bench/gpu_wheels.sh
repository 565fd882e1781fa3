#!/usr/bin/env bash
# Downloads, here (where PyPI is reachable), the pure-Python wheels bench/gpu_check.sh needs on a GPU machine
# whose python has torch, triton and transformers but not diffusers or redis: into ./.whl (git-ignored),
# which the device run carries (`carry: [".whl"]`). Versions follow this project's pins where it has them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${1:-.whl}
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" "diffusers==0.42.*" "redis>=5" "importlib-metadata"
ls -l "$DEST"
