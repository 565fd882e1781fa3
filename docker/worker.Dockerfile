# syntax=docker/dockerfile:1
# A GPU worker: CUDA base, the CUDA build of torch, this project with the [worker] extra and the shipped
# default checkpoint, running as an unprivileged user. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t unclip-worker:0.1.0 .
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_VARIANT=cpu -t unclip-worker:0.1.0-cpu .
#
# Build args:
#   CUDA_VERSION, UBUNTU_VERSION  the nvidia/cuda base image (its CUDA must not be older than the wheel's)
#   TORCH_VERSION                 must equal pyproject's `torch==` pin in the [worker] extra
#   TORCH_VARIANT                 PyTorch wheel index: cu126, cu128, cu130, ... or cpu
#   REQUIRE_DEFAULT_CHECKPOINT    true: fail unless models/weights/default/ is in the image
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cu128
ARG REQUIRE_DEFAULT_CHECKPOINT=true
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the PyTorch index. Its version is e.g. 2.13.0+cu128, and PEP 440 ignores the local
# label when matching `torch==2.13.0`, so the [worker] install below keeps this build instead of
# replacing it with the PyPI one; the check after it proves that.
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
    "torch==${TORCH_VERSION}"
WORKDIR /src
COPY . .
# The checkpoint travels as package data (models/weights/default/*.json, *.txt, *.safetensors).
RUN pip install --no-cache-dir "./[worker]" \
 && python -I -c "import importlib.metadata as m, sys; v = m.version('torch'); sys.exit(None if v == '${TORCH_VERSION}+${TORCH_VARIANT}' else 'torch is ' + v + ', expected ${TORCH_VERSION}+${TORCH_VARIANT}')" \
 && weights="$(python -I -c "import importlib.util; print(importlib.util.find_spec('models').submodule_search_locations[0])")/weights/default" \
 && if [ "${REQUIRE_DEFAULT_CHECKPOINT}" = true ] && [ ! -f "${weights}/unclip.json" ]; then \
      echo "no default checkpoint at ${weights}; build with --build-arg REQUIRE_DEFAULT_CHECKPOINT=false to use the tiny random fallback" >&2; \
      exit 1; \
    fi

FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION}
# Triton builds a small C launcher for each kernel at run time: it needs a C compiler and Python headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin unclip
COPY --from=build /opt/venv /opt/venv
# Every cache goes under /tmp, the one writable place when the root filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TRITON_HOME=/tmp \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    XDG_CACHE_HOME=/tmp/cache \
    UNCLIP_WORKER_METRICS_PORT=9100
USER 10001:10001
EXPOSE 9100
# A real checkpoint: mount its folder anywhere and point UNCLIP_CHECKPOINT at it. Loading may take minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('UNCLIP_WORKER_METRICS_PORT', '9100') + '/metrics', timeout=4)"]
ENTRYPOINT ["unclip"]
CMD ["worker"]
